"""`Vm`: a KVM VM fd, one thin method per VM ioctl."""

from __future__ import annotations

import ctypes
import os

from . import ioctls as io
from . import structs as s
from ._sys import ioctl, ioctl_ref

KVM_PIT_SPEAKER_DUMMY = 1
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0
KVM_DIRTY_LOG_INITIALLY_SET = 1 << 1
KVM_CLOCK_TSC_STABLE = 2
KVM_CLOCK_REALTIME = 1 << 2
KVM_CLOCK_HOST_TSC = 1 << 3
KVM_IRQFD_FLAG_DEASSIGN = 1
KVM_IOEVENTFD_FLAG_DATAMATCH = 1
KVM_IOEVENTFD_FLAG_PIO = 2
KVM_IOEVENTFD_FLAG_DEASSIGN = 4


class Vm:
    """A VM fd returned by KVM_CREATE_VM."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION"""
        region = s.KvmUserspaceMemoryRegion(slot, flags, guest_phys_addr, size, userspace_addr)
        ioctl_ref(self.fd, io.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")

    def get_dirty_log(self, slot: int, bitmap: ctypes.Array) -> None:
        """KVM_GET_DIRTY_LOG: the pages of `slot` written since the last call, one bit per page,
        into `bitmap` (at least ceil(pages / 64) u64s). Without manual protection it also resets
        the log and write-protects the pages again."""
        log = s.KvmDirtyLog(slot, 0, ctypes.addressof(bitmap))
        ioctl_ref(self.fd, io.KVM_GET_DIRTY_LOG, log, "KVM_GET_DIRTY_LOG")

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap: ctypes.Array) -> None:
        """KVM_CLEAR_DIRTY_LOG: re-protect the pages set in `bitmap` (bit 0 = `first_page`), so
        their next write is logged again (with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled)."""
        log = s.KvmClearDirtyLog(slot, num_pages, first_page, ctypes.addressof(bitmap))
        ioctl_ref(self.fd, io.KVM_CLEAR_DIRTY_LOG, log, "KVM_CLEAR_DIRTY_LOG")

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd: what this VM supports (0 when absent)."""
        return ioctl(self.fd, io.KVM_CHECK_EXTENSION, int(cap), "KVM_CHECK_EXTENSION")

    def enable_cap(self, cap: int, *args: int) -> None:
        """KVM_ENABLE_CAP on the VM fd, with up to four arguments."""
        arg = s.KvmEnableCap(int(cap), 0)
        for i, value in enumerate(args):
            arg.args[i] = value
        ioctl_ref(self.fd, io.KVM_ENABLE_CAP, arg, "KVM_ENABLE_CAP")

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR (three pages the VMX backend needs below 4 GiB)."""
        ioctl(self.fd, io.KVM_SET_TSS_ADDR, addr, "KVM_SET_TSS_ADDR")

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR"""
        ioctl_ref(self.fd, io.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr), "KVM_SET_IDENTITY_MAP_ADDR")

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: in-kernel PIC pair, IOAPIC and local APICs."""
        ioctl(self.fd, io.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def create_pit2(self, flags: int = KVM_PIT_SPEAKER_DUMMY) -> None:
        """KVM_CREATE_PIT2"""
        ioctl_ref(self.fd, io.KVM_CREATE_PIT2, s.KvmPitConfig(flags), "KVM_CREATE_PIT2")

    def irq_line(self, irq: int, level: bool) -> None:
        """KVM_IRQ_LINE: set a GSI's level (PIC and IOAPIC both see it)."""
        ioctl_ref(self.fd, io.KVM_IRQ_LINE, s.KvmIrqLevel(irq, int(level)), "KVM_IRQ_LINE")

    def get_irqchip(self, chip_id: int) -> s.KvmIrqchip:
        """KVM_GET_IRQCHIP"""
        chip = s.KvmIrqchip(chip_id)
        ioctl_ref(self.fd, io.KVM_GET_IRQCHIP, chip, "KVM_GET_IRQCHIP")
        return chip

    def set_irqchip(self, chip: s.KvmIrqchip) -> None:
        """KVM_SET_IRQCHIP"""
        ioctl_ref(self.fd, io.KVM_SET_IRQCHIP, chip, "KVM_SET_IRQCHIP")

    def get_pit2(self) -> s.KvmPitState2:
        """KVM_GET_PIT2"""
        pit = s.KvmPitState2()
        ioctl_ref(self.fd, io.KVM_GET_PIT2, pit, "KVM_GET_PIT2")
        return pit

    def set_pit2(self, pit: s.KvmPitState2) -> None:
        """KVM_SET_PIT2"""
        ioctl_ref(self.fd, io.KVM_SET_PIT2, pit, "KVM_SET_PIT2")

    def get_clock(self) -> s.KvmClockData:
        """KVM_GET_CLOCK"""
        clock = s.KvmClockData()
        ioctl_ref(self.fd, io.KVM_GET_CLOCK, clock, "KVM_GET_CLOCK")
        return clock

    def set_clock(self, clock: s.KvmClockData) -> None:
        """KVM_SET_CLOCK"""
        ioctl_ref(self.fd, io.KVM_SET_CLOCK, clock, "KVM_SET_CLOCK")

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        """KVM_IRQFD: writes to eventfd `fd` raise GSI `gsi` (edge) without a VM exit."""
        req = s.KvmIrqfd(fd, gsi, KVM_IRQFD_FLAG_DEASSIGN if deassign else 0)
        ioctl_ref(self.fd, io.KVM_IRQFD, req, "KVM_IRQFD")

    def ioeventfd(self, fd: int, addr: int, length: int, datamatch: int | None = None,
                  pio: bool = False, deassign: bool = False) -> None:
        """KVM_IOEVENTFD: guest writes to `addr` signal eventfd `fd` without a VM exit."""
        flags = (KVM_IOEVENTFD_FLAG_DATAMATCH if datamatch is not None else 0) | (
            KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        req = s.KvmIoeventfd(datamatch or 0, addr, length, fd, flags)
        ioctl_ref(self.fd, io.KVM_IOEVENTFD, req, "KVM_IOEVENTFD")

    def create_vcpu(self, vcpu_id: int) -> int:
        """KVM_CREATE_VCPU: returns the vCPU fd (wrap it in `Vcpu`)."""
        return ioctl(self.fd, io.KVM_CREATE_VCPU, vcpu_id, "KVM_CREATE_VCPU")
