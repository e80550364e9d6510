"""KVM ioctl request numbers, computed exactly as <asm-generic/ioctl.h> does.

Only declarations live here (name -> request number); the wrappers in
system.py / vm.py / vcpu.py are the only callers. A comment names the
capability an ioctl needs when it is not part of the base API.
"""

from __future__ import annotations

import ctypes

from . import structs as s

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _IOC(direction: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (KVMIO << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (
        size << _IOC_SIZESHIFT)


def _IO(nr: int) -> int:
    return _IOC(_IOC_NONE, nr, 0)


def _IOR(nr: int, t: type) -> int:
    return _IOC(_IOC_READ, nr, ctypes.sizeof(t))


def _IOW(nr: int, t: type) -> int:
    return _IOC(_IOC_WRITE, nr, ctypes.sizeof(t))


def _IOWR(nr: int, t: type) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(t))


# /dev/kvm (system) ioctls
KVM_GET_API_VERSION = _IO(0x00)
KVM_CREATE_VM = _IO(0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(0x02, s.KvmMsrListHeader)
KVM_CHECK_EXTENSION = _IO(0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(0x05, s.KvmCpuid2Header)        # KVM_CAP_EXT_CPUID
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(0x0A, s.KvmMsrListHeader)

# VM ioctls
KVM_CREATE_VCPU = _IO(0x41)
KVM_GET_DIRTY_LOG = _IOW(0x42, s.KvmDirtyLog)
KVM_SET_USER_MEMORY_REGION = _IOW(0x46, s.KvmUserspaceMemoryRegion)
KVM_SET_TSS_ADDR = _IO(0x47)                                     # KVM_CAP_SET_TSS_ADDR
KVM_SET_IDENTITY_MAP_ADDR = _IOW(0x48, ctypes.c_uint64)          # KVM_CAP_SET_IDENTITY_MAP_ADDR
KVM_CREATE_IRQCHIP = _IO(0x60)                                   # KVM_CAP_IRQCHIP
KVM_IRQ_LINE = _IOW(0x61, s.KvmIrqLevel)
KVM_GET_IRQCHIP = _IOWR(0x62, s.KvmIrqchip)
KVM_SET_IRQCHIP = _IOR(0x63, s.KvmIrqchip)                       # sic: _IOR in the header
KVM_IRQFD = _IOW(0x76, s.KvmIrqfd)                               # KVM_CAP_IRQFD
KVM_CREATE_PIT2 = _IOW(0x77, s.KvmPitConfig)                     # KVM_CAP_PIT2
KVM_IOEVENTFD = _IOW(0x79, s.KvmIoeventfd)                       # KVM_CAP_IOEVENTFD
KVM_SET_CLOCK = _IOW(0x7B, s.KvmClockData)                       # KVM_CAP_ADJUST_CLOCK
KVM_GET_CLOCK = _IOR(0x7C, s.KvmClockData)                       # KVM_CAP_ADJUST_CLOCK
KVM_GET_PIT2 = _IOR(0x9F, s.KvmPitState2)                        # KVM_CAP_PIT_STATE2
KVM_SET_PIT2 = _IOW(0xA0, s.KvmPitState2)                        # KVM_CAP_PIT_STATE2
KVM_ENABLE_CAP = _IOW(0xA3, s.KvmEnableCap)
KVM_CLEAR_DIRTY_LOG = _IOWR(0xC0, s.KvmClearDirtyLog)             # KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2

# vCPU ioctls
KVM_RUN = _IO(0x80)
KVM_GET_REGS = _IOR(0x81, s.KvmRegs)
KVM_SET_REGS = _IOW(0x82, s.KvmRegs)
KVM_GET_SREGS = _IOR(0x83, s.KvmSregs)
KVM_SET_SREGS = _IOW(0x84, s.KvmSregs)
KVM_GET_MSRS = _IOWR(0x88, s.KvmMsrsHeader)
KVM_SET_MSRS = _IOW(0x89, s.KvmMsrsHeader)
KVM_GET_FPU = _IOR(0x8C, s.KvmFpu)
KVM_SET_FPU = _IOW(0x8D, s.KvmFpu)
KVM_GET_LAPIC = _IOR(0x8E, s.KvmLapicState)                      # KVM_CAP_IRQCHIP
KVM_SET_LAPIC = _IOW(0x8F, s.KvmLapicState)                      # KVM_CAP_IRQCHIP
KVM_SET_CPUID2 = _IOW(0x90, s.KvmCpuid2Header)                   # KVM_CAP_EXT_CPUID
KVM_GET_CPUID2 = _IOWR(0x91, s.KvmCpuid2Header)                  # KVM_CAP_EXT_CPUID
KVM_GET_MP_STATE = _IOR(0x98, s.KvmMpState)                      # KVM_CAP_MP_STATE
KVM_SET_MP_STATE = _IOW(0x99, s.KvmMpState)                      # KVM_CAP_MP_STATE
KVM_SET_GUEST_DEBUG = _IOW(0x9B, s.KvmGuestDebug)                # KVM_CAP_SET_GUEST_DEBUG
KVM_GET_VCPU_EVENTS = _IOR(0x9F, s.KvmVcpuEvents)                # KVM_CAP_VCPU_EVENTS
KVM_SET_VCPU_EVENTS = _IOW(0xA0, s.KvmVcpuEvents)                # KVM_CAP_VCPU_EVENTS
KVM_GET_DEBUGREGS = _IOR(0xA1, s.KvmDebugregs)                   # KVM_CAP_DEBUGREGS
KVM_SET_DEBUGREGS = _IOW(0xA2, s.KvmDebugregs)                   # KVM_CAP_DEBUGREGS
KVM_SET_TSC_KHZ = _IO(0xA2)                                      # KVM_CAP_TSC_CONTROL
KVM_GET_TSC_KHZ = _IO(0xA3)                                      # KVM_CAP_GET_TSC_KHZ
KVM_GET_XSAVE = _IOR(0xA4, s.KvmXsave)                           # KVM_CAP_XSAVE
KVM_SET_XSAVE = _IOW(0xA5, s.KvmXsave)                           # KVM_CAP_XSAVE
KVM_GET_XCRS = _IOR(0xA6, s.KvmXcrs)                             # KVM_CAP_XCRS
KVM_SET_XCRS = _IOW(0xA7, s.KvmXcrs)                             # KVM_CAP_XCRS
KVM_KVMCLOCK_CTRL = _IO(0xAD)
KVM_GET_XSAVE2 = _IOR(0xCF, s.KvmXsave)                          # KVM_CAP_XSAVE2

# Every request number, by its C name, for the header comparison test.
ALL: dict[str, int] = {k: v for k, v in globals().items() if k.startswith("KVM_") and isinstance(v, int)
                       and k not in ("KVMIO",)}
