"""Times as volt prints them for machines: RFC 3339 in UTC with milliseconds (`-o json|yaml`)."""

from __future__ import annotations

import time


def rfc3339(t: float | None) -> str | None:
    """2026-12-03T13:04:05.123Z; None stays None."""
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
