"""Minimal MC146818 CMOS real-time clock at ports 0x70 (index) / 0x71 (data).

Linux reads the wall clock once at boot (arch/x86/kernel/rtc.c
mach_get_cmos_time -> mc146818_get_time): it waits for status A's UIP bit to
clear, reads the time registers and decodes them as BCD unless status B says
binary. This device answers those reads from an injected clock, always in
24-hour BCD, never "updating". It raises no interrupts; writes are accepted
and ignored (the guest cannot move the host's clock).
"""

from __future__ import annotations

import time

from volt_spec import layout
from volt_spec.devices.state import DeviceState

# Boot path: no `typing`, `collections`, `enum` or `dataclasses` at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

INDEX_OFFSET = 0
DATA_OFFSET = layout.RTC_DATA_PORT - layout.RTC_INDEX_PORT    # 1
PORT_SPAN = DATA_OFFSET + 1

INDEX_MASK = 0x7F         # bit 7 of the index write is the NMI-disable gate, not an index


class Reg:
    """CMOS register indexes (MC146818 datasheet; 0x32 is the IBM PC century byte); ints."""

    __slots__ = ()

    SECONDS = 0x00
    MINUTES = 0x02
    HOURS = 0x04
    WEEKDAY = 0x06
    DAY = 0x07
    MONTH = 0x08
    YEAR = 0x09
    STATUS_A = 0x0A
    STATUS_B = 0x0B
    STATUS_C = 0x0C
    STATUS_D = 0x0D
    CENTURY = 0x32


# Status A: UIP (bit 7) clear, 32.768 kHz time base, 1024 Hz periodic rate.
STATUS_A = 0x26
# Status B: 24-hour mode (bit 1); DM (bit 2) clear = BCD; no interrupts enabled.
STATUS_B_24H = 0x02
STATUS_B = STATUS_B_24H
# Status D: VRT (bit 7), the battery is good and the time valid.
STATUS_D = 0x80


class RtcState(DeviceState):
    """The only guest-visible state is the selected index; time comes from the host."""

    __slots__ = ("index",)
    FIELDS = {"index": (int, 0)}


def bcd(value: int) -> int:
    """Two-digit packed BCD, as the RTC stores values with status B's DM bit clear."""
    return (value // 10) << 4 | value % 10


class Rtc:
    """CMOS clock; `clock` returns seconds since the Unix epoch (UTC)."""

    State = RtcState

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._index = 0

    def _register(self, index: int) -> int:
        match index:
            case Reg.STATUS_A:
                return STATUS_A
            case Reg.STATUS_B:
                return STATUS_B
            case Reg.STATUS_D:
                return STATUS_D
            case Reg.SECONDS | Reg.MINUTES | Reg.HOURS | Reg.WEEKDAY | Reg.DAY \
                    | Reg.MONTH | Reg.YEAR | Reg.CENTURY:
                return self._time_field(index)
            case _:
                return 0      # status C (no interrupt flags) and unused CMOS RAM

    def _time_field(self, index: int) -> int:
        now = time.gmtime(int(self._clock()))
        match index:
            case Reg.SECONDS:
                return bcd(min(now.tm_sec, 59))       # gmtime may report a leap second 60
            case Reg.MINUTES:
                return bcd(now.tm_min)
            case Reg.HOURS:
                return bcd(now.tm_hour)
            case Reg.WEEKDAY:
                return bcd((now.tm_wday + 1) % 7 + 1)  # RTC: 1 = Sunday; tm_wday: 0 = Monday
            case Reg.DAY:
                return bcd(now.tm_mday)
            case Reg.MONTH:
                return bcd(now.tm_mon)
            case Reg.YEAR:
                return bcd(now.tm_year % 100)
            case _:
                return bcd(now.tm_year // 100 % 100)

    def read(self, offset: int) -> int:
        """A guest `inb` from 0x70 + offset."""
        match offset:
            case 1:
                return self._register(self._index)
            case _:
                return 0xFF   # the index port is write-only

    def write(self, offset: int, value: int) -> None:
        """A guest `outb` to 0x70 + offset; data writes are ignored."""
        if offset == INDEX_OFFSET:
            self._index = value & INDEX_MASK

    def save(self) -> RtcState:
        return RtcState(index=self._index)

    def restore(self, state: RtcState) -> None:
        """Load `state` (validated first); the RTC drives no interrupt line."""
        if not isinstance(state.index, int) or isinstance(state.index, bool) \
                or not 0 <= state.index <= INDEX_MASK:
            raise ValueError(f"rtc state: index={state.index!r} out of range")
        self._index = state.index
