"""ACPI hardware-reduced sleep control and status registers (one byte each).

The FADT's SLEEP_CONTROL_REG and SLEEP_STATUS_REG (ACPI 6.x sections
4.8.3.7 and 4.8.3.8) point at these two ports. To enter state Sx the OS
clears WAK_STS, then writes SLP_TYPx (the value from the DSDT's \\_Sx
package) with SLP_EN to the control register (Linux:
drivers/acpi/acpica/hwxfsleep.c acpi_hw_extended_sleep). For S1..S4 it then
polls WAK_STS until the platform has woken up again.

The device only reports the request; the VMM decides what a sleep type
means (layout.ACPI_S5_SLP_TYP is power-off). When `on_sleep` returns the
platform counts as woken, so WAK_STS is set and a guest polling for wake-up
continues instead of spinning forever.
"""

from __future__ import annotations

from volt_spec.devices.state import DeviceState

# Boot path: no `typing`, `collections` or `dataclasses` at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

CONTROL_OFFSET = 0
STATUS_OFFSET = 1
PORT_SPAN = 2

# Sleep control register (4.8.3.7): bits 2..4 SLP_TYPx, bit 5 SLP_EN (write-only).
SLP_TYP_SHIFT = 2
SLP_TYP_MASK = 0x07
SLP_EN = 0x20
# Sleep status register (4.8.3.8): bit 7 WAK_STS, write 1 to clear.
WAK_STS = 0x80


class AcpiSleepState(DeviceState):
    """Only WAK_STS persists; the control register reads as zero."""

    __slots__ = ("wak_sts",)
    FIELDS = {"wak_sts": (bool, False)}


def slp_typ(control: int) -> int:
    """The SLP_TYPx field of a control register value."""
    return (control >> SLP_TYP_SHIFT) & SLP_TYP_MASK


class AcpiSleep:
    """Two registers: offset 0 = sleep control, offset 1 = sleep status."""

    State = AcpiSleepState

    def __init__(self, on_sleep: Callable[[int], None]) -> None:
        self._on_sleep = on_sleep
        self._wak_sts = False

    def read(self, offset: int) -> int:
        """A guest `inb`; SLP_TYP/SLP_EN are write-only and read as zero."""
        match offset:
            case 1:
                return WAK_STS if self._wak_sts else 0
            case _:
                return 0

    def write(self, offset: int, value: int) -> None:
        """A guest `outb`: a control write with SLP_EN requests sleep state SLP_TYP."""
        match offset:
            case 0 if value & SLP_EN:
                self._on_sleep(slp_typ(value))
                self._wak_sts = True
            case 1 if value & WAK_STS:
                self._wak_sts = False
            case _:
                pass  # control without SLP_EN, or reserved status bits: no effect

    def save(self) -> AcpiSleepState:
        return AcpiSleepState(wak_sts=self._wak_sts)

    def restore(self, state: AcpiSleepState) -> None:
        """Load `state` (validated first); this device drives no interrupt line."""
        if not isinstance(state.wak_sts, bool):
            raise ValueError(f"acpi sleep state: wak_sts={state.wak_sts!r} is not a bool")
        self._wak_sts = state.wak_sts
