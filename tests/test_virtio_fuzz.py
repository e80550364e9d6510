"""Adversarial virtqueues (hypothesis): random descriptor tables, flags, loops, indirect tables
and available rings drive virtio-blk and virtio-net through `queue_notify`.

Properties: nothing escapes the device as an exception; every guest-memory read/write
the device performs is inside guest RAM (the wrapper asserts it; `region_for` may be
asked about anything, that is the bounds check itself); after a notify the device
has either completed every chain it took, or marked itself DEVICE_NEEDS_RESET; and
whatever state the driver left, a snapshot of it restores (through the product's codec).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volt_spec.devices.virtio import blk as b
from volt_spec.devices.virtio import mmio as m
from volt_spec.devices.virtio import net as n
from volt_spec.devices.virtio.tap import FakeTap
from volt_spec.devices.virtio.testing import IrqRecorder, MmioDriver
from volt_spec.kvm.memory import GuestMemory

from .device_json import via_snapshot

RAM = 1 << 20
DATA = 0x40000                    # random bytes and planted request headers live here
TABLES = 0x60000                  # random "indirect tables"
SECTORS = 16


class CheckedMemory:
    """Guest memory that fails the test on any read or write outside RAM."""

    def __init__(self, inner: GuestMemory) -> None:
        self.inner = inner

    def _check(self, gpa: int, length: int) -> None:
        assert 0 <= gpa and 0 <= length and gpa + length <= RAM, f"access {gpa:#x}+{length:#x}"

    def read(self, gpa: int, length: int) -> bytes:
        self._check(gpa, length)
        return self.inner.read(gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        self._check(gpa, len(data))
        self.inner.write(gpa, data)

    def region_for(self, gpa: int, length: int):
        return self.inner.region_for(gpa, length)


@pytest.fixture(scope="module")
def ram():
    mem = GuestMemory.anonymous([(0, RAM)])
    yield mem
    mem.close()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "disk.img"
    path.write_bytes(bytes(SECTORS * 512))
    return str(path)


def header(kind: int, sector: int) -> bytes:
    return kind.to_bytes(4, "little") + bytes(4) + sector.to_bytes(8, "little")


# Two kinds of descriptors: plausible ones (planted headers, data buffers, sensible lengths
# and flag combinations, short `next` hops) so requests really run, and wild ones
# (anywhere in 64-bit space, huge lengths, every flag combination incl. INDIRECT|NEXT).
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
plausible = st.tuples(
    st.sampled_from([DATA, DATA + 16, DATA + 32, DATA + 48, DATA + 0x1000, DATA + 0x2000, TABLES]),
    st.sampled_from([1, 16, 20, 21, 32, 512, 1024, 4096]),
    st.sampled_from([0, F_NEXT, F_WRITE, F_NEXT | F_WRITE, F_INDIRECT]),
    st.integers(0, 4),
)
wild = st.tuples(
    st.one_of(st.sampled_from([0, RAM - 1, RAM, RAM - 16, 2**64 - 1]), st.integers(0, 2**64 - 1)),
    st.one_of(st.sampled_from([0, 17, 513, 2**32 - 1]), st.integers(0, 2**32 - 1)),
    st.integers(0, 7),
    st.integers(0, 40),
)
descriptor = st.one_of(plausible, plausible, plausible, wild)


def well_formed(size, kinds):
    """A table of 3-descriptor requests (header, data, status) and the heads of each."""
    table, heads = [], []
    for i, kind in enumerate(kinds):
        base = 3 * i
        if base + 3 > size:
            break
        header_at = DATA + 16 * kind               # the planted IN/OUT/GET_ID/FLUSH headers
        data_flags = F_NEXT | (0 if kind == 1 else F_WRITE)
        table += [(header_at, 16, F_NEXT, base + 1), (DATA + 0x1000, 512, data_flags, base + 2),
                  (DATA + 0x3000 + i, 1, F_WRITE, 0)]
        heads.append(base)
    table += [(0, 0, 0, 0)] * (size - len(table))
    return table, heads


@st.composite
def scenario(draw):
    size = draw(st.sampled_from([2, 4, 8, 16, 32]))
    ring = draw(st.lists(st.one_of(st.integers(0, 3), st.integers(0, size + 2)),
                         min_size=size, max_size=size))
    table = draw(st.lists(descriptor, min_size=size, max_size=size))
    ahead = draw(st.one_of(st.integers(0, size), st.integers(0, size), st.integers(0, 0xFFFF)))
    if size >= 4 and draw(st.booleans()):
        # Start from valid requests, then corrupt a few descriptors and ring slots.
        table, heads = well_formed(size, draw(st.lists(st.integers(0, 3), min_size=1, max_size=10)))
        ring = (heads * size)[:size]
        ahead = draw(st.integers(0, len(heads)))
        for index, desc in draw(st.lists(st.tuples(st.integers(0, size - 1), descriptor), max_size=2)):
            table[index] = desc
    return {
        "size": size,
        "table": table,
        "indirect": draw(st.lists(descriptor, min_size=1, max_size=40)),
        "ring": ring,
        "start": draw(st.integers(0, 0xFFFF)),
        "ahead": ahead,
        "flags": draw(st.integers(0, 1)),
        "used_event": draw(st.integers(0, 0xFFFF)),
        "data": draw(st.binary(min_size=0, max_size=256)),
        "frames": draw(st.lists(st.binary(min_size=1, max_size=200), max_size=3)),
        "event_idx": draw(st.booleans()),
    }


def desc_bytes(addr, length, flags, nxt):
    return (addr.to_bytes(8, "little") + length.to_bytes(4, "little") + flags.to_bytes(2, "little")
            + nxt.to_bytes(2, "little"))


def drive(ram, device, queue_index, s):
    ram.write(0, bytes(RAM))                               # no rings left from the last example
    memory = CheckedMemory(ram)
    dev = m.VirtioMmio(device, memory, IrqRecorder())
    drv = MmioDriver(dev, ram)
    features = drv.device_features()
    if not s["event_idx"]:
        features &= ~m.F_EVENT_IDX
    drv.init(features=features, queue_size=s["size"])
    assert dev.status == 0x0F, dev.last_error
    q = dev.queues[queue_index]
    qd = drv.queues[queue_index]
    # Plant useful headers, then the random payload, tables and rings.
    ram.write(DATA, header(b.Req.IN, 1) + header(b.Req.OUT, 2) + header(b.Req.GET_ID, 0)
              + header(b.Req.FLUSH, 0) + s["data"])
    ram.write(TABLES, b"".join(desc_bytes(*d) for d in s["indirect"]))
    ram.write(qd.desc, b"".join(desc_bytes(*d) for d in s["table"]))
    ring = b"".join(h.to_bytes(2, "little") for h in s["ring"])
    ram.write(qd.avail, s["flags"].to_bytes(2, "little")
              + ((s["start"] + s["ahead"]) & 0xFFFF).to_bytes(2, "little") + ring
              + s["used_event"].to_bytes(2, "little"))
    q.last_avail_idx = q.used_idx = s["start"]
    ram.write(qd.used + 2, s["start"].to_bytes(2, "little"))
    return dev, q, (s["start"] + s["ahead"]) & 0xFFFF


def check_outcome(dev, q, avail_idx, start, may_leave_pending=False):
    if dev.status & m.STATUS_NEEDS_RESET:
        assert dev.failures >= 1 and dev.last_error
        return
    taken = (q.last_avail_idx - start) & 0xFFFF
    assert (q.used_idx - start) & 0xFFFF == taken          # every chain taken was completed
    if not may_leave_pending:
        assert q.last_avail_idx == avail_idx                # and all were taken


def check_restores(dev, model):
    """The saved state survives state.json and loads into a fresh transport over `model`."""
    state = via_snapshot(dev.save())
    twin = m.VirtioMmio(model, dev.memory, IrqRecorder())
    twin.restore(state)
    assert twin.save() == state


SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@SETTINGS
@given(s=scenario(), read_only=st.booleans())
def test_blk_survives_adversarial_queues(ram, image, s, read_only):
    disk = b.VirtioBlk(image, read_only=read_only)
    try:
        dev, q, avail_idx = drive(ram, disk, 0, s)
        dev.queue_notify(0)
        check_outcome(dev, q, avail_idx, s["start"])
        dev.queue_notify(0)                                # a second kick is harmless too
        twin = b.VirtioBlk(image, read_only=read_only)
        try:
            check_restores(dev, twin)
        finally:
            twin.close()
    finally:
        disk.close()


@SETTINGS
@given(s=scenario())
def test_net_tx_survives_adversarial_queues(ram, s):
    tap = FakeTap()
    try:
        dev, q, avail_idx = drive(ram, n.VirtioNet(tap, b"\x02" + bytes(5)), n.TX_QUEUE, s)
        dev.queue_notify(n.TX_QUEUE)
        check_outcome(dev, q, avail_idx, s["start"])
        check_restores(dev, n.VirtioNet(tap, b"\x02" + bytes(5)))
    finally:
        tap.close()


@SETTINGS
@given(s=scenario())
def test_net_rx_survives_adversarial_queues(ram, s):
    tap = FakeTap()
    try:
        nic = n.VirtioNet(tap, b"\x02" + bytes(5))
        dev, q, avail_idx = drive(ram, nic, n.RX_QUEUE, s)
        for frame in s["frames"]:
            tap.inject(frame)
        nic.poll_rx()
        dev.queue_notify(n.RX_QUEUE)
        check_outcome(dev, q, avail_idx, s["start"], may_leave_pending=True)
        if not dev.status & m.STATUS_NEEDS_RESET:
            assert not nic.save().pending or q.last_avail_idx == avail_idx
        check_restores(dev, n.VirtioNet(tap, b"\x02" + bytes(5)))
    finally:
        tap.close()
