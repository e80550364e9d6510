"""The warm pool: VMMs made ahead per machine shape (vCPUs, memory), taken by a VM's restore.

`spec.snapshots.pool: N` asks for N warm VMMs (`volt-vmm --warm`, vmm/warm.py) of the VM's shape
to be ready; a shape's pool is the largest N any applied, running VM asks for. Each warm VMM runs
jailed, as a uid of its own, under a supervisor started with `--pool`, in
`$VOLT_HOME/pool/SHAPE/ID/` (its run/api.sock, instance.json, supervisor.log, control.sock).

A restore that finds one ready (pool.take) claims it (the `claimed` file, O_EXCL: two applies
never take the same one), hands it the snapshot, the VM's state directory, disks and taps as fds
(warmload.py), moves its API socket to the VM's run/, and has its supervisor adopt the VM
(supervisor.py: console, instance and exit records move to the VM's directory); then the guest
resumes. `fill` starts what is missing in the background and stops what no VM asks for any more.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..api import unixpath
from .home import private_dir, read_json
from .procs import is_alive, kill

MAX_POOL = 16


def shape_key(vcpus: int, memory_mib: int) -> str:
    return f"{vcpus}cpu-{memory_mib}mib"


def pool_dir(home: Path) -> Path:
    return home / "pool"


class Entry:
    """One warm VMM's directory under pool/SHAPE/."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.instance = read_json(path / "instance.json") or {}

    api_sock = property(lambda self: self.path / "run" / "api.sock")
    claimed = property(lambda self: (self.path / "claimed").exists())

    def alive(self) -> bool:
        i = self.instance
        return bool(i) and is_alive(i.get("vmm_pid"), i.get("vmm_start")) and not (self.path / "exit.json").exists()

    def primed(self) -> str | None:
        """The snapshot its supervisor prepared it with (supervisor.py, --prime), if any."""
        return (read_json(self.path / "primed.json") or {}).get("snapshot")

    def uid(self) -> int | None:
        return (self.instance.get("jail") or {}).get("uid")

    def claim(self) -> bool:
        try:
            os.close(os.open(self.path / "claimed", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            return True
        except FileExistsError:
            return False

    def discard(self) -> None:
        """Kill its VMM (if any), let its supervisor record that and end, then remove the directory
        (removed first, it would come back with the exit record)."""
        i = self.instance
        kill(i.get("vmm_pid"), i.get("vmm_start"), signal.SIGKILL) if i else None
        deadline = time.monotonic() + 5
        for pid, ticks in ((i.get("vmm_pid"), i.get("vmm_start")), (i.get("supervisor_pid"), i.get("supervisor_start"))):
            while pid and is_alive(pid, ticks) and time.monotonic() < deadline:
                time.sleep(0.01)      # another process's exit: no fd to block on
        shutil.rmtree(self.path, ignore_errors=True)
        root = (i.get("jail") or {}).get("root")
        if root:
            try:
                os.rmdir(root)        # the jail's (empty) mount point
            except OSError:
                pass


def entries(home: Path, key: str | None = None) -> list[Entry]:
    root = pool_dir(home)
    keys = [key] if key else sorted(os.listdir(root)) if root.is_dir() else []
    out = []
    for k in keys:
        folder = root / k
        if folder.is_dir():
            out += [Entry(folder / name) for name in sorted(os.listdir(folder)) if not name.startswith(".")]
    return out


def ready(home: Path, key: str) -> list[Entry]:
    """Warm VMMs of shape `key` that are up, answering, and not claimed."""
    return [e for e in entries(home, key) if not e.claimed and e.alive() and e.api_sock.exists()]


def wanted(home: Path, primes: dict | None = None) -> dict[str, int]:
    """{shape: warm VMMs wanted}: the largest spec.snapshots.pool of the applied VMs that run.
    `primes` learns, per shape, the snapshot such a VM names by id (restore: ID), if any: new warm
    VMMs are prepared with it (a load of it then starts from there; vmm/warm.py)."""
    from .home import VmDir, all_vm_names
    out: dict[str, int] = {}
    for name in all_vm_names(home):
        rec = VmDir(home, name).read_applied() or {}
        snaps = rec.get("snapshots") or {}
        n = int(snaps.get("pool") or 0)
        vm = rec.get("vm") or {}
        if n > 0 and rec.get("running", True) and "vcpus" in vm:
            key = shape_key(vm["vcpus"], vm["memory_mib"])
            out[key] = max(out.get(key, 0), min(n, MAX_POOL))
            if primes is not None and key not in primes and snaps.get("restore") not in (None, "latest", "never"):
                from .snapshots import locate
                path = locate(VmDir(home, name), str(snaps["restore"]))[0]
                if path is not None and not _is_diff_or_compressed(path):    # a warm VMM loads neither
                    primes[key] = str(path)
    return out


def fill(home: Path) -> list[str]:
    """Start the warm VMMs the applied VMs want and are missing, stop the unwanted and remove the
    dead; returns what it started (pool/SHAPE/ID paths). Never waits for a VMM to come up. One
    at a time on the host (parallel applies fill from several threads and processes)."""
    from .vmctl import host_lock
    with host_lock(home, "pool"):
        return _fill(home)


def _fill(home: Path) -> list[str]:
    primes: dict[str, str] = {}
    want = wanted(home, primes)
    started = []
    for key in sorted(set(want) | {e.path.parent.name for e in entries(home)}):
        live = []
        for e in entries(home, key):
            if e.claimed and e.alive():
                continue                       # being adopted, or a start under way: not ours
            if e.alive() or (not e.instance and _starting(e)):
                live.append(e)
            else:
                e.discard()
        for e in live[want.get(key, 0):]:
            e.discard()
        for _ in range(want.get(key, 0) - len(live)):
            started.append(str(start(home, key, primes.get(key))))
    return started


def _starting(e: Entry) -> bool:
    """A directory whose supervisor has not written instance.json yet (made under a minute ago:
    Python starts in seconds under emulation)."""
    try:
        return time.time() - (e.path / "supervisor.log").stat().st_mtime < 60
    except OSError:
        return False


def start(home: Path, key: str, prime: str | None = None) -> Path:
    """A warm VMM of shape `key` under a pool supervisor, jailed as a uid of its own; not waited for.
    `prime`: a snapshot the supervisor prepares it with once it answers."""
    import secrets
    from ..jail.config import JailConfig, Limits, default_memory_limit, jail_uid, python_paths
    from .vmctl import host_lock, jailed, taken_uids, vmm_command
    vcpus, memory = (int(part.rstrip("cpumib")) for part in key.split("-"))
    entry = private_dir(pool_dir(home) / key / secrets.token_hex(4))
    run = private_dir(entry / "run")
    args = ["--warm", "--vcpus", str(vcpus), "--memory", str(memory), "--api-sock", str(run / "api.sock")]
    jail = []
    if jailed():
        name = f"pool-{entry.name}"
        with host_lock(home, "jail-uids"):
            uid = jail_uid(name, taken_uids(home, entry))
            JailConfig(name=name, uid=uid, gid=uid, root=str(home / "jail" / name), ro=python_paths() + ["/sys/module"],
                       rw=[str(run)], owned=[str(run)],
                       limits=Limits(memory_bytes=default_memory_limit(memory << 20), cpu_quota=float(vcpus), pids=256),
                       ).dump(str(entry / "jail.json"))
        jail = ["--jail", str(entry / "jail.json")]
        args.append("--seccomp")
    cmd = [sys.executable, "-m", "volt_spec.runner.supervisor", str(entry), f"{time.time_ns():x}", *jail, "--pool",
           *([f"--prime={prime}"] if prime else []), "--", *vmm_command(), *args]
    log_fd = os.open(entry / "supervisor.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with open(os.devnull, "rb") as devnull, open(log_fd, "ab") as log:
        subprocess.Popen(cmd, stdin=devnull, stdout=log, stderr=log, start_new_session=True, close_fds=True,
                         env=dict(os.environ, VOLT_CONSOLE_LOG="0"))
    return entry


class PoolMiss(RuntimeError):
    """A warm VMM was taken but could not become the VM (it is discarded): one line, and the
    caller starts the VM the usual way."""


def restore_into_warm(vm_dir, vm: dict, snap: Path, clock: str, applied: dict | None) -> dict | None:
    """Restore `snap` as the VM in a ready warm VMM of its shape; its instance record, or None when
    none is ready (or the VM's resources differ from a warm VMM's defaults). PoolMiss when one was
    taken and failed. The pool is refilled in the background either way."""
    from .vmconfig import compression, full_every
    key = shape_key(vm["vcpus"], vm["memory_mib"])
    if (not _default_resources(vm) or full_every(applied) is not None or compression(applied) is not None
            or _is_diff_or_compressed(snap)):
        return None                 # a warm VMM tracks no dirty pages, compresses nothing, maps one plain file

    candidates = sorted(ready(vm_dir.home, key), key=lambda e: e.primed() != str(snap))   # primed with it first
    entry = next((e for e in candidates if e.claim()), None)
    if entry is None:
        return None
    try:
        return _become(entry, vm_dir, vm, snap, clock, applied)
    except Exception as e:  # noqa: BLE001 - ApiError, ApiUnavailable, OSError, SnapshotError: one line
        entry.discard()
        raise PoolMiss(f"the warm VMM could not become the VM: {e}") from None
    finally:
        fill(vm_dir.home)


def _is_diff_or_compressed(snap: Path) -> bool:
    from ..snapshot.chain import is_diff
    from ..snapshot.compressed import is_compressed
    from ..snapshot.format import SnapshotError, read_state
    try:
        state = read_state(str(snap))
        return is_diff(state) or is_compressed(state.get("memory"))
    except SnapshotError:
        return False                # the load says what is wrong with it


def _default_resources(vm: dict) -> bool:
    from ..jail.config import default_memory_limit
    res = vm.get("resources") or {}
    return (int(res.get("memory_bytes", 0)) == default_memory_limit(vm["memory_mib"] << 20)
            and float(res.get("cpus", vm["vcpus"])) == float(vm["vcpus"]) and int(res.get("pids", 256)) == 256)


def _become(entry: Entry, vm_dir, vm: dict, snap: Path, clock: str, applied: dict | None) -> dict:
    """Load, move the API socket, have the supervisor adopt the VM, resume."""
    from ..api.client import ApiClient
    from .vmconfig import policy_config
    from .warmload import load_snapshot
    vm_dir.ensure()
    private_dir(vm_dir.run)
    if entry.uid() is not None:
        give_snapshots(vm_dir.snapshots, entry.uid())
    put_back_disks(vm, snap)
    for stale in (vm_dir.instance, vm_dir.exit_record):
        stale.unlink(missing_ok=True)
    identity = {"name": vm_dir.name, "state_dir": str(vm_dir.snapshots), "disks": vm.get("disks", []),
                "network": vm.get("network", []),
                "policy": policy_config(applied, vm_dir).to_dict() if applied is not None else None}
    load_snapshot(str(entry.api_sock), str(snap), clock=clock, resume=False, vm=identity)
    os.replace(entry.api_sock, vm_dir.api_sock)
    _ask(entry.path / "control.sock", {"vm_dir": str(vm_dir.path), "generation": f"{time.time_ns():x}",
                                       "console_log": vm.get("serial_log", True)})
    ApiClient(str(vm_dir.api_sock), timeout=5.0).patch("/vm", {"state": "Resumed"})
    shutil.rmtree(entry.path, ignore_errors=True)       # its supervisor keeps the VM's records now
    return vm_dir.read_instance() or {}


def _ask(control: Path, request: dict) -> None:
    import json
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        unixpath.connect(s, str(control))
        s.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(s.makefile("rb").readline() or b"{}")
    if not reply.get("ok"):
        raise RuntimeError(f"its supervisor did not adopt the VM: {reply.get('error', 'no answer')}")


def put_back_disks(vm: dict, snap: Path) -> None:
    """Each writable disk from the snapshot's copy of it (a warm VMM gets the disks as fds and
    cannot reach the snapshot's directory): what the VMM's own restore does (vmm/virtio.py)."""
    from ..fsutil import copy_file
    from ..snapshot.format import snapshot_file
    for d in vm.get("disks", []):
        if not d.get("readOnly"):
            if not os.path.exists(d["path"]):
                private_dir(Path(d["path"]).parent)
            copy_file(snapshot_file(str(snap), f"disk-{d['name']}.img", f"copy of disk {d['name']}"), d["path"])


def give_snapshots(folder: Path, uid: int) -> None:
    """The VM's snapshot folder to the uid of the warm VMM that becomes it. A chown sets ctime,
    which a memory file's fingerprint holds: a fingerprint that held before the chown is recorded
    again after it (the content did not change), so the next restore does not read it in full."""
    from ..fsutil import atomic_write, open_regular
    from ..jail.enter import chown_tree
    from ..snapshot.fingerprint import FINGERPRINT_FILE, line
    from ..snapshot.format import MEMORY_FILE
    private_dir(folder)
    for snap in folder.iterdir():
        if snap.is_symlink() or not snap.is_dir() or snap.stat().st_uid == uid:
            continue
        saved = _read(snap / FINGERPRINT_FILE)
        try:
            fd = open_regular(snap / MEMORY_FILE)
        except OSError:
            chown_tree(str(snap), uid, uid)
            continue
        try:
            sha = saved.split()[-1].decode() if saved else ""
            held = bool(sha) and saved == line(fd, sha)
            chown_tree(str(snap), uid, uid)
            if held:
                atomic_write(snap / FINGERPRINT_FILE, line(fd, sha), mode=0o600)
                os.chown(snap / FINGERPRINT_FILE, uid, uid)
        finally:
            os.close(fd)
    os.chown(folder, uid, uid)


def _read(path: Path) -> bytes | None:
    from ..fsutil import read_regular
    try:
        return read_regular(path, 4096)
    except OSError:
        return None


def summary(home: Path) -> list[dict]:
    """Per shape: warm VMMs ready, wanted, and their private memory (USS, KiB): what status shows."""
    want = wanted(home)
    out = []
    for key in sorted(set(want) | {e.path.parent.name for e in entries(home)}):
        ready_now = ready(home, key)
        out.append({"shape": key, "ready": len(ready_now), "wanted": want.get(key, 0),
                    "primed": sum(1 for e in ready_now if e.primed()),
                    "private_kib": sum(private_kib(e.instance.get("vmm_pid")) for e in ready_now)})
    return out


def private_kib(pid: int | None) -> int:
    """A process's USS (Private_Clean + Private_Dirty of smaps_rollup), 0 when it is gone."""
    try:
        with open(f"/proc/{int(pid)}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:")))
    except (OSError, TypeError, ValueError):
        return 0
