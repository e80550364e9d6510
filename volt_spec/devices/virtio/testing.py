"""Driver-side helpers for tests: lay out split virtqueues in fake guest RAM and submit chains.

`MmioDriver` performs the virtio-mmio initialisation sequence (3.1.1 / 4.2.3) through
`read_access` / `write_access`, like a guest driver would; `QueueDriver` owns one
queue's descriptor table and available ring. `IrqRecorder` counts interrupt edges.
"""

from __future__ import annotations

from volt_spec.devices.virtio import mmio as m
from volt_spec.devices.virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE

QUEUE_AREA = 0x10000              # queue i's rings live at QUEUE_AREA * (i + 1)
HEAP_START = 0x100000             # buffers are bump-allocated from 1 MiB up


class IrqRecorder:
    """An edge-triggered interrupt stand-in: counts `trigger()` calls."""

    def __init__(self) -> None:
        self.count = 0

    def trigger(self) -> None:
        self.count += 1


class Heap:
    """Bump allocator for guest buffers (16-byte aligned)."""

    def __init__(self, start: int = HEAP_START) -> None:
        self.next = start

    def alloc(self, size: int) -> int:
        gpa = self.next
        self.next += (size + 15) & ~15 or 16
        return gpa


class Submission:
    """A chain the test driver made available; `writable` are its device-writable buffers."""

    def __init__(self, head: int, writable: list[tuple[int, int]]) -> None:
        self.head = head
        self.writable = writable


class QueueDriver:
    """The driver's half of one split virtqueue."""

    def __init__(self, memory: object, heap: Heap, base: int, size: int) -> None:
        self.memory, self.heap, self.size = memory, heap, size
        self.desc = base
        self.avail = base + DESC_SIZE * size
        self.used = (self.avail + 6 + 2 * size + 3) & ~3
        self.next_desc = 0
        self.avail_idx = 0
        self.last_used = 0

    def _put_desc(self, table: int, index: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.memory.write(table + DESC_SIZE * index,
                          addr.to_bytes(8, "little") + length.to_bytes(4, "little")
                          + flags.to_bytes(2, "little") + nxt.to_bytes(2, "little"))

    def add(self, readable: list[bytes], writable: list[int], indirect: bool = False,
            publish: bool = True) -> Submission:
        """Copy `readable` into fresh buffers, allocate `writable` sizes, make one chain."""
        bufs: list[tuple[int, int, int]] = []
        for data in readable:
            gpa = self.heap.alloc(len(data))
            self.memory.write(gpa, data)
            bufs.append((gpa, len(data), 0))
        out = []
        for size in writable:
            gpa = self.heap.alloc(size)
            bufs.append((gpa, size, DESC_F_WRITE))
            out.append((gpa, size))
        if indirect:
            table = self.heap.alloc(DESC_SIZE * len(bufs))
            for i, (gpa, length, flags) in enumerate(bufs):
                more = DESC_F_NEXT if i + 1 < len(bufs) else 0
                self._put_desc(table, i, gpa, length, flags | more, i + 1 if more else 0)
            head = self._take(1)[0]
            self._put_desc(self.desc, head, table, DESC_SIZE * len(bufs), DESC_F_INDIRECT, 0)
        else:
            slots = self._take(len(bufs))
            for i, (gpa, length, flags) in enumerate(bufs):
                more = DESC_F_NEXT if i + 1 < len(bufs) else 0
                self._put_desc(self.desc, slots[i], gpa, length, flags | more,
                               slots[i + 1] if more else 0)
            head = slots[0]
        if publish:
            self.publish(head)
        return Submission(head, out)

    def _take(self, count: int) -> list[int]:
        slots = [(self.next_desc + i) % self.size for i in range(count)]
        self.next_desc = (self.next_desc + count) % self.size
        return slots

    def publish(self, head: int) -> None:
        """Put `head` in the available ring and bump avail->idx."""
        self.memory.write(self.avail + 4 + 2 * (self.avail_idx % self.size), head.to_bytes(2, "little"))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write(self.avail + 2, self.avail_idx.to_bytes(2, "little"))

    def set_avail_flags(self, flags: int) -> None:
        self.memory.write(self.avail, flags.to_bytes(2, "little"))

    def set_used_event(self, value: int) -> None:
        self.memory.write(self.avail + 4 + 2 * self.size, value.to_bytes(2, "little"))

    def avail_event(self) -> int:
        return int.from_bytes(self.memory.read(self.used + 4 + 8 * self.size, 2), "little")

    def used_idx(self) -> int:
        return int.from_bytes(self.memory.read(self.used + 2, 2), "little")

    def take_used(self) -> list[tuple[int, int]]:
        """New used elements (id, len) since the last call; re-arms used_event like Linux's
        virtqueue_enable_cb (harmless without EVENT_IDX)."""
        out = []
        while self.last_used != self.used_idx():
            raw = self.memory.read(self.used + 4 + 8 * (self.last_used % self.size), 8)
            out.append((int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")))
            self.last_used = (self.last_used + 1) & 0xFFFF
        self.set_used_event(self.last_used)
        return out

    def read(self, sub: Submission) -> list[bytes]:
        """The contents of a submission's device-writable buffers."""
        return [self.memory.read(gpa, n) for gpa, n in sub.writable]


class MmioDriver:
    """Registers access plus the initialisation sequence of a virtio-mmio driver."""

    def __init__(self, device: m.VirtioMmio, memory: object) -> None:
        self.dev = device
        self.memory = memory
        self.heap = Heap()
        self.queues: list[QueueDriver] = []

    def read(self, offset: int) -> int:
        return int.from_bytes(self.dev.read_access(offset, 4), "little")

    def write(self, offset: int, value: int) -> None:
        self.dev.write_access(offset, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def config(self, offset: int, size: int) -> bytes:
        return self.dev.read_access(m.Reg.CONFIG + offset, size)

    def device_features(self) -> int:
        self.write(m.Reg.DEVICE_FEATURES_SEL, 0)
        low = self.read(m.Reg.DEVICE_FEATURES)
        self.write(m.Reg.DEVICE_FEATURES_SEL, 1)
        return low | self.read(m.Reg.DEVICE_FEATURES) << 32

    def negotiate(self, features: int) -> bool:
        """ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK; True if the device kept it."""
        self.write(m.Reg.STATUS, 0)
        self.write(m.Reg.STATUS, m.STATUS_ACKNOWLEDGE)
        self.write(m.Reg.STATUS, m.STATUS_ACKNOWLEDGE | m.STATUS_DRIVER)
        for sel in (0, 1):
            self.write(m.Reg.DRIVER_FEATURES_SEL, sel)
            self.write(m.Reg.DRIVER_FEATURES, features >> (32 * sel))
        self.write(m.Reg.STATUS, m.STATUS_ACKNOWLEDGE | m.STATUS_DRIVER | m.STATUS_FEATURES_OK)
        return bool(self.read(m.Reg.STATUS) & m.STATUS_FEATURES_OK)

    def setup_queue(self, index: int, size: int | None = None) -> QueueDriver:
        self.write(m.Reg.QUEUE_SEL, index)
        size = size or self.read(m.Reg.QUEUE_NUM_MAX)
        queue = QueueDriver(self.memory, self.heap, QUEUE_AREA * (index + 1), size)
        self.write(m.Reg.QUEUE_NUM, size)
        for low, addr in ((m.Reg.QUEUE_DESC_LOW, queue.desc), (m.Reg.QUEUE_DRIVER_LOW, queue.avail),
                          (m.Reg.QUEUE_DEVICE_LOW, queue.used)):
            self.write(low, addr)
            self.write(low + 4, addr >> 32)
        self.write(m.Reg.QUEUE_READY, 1)
        return queue

    def init(self, features: int | None = None, queue_size: int | None = None) -> None:
        """The whole sequence up to DRIVER_OK, accepting every offered feature by default."""
        wanted = self.device_features() if features is None else features
        if not self.negotiate(wanted):
            raise AssertionError("device refused FEATURES_OK")
        count = len(self.dev.queues)
        self.queues = [self.setup_queue(i, queue_size) for i in range(count)]
        self.write(m.Reg.STATUS, m.STATUS_ACKNOWLEDGE | m.STATUS_DRIVER | m.STATUS_FEATURES_OK
                   | m.STATUS_DRIVER_OK)

    def notify(self, index: int) -> None:
        self.write(m.Reg.QUEUE_NOTIFY, index)

    def ack(self) -> int:
        """Read InterruptStatus and acknowledge it all, as an interrupt handler does."""
        status = self.read(m.Reg.INTERRUPT_STATUS)
        self.write(m.Reg.INTERRUPT_ACK, status)
        return status
