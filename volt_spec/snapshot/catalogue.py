"""The snapshot catalogue: every lookup of snapshot directories, in one place, checked.

    <root>/<vm>/<id>/state.json, memory.snap, ...     root: $VOLT_HOME/snapshots

volt lists, finds, picks for restore, reports the last and applies retention through this module;
so does a VMM's policy, on its one VM's folder. Only a real directory (not a symlink) whose name
is a VM name (in root) or a snapshot id (in a VM's folder) is looked at: hidden `.partial-` and
`.deleting-` directories, stray files and anything a name check refuses are skipped, and a name
from a user is checked (names.py) before it is joined to a path. Files are opened only when
regular and never block (fsutil.open_regular): a FIFO planted as state.json is reported, not
waited on. Deleting never follows a symlink out of a VM's folder (`delete_all`, `purge`).

Retention governs policy snapshots (trigger ready, interval, console, stop) and manual ones taken
with `--expire` (meta `expire: true`); any other manual snapshot is kept until it is deleted, and
neither counts against `retain.count` nor ages out by `retain.maxAge` (`expires`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..names import SNAPSHOT_ID, VM_NAME, snapshot_id, vm_name
from .format import SnapshotError, memory_path, read_state
from .store import remove


@dataclass
class Snapshot:
    """One catalogue entry: its verified state (CRC checked) or why there is none."""
    id: str
    vm: str
    path: Path
    state: dict | None = None
    reason: str = ""

    @property
    def meta(self) -> dict:
        return (self.state or {}).get("meta", {}) if isinstance((self.state or {}).get("meta"), dict) else {}

    @property
    def created(self) -> float:
        value = self.meta.get("created")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _dirs(folder: Path, pattern) -> list[Path]:
    """Real subdirectories of `folder` (no symlinks) whose names match `pattern`, sorted."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    return sorted(Path(e.path) for e in entries if pattern.match(e.name) and e.is_dir(follow_symlinks=False))


def snapshot_dirs(folder: Path) -> list[Path]:
    """The snapshot directories in one VM's folder."""
    return _dirs(folder, SNAPSHOT_ID)


def read(path: Path, vm: str) -> Snapshot:
    """The entry for a snapshot directory: its state if the state file is sound."""
    snap = Snapshot(path.name, vm, path)
    try:
        snap.state = read_state(str(path))
    except SnapshotError as e:
        snap.reason = str(e)
    return snap


def check_memory_file(snap: Snapshot) -> str:
    """The memory file's path, if it is named inside the snapshot, regular and the recorded
    size (SnapshotError otherwise): what a restore maps, checked without reading it."""
    from ..fsutil import NotRegularFile, open_regular
    from .compressed import is_compressed
    try:
        layout = snap.state["memory"]
        path, size = memory_path(str(snap.path), layout), int(layout["size"])
        if is_compressed(layout):                             # memory.snap.zst: its own recorded size
            size = int(layout["compressed"]["bytes"])
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"bad memory layout in state.json ({e})") from None
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise SnapshotError(f"{os.path.basename(path)} is missing") from None
    except NotRegularFile as e:
        raise SnapshotError(f"{os.path.basename(path)} {e.strerror}") from None
    try:
        actual = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if actual != size:
        raise SnapshotError(f"{os.path.basename(path)} is {actual} bytes, {size} recorded")
    return path


def parent_of(snap: Snapshot) -> str | None:
    """The id of the snapshot a diff stands on (None for a full snapshot or an unsound state)."""
    memory = (snap.state or {}).get("memory")
    diff = memory.get("diff") if isinstance(memory, dict) else None
    return diff.get("parent") if isinstance(diff, dict) and isinstance(diff.get("parent"), str) else None


def ancestors(snaps: list[Snapshot], ids: set[str]) -> set[str]:
    """Every snapshot (of one VM's folder) that a diff among `ids` needs, directly or not."""
    parent = {s.id: parent_of(s) for s in snaps}
    out, todo = set(), [parent.get(i) for i in ids]
    while todo:
        p = todo.pop()
        if p is not None and p not in out:
            out.add(p)
            todo.append(parent.get(p))
    return out


def dependents(folder: Path, vm: str, snap_id: str) -> list[str]:
    """The diffs in a VM's folder that need `snap_id` (directly or through other diffs)."""
    snaps = [read(p, vm) for p in snapshot_dirs(folder)]
    return sorted(s.id for s in snaps if s.id != snap_id and snap_id in ancestors(snaps, {s.id}))


def newest(folder: Path, vm: str) -> Snapshot | None:
    """The most recently created snapshot in a VM's folder whose state is sound."""
    snaps = [s for s in (read(p, vm) for p in snapshot_dirs(folder)) if s.state is not None]
    return max(snaps, key=lambda s: (s.created, s.id), default=None)


def expires(snap: Snapshot) -> bool:
    """Does retention govern this snapshot? One a policy trigger took, or a manual one taken with
    `volt snapshot --expire`; not a manual one (trigger "manual", or none recorded)."""
    return snap.meta.get("trigger", "manual") != "manual" or snap.meta.get("expire") is True


def retention_victims(folder: Path, vm: str, count: int | None, max_age_s: float | None,
                      keep: set[str], now: float) -> list[Path]:
    """What the retain rules delete, oldest first, among the snapshots they govern (`expires`):
    beyond the newest `count`, older than `max_age_s`. Never the newest of those, never those in
    `keep` (the one the VM runs from), never one whose state is unsound (`volt snapshots verify`
    reports it; retention does not judge it), never a manual one (kept until deleted), and never
    one that a snapshot staying (a diff) needs."""
    every = [read(p, vm) for p in snapshot_dirs(folder)]
    snaps = sorted((s for s in every if s.state is not None and expires(s)), key=lambda s: (s.created, s.id))
    if not snaps or (count is None and max_age_s is None):
        return []
    keep = keep | {snaps[-1].id}
    excess = len(snaps) - count if count else 0
    doomed = []
    for snap in snaps:
        if snap.id in keep:
            continue
        if excess > 0 or (max_age_s is not None and now - snap.created > max_age_s):
            doomed.append(snap)
            excess -= 1
    needed = ancestors(every, {s.id for s in every} - {s.id for s in doomed})
    return [s.path for s in doomed if s.id not in needed]


class Catalogue:
    """All snapshots under one root ($VOLT_HOME/snapshots): one folder per VM."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, vm: str) -> Path:
        return self.root / vm_name(vm)

    def path(self, vm: str, snap_id: str) -> Path:
        return self.folder(vm) / snapshot_id(snap_id)

    def vms(self) -> list[str]:
        return [p.name for p in _dirs(self.root, VM_NAME)]

    def entries(self, vm: str | None = None) -> list[Snapshot]:
        """Every snapshot (of one VM, or all), oldest first."""
        vms = [vm_name(vm)] if vm else self.vms()
        snaps = [read(p, name) for name in vms for p in snapshot_dirs(self.root / name)]
        return sorted(snaps, key=lambda s: (s.created, s.id))

    def find(self, snap_id: str) -> Path | None:
        """The directory of the snapshot with this id, whichever VM took it."""
        snapshot_id(snap_id)
        for name in self.vms():
            candidate = self.root / name / snap_id
            if candidate.is_dir() and not candidate.is_symlink():
                return candidate
        return None

    def delete_all(self, vm: str) -> list[str]:
        """Delete every snapshot of `vm`, listed or not (one whose state is unsound too), whether the
        VM still exists or not; returns their ids. A folder that is a symlink holds none of ours;
        a symlink in the folder is not a snapshot; a hidden unfinished one is left to its writer."""
        folder = self.folder(vm)
        if folder.is_symlink():
            return []
        deleted = []
        for path in snapshot_dirs(folder):
            try:
                remove(str(path))           # a rename, then rmtree: neither follows a symlink
            except FileNotFoundError:       # deleted meanwhile
                continue
            deleted.append(path.name)
        return deleted

    def purge(self, vm: str) -> bool:
        """Remove `vm`'s folder and all in it (its snapshots first, so they stop being listed at
        once); False when there was none. Nothing outside is touched: a folder that is a symlink
        is unlinked, not its target, and rmtree unlinks symlinks inside it without following them."""
        folder = self.folder(vm)
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            folder.unlink()
            return True
        if not folder.exists():
            return False
        self.delete_all(vm)
        shutil.rmtree(folder, ignore_errors=True)
        return True
