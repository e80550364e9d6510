"""What one VMM's jail is made of: its ids, its root's contents, its limits (one JSON file)."""

from __future__ import annotations

import json
import os
import sys
import zlib
from dataclasses import asdict, dataclass, field

JAIL_UID_BASE = 200_000           # per-VM uids/gids: 200000 + crc32(name) % SPAN, probed on collision
JAIL_UID_SPAN = 60_000
DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]


def default_memory_limit(guest_bytes: int) -> int:
    """The VMM's cgroup memory limit by default: guest RAM; as much again for the memory file a
    snapshot writes (page cache, and all of it on a tmpfs, is charged to the writer's cgroup: at
    guest + 256 MiB the kernel OOM-killed a VMM writing 384 MiB of guest data to a tmpfs); as much
    again for the pages the running guest copies on write while the forked writer holds the old
    ones (at 2 x guest + 256 MiB the hardware lane OOM-killed a VMM snapshotting 384 MiB of a guest
    rewriting its memory); and 256 MiB for the VMM itself."""
    return 3 * guest_bytes + (256 << 20)


@dataclass
class Limits:
    """The cgroup's limits (memory.max / memory.limit_in_bytes, cpu quota, pids.max)."""
    memory_bytes: int
    cpu_quota: float              # CPUs' worth of time per period (1.5 = one and a half)
    pids: int


@dataclass
class JailConfig:
    name: str
    uid: int
    gid: int
    root: str                                       # host directory the jail's tmpfs root is mounted on
    ro: list[str] = field(default_factory=list)     # host paths visible read-only, at the same paths
    rw: list[str] = field(default_factory=list)     # host paths visible read-write
    owned: list[str] = field(default_factory=list)  # host directories given to the jail's uid (state)
    limits: Limits | None = None
    nofile: int = 4096
    preopen: str | None = None      # a directory (another VM's snapshot) whose files the VMM gets as fds
    userfaultfd: bool = False       # pass a /dev/userfaultfd fd: a compressed snapshot is restored on demand

    def dump(self, path: str) -> None:
        from ..fsutil import atomic_write
        atomic_write(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", mode=0o600)

    @staticmethod
    def load(path: str) -> JailConfig:
        with open(path) as f:
            raw = json.load(f)
        limits = raw.pop("limits", None)
        return JailConfig(**raw, limits=Limits(**limits) if limits else None)


def jail_uid(name: str, taken: set[int]) -> int:
    """A uid (and gid) of the VM's own, stable across restarts, not one another VM holds."""
    uid = JAIL_UID_BASE + zlib.crc32(name.encode()) % JAIL_UID_SPAN
    while uid in taken:
        uid = JAIL_UID_BASE + (uid - JAIL_UID_BASE + 1) % JAIL_UID_SPAN
    return uid


def python_paths() -> list[str]:
    """What this Python needs to start and import volt_spec: its prefix, the venv, the package's
    source (editable installs), and the shared libraries it links."""
    import volt_spec
    paths = {sys.base_prefix, sys.prefix, os.path.dirname(os.path.dirname(os.path.abspath(volt_spec.__file__)))}
    # Installed packages outside those (a user site, a distribution's dist-packages); never the
    # current directory (`python -m` puts it first): it may hold $VOLT_HOME, and a read-only bind
    # of a parent would hide the state below it behind its 0700 directories.
    paths |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)}
    for lib in ("/usr/lib", "/usr/lib64", "/lib", "/lib64"):
        if os.path.isdir(lib) and not os.path.islink(lib):
            paths.add(lib)
    return sorted(_outermost(paths))


def _outermost(paths: set[str]) -> set[str]:
    """Drop paths inside others (one bind mount covers them)."""
    real = sorted({os.path.realpath(p) for p in paths})
    out: set[str] = set()
    for p in real:
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.add(p)
    return out
