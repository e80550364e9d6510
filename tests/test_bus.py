"""PIO/MMIO buses: routing, overlap refusal, unknown-address counting, split accesses."""

from __future__ import annotations

import pytest

from volt_spec import layout
from volt_spec.devices.bus import MmioBus, PioBus, Sink
from volt_spec.devices.irq import RecordingIrq
from volt_spec.devices.serial import Serial


class Regs:
    """A byte-register device that records accesses."""

    def __init__(self, size: int) -> None:
        self.mem = bytearray(range(0x10, 0x10 + size))
        self.log: list[tuple[str, int, int]] = []

    def read(self, offset: int) -> int:
        self.log.append(("r", offset, self.mem[offset]))
        return self.mem[offset]

    def write(self, offset: int, value: int) -> None:
        self.log.append(("w", offset, value))
        self.mem[offset] = value


class Wide:
    """A device with 32-bit registers that takes whole accesses."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int, bytes | int]] = []

    def read_access(self, offset: int, size: int) -> bytes:
        self.log.append(("r", offset, size))
        return bytes((offset + i) & 0xFF for i in range(size))

    def write_access(self, offset: int, data: bytes) -> None:
        self.log.append(("w", offset, data))


@pytest.mark.parametrize("bus_type", [PioBus, MmioBus])
def test_overlaps_refused(bus_type: type) -> None:
    bus = bus_type()
    bus.insert(0x100, 8, Regs(8))
    for base, length in ((0x100, 1), (0xF9, 8), (0x107, 4), (0x0F0, 0x40), (0x104, 1)):
        with pytest.raises(ValueError, match="overlaps"):
            bus.insert(base, length, Regs(length))
    left, right = Regs(8), Regs(1)
    bus.insert(0xF8, 8, left)              # adjacent on both sides is fine
    bus.insert(0x108, 1, right)
    assert bus.read(0xFF, 2) == b"\x17\x10" and bus.read(0x108, 1) == b"\x10"
    assert left.log == [("r", 7, 0x17)] and right.log == [("r", 0, 0x10)]


def test_ranges_outside_the_bus_refused() -> None:
    with pytest.raises(ValueError):
        PioBus().insert(0xFFFF, 2, Regs(2))
    with pytest.raises(ValueError):
        MmioBus().insert(0x1000, 0, Regs(1))


@pytest.mark.parametrize("bus_type", [PioBus, MmioBus])
def test_routing_uses_offsets_from_base(bus_type: type) -> None:
    bus, dev = bus_type(), Regs(8)
    bus.insert(0x3F8, 8, dev)
    assert bus.read(0x3FB, 1) == b"\x13"
    bus.write(0x3FF, b"\xAA")
    assert dev.log == [("r", 3, 0x13), ("w", 7, 0xAA)]
    assert bus.read(0x3F7, 1) == bus.read(0x400, 1) == b"\xFF"
    assert bus.unknown == {("r", 0x3F7): 1, ("r", 0x400): 1}


@pytest.mark.parametrize("bus_type", [PioBus, MmioBus])
def test_multibyte_access_split_little_endian(bus_type: type) -> None:
    bus, dev = bus_type(), Regs(8)
    bus.insert(0x60, 8, dev)
    assert bus.read(0x61, 4) == bytes([0x11, 0x12, 0x13, 0x14])
    bus.write(0x62, (0xBBAA).to_bytes(2, "little"))
    assert dev.log[-2:] == [("w", 2, 0xAA), ("w", 3, 0xBB)]
    assert dev.mem[2:4] == b"\xAA\xBB"


@pytest.mark.parametrize("bus_type", [PioBus, MmioBus])
def test_unknown_addresses_read_ones_ignore_writes_and_count(bus_type: type) -> None:
    bus = bus_type()
    assert bus.read(0x2F8, 1) == b"\xFF"
    assert bus.read(0x2F8, 4) == b"\xFF" * 4
    bus.write(0x2F8, b"\x01")
    bus.write(0xCF8, b"\x00\x00\x00\x80")
    assert bus.unknown == {("r", 0x2F8): 2, ("w", 0x2F8): 1, ("w", 0xCF8): 1}


def test_access_straddling_a_device_end_counts_only_missing_bytes() -> None:
    bus, dev = PioBus(), Regs(2)
    bus.insert(0x70, 2, dev)
    assert bus.read(0x71, 2) == bytes([0x11, 0xFF])
    assert bus.unknown == {("r", 0x72): 1}


def test_wide_device_gets_whole_accesses() -> None:
    bus, dev = MmioBus(), Wide()
    bus.insert(layout.VIRTIO_MMIO_BASE, layout.VIRTIO_MMIO_SIZE, dev)
    assert bus.read(layout.VIRTIO_MMIO_BASE + 0x70, 4) == bytes([0x70, 0x71, 0x72, 0x73])
    bus.write(layout.VIRTIO_MMIO_BASE + 0x30, b"\x01\x00\x00\x00")
    assert dev.log == [("r", 0x70, 4), ("w", 0x30, b"\x01\x00\x00\x00")]


def test_mmio_routing_between_and_beyond_devices() -> None:
    bus = MmioBus()
    a, b = Wide(), Wide()
    bus.insert(0xD000_0000, 0x1000, a)
    bus.insert(0xD000_2000, 0x1000, b)
    for addr in (0xD000_0FFF, 0xD000_1000, 0xD000_2000, 0xCFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF):
        bus.read(addr, 1)
    assert a.log == [("r", 0xFFF, 1)] and b.log == [("r", 0, 1)]
    assert set(bus.unknown) == {("r", 0xD000_1000), ("r", 0xCFFF_FFFF), ("r", 0xFFFF_FFFF_FFFF_FFFF)}


def test_noise_sinks_are_not_counted_as_unknown() -> None:
    bus = PioBus()
    bus.insert_noise_sinks()
    for port in layout.NOISE_PORTS:
        bus.write(port, b"\x12")
        assert bus.read(port, 1) == b"\xFF"
    assert not bus.unknown
    assert Sink(0x20).read(0) == 0x20


def test_serial_on_the_pio_bus() -> None:
    out = bytearray()
    bus = PioBus()
    bus.insert(layout.COM1_PORT, 8, Serial(RecordingIrq(), out.extend))
    bus.write(layout.COM1_PORT, b"A")
    assert out == b"A"
    assert bus.read(layout.COM1_PORT + 5, 1)[0] & 0x60 == 0x60
