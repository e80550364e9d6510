"""Interrupt outputs of emulated devices, as seen by the devices themselves.

A device drives one interrupt line. It reports the line's *level*; the VMM
turns a level change into one KVM_IRQ_LINE ioctl. Each ioctl is a syscall, so
devices call `set_level` only when the level actually changes.
"""

from __future__ import annotations

# `typing.TYPE_CHECKING` without importing `typing` (~4 ms on the boot path):
# type checkers treat a module-level `TYPE_CHECKING = False` the same way.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Protocol

    class IrqLine(Protocol):
        """The pin a device drives (a PIC/IOAPIC input, via KVM_IRQ_LINE in the VMM)."""

        def set_level(self, level: bool) -> None:
            """Drive the line high (asserted) or low."""
            ...
else:
    class IrqLine:
        """Protocol (documentation only at run time): anything with
        `set_level(level: bool) -> None`, the pin a device drives (a PIC/IOAPIC
        input, via KVM_IRQ_LINE in the VMM). Devices never check isinstance."""

        __slots__ = ()

        def set_level(self, level: bool) -> None:
            """Drive the line high (asserted) or low."""
            raise NotImplementedError


class LevelLatch:
    """Remembers the level last driven on a line and forwards only changes."""

    __slots__ = ("_line", "_level")

    def __init__(self, line: IrqLine) -> None:
        self._line = line
        self._level = False

    @property
    def level(self) -> bool:
        """The level last forwarded to the line."""
        return self._level

    def update(self, level: bool) -> None:
        """Drive `level`, calling the line only if it differs from the current one."""
        if level != self._level:
            self._level = level
            self._line.set_level(level)


def pulse(line: IrqLine) -> None:
    """Signal an edge-triggered interrupt (ISA IRQ 1 style): high, then low."""
    line.set_level(True)
    line.set_level(False)


class RecordingIrq:
    """Test double: records every level it is given, in order."""

    def __init__(self) -> None:
        self.levels: list[bool] = []
        self.level = False
        self._start = False          # level before the first recorded call

    def set_level(self, level: bool) -> None:
        self.levels.append(level)
        self.level = level

    @property
    def rising_edges(self) -> int:
        """How many low-to-high transitions were recorded (what an edge-triggered PIC latches)."""
        edges, prev = 0, self._start
        for level in self.levels:
            edges += level and not prev
            prev = level
        return edges

    def clear(self) -> None:
        """Forget the recorded calls; the current level is kept."""
        self.levels.clear()
        self._start = self.level
