"""fsutil.copy_file: a clone's disk (or a snapshot's copy of one) keeps the source's holes."""

from __future__ import annotations

import os

from volt_spec.fsutil import REFLINK, SPARSE_COPY, copy_file


def test_a_copy_keeps_the_data_and_the_holes(tmp_path):
    src, dst = tmp_path / "disk.img", tmp_path / "copy.img"
    with open(src, "wb") as f:
        f.truncate(64 << 20)                      # 64 MiB, two 1 MiB extents of data
        for at in (4 << 20, 40 << 20):
            f.seek(at)
            f.write(os.urandom(1 << 20))
    dst.write_bytes(b"old contents, longer than nothing")
    how = copy_file(str(src), str(dst))
    assert how in (REFLINK, SPARSE_COPY)
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_blocks * 512 <= 4 << 20, "the holes were filled"
    assert not (tmp_path / "copy.img.tmp").exists()


def test_an_empty_source_gives_an_empty_file_of_its_size(tmp_path):
    src, dst = tmp_path / "empty.img", tmp_path / "copy.img"
    with open(src, "wb") as f:
        f.truncate(1 << 20)
    copy_file(str(src), str(dst))
    assert dst.stat().st_size == 1 << 20 and dst.stat().st_blocks == 0
