"""KVM capability numbers (KVM_CAP_* in <linux/kvm.h>) the VMM checks for.

A plain namespace class rather than an IntEnum: `enum` costs milliseconds of
import on the VMM's boot path. Each value is a `CapNumber`, an `int` that also
knows its name, so `Cap.IRQCHIP.name == "IRQCHIP"` still reads like an enum.
"""

from __future__ import annotations


class CapNumber(int):
    """A KVM_CAP_* number that knows its name (`.name`, like an IntEnum member)."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return name_of(self)

    def __repr__(self) -> str:
        return f"Cap.{name_of(self)}"


class Cap:
    """KVM_CAP_* numbers as class attributes: `Cap.IRQCHIP`, `int(Cap.XSAVE2)`."""

    __slots__ = ()

    IRQCHIP = CapNumber(0)
    USER_MEMORY = CapNumber(3)
    SET_TSS_ADDR = CapNumber(4)
    EXT_CPUID = CapNumber(7)
    NR_VCPUS = CapNumber(9)
    MP_STATE = CapNumber(14)
    SET_GUEST_DEBUG = CapNumber(23)
    IRQFD = CapNumber(32)
    PIT2 = CapNumber(33)
    PIT_STATE2 = CapNumber(35)
    IOEVENTFD = CapNumber(36)
    SET_IDENTITY_MAP_ADDR = CapNumber(37)
    ADJUST_CLOCK = CapNumber(39)
    VCPU_EVENTS = CapNumber(41)
    DEBUGREGS = CapNumber(50)
    XSAVE = CapNumber(55)
    XCRS = CapNumber(56)
    TSC_CONTROL = CapNumber(60)
    GET_TSC_KHZ = CapNumber(61)
    MAX_VCPUS = CapNumber(66)
    TSC_DEADLINE_TIMER = CapNumber(72)
    IMMEDIATE_EXIT = CapNumber(136)
    MANUAL_DIRTY_LOG_PROTECT2 = CapNumber(168)
    XSAVE2 = CapNumber(208)


_NAMES: dict[int, str] = {
    int(value): attr for attr, value in vars(Cap).items() if isinstance(value, CapNumber)
}


def name_of(value: int) -> str:
    """The `Cap` attribute name of a capability number ("KVM_CAP_<n>" if we do not know it)."""
    return _NAMES.get(int(value), f"KVM_CAP_{int(value)}")


# What booting a guest needs; missing any of these is a clear, early error.
REQUIRED_FOR_BOOT = (
    Cap.IRQCHIP, Cap.USER_MEMORY, Cap.EXT_CPUID, Cap.PIT2, Cap.MP_STATE,
    Cap.TSC_DEADLINE_TIMER, Cap.IMMEDIATE_EXIT,
)
