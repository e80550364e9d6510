"""Frozen snapshot states of the legacy devices (Firecracker persist style).

Kept apart from the devices so the boot path never imports `dataclasses`
(which pulls in `inspect`): a device imports this module only inside
`save()` / `restore()`, and re-exports its state class lazily through a
module `__getattr__`. Defaults are the power-on values, which is why the
device register constants are imported from the device modules themselves.
States hold only ints, bools and bytes so `state_json` can serialise them.
"""

from __future__ import annotations

from dataclasses import dataclass

from volt_spec.devices import i8042 as _i8042
from volt_spec.devices import serial as _serial


@dataclass(frozen=True)
class SerialState:
    """Everything needed to resume the UART exactly; plain types only."""

    divisor: int = _serial.DEFAULT_DIVISOR
    ier: int = 0
    fcr: int = 0
    lcr: int = _serial.DEFAULT_LCR
    mcr: int = _serial.DEFAULT_MCR
    msr_delta: int = 0
    scr: int = 0
    thre_pending: bool = False
    rx: bytes = b""
    dropped: int = 0


@dataclass(frozen=True)
class I8042State:
    """Everything needed to resume the controller exactly; plain types only."""

    ctr: int = _i8042.DEFAULT_CTR
    cmd_flag: bool = False        # STR_CMDDAT: last write was to the command port
    outport: int = _i8042.OUTPORT_DEFAULT
    output: bytes = b""
    pending_cmd: int = 0          # controller command waiting for its parameter (0 = none)
    pending_kbd_cmd: int = 0      # keyboard command waiting for its parameter (0 = none)


@dataclass(frozen=True)
class RtcState:
    """The only guest-visible state is the selected index; time comes from the host."""

    index: int = 0


@dataclass(frozen=True)
class AcpiSleepState:
    """Only WAK_STS persists; the control register reads as zero."""

    wak_sts: bool = False


__all__ = ["AcpiSleepState", "I8042State", "RtcState", "SerialState"]
