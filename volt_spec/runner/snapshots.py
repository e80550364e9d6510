"""The snapshot catalogue under $VOLT_HOME/snapshots/<vm>/<id>/, and taking one through the VM's API."""

from __future__ import annotations

import re
from pathlib import Path

from ..snapshot.store import disk_usage, new_id, remove
from .home import VmDir

ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9._]{0,80}[a-z0-9])?$")


class SnapshotCommandError(RuntimeError):
    pass


def summary(path: Path, vm: str, deep: bool = False, progress=None) -> dict:
    """One catalogue row; `valid` checks the state CRC (and with deep=True the memory checksum)."""
    from ..snapshot.format import SnapshotError, read_state
    row = {"id": path.name, "vm": vm, "path": str(path), "created": None, "trigger": None,
           "size_bytes": 0, "logical_bytes": 0, "paused_ms": None, "valid": False, "reason": "",
           "machine_hash": None}
    try:
        row["size_bytes"] = disk_usage(str(path))
        state = read_state(str(path))
        meta = state.get("meta", {})
        row.update(created=meta.get("created"), trigger=meta.get("trigger", "manual"),
                   logical_bytes=state.get("memory", {}).get("size", 0), paused_ms=meta.get("paused_ms"),
                   machine_hash=meta.get("machine_hash"))
        mem = path / state["memory"].get("file", "memory.snap")
        if not mem.exists():
            raise SnapshotError("memory.snap is missing")
        if mem.stat().st_size < int(state["memory"]["size"]):
            raise SnapshotError(f"memory.snap is {mem.stat().st_size} bytes, {state['memory']['size']} recorded")
        if deep:
            from ..snapshot.memory_file import memory_digest
            want = state["memory"].get("sha256")
            if want and memory_digest(str(mem), progress) != want:
                raise SnapshotError("memory.snap does not match the checksum recorded at creation")
        row["valid"] = True
    except (SnapshotError, OSError, KeyError, ValueError, TypeError) as e:
        row["reason"] = str(e)
    return row


def list_snapshots(home: Path, vm: str | None = None) -> list[dict]:
    root = home / "snapshots"
    rows = []
    vms = [vm] if vm else (sorted(p.name for p in root.iterdir()) if root.is_dir() else [])
    for name in vms:
        folder = root / name
        if not folder.is_dir():
            continue
        for snap in folder.iterdir():
            if snap.is_dir() and not snap.name.startswith("."):
                rows.append(summary(snap, name))
    rows.sort(key=lambda r: (r["created"] or 0, r["id"]))
    return rows


def find(home: Path, snap_id: str) -> Path | None:
    root = home / "snapshots"
    if not root.is_dir():
        return None
    for vm in root.iterdir():
        candidate = vm / snap_id
        if candidate.is_dir():
            return candidate
    return None


def take(vm_dir: VmDir, name: str | None = None, trigger: str = "manual") -> dict:
    """Snapshot a running VM through its API; the result names the id, size and pause."""
    from ..api.client import ApiClient, ApiError, ApiUnavailable
    from .vmctl import SNAPSHOT_TIMEOUT_S
    applied = vm_dir.read_applied() or {}
    snap_id = name or new_id(vm_dir.name)
    if not ID_RE.match(snap_id):
        raise SnapshotCommandError(f"snapshot name {snap_id!r}: use lowercase letters, digits, '-', '.', '_'")
    dest = vm_dir.snapshots / snap_id
    clear_partials(vm_dir)
    if dest.exists():
        raise SnapshotCommandError(f"snapshot {snap_id} already exists for vm/{vm_dir.name}")
    meta = {"id": snap_id, "vm": vm_dir.name, "trigger": trigger,
            "machine_hash": applied.get("machine_hash"), "spec": applied.get("document")}
    try:
        return ApiClient(str(vm_dir.api_sock), timeout=SNAPSHOT_TIMEOUT_S).put(
            "/snapshot/create", {"snapshot_path": str(dest), "meta": meta}) or {}
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
    from ..snapshot.format import SnapshotError, read_state
    from ..snapshot.restore import check_compatible
    want = (spec.snapshots or {}).get("restore", "latest")
    if want == "never":
        return None, ""
    folder = vm_dir.snapshots
    if not folder.is_dir():
        return None, ""
    if want != "latest":
        candidates = [folder / want]
        if not candidates[0].is_dir():
            return None, f"snapshot {want} not found"
    else:
        candidates = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        candidates.sort(key=lambda p: (p / "state.json").stat().st_mtime if (p / "state.json").exists() else 0,
                        reverse=True)
    reasons = []
    for snap in candidates:
        try:
            state = read_state(str(snap))
            if state.get("meta", {}).get("machine_hash") != spec.machine_hash():
                raise SnapshotError("taken from a different machine shape (memory, vCPUs, kernel or devices)")
            check_compatible(state, snap.name)
            mem = snap / "memory.snap"
            if not mem.exists() or mem.stat().st_size < int(state["memory"]["size"]):
                raise SnapshotError("memory.snap is missing or truncated")
            return snap, ""
        except (SnapshotError, OSError, KeyError, ValueError) as e:
            reasons.append(f"{snap.name}: {e}")
    return None, ("; ".join(reasons[:2]) if reasons else "")


def delete(path: Path) -> None:
    remove(str(path))
