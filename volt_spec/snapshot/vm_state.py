"""VM-wide KVM state: the in-kernel PICs and IOAPIC, the PIT, and the KVM clock.

Restore after every vCPU (their LAPICs must exist first): IRQCHIP (PIC master,
PIC slave, IOAPIC), then PIT2, then CLOCK. Clock modes: "continue" sets the saved
kvmclock value with flags 0, so the guest does not see the downtime; "realtime"
hands KVM the saved realtime too (KVM_CLOCK_REALTIME), so the clock advances by
the host time that passed.
"""

from __future__ import annotations

from ..kvm import structs as s
from ..kvm.vm import KVM_CLOCK_REALTIME, Vm
from .b64 import pack, unpack_into

CHIPS = (("pic_master", s.KVM_IRQCHIP_PIC_MASTER), ("pic_slave", s.KVM_IRQCHIP_PIC_SLAVE),
         ("ioapic", s.KVM_IRQCHIP_IOAPIC))


def save_vm(vm: Vm) -> dict:
    state = {name: pack(vm.get_irqchip(chip)) for name, chip in CHIPS}
    state["pit2"] = pack(vm.get_pit2())
    clock = vm.get_clock()
    state["clock"] = {"clock": clock.clock, "flags": clock.flags, "realtime": clock.realtime,
                      "host_tsc": clock.host_tsc}
    return state


def restore_vm(vm: Vm, state: dict, clock_mode: str = "continue") -> None:
    for name, _chip in CHIPS:
        vm.set_irqchip(unpack_into(s.KvmIrqchip, state[name]))
    vm.set_pit2(unpack_into(s.KvmPitState2, state["pit2"]))
    saved = state["clock"]
    clock = s.KvmClockData()
    clock.clock = int(saved["clock"])
    if clock_mode == "realtime" and int(saved["flags"]) & KVM_CLOCK_REALTIME:
        clock.flags = KVM_CLOCK_REALTIME
        clock.realtime = int(saved["realtime"])
    vm.set_clock(clock)
