"""A vCPU's complete architectural state: save from and restore into KVM.

Ordering requirements (see shared notes on KVM):
  save:    all vCPUs stopped, any pending I/O exit completed (Machine.pause does both);
           MP_STATE first (it can flush pending APIC events), VCPU_EVENTS last.
  restore: CPUID2, MP_STATE, SREGS (sets APIC base / x2APIC mode), REGS, XSAVE, XCRS,
           DEBUGREGS, LAPIC *before* MSRS (else the TSC-deadline MSR reads back 0 and a
           halted guest never wakes), VCPU_EVENTS last.
KVM_GET_FPU lacks AVX state, so the FPU travels inside XSAVE.
"""

from __future__ import annotations

import ctypes

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


def save_vcpu(vcpu: Vcpu, msr_indices: list[int], xsave_size: int) -> dict:
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


def restore_vcpu(vcpu: Vcpu, state: dict) -> list[int]:
    """Put a saved state into a fresh vCPU, in the order above; returns refused MSR indices."""
    restore_vcpu_registers(vcpu, state)
    return restore_vcpu_msrs_and_events(vcpu, state)


def restore_vcpu_registers(vcpu: Vcpu, state: dict) -> None:
    """CPUID2 .. LAPIC: nothing here reads guest RAM, so it may run while KVM still registers it."""
    step = "cpuid"
    try:
        import binascii
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
        step = "lapic"
        vcpu.set_lapic(unpack_into(s.KvmLapicState, state["lapic"]))
    except (OSError, ValueError, KeyError) as e:
        raise VcpuStateError(f"restoring vcpu {vcpu.index} ({step}): {e}") from e


def restore_vcpu_msrs_and_events(vcpu: Vcpu, state: dict) -> list[int]:
    """MSRS (after LAPIC; kvmclock and async-PF MSRs name guest RAM, so after it is registered),
    then VCPU_EVENTS last. Returns the MSR indices KVM refused."""
    step = "msrs"
    try:
        refused = restore_msrs(vcpu, state["msrs"])
        step = "vcpu_events"
        vcpu.set_vcpu_events(unpack_into(s.KvmVcpuEvents, state["vcpu_events"]))
        return refused
    except (OSError, ValueError, KeyError) as e:
        raise VcpuStateError(f"restoring vcpu {vcpu.index} ({step}): {e}") from e
