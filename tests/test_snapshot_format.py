"""Snapshot container and memory file: pure logic, no KVM."""

from __future__ import annotations

import json
import mmap
import os

import pytest

from volt_spec.kvm.memory import GuestMemory
from volt_spec.snapshot import format as fmt
from volt_spec.snapshot.crc import CHECK, crc64
from volt_spec.snapshot.memory_file import MemoryFileError, map_memory, memory_digest, write_memory


def test_crc64_ecma182_check_value():
    assert crc64(b"123456789") == 0x6C40DF5F0B497347 == CHECK


def test_crc64_matches_crcmod_public_api():
    import crcmod
    ref = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, rev=False, xorOut=0)
    for data in (b"", b"a", os.urandom(1000), bytes(70000)):
        assert crc64(data) == ref(data)


STATE = {"meta": {"created": 1.5, "vcpus": 1}, "blob": "AAEC", "list": [1, 2, {"x": None}]}


def test_encode_decode_round_trip_and_crc_covers_canonical_state():
    raw = fmt.encode(STATE)
    doc = json.loads(raw)
    assert doc["format"] == "volt-snapshot" and doc["version"] == fmt.VERSION
    assert int(doc["crc64"], 16) == crc64(json.dumps(STATE, sort_keys=True, separators=(",", ":")).encode())
    assert fmt.decode(raw, "x") == STATE
    # whitespace in the file does not matter: the CRC is over the canonical state
    pretty = json.dumps(doc, indent=4).encode()
    assert fmt.decode(pretty, "x") == STATE


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["state"]["meta"].__setitem__("vcpus", 2), "CRC-64 mismatch"),
    (lambda d: d.__setitem__("version", "2.0.0"), "version '2.0.0' is not supported"),
    (lambda d: d.__setitem__("format", "qemu"), "not a volt snapshot"),
    (lambda d: d.__setitem__("extra", 1), "unknown member"),
    (lambda d: d.__setitem__("state", []), "no state object"),
])
def test_decode_refuses(mutate, message):
    doc = json.loads(fmt.encode(STATE))
    mutate(doc)
    with pytest.raises(fmt.SnapshotError, match=message):
        fmt.decode(json.dumps(doc).encode(), "x")


def test_flipped_byte_anywhere_in_the_state_is_caught():
    raw = bytearray(fmt.encode(STATE))
    start = raw.index(b'"state"')
    for i in range(start + 10, len(raw) - 3):
        if chr(raw[i]).isdigit() or chr(raw[i]).isalpha():
            bad = bytearray(raw)
            bad[i] ^= 0x01
            with pytest.raises(fmt.SnapshotError):
                fmt.decode(bytes(bad), "x")


def test_oversize_and_garbage_refused():
    with pytest.raises(fmt.SnapshotError, match="limit"):
        fmt.decode(b" " * (fmt.MAX_STATE_BYTES + 1), "x")
    with pytest.raises(fmt.SnapshotError, match="not valid JSON"):
        fmt.decode(b"\xff{", "x")


def _touch(mem: GuestMemory, gpa: int, data: bytes) -> None:
    mem.write(gpa, data)


def test_memory_file_is_sparse_and_maps_back(tmp_path):
    mem = GuestMemory.anonymous([(0, 8 << 20), (4 << 30, 4 << 20)])
    _touch(mem, 0x1000, b"first")
    _touch(mem, (5 << 20) + 7, b"middle")
    _touch(mem, (4 << 30) + (4 << 20) - 3, b"end")
    path = tmp_path / "memory.snap"
    layout = write_memory(mem, str(path))
    assert layout["size"] == 12 << 20
    assert layout["regions"] == [{"gpa": 0, "size": 8 << 20, "offset": 0},
                                 {"gpa": 4 << 30, "size": 4 << 20, "offset": 8 << 20}]
    assert layout["data_bytes"] == 3 * 4096
    assert os.stat(path).st_blocks * 512 < 1 << 20          # holes cost nothing
    back = map_memory(str(path), layout)
    assert back.read(0x1000, 5) == b"first"
    assert back.read((5 << 20) + 7, 6) == b"middle"
    assert back.read((4 << 30) + (4 << 20) - 3, 3) == b"end"
    assert back.read(0x2000, 16) == bytes(16)
    # MAP_PRIVATE: writes to the restored memory never reach the file
    back.write(0x1000, b"XXXXX")
    assert path.read_bytes()[0x1000:0x1005] == b"first"


def test_memory_file_skips_zero_pages_a_huge_page_made_present(tmp_path):
    """With transparent huge pages (Debian's default: always) one byte makes 2 MiB present;
    the zeros around it still cost nothing in memory.snap."""
    mem = GuestMemory.anonymous([(0, 8 << 20)])
    region = mem.regions[0]
    region.map.madvise(mmap.MADV_HUGEPAGE)
    aligned = -region.host_addr % (2 << 20)          # a 2 MiB-aligned guest address
    _touch(mem, aligned + 0x3000, b"x")
    _touch(mem, aligned + (2 << 20) - 1, b"y")
    _touch(mem, aligned + (2 << 20), b"z")           # the next page: one run of two pages
    layout = write_memory(mem, str(tmp_path / "memory.snap"))
    assert layout["data_bytes"] == 3 * 4096
    back = map_memory(str(tmp_path / "memory.snap"), layout)
    assert back.read(aligned + 0x3000, 1) == b"x" and back.read(aligned + (2 << 20) - 1, 2) == b"yz"
    assert back.read(aligned, 0x3000) == bytes(0x3000)


def test_snapshot_of_a_restored_vm_keeps_pages_it_never_touched(tmp_path):
    mem = GuestMemory.anonymous([(0, 4 << 20)])
    _touch(mem, 0x3000, b"from-the-first-boot")
    first = tmp_path / "a.snap"
    layout = write_memory(mem, str(first))
    restored = map_memory(str(first), layout)
    restored.write(0x200000, b"after-restore")
    second = tmp_path / "b.snap"
    layout2 = write_memory(restored, str(second))
    again = map_memory(str(second), layout2)
    assert again.read(0x3000, 19) == b"from-the-first-boot"
    assert again.read(0x200000, 13) == b"after-restore"


def test_memory_digest_detects_changes_and_ignores_layout(tmp_path):
    mem = GuestMemory.anonymous([(0, 8 << 20)])
    _touch(mem, 0x5000, b"data")
    path = tmp_path / "m.snap"
    write_memory(mem, str(path))
    d1 = memory_digest(str(path))
    with open(path, "r+b") as f:
        f.seek(0x5000)
        f.write(b"dbta")
    assert memory_digest(str(path)) != d1


def test_truncated_or_missing_memory_file_refused(tmp_path):
    mem = GuestMemory.anonymous([(0, 4 << 20)])
    path = tmp_path / "m.snap"
    layout = write_memory(mem, str(path))
    os.truncate(path, 1 << 20)
    with pytest.raises(MemoryFileError, match="truncated"):
        map_memory(str(path), layout)
    with pytest.raises(MemoryFileError, match="missing"):
        map_memory(str(tmp_path / "nope"), layout)


def test_realtime_advance_refuses_a_crafted_capture_time():
    from volt_spec.snapshot.vm_state import elapsed_ns
    with pytest.raises(ValueError, match="saved_at_ns"):
        elapsed_ns({"clock": {"saved_at_ns": -10 ** 30, "flags": 0}}, "realtime")
    assert elapsed_ns({"clock": {"saved_at_ns": 10 ** 40, "flags": 0}}, "realtime") == 0
    assert elapsed_ns({"clock": {"saved_at_ns": -1, "flags": 0}}, "continue") == 0


def test_the_kvmclock_starts_as_late_as_the_restored_tsc_ran():
    """The guest TSC runs from its restore; the kvmclock, set after the irqchip and PIT, must
    carry the time since, or a slow restore leaves the two clocks apart by it."""
    import time
    from volt_spec.kvm import structs as s
    from volt_spec.snapshot.b64 import pack
    from volt_spec.snapshot.vm_state import restore_vm

    class Vm:
        def set_irqchip(self, chip): pass
        def set_pit2(self, pit): pass
        def set_clock(self, clock): self.clock = clock.clock

    state = {name: pack(s.KvmIrqchip()) for name in ("pic_master", "pic_slave", "ioapic")}
    state.update(pit2=pack(s.KvmPitState2()), clock={"clock": 10 ** 9, "flags": 0})
    vm = Vm()
    restore_vm(vm, state, advance_ns=5, tsc_set_at_ns=time.monotonic_ns() - 40_000_000)
    assert 10 ** 9 + 5 + 40_000_000 <= vm.clock < 10 ** 9 + 5 + 10 ** 9
    restore_vm(vm, state, advance_ns=5)
    assert vm.clock == 10 ** 9 + 5
