"""Start a VMM in its jail: the order matters, and is Firecracker's jailer's.

In the parent (root): the VM's cgroups are made, /dev/kvm and the taps are opened (their fds are
what the VMM gets: it could not open them as its own uid), and the parent enters a new pid
namespace for its children. After the fork the parent moves the child into the cgroups while it
starts (a cgroup v1 move waits out an RCU grace period, 5-15 ms when none is under way: measured
on our hosts), then writes the go byte the VMM waits for before it reads guest input. In the
child, before exec: new mount, ipc and uts
namespaces; a tmpfs root holding, at their host paths, only the bind mounts the config names
(read-only unless `rw`), the device nodes, and a private /proc; pivot_root into it and detach the
host's tree; the root remounted read-only; rlimits; every capability dropped from the bounding
and ambient sets; the VM's uid/gid with no supplementary groups; no_new_privs. Then exec. The
VMM loads its seccomp filter itself (`--seccomp`) before it reads guest input.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess

from . import GO, GO_FD_ENV, cgroups, libc
from .config import DEVICES, JailConfig

OLD_ROOT = ".old-root"
LIB_LINKS = ("/lib", "/lib64", "/lib32", "/libx32")
KVM_FD_ENV = "VOLT_KVM_FD"
TAP_FDS_ENV = "VOLT_TAP_FDS"
UFFD_FD_ENV = "VOLT_UFFD_FD"            # kvm/userfault.py reads it
from ..fsutil import PREOPEN_DIR_ENV, PREOPEN_FDS_ENV  # noqa: E402  (the VMM reads them there)


class JailError(RuntimeError):
    """The jail could not be set up: the message names the step."""


def prepare(config: JailConfig) -> dict[str, str]:
    """Host-side, as root, before the fork: the cgroups, the root's mount point, the state
    directories given to the VM's uid. Returns the cgroup dirs."""
    os.makedirs(config.root, mode=0o700, exist_ok=True)
    for path in config.owned:
        chown_tree(path, config.uid, config.gid)
    cgroups.ensure_mounted()
    dirs = cgroups.plan(cgroups.leaf(config.name, config.root))
    if config.limits is not None:
        cgroups.create(dirs, config.limits)
    return dirs


def chown_tree(path: str, uid: int, gid: int) -> None:
    """Give `path` (a directory tree, or a disk image) to the jail's uid. A read-only file system
    is left as it is: the VMM then fails to write there, and says so, as it would unjailed."""
    try:
        if not os.path.isfile(path):
            os.makedirs(path, mode=0o700, exist_ok=True)
            for top, dirs, files in os.walk(path):
                for name in [*dirs, *files]:
                    _chown(os.path.join(top, name), uid, gid)
        _chown(path, uid, gid)
    except OSError as e:
        if e.errno != errno.EROFS:
            raise


def _chown(path: str, uid: int, gid: int) -> None:
    """chown only what is not the jail's yet: a chown always sets the file's ctime, and a memory
    file's fingerprint holds its ctime (snapshot/fingerprint.py), so a chown at every restore made
    every jailed restore read the whole memory file against its checksum (+29 ms for 64 MiB)."""
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid, follow_symlinks=False)


def _open_userfaultfd() -> int | None:
    """/dev/userfaultfd for a VMM restoring a compressed snapshot (root-only: the VMM could not
    open it; USERFAULTFD_IOC_NEW on this fd gives it a userfaultfd for its own memory only). None
    where the kernel has no such device: the VMM then decompresses ahead."""
    try:
        return os.open("/dev/userfaultfd", os.O_RDWR)
    except OSError:
        return None


def spawn(cmd: list[str], config: JailConfig, taps: list[str] = (), **popen) -> tuple[subprocess.Popen, dict]:
    """The jailed VMM as a child of the caller (its host pid is the Popen's), and what status
    reports of the jail: {uid, gid, cgroup, root}."""
    from ..kvm.system import KVM_DEV_PATH
    dirs = prepare(config)
    kvm_fd = os.open(KVM_DEV_PATH, os.O_RDWR)            # inheritable: the VMM's /dev/kvm
    tap_fds = _open_taps(taps)
    env = dict(popen.pop("env", None) or os.environ)
    env[KVM_FD_ENV] = str(kvm_fd)
    uffd_dev = _open_userfaultfd() if config.userfaultfd else None
    extra = [uffd_dev] if uffd_dev is not None else []
    if extra:
        env[UFFD_FD_ENV] = str(uffd_dev)
    if tap_fds:
        env[TAP_FDS_ENV] = ",".join(f"{name}={tap.fileno()}" for name, tap in tap_fds.items())
    files = preopened(config.preopen)
    if files:
        env[PREOPEN_DIR_ENV] = config.preopen
        env[PREOPEN_FDS_ENV] = ",".join(f"{name}={fd}" for name, fd in files.items())
    # The next child starts a pid namespace (it is pid 1 there, its Popen pid its host pid); then
    # the caller goes back to its own for later children, or it could not start threads again.
    go_r, go_w = os.pipe()
    env[GO_FD_ENV] = str(go_r)
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    libc.unshare(libc.CLONE_NEWPID)
    try:
        proc = subprocess.Popen(cmd, env=env, pass_fds=(kvm_fd, go_r, *(t.fileno() for t in tap_fds.values()),
                                                        *files.values(), *extra),
                                preexec_fn=lambda: _child(config), **popen)
    finally:
        libc.setns(own_pid_ns, libc.CLONE_NEWPID)
        for fd in (own_pid_ns, kvm_fd, go_r, *files.values(), *extra):
            os.close(fd)
        for tap in tap_fds.values():
            tap.close()
    _place(proc, dirs, go_w)
    return proc, {"uid": config.uid, "gid": config.gid, "pid": 1, "cgroup": sorted(set(dirs.values())),
                  "root": config.root}


def preopened(folder: str | None) -> dict[str, int]:
    """The regular files directly in `folder` (another VM's snapshot, owned by that VM's uid),
    opened read-only here, as root, for a VMM whose uid may not read them (fsutil.open_regular
    hands it these instead of opening the path)."""
    if folder is None:
        return {}
    from ..fsutil import NotRegularFile, open_regular
    out: dict[str, int] = {}
    for name in sorted(os.listdir(folder)):
        if not name.startswith(".") and "," not in name and "=" not in name:
            try:
                out[name] = open_regular(os.path.join(folder, name))
            except (NotRegularFile, OSError):
                pass                        # a directory, a symlink: nothing a restore reads
    return out


def _place(proc: subprocess.Popen, dirs: dict[str, str], go_w: int) -> None:
    """Move the started VMM into its cgroups, then let it go on; it never runs guest input
    outside them (a VMM that cannot be placed is killed)."""
    try:
        cgroups.join(dirs, proc.pid)
        os.write(go_w, GO)
    except OSError as e:
        if proc.poll() is not None:
            return                        # it failed in its jail's set-up: its stderr says why
        proc.kill()
        proc.wait()
        raise JailError(f"cannot move the VMM into its cgroup: {e.strerror or e}") from None
    finally:
        os.close(go_w)


def _open_taps(names) -> dict:
    from ..devices.virtio.tap import Tap
    out = {}
    for name in names:
        tap = Tap(name)
        os.set_inheritable(tap.fileno(), True)
        out[name] = tap
    return out


def _child(config: JailConfig) -> None:
    """Between fork and exec, as root, in the new pid namespace (pid 1 there)."""
    try:
        libc.unshare(libc.CLONE_NEWNS | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS)
        libc.sethostname(f"volt-{config.name}")
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        build_root(config)
        enter_root(config.root)
        limit_and_drop(config)
    except BaseException as e:     # the parent sees an exec failure with this text
        os.write(2, f"volt jail: {e}\n".encode())
        os._exit(127)


def build_root(config: JailConfig) -> None:
    root = config.root
    libc.mount("tmpfs", root, "tmpfs", libc.MS_NOSUID, "mode=0755,size=1m")
    for path in sorted(set(config.ro) | set(config.rw) | set(DEVICES)):
        if not os.path.exists(path):
            continue
        target = root + path
        if os.path.isdir(path):
            os.makedirs(target, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            open(target, "a").close()
        libc.mount(path, target, None, libc.MS_BIND | libc.MS_REC)
        if path not in config.rw and path not in DEVICES:
            libc.mount(None, target, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_NOSUID
                       | libc.MS_NODEV)
    for link in LIB_LINKS:                  # merged-/usr hosts: /lib64 -> usr/lib64 holds the ELF loader
        if os.path.islink(link):
            os.symlink(os.readlink(link), root + link)
    os.makedirs(root + "/proc", mode=0o555, exist_ok=True)
    libc.mount("proc", root + "/proc", "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
    os.makedirs(root + "/tmp", mode=0o1777, exist_ok=True)
    os.makedirs(root + "/" + OLD_ROOT, mode=0o700, exist_ok=True)


def enter_root(root: str) -> None:
    os.chdir(root)
    libc.pivot_root(".", OLD_ROOT)
    os.chdir("/")
    libc.umount2("/" + OLD_ROOT, libc.MNT_DETACH)
    os.rmdir("/" + OLD_ROOT)
    libc.mount(None, "/", None, libc.MS_REMOUNT | libc.MS_BIND | libc.MS_RDONLY | libc.MS_NOSUID)


def limit_and_drop(config: JailConfig) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (config.nofile, config.nofile))
    for cap in range(libc.CAP_LAST_CAP + 1):
        try:
            libc.prctl(libc.PR_CAPBSET_DROP, cap)
        except OSError:
            pass                          # beyond this kernel's last capability
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    os.setgroups([])
    os.setresgid(config.gid, config.gid, config.gid)
    os.setresuid(config.uid, config.uid, config.uid)   # uids all non-zero: permitted/effective caps cleared
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
