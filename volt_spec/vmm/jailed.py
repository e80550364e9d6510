"""`volt-vmm --jail ...`: run this same command line again inside a jail (jail/enter.py).

For a VMM started by hand; `volt` jails the VMMs it starts itself (runner/vmctl.py). What the
jail holds is read from the options: the kernel and initrd and read-only disks (read-only), the
API socket's directory, --state-dir, the restored snapshot and writable disks (read-write, given
to the jail's uid). This process waits for the jailed VMM, passes it SIGTERM and SIGINT, and
exits with its status (128 + N when it was killed by signal N).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile


def jail_for(opts: dict, state_dir: str | None):
    from ..jail.config import JailConfig, Limits, default_memory_limit, jail_uid, python_paths
    from .virtio import DiskConfig
    name = opts.get("name", "vm")
    disks = [DiskConfig.parse(t, i) for i, t in enumerate(opts.get("disk", []))]
    ro = python_paths() + ["/sys/module"] + [p for p in (opts.get("kernel"), opts.get("initrd"), opts.get("policy"))
                                              if p] + [d.path for d in disks if d.read_only]
    rw = [d.path for d in disks if not d.read_only] + [p for p in (state_dir, opts.get("restore")) if p]
    uid = jail_uid(name, set())
    return JailConfig(name=name, uid=uid, gid=uid, root=tempfile.mkdtemp(prefix=f"volt-jail-{name}-"),
                      ro=[os.path.abspath(p) for p in ro], rw=[os.path.abspath(p) for p in rw],
                      owned=[os.path.abspath(p) for p in rw],
                      limits=Limits(memory_bytes=default_memory_limit(int(opts.get("memory", 128)) << 20),
                                    cpu_quota=float(opts.get("vcpus", 1)), pids=256))


def run_jailed(argv: list[str], opts: dict) -> int:
    from ..jail.enter import spawn
    from .main import state_dir
    state = state_dir(opts) if "api_sock" in opts else None
    config = jail_for(opts, state)
    taps = [t.split("tap=", 1)[1].split(",")[0] for t in opts.get("net", []) if "tap=" in t]
    cmd = [sys.executable, "-m", "volt_spec.vmm.main", *[a for a in argv if a != "--jail"], "--seccomp"]
    if state is not None and "--state-dir" not in " ".join(argv):
        cmd += ["--state-dir", state]
    from ..jail.cgroups import remove
    proc, jail = spawn(cmd, config, taps)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda n, _f: proc.send_signal(n))
    code = proc.wait()
    remove({str(i): path for i, path in enumerate(jail["cgroup"])})
    try:
        os.rmdir(config.root)
    except OSError:
        pass
    return 128 - code if code < 0 else code
