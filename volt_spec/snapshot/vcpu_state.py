"""A vCPU's complete architectural state: save from and restore into KVM.

Ordering requirements (see shared notes on KVM):
  save:    all vCPUs stopped, any pending I/O exit completed (Machine.pause does both);
           MP_STATE first (it can flush pending APIC events), VCPU_EVENTS last.
  restore: CPUID2, MP_STATE, SREGS (sets APIC base / x2APIC mode), REGS, XSAVE, XCRS,
           DEBUGREGS, LAPIC *before* MSRS (else the TSC-deadline MSR reads back 0 and a
           halted guest never wakes), VCPU_EVENTS last. Within MSRS, IA32_TSC comes before
           IA32_TSC_DEADLINE (KVM's index list has that order): KVM arms the deadline timer
           against the guest TSC as it is when the deadline is written.
KVM_GET_FPU lacks AVX state, so the FPU travels inside XSAVE.

The guest TSC (hardware KVM; on PVM it is always the host's and writes change nothing):
KVM treats a host write of IA32_TSC that lands within one second of the last write
(projected forward in time) as a wish to *synchronise* vCPUs and keeps the old offset
instead. A fresh vCPU was "written" 0 at creation, so a snapshot taken in the guest's first
second would restart its TSC near 0: time runs backwards for a TSC clocksource, deadlines
fire a second late. So the first vCPU's TSC is first written two seconds past its target
(never "synchronising"), then the target (two seconds off: exact); the other vCPUs' targets
then fall within a second of it and KVM gives them the same offset: their TSCs agree.
"""

from __future__ import annotations

import ctypes
import time

from ..kvm import structs as s
from ..kvm.vcpu import Vcpu
from .b64 import from_raw, pack, unpack_into


def xsave_size(kvm) -> int:
    """Bytes of XSAVE state per vCPU: KVM_CAP_XSAVE2's answer, at least the classic 4 KiB."""
    from ..kvm.caps import Cap
    size = kvm.check_extension(Cap.XSAVE2)
    return size if size > 4096 else 4096


class VcpuStateError(RuntimeError):
    """Saving or restoring a vCPU failed: names the step."""


def save_msrs(vcpu: Vcpu, indices: list[int]) -> list[list[int]]:
    """Every readable MSR among `indices`; KVM stops at the first it cannot read, so resume after it."""
    out: list[list[int]] = []
    pending = list(indices)
    while pending:
        got = vcpu.get_msrs(pending)
        out += [[i, v] for i, v in got]
        pending = pending[len(got) + 1:]      # skip the one KVM refused
    return out


def restore_msrs(vcpu: Vcpu, msrs: list[list[int]]) -> list[int]:
    """Write MSRs, skipping any KVM refuses; returns the indices it refused."""
    refused: list[int] = []
    pending = [(int(i), int(v)) for i, v in msrs]
    while pending:
        n = vcpu.set_msrs(pending)
        if n < len(pending):
            refused.append(pending[n][0])
        pending = pending[n + 1:]
    return refused


def save_vcpu(vcpu: Vcpu, msr_indices: list[int], xsave_size: int, msrs_read_at: list[int] | None = None) -> dict:
    """Every piece of a vCPU's state; `msrs_read_at` (when given) gets the monotonic time its
    MSRs (the guest TSC among them) were read, so the VM's clock can be saved as of then."""
    try:
        state: dict = {"index": vcpu.index}
        state["mp_state"] = vcpu.get_mp_state()
        state["regs"] = pack(vcpu.get_regs())
        state["sregs"] = pack(vcpu.get_sregs())
        xsave = vcpu.get_xsave2(xsave_size) if xsave_size > 4096 else vcpu.get_xsave()
        state["xsave"] = pack(xsave)
        state["xcrs"] = pack(vcpu.get_xcrs())
        state["debugregs"] = pack(vcpu.get_debugregs())
        state["lapic"] = pack(vcpu.get_lapic())
        if msrs_read_at is not None:
            msrs_read_at.append(time.monotonic_ns())
        state["msrs"] = save_msrs(vcpu, msr_indices)
        state["cpuid"] = pack_cpuid(vcpu.get_cpuid2())
        state["vcpu_events"] = pack(vcpu.get_vcpu_events())
        return state
    except OSError as e:
        raise VcpuStateError(f"saving vcpu {vcpu.index}: {e}") from e


def pack_cpuid(cpuid: ctypes.Structure) -> str:
    """Only the `nent` used entries of a kvm_cpuid2."""
    used = s.kvm_cpuid2(cpuid.nent)()
    ctypes.memmove(ctypes.addressof(used), ctypes.addressof(cpuid), ctypes.sizeof(used))
    return pack(used)


MSR_IA32_TSC = 0x10
TSC_UNSYNC_S = 2            # > KVM's one-second "synchronise" window


def restore_vcpu(vcpu: Vcpu, state: dict, tsc_advance_ns: int = 0) -> list[int]:
    """Put a saved state into a fresh vCPU, in the order above; returns refused MSR indices."""
    restore_vcpu_registers(vcpu, state)
    return restore_vcpu_msrs_and_events(vcpu, state, tsc_advance_ns)


def restore_vcpu_registers(vcpu: Vcpu, state: dict, cpuid_set: str | None = None, lapic: bool = True) -> None:
    """CPUID2 .. LAPIC: nothing here reads guest RAM, so it may run while KVM still registers it.
    `cpuid_set`: the CPUID already set in this vCPU (packed; a warm VMM sets its shape's ahead),
    whose SET_CPUID2 is skipped when the snapshot's is the same. `lapic`: False leaves the LAPIC
    (its timer starts counting when it is set) to restore_lapic, just before the vCPU runs."""
    import binascii
    step = "cpuid"
    try:
        if state["cpuid"] != cpuid_set:
            raw = binascii.a2b_base64(state["cpuid"])
            nent = int.from_bytes(raw[:4], "little")
            vcpu.set_cpuid2(from_raw(s.kvm_cpuid2(nent), raw))
        step = "mp_state"
        vcpu.set_mp_state(int(state["mp_state"]))
        step = "sregs"
        vcpu.set_sregs(unpack_into(s.KvmSregs, state["sregs"]))
        step = "regs"
        vcpu.set_regs(unpack_into(s.KvmRegs, state["regs"]))
        step = "xsave"
        raw = binascii.a2b_base64(state["xsave"])
        vcpu.set_xsave(from_raw(s.kvm_xsave(len(raw)) if len(raw) > 4096 else s.KvmXsave, raw))
        step = "xcrs"
        vcpu.set_xcrs(unpack_into(s.KvmXcrs, state["xcrs"]))
        step = "debugregs"
        vcpu.set_debugregs(unpack_into(s.KvmDebugregs, state["debugregs"]))
        if lapic:
            restore_lapic(vcpu, state)
    except (OSError, ValueError, KeyError) as e:
        raise VcpuStateError(f"restoring vcpu {vcpu.index} ({step}): {e}") from e


def restore_lapic(vcpu: Vcpu, state: dict) -> None:
    try:
        vcpu.set_lapic(unpack_into(s.KvmLapicState, state["lapic"]))
    except (OSError, ValueError, KeyError) as e:
        raise VcpuStateError(f"restoring vcpu {vcpu.index} (lapic): {e}") from e


def restore_vcpu_msrs_and_events(vcpu: Vcpu, state: dict, tsc_advance_ns: int = 0) -> list[int]:
    """MSRS (after LAPIC; kvmclock and async-PF MSRs name guest RAM, so after it is registered),
    then VCPU_EVENTS last. The guest TSC moves on by `tsc_advance_ns` (clock: realtime).
    Returns the MSR indices KVM refused."""
    step = "msrs"
    try:
        msrs = tsc_advanced(vcpu, state["msrs"], tsc_advance_ns)
        if vcpu.index == 0:
            unsync_tsc(vcpu, msrs)
        refused = restore_msrs(vcpu, msrs)
        step = "vcpu_events"
        vcpu.set_vcpu_events(unpack_into(s.KvmVcpuEvents, state["vcpu_events"]))
        return refused
    except (OSError, ValueError, KeyError) as e:
        raise VcpuStateError(f"restoring vcpu {vcpu.index} ({step}): {e}") from e


def tsc_advanced(vcpu: Vcpu, msrs: list[list[int]], advance_ns: int) -> list[list[int]]:
    """The saved MSRs with IA32_TSC moved on by `advance_ns` at this vCPU's TSC rate."""
    if advance_ns <= 0:
        return msrs
    khz = vcpu.get_tsc_khz()
    return [[i, v + advance_ns * khz // 1_000_000 if int(i) == MSR_IA32_TSC else v] for i, v in msrs]


def unsync_tsc(vcpu: Vcpu, msrs: list[list[int]]) -> None:
    """Write IA32_TSC two seconds past its target, so the target write that follows is exact
    (see the module docstring: KVM's one-second synchronisation window)."""
    target = next((int(v) for i, v in msrs if int(i) == MSR_IA32_TSC), None)
    if target is not None:
        vcpu.set_msrs([(MSR_IA32_TSC, target + TSC_UNSYNC_S * vcpu.get_tsc_khz() * 1000)])
