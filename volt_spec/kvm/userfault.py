"""userfaultfd(2): missing-page faults on guest RAM delivered to a handler that fills them.

One thin method per ioctl of <linux/userfaultfd.h> (x86_64 numbers, checked against the header).
A fault KVM takes on a registered page (the guest's first touch, through get_user_pages) waits
like a user fault until the handler copies the page in: that is how a compressed snapshot is
decompressed on demand. The handler must not share the faulting process's GIL (a Python thread
reading guest memory through an mmap slice would hold it while it waits), so it runs in a
forked child, which the uffd serves as well as it serves the process that made it.

Where it comes from: an fd of /dev/userfaultfd the jail opened for the VMM (USERFAULTFD_IOC_NEW
on it needs no privilege), else the userfaultfd syscall (root, or vm.unprivileged_userfaultfd),
else /dev/userfaultfd itself. None of them: None, and the caller decompresses ahead instead.
"""

from __future__ import annotations

import ctypes
import os

from ._sys import ioctl, ioctl_ref
from .errors import KvmError

UFFD_FD_ENV = "VOLT_UFFD_FD"             # a /dev/userfaultfd fd the jail opened for this VMM
SYS_USERFAULTFD = 323
USERFAULTFD_IOC_NEW = 0xAA00
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_UNREGISTER = 0x8010AA01
UFFDIO_WAKE = 0x8010AA02
UFFDIO_COPY = 0xC028AA03
UFFDIO_ZEROPAGE = 0xC020AA04
UFFD_API = 0xAA
UFFDIO_REGISTER_MODE_MISSING = 1
UFFD_EVENT_PAGEFAULT = 0x12
MSG_SIZE = 32                            # sizeof(struct uffd_msg)
MSG_ADDRESS = 16                         # offsetof(struct uffd_msg, arg.pagefault.address)
O_CLOEXEC, O_NONBLOCK = 0o2000000, 0o4000


class UffdioApi(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class UffdioRange(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class UffdioRegister(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class UffdioCopy(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("copy", ctypes.c_int64)]


class UffdioZeropage(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64), ("zeropage", ctypes.c_int64)]


for _s, _n in ((UffdioApi, 24), (UffdioRange, 16), (UffdioRegister, 32), (UffdioCopy, 40), (UffdioZeropage, 32)):
    assert ctypes.sizeof(_s) == _n, _s


class Userfault:
    """A userfaultfd for this process's memory, API handshake done."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        ioctl_ref(fd, UFFDIO_API, UffdioApi(api=UFFD_API), "UFFDIO_API")

    @classmethod
    def open(cls) -> tuple["Userfault | None", str]:
        """(a userfaultfd, "") or (None, why there is none here)."""
        flags = O_CLOEXEC | O_NONBLOCK
        inherited = os.environ.pop(UFFD_FD_ENV, None)
        tries: list[str] = []
        try:
            if inherited:
                try:
                    return cls(ioctl(int(inherited), USERFAULTFD_IOC_NEW, flags, "USERFAULTFD_IOC_NEW")), ""
                finally:
                    os.close(int(inherited))
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.syscall(SYS_USERFAULTFD, flags)
            if fd >= 0:
                return cls(fd), ""
            tries.append(f"userfaultfd: {os.strerror(ctypes.get_errno())}")
            dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
            try:
                return cls(ioctl(dev, USERFAULTFD_IOC_NEW, flags, "USERFAULTFD_IOC_NEW")), ""
            finally:
                os.close(dev)
        except (OSError, KvmError, ValueError) as e:
            tries.append(f"/dev/userfaultfd: {getattr(e, 'strerror', None) or e}")
        return None, "; ".join(tries)

    def register_missing(self, start: int, length: int) -> None:
        reg = UffdioRegister(range=UffdioRange(start, length), mode=UFFDIO_REGISTER_MODE_MISSING)
        ioctl_ref(self.fd, UFFDIO_REGISTER, reg, "UFFDIO_REGISTER")

    def unregister(self, start: int, length: int) -> None:
        ioctl_ref(self.fd, UFFDIO_UNREGISTER, UffdioRange(start, length), "UFFDIO_UNREGISTER")

    def wake(self, start: int, length: int) -> None:
        ioctl_ref(self.fd, UFFDIO_WAKE, UffdioRange(start, length), "UFFDIO_WAKE")

    def copy(self, dst: int, src: int, length: int) -> None:
        """Fill the missing pages [dst, dst+length) from `src` and wake who waits on them."""
        ioctl_ref(self.fd, UFFDIO_COPY, UffdioCopy(dst=dst, src=src, len=length), "UFFDIO_COPY")

    def zeropage(self, start: int, length: int) -> None:
        ioctl_ref(self.fd, UFFDIO_ZEROPAGE, UffdioZeropage(range=UffdioRange(start, length)), "UFFDIO_ZEROPAGE")

    def faults(self) -> list[int]:
        """Addresses of the page faults waiting (none: []); the fd is non-blocking."""
        try:
            raw = os.read(self.fd, MSG_SIZE * 64)
        except BlockingIOError:
            return []
        return [int.from_bytes(raw[i + MSG_ADDRESS:i + MSG_ADDRESS + 8], "little")
                for i in range(0, len(raw) - MSG_SIZE + 1, MSG_SIZE) if raw[i] == UFFD_EVENT_PAGEFAULT]

    def close(self) -> None:
        os.close(self.fd)
