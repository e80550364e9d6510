"""`volt scale NAME N`: the clones of a spec with spec.replicas, N of them, as its applied document says.

Like `kubectl scale`, it changes the applied count only: the next apply of the file sets it back.
"""

from __future__ import annotations

import copy
from pathlib import Path

from .clones import surplus
from .home import VmDir, all_vm_names


class ScaleError(RuntimeError):
    """`volt scale` cannot do what was asked: one line for the user."""


def scaled_specs(home: Path, set_name: str, replicas: int):
    """The VmSpecs of set `set_name` at `replicas` clones, from the applied document of its clones,
    and the owner those records name."""
    from ..schema.model import build_specs
    from ..schema.replicas import problems
    from .owner import Owner
    records = [(r.get("replica"), r) for name in all_vm_names(home)
               if (r := VmDir(home, name).read_applied() or {}).get("set") == set_name and r.get("replica") is not None]
    if not records:
        raise ScaleError(f"no clones of {set_name!r} (volt scale acts on a spec with spec.replicas; apply it first)")
    if not 1 <= replicas <= 256:
        raise ScaleError(f"replicas must be 1-256, not {replicas} (to stop every clone: spec.running: false; "
                         f"to remove them: volt delete -f SPEC)")
    _, record = min(records, key=lambda item: item[0])
    document = copy.deepcopy(record["document"])
    document["spec"]["replicas"] = replicas
    taps = [n["tap"] for n in document["spec"].get("devices", {}).get("network", [])]
    for _, message in problems(set_name, replicas, taps):
        raise ScaleError(message)
    return build_specs(record["source"], document), Owner.from_record(record)


class _RecordedOwner:
    """A Resolver (owner.py) that answers with the owner the set's records name: `volt scale` acts
    for that owner, wherever its file is now."""

    def __init__(self, owner) -> None:
        from .owner import Resolver
        self._owner, self._resolver = owner, Resolver()

    def owner(self, file: str):
        return self._owner

    def __getattr__(self, name: str):
        return getattr(self._resolver, name)


def scale(home: Path, set_name: str, replicas: int):
    """Results (apply.Result) of making set `set_name` `replicas` clones: surplus ones deleted (from
    the highest index down), missing ones created as the applied document says."""
    from . import apply as ap
    specs, owner = scaled_specs(home, set_name, replicas)
    resolver = _RecordedOwner(owner)
    for name in sorted(surplus(specs, home, lambda s: owner), key=_index, reverse=True):
        yield ap.delete(name, home, reason="scaled down")
    for spec in specs:
        yield ap.apply_one(spec, home, resolver)


def _index(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1
