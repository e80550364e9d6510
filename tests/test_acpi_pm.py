"""ACPI hardware-reduced sleep registers: S5 request, ignored writes, WAK_STS, persistence."""

from __future__ import annotations

import pytest

from volt_spec import layout
from volt_spec.devices import acpi_pm
from volt_spec.devices.acpi_pm import AcpiSleep, AcpiSleepState

from .device_json import via_snapshot

CONTROL, STATUS = acpi_pm.CONTROL_OFFSET, acpi_pm.STATUS_OFFSET


@pytest.fixture
def calls() -> list[int]:
    return []


def test_ports_match_layout() -> None:
    assert layout.ACPI_SLEEP_STATUS_PORT - layout.ACPI_SLEEP_CONTROL_PORT == STATUS


def test_linux_s5_sequence_calls_back_with_slp_typ(calls: list[int]) -> None:
    dev = AcpiSleep(calls.append)
    dev.write(STATUS, acpi_pm.WAK_STS)                               # clear WAK_STS first
    dev.write(CONTROL, (layout.ACPI_S5_SLP_TYP << 2) | acpi_pm.SLP_EN)
    assert calls == [layout.ACPI_S5_SLP_TYP]


@pytest.mark.parametrize("typ", range(8))
def test_every_slp_typ_is_decoded(calls: list[int], typ: int) -> None:
    AcpiSleep(calls.append).write(CONTROL, 0xC3 | typ << 2 | acpi_pm.SLP_EN)   # reserved bits set
    assert calls == [typ]


def test_writes_without_slp_en_are_ignored(calls: list[int]) -> None:
    dev = AcpiSleep(calls.append)
    for value in (0x00, layout.ACPI_S5_SLP_TYP << 2, 0xDF):
        dev.write(CONTROL, value)
    assert calls == []
    assert dev.read(CONTROL) == 0
    assert dev.read(STATUS) == 0


def test_wak_sts_set_after_sleep_and_write_one_to_clear(calls: list[int]) -> None:
    dev = AcpiSleep(calls.append)
    dev.write(CONTROL, 3 << 2 | acpi_pm.SLP_EN)
    assert dev.read(STATUS) == acpi_pm.WAK_STS        # a polling guest resumes
    dev.write(STATUS, 0x7F)                            # writing 0 to bit 7 keeps it
    assert dev.read(STATUS) == acpi_pm.WAK_STS
    dev.write(STATUS, acpi_pm.WAK_STS)
    assert dev.read(STATUS) == 0


def test_state_roundtrip_through_json(calls: list[int]) -> None:
    dev = AcpiSleep(calls.append)
    dev.write(CONTROL, 3 << 2 | acpi_pm.SLP_EN)          # sets WAK_STS
    back = via_snapshot(dev.save())
    twin = AcpiSleep(calls.append)
    twin.restore(back)
    assert twin.read(STATUS) == dev.read(STATUS) == acpi_pm.WAK_STS
    with pytest.raises(ValueError):
        twin.restore(AcpiSleepState(wak_sts=1))        # type: ignore[arg-type]
