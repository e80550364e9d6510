"""virtio-blk device model (virtio 1.2 section 5.2) over a host file.

One request queue. Each request is a chain: a 16-byte device-readable header
(le32 type, le32 reserved, le64 sector), device-readable data for writes,
device-writable data for reads and GET_ID, and one device-writable status byte
that is always the chain's last writable byte (5.2.6). Data moves with
`os.preadv` / `os.pwritev` straight between the file and slices of the guest
RAM mapping, so the guest's buffers are never copied through Python bytes.

Every request is served synchronously inside `queue_notify`, under the transport's
lock, so nothing is ever in flight once the VMM holds that lock: the saved state is
only the counters.
"""

from __future__ import annotations

import os

from volt_spec.devices.state import DeviceState
from volt_spec.devices.virtio.queue import read_buffers, slice_buffers, write_buffers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from volt_spec.devices.virtio.queue import DescriptorChain, Transport

DEVICE_ID = 2
SECTOR_SIZE = 512                 # virtio-blk sectors are always 512 bytes (5.2.6)
QUEUE_SIZE = 256
REQUEST_QUEUE = 0

# Feature bits (5.2.3).
F_SEG_MAX = 1 << 2
F_RO = 1 << 5
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9


class Req:
    """Request types (5.2.6); a namespace so `match` can use them as value patterns."""

    IN = 0
    OUT = 1
    FLUSH = 4
    GET_ID = 8


# Status byte values (5.2.6).
S_OK = 0
S_IOERR = 1
S_UNSUPP = 2

HEADER_SIZE = 16
ID_BYTES = 20                     # VIRTIO_BLK_ID_BYTES: GET_ID answers with 20 bytes
SEG_MAX = QUEUE_SIZE - 2          # data descriptors per request: header and status take two


def _le(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little")


class BlkState(DeviceState):
    """The request counters: the disk's content lives in its file, not in the snapshot state."""

    COUNTERS = ("reads", "writes", "flushes", "bytes_read", "bytes_written", "errors")
    __slots__ = COUNTERS
    FIELDS = {name: (int, 0) for name in COUNTERS}


def _open_disk(path: str, read_only: bool) -> int:
    """The disk's fd: the one volt handed over for `path` (a warm VMM's, fsutil.register_fd), else opened."""
    import fcntl
    from ...fsutil import preopened_fd
    fd = preopened_fd(path)
    if fd is None:
        return os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    if not read_only and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDWR:
        os.close(fd)
        raise ValueError(f"disk image {path}: the fd handed over is not open for writing")
    return fd


class VirtioBlk:
    """A disk backed by the host file at `path` (regular file or block device)."""

    State = BlkState
    device_id = DEVICE_ID
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, path: str, read_only: bool = False, disk_id: str = "") -> None:
        ident = disk_id.encode("ascii")
        if len(ident) > ID_BYTES:
            raise ValueError(f"virtio-blk disk id {disk_id!r} is longer than {ID_BYTES} bytes")
        self._fd = _open_disk(path, read_only)
        size = os.lseek(self._fd, 0, os.SEEK_END)
        if size % SECTOR_SIZE:
            os.close(self._fd)
            raise ValueError(f"disk image {path}: size {size} is not a multiple of {SECTOR_SIZE} bytes")
        self.path = path
        self.read_only = read_only
        self.capacity = size // SECTOR_SIZE       # in 512-byte sectors
        self._id = ident.ljust(ID_BYTES, b"\0")   # NUL-padded; no NUL when exactly 20 (5.2.6)
        self.features = F_SEG_MAX | F_BLK_SIZE | (F_RO if read_only else F_FLUSH)
        self._transport: Transport | None = None
        self._zero_counters()

    def _zero_counters(self) -> None:
        self.reads = 0
        self.writes = 0
        self.flushes = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.errors = 0               # requests answered IOERR or UNSUPP, or dropped

    # -- transport hooks --------------------------------------------------------

    def attach(self, transport: Transport) -> None:
        self._transport = transport

    def config_bytes(self) -> bytes:
        """struct virtio_blk_config up to blk_size: capacity, size_max, seg_max, geometry, blk_size."""
        return (_le(self.capacity, 8) + _le(0, 4) + _le(SEG_MAX, 4) + _le(0, 4)
                + _le(SECTOR_SIZE, 4))

    def config_write(self, offset: int, data: bytes) -> None:
        """Only `writeback` is writable, and only with CONFIG_WCE, which is not offered."""

    def reset(self) -> None:
        """Nothing device-side survives a reset but the disk itself."""

    def process_queue(self, index: int) -> None:
        """Serve every available request; QueueError (malformed chain) propagates to the transport."""
        queue = self._transport.queues[index]
        while (chain := queue.pop()) is not None:
            queue.add_used(chain.head, self._serve(chain))

    def save(self) -> BlkState:
        return BlkState(**{name: getattr(self, name) for name in BlkState.COUNTERS})

    def restore(self, state: BlkState) -> None:
        """Load the counters, validated (all of them or none)."""
        values = {name: getattr(state, name) for name in BlkState.COUNTERS}
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()):
            raise ValueError(f"virtio-blk state: bad counters {values!r}")
        for name, value in values.items():
            setattr(self, name, value)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- requests -------------------------------------------------------------------

    def _serve(self, chain: DescriptorChain) -> int:
        """Execute one request; returns the bytes written into the chain (used.len)."""
        memory = self._transport.memory
        writable_len = chain.writable_len
        if writable_len == 0:
            self.errors += 1          # no status byte to answer in (5.2.6.1): drop the request
            return 0
        status_at = slice_buffers(chain.writable, writable_len - 1, 1)
        data_in = slice_buffers(chain.writable, 0, writable_len - 1)
        if chain.readable_len < HEADER_SIZE:
            return self._finish(memory, status_at, S_IOERR, 0)
        header = read_buffers(memory, slice_buffers(chain.readable, 0, HEADER_SIZE))
        kind = int.from_bytes(header[0:4], "little")
        sector = int.from_bytes(header[8:16], "little")
        data_out = slice_buffers(chain.readable, HEADER_SIZE, chain.readable_len - HEADER_SIZE)
        match kind:
            case Req.IN:
                status, written = self._read(memory, sector, data_in)
            case Req.OUT:
                status, written = self._write(memory, sector, data_out), 0
            case Req.FLUSH:
                status, written = self._flush(), 0
            case Req.GET_ID:
                written = write_buffers(memory, data_in, self._id)
                status = S_OK
            case _:
                status, written = S_UNSUPP, 0
        return self._finish(memory, status_at, status, written)

    def _finish(self, memory: object, status_at: list[tuple[int, int]], status: int,
                written: int) -> int:
        if status != S_OK:
            self.errors += 1
        write_buffers(memory, status_at, bytes((status,)))
        return written + 1

    def _in_range(self, sector: int, length: int) -> bool:
        return length % SECTOR_SIZE == 0 and sector + length // SECTOR_SIZE <= self.capacity

    def _read(self, memory: object, sector: int, bufs: list[tuple[int, int]]) -> tuple[int, int]:
        length = sum(n for _, n in bufs)
        if not self._in_range(sector, length):
            return S_IOERR, 0
        done = _transfer(os.preadv, self._fd, memory, bufs, sector * SECTOR_SIZE)
        self.reads += 1
        self.bytes_read += done
        return (S_OK if done == length else S_IOERR), done

    def _write(self, memory: object, sector: int, bufs: list[tuple[int, int]]) -> int:
        length = sum(n for _, n in bufs)
        if self.read_only or not self._in_range(sector, length):
            return S_IOERR            # 5.2.6.2: RO device answers writes IOERR, writes nothing
        done = _transfer(os.pwritev, self._fd, memory, bufs, sector * SECTOR_SIZE)
        self.writes += 1
        self.bytes_written += done
        return S_OK if done == length else S_IOERR

    def _flush(self) -> int:
        self.flushes += 1
        if self.read_only:
            return S_OK               # nothing can be dirty
        try:
            os.fdatasync(self._fd)
        except OSError:
            return S_IOERR
        return S_OK


def _transfer(op: object, fd: int, memory: object, bufs: list[tuple[int, int]], offset: int) -> int:
    """preadv/pwritev between `fd` at `offset` and guest buffers; returns bytes moved.

    Short transfers continue where they stopped; EOF or an OSError ends early.
    """
    views: list[memoryview] = []
    try:
        for gpa, n in bufs:
            if n == 0:
                continue
            region, off = memory.region_for(gpa, n)
            # SAFETY: `region_for` proved [off, off+n) lies inside this region's mapping;
            # the slices are released below before returning, so the mapping can still close.
            with memoryview(region.map) as whole:
                views.append(whole[off:off + n])
            if op is os.preadv:
                region.note_written(off, n)       # the guest's pages, written by us: not in KVM's log
        total = sum(len(v) for v in views)
        done = 0
        pending = views
        while done < total:
            try:
                moved = op(fd, pending, offset + done)
            except OSError:
                break
            if moved <= 0:
                break
            done += moved
            pending = _advance(pending, moved)
        return done
    finally:
        for view in views:
            view.release()


def _advance(views: list[memoryview], moved: int) -> list[memoryview]:
    """Drop the first `moved` bytes from a list of views (after a short preadv/pwritev)."""
    out = []
    for view in views:
        if moved >= len(view):
            moved -= len(view)
            continue
        out.append(view[moved:] if moved else view)
        moved = 0
    return out
