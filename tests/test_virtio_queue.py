"""Split virtqueue parsing: chains, indirect tables, and every malformed shape it must refuse."""

from __future__ import annotations

import pytest

from volt_spec.devices.virtio import queue as vq
from volt_spec.devices.virtio.testing import Heap, QueueDriver

from .device_json import via_snapshot

SIZE = 8
RAM = 16 << 20


def make(memory, indirect=True, event_idx=False):
    drv = QueueDriver(memory, Heap(), 0x10000, SIZE)
    q = vq.Virtqueue(SIZE, memory)
    q.size, q.desc, q.avail, q.used = SIZE, drv.desc, drv.avail, drv.used
    q.ready, q.indirect, q.event_idx = True, indirect, event_idx
    q.check_layout()
    return drv, q


def put(drv, index, addr, length, flags=0, nxt=0, table=None):
    drv._put_desc(drv.desc if table is None else table, index, addr, length, flags, nxt)


def test_pop_gives_readable_then_writable(memory):
    drv, q = make(memory)
    sub = drv.add([b"abc", b"de"], [7])
    chain = q.pop()
    assert chain.head == sub.head
    assert [n for _, n in chain.readable] == [3, 2] and chain.writable == sub.writable
    assert vq.read_buffers(memory, chain.readable) == b"abcde"
    assert q.pop() is None


def test_indirect_chain(memory):
    drv, q = make(memory)
    drv.add([b"x" * 16], [4, 4], indirect=True)
    chain = q.pop()
    assert chain.readable_len == 16 and chain.writable_len == 8


def test_add_used_and_wraparound(memory):
    drv, q = make(memory)
    for i in range(3 * SIZE):
        sub = drv.add([b"r"], [])
        chain = q.pop()
        q.add_used(chain.head, i)
        assert drv.take_used() == [(sub.head, i)]


@pytest.mark.parametrize("case", ["loop", "next_out_of_table", "addr_outside_ram", "len_outside_ram",
                                  "readable_after_writable", "indirect_nested", "indirect_bad_len",
                                  "indirect_and_next", "indirect_not_negotiated", "head_out_of_range",
                                  "indirect_outside_ram"])
def test_malformed_chains_raise(memory, case):
    drv, q = make(memory, indirect=case != "indirect_not_negotiated")
    buf = 0x200000
    head = 0
    match case:
        case "loop":
            put(drv, 0, buf, 1, vq.DESC_F_NEXT, 1)
            put(drv, 1, buf, 1, vq.DESC_F_NEXT, 0)
        case "next_out_of_table":
            put(drv, 0, buf, 1, vq.DESC_F_NEXT, SIZE)
        case "addr_outside_ram":
            put(drv, 0, RAM, 1)
        case "len_outside_ram":
            put(drv, 0, RAM - 10, 0xFFFFFFFF)
        case "readable_after_writable":
            put(drv, 0, buf, 1, vq.DESC_F_NEXT | vq.DESC_F_WRITE, 1)
            put(drv, 1, buf, 1)
        case "indirect_nested":
            table = 0x300000
            put(drv, 0, table, 32, vq.DESC_F_INDIRECT)
            put(drv, 0, table, 32, vq.DESC_F_INDIRECT, table=table)
        case "indirect_bad_len":
            put(drv, 0, 0x300000, 24, vq.DESC_F_INDIRECT)
        case "indirect_and_next":
            put(drv, 0, 0x300000, 16, vq.DESC_F_INDIRECT | vq.DESC_F_NEXT, 1)
        case "indirect_not_negotiated":
            put(drv, 0, 0x300000, 16, vq.DESC_F_INDIRECT)
        case "head_out_of_range":
            head = SIZE + 3
        case "indirect_outside_ram":
            put(drv, 0, RAM - 16, 32, vq.DESC_F_INDIRECT)
    drv.publish(head)
    with pytest.raises(vq.QueueError):
        q.pop()


def test_indirect_loop_is_bounded(memory):
    drv, q = make(memory)
    table = 0x300000
    put(drv, 0, table, 32, vq.DESC_F_INDIRECT)
    put(drv, 0, 0x200000, 1, vq.DESC_F_NEXT, 1, table=table)
    put(drv, 1, 0x200000, 1, vq.DESC_F_NEXT, 0, table=table)
    drv.publish(0)
    with pytest.raises(vq.QueueError, match="longer"):
        q.pop()


def test_avail_index_too_far_ahead(memory):
    drv, q = make(memory)
    memory.write(drv.avail + 2, (SIZE + 1).to_bytes(2, "little"))
    with pytest.raises(vq.QueueError, match="ahead"):
        q.pop()


def test_layout_checks(memory):
    q = vq.Virtqueue(256, memory)
    for size, desc, avail, used in [(0, 0, 0, 0), (3, 0, 0, 0), (512, 0, 0, 0), (4, 8, 0, 0),
                                    (4, 0, 1, 0), (4, 0, 0, 2), (4, RAM - 16, 0, 0)]:
        q.size, q.desc, q.avail, q.used = size, desc, avail, used
        with pytest.raises(vq.QueueError):
            q.check_layout()


def test_need_event_matches_spec_examples():
    assert vq.need_event(0, 1, 0)
    assert not vq.need_event(5, 3, 0)
    assert vq.need_event(5, 6, 0)
    assert vq.need_event(0xFFFF, 0, 0xFFFE)       # wraps


def test_restore_validates(memory):
    q = vq.Virtqueue(8, memory)
    good = q.save()
    q.restore(via_snapshot(good.replace(size=8, last_avail_idx=5)))
    assert q.last_avail_idx == 5 and q.save() == good.replace(size=8, last_avail_idx=5)
    for bad in [good.replace(size=9), good.replace(ready=1), good.replace(used_idx=-1),
                good.replace(desc=1 << 64)]:
        with pytest.raises(ValueError):
            q.restore(bad)
