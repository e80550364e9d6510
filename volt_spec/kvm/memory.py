"""Guest RAM: private anonymous (or file-backed) mappings with bounds-checked access.

Every guest-physical read and write goes through `GuestMemory`, which refuses
any range that is not wholly inside one RAM region: guest-supplied addresses
never reach host memory outside the guest's.
"""

from __future__ import annotations

import ctypes
import mmap
import os

MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
MAP_FIXED = 0x10
_MAP_FAILED = ctypes.c_void_p(-1).value
_libc_mmap = None


def _mmap_fn():
    """libc's mmap(2) with its argument types: Python's mmap module cannot map at a given address."""
    global _libc_mmap
    if _libc_mmap is None:
        fn = ctypes.CDLL(None, use_errno=True).mmap
        fn.restype = ctypes.c_void_p
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        _libc_mmap = fn
    return _libc_mmap


class GuestMemoryError(ValueError):
    """A guest-physical range outside guest RAM."""


class MemoryRegion:
    """One contiguous guest-physical range backed by one host mapping."""

    __slots__ = ("gpa", "size", "map", "host_addr", "_anchor", "backing", "overlays", "written")

    def __init__(self, gpa: int, size: int, mapping: mmap.mmap,
                 backing: tuple[int, int] | None = None) -> None:
        self.gpa, self.size, self.map = gpa, size, mapping
        self.backing = backing          # (file fd, offset) when mapped MAP_PRIVATE from a snapshot
        self.overlays: list[tuple[int, int]] = []   # (offset, length) mapped from a diff over it
        self.written: bytearray | None = None       # one byte per page our devices wrote (dirty.py)
        # SAFETY: the anchor keeps an export on the mapping, so it cannot be closed or
        # resized while KVM holds `host_addr` in a memory slot.
        self._anchor = ctypes.c_char.from_buffer(mapping)
        self.host_addr = ctypes.addressof(self._anchor)

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def map_file_over(self, fd: int, offset: int) -> None:
        """Replace this region's pages with `fd` from `offset`, MAP_FIXED|MAP_PRIVATE at the same host
        address: a memory slot registered on it stays valid (KVM drops its old translations through
        the MMU notifier and faults the file's pages in on use), so no slot ioctl is needed. The
        region then reads as the file, copy-on-write, and `backing` records it."""
        flags = mmap.MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE
        addr = _mmap_fn()(self.host_addr, self.size, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, offset)
        if addr is None or addr == _MAP_FAILED or addr != self.host_addr:
            err = ctypes.get_errno()
            raise OSError(err, f"mapping the memory file over guest RAM at {self.gpa:#x}: {os.strerror(err)}")
        self.backing = (fd, offset)

    def map_extent_over(self, fd: int, file_offset: int, offset: int, length: int) -> None:
        """Map `length` bytes of `fd` from `file_offset` over this region at `offset`, MAP_FIXED|
        MAP_PRIVATE (a diff snapshot's pages over its parent's). The caller checked that the
        extent is page-aligned and inside the region; it is recorded in `overlays`."""
        if offset < 0 or length <= 0 or offset + length > self.size or (offset | length | file_offset) % mmap.PAGESIZE:
            raise ValueError(f"extent {offset:#x}+{length:#x} is not page-aligned inside a {self.size:#x}-byte region")
        flags = mmap.MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE
        addr = _mmap_fn()(self.host_addr + offset, length, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, file_offset)
        if addr is None or addr == _MAP_FAILED or addr != self.host_addr + offset:
            err = ctypes.get_errno()
            raise OSError(err, f"mapping a diff extent over guest RAM at {self.gpa + offset:#x}: {os.strerror(err)}")
        self.overlays.append((offset, length))

    def note_written(self, offset: int, length: int) -> None:
        """Record that a device wrote [offset, offset+length) of this region (KVM's dirty log sees
        only the guest's own writes); nothing while no one tracks."""
        if self.written is not None and length > 0:
            first, last = offset >> 12, (offset + length - 1) >> 12
            self.written[first:last + 1] = b"\x01" * (last - first + 1)


class GuestMemory:
    """The guest's RAM regions, sorted by guest-physical address."""

    def __init__(self, regions: list[MemoryRegion]) -> None:
        self.regions = sorted(regions, key=lambda r: r.gpa)
        self.extra_fds: list[int] = []       # a diff chain's memory files (closed with the memory)
        self.filling = None                  # what still fills it (a compressed snapshot's memory server)
        self.filling_method: str | None = None     # how a compressed snapshot's memory is filled

    @classmethod
    def anonymous(cls, ranges: list[tuple[int, int]]) -> "GuestMemory":
        """Fresh zeroed RAM: MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, touched only on use."""
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
        return cls([MemoryRegion(gpa, size, mmap.mmap(-1, size, flags=flags))
                    for gpa, size in ranges])

    @property
    def size(self) -> int:
        return sum(r.size for r in self.regions)

    def region_for(self, gpa: int, length: int) -> tuple[MemoryRegion, int]:
        """The region holding [gpa, gpa+length) and the offset of gpa in it."""
        if length < 0 or gpa < 0:
            raise GuestMemoryError(f"bad guest range {gpa:#x}+{length:#x}")
        for r in self.regions:
            if r.gpa <= gpa and gpa + length <= r.end:
                return r, gpa - r.gpa
        raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside guest RAM")

    def read(self, gpa: int, length: int) -> bytes:
        region, off = self.region_for(gpa, length)
        return region.map[off:off + length]

    def write(self, gpa: int, data: bytes) -> None:
        region, off = self.region_for(gpa, len(data))
        region.map[off:off + len(data)] = data
        region.note_written(off, len(data))

    def wait_filled(self) -> None:
        """Until all of a restored snapshot's memory is in the mappings (at once for most)."""
        if self.filling is not None:
            self.filling.wait()

    def close(self) -> None:
        if self.filling is not None:
            self.filling.close()
        closed_fds = set()
        for r in self.regions:
            del r._anchor
            r.map.close()
            if r.backing is not None and r.backing[0] not in closed_fds:
                closed_fds.add(r.backing[0])
                os.close(r.backing[0])
        for fd in self.extra_fds:
            os.close(fd)
        self.extra_fds.clear()
