"""Memory sizes (``128Mi``) and durations (``10m``) as the spec spells them."""

from __future__ import annotations

import re

from ..layout import GiB, KiB, MiB

TiB = 1024 * GiB
MEMORY_MIN = 16 * MiB          # the VMM refuses less (vmm/config/machine.py)
MEMORY_MAX = TiB
SIZE_UNITS = {"Ki": KiB, "Mi": MiB, "Gi": GiB}
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

_SIZE_RE = re.compile(r"^([0-9]+)(Ki|Mi|Gi)$")
_DURATION_RE = re.compile(r"^([1-9][0-9]*)([smhd])$")


def memory_bytes(value: str | int) -> int:
    """Bytes in a size the schema accepted (``<n>Ki|Mi|Gi`` or an int); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r} is not a size")
    return int(m.group(1)) * SIZE_UNITS[m.group(2)]


def memory_problem(value: str | int) -> str | None:
    """Why a syntactically valid size is unusable (range, whole MiB), or None."""
    try:
        n = memory_bytes(value)
    except ValueError as e:
        return str(e)
    if n < MEMORY_MIN:
        return f"{value} is too small: at least 16Mi"
    if n > MEMORY_MAX:
        return f"{value} is too large: at most 1Ti"
    if n % MiB:
        return f"{value} is not a whole number of MiB"
    return None


def duration_seconds(value: str) -> int:
    """Seconds in a duration like ``30s``/``10m``/``1h``/``7d``; ValueError otherwise."""
    m = _DURATION_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r} is not a duration")
    return int(m.group(1)) * DURATION_UNITS[m.group(2)]
