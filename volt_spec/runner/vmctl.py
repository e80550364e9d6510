"""Start and stop one VM's supervised VMM, and say what state it is in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .home import VmDir, private_dir, write_json
from .procs import is_alive, kill

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
SNAPSHOT_TIMEOUT_S = 600.0      # a stop trigger snapshots before the VMM answers Ctrl-Alt-Del


class VmStartError(RuntimeError):
    """The VMM did not come up: the message is its own one-line reason."""


def vmm_command() -> list[str]:
    """The volt-vmm launcher installed beside this interpreter (run by this interpreter, not
    its #! line: a copied or moved venv's scripts name the old one, outside a jail's root),
    else `python -m`."""
    script = Path(sys.executable).parent / "volt-vmm"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "volt_spec.vmm.main"]


NO_JAIL_ENV = "VOLT_NO_JAIL"           # set by `--no-jail`: a debugging escape hatch


def jailed() -> bool:
    return os.environ.get(NO_JAIL_ENV, "") in ("", "0")


def jail_config(vm: dict, vm_dir: VmDir, restore_from: Path | None):
    """The VM's jail: its kernel, initrd and disks, its run and state directories, and what the
    Python VMM needs; a uid of its own; limits from spec.resources (apply.resolve's defaults)."""
    from ..jail.config import JailConfig, Limits, default_memory_limit, jail_uid, python_paths
    uid = jail_uid(vm_dir.name, taken_uids(vm_dir.home, vm_dir.path))
    disks = vm.get("disks", [])
    files = [vm["kernel"], *([vm["initrd"]] if vm.get("initrd") else [])]
    ro = python_paths() + files + ["/sys/module"] + [d["path"] for d in disks if d.get("readOnly")]
    rw = [str(vm_dir.run), str(vm_dir.snapshots)] + [d["path"] for d in disks if not d.get("readOnly")]
    foreign = restore_from is not None and not str(restore_from).startswith(str(vm_dir.snapshots) + "/")
    if foreign:                           # another VM's snapshot: visible, and its files passed as fds
        ro.append(str(restore_from))
    res = vm.get("resources") or {}
    limits = Limits(memory_bytes=int(res.get("memory_bytes", default_memory_limit(vm["memory_mib"] << 20))),
                    cpu_quota=float(res.get("cpus", vm["vcpus"])), pids=int(res.get("pids", 256)))
    return JailConfig(name=vm_dir.name, uid=uid, gid=uid, root=str(vm_dir.home / "jail" / vm_dir.name),
                      ro=ro, rw=rw, owned=[str(vm_dir.run), str(vm_dir.snapshots), *(d["path"] for d in disks)],
                      limits=limits, preopen=str(restore_from) if foreign else None,
                      userfaultfd=restore_from is not None and _compressed(restore_from))


def _compressed(snap: Path) -> bool:
    """The snapshot's memory is compressed: its VMM gets a userfaultfd to decompress it on demand."""
    from ..snapshot.compressed import is_compressed
    from ..snapshot.format import SnapshotError, read_state
    try:
        return is_compressed(read_state(str(snap)).get("memory"))
    except SnapshotError:
        return False                      # the VMM's load says what is wrong with it


def taken_uids(home: Path, mine: Path | None = None) -> set:
    """The jail uids other VMs and warm VMMs (pool.py) run as, or were given to start as (jail.json:
    a start under way); `mine`: the directory whose own uid does not count."""
    from .home import all_vm_names, read_json
    folders = [home / "vms" / name for name in all_vm_names(home)]
    pool = home / "pool"
    if pool.is_dir():
        folders += [e for shape in pool.iterdir() if shape.is_dir() for e in shape.iterdir() if e.is_dir()]
    taken = set()
    for folder in folders:
        if folder != mine:
            taken.add(((read_json(folder / "instance.json") or {}).get("jail") or {}).get("uid"))
            taken.add((read_json(folder / "jail.json") or {}).get("uid"))
    return taken


@contextmanager
def host_lock(home: Path, name: str):
    """A host-wide flock(2) for what VMs share (held briefly)."""
    import fcntl
    path = private_dir(home / "locks") / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def start(vm_dir: VmDir, vm: dict, timeout: float = START_TIMEOUT_S, restore_from: Path | None = None,
          clock: str = "continue") -> dict:
    """Start a supervised VMM (booting, or restoring `restore_from`) and wait until its API answers, or
    its guest has already powered off cleanly (a short run to completion is a start that worked)."""
    from ..api.client import ApiClient
    vm_dir.ensure()
    generation = f"{time.time_ns():x}"
    for stale in (vm_dir.instance, vm_dir.exit_record):
        try:
            stale.unlink()
        except FileNotFoundError:
            pass
    from .vmconfig import vmm_config
    private_dir(vm_dir.run)
    config = vmm_config(vm, vm_dir, restore_from, clock, vm_dir.read_applied())
    write_json(vm_dir.vm_config, config.to_dict())
    args = ["--config", str(vm_dir.vm_config)]
    jail = []
    if jailed():
        with host_lock(vm_dir.home, "jail-uids"):     # parallel applies: one uid per VM
            jail_config(vm, vm_dir, restore_from).dump(str(vm_dir.jail_file))
        jail = ["--jail", str(vm_dir.jail_file), *(f"--tap={nic['tap']}" for nic in vm.get("network", []))]
        args.append("--seccomp")
    cmd = [sys.executable, "-m", "volt_spec.runner.supervisor", str(vm_dir.path), generation, *jail, "--",
           *vmm_command(), *args]
    env = dict(os.environ, VOLT_CONSOLE_LOG="1" if vm.get("serial_log", True) else "0")
    log_fd = os.open(vm_dir.supervisor_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with open(os.devnull, "rb") as devnull, open(log_fd, "ab") as log:
        supervisor = subprocess.Popen(cmd, stdin=devnull, stdout=log, stderr=log, start_new_session=True,
                                      close_fds=True, env=env)
    client = ApiClient(str(vm_dir.api_sock), timeout=1.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = vm_dir.read_exit()
        if ended and ended.get("generation") == generation:
            if ended.get("clean"):            # the guest ran and powered off before the API was asked:
                return vm_dir.read_instance() or {}     # a run to completion, not a failed start
            raise VmStartError(ended.get("reason") or "volt-vmm exited during start")
        inst = vm_dir.read_instance()
        if inst and inst.get("generation") == generation and client.ping():
            return inst
        if supervisor.poll() is not None and (vm_dir.read_exit() or {}).get("generation") != generation:
            raise VmStartError(f"its supervisor could not start it: {supervisor_said(vm_dir, supervisor.returncode)}")
        time.sleep(0.01)   # polling the socket/exit record; the VMM reports through them
    abandon(vm_dir, generation, supervisor)
    raise VmStartError(f"volt-vmm did not answer on {vm_dir.api_sock} within {timeout:g} s (it was killed)")


def supervisor_said(vm_dir: VmDir, code: int) -> str:
    """The last line the supervisor wrote before it gave up (the log may be removed with a
    VM that was never created, so the line itself goes into the error), else its exit status."""
    try:
        with open(vm_dir.supervisor_log, "rb") as log:
            log.seek(max(0, os.fstat(log.fileno()).st_size - 4096))
            lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    if lines:
        return lines[-1].removeprefix("supervisor: ")[:300]
    return os.strerror(code) if 0 < code < 256 and code != 1 else f"status {code}"


def abandon(vm_dir: VmDir, generation: str, supervisor: subprocess.Popen) -> None:
    """A start that timed out: kill the VMM and the supervisor it started, so nothing keeps
    running behind a start that was reported failed (and whose directory may be removed)."""
    inst = vm_dir.read_instance()
    if inst and inst.get("generation") == generation:
        write_json(vm_dir.instance, dict(inst, stop_requested=True))
        kill(inst.get("vmm_pid"), inst.get("vmm_start"), signal.SIGKILL)
        wait_gone(inst["vmm_pid"], inst.get("vmm_start"), 5.0)
        wait_exit_record(vm_dir, generation, 5.0)
    supervisor.kill()
    supervisor.wait()


def stop(vm_dir: VmDir, timeout: float = STOP_TIMEOUT_S) -> str:
    """Ctrl-Alt-Del, wait up to `timeout`, then SIGKILL. Returns how it went."""
    inst = vm_dir.read_instance()
    if not inst or not is_alive(inst.get("vmm_pid"), inst.get("vmm_start")):
        return "not running"
    from ..api.client import ApiClient, ApiError, ApiUnavailable
    pid, ticks = inst["vmm_pid"], inst.get("vmm_start")
    write_json(vm_dir.instance, dict(inst, stop_requested=True))
    applied = vm_dir.read_applied() or {}
    triggers = (applied.get("snapshots") or {}).get("triggers") or []
    answer_within = SNAPSHOT_TIMEOUT_S if any(t.get("trigger") == "stop" for t in triggers) else 2.0
    try:
        ApiClient(str(vm_dir.api_sock), timeout=answer_within).put("/actions", {"action_type": "SendCtrlAltDel"})
    except (ApiUnavailable, ApiError):
        kill(pid, ticks, signal.SIGTERM)
    if wait_gone(pid, ticks, timeout):
        wait_exit_record(vm_dir, inst.get("generation"), 5.0)
        return "powered off"
    kill(pid, ticks, signal.SIGKILL)
    wait_gone(pid, ticks, 5.0)
    wait_exit_record(vm_dir, inst.get("generation"), 5.0)
    return f"killed after {timeout:g} s"


def kill_now(vm_dir: VmDir) -> None:
    inst = vm_dir.read_instance()
    if inst and is_alive(inst.get("vmm_pid"), inst.get("vmm_start")):
        write_json(vm_dir.instance, dict(inst, stop_requested=True))
    if inst and kill(inst.get("vmm_pid"), inst.get("vmm_start"), signal.SIGKILL):
        wait_gone(inst["vmm_pid"], inst.get("vmm_start"), 5.0)
        wait_exit_record(vm_dir, inst.get("generation"), 5.0)


def wait_gone(pid: int, ticks: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_alive(pid, ticks):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)   # waiting on another process's exit: no fd to block on
    return True


def wait_exit_record(vm_dir: VmDir, generation: str | None, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = vm_dir.read_exit()
        if rec and rec.get("generation") == generation:
            return rec
        time.sleep(0.01)
    return None
