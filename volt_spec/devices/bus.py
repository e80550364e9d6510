"""Port-I/O and MMIO buses: route a vCPU's access to the device owning the address.

Devices follow the Firecracker `BusDevice` shape. The legacy devices have
one-byte registers (`read(offset) -> int`, `write(offset, value)`); a wider
access to them (e.g. `inw` on the UART) is split into byte accesses at
consecutive offsets, least significant byte first, as the x86 I/O bus does.
Devices with wider registers (virtio-mmio) implement `read_access` /
`write_access` and receive whole accesses.

An address nobody owns reads as all ones (a floating ISA/PCI bus) and
swallows writes; both are counted in `unknown` and never raise, so an odd
probe by the guest cannot kill the VMM. The lookup runs on every exit: PIO
uses a dict from port to slot, MMIO a sorted list searched with bisect.
"""

from __future__ import annotations

import bisect

from volt_spec import layout

# Boot path: no `typing`, `collections` or `dataclasses` at run time. The device
# protocols exist for type checkers only; at run time a device is "wide" when it
# has `read_access` and `write_access` (what `runtime_checkable` checked anyway).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol, TypeAlias

    class ByteDevice(Protocol):
        """A device made of one-byte registers."""

        def read(self, offset: int) -> int: ...

        def write(self, offset: int, value: int) -> None: ...

    class WideDevice(Protocol):
        """A device that takes multi-byte accesses whole (little-endian data)."""

        def read_access(self, offset: int, size: int) -> bytes: ...

        def write_access(self, offset: int, data: bytes) -> None: ...

    Device: TypeAlias = ByteDevice | WideDevice

PIO_SPACE = 1 << 16
MMIO_SPACE = 1 << 64
FLOAT = 0xFF          # what a read of an unclaimed byte returns


def is_wide(device: object) -> bool:
    """True for a `WideDevice`: one that takes multi-byte accesses whole."""
    return callable(getattr(device, "read_access", None)) and callable(
        getattr(device, "write_access", None)
    )


class Tally(dict[tuple[str, int], int]):
    """Counts per key (`tally[key] += 1` starts at 0): `collections.Counter` without the import."""

    __slots__ = ()

    def __missing__(self, key: tuple[str, int]) -> int:
        return 0


class Sink:
    """Known noise (POST codes, I/O delay ports): writes vanish, reads give `value`."""

    def __init__(self, value: int = FLOAT) -> None:
        self.value = value & 0xFF

    def read(self, offset: int) -> int:
        return self.value

    def write(self, offset: int, value: int) -> None:
        pass


class Slot:
    """One device mapped at [base, base + length); immutable once made."""

    __slots__ = ("base", "length", "end", "device", "wide")

    base: int
    length: int
    end: int            # base + length, precomputed: read on every MMIO lookup
    device: Device
    wide: bool

    def __init__(self, base: int, length: int, device: Device, wide: bool) -> None:
        set_field = object.__setattr__
        set_field(self, "base", base)
        set_field(self, "length", length)
        set_field(self, "end", base + length)
        set_field(self, "device", device)
        set_field(self, "wide", wide)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Slot is immutable (cannot set {name!r})")

    def __repr__(self) -> str:
        return (f"Slot(base={self.base:#x}, length={self.length:#x}, "
                f"device={type(self.device).__name__}, wide={self.wide})")


class _Bus:
    """Shared routing; subclasses supply the address space and the lookup structure."""

    space: int = 0

    def __init__(self) -> None:
        self.unknown: Tally = Tally()      # (direction "r"/"w", address) -> accesses

    # Lookup structure, provided by subclasses.
    def _find(self, addr: int) -> Slot | None:
        raise NotImplementedError

    def _add(self, slot: Slot) -> None:
        raise NotImplementedError

    def _overlaps(self, base: int, end: int) -> Slot | None:
        raise NotImplementedError

    def insert(self, base: int, length: int, device: Device) -> None:
        """Map `device` at [base, base + length); ValueError if that overlaps another."""
        if length <= 0 or base < 0 or base + length > self.space:
            raise ValueError(f"range {base:#x}+{length:#x} outside the bus ({self.space:#x})")
        clash = self._overlaps(base, base + length)
        if clash is not None:
            raise ValueError(
                f"{base:#x}+{length:#x} overlaps {type(clash.device).__name__} "
                f"at {clash.base:#x}+{clash.length:#x}"
            )
        self._add(Slot(base, length, device, is_wide(device)))

    def read(self, addr: int, size: int) -> bytes:
        """A guest load of `size` bytes at `addr`."""
        slot = self._find(addr)
        if slot is None:
            self.unknown["r", addr] += 1
            return bytes([FLOAT]) * size
        offset = addr - slot.base
        if slot.wide and addr + size <= slot.end:
            return slot.device.read_access(offset, size)
        if size == 1:
            return bytes((slot.device.read(offset) & 0xFF,))
        return bytes(self._read_byte(addr + i) for i in range(size))

    def write(self, addr: int, data: bytes) -> None:
        """A guest store of `data` at `addr`."""
        slot = self._find(addr)
        if slot is None:
            self.unknown["w", addr] += 1
            return
        if slot.wide and addr + len(data) <= slot.end:
            slot.device.write_access(addr - slot.base, bytes(data))
            return
        for i, value in enumerate(data):
            self._write_byte(addr + i, value)

    def _read_byte(self, addr: int) -> int:
        slot = self._find(addr)
        if slot is None:
            self.unknown["r", addr] += 1
            return FLOAT
        if slot.wide:
            return slot.device.read_access(addr - slot.base, 1)[0]
        return slot.device.read(addr - slot.base) & 0xFF

    def _write_byte(self, addr: int, value: int) -> None:
        slot = self._find(addr)
        if slot is None:
            self.unknown["w", addr] += 1
        elif slot.wide:
            slot.device.write_access(addr - slot.base, bytes((value,)))
        else:
            slot.device.write(addr - slot.base, value)


class PioBus(_Bus):
    """The 64 KiB x86 I/O port space; a dict maps every claimed port to its slot."""

    space = PIO_SPACE

    def __init__(self) -> None:
        super().__init__()
        self._ports: dict[int, Slot] = {}

    def _find(self, addr: int) -> Slot | None:
        return self._ports.get(addr)

    def _overlaps(self, base: int, end: int) -> Slot | None:
        for port in range(base, end):
            if port in self._ports:
                return self._ports[port]
        return None

    def _add(self, slot: Slot) -> None:
        for port in range(slot.base, slot.end):
            self._ports[port] = slot

    def insert_noise_sinks(self, ports: tuple[int, ...] = layout.NOISE_PORTS) -> None:
        """Claim the ports Linux pokes without needing a device, so they are not 'unknown'."""
        for port in ports:
            self.insert(port, 1, Sink())


class MmioBus(_Bus):
    """The 64-bit physical address space; slots kept sorted by base for bisect."""

    space = MMIO_SPACE

    def __init__(self) -> None:
        super().__init__()
        self._bases: list[int] = []
        self._slots: list[Slot] = []

    def _find(self, addr: int) -> Slot | None:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            slot = self._slots[i]
            if addr < slot.end:
                return slot
        return None

    def _overlaps(self, base: int, end: int) -> Slot | None:
        i = bisect.bisect_left(self._bases, end)      # slots starting before `end`
        if i > 0 and self._slots[i - 1].end > base:
            return self._slots[i - 1]
        return None

    def _add(self, slot: Slot) -> None:
        i = bisect.bisect_left(self._bases, slot.base)
        self._bases.insert(i, slot.base)
        self._slots.insert(i, slot)
