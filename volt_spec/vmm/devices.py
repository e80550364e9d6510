"""The device manager: the legacy PC devices on the port bus, the virtio devices on the MMIO bus,
the console, and each device's state in a snapshot.

Devices are pure state machines (devices/); this module wires them to KVM (interrupt lines,
the buses the vCPU loop dispatches to) and to the host (stdout, stdin). One lock, `lock`,
serialises every device access: the vCPU threads hold it around each bus access.
"""

from __future__ import annotations

import _thread
import os

from .. import layout

HISTORY_MAX = 64 << 10


class KvmIrqLine:
    """A device's interrupt output wired to one GSI through KVM_IRQ_LINE."""

    __slots__ = ("vm", "gsi")

    def __init__(self, vm, gsi: int) -> None:
        self.vm, self.gsi = vm, gsi

    def set_level(self, level: bool) -> None:
        self.vm.irq_line(self.gsi, level)


class _Shifted:
    """A device seen through a second, non-contiguous port: offsets shifted by `delta`."""

    __slots__ = ("dev", "delta")

    def __init__(self, dev, delta: int) -> None:
        self.dev, self.delta = dev, delta

    def read(self, offset: int) -> int:
        return self.dev.read(offset + self.delta)

    def write(self, offset: int, value: int) -> None:
        self.dev.write(offset + self.delta, value)


class StdoutSink:
    """Guest serial bytes straight to fd 1: no buffering, so a pipe reader sees each at once."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.broken = False
        self.count = 0
        self.taps: list = []            # callables(bytes) that also see the output (snapshot policy)
        self.history: bytearray | None = bytearray()   # output until the first tap (replayed to it)

    def __call__(self, data: bytes) -> None:
        self.count += len(data)
        if self.history is not None and len(self.history) < HISTORY_MAX:
            self.history += data
        for tap in self.taps:
            tap(data)
        if self.broken:
            return
        try:
            os.write(self.fd, data)
        except (BrokenPipeError, OSError):
            self.broken = True


class Devices:
    """Every device of one VM. `on_reset` and `on_sleep(slp_typ)` run with `lock` held."""

    def __init__(self, vm, memory, on_reset, on_sleep, out=None) -> None:
        from ..devices.acpi_pm import AcpiSleep
        from ..devices.bus import MmioBus, PioBus, Sink
        from ..devices.i8042 import I8042
        from ..devices.rtc import Rtc
        from ..devices.serial import Serial
        import time

        self.vm, self.memory = vm, memory
        self.lock = _thread.allocate_lock()
        self.out = out or StdoutSink()
        self.serial = Serial(KvmIrqLine(vm, layout.COM1_IRQ), self.out)
        self.i8042 = I8042(KvmIrqLine(vm, layout.I8042_IRQ), on_reset)
        self.acpi_sleep = AcpiSleep(on_sleep)
        self.rtc = Rtc(time.time)
        self.pio = PioBus()
        self.pio.insert(layout.COM1_PORT, 8, self.serial)
        self.pio.insert(layout.I8042_DATA_PORT, 1, self.i8042)
        self.pio.insert(layout.I8042_CMD_PORT, 1, _Shifted(self.i8042, 4))
        self.pio.insert(layout.ACPI_SLEEP_CONTROL_PORT, 2, self.acpi_sleep)
        self.pio.insert(layout.RTC_INDEX_PORT, 2, self.rtc)
        self.pio.insert_noise_sinks()
        for com in (0x2F8, 0x3E8, 0x2E8):           # absent COM2-4: quiet, not "unknown"
            self.pio.insert(com, 8, Sink())
        self.mmio = MmioBus()
        self.virtio = None                            # VirtioDevices once drives or NICs are attached

    def attach_virtio(self, drives: list, nets: list, options, vm_name: str, stopped) -> None:
        """Put the drives and NICs on the MMIO bus (no-op without any: virtio's modules stay unloaded)."""
        if not drives and not nets:
            return
        from .virtio import VirtioDevices
        self.virtio = VirtioDevices(self.vm, self.memory, self.mmio, stopped, drives, nets, vm_name,
                                    ioeventfd=options.ioeventfd, irqfd=options.irqfd)

    # -- snapshots -------------------------------------------------------------------------------
    def table(self) -> dict:
        """The stateful legacy devices, by the name their state is saved under."""
        return {"serial": self.serial, "i8042": self.i8042, "acpi_sleep": self.acpi_sleep, "rtc": self.rtc}

    def save(self) -> dict:
        from ..snapshot import codec
        with self.lock:
            return {name: codec.encode(dev.save()) for name, dev in self.table().items()}

    def restore(self, states: dict) -> None:
        from ..snapshot import codec
        table = self.table()
        if not isinstance(states, dict):
            raise ValueError("the snapshot's device states are not an object")
        unknown = set(states) - set(table)
        if unknown:
            raise ValueError(f"snapshot has state for unknown device(s): {', '.join(sorted(map(str, unknown)))}")
        with self.lock:
            for name, dev in table.items():
                if name in states:
                    try:
                        dev.restore(codec.decode(dev.State, states[name]))
                    except (AttributeError, TypeError, ValueError) as e:
                        raise ValueError(f"device {name}: bad saved state ({e})") from None

    # -- the console and the keyboard controller -----------------------------------------------
    def add_console_tap(self, tap) -> None:
        """Let `tap` see the console from the very first byte: what came before is replayed."""
        with self.lock:
            history = self.out.history
            if history:
                tap(bytes(history))
            self.out.history = None
            self.out.taps.append(tap)

    def console_input(self, data: bytes) -> int:
        """Host keystrokes into the UART's receive FIFO (raises its interrupt); bytes accepted."""
        with self.lock:
            return self.serial.enqueue_input(data)

    def pump_console_input(self, fd: int, stopped) -> None:
        """Feed fd (stdin) to the UART until EOF or the VM stops; runs in its own thread."""
        while not stopped.is_set():
            try:
                data = os.read(fd, 4096)
            except OSError:
                return
            if not data:
                return
            self.console_input(data)

    def send_ctrl_alt_del(self) -> None:
        with self.lock:
            self.i8042.send_ctrl_alt_del()

    def counters(self) -> dict:
        return {"serial_bytes_out": getattr(self.out, "count", 0),
                "unknown_pio": sum(self.pio.unknown.values()), "unknown_mmio": sum(self.mmio.unknown.values()),
                "virtio": self.virtio.counters() if self.virtio is not None else {}}
