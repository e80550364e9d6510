"""memory.snap.zst (snapshot/compressed.py) and filling guest RAM from it (snapshot/lazy_memory.py):
the format is zstd's seekable one (the zstd CLI reads it back), its checksum is memory.snap's,
a hostile file is refused, and RAM filled on demand through a real userfaultfd reads as the file."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from volt_spec.kvm.userfault import Userfault
from volt_spec.snapshot import compressed, lazy_memory
from volt_spec.snapshot.compressed import FRAME, CompressedError, Frames
from volt_spec.snapshot.memory_file import memory_digest_fd

SIZE = 9 * FRAME + 3 * 4096                  # a last frame shorter than the rest


@pytest.fixture
def memory_file(tmp_path):
    """A sparse memory file: text in frame 1, random bytes across frames 4 and 5, a page at the end."""
    path = tmp_path / "memory.snap"
    with open(path, "wb") as f:
        f.truncate(SIZE)
        f.seek(FRAME + 4096)
        f.write(b"the quick brown fox " * 5000)
        f.seek(5 * FRAME - 8192)
        f.write(os.urandom(16384))
        f.seek(SIZE - 4096)
        f.write(b"\x7f" * 4096)
    return path


def compress(path) -> str:
    out = str(path) + ".zst"
    fd = os.open(path, os.O_RDONLY)
    try:
        info, sha256 = compressed.compress_file(fd, out)
        assert sha256 == memory_digest_fd(fd)                # taken in the read that compresses
    finally:
        os.close(fd)
    assert info == {"codec": "zstd", "frame": FRAME, "bytes": os.path.getsize(out)}
    return out


def test_the_zstd_cli_reads_it_back_and_its_checksum_is_the_memory_files(memory_file, tmp_path):
    out = compress(memory_file)
    assert os.path.getsize(out) < 200 << 10                   # zeros and text cost next to nothing
    fd, zfd = os.open(memory_file, os.O_RDONLY), os.open(out, os.O_RDONLY)
    try:
        assert compressed.digest_fd(zfd, SIZE, "x") == memory_digest_fd(fd)
        frames = Frames(zfd, SIZE, "x")
        assert len(frames) == 10 and [frames.is_zero(i) for i in (0, 1, 2)] == [True, False, True]
        assert frames.frame(9) == memory_file.read_bytes()[9 * FRAME:]
    finally:
        os.close(fd)
        os.close(zfd)
    if shutil.which("zstd"):
        back = tmp_path / "back"
        subprocess.run(["zstd", "-q", "-d", out, "-o", str(back)], check=True)
        assert back.read_bytes() == memory_file.read_bytes()


def damaged(out: str, change) -> int:
    data = bytearray(open(out, "rb").read())
    change(data)
    with open(out, "wb") as f:
        f.write(data)
    return os.open(out, os.O_RDONLY)


def _bomb(data: bytearray) -> None:
    """Frame 0 replaced by one that inflates to 64 MiB, the seek table adjusted to match."""
    from volt_spec.snapshot.compressed import zstd
    n = struct.unpack_from("<I", data, len(data) - 9)[0]
    table = len(data) - (8 + 8 * n + 9)
    sizes = [struct.unpack_from("<II", data, table + 8 + 8 * i) for i in range(n)]
    bomb = zstd().compress(bytes(64 << 20))
    frames = bytes(data[sizes[0][0]:table])
    data[:] = bomb + frames + compressed.seek_table([(len(bomb), FRAME)] + sizes[1:])


@pytest.mark.parametrize("change, reason", [
    (lambda d: d.__delitem__(slice(-1, None)), "seek table"),
    (lambda d: d.__setitem__(slice(-4, None), b"\0\0\0\0"), "seek table"),
    (lambda d: d.__delitem__(slice(100, 200)), "disagree"),
    (lambda d: d.__setitem__(slice(0, 0), b"\0" * 64), "disagree"),
])
def test_a_damaged_seek_table_is_refused(memory_file, change, reason):
    fd = damaged(compress(memory_file), change)
    try:
        with pytest.raises(CompressedError, match=reason):
            Frames(fd, SIZE, "x")
    finally:
        os.close(fd)


def test_a_frame_that_inflates_past_its_size_is_refused_without_inflating(memory_file):
    fd = damaged(compress(memory_file), _bomb)
    try:
        with pytest.raises(CompressedError, match="frame 0 .* holds 2097153 bytes"):
            Frames(fd, SIZE, "x").frame(0)
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", ["on-demand", "ahead"])
def test_ram_filled_from_it_reads_as_the_memory_file(memory_file, mode, monkeypatch):
    if mode == "ahead":
        monkeypatch.setenv(lazy_memory.MODE_ENV, "ahead")
    else:
        uffd, why = Userfault.open()
        if uffd is None:
            pytest.skip(f"no userfaultfd here ({why})")
        uffd.close()
    out = compress(memory_file)
    layout = {"size": SIZE, "regions": [{"gpa": 0, "size": 4 * FRAME, "offset": 0},
                                        {"gpa": 1 << 32, "size": SIZE - 4 * FRAME, "offset": 4 * FRAME}]}
    memory, how = lazy_memory.load(os.open(out, os.O_RDONLY), layout, "x")
    try:
        assert how.startswith(mode)
        want = memory_file.read_bytes()
        for offset in (SIZE - 4096, FRAME + 4096, 0, 5 * FRAME - 8192, 3 * FRAME):   # faults, out of order
            gpa = offset if offset < 4 * FRAME else (1 << 32) + offset - 4 * FRAME
            assert memory.read(gpa, 4096) == want[offset:offset + 4096], hex(offset)
        memory.wait_filled()
        got = memory.read(0, 4 * FRAME) + memory.read(1 << 32, SIZE - 4 * FRAME)
        assert got == want
    finally:
        memory.close()


def test_a_page_of_zeros_touched_after_every_data_frame_is_in_is_still_served(memory_file, monkeypatch):
    """Every frame holding data is in and the VMM's watch thread has not unregistered the RAM yet
    (it needs the GIL, which a VMM thread faulting through an mmap slice holds): a fault on a frame
    of zeros then must still be served. The server used to exit once the data was in, and such a
    fault hung the VMM (seen once in CI)."""
    import threading
    uffd, why = Userfault.open()
    if uffd is None:
        pytest.skip(f"no userfaultfd here ({why})")
    uffd.close()
    reported, gate = threading.Event(), threading.Event()
    finish = lazy_memory.MemoryServer._finish

    def held_back(self, message):
        reported.set()
        gate.wait()
        finish(self, message)
    monkeypatch.setattr(lazy_memory.MemoryServer, "_finish", held_back)
    layout = {"size": SIZE, "regions": [{"gpa": 0, "size": SIZE, "offset": 0}]}
    memory, _ = lazy_memory.load(os.open(compress(memory_file), os.O_RDONLY), layout, "x")
    try:
        assert reported.wait(30)                              # the server said every data frame is in
        assert memory.read(0, 4096) == bytes(4096)           # frame 0: zeros, never prefetched
        assert memory.read(2 * FRAME + 8192, 8) == bytes(8)
        gate.set()
        memory.wait_filled()
        assert memory.read(7 * FRAME, 8) == bytes(8)          # unregistered: a plain zero page
    finally:
        gate.set()
        memory.close()
