"""virtio-mmio transport, version 2 "modern" register layout (virtio 1.2 section 4.2).

`VirtioMmio` is the MMIO-bus face of one virtio device: the 0x100 bytes of 32-bit
control registers, then the device's configuration space at 0x100. It negotiates
features (VIRTIO_F_VERSION_1 is required; anything not offered is refused by
leaving FEATURES_OK clear), owns the device's virtqueues and interrupt status, and
turns queue notifications into calls on the device model.

Threading: register accesses come from vCPU threads, `queue_notify` from the VMM's
ioeventfd worker and `VirtioNet.poll_rx` from the tap poller. One re-entrant lock
(`lock`) serialises all of them; every request is served synchronously under it,
so holding the lock means "nothing in flight" (the VMM saves state under it).

Failure model: a malformed queue never raises out of the transport. The device
sets DEVICE_NEEDS_RESET in Status, raises a configuration-change interrupt and
ignores its queues until the driver resets it (2.1.2, 4.2.3.x).
"""

from __future__ import annotations

import _thread

from volt_spec import layout
from volt_spec.devices.state import REQUIRED, DeviceState
from volt_spec.devices.virtio.blk import BlkState
from volt_spec.devices.virtio.net import NetState
from volt_spec.devices.virtio.queue import QueueError, QueueState, Virtqueue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Protocol

    from volt_spec.devices.virtio.queue import Memory

    class Trigger(Protocol):
        """An edge-triggered interrupt (the VMM backs it with an eventfd bound by KVM_IRQFD)."""

        def trigger(self) -> None: ...

    class VirtioDevice(Protocol):
        """What a device model gives the transport."""

        device_id: int
        queue_sizes: tuple[int, ...]      # QueueNumMax of each queue
        features: int                     # device-type feature bits (transport bits added here)
        State: type[DeviceState]          # what save() returns and restore() takes

        def attach(self, transport: VirtioMmio) -> None: ...

        def config_bytes(self) -> bytes: ...

        def config_write(self, offset: int, data: bytes) -> None: ...

        def process_queue(self, index: int) -> None: ...

        def reset(self) -> None: ...

        def save(self) -> DeviceState: ...

        def restore(self, state: DeviceState) -> None: ...

class Reg:
    """Register offsets (4.2.2, table "MMIO Device Register Layout"); a namespace so
    `match` can use them as value patterns."""

    MAGIC_VALUE = 0x000
    VERSION = 0x004
    DEVICE_ID = 0x008
    VENDOR_ID = 0x00C
    DEVICE_FEATURES = 0x010
    DEVICE_FEATURES_SEL = 0x014
    DRIVER_FEATURES = 0x020
    DRIVER_FEATURES_SEL = 0x024
    QUEUE_SEL = 0x030
    QUEUE_NUM_MAX = 0x034
    QUEUE_NUM = 0x038
    QUEUE_READY = 0x044
    QUEUE_NOTIFY = 0x050
    INTERRUPT_STATUS = 0x060
    INTERRUPT_ACK = 0x064
    STATUS = 0x070
    QUEUE_DESC_LOW = 0x080
    QUEUE_DESC_HIGH = 0x084
    QUEUE_DRIVER_LOW = 0x090
    QUEUE_DRIVER_HIGH = 0x094
    QUEUE_DEVICE_LOW = 0x0A0
    QUEUE_DEVICE_HIGH = 0x0A4
    SHM_SEL = 0x0AC
    SHM_LEN_LOW = 0x0B0
    SHM_LEN_HIGH = 0x0B4
    SHM_BASE_LOW = 0x0B8
    SHM_BASE_HIGH = 0x0BC
    QUEUE_RESET = 0x0C0
    CONFIG_GENERATION = 0x0FC
    CONFIG = 0x100


# The VMM registers one ioeventfd per queue at base + NOTIFY_OFFSET, 4 bytes,
# datamatch = queue index; a fired eventfd becomes `queue_notify(index)`.
NOTIFY_OFFSET = Reg.QUEUE_NOTIFY
notify_addr = NOTIFY_OFFSET
WINDOW_SIZE = layout.VIRTIO_MMIO_SIZE    # one device's MMIO window

MAGIC = 0x74726976                # "virt", little-endian
MMIO_VERSION = 2                  # modern (non-legacy) interface
VENDOR = int.from_bytes(b"VOLT", "little")

# Device status bits (2.1).
STATUS_ACKNOWLEDGE = 0x01
STATUS_DRIVER = 0x02
STATUS_DRIVER_OK = 0x04
STATUS_FEATURES_OK = 0x08
STATUS_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

# InterruptStatus bits (4.2.2).
INT_VRING = 0x1                   # used buffer notification
INT_CONFIG = 0x2                  # configuration change notification
INT_MASK = INT_VRING | INT_CONFIG

# Reserved (transport) feature bits (6).
F_INDIRECT_DESC = 1 << 28
F_EVENT_IDX = 1 << 29
F_VERSION_1 = 1 << 32
TRANSPORT_FEATURES = F_INDIRECT_DESC | F_EVENT_IDX | F_VERSION_1

SHM_NONE = 0xFFFFFFFF             # SHMLen/SHMBase of a region that does not exist


class VirtioMmioState(DeviceState):
    """Transport registers, each queue's state and the device model's own state."""

    __slots__ = ("device_id", "device_features", "driver_features", "device_features_sel",
                 "driver_features_sel", "status", "queue_sel", "interrupt_status",
                 "config_generation", "queues", "device")
    FIELDS = {
        "device_id": (int, 0),
        "device_features": (int, 0),
        "driver_features": (int, 0),
        "device_features_sel": (int, 0),
        "driver_features_sel": (int, 0),
        "status": (int, 0),
        "queue_sel": (int, 0),
        "interrupt_status": (int, 0),
        "config_generation": (int, 0),
        "queues": ([QueueState], []),
        "device": ((BlkState, NetState), REQUIRED),   # the device models this transport carries
    }


def _u32(value: int) -> bytes:
    return (value & 0xFFFFFFFF).to_bytes(4, "little")


def _set_half(old: int, value: int, high: bool) -> int:
    """Replace the low or high 32 bits of a 64-bit register pair."""
    return (old & 0xFFFFFFFF) | value << 32 if high else (old & ~0xFFFFFFFF) | value


class VirtioMmio:
    """One virtio device behind a 4 KiB virtio-mmio window."""

    State = VirtioMmioState

    def __init__(self, device: VirtioDevice, memory: Memory, irq: Trigger) -> None:
        self.device = device
        self.memory = memory
        self.irq = irq
        self.lock = _thread.RLock()
        self.queues = [Virtqueue(size, memory) for size in device.queue_sizes]
        self.device_features = device.features | TRANSPORT_FEATURES
        self.failures = 0               # times the device went NEEDS_RESET
        self.last_error = ""            # why, for logs and `volt status`
        self._reset_registers()
        device.attach(self)

    def _reset_registers(self) -> None:
        self.driver_features = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.queue_sel = 0
        self.shm_sel = 0
        self.status = 0
        self.interrupt_status = 0
        self.config_generation = 0

    # -- predicates --------------------------------------------------------------

    @property
    def active(self) -> bool:
        """DRIVER_OK set, features agreed, not broken: the device may use its queues (3.1.1)."""
        wanted = STATUS_DRIVER_OK | STATUS_FEATURES_OK
        return self.status & (wanted | STATUS_NEEDS_RESET | STATUS_FAILED) == wanted

    def _selected(self) -> Virtqueue | None:
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    def _features_acceptable(self) -> bool:
        return (not self.driver_features & ~self.device_features
                and bool(self.driver_features & F_VERSION_1))

    # -- MMIO bus face -----------------------------------------------------------

    def read_access(self, offset: int, size: int) -> bytes:
        """A guest load; registers need 32-bit aligned accesses, config any width."""
        with self.lock:
            if offset >= Reg.CONFIG:
                config = self.device.config_bytes()
                start = offset - Reg.CONFIG
                data = config[start:start + size]
                return data + bytes(size - len(data))
            if size != 4 or offset % 4:
                return bytes(size)          # not a legal register access (4.2.2.2)
            return _u32(self._read_register(offset))

    def write_access(self, offset: int, data: bytes) -> None:
        """A guest store."""
        with self.lock:
            if offset >= Reg.CONFIG:
                self.device.config_write(offset - Reg.CONFIG, bytes(data))
            elif len(data) == 4 and not offset % 4:
                self._write_register(offset, int.from_bytes(data, "little"))

    def _read_register(self, offset: int) -> int:
        queue = self._selected()
        match offset:
            case Reg.MAGIC_VALUE:
                return MAGIC
            case Reg.VERSION:
                return MMIO_VERSION
            case Reg.DEVICE_ID:
                return self.device.device_id
            case Reg.VENDOR_ID:
                return VENDOR
            case Reg.DEVICE_FEATURES:
                return (self.device_features >> (32 * self.device_features_sel)
                        if self.device_features_sel < 2 else 0) & 0xFFFFFFFF
            case Reg.QUEUE_NUM_MAX:
                return queue.max_size if queue else 0
            case Reg.QUEUE_READY:
                return int(queue.ready) if queue else 0
            case Reg.INTERRUPT_STATUS:
                return self.interrupt_status
            case Reg.STATUS:
                return self.status
            case Reg.SHM_LEN_LOW | Reg.SHM_LEN_HIGH | Reg.SHM_BASE_LOW | Reg.SHM_BASE_HIGH:
                return SHM_NONE              # no shared memory regions
            case Reg.CONFIG_GENERATION:
                return self.config_generation
            case _:
                return 0                     # write-only or reserved

    def _write_register(self, offset: int, value: int) -> None:
        queue = self._selected()
        configurable = queue is not None and not queue.ready
        match offset:
            case Reg.DEVICE_FEATURES_SEL:
                self.device_features_sel = value
            case Reg.DRIVER_FEATURES:
                if self.driver_features_sel < 2 and not self.status & STATUS_FEATURES_OK:
                    shift = 32 * self.driver_features_sel
                    self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | value << shift
            case Reg.DRIVER_FEATURES_SEL:
                self.driver_features_sel = value
            case Reg.QUEUE_SEL:
                self.queue_sel = value
            case Reg.QUEUE_NUM if configurable and value <= queue.max_size:
                queue.size = value           # beyond QueueNumMax: ignored (4.2.3.2), so it never reaches a snapshot
            case Reg.QUEUE_READY if queue is not None:
                self._write_queue_ready(queue, value)
            case Reg.QUEUE_NOTIFY:
                self.queue_notify(value)
            case Reg.INTERRUPT_ACK:
                self.interrupt_status &= ~value
            case Reg.STATUS:
                self._write_status(value)
            case Reg.QUEUE_DESC_LOW | Reg.QUEUE_DESC_HIGH if configurable:
                queue.desc = _set_half(queue.desc, value, offset == Reg.QUEUE_DESC_HIGH)
            case Reg.QUEUE_DRIVER_LOW | Reg.QUEUE_DRIVER_HIGH if configurable:
                queue.avail = _set_half(queue.avail, value, offset == Reg.QUEUE_DRIVER_HIGH)
            case Reg.QUEUE_DEVICE_LOW | Reg.QUEUE_DEVICE_HIGH if configurable:
                queue.used = _set_half(queue.used, value, offset == Reg.QUEUE_DEVICE_HIGH)
            case Reg.SHM_SEL:
                self.shm_sel = value
            case _:
                pass                         # read-only, reserved, or queue busy: ignored

    def _write_queue_ready(self, queue: Virtqueue, value: int) -> None:
        if not value & 1:
            queue.ready = False
            return
        if queue.ready:
            return
        queue.ready = True
        queue.event_idx = bool(self.driver_features & F_EVENT_IDX)
        queue.indirect = bool(self.driver_features & F_INDIRECT_DESC)
        try:
            queue.check_layout()
        except QueueError as e:
            self.fail(f"queue {self.queues.index(queue)}: {e}")

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        old = self.status
        new = (value & 0xFF & ~STATUS_NEEDS_RESET) | (old & STATUS_NEEDS_RESET)
        if new & STATUS_FEATURES_OK and not old & STATUS_FEATURES_OK:
            if not self._features_acceptable():
                new &= ~STATUS_FEATURES_OK    # the driver reads it back and gives up (3.1.1)
        self.status = new
        if new & STATUS_DRIVER_OK and not old & STATUS_DRIVER_OK:
            self.kick()                       # buffers the driver queued before DRIVER_OK

    # -- device side -------------------------------------------------------------

    def reset(self) -> None:
        """Device reset (Status = 0): queues, negotiation and interrupts back to power-on."""
        with self.lock:
            for queue in self.queues:
                queue.reset()
            self._reset_registers()
            self.device.reset()

    def queue_notify(self, index: int) -> None:
        """The driver published buffers on queue `index` (ioeventfd or QueueNotify write)."""
        self.service(index, self.device.process_queue)

    def service(self, index: int, work: Callable[[int], None]) -> None:
        """Run `work(index)` if that queue may be used, then interrupt if the driver wants it.

        Every device entry point goes through here: a QueueError, or any guest-memory
        ValueError, becomes NEEDS_RESET instead of an exception.
        """
        with self.lock:
            if not self.active or not 0 <= index < len(self.queues) or not self.queues[index].ready:
                return
            queue = self.queues[index]
            try:
                work(index)
            except ValueError as e:
                self.fail(f"queue {index}: {e}")
            try:
                if queue.needs_notification():
                    self.interrupt(INT_VRING)
            except ValueError as e:
                self.fail(f"queue {index}: {e}")

    def kick(self) -> None:
        """Process every ready queue as if notified (after DRIVER_OK, and after a restore)."""
        for index in range(len(self.queues)):
            self.queue_notify(index)

    def interrupt(self, bits: int) -> None:
        """Latch `bits` in InterruptStatus and signal the edge."""
        with self.lock:
            self.interrupt_status |= bits
            self.irq.trigger()

    def fail(self, reason: str) -> None:
        """The driver broke the protocol: DEVICE_NEEDS_RESET plus a config interrupt (2.1.2)."""
        with self.lock:
            self.failures += 1
            self.last_error = reason
            already = self.status & STATUS_NEEDS_RESET
            self.status |= STATUS_NEEDS_RESET
            if not already and self.status & STATUS_DRIVER_OK:
                self.interrupt(INT_CONFIG)

    # -- persistence ---------------------------------------------------------------

    def save(self) -> VirtioMmioState:
        with self.lock:
            return VirtioMmioState(
                device_id=self.device.device_id,
                device_features=self.device_features,
                driver_features=self.driver_features,
                device_features_sel=self.device_features_sel,
                driver_features_sel=self.driver_features_sel,
                status=self.status,
                queue_sel=self.queue_sel,
                interrupt_status=self.interrupt_status,
                config_generation=self.config_generation,
                queues=[queue.save() for queue in self.queues],
                device=self.device.save(),
            )

    def restore(self, state: VirtioMmioState) -> None:
        """Load `state` (validated first) and re-raise a pending interrupt.

        Guest memory is not touched: call `kick()` once the VMM has mapped RAM and is
        about to resume, so buffers notified just before the snapshot are served.
        """
        with self.lock:
            _check_mmio_state(self, state)
            queues = [Virtqueue(queue.max_size, self.memory) for queue in self.queues]
            for queue, queue_state in zip(queues, state.queues):
                queue.restore(queue_state)
            self.device.restore(state.device)
            self.queues = queues
            self.driver_features = state.driver_features
            self.device_features_sel = state.device_features_sel
            self.driver_features_sel = state.driver_features_sel
            self.status = state.status
            self.queue_sel = state.queue_sel
            self.interrupt_status = state.interrupt_status
            self.config_generation = state.config_generation
            if self.interrupt_status:
                self.irq.trigger()


def _check_mmio_state(mmio: VirtioMmio, state: VirtioMmioState) -> None:
    def u32(name: str, limit: int = 1 << 32) -> None:
        value = getattr(state, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < limit:
            raise ValueError(f"virtio state: {name}={value!r} out of range")

    for name in ("device_features_sel", "driver_features_sel", "queue_sel", "config_generation"):
        u32(name)
    u32("status", 0x100)
    u32("interrupt_status", INT_MASK + 1)
    u32("driver_features", 1 << 64)
    if state.device_id != mmio.device.device_id:
        raise ValueError(f"virtio state: device id {state.device_id!r}, this is {mmio.device.device_id}")
    if state.device_features != mmio.device_features:
        raise ValueError("virtio state: saved device features differ from this device's")
    if state.driver_features & ~mmio.device_features:
        raise ValueError("virtio state: driver features not offered by the device")
    if len(state.queues) != len(mmio.queues) or not isinstance(state.device, mmio.device.State):
        raise ValueError("virtio state: queue count or device state type differs")
