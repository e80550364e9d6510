"""The single place that issues ioctl(2) for the KVM layer.

ctypes calls release the GIL, so a vCPU thread blocked in KVM_RUN does not
stop the rest of the VMM. Arguments go through c_ulong or a structure pointer:
`fcntl.ioctl` would parse ints as signed C ints and overflow on addresses.
"""

from __future__ import annotations

import ctypes

from .errors import KvmError

# SAFETY: libc's ioctl is variadic; we always pass (int fd, unsigned long req, one word).
_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.restype = ctypes.c_int


def ioctl(fd: int, request: int, arg: object, name: str) -> int:
    """ioctl(fd, request, arg) -> non-negative result, or KvmError(errno, name)."""
    if isinstance(arg, int):
        arg = ctypes.c_ulong(arg)
    ret = _ioctl(fd, ctypes.c_ulong(request), arg)
    if ret < 0:
        raise KvmError(ctypes.get_errno(), name)
    return ret


def ioctl_ref(fd: int, request: int, struct: ctypes.Structure, name: str) -> int:
    """ioctl with a pointer to `struct` as its argument."""
    ret = _ioctl(fd, ctypes.c_ulong(request), ctypes.byref(struct))
    if ret < 0:
        raise KvmError(ctypes.get_errno(), name)
    return ret
