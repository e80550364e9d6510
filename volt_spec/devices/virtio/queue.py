"""Split virtqueues (virtio 1.2 section 2.7), device side, over bounds-checked guest memory.

The driver owns the descriptor table and the available ring; the device owns the used
ring. Everything read from guest memory is untrusted: each descriptor range is checked
against guest RAM before it is handed out, chains are bounded by the queue size (so a
`next` loop ends), indirect tables must be 16-byte multiples and may not nest, and an
available index that runs more than `size` entries ahead of the device is refused.
Any of those raises `QueueError`; the transport then marks the device NEEDS_RESET.

The memory object needs `read(gpa, n) -> bytes`, `write(gpa, data)` and
`region_for(gpa, n)` (which raises ValueError outside RAM): `GuestMemory` has all three.
"""

from __future__ import annotations

import ctypes

from volt_spec.devices.state import DeviceState

# Boot path: no `typing` at run time (see devices/serial.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import ContextManager, Protocol

    class Memory(Protocol):
        def read(self, gpa: int, length: int) -> bytes: ...

        def write(self, gpa: int, data: bytes) -> None: ...

        def region_for(self, gpa: int, length: int) -> tuple[object, int]: ...

    class Transport(Protocol):
        """What a device model uses of its transport (mmio.VirtioMmio). A protocol, so the
        models need not import the transport, whose state class names theirs."""

        queues: list[Virtqueue]
        memory: Memory
        lock: ContextManager[object]

        def service(self, index: int, work: Callable[[int], None]) -> None: ...

# Descriptor layout: le64 addr, le32 len, le16 flags, le16 next (2.7.5).
DESC_SIZE = 16
DESC_F_NEXT = 0x1
DESC_F_WRITE = 0x2
DESC_F_INDIRECT = 0x4

# Available ring: le16 flags, le16 idx, le16 ring[size], le16 used_event (2.7.6).
AVAIL_F_NO_INTERRUPT = 0x1
# Used ring: le16 flags, le16 idx, {le32 id, le32 len} ring[size], le16 avail_event (2.7.8).
USED_F_NO_NOTIFY = 0x1
USED_ELEM_SIZE = 8

# Alignment of the three areas (2.7, table "Virtqueue Part Alignment").
DESC_ALIGN = 16
AVAIL_ALIGN = 2
USED_ALIGN = 4

MAX_QUEUE_SIZE = 32768            # 2.7: the largest split queue size


class QueueError(ValueError):
    """The driver laid out or filled a virtqueue in a way the spec forbids."""


def load_u16(memory: Memory, gpa: int) -> int:
    """One 16-bit load of a ring index the driver updates concurrently.

    A byte-wise copy (what an mmap slice does for 2 bytes) can tear: the high byte
    new, the low byte old. The driver stores the index with one 16-bit store, so we
    read it with one 16-bit load (ctypes on the host address), bounds-checked first.
    """
    region, offset = memory.region_for(gpa, 2)
    # SAFETY: region_for proved [gpa, gpa+2) lies inside this region's live mapping.
    return ctypes.c_uint16.from_address(region.host_addr + offset).value


def store_u16(memory: Memory, gpa: int, value: int) -> None:
    """One 16-bit store of a ring index the driver reads concurrently (see load_u16)."""
    region, offset = memory.region_for(gpa, 2)
    # SAFETY: as in load_u16; the store is a single aligned 16-bit write.
    ctypes.c_uint16.from_address(region.host_addr + offset).value = value & 0xFFFF
    region.note_written(offset, 2)


def _u16(data: bytes, off: int = 0) -> int:
    return data[off] | data[off + 1] << 8


def _u32(data: bytes, off: int = 0) -> int:
    return int.from_bytes(data[off:off + 4], "little")


def _check_range(memory: Memory, gpa: int, length: int, what: str) -> None:
    """Raise QueueError unless [gpa, gpa+length) lies wholly inside one RAM region."""
    try:
        memory.region_for(gpa, length)
    except ValueError:
        raise QueueError(f"{what} {gpa:#x}+{length:#x} is outside guest RAM") from None


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """vring_need_event (2.7.10): did the index pass `event_idx` moving from old to new?"""
    return (new_idx - event_idx - 1) & 0xFFFF < (new_idx - old_idx) & 0xFFFF


class DescriptorChain:
    """One request: the head index and its device-readable then device-writable buffers."""

    __slots__ = ("head", "readable", "writable")

    def __init__(self, head: int, readable: list[tuple[int, int]],
                 writable: list[tuple[int, int]]) -> None:
        self.head = head
        self.readable = readable      # [(gpa, len)], in chain order, each checked in RAM
        self.writable = writable

    @property
    def readable_len(self) -> int:
        return sum(n for _, n in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(n for _, n in self.writable)

    def __repr__(self) -> str:
        return f"DescriptorChain(head={self.head}, readable={self.readable}, writable={self.writable})"


def slice_buffers(bufs: list[tuple[int, int]], start: int, length: int) -> list[tuple[int, int]]:
    """The sub-list of (gpa, len) covering bytes [start, start+length) of `bufs` joined."""
    out: list[tuple[int, int]] = []
    pos = 0
    end = start + length
    for gpa, n in bufs:
        lo, hi = max(start, pos), min(end, pos + n)
        if lo < hi:
            out.append((gpa + lo - pos, hi - lo))
        pos += n
        if pos >= end:
            break
    return out


def read_buffers(memory: Memory, bufs: list[tuple[int, int]]) -> bytes:
    """Concatenate guest buffers (already range-checked by `pop`)."""
    return b"".join(memory.read(gpa, n) for gpa, n in bufs if n)


def write_buffers(memory: Memory, bufs: list[tuple[int, int]], data: bytes) -> int:
    """Scatter `data` over guest buffers in order; returns how many bytes fit."""
    pos = 0
    for gpa, n in bufs:
        if pos >= len(data):
            break
        chunk = data[pos:pos + n]
        memory.write(gpa, chunk)
        pos += len(chunk)
    return pos


class QueueState(DeviceState):
    """What the driver configured and how far both sides got; nothing of guest memory."""

    __slots__ = ("size", "ready", "desc", "avail", "used", "last_avail_idx", "used_idx",
                 "event_idx", "indirect")
    FIELDS = {
        "size": (int, 0),
        "ready": (bool, False),
        "desc": (int, 0),
        "avail": (int, 0),
        "used": (int, 0),
        "last_avail_idx": (int, 0),
        "used_idx": (int, 0),
        "event_idx": (bool, False),
        "indirect": (bool, False),
    }


class Virtqueue:
    """Device-side state of one split virtqueue; addresses are set by the transport."""

    State = QueueState

    __slots__ = ("max_size", "size", "ready", "desc", "avail", "used", "last_avail_idx",
                 "used_idx", "event_idx", "indirect", "_signalled_used", "memory")

    def __init__(self, max_size: int, memory: Memory) -> None:
        self.max_size = max_size
        self.memory = memory
        self.reset()

    def reset(self) -> None:
        """Back to the power-on state (device reset or queue reset)."""
        self.size = 0
        self.ready = False
        self.desc = 0
        self.avail = 0
        self.used = 0
        self.last_avail_idx = 0       # next avail ring slot the device will consume (free-running)
        self.used_idx = 0             # the used->idx the device has published (free-running)
        self.event_idx = False        # VIRTIO_F_RING_EVENT_IDX negotiated
        self.indirect = False         # VIRTIO_F_INDIRECT_DESC negotiated
        # used idx at the last notification decision; None = unknown (after a restore).
        self._signalled_used: int | None = 0

    # -- layout ----------------------------------------------------------------

    def check_layout(self) -> None:
        """Raise QueueError unless size and the three areas are valid and inside RAM."""
        size = self.size
        if not 0 < size <= self.max_size or size & (size - 1):
            raise QueueError(f"queue size {size} is not a power of two <= {self.max_size}")
        if self.desc % DESC_ALIGN or self.avail % AVAIL_ALIGN or self.used % USED_ALIGN:
            raise QueueError("virtqueue area misaligned")
        _check_range(self.memory, self.desc, DESC_SIZE * size, "descriptor table")
        _check_range(self.memory, self.avail, 6 + 2 * size, "available ring")
        _check_range(self.memory, self.used, 6 + USED_ELEM_SIZE * size, "used ring")

    def _avail_idx(self) -> int:
        return load_u16(self.memory, self.avail + 2)

    def _set_avail_event(self, value: int) -> None:
        store_u16(self.memory, self.used + 4 + USED_ELEM_SIZE * self.size, value)

    def pending(self) -> int:
        """How many chains the driver has made available and the device not yet taken."""
        return (self._avail_idx() - self.last_avail_idx) & 0xFFFF

    # -- consuming -------------------------------------------------------------

    def pop(self) -> DescriptorChain | None:
        """The next available chain, or None; QueueError on anything malformed."""
        pending = self.pending()
        if pending == 0 and self.event_idx:
            # Ask for a notification at the next entry, then look again: the driver may
            # have published between our read and the avail_event write.
            self._set_avail_event(self.last_avail_idx)
            pending = self.pending()
        if pending == 0:
            return None
        if pending > self.size:
            raise QueueError(f"available index is {pending} entries ahead of a {self.size}-entry queue")
        slot = self.avail + 4 + 2 * (self.last_avail_idx % self.size)
        head = _u16(self.memory.read(slot, 2))
        chain = self._walk(head)
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        if self.event_idx:
            self._set_avail_event(self.last_avail_idx)
        return chain

    def undo_pop(self) -> None:
        """Give the last popped chain back (e.g. an rx buffer too small for this frame)."""
        self.last_avail_idx = (self.last_avail_idx - 1) & 0xFFFF

    def _read_desc(self, table: int, index: int) -> tuple[int, int, int, int]:
        raw = self.memory.read(table + DESC_SIZE * index, DESC_SIZE)
        return (int.from_bytes(raw[0:8], "little"), _u32(raw, 8), _u16(raw, 12), _u16(raw, 14))

    def _walk(self, head: int) -> DescriptorChain:
        size = self.size
        if head >= size:
            raise QueueError(f"head index {head} >= queue size {size}")
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        table, count, index = self.desc, size, head
        in_indirect = False
        seen = 0
        while True:
            seen += 1
            if seen > size:
                # 2.7.5.3.1: a chain is never longer than the queue size (this also ends loops).
                raise QueueError("descriptor chain longer than the queue (loop?)")
            addr, length, flags, nxt = self._read_desc(table, index)
            if flags & DESC_F_INDIRECT:
                if in_indirect:
                    raise QueueError("nested indirect descriptor table")
                if not self.indirect:
                    raise QueueError("indirect descriptor without VIRTIO_F_INDIRECT_DESC")
                if flags & DESC_F_NEXT:
                    raise QueueError("descriptor has both INDIRECT and NEXT")
                if length == 0 or length % DESC_SIZE or length // DESC_SIZE > size:
                    raise QueueError(f"indirect table length {length} invalid")
                _check_range(self.memory, addr, length, "indirect table")
                table, count, index, in_indirect = addr, length // DESC_SIZE, 0, True
                continue
            _check_range(self.memory, addr, length, "buffer")
            if flags & DESC_F_WRITE:
                writable.append((addr, length))
            elif writable:
                raise QueueError("device-readable descriptor after a device-writable one")
            else:
                readable.append((addr, length))
            if not flags & DESC_F_NEXT:
                return DescriptorChain(head, readable, writable)
            if nxt >= count:
                raise QueueError(f"next index {nxt} outside a {count}-entry table")
            index = nxt

    # -- completing ------------------------------------------------------------

    def add_used(self, head: int, written: int) -> None:
        """Publish a finished chain: the element first, then the index (2.7.8.2)."""
        slot = self.used + 4 + USED_ELEM_SIZE * (self.used_idx % self.size)
        self.memory.write(slot, head.to_bytes(4, "little") + (written & 0xFFFFFFFF).to_bytes(4, "little"))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        store_u16(self.memory, self.used + 2, self.used_idx)

    def needs_notification(self) -> bool:
        """Should the device interrupt now for the used entries added since the last call?"""
        old, new = self._signalled_used, self.used_idx
        self._signalled_used = new
        if old == new:
            return False
        if self.event_idx:
            if old is None:
                return True            # unknown history (fresh or restored): notify to be safe
            used_event = load_u16(self.memory, self.avail + 4 + 2 * self.size)
            return need_event(used_event, new, old)
        return not load_u16(self.memory, self.avail) & AVAIL_F_NO_INTERRUPT

    # -- persistence -----------------------------------------------------------

    def save(self) -> QueueState:
        return QueueState(size=self.size, ready=self.ready, desc=self.desc, avail=self.avail,
                          used=self.used, last_avail_idx=self.last_avail_idx,
                          used_idx=self.used_idx, event_idx=self.event_idx,
                          indirect=self.indirect)

    def restore(self, state: QueueState) -> None:
        """Load `state`, validated; the next notification decision always notifies."""
        def number(name: str, limit: int) -> int:
            value = getattr(state, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < limit:
                raise ValueError(f"queue state: {name}={value!r} out of range")
            return value

        def flag(name: str) -> bool:
            value = getattr(state, name)
            if not isinstance(value, bool):
                raise ValueError(f"queue state: {name}={value!r} is not a bool")
            return value

        self.size = number("size", self.max_size + 1)
        self.ready = flag("ready")
        self.desc = number("desc", 1 << 64)
        self.avail = number("avail", 1 << 64)
        self.used = number("used", 1 << 64)
        self.last_avail_idx = number("last_avail_idx", 1 << 16)
        self.used_idx = number("used_idx", 1 << 16)
        self.event_idx = flag("event_idx")
        self.indirect = flag("indirect")
        self._signalled_used = None
