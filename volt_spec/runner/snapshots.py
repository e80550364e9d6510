"""The snapshot catalogue under $VOLT_HOME/snapshots/<vm>/<id>/, and taking one through the VM's API."""

from __future__ import annotations

import os
from pathlib import Path

from ..names import snapshot_id
from ..snapshot.format import SnapshotError
from ..snapshot.store import new_id, remove
from .home import VmDir


class SnapshotCommandError(RuntimeError):
    pass


def catalogue(home: Path):
    from ..snapshot.catalogue import Catalogue
    return Catalogue(home / "snapshots")


def summary(path: Path, vm: str, deep: bool = False, progress=None) -> dict:
    """One catalogue row; `valid` checks the state CRC and the memory file's name, type and size
    (and with deep=True its checksum, recording its fingerprint when it matches)."""
    from ..snapshot.catalogue import check_memory_file, expires, parent_of, read
    from ..snapshot.store import disk_usage
    snap = read(path, vm)
    row = {"id": path.name, "vm": vm, "path": str(path), "created": None, "trigger": None, "expire": False,
           "size_bytes": 0, "logical_bytes": 0, "paused_ms": None, "valid": False, "reason": snap.reason,
           "machine_hash": None, "kind": None, "parent": None, "tracking": None}
    try:
        row["size_bytes"] = disk_usage(str(path))
        if snap.state is None:
            return row
        meta = snap.meta
        row.update(created=meta.get("created"), trigger=meta.get("trigger", "manual"), expire=expires(snap),
                   logical_bytes=snap.state.get("memory", {}).get("size", 0), paused_ms=meta.get("paused_ms"),
                   machine_hash=meta.get("machine_hash"), kind="diff" if parent_of(snap) else "full",
                   parent=parent_of(snap), tracking=(snap.state["memory"].get("diff") or {}).get("tracking"))
        mem = check_memory_file(snap)
        if row["parent"]:
            _check_chain(path, snap.state)
        if deep:
            deep_check(path, mem, snap.state["memory"].get("sha256"), progress, snap.state["memory"])
        row["valid"] = True
    except (SnapshotError, OSError, KeyError, ValueError, TypeError, AttributeError) as e:
        row["reason"] = str(e)
    return row


def _check_chain(path: Path, state: dict) -> None:
    """A diff is usable only with its parents: each present, sound, the one it was taken on, and
    its memory file the recorded size (SnapshotError naming the first that is not)."""
    from ..snapshot.catalogue import Snapshot, check_memory_file
    from ..snapshot.chain import parents
    for link in parents(str(path), state):
        try:
            check_memory_file(Snapshot(os.path.basename(link.dir), "", Path(link.dir), link.state))
        except SnapshotError as e:
            raise SnapshotError(f"its parent {os.path.basename(link.dir)}: {e}") from None


def deep_check(path: Path, mem: str, sha256: object, progress=None, layout: dict | None = None) -> None:
    """Read the whole memory file against the recorded checksum (a compressed one decompressed
    frame by frame); on a match remember its fingerprint."""
    from ..fsutil import open_regular
    from ..snapshot.compressed import CompressedError, checksum
    from ..snapshot.fingerprint import record
    fd = open_regular(mem)
    try:
        try:
            digest = checksum(fd, layout or {}, os.path.basename(mem), progress)
        except CompressedError as e:
            raise SnapshotError(str(e)) from None
        if sha256 and digest != sha256:
            raise SnapshotError(f"{os.path.basename(mem)} does not match the checksum recorded at creation")
        if sha256:
            record(str(path), fd, str(sha256))
    finally:
        os.close(fd)


def list_snapshots(home: Path, vm: str | None = None) -> list[dict]:
    rows = [summary(snap.path, snap.vm) for snap in catalogue(home).entries(vm)]
    rows.sort(key=lambda r: (r["created"] or 0, r["id"]))
    return rows


def find(home: Path, snap_id: str) -> Path | None:
    return catalogue(home).find(snap_id)


def take(vm_dir: VmDir, name: str | None = None, trigger: str = "manual", expire: bool = False,
         diff: bool | None = None) -> dict:
    """Snapshot a running VM through its API; the result names the id, size and pause.

    A VM whose spec has snapshots.incremental gets a diff (or the full one fullEvery asks for);
    `diff` True asks for a diff whatever fullEvery says, False for a full snapshot.

    A manual snapshot is kept until it is deleted; with `expire` it is subject to the VM's
    `retain` rules like a policy snapshot, and the VMM applies them as soon as it is taken."""
    from ..api.client import ApiClient, ApiError, ApiUnavailable
    from .vmconfig import full_every
    from .vmctl import SNAPSHOT_TIMEOUT_S
    applied = vm_dir.read_applied() or {}
    snap_id = snapshot_id(name or new_id(vm_dir.name))
    dest = vm_dir.snapshots / snap_id
    clear_partials(vm_dir)
    if dest.exists():
        raise SnapshotCommandError(f"snapshot {snap_id} already exists for vm/{vm_dir.name}")
    meta = {"id": snap_id, "vm": vm_dir.name, "trigger": trigger,
            "machine_hash": applied.get("machine_hash"), "shape_hash": applied.get("shape_hash"),
            "spec": applied.get("document")}
    if expire:
        meta["expire"] = True
    body = {"snapshot_path": str(dest), "meta": meta}
    every = full_every(applied)
    if diff:
        body["snapshot_type"] = "Diff"
    elif diff is None and every is not None:
        body.update(snapshot_type="Diff", full_every=every)
    try:
        return ApiClient(str(vm_dir.api_sock), timeout=SNAPSHOT_TIMEOUT_S).put("/snapshot/create", body) or {}
    except ApiUnavailable as e:
        raise SnapshotCommandError(f"vm/{vm_dir.name} is not running ({e.reason})") from None
    except ApiError as e:
        raise SnapshotCommandError(e.message) from None


def clear_partials(vm_dir: VmDir) -> None:
    """Remove what a snapshot interrupted by a crash left behind (never listed, never restored).

    Called with the VM's lock held, so no snapshot of this VM is being written."""
    import shutil
    folder = vm_dir.snapshots
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and (".partial-" in p.name or ".deleting-" in p.name):
                shutil.rmtree(p, ignore_errors=True)


def pick_restore(vm_dir: VmDir, spec) -> tuple[Path | None, str]:
    """The snapshot `spec.snapshots.restore` asks for, if valid and compatible: (path, why not)."""
    from ..snapshot.catalogue import check_memory_file, read, snapshot_dirs
    from ..snapshot.restore import check_compatible
    want = (spec.snapshots or {}).get("restore", "latest")
    if want == "never":
        return None, ""
    folder = vm_dir.snapshots
    if want != "latest":
        path, owner, why_not = locate(vm_dir, want)
        if path is None:
            return None, why_not
        candidates = [read(path, owner)]
    else:
        candidates = sorted((read(p, vm_dir.name) for p in snapshot_dirs(folder)),
                            key=lambda s: (s.created, s.id), reverse=True)
    reasons = []
    for snap in candidates:
        try:
            if snap.state is None:
                raise SnapshotError(snap.reason)
            if not fits(snap, vm_dir.name, spec):
                raise SnapshotError("taken from a different machine shape (memory, vCPUs, kernel or devices)")
            check_compatible(snap.state, snap.id)
            check_memory_file(snap)
            return snap.path, ""
        except (SnapshotError, OSError, KeyError, ValueError) as e:
            reasons.append(f"{snap.id}: {e}")
    return None, ("; ".join(reasons[:2]) if reasons else "")


def fits(snap, vm: str, spec) -> bool:
    """A VM's own snapshot fits its machine exactly (machine hash); another VM's, its shape (what
    the guest sees: disk paths, taps and MACs are this VM's own)."""
    if snap.vm == vm:
        return snap.meta.get("machine_hash") == spec.machine_hash()
    return snap.meta.get("shape_hash") is not None and snap.meta.get("shape_hash") == spec.shape_hash()


def locate(vm_dir: VmDir, want: str) -> tuple[Path | None, str, str]:
    """The snapshot a spec names by id: (its directory, the VM that took it, why not found). An id
    is looked up in the VM's own snapshots first, then must be unique across the catalogue (a
    snapshot of another VM of the same machine shape); `vm/id` names one VM's."""
    cat = catalogue(vm_dir.home)
    owner, _, snap = want.rpartition("/")
    snapshot_id(snap)
    if owner:
        path = cat.path(owner, snap)
        return (path, owner, "") if _is_snapshot(path) else (None, "", f"snapshot {want} not found")
    own = vm_dir.snapshots / snap
    if _is_snapshot(own):
        return own, vm_dir.name, ""
    owners = [vm for vm in cat.vms() if _is_snapshot(cat.path(vm, snap))]
    if len(owners) > 1:
        return None, "", (f"snapshot id {snap} is ambiguous: {', '.join(sorted(owners))} each have one; "
                          f"name one as VM/{snap}")
    if not owners:
        return None, "", f"snapshot {want} not found"
    return cat.path(owners[0], snap), owners[0], ""


def _is_snapshot(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def delete(path: Path) -> None:
    """Delete one snapshot; refused (SnapshotCommandError) while a diff stands on it."""
    from ..snapshot.catalogue import dependents
    needing = dependents(path.parent, path.parent.name, path.name)
    if needing:
        raise SnapshotCommandError(f"snapshot {path.name} is the parent of diff(s) {', '.join(needing)}: "
                                   f"delete those first (or the VM's snapshots with --all)")
    remove(str(path))


def squash(home: Path, path: Path) -> dict:
    """Merge a diff's chain into it (snapshot/chain.py), under its VM's lock (no snapshot of that VM
    is written meanwhile); the new catalogue row."""
    from ..snapshot.squash import squash as squash_chain
    vm_dir = VmDir(home, path.parent.name)
    with vm_dir.lock():
        try:
            squash_chain(str(path))
        except SnapshotError as e:
            raise SnapshotCommandError(str(e)) from None
        except OSError as e:
            raise SnapshotCommandError(f"squashing {path.name} failed: {e.strerror or e}") from None
    return summary(path, path.parent.name)


def export(home: Path, path: Path, out: str, progress=None) -> dict:
    """`volt snapshots export`: the snapshot at `path` as one compressed file (snapshot/export.py)."""
    from ..snapshot.export import export as write_export
    try:
        return write_export(str(path), out, path.parent.name, progress)
    except SnapshotError as e:
        raise SnapshotCommandError(str(e)) from None
    except OSError as e:
        raise SnapshotCommandError(f"exporting {path.name} to {out} failed: {e.strerror or e}") from None


def import_export(home: Path, file: str, vm: str | None = None, snap_id_: str | None = None, progress=None) -> Path:
    """`volt snapshots import`: unpack an export into VM's folder as ID (default: the export's own
    vm and id, checked like any name from a user); the new snapshot's directory."""
    from ..names import vm_name
    from ..snapshot.export import ExportError, import_into, read_manifest
    from pyzstd import SeekableFormatError, SeekableZstdFile, ZstdError
    try:
        if not (vm and snap_id_):
            with SeekableZstdFile(file, "r") as z:
                manifest, _ = read_manifest(z)
            vm, snap_id_ = vm or manifest.get("vm"), snap_id_ or manifest.get("id")
        vm_dir = VmDir(home, vm_name(str(vm)))
        with vm_dir.lock():
            return Path(import_into(file, str(vm_dir.snapshots), snapshot_id(str(snap_id_)), progress))
    except (ExportError, SnapshotError, ValueError) as e:
        raise SnapshotCommandError(f"import of {file} refused: {e}") from None
    except (ZstdError, SeekableFormatError, EOFError) as e:
        raise SnapshotCommandError(f"import of {file} refused: not a readable export ({e})") from None
    except OSError as e:
        raise SnapshotCommandError(f"import of {file} failed: {e.strerror or e}") from None


def delete_all(home: Path, vm: str) -> list[str]:
    """Delete every snapshot of VM `vm` (which may itself be deleted already): their ids."""
    vm_dir = VmDir(home, vm)                # the name is checked before any path is made of it
    with vm_dir.lock():                     # not while `volt snapshot` writes one
        return catalogue(home).delete_all(vm)
