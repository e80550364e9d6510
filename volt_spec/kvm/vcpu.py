"""`Vcpu`: a KVM vCPU fd and its shared `kvm_run` page, one method per ioctl."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

from . import exits as x
from . import ioctls as io
from . import structs as s
from ._sys import _ioctl, ioctl, ioctl_ref
from .errors import KvmError

_U = s.KVM_RUN_EXIT_UNION_OFFSET
_IO_EXIT = struct.Struct("<BBHIQ")          # direction, size, port, count, data_offset
_MMIO_EXIT = struct.Struct("<Q8sIB")        # phys_addr, data[8], len, is_write
_FAIL_EXIT = struct.Struct("<QI")
_INTERNAL_EXIT = struct.Struct("<II")
_SYSEVENT_EXIT = struct.Struct("<II")
_DEBUG_EXIT = struct.Struct("<IIQ")         # exception, pad, pc
_EXIT_REASON = struct.Struct("<I")
KVM_EXIT_IO_IN = 0

KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4


class Vcpu:
    """A vCPU fd with its kvm_run page mapped."""

    def __init__(self, fd: int, index: int, mmap_size: int) -> None:
        self.fd = fd
        self.index = index
        # SAFETY: the kvm_run page is shared with the kernel; we only read the exit
        # union after KVM_RUN returns and write I/O data before the next KVM_RUN.
        self.run_page = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._run_head = s.KvmRunHeader.from_buffer(self.run_page)
        self._pending_in: tuple[int, int] | None = None    # (data offset, size) of an unanswered IN
        self._pending_mmio_read = False
        self._run_req = ctypes.c_ulong(io.KVM_RUN)
        self._zero = ctypes.c_ulong(0)

    def close(self) -> None:
        del self._run_head
        self.run_page.close()
        os.close(self.fd)

    # -- running -------------------------------------------------------------------------------
    def run(self) -> x.Exit:
        """KVM_RUN until the next exit that needs the VMM; returns what happened."""
        if _ioctl(self.fd, self._run_req, self._zero) < 0:
            err = ctypes.get_errno()
            if err in (errno.EINTR, errno.EAGAIN):
                return x.Interrupted()
            raise KvmError(err, "KVM_RUN")
        page = self.run_page
        reason = _EXIT_REASON.unpack_from(page, 8)[0]
        if reason == x.KVM_EXIT_IO:
            direction, size, port, count, offset = _IO_EXIT.unpack_from(page, _U)
            if direction == KVM_EXIT_IO_IN:
                self._pending_in = (offset, size * count)
                return x.IoIn(port, size * count)
            return x.IoOut(port, page[offset:offset + size * count])
        if reason == x.KVM_EXIT_MMIO:
            addr, data, length, is_write = _MMIO_EXIT.unpack_from(page, _U)
            if is_write:
                return x.MmioWrite(addr, data[:length])
            self._pending_mmio_read = True
            return x.MmioRead(addr, length)
        if reason == x.KVM_EXIT_HLT:
            return x.Hlt()
        if reason == x.KVM_EXIT_INTR:
            return x.Interrupted()
        if reason == x.KVM_EXIT_SHUTDOWN:
            return x.Shutdown()
        if reason == x.KVM_EXIT_SYSTEM_EVENT:
            etype, ndata = _SYSEVENT_EXIT.unpack_from(page, _U)
            return x.SystemEvent(etype, struct.unpack_from(f"<{min(ndata, 16)}Q", page, _U + 8))
        if reason == x.KVM_EXIT_FAIL_ENTRY:
            return x.FailEntry(*_FAIL_EXIT.unpack_from(page, _U))
        if reason == x.KVM_EXIT_INTERNAL_ERROR:
            sub, ndata = _INTERNAL_EXIT.unpack_from(page, _U)
            return x.InternalError(sub, struct.unpack_from(f"<{min(ndata, 16)}Q", page, _U + 8))
        if reason == x.KVM_EXIT_DEBUG:
            exc, _, pc = _DEBUG_EXIT.unpack_from(page, _U)
            return x.Debug(exc, pc)
        return x.Unknown(reason)

    def complete_io_in(self, data: bytes) -> None:
        """Hand the bytes of a pending IoIn to the guest (taken by the next KVM_RUN)."""
        assert self._pending_in is not None, "no IN exit pending"
        offset, size = self._pending_in
        self.run_page[offset:offset + size] = data[:size].ljust(size, b"\xff")
        self._pending_in = None

    def complete_mmio_read(self, data: bytes) -> None:
        """Hand the bytes of a pending MmioRead to the guest."""
        length = _MMIO_EXIT.unpack_from(self.run_page, _U)[2]
        self.run_page[_U + 8:_U + 8 + length] = data[:length].ljust(length, b"\xff")
        self._pending_mmio_read = False

    def set_immediate_exit(self, value: bool) -> None:
        """kvm_run.immediate_exit: the next (or current, after a signal) KVM_RUN returns EINTR."""
        self._run_head.immediate_exit = int(value)

    # -- registers -----------------------------------------------------------------------------
    def get_regs(self) -> s.KvmRegs:
        """KVM_GET_REGS"""
        regs = s.KvmRegs()
        ioctl_ref(self.fd, io.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    def set_regs(self, regs: s.KvmRegs) -> None:
        """KVM_SET_REGS"""
        ioctl_ref(self.fd, io.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> s.KvmSregs:
        """KVM_GET_SREGS"""
        sregs = s.KvmSregs()
        ioctl_ref(self.fd, io.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: s.KvmSregs) -> None:
        """KVM_SET_SREGS"""
        ioctl_ref(self.fd, io.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_fpu(self) -> s.KvmFpu:
        """KVM_GET_FPU"""
        fpu = s.KvmFpu()
        ioctl_ref(self.fd, io.KVM_GET_FPU, fpu, "KVM_GET_FPU")
        return fpu

    def set_fpu(self, fpu: s.KvmFpu) -> None:
        """KVM_SET_FPU"""
        ioctl_ref(self.fd, io.KVM_SET_FPU, fpu, "KVM_SET_FPU")

    def get_xsave(self) -> s.KvmXsave:
        """KVM_GET_XSAVE"""
        xsave = s.KvmXsave()
        ioctl_ref(self.fd, io.KVM_GET_XSAVE, xsave, "KVM_GET_XSAVE")
        return xsave

    def get_xsave2(self, size: int) -> ctypes.Structure:
        """KVM_GET_XSAVE2 with a buffer of `size` bytes (KVM_CHECK_EXTENSION(XSAVE2))."""
        xsave = s.kvm_xsave(size)()
        ioctl_ref(self.fd, io.KVM_GET_XSAVE2, xsave, "KVM_GET_XSAVE2")
        return xsave

    def set_xsave(self, xsave: ctypes.Structure) -> None:
        """KVM_SET_XSAVE (accepts the larger XSAVE2 buffer too)."""
        ioctl_ref(self.fd, io.KVM_SET_XSAVE, xsave, "KVM_SET_XSAVE")

    def get_xcrs(self) -> s.KvmXcrs:
        """KVM_GET_XCRS"""
        xcrs = s.KvmXcrs()
        ioctl_ref(self.fd, io.KVM_GET_XCRS, xcrs, "KVM_GET_XCRS")
        return xcrs

    def set_xcrs(self, xcrs: s.KvmXcrs) -> None:
        """KVM_SET_XCRS"""
        ioctl_ref(self.fd, io.KVM_SET_XCRS, xcrs, "KVM_SET_XCRS")

    def get_debugregs(self) -> s.KvmDebugregs:
        """KVM_GET_DEBUGREGS"""
        dregs = s.KvmDebugregs()
        ioctl_ref(self.fd, io.KVM_GET_DEBUGREGS, dregs, "KVM_GET_DEBUGREGS")
        return dregs

    def set_debugregs(self, dregs: s.KvmDebugregs) -> None:
        """KVM_SET_DEBUGREGS"""
        ioctl_ref(self.fd, io.KVM_SET_DEBUGREGS, dregs, "KVM_SET_DEBUGREGS")

    def get_lapic(self) -> s.KvmLapicState:
        """KVM_GET_LAPIC"""
        lapic = s.KvmLapicState()
        ioctl_ref(self.fd, io.KVM_GET_LAPIC, lapic, "KVM_GET_LAPIC")
        return lapic

    def set_lapic(self, lapic: s.KvmLapicState) -> None:
        """KVM_SET_LAPIC"""
        ioctl_ref(self.fd, io.KVM_SET_LAPIC, lapic, "KVM_SET_LAPIC")

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE"""
        mp = s.KvmMpState()
        ioctl_ref(self.fd, io.KVM_GET_MP_STATE, mp, "KVM_GET_MP_STATE")
        return mp.mp_state

    def set_mp_state(self, state: int) -> None:
        """KVM_SET_MP_STATE"""
        ioctl_ref(self.fd, io.KVM_SET_MP_STATE, s.KvmMpState(state), "KVM_SET_MP_STATE")

    def get_vcpu_events(self) -> s.KvmVcpuEvents:
        """KVM_GET_VCPU_EVENTS"""
        ev = s.KvmVcpuEvents()
        ioctl_ref(self.fd, io.KVM_GET_VCPU_EVENTS, ev, "KVM_GET_VCPU_EVENTS")
        return ev

    def set_vcpu_events(self, ev: s.KvmVcpuEvents) -> None:
        """KVM_SET_VCPU_EVENTS"""
        ioctl_ref(self.fd, io.KVM_SET_VCPU_EVENTS, ev, "KVM_SET_VCPU_EVENTS")

    def set_cpuid2(self, cpuid: ctypes.Structure) -> None:
        """KVM_SET_CPUID2"""
        ioctl_ref(self.fd, io.KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2")

    def get_cpuid2(self, max_entries: int = 256) -> ctypes.Structure:
        """KVM_GET_CPUID2"""
        cpuid = s.kvm_cpuid2(max_entries)()
        cpuid.nent = max_entries
        ioctl_ref(self.fd, io.KVM_GET_CPUID2, cpuid, "KVM_GET_CPUID2")
        return cpuid

    def get_msrs(self, indices: list[int]) -> list[tuple[int, int]]:
        """KVM_GET_MSRS: (index, value) for each index KVM could read, in order.

        KVM stops at the first MSR it cannot read: the result may be shorter.
        """
        msrs = s.kvm_msrs(len(indices))()
        msrs.nmsrs = len(indices)
        for i, index in enumerate(indices):
            msrs.entries[i].index = index
        n = ioctl_ref(self.fd, io.KVM_GET_MSRS, msrs, "KVM_GET_MSRS")
        return [(msrs.entries[i].index, msrs.entries[i].data) for i in range(n)]

    def set_msrs(self, values: list[tuple[int, int]]) -> int:
        """KVM_SET_MSRS: returns how many entries KVM accepted (it stops at the first failure)."""
        msrs = s.kvm_msrs(len(values))()
        msrs.nmsrs = len(values)
        for i, (index, data) in enumerate(values):
            msrs.entries[i].index = index
            msrs.entries[i].data = data
        return ioctl_ref(self.fd, io.KVM_SET_MSRS, msrs, "KVM_SET_MSRS")

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ"""
        return ioctl(self.fd, io.KVM_GET_TSC_KHZ, 0, "KVM_GET_TSC_KHZ")

    def set_guest_debug(self, dbg: s.KvmGuestDebug) -> None:
        """KVM_SET_GUEST_DEBUG"""
        ioctl_ref(self.fd, io.KVM_SET_GUEST_DEBUG, dbg, "KVM_SET_GUEST_DEBUG")

    def kvmclock_ctrl(self) -> None:
        """KVM_KVMCLOCK_CTRL: tell the guest it was paused (avoids soft-lockup warnings)."""
        ioctl(self.fd, io.KVM_KVMCLOCK_CTRL, 0, "KVM_KVMCLOCK_CTRL")
