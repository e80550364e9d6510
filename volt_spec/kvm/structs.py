"""ctypes mirrors of the x86-64 structures in <linux/kvm.h> and <asm/kvm.h>.

Field for field, in the header's order; `tests/test_kvm_structs.py` compiles a C
program against the installed headers and asserts every size below matches.
Only ctypes is imported here: this module is on the VMM's restore path.
"""

from __future__ import annotations

import ctypes
from ctypes import c_uint8 as u8, c_uint16 as u16, c_uint32 as u32, c_uint64 as u64, c_int32 as s32


# Variable-length structs are built per size by the factories below; a ctypes class
# costs tens of microseconds to create, so each size is made once and reused.
_SIZED: dict[tuple[str, int], type[ctypes.Structure]] = {}


def _sized(kind: str, n: int, fields: list[tuple[str, type]]) -> type[ctypes.Structure]:
    """Build (once per `kind`/`n`) a Structure named `kind` + n with `fields`."""
    cls = _SIZED.get((kind, n))
    if cls is None:
        cls = _SIZED[kind, n] = type(f"{kind}{n}", (ctypes.Structure,), {"_fields_": fields})
    return cls


class KvmRegs(ctypes.Structure):
    _fields_ = [(n, u64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class KvmSegment(ctypes.Structure):
    _fields_ = [
        ("base", u64), ("limit", u32), ("selector", u16), ("type", u8),
        ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8),
        ("avl", u8), ("unusable", u8), ("padding", u8),
    ]


class KvmDtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256


class KvmSregs(ctypes.Structure):
    _fields_ = [
        ("cs", KvmSegment), ("ds", KvmSegment), ("es", KvmSegment), ("fs", KvmSegment),
        ("gs", KvmSegment), ("ss", KvmSegment), ("tr", KvmSegment), ("ldt", KvmSegment),
        ("gdt", KvmDtable), ("idt", KvmDtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
        ("efer", u64), ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class KvmFpu(ctypes.Structure):
    _fields_ = [
        ("fpr", (u8 * 16) * 8), ("fcw", u16), ("fsw", u16), ("ftwx", u8), ("pad1", u8),
        ("last_opcode", u16), ("last_ip", u64), ("last_dp", u64),
        ("xmm", (u8 * 16) * 16), ("mxcsr", u32), ("pad2", u32),
    ]


class KvmMsrEntry(ctypes.Structure):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class KvmMsrsHeader(ctypes.Structure):
    """struct kvm_msrs without its flexible `entries[]` (the ioctl size uses this)."""
    _fields_ = [("nmsrs", u32), ("pad", u32)]


def kvm_msrs(n: int) -> type[ctypes.Structure]:
    """struct kvm_msrs with room for n entries (one class per n, cached)."""
    cls = _SIZED.get(("KvmMsrs", n))
    return cls or _sized("KvmMsrs", n, [("nmsrs", u32), ("pad", u32), ("entries", KvmMsrEntry * n)])


class KvmMsrListHeader(ctypes.Structure):
    _fields_ = [("nmsrs", u32)]


def kvm_msr_list(n: int) -> type[ctypes.Structure]:
    """struct kvm_msr_list with room for n indices (one class per n, cached)."""
    cls = _SIZED.get(("KvmMsrList", n))
    return cls or _sized("KvmMsrList", n, [("nmsrs", u32), ("indices", u32 * n)])


class KvmCpuidEntry2(ctypes.Structure):
    _fields_ = [
        ("function", u32), ("index", u32), ("flags", u32),
        ("eax", u32), ("ebx", u32), ("ecx", u32), ("edx", u32), ("padding", u32 * 3),
    ]


class KvmCpuid2Header(ctypes.Structure):
    _fields_ = [("nent", u32), ("padding", u32)]


def kvm_cpuid2(n: int) -> type[ctypes.Structure]:
    """struct kvm_cpuid2 with room for n entries (one class per n, cached)."""
    cls = _SIZED.get(("KvmCpuid2_", n))
    return cls or _sized(
        "KvmCpuid2_", n, [("nent", u32), ("padding", u32), ("entries", KvmCpuidEntry2 * n)])


KVM_APIC_REG_SIZE = 0x400


class KvmLapicState(ctypes.Structure):
    _fields_ = [("regs", ctypes.c_char * KVM_APIC_REG_SIZE)]


class KvmUserspaceMemoryRegion(ctypes.Structure):
    _fields_ = [
        ("slot", u32), ("flags", u32), ("guest_phys_addr", u64),
        ("memory_size", u64), ("userspace_addr", u64),
    ]


class KvmIrqLevel(ctypes.Structure):
    _fields_ = [("irq", u32), ("level", u32)]


class KvmPitConfig(ctypes.Structure):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class KvmMpState(ctypes.Structure):
    _fields_ = [("mp_state", u32)]


class KvmXsave(ctypes.Structure):
    """struct kvm_xsave: 4 KiB; KVM_GET_XSAVE2 may need more (sized at run time)."""
    _fields_ = [("region", u32 * 1024)]


def kvm_xsave(size: int) -> type[ctypes.Structure]:
    """A kvm_xsave with a total size of `size` bytes (>= 4096), for KVM_GET_XSAVE2 (cached)."""
    cls = _SIZED.get(("KvmXsave", size))
    return cls or _sized("KvmXsave", size, [("region", u32 * (max(size, 4096) // 4))])


KVM_MAX_XCRS = 16


class KvmXcr(ctypes.Structure):
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


class KvmXcrs(ctypes.Structure):
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", KvmXcr * KVM_MAX_XCRS),
                ("padding", u64 * 16)]


class KvmDebugregs(ctypes.Structure):
    _fields_ = [("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64),
                ("reserved", u64 * 9)]


class _EvException(ctypes.Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8),
                ("error_code", u32)]


class _EvInterrupt(ctypes.Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _EvNmi(ctypes.Structure):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _EvSmi(ctypes.Structure):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class _EvTripleFault(ctypes.Structure):
    _fields_ = [("pending", u8)]


class KvmVcpuEvents(ctypes.Structure):
    _fields_ = [
        ("exception", _EvException), ("interrupt", _EvInterrupt), ("nmi", _EvNmi),
        ("sipi_vector", u32), ("flags", u32), ("smi", _EvSmi),
        ("triple_fault", _EvTripleFault), ("reserved", u8 * 26),
        ("exception_has_payload", u8), ("exception_payload", u64),
    ]


class KvmPicState(ctypes.Structure):
    _fields_ = [(n, u8) for n in (
        "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select",
        "poll", "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi",
        "special_fully_nested_mode", "init4", "elcr", "elcr_mask")]


KVM_IOAPIC_NUM_PINS = 24


class KvmIoapicState(ctypes.Structure):
    _fields_ = [("base_address", u64), ("ioregsel", u32), ("id", u32), ("irr", u32),
                ("pad", u32), ("redirtbl", u64 * KVM_IOAPIC_NUM_PINS)]


class _IrqchipUnion(ctypes.Union):
    _fields_ = [("dummy", ctypes.c_char * 512), ("pic", KvmPicState), ("ioapic", KvmIoapicState)]


KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2


class KvmIrqchip(ctypes.Structure):
    _fields_ = [("chip_id", u32), ("pad", u32), ("chip", _IrqchipUnion)]


class KvmPitChannelState(ctypes.Structure):
    _fields_ = [
        ("count", u32), ("latched_count", u16), ("count_latched", u8), ("status_latched", u8),
        ("status", u8), ("read_state", u8), ("write_state", u8), ("write_latch", u8),
        ("rw_mode", u8), ("mode", u8), ("bcd", u8), ("gate", u8), ("count_load_time", ctypes.c_int64),
    ]


class KvmPitState2(ctypes.Structure):
    _fields_ = [("channels", KvmPitChannelState * 3), ("flags", u32), ("reserved", u32 * 9)]


class KvmClockData(ctypes.Structure):
    _fields_ = [("clock", u64), ("flags", u32), ("pad0", u32), ("realtime", u64),
                ("host_tsc", u64), ("pad", u32 * 4)]


class KvmGuestDebug(ctypes.Structure):
    _fields_ = [("control", u32), ("pad", u32), ("debugreg", u64 * 8)]


class KvmEnableCap(ctypes.Structure):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class KvmDirtyLog(ctypes.Structure):
    """struct kvm_dirty_log: `dirty_bitmap` is the address of one bit per page of the slot."""
    _fields_ = [("slot", u32), ("padding1", u32), ("dirty_bitmap", u64)]


class KvmClearDirtyLog(ctypes.Structure):
    """struct kvm_clear_dirty_log: `first_page` and `num_pages` multiples of 64 (or to the slot's end)."""
    _fields_ = [("slot", u32), ("num_pages", u32), ("first_page", u64), ("dirty_bitmap", u64)]


class KvmIrqfd(ctypes.Structure):
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class KvmIoeventfd(ctypes.Structure):
    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", s32),
                ("flags", u32), ("pad", u8 * 36)]


class KvmRunHeader(ctypes.Structure):
    """The fixed head of struct kvm_run; the exit union starts at offset 32."""
    _fields_ = [
        ("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
        ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
        ("flags", u16), ("cr8", u64), ("apic_base", u64),
    ]


KVM_RUN_EXIT_UNION_OFFSET = 32

# Every structure whose size tests compare with the C header, keyed by its C name.
C_SIZES: dict[str, type] = {
    "struct kvm_regs": KvmRegs,
    "struct kvm_segment": KvmSegment,
    "struct kvm_dtable": KvmDtable,
    "struct kvm_sregs": KvmSregs,
    "struct kvm_fpu": KvmFpu,
    "struct kvm_msr_entry": KvmMsrEntry,
    "struct kvm_msrs": KvmMsrsHeader,
    "struct kvm_msr_list": KvmMsrListHeader,
    "struct kvm_cpuid_entry2": KvmCpuidEntry2,
    "struct kvm_cpuid2": KvmCpuid2Header,
    "struct kvm_lapic_state": KvmLapicState,
    "struct kvm_userspace_memory_region": KvmUserspaceMemoryRegion,
    "struct kvm_irq_level": KvmIrqLevel,
    "struct kvm_pit_config": KvmPitConfig,
    "struct kvm_mp_state": KvmMpState,
    "struct kvm_xsave": KvmXsave,
    "struct kvm_xcrs": KvmXcrs,
    "struct kvm_debugregs": KvmDebugregs,
    "struct kvm_vcpu_events": KvmVcpuEvents,
    "struct kvm_pic_state": KvmPicState,
    "struct kvm_ioapic_state": KvmIoapicState,
    "struct kvm_irqchip": KvmIrqchip,
    "struct kvm_pit_channel_state": KvmPitChannelState,
    "struct kvm_pit_state2": KvmPitState2,
    "struct kvm_clock_data": KvmClockData,
    "struct kvm_guest_debug": KvmGuestDebug,
    "struct kvm_enable_cap": KvmEnableCap,
    "struct kvm_dirty_log": KvmDirtyLog,
    "struct kvm_clear_dirty_log": KvmClearDirtyLog,
    "struct kvm_irqfd": KvmIrqfd,
    "struct kvm_ioeventfd": KvmIoeventfd,
}
