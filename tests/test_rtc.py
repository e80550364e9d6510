"""CMOS RTC: BCD time from an injected clock, status registers, ignored writes."""

from __future__ import annotations

import calendar

import pytest

from volt_spec.devices import rtc
from volt_spec.devices.rtc import Reg, Rtc, RtcState

from .device_json import via_snapshot

# Thursday 2024-02-29 23:59:58 UTC.
NOW = calendar.timegm((2024, 2, 29, 23, 59, 58, 0, 0, 0)) + 0.75


def read(dev: Rtc, index: int) -> int:
    dev.write(rtc.INDEX_OFFSET, index)
    return dev.read(rtc.DATA_OFFSET)


@pytest.fixture
def dev() -> Rtc:
    return Rtc(lambda: NOW)


@pytest.mark.parametrize(("index", "value"), [
    (Reg.SECONDS, 0x58), (Reg.MINUTES, 0x59), (Reg.HOURS, 0x23), (Reg.WEEKDAY, 0x05),
    (Reg.DAY, 0x29), (Reg.MONTH, 0x02), (Reg.YEAR, 0x24), (Reg.CENTURY, 0x20),
])
def test_time_registers_are_bcd_utc(dev: Rtc, index: int, value: int) -> None:
    assert read(dev, index) == value


def test_status_registers(dev: Rtc) -> None:
    assert not read(dev, Reg.STATUS_A) & 0x80             # UIP clear: never mid-update
    b = read(dev, Reg.STATUS_B)
    assert b & 0x02 and not b & 0x04                      # 24-hour, BCD
    assert read(dev, Reg.STATUS_C) == 0
    assert read(dev, Reg.STATUS_D) & 0x80                 # valid RAM and time


def test_nmi_bit_is_not_part_of_the_index(dev: Rtc) -> None:
    assert read(dev, 0x80 | Reg.HOURS) == 0x23


def test_time_follows_the_clock() -> None:
    now = [NOW]
    dev = Rtc(lambda: now[0])
    now[0] += 2                                           # rolls over to 2024-03-01 00:00:00
    assert [read(dev, i) for i in (Reg.SECONDS, Reg.HOURS, Reg.DAY, Reg.MONTH)] == [0, 0, 1, 3]


def test_writes_ignored_and_other_indexes_read_zero(dev: Rtc) -> None:
    dev.write(rtc.INDEX_OFFSET, Reg.HOURS)
    dev.write(rtc.DATA_OFFSET, 0x11)
    assert dev.read(rtc.DATA_OFFSET) == 0x23
    assert read(dev, 0x10) == 0 and read(dev, 0x7F) == 0
    assert dev.read(rtc.INDEX_OFFSET) == 0xFF


def test_state_roundtrip_through_json(dev: Rtc) -> None:
    dev.write(rtc.INDEX_OFFSET, Reg.YEAR)
    back = via_snapshot(dev.save())
    twin = Rtc(lambda: NOW)
    twin.restore(back)
    assert twin.read(rtc.DATA_OFFSET) == dev.read(rtc.DATA_OFFSET) == 0x24
    with pytest.raises(ValueError):
        twin.restore(RtcState(index=0x80))


def test_bcd() -> None:
    assert [rtc.bcd(v) for v in (0, 9, 10, 59, 99)] == [0x00, 0x09, 0x10, 0x59, 0x99]
