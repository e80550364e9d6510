"""VM-wide KVM state: the in-kernel PICs and IOAPIC, the PIT, and the KVM clock.

Restore after every vCPU (their LAPICs must exist first): IRQCHIP (PIC master,
PIC slave, IOAPIC), then PIT2, then CLOCK. Clock modes: "continue" sets the saved
kvmclock value, so the guest does not see the downtime; "realtime" advances it (and,
in vcpu_state, the guest TSC) by the wall-clock time since the capture (`saved_at_ns`,
taken with the state), so the guest's clocks show the time that passed. We add it
ourselves instead of handing KVM the saved realtime (KVM_CLOCK_REALTIME): KVM offers
that only when the host's clocksource is the TSC, and the TSC must move with kvmclock.
"""

from __future__ import annotations

import time

from ..kvm import structs as s
from ..kvm.vm import KVM_CLOCK_REALTIME, Vm
from .b64 import pack, unpack_into

CHIPS = (("pic_master", s.KVM_IRQCHIP_PIC_MASTER), ("pic_slave", s.KVM_IRQCHIP_PIC_SLAVE),
         ("ioapic", s.KVM_IRQCHIP_IOAPIC))


def save_vm(vm: Vm, tsc_read_at_ns: int | None = None) -> dict:
    """The irqchips, the PIT and the clock. With `tsc_read_at_ns` (when vCPU 0's TSC was read,
    monotonic) the kvmclock is saved as of then: it runs on while the vCPUs' states are read
    (the guest is paused, its TSC is not), and a restore puts both back as one instant."""
    state = {name: pack(vm.get_irqchip(chip)) for name, chip in CHIPS}
    state["pit2"] = pack(vm.get_pit2())
    clock = vm.get_clock()
    since_tsc = 0 if tsc_read_at_ns is None else max(0, time.monotonic_ns() - tsc_read_at_ns)
    state["clock"] = {"clock": max(0, clock.clock - since_tsc), "flags": clock.flags, "realtime": clock.realtime,
                      "host_tsc": clock.host_tsc, "saved_at_ns": time.time_ns() - since_tsc}
    return state


def elapsed_ns(state: dict, clock_mode: str) -> int:
    """How far the guest's clocks move on at restore: 0 for "continue", the wall-clock time
    since the capture for "realtime" (0 for a snapshot that did not record its capture
    time and whose host could not give KVM's realtime, or a clock that went backwards)."""
    if clock_mode != "realtime":
        return 0
    saved, now = state["clock"], time.time_ns()
    if "saved_at_ns" in saved:
        saved_at = int(saved["saved_at_ns"])
        if not 0 <= saved_at:          # a snapshot is untrusted: no advance past what u64 holds
            raise ValueError(f"clock.saved_at_ns {saved_at} is out of range")
        return max(0, now - saved_at)
    if int(saved["flags"]) & KVM_CLOCK_REALTIME:
        return max(0, now - int(saved["realtime"]))
    return 0


def restore_vm(vm: Vm, state: dict, advance_ns: int = 0, tsc_set_at_ns: int | None = None) -> None:
    """IRQCHIP, PIT2, then CLOCK: the saved kvmclock moved on by `advance_ns` (see elapsed_ns)
    and, when the guest TSC was restored at monotonic `tsc_set_at_ns`, by the time since: the
    TSC has run from then, so the two clocks agree however long the restore between took."""
    for name, _chip in CHIPS:
        vm.set_irqchip(unpack_into(s.KvmIrqchip, state[name]))
    vm.set_pit2(unpack_into(s.KvmPitState2, state["pit2"]))
    clock = s.KvmClockData()
    since_tsc = 0 if tsc_set_at_ns is None else max(0, time.monotonic_ns() - tsc_set_at_ns)
    clock.clock = int(state["clock"]["clock"]) + advance_ns + since_tsc
    vm.set_clock(clock)
