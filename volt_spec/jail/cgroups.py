"""The VMM's cgroup: memory, CPU and pids limits, always below the cgroup volt itself runs in.

cgroup v2 when the host's controllers live there (a unified hierarchy with them enabled), else
v1 (our machines: the v1 controllers mounted under /sys/fs/cgroup/<controller>, an empty v2).
Firecracker's jailer handles both the same way. Never created anywhere else.
"""

from __future__ import annotations

import os
import zlib

from .config import Limits

ROOT = "/sys/fs/cgroup"
CPU_PERIOD_US = 100_000
V1_FILES = {"memory": "memory.limit_in_bytes", "pids": "pids.max"}


class CgroupError(OSError):
    pass


def own_cgroups(proc_cgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """{controller or "" (v2): this process's cgroup path}."""
    out = {}
    with open(proc_cgroup) as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def v2_controllers(root: str = ROOT) -> set[str]:
    try:
        with open(os.path.join(root, "cgroup.controllers")) as f:
            return set(f.read().split())
    except OSError:
        return set()


def ensure_mounted(proc_cgroup: str = "/proc/self/cgroup") -> bool:
    """Make the hierarchies this process is in visible at /sys/fs/cgroup when nothing is mounted
    there: under `ip netns exec` (how a VM is put on a tap in another network namespace) /sys is
    a fresh sysfs without them. They are mounted in a mount namespace of the caller's own, so
    the host's mounts stay as they are; the cgroups are the host's (a v1 hierarchy mounted again
    is the same hierarchy). True when it mounted them."""
    if os.path.ismount(ROOT):
        return False
    from . import libc
    with open(proc_cgroup) as f:
        v1 = [line.rstrip("\n").split(":", 2)[1] for line in f]
    v1 = [c for c in v1 if c and set(c.split(",")) & {"memory", "cpu", "pids"}]
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_SLAVE)
    if not v1:
        libc.mount("cgroup2", ROOT, "cgroup2", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
        return True
    libc.mount("volt-cgroups", ROOT, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, "mode=0755,size=64k")
    for controllers in v1:
        os.mkdir(os.path.join(ROOT, controllers), 0o755)
        libc.mount("cgroup", os.path.join(ROOT, controllers), "cgroup",
                   libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, controllers)
    return True


def leaf(name: str, jail_root: str) -> str:
    """The cgroup's name: the VM's, and a digest of its jail root (which names its $VOLT_HOME), so
    VMs of one name in two homes on a host never share a cgroup and its limits."""
    return f"volt-{name}-{zlib.crc32(os.path.abspath(jail_root).encode()):08x}"


def plan(cgroup: str, root: str = ROOT) -> dict[str, str]:
    """{controller: the directory of the VM's cgroup named `cgroup` (leaf())}: v2 ("" key) when
    memory, cpu and pids are there, else the v1 hierarchies of each."""
    mine = own_cgroups()
    if {"memory", "cpu", "pids"} <= v2_controllers(root) and "" in mine:
        return {"": os.path.join(root, mine[""].lstrip("/"), cgroup)}
    out = {}
    for c in ("memory", "cpu", "pids"):
        if c not in mine:
            raise CgroupError(f"no cgroup v1 {c} controller is mounted on {root}, nor v2 with it")
        base = os.path.join(root, c)
        if not os.path.isdir(base):
            base = os.path.join(root, "cpu,cpuacct") if c == "cpu" else base
        out[c] = os.path.join(base, mine[c].lstrip("/"), cgroup)
    return out


def create(dirs: dict[str, str], limits: Limits) -> None:
    """Make the cgroups and write the limits (a v1 cpu quota per period, or v2 cpu.max)."""
    quota = max(1000, int(limits.cpu_quota * CPU_PERIOD_US))
    for controller, path in dirs.items():
        if controller == "":
            _enable_v2(os.path.dirname(path))
        os.makedirs(path, exist_ok=True)
        if controller == "":
            _write(path, "memory.max", str(limits.memory_bytes))
            _write(path, "cpu.max", f"{quota} {CPU_PERIOD_US}")
            _write(path, "pids.max", str(limits.pids))
        elif controller == "cpu":
            _write(path, "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(path, "cpu.cfs_quota_us", str(quota))
        else:
            _write(path, V1_FILES[controller], str(limits.memory_bytes if controller == "memory" else limits.pids))


def _enable_v2(parent: str) -> None:
    """memory, cpu and pids for the parent's children (cgroup.subtree_control), if not yet."""
    try:
        with open(os.path.join(parent, "cgroup.subtree_control")) as f:
            enabled = set(f.read().split())
    except OSError:
        enabled = set()
    missing = {"memory", "cpu", "pids"} - enabled
    if missing:
        _write(parent, "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))


def join(dirs: dict[str, str], pid: int = 0) -> None:
    """Move `pid` (0: the caller) into the cgroups."""
    for path in dirs.values():
        _write(path, "cgroup.procs", str(pid or os.getpid()))


def remove(dirs: dict[str, str]) -> None:
    for path in dirs.values():
        try:
            os.rmdir(path)
        except OSError:
            pass                      # still has a process (it is ending), or already gone


def _write(path: str, name: str, value: str) -> None:
    try:
        with open(os.path.join(path, name), "w") as f:
            f.write(value)
    except OSError as e:
        raise CgroupError(e.errno, f"cannot write {value} to {name}: {e.strerror}", os.path.join(path, name)) from None
