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


def jail_for(config, files: list[str]):
    """The jail of a hand-started VMM: what `config` names, and `files` (its --config, --policy)."""
    from ..jail.config import JailConfig, Limits, default_memory_limit, jail_uid, python_paths
    boot = config.boot_source
    kernel = [boot.kernel, *([boot.initrd] if boot.initrd else [])] if boot else []
    ro = python_paths() + ["/sys/module"] + kernel + files + [d.path for d in config.drives if d.read_only]
    rw = [d.path for d in config.drives if not d.read_only]
    rw += [config.api.state_dir] if config.api else []
    rw += [config.restore.snapshot_dir] if config.restore else []
    uid = jail_uid(config.name, set())
    return JailConfig(name=config.name, uid=uid, gid=uid, root=tempfile.mkdtemp(prefix=f"volt-jail-{config.name}-"),
                      ro=[os.path.abspath(p) for p in ro], rw=[os.path.abspath(p) for p in rw],
                      owned=[os.path.abspath(p) for p in rw],
                      limits=Limits(memory_bytes=default_memory_limit(config.machine.memory_mib << 20),
                                    cpu_quota=float(config.machine.vcpus), pids=256))


def run_jailed(argv: list[str], opts: dict, vmm_config) -> int:
    from ..jail.cgroups import remove
    from ..jail.enter import spawn
    config = jail_for(vmm_config, [opts[k] for k in ("config", "policy") if k in opts])
    taps = [nic.tap for nic in vmm_config.network]
    cmd = [sys.executable, "-m", "volt_spec.vmm.main", *[a for a in argv if a != "--jail"], "--seccomp"]
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
