"""The VMM's seccomp filter: a classic-BPF allow-list, built here (no libseccomp, no import cost).

Installed by volt-vmm itself (`install`, with no_new_privs already set by the jail) once it has
started and before it reads any guest input or starts a thread, so every thread inherits it and
execve is not needed after it. Any other system call kills the process with SIGSYS (status says
"killed by signal 31 (SIGSYS): a system call its seccomp filter forbids"). Arguments are checked
where a call's danger is in them: ioctl only with the request numbers the VMM issues (KVM's, by
number, and a few for files and terminals), socket only for AF_UNIX.

The list was taken by tracing the VMM through the test suite (boot, restore, snapshots, policies,
virtio disks and NICs, the API), then reviewed: nothing that changes identity, namespaces, mounts,
modules, another process's memory, or runs a program.
"""

from __future__ import annotations

import ctypes
import struct

from . import libc

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
RET_KILL_PROCESS = 0x80000000
RET_ALLOW = 0x7FFF0000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
OFF_NR, OFF_ARCH, OFF_ARG0, OFF_ARG1, OFF_ARG2 = 0, 4, 16, 24, 32   # struct seccomp_data (low words: little endian)
O_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000 | 0o20200000    # O_WRONLY O_RDWR O_CREAT O_TRUNC O_APPEND O_TMPFILE

# x86_64 numbers (<asm/unistd_64.h>).
SYSCALLS = {
    "read": 0, "write": 1, "open": 2, "close": 3, "stat": 4, "fstat": 5, "lstat": 6, "poll": 7, "lseek": 8,
    "mmap": 9, "mprotect": 10, "munmap": 11, "brk": 12, "rt_sigaction": 13, "rt_sigprocmask": 14,
    "rt_sigreturn": 15, "ioctl": 16, "pread64": 17, "pwrite64": 18, "readv": 19, "writev": 20, "access": 21,
    "pipe": 22, "select": 23, "sched_yield": 24, "mremap": 25, "madvise": 28, "dup": 32, "dup2": 33,
    "nanosleep": 35, "getpid": 39, "sendfile": 40, "socket": 41, "connect": 42, "accept": 43, "sendto": 44,
    "recvfrom": 45, "sendmsg": 46, "recvmsg": 47, "shutdown": 48, "bind": 49, "listen": 50,
    "getsockname": 51, "getpeername": 52, "socketpair": 53, "setsockopt": 54, "getsockopt": 55,
    "clone": 56, "fork": 57, "exit": 60, "wait4": 61, "kill": 62, "uname": 63, "fcntl": 72, "flock": 73,
    "fsync": 74, "fdatasync": 75, "truncate": 76, "ftruncate": 77, "getcwd": 79, "rename": 82,
    "mkdir": 83, "rmdir": 84, "unlink": 87, "readlink": 89, "chmod": 90, "fchmod": 91, "umask": 95,
    "getrusage": 98, "sysinfo": 99, "times": 100, "getuid": 102, "getgid": 104, "geteuid": 107,
    "getegid": 108, "getppid": 110, "getpgrp": 111, "getgroups": 115, "getresuid": 118, "getresgid": 120,
    "sigaltstack": 131, "statfs": 137, "fstatfs": 138, "sched_getparam": 143, "sched_getscheduler": 145,
    "prctl": 157, "arch_prctl": 158, "gettid": 186, "tkill": 200, "futex": 202, "sched_getaffinity": 204,
    "getdents64": 217, "set_tid_address": 218, "restart_syscall": 219, "fadvise64": 221,
    "clock_gettime": 228, "clock_getres": 229, "clock_nanosleep": 230, "exit_group": 231,
    "epoll_wait": 232, "epoll_ctl": 233, "tgkill": 234, "waitid": 247, "openat": 257, "mkdirat": 258,
    "newfstatat": 262, "unlinkat": 263, "renameat": 264, "readlinkat": 267, "fchmodat": 268,
    "faccessat": 269, "pselect6": 270, "ppoll": 271, "set_robust_list": 273, "get_robust_list": 274,
    "splice": 275, "sync_file_range": 277, "epoll_pwait": 281, "timerfd_create": 283, "eventfd": 284,
    "fallocate": 285, "timerfd_settime": 286, "timerfd_gettime": 287, "accept4": 288, "signalfd4": 289,
    "eventfd2": 290, "epoll_create1": 291, "dup3": 292, "pipe2": 293, "preadv": 295, "pwritev": 296,
    "prlimit64": 302, "getcpu": 309, "renameat2": 316, "getrandom": 318, "memfd_create": 319, "userfaultfd": 323, "membarrier": 324,
    "copy_file_range": 326, "preadv2": 327, "pwritev2": 328, "statx": 332, "rseq": 334, "clone3": 435,
    "close_range": 436, "faccessat2": 439, "epoll_pwait2": 441,
}
HOT = ["futex", "read", "write", "ppoll", "poll", "epoll_wait", "pread64", "pwrite64", "lseek", "recvfrom",
       "sendto", "clock_nanosleep"]             # checked first: the filter runs on every call
ALLOWED = HOT + sorted(set(SYSCALLS) - set(HOT))
AF_UNIX = 1
# Non-KVM ioctls: terminals (isatty), close-on-exec and non-blocking flags, reflink copies, taps.
OTHER_IOCTLS = {"TCGETS": 0x5401, "TIOCGWINSZ": 0x5413, "FIONREAD": 0x541B, "FIONBIO": 0x5421,
                "FIONCLEX": 0x5450, "FIOCLEX": 0x5451, "FICLONE": 0x40049409, "TUNSETIFF": 0x400454CA,
                "TUNGETIFF": 0x800454D2, "TUNSETOFFLOAD": 0x400454D0, "TUNSETVNETHDRSZ": 0x400454D8,
                # userfaultfd: a compressed snapshot's memory filled on demand (snapshot/lazy_memory.py)
                "USERFAULTFD_IOC_NEW": 0xAA00, "UFFDIO_API": 0xC018AA3F, "UFFDIO_REGISTER": 0xC020AA00,
                "UFFDIO_UNREGISTER": 0x8010AA01, "UFFDIO_WAKE": 0x8010AA02, "UFFDIO_COPY": 0xC028AA03,
                "UFFDIO_ZEROPAGE": 0xC020AA04}


def kvm_ioctls() -> list[int]:
    from ..kvm import ioctls
    return sorted({v for k, v in vars(ioctls).items() if k.startswith("KVM_") and isinstance(v, int)})


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _arg_block(offset: int, values: list[int]) -> list[bytes]:
    """A: syscall number on entry. Allow when the argument's low word is one of `values`, else kill."""
    out = [_insn(LD_W_ABS, offset)]
    for v in values:
        out += [_insn(JEQ_K, v, 0, 1), _insn(RET_K, RET_ALLOW)]
    return out + [_insn(RET_K, RET_KILL_PROCESS)]


def _read_only_block(offset: int) -> list[bytes]:
    """Allow the open only when its flags (the argument at `offset`) ask for no writing."""
    return [_insn(LD_W_ABS, offset), _insn(JSET_K, O_WRITE_FLAGS, 0, 1), _insn(RET_K, RET_KILL_PROCESS),
            _insn(RET_K, RET_ALLOW)]


def program(allowed: list[str] = ALLOWED, ioctls: list[int] | None = None, read_only_opens: bool = False) -> bytes:
    """The filter: right architecture, no x32, argument checks for ioctl and socket (and, with
    `read_only_opens`, opens only for reading), then the list."""
    ioctls = sorted(set(kvm_ioctls() if ioctls is None else ioctls) | set(OTHER_IOCTLS.values()))
    prog = [_insn(LD_W_ABS, OFF_ARCH), _insn(JEQ_K, AUDIT_ARCH_X86_64, 1, 0), _insn(RET_K, RET_KILL_PROCESS),
            _insn(LD_W_ABS, OFF_NR), _insn(JGE_K, X32_SYSCALL_BIT, 0, 1), _insn(RET_K, RET_KILL_PROCESS)]
    blocks = [("ioctl", _arg_block(OFF_ARG1, ioctls))]
    if "socket" in allowed:
        blocks.append(("socket", _arg_block(OFF_ARG0, [AF_UNIX])))
    if read_only_opens:
        blocks += [("openat", _read_only_block(OFF_ARG2)), ("open", _read_only_block(OFF_ARG1))]
    for name, block in blocks:
        if len(block) > 255:
            raise ValueError(f"too many {name} values for one BPF jump")
        prog += [_insn(JEQ_K, SYSCALLS[name], 0, len(block))] + block
        prog.append(_insn(LD_W_ABS, OFF_NR))          # the blocks that fall through left A as it was
    checked = {name for name, _ in blocks}
    for name in allowed:
        if name not in checked:
            prog += [_insn(JEQ_K, SYSCALLS[name], 0, 1), _insn(RET_K, RET_ALLOW)]
    prog.append(_insn(RET_K, RET_KILL_PROCESS))
    return b"".join(prog)


# What a device thread may not do on top of the process's filter. The vCPU threads run guest exits
# and device models (serial, i8042, RTC, virtio-mmio registers, and with --no-ioeventfd the queues);
# the virtio I/O thread serves the queues (disk reads, writes and flushes, tap frames, interrupts
# by eventfd): the code that handles guest-made data. Nothing else: no sockets, no new threads or
# processes, no changes to files or their names, and opens only for reading (lazy imports).
DEVICE_DENIED = {"socket", "connect", "accept", "accept4", "bind", "listen", "getsockname", "getpeername",
               "socketpair", "setsockopt", "getsockopt", "sendmsg", "recvmsg", "sendto", "recvfrom", "shutdown",
               "clone", "clone3", "fork", "wait4", "waitid", "kill", "rename", "renameat", "renameat2", "mkdir",
               "mkdirat", "unlink", "unlinkat", "rmdir", "chmod", "fchmod", "fchmodat", "truncate", "ftruncate",
               "fallocate", "copy_file_range", "sendfile", "splice", "flock", "umask", "prlimit64",
               "timerfd_create", "timerfd_settime", "signalfd4", "epoll_create1", "epoll_ctl", "pipe", "pipe2",
               "eventfd", "eventfd2", "dup", "dup2", "dup3", "prctl"}
_thread_programs: dict[str, bytes] = {}


def prepare_thread_filters() -> None:
    """Build the per-thread filters once, before any thread starts (threads only load them)."""
    _thread_programs["device"] = program([n for n in ALLOWED if n not in DEVICE_DENIED], read_only_opens=True)


def enter_thread(kind: str) -> None:
    """Narrow the calling thread's system calls to what a `kind` ("device") thread needs (filters stack:
    each call must pass the process's filter and this one). No-op unless prepared."""
    code = _thread_programs.get(kind)
    if code is not None:
        install(code)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(filter_bytes: bytes | None = None) -> None:
    """Load the filter for this thread and every thread it creates (no_new_privs must be set)."""
    code = program() if filter_bytes is None else filter_bytes
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc.prctl_ptr(libc.PR_SET_SECCOMP, libc.SECCOMP_MODE_FILTER, ctypes.byref(prog))
