"""memory.snap.zst: guest RAM compressed at rest, one zstd frame per 2 MiB of the memory file.

The file is zstd's seekable format: independent frames (each with its content checksum), then a
seek table (a skippable frame listing each frame's compressed and decompressed size, and a
footer), so `zstd -d` gives back memory.snap, and a restore can decompress any 2 MiB by itself.
Frame i holds bytes [i*FRAME, (i+1)*FRAME) of the memory file: a frame of zeros (a hole, or
pages the guest never wrote) is zero_frame(), a few bytes a restore recognises without
decompressing. FRAME is the memory checksum's chunk (memory_file.DIGEST_CHUNK), so the checksum
of the memory file is computed from the frames as from the file (memory_file.MemoryDigest).

The file is untrusted input: the seek table must describe exactly the recorded memory size, in
frames of FRAME bytes (the last one shorter), whose compressed sizes add up to the file's; a
frame that does not decompress to its size or fails its checksum is refused (CompressedError).
"""

from __future__ import annotations

import os
import struct

from .memory_file import DIGEST_CHUNK as FRAME, MemoryDigest, memory_digest_fd

FILE = "memory.snap.zst"
LEVEL = 1                                # ~500 MB/s a core (the anchor); level 3 gains little on RAM
SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
FOOTER = 9                               # frames (u32), descriptor (u8), magic (u32)
MAX_FRAME_BYTES = FRAME + (64 << 10)     # zstd's bound for FRAME bytes stored raw, with headroom
_zero_frame: bytes | None = None


class CompressedError(RuntimeError):
    """A compressed memory file that is not what the snapshot recorded: the one-line reason."""


def zstd():
    """The zstd binding (PEP 784's compression.zstd, or its backport before Python 3.14): 5 ms to
    import, paid only by what compresses or decompresses, never by the restoring VMM itself."""
    try:
        from compression import zstd as module         # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd as module           # type: ignore[no-redef]
    return module


def _options() -> dict:
    p = zstd().CompressionParameter
    return {p.compression_level: LEVEL, p.checksum_flag: 1}


def zero_frame() -> bytes:
    """FRAME bytes of zeros, compressed: every all-zero frame of every file is these bytes."""
    global _zero_frame
    if _zero_frame is None:
        _zero_frame = zstd().compress(bytes(FRAME), options=_options())
    return _zero_frame


def compress_file(src_fd: int, out_path: str, progress=None) -> tuple[dict, str]:
    """Write the memory file open as `src_fd` to `out_path` in this format (not fsynced: the
    snapshot's commit does that). Holes are never read, the rest is read once. Returns
    ({"codec", "frame", "bytes"}, the memory file's checksum: memory_file.memory_digest's)."""
    from .memory_file import _file_data_runs
    ZstdCompressor = zstd().ZstdCompressor
    size = os.fstat(src_fd).st_size
    zero, compressor, digest = zero_frame(), ZstdCompressor(options=_options()), MemoryDigest()
    data_frames = {off // FRAME for start, length in _file_data_runs(src_fd, 0, size)
                   for off in range(start - start % FRAME, start + length, FRAME)}
    sizes: list[tuple[int, int]] = []
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb", closefd=False, buffering=1 << 20) as out:
            for i in range(-(-size // FRAME)):
                length = min(FRAME, size - i * FRAME)
                data = os.pread(src_fd, length, i * FRAME) if i in data_frames else None
                if data is None or (length == FRAME and data.count(0) == FRAME):
                    frame = zero if length == FRAME else compressor.compress(bytes(length), ZstdCompressor.FLUSH_FRAME)
                else:
                    frame = compressor.compress(data, ZstdCompressor.FLUSH_FRAME)
                    digest.add(i * FRAME, data)
                out.write(frame)
                sizes.append((len(frame), length))
                if progress:
                    progress(length)
            out.write(seek_table(sizes))
    finally:
        os.close(fd)
    return {"codec": "zstd", "frame": FRAME, "bytes": os.stat(out_path).st_size}, digest.hexdigest(size)


def seek_table(sizes: list[tuple[int, int]]) -> bytes:
    """The seekable format's table: a skippable frame of (compressed, decompressed) u32 pairs."""
    entries = b"".join(struct.pack("<II", c, d) for c, d in sizes)
    body = entries + struct.pack("<IBI", len(sizes), 0, SEEKABLE_MAGIC)
    return struct.pack("<II", SKIPPABLE_MAGIC, len(body)) + body


class Frames:
    """An open compressed memory file, its seek table checked against the recorded size."""

    def __init__(self, fd: int, size: int, where: str) -> None:
        self.fd, self.size, self.where = fd, size, where
        file_size = os.fstat(fd).st_size
        count = -(-size // FRAME)
        table = 8 + 8 * count + FOOTER
        if file_size < table:
            raise CompressedError(f"{where}: the compressed memory file is too short for its seek table")
        raw = os.pread(fd, table, file_size - table)
        magic, body, *_ = struct.unpack_from("<II", raw)
        n, descriptor, seekable = struct.unpack_from("<IBI", raw, table - FOOTER)
        if (magic, body, n, seekable) != (SKIPPABLE_MAGIC, table - 8, count, SEEKABLE_MAGIC) or descriptor & 0x7F:
            raise CompressedError(f"{where}: the compressed memory file's seek table does not describe "
                                  f"{size} bytes in frames of {FRAME} (corrupt, or not this VMM's)")
        self.offsets, self.lengths, pos = [], [], 0
        for i in range(count):
            c, d = struct.unpack_from("<II", raw, 8 + 8 * i)
            if d != min(FRAME, size - i * FRAME) or not 0 < c <= MAX_FRAME_BYTES:
                raise CompressedError(f"{where}: frame {i} of the compressed memory file has a bad size")
            self.offsets.append(pos)
            self.lengths.append(c)
            pos += c
        if pos != file_size - table:
            raise CompressedError(f"{where}: the compressed memory file's frames and seek table disagree "
                                  f"with its size (truncated or grown?)")

    def __len__(self) -> int:
        return len(self.offsets)

    def raw(self, i: int) -> bytes:
        return os.pread(self.fd, self.lengths[i], self.offsets[i])

    def is_zero(self, i: int) -> bool:
        zero = zero_frame()
        return self.lengths[i] == len(zero) and self.raw(i) == zero

    def frame(self, i: int) -> bytes:
        """Frame i decompressed (its checksum checked), or CompressedError."""
        z = zstd()
        want = min(FRAME, self.size - i * FRAME)
        decompressor = z.ZstdDecompressor()
        try:                                   # at most want + 1 bytes: a frame cannot balloon
            data = decompressor.decompress(self.raw(i), max_length=want + 1)
        except z.ZstdError as e:
            raise CompressedError(f"{self.where}: frame {i} of the compressed memory does not decompress ({e})") from None
        if len(data) != want or not decompressor.eof:
            raise CompressedError(f"{self.where}: frame {i} of the compressed memory holds {len(data)} bytes, not {want}")
        return data


def digest_fd(fd: int, size: int, where: str, progress=None) -> str:
    """memory_file.memory_digest of the memory file this one holds (frames of zeros skipped)."""
    frames = Frames(fd, size, where)
    digest = MemoryDigest()
    for i in range(len(frames)):
        if not frames.is_zero(i):
            digest.add(i * FRAME, frames.frame(i))
        if progress:
            progress(frames.lengths[i])
    return digest.hexdigest(size)


def checksum(fd: int, layout: dict, where: str, progress=None) -> str:
    """The checksum of a snapshot's memory file, compressed or not, as state.json records it
    (CompressedError for a compressed one that cannot be read)."""
    if is_compressed(layout):
        return digest_fd(fd, int(layout["size"]), where, progress)
    return memory_digest_fd(fd, progress)


def is_compressed(layout: object) -> bool:
    return isinstance(layout, dict) and isinstance(layout.get("compressed"), dict)
