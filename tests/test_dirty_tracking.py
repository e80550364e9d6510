"""The dirty record a diff snapshot writes: KVM's dirty log cannot see what our devices write into
guest memory from the host, so the tracker keeps their writes too; without that record a diff
would miss every page a virtio-blk read or a used ring update changed."""

from __future__ import annotations

import os

import pytest

from volt_spec.devices.virtio.blk import _transfer
from volt_spec.devices.virtio.queue import store_u16
from volt_spec.kvm.system import Kvm
from volt_spec.vmm.config import MachineConfig
from volt_spec.vmm.dirty import _runs
from volt_spec.vmm.machine import Machine

from .kvm_required import require_kvm

MiB = 1 << 20


@pytest.fixture
def machine():
    require_kvm()
    m = Machine(Kvm(), MachineConfig(vcpus=1, memory_mib=64, track_dirty_pages=True))
    m.wait_memory()
    yield m
    m.close()


def test_device_writes_are_in_the_next_collect_and_only_there(machine, tmp_path):
    assert machine.dirty.method in ("kvm-dirty-log+clear", "kvm-dirty-log")
    assert machine.dirty.collect() == [[]]                          # nothing written since the slots were made
    machine.memory.write(5 * MiB + 100, b"x" * 5000)               # spans two pages: 5 MiB + 0..4 KiB + 8 KiB
    store_u16(machine.memory, 9 * MiB + 2, 7)                       # a used ring index
    disk = tmp_path / "disk"
    disk.write_bytes(os.urandom(3 * 4096))
    fd = os.open(disk, os.O_RDWR)
    try:
        assert _transfer(os.preadv, fd, machine.memory, [(12 * MiB, 3 * 4096)], 0) == 3 * 4096   # a blk read
        assert _transfer(os.pwritev, fd, machine.memory, [(20 * MiB, 4096)], 0) == 4096   # a blk write only reads RAM
    finally:
        os.close(fd)
    assert machine.dirty.collect() == [[(5 * MiB, 8192), (9 * MiB, 4096), (12 * MiB, 3 * 4096)]]
    assert machine.dirty.collect() == [[]]                          # each collect starts afresh


def test_runs_merge_kvm_bits_with_device_pages():
    import ctypes
    bitmap = (ctypes.c_uint64 * 2)(0b1011, (1 << 64) - 1)
    written = bytearray(128)
    written[3] = written[4] = written[127] = 1
    assert _runs(bitmap, written, 128) == [(0, 2 * 4096), (3 * 4096, 2 * 4096), (64 * 4096, 64 * 4096)]
    assert _runs((ctypes.c_uint64 * 1)(), bytearray(10), 10) == []


def test_the_dirty_workload_leaves_protocols_words_and_reports_a_lost_page(tmp_path):
    """A snapshot's dirty region holds generation g's words up to where the pass stood and g - 1's
    after it (protocol.dirty_word); a page put back to an older generation, as a diff that lost
    it would, is reported by the guest's next pass as dirty-CORRUPT at its address."""
    from volt_spec.guest import protocol
    from volt_spec.guest.build import build_guest
    from volt_spec.snapshot.fingerprint import FINGERPRINT_FILE
    from volt_spec.snapshot.format import encode, read_state
    from volt_spec.snapshot.memory_file import memory_digest
    from .test_snapshot_restore import take_snapshot
    from .vmm_process import VmmProcess
    require_kvm()
    facts = take_snapshot(tmp_path, str(build_guest()), cmdline="volt.ticks=0 volt.tick_ms=50 volt.mem=8 volt.dirty=2")
    gen = max(int(m.group(1)) for line in facts["lines"] if (m := protocol.DIRTY_OK_RE.match(line)))
    base, words = protocol.MEM_REGION_BASE + 8 * MiB, 2 * MiB // 8
    mem_path = tmp_path / "snap" / "memory.snap"
    data = memoryview(mem_path.read_bytes())[base:base + 2 * MiB].cast("Q")
    newer = [data[i] == protocol.dirty_word(base + 8 * i, gen + 1) for i in range(words)]
    split = newer.index(False) if False in newer else words     # the pass in progress stopped here
    assert all(newer[:split]) and all(data[i] == protocol.dirty_word(base + 8 * i, gen) for i in range(split, words))

    victim = base + (split // 2 if split > 1024 else words - 512) * 8 // 4096 * 4096     # a page of one generation
    with open(mem_path, "r+b") as f:                          # that page, one generation older
        f.seek(victim)
        old = gen if victim < base + split * 8 else gen - 1      # gen + 1 before the split, gen after it
        f.write(b"".join(protocol.dirty_word(victim + 8 * i, old).to_bytes(8, "little") for i in range(512)))
    state = read_state(str(tmp_path / "snap"))
    state["memory"]["sha256"] = memory_digest(str(mem_path))
    (tmp_path / "snap" / "state.json").write_bytes(encode(state))
    (tmp_path / "snap" / FINGERPRINT_FILE).unlink(missing_ok=True)
    with VmmProcess("--restore", str(tmp_path / "snap")) as vmm:
        bad = vmm.wait_for(protocol.DIRTY_CORRUPT_RE.pattern, timeout=30)
        assert int(bad.group(1), 16) == victim, (hex(victim), bad.string)
        vmm.wait_for(rf"^dirty-ok gen={int(bad.group(2)) + 1}$", timeout=30)   # rewritten: the next pass is clean


def test_a_pre_copied_diff_writes_the_pages_as_they_were_in_the_pause(tmp_path):
    """The pre-copy takes pages while the guest runs; pages written after it are copied again in
    the pause and win, a page that became zeros too (it must not keep the early copy's data)."""
    from volt_spec.kvm.memory import GuestMemory
    from volt_spec.snapshot.memory_file import CopiedWrite
    mem = GuestMemory.anonymous([(0, 4 * MiB)])
    try:
        mem.write(0, b"A" * 4096 + b"B" * 4096 + b"C" * 4096)
        staged = CopiedWrite(mem, str(tmp_path / "memory.snap"), [[(0, 3 * 4096)]])   # the guest runs on:
        mem.write(0, bytes(4096))                                   # page 0 zeroed, page 2 rewritten,
        mem.write(2 * 4096, b"D" * 4096)                            # and a new page at 1 MiB
        mem.write(MiB, b"E" * 4096)
        staged.add([[(0, 4096), (2 * 4096, 4096), (MiB, 4096)]])    # the pause: what was written since
        described = staged.wait()
    finally:
        mem.close()
    data = (tmp_path / "memory.snap").read_bytes()
    assert len(data) == 4 * MiB and data[:3 * 4096] == bytes(4096) + b"B" * 4096 + b"D" * 4096
    assert data[MiB:MiB + 4096] == b"E" * 4096 and data[MiB + 4096:] == bytes(3 * MiB - 4096)
    assert described["extents"] == [[0, 3 * 4096], [MiB, 4096]]
