"""`Kvm`: the /dev/kvm system fd, one thin method per system ioctl."""

from __future__ import annotations

import ctypes
import os

from . import ioctls as io
from . import structs as s
from ._sys import ioctl, ioctl_ref
from .caps import Cap, REQUIRED_FOR_BOOT
from .errors import KvmError, MissingCapability

KVM_API_VERSION = 12
KVM_DEV_PATH = "/dev/kvm"
MAX_CPUID_ENTRIES = 256
MAX_MSR_ENTRIES = 1024


KVM_FD_ENV = "VOLT_KVM_FD"          # a /dev/kvm fd the jail opened for this VMM (jail/enter.py)


class KvmUnavailable(RuntimeError):
    """/dev/kvm is missing or cannot be opened: a one-line reason for the user."""


class Kvm:
    """An open /dev/kvm."""

    def __init__(self, path: str = KVM_DEV_PATH) -> None:
        inherited = os.environ.pop(KVM_FD_ENV, None)
        if inherited is not None and path == KVM_DEV_PATH:    # opened by the jail before it dropped root
            self.fd = int(inherited)
            os.set_inheritable(self.fd, False)
            return
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(f"{path} does not exist: this host has no KVM (enable virtualization or load kvm)") from None
        except PermissionError:
            raise KvmUnavailable(f"{path}: permission denied (run as root or join the 'kvm' group)") from None
        version = self.get_api_version()
        if version != KVM_API_VERSION:
            raise KvmUnavailable(f"{path}: KVM API version {version}, volt-vmm needs {KVM_API_VERSION}")

    def close(self) -> None:
        os.close(self.fd)

    def get_api_version(self) -> int:
        """KVM_GET_API_VERSION"""
        return ioctl(self.fd, io.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific positive value."""
        return ioctl(self.fd, io.KVM_CHECK_EXTENSION, int(cap), "KVM_CHECK_EXTENSION")

    def require(self, caps: tuple[Cap, ...] = REQUIRED_FOR_BOOT) -> None:
        """Raise MissingCapability naming the first capability this host lacks."""
        for cap in caps:
            if self.check_extension(cap) <= 0:
                raise MissingCapability(cap.name)

    def get_vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE"""
        return ioctl(self.fd, io.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")

    def create_vm(self) -> int:
        """KVM_CREATE_VM: returns the new VM fd (wrap it in `Vm`)."""
        return ioctl(self.fd, io.KVM_CREATE_VM, 0, "KVM_CREATE_VM")

    def get_supported_cpuid(self) -> ctypes.Structure:
        """KVM_GET_SUPPORTED_CPUID: a kvm_cpuid2 with `nent` valid entries."""
        cpuid = s.kvm_cpuid2(MAX_CPUID_ENTRIES)()
        cpuid.nent = MAX_CPUID_ENTRIES
        ioctl_ref(self.fd, io.KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID")
        return cpuid

    def get_msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: every MSR index KVM saves and restores."""
        msrs = s.kvm_msr_list(MAX_MSR_ENTRIES)()
        msrs.nmsrs = MAX_MSR_ENTRIES
        ioctl_ref(self.fd, io.KVM_GET_MSR_INDEX_LIST, msrs, "KVM_GET_MSR_INDEX_LIST")
        return list(msrs.indices[: msrs.nmsrs])

    def max_vcpus(self) -> int:
        """The most vCPUs a VM may have (KVM_CAP_MAX_VCPUS, else KVM_CAP_NR_VCPUS, else 4)."""
        return self.check_extension(Cap.MAX_VCPUS) or self.check_extension(Cap.NR_VCPUS) or 4


__all__ = ["Kvm", "KvmError", "KvmUnavailable", "MissingCapability"]
