"""The KVM layer's one exception type, mirroring kvm-ioctls' errno::Error."""

from __future__ import annotations

import os


class KvmError(OSError):
    """An ioctl on a KVM fd failed: carries errno and the ioctl's name."""

    def __init__(self, errno: int, ioctl: str) -> None:
        super().__init__(errno, f"{ioctl}: {os.strerror(errno)}")
        self.ioctl = ioctl


class MissingCapability(RuntimeError):
    """The host's KVM lacks a capability the VMM needs."""

    def __init__(self, cap_name: str) -> None:
        super().__init__(f"this host's KVM lacks KVM_CAP_{cap_name}, which volt-vmm needs")
        self.cap = cap_name
