"""memory.snap: guest RAM as one sparse file, and mapping it back MAP_PRIVATE.

Layout: the RAM regions one after another (region i at the sum of the sizes before
it); state.json records each region's guest-physical address, size and file offset
(RAM beyond 3 GiB lives above 4 GiB, so offsets and addresses differ). Only pages
the guest ever touched (found through /proc/self/pagemap) and that are not all zeros
are written; the rest stay holes and read back as zeros. On restore the file is mapped MAP_PRIVATE: pages
load on demand and guest writes never reach the file, so clones can share it.
"""

from __future__ import annotations

import mmap
import os

from ..kvm.memory import GuestMemory, MemoryRegion, MAP_NORESERVE

PAGE = 4096
CHUNK_PAGES = 512                  # pagemap is scanned 2 MiB of guest RAM at a time
PM_PRESENT = 1 << 63
PM_SWAPPED = 1 << 62
DIGEST_CHUNK = 2 << 20
_ZERO_ENTRIES = bytes(8 * CHUNK_PAGES)
HUGE = 2 << 20
_ZERO_PAGE = bytes(PAGE)
_ZERO_HUGE = bytes(HUGE)


class MemoryFileError(RuntimeError):
    pass


def _touched_runs(host_addr: int, size: int, pagemap_fd: int):
    """(offset, length) runs of pages that are present or swapped, in bytes from host_addr."""
    npages = size // PAGE
    first = host_addr // PAGE
    run_start = None
    for chunk in range(0, npages, CHUNK_PAGES):
        n = min(CHUNK_PAGES, npages - chunk)
        raw = os.pread(pagemap_fd, 8 * n, (first + chunk) * 8)
        if raw == _ZERO_ENTRIES[:8 * n]:
            if run_start is not None:
                yield run_start * PAGE, (chunk - run_start) * PAGE
                run_start = None
            continue
        entries = memoryview(raw).cast("Q")
        for i in range(n):
            if entries[i] & (PM_PRESENT | PM_SWAPPED):
                if run_start is None:
                    run_start = chunk + i
            elif run_start is not None:
                yield run_start * PAGE, (chunk + i - run_start) * PAGE
                run_start = None
    if run_start is not None:
        yield run_start * PAGE, (npages - run_start) * PAGE


def _file_data_runs(fd: int, offset: int, size: int):
    """(offset, length) runs, relative to `offset`, where the file holds data (not holes)."""
    pos, end = offset, offset + size
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        if start >= end:
            return
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        yield start - offset, stop - start
        pos = stop


def _merge(runs) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for off, length in sorted(runs):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + length - out[-1][0])
        else:
            out.append([off, length])
    return [(a, b) for a, b in out]


def _runs_to_write(region: MemoryRegion, pagemap_fd: int):
    """Touched pages, plus (for a region restored from a snapshot) the pages its files still back:
    those read as data but are not present until the guest touches them (a diff's extents count
    whole: a zero page there is a hole in that file but hides its parent's data)."""
    runs = _touched_runs(region.host_addr, region.size, pagemap_fd)
    if region.backing is None:
        return runs
    fd, offset = region.backing
    return _merge(list(runs) + list(_file_data_runs(fd, offset, region.size)) + region.overlays)


def _nonzero(mapping: mmap.mmap, runs):
    """The parts of `runs` that are not all zeros, coalesced. A present page can be zeros the
    guest never wrote: with transparent huge pages (Debian's default is `always`) one touched
    byte makes 2 MiB present. Each 2 MiB block is compared whole first, then page by page."""
    start = end = None
    for run_off, run_len in runs:
        pos, stop = run_off, run_off + run_len
        while pos < stop:
            block = min(stop, (pos // HUGE + 1) * HUGE) - pos
            if mapping[pos:pos + block] == _ZERO_HUGE[:block]:
                pos += block
                continue
            for page in range(pos, pos + block, PAGE):
                if mapping[page:page + PAGE] == _ZERO_PAGE:
                    continue
                if end == page:
                    end += PAGE
                    continue
                if start is not None:
                    yield start, end - start
                start, end = page, page + PAGE
            pos += block
    if start is not None:
        yield start, end - start


def write_memory(memory: GuestMemory, path: str) -> dict:
    """Write guest RAM sparsely to `path` (not fsynced: the caller does that after resuming)."""
    total = memory.size
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    regions, offset, written = [], 0, 0
    try:
        os.ftruncate(fd, total)
        pm = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for r in memory.regions:
                written += _write_runs(fd, r, _nonzero(r.map, _runs_to_write(r, pm)), offset)
                regions.append({"gpa": r.gpa, "size": r.size, "offset": offset})
                offset += r.size
        finally:
            os.close(pm)
    finally:
        os.close(fd)
    return {"file": os.path.basename(path), "size": total, "regions": regions, "data_bytes": written}


def _write_runs(fd: int, region: MemoryRegion, runs, file_offset: int) -> int:
    written = 0
    with memoryview(region.map) as view:
        for run_off, run_len in runs:
            done = 0
            while done < run_len:
                done += os.pwrite(fd, view[run_off + done:run_off + run_len], file_offset + run_off + done)
            written += run_len
    return written


class ForkedWrite:
    """memory.snap written by a forked child from its copy-on-write view of guest RAM.

    The guest need only be paused for the fork itself: the child sees memory exactly as
    it was at that instant while the parent resumes the vCPUs (each page the guest then
    writes is copied once by the kernel). The child uses only raw system calls and
    leaves with os._exit; its result comes back through a pipe as JSON.
    """

    def __init__(self, memory: GuestMemory, path: str) -> None:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:                                         # child
            code = 0
            try:
                os.close(rfd)
                import json
                result = json.dumps(write_memory(memory, path)).encode()
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                result, code = f"ERROR {type(e).__name__}: {e}".encode(), 1
            try:
                os.write(wfd, result)
            finally:
                os._exit(code)
        os.close(wfd)
        self.pid, self.rfd = pid, rfd

    def wait(self) -> dict:
        chunks = []
        while True:
            data = os.read(self.rfd, 65536)
            if not data:
                break
            chunks.append(data)
        os.close(self.rfd)
        _, status = os.waitpid(self.pid, 0)
        raw = b"".join(chunks)
        if os.waitstatus_to_exitcode(status) != 0 or raw.startswith(b"ERROR"):
            message = raw.decode(errors="replace").removeprefix("ERROR ") or f"writer exited with {status}"
            raise MemoryFileError(f"writing guest memory failed: {message}")
        import json
        return json.loads(raw)


class CopiedWrite:
    """A diff's pages copied out of guest RAM, written to the file after the guest resumes.

    Pre-copied: the pages KVM logged so far are copied while the guest still runs (`__init__`),
    their log re-protected first; in the pause `add()` copies the pages written since (and those
    the devices wrote), over the first copies. A page copied early and not written again is
    exact: any write after its log was read is in the second set. Copying the few MiB that
    changed costs less pause than forking (a fork copies the page tables of all guest RAM the
    process maps, ~7 ms per GiB touched here). The first copy's buffer is kept for the next diff,
    so its pages are already faulted in."""

    _staging: mmap.mmap | None = None

    def __init__(self, memory: GuestMemory, path: str, dirty: list) -> None:
        self.memory, self.path = memory, path
        self.runs = [list(r) for r in dirty]
        total = sum(length for runs in dirty for _, length in runs)
        if CopiedWrite._staging is None or len(CopiedWrite._staging) < total:
            CopiedWrite._staging = _anonymous(total)
        self.phases = [self._copy(dirty, CopiedWrite._staging, skip_zeros=True)]

    def add(self, dirty: list) -> None:
        """Copy the pages written since __init__ (the guest paused): they are written last."""
        total = sum(length for runs in dirty for _, length in runs)
        self.phases.append(self._copy(dirty, _anonymous(total), skip_zeros=False))
        self.runs = [_merge(a + b) for a, b in zip(self.runs, dirty)]

    def _copy(self, dirty: list, buf: mmap.mmap, skip_zeros: bool) -> tuple:
        import ctypes
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        pieces, pos, file_offset = [], 0, 0
        for region, runs in zip(self.memory.regions, dirty):
            for off, length in runs:
                ctypes.memmove(base + pos, region.host_addr + off, length)
                pieces.append((file_offset + off, pos, length))
                pos += length
            file_offset += region.size
        return buf, pieces, skip_zeros

    def wait(self) -> dict:
        """Write the copies at their file offsets, the first one's zero pages left as holes (the
        second's written whole: a page may have become zeros since); the description."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        written = 0
        try:
            os.ftruncate(fd, self.memory.size)
            for buf, pieces, skip_zeros in self.phases:
                with memoryview(buf) as view:
                    for file_off, pos, length in pieces:
                        chunks = _nonzero(buf, [(pos, length)]) if skip_zeros else [(pos, length)]
                        for chunk_pos, chunk_len in chunks:
                            target, done = file_off + chunk_pos - pos, 0
                            while done < chunk_len:
                                done += os.pwrite(fd, view[chunk_pos + done:chunk_pos + chunk_len], target + done)
                            written += chunk_len
        finally:
            os.close(fd)
        regions, extents, offset = [], [], 0
        for r, runs in zip(self.memory.regions, self.runs):
            regions.append({"gpa": r.gpa, "size": r.size, "offset": offset})
            extents += [[offset + off, length] for off, length in runs]
            offset += r.size
        return {"file": os.path.basename(self.path), "size": self.memory.size, "regions": regions,
                "data_bytes": written, "extents": extents}


def _anonymous(size: int) -> mmap.mmap:
    return mmap.mmap(-1, max(HUGE, -(-size // HUGE) * HUGE), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)


def memory_digest(path: str, progress=None) -> str:
    """sha256 over the file's non-zero 2 MiB chunks and their indexes (holes are skipped unread).

    `progress(bytes)` is called as the file is covered (for a progress bar)."""
    from ..fsutil import open_regular
    fd = open_regular(path)
    try:
        return memory_digest_fd(fd, progress)
    finally:
        os.close(fd)


class MemoryDigest:
    """memory_digest's running sha256: each DIGEST_CHUNK-aligned block that is not all zeros, after
    its offset, then the file's size. Fed by whatever reads the blocks (this file, or the frames of
    a compressed one: compressed.py), so every reader computes the one checksum state.json records."""

    def __init__(self) -> None:
        import hashlib
        self.h = hashlib.sha256()

    def add(self, offset: int, block: bytes) -> None:
        if block != _ZERO_CHUNK[:len(block)]:
            self.h.update(offset.to_bytes(8, "little"))
            self.h.update(block)

    def hexdigest(self, size: int) -> str:
        self.h.update(size.to_bytes(8, "little"))
        return self.h.hexdigest()


_ZERO_CHUNK = bytes(DIGEST_CHUNK)


def memory_digest_fd(fd: int, progress=None) -> str:
    """memory_digest of an open file (the one a restore mapped, not whatever its path names now)."""
    digest = MemoryDigest()
    size = os.fstat(fd).st_size
    pos = 0
    while pos < size:
        try:
            data_start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break                                     # ENXIO: only a hole remains
        hole = os.lseek(fd, data_start, os.SEEK_HOLE)
        if progress:
            progress(data_start - pos)
        chunk = data_start - data_start % DIGEST_CHUNK
        while chunk < hole:
            digest.add(chunk, os.pread(fd, DIGEST_CHUNK, chunk))
            chunk += DIGEST_CHUNK
            if progress:
                progress(DIGEST_CHUNK)
        pos = max(hole, chunk)
    return digest.hexdigest(size)


def open_memory_file(path: str) -> int:
    """A snapshot's memory file, opened read-only: a regular file (MemoryFileError otherwise)."""
    from ..fsutil import NotRegularFile, open_regular
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise MemoryFileError(f"memory file {path} is missing") from None
    except NotRegularFile as e:
        raise MemoryFileError(f"memory file {path} {e.strerror}") from None


def map_memory(path: str, layout: dict) -> GuestMemory:
    """Map each recorded region of memory.snap MAP_PRIVATE: copy-on-write, loaded on demand.

    The file must be regular (not a FIFO, device or symlink) and exactly the recorded size: a
    region past its end would fault the guest, a longer file is not the one written."""
    fd = open_memory_file(path)
    try:                      # the fd stays open: a later snapshot reads the file's extents
        size = os.fstat(fd).st_size
        if size != int(layout["size"]):
            raise MemoryFileError(f"memory file {path} holds {size} bytes; the snapshot recorded "
                                  f"{layout['size']} ({'truncated' if size < int(layout['size']) else 'grown'}?)")
        regions = []
        for r in layout["regions"]:
            m = mmap.mmap(fd, int(r["size"]), flags=mmap.MAP_PRIVATE | MAP_NORESERVE,
                          prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=int(r["offset"]))
            regions.append(MemoryRegion(int(r["gpa"]), int(r["size"]), m, (fd, int(r["offset"]))))
        return GuestMemory(regions)
    except BaseException:
        os.close(fd)
        raise
