"""virtio-blk requests against a temp file, through the mmio transport and a test driver."""

from __future__ import annotations

import os

import pytest

from volt_spec.devices.virtio import blk as b
from volt_spec.devices.virtio import mmio as m
from volt_spec.devices.virtio.testing import IrqRecorder, MmioDriver

from .device_json import via_snapshot

SECTORS = 64


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(bytes([s]) * 512 for s in range(SECTORS)))
    return path


def setup(memory, image, read_only=False, disk_id="volt-disk-0", **init):
    disk = b.VirtioBlk(str(image), read_only=read_only, disk_id=disk_id)
    dev = m.VirtioMmio(disk, memory, IrqRecorder())
    drv = MmioDriver(dev, memory)
    drv.init(**init)
    return disk, dev, drv


def header(kind, sector=0):
    return kind.to_bytes(4, "little") + bytes(4) + sector.to_bytes(8, "little")


def run(drv, readable, writable, indirect=False):
    q = drv.queues[0]
    sub = q.add(readable, writable, indirect=indirect)
    drv.notify(0)
    used = q.take_used()
    assert [u[0] for u in used] == [sub.head]
    return sub, used[0][1], q.read(sub)


def test_capacity_and_features(memory, image):
    disk, dev, drv = setup(memory, image)
    assert disk.capacity == SECTORS
    assert int.from_bytes(drv.config(0, 8), "little") == SECTORS
    assert int.from_bytes(drv.config(12, 4), "little") == b.SEG_MAX
    assert dev.device_features & b.F_FLUSH and not dev.device_features & b.F_RO


def test_read_sectors(memory, image):
    disk, _, drv = setup(memory, image)
    _, used_len, (data, status) = run(drv, [header(b.Req.IN, 3)], [1024, 1])
    assert status == bytes([b.S_OK]) and used_len == 1025
    assert data == bytes([3]) * 512 + bytes([4]) * 512
    assert (disk.reads, disk.bytes_read) == (1, 1024)


def test_read_scattered_over_descriptors_and_indirect(memory, image):
    _, _, drv = setup(memory, image)
    _, _, out = run(drv, [header(b.Req.IN, 10)[:5], header(b.Req.IN, 10)[5:]], [100, 412, 512, 1],
                    indirect=True)
    assert b"".join(out[:-1]) == bytes([10]) * 512 + bytes([11]) * 512
    assert out[-1] == bytes([b.S_OK])


def test_write_then_read_back(memory, image):
    disk, _, drv = setup(memory, image)
    payload = os.urandom(1024)
    _, used_len, (status,) = run(drv, [header(b.Req.OUT, 5), payload[:300], payload[300:]], [1])
    assert status == bytes([b.S_OK]) and used_len == 1
    with open(image, "rb") as f:
        f.seek(5 * 512)
        assert f.read(1024) == payload
    assert (disk.writes, disk.bytes_written) == (1, 1024)


def test_flush_and_get_id(memory, image):
    disk, _, drv = setup(memory, image)
    _, _, (status,) = run(drv, [header(b.Req.FLUSH)], [1])
    assert status == bytes([b.S_OK]) and disk.flushes == 1
    _, used_len, (ident, status) = run(drv, [header(b.Req.GET_ID)], [20, 1])
    assert ident == b"volt-disk-0".ljust(20, b"\0") and status == bytes([b.S_OK])
    assert used_len == 21


def test_unknown_type_is_unsupported(memory, image):
    disk, _, drv = setup(memory, image)
    _, _, (status,) = run(drv, [header(0x99)], [1])
    assert status == bytes([b.S_UNSUPP]) and disk.errors == 1


def test_read_only_refuses_writes(memory, image):
    before = image.read_bytes()
    disk, dev, drv = setup(memory, image, read_only=True)
    assert dev.device_features & b.F_RO
    _, _, (status,) = run(drv, [header(b.Req.OUT, 0), b"\xff" * 512], [1])
    assert status == bytes([b.S_IOERR])
    assert image.read_bytes() == before
    _, _, (data, status) = run(drv, [header(b.Req.IN, 1)], [512, 1])
    assert status == bytes([b.S_OK]) and data == bytes([1]) * 512


@pytest.mark.parametrize("sector,length", [(SECTORS, 512), (SECTORS - 1, 1024), (2**64 - 1, 512),
                                           (0, 100)])
def test_out_of_range_or_partial_sectors_fail(memory, image, sector, length):
    disk, _, drv = setup(memory, image)
    _, _, (_, status) = run(drv, [header(b.Req.IN, sector)], [length, 1])
    assert status == bytes([b.S_IOERR])
    _, _, (status,) = run(drv, [header(b.Req.OUT, sector), bytes(length)], [1])
    assert status == bytes([b.S_IOERR])
    assert disk.bytes_written == 0


def test_last_sector_is_in_range(memory, image):
    _, _, drv = setup(memory, image)
    _, _, (data, status) = run(drv, [header(b.Req.IN, SECTORS - 1)], [512, 1])
    assert status == bytes([b.S_OK]) and data == bytes([SECTORS - 1]) * 512


def test_short_header_fails_request(memory, image):
    disk, dev, drv = setup(memory, image)
    _, used_len, (status,) = run(drv, [header(b.Req.IN)[:12]], [1])
    assert status == bytes([b.S_IOERR]) and used_len == 1
    assert not drv.read(m.Reg.STATUS) & m.STATUS_NEEDS_RESET


def test_missing_status_byte_drops_request(memory, image):
    disk, dev, drv = setup(memory, image)
    _, used_len, _ = run(drv, [header(b.Req.FLUSH)], [])
    assert used_len == 0 and disk.errors == 1 and disk.flushes == 0


def test_status_is_last_writable_byte(memory, image):
    _, _, drv = setup(memory, image)
    _, _, (a, b_) = run(drv, [header(b.Req.GET_ID)], [10, 11])
    assert a == b"volt-disk-"
    assert b_[:10] == b"0" + bytes(9) and b_[10:] == bytes([b.S_OK])


def test_image_size_must_be_sector_multiple(tmp_path):
    path = tmp_path / "odd.img"
    path.write_bytes(bytes(1000))
    with pytest.raises(ValueError, match="multiple of 512"):
        b.VirtioBlk(str(path))


def test_disk_id_longer_than_20_bytes_refused(image):
    with pytest.raises(ValueError, match="20"):
        b.VirtioBlk(str(image), disk_id="x" * 21)


def test_counters_survive_save_restore(memory, image):
    disk, _, drv = setup(memory, image)
    run(drv, [header(b.Req.IN, 1)], [512, 1])
    run(drv, [header(0x99)], [1])
    state = via_snapshot(disk.save())
    assert state == disk.save() and (state.reads, state.bytes_read, state.errors) == (1, 512, 1)
    twin = b.VirtioBlk(str(image))
    try:
        twin.restore(state)
        assert twin.save() == state
        with pytest.raises(ValueError, match="counters"):
            twin.restore(state.replace(errors=-1))
        with pytest.raises(ValueError, match="counters"):
            twin.restore(state.replace(reads=True))
    finally:
        twin.close()
        disk.close()
