"""Clones (spec.replicas): each clone's own disks, and the clones a spec no longer declares.

A clone's writable disk lives with the clone, `vms/CLONE/disks/DISK.img`, so it goes when the
clone is deleted. It is made at the clone's first start: copied from the spec's disk for a cold
boot, or, for a restore, left to the VMM, which puts the snapshot's copy of that disk there. Both
copy by reflink where the filesystem allows, else sparsely (holes stay holes), and say which.
"""

from __future__ import annotations

import os
from pathlib import Path

from .home import VmDir, all_vm_names, private_dir


def own_disks(vm: dict, vm_dir: VmDir) -> dict:
    """`vm` (apply.resolve's) with each clone disk at the clone's own path, the spec's as its seed."""
    disks = []
    for d in vm.get("disks", []):
        if d.get("clone"):
            d = dict(d, seed=d["path"], path=str(vm_dir.path / "disks" / f"{d['name']}.img"))
        disks.append(d)
    return dict(vm, disks=disks)


def seed_disks(vm: dict, restoring: bool) -> dict[str, str]:
    """Make each clone disk that does not exist yet: {disk: how} for those copied here (a restore
    only needs the file to exist: the VMM copies the snapshot's disk into it)."""
    from ..fsutil import copy_file
    made = {}
    for d in vm.get("disks", []):
        if not d.get("seed") or os.path.exists(d["path"]):
            continue
        private_dir(Path(d["path"]).parent)
        if restoring:
            fd = os.open(d["path"], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
        else:
            made[d["name"]] = copy_file(d["seed"], d["path"])
    return made


def copies_said(how: dict[str, str]) -> str:
    """"disks by reflink" / "disk data by sparse copy" for an apply line ("" when none were made)."""
    if not how:
        return ""
    kinds = sorted(set(how.values()))
    if len(kinds) == 1:
        return f"{', '.join(sorted(how))} by {kinds[0]}"
    return ", ".join(f"{name} by {kind}" for name, kind in sorted(how.items()))


def set_of(record: dict, name: str) -> str:
    """The document a VM came from (metadata.name): a clone's set, else the VM's own name."""
    return record.get("set") or name


def surplus(specs, home: Path, owner_of) -> list[str]:
    """VMs a document of `specs` declared and no longer does, owned by that document's source: clones
    past a lowered replica count, all of them when replicas went away, the one VM when replicas
    came in. `owner_of(spec)` -> its Owner."""
    from .owner import Owner
    wanted = {s.name for s in specs}
    sets = {}
    for s in specs:
        sets.setdefault(s.set_name or s.name, s)
    declared = {s.set_name or s.name for s in specs}
    out = []
    for name in all_vm_names(home):
        if name in wanted:
            continue
        record = VmDir(home, name).read_applied() or {}
        set_name = set_of(record, name)
        if set_name in declared and Owner.from_record(record) == owner_of(sets[set_name]):
            out.append(name)
    return out
