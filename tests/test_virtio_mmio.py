"""virtio-mmio transport: registers, feature handshake, reset, queues, interrupts, save/restore."""

from __future__ import annotations

import json

import pytest

from volt_spec.devices.virtio import mmio as m
from volt_spec.devices.virtio.blk import VirtioBlk
from volt_spec.devices.virtio.testing import IrqRecorder, MmioDriver
from volt_spec.snapshot import codec

MiB = 1 << 20


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * 2 * 64)       # 64 sectors
    return str(path)


def make(memory, disk):
    irq = IrqRecorder()
    dev = m.VirtioMmio(VirtioBlk(disk, disk_id="vol0"), memory, irq)
    return dev, MmioDriver(dev, memory), irq


def test_identity_registers(memory, disk):
    dev, drv, _ = make(memory, disk)
    assert drv.read(m.Reg.MAGIC_VALUE) == 0x74726976
    assert drv.read(m.Reg.VERSION) == 2
    assert drv.read(m.Reg.DEVICE_ID) == 2
    assert dev.read_access(m.Reg.VENDOR_ID, 4) == b"VOLT"
    assert m.notify_addr == 0x50
    # Non-32-bit register accesses are not defined: they read zero and writes are ignored.
    assert dev.read_access(m.Reg.MAGIC_VALUE, 2) == b"\0\0"
    dev.write_access(m.Reg.STATUS, b"\x01")
    assert drv.read(m.Reg.STATUS) == 0


def test_device_features_include_version_1(memory, disk):
    _, drv, _ = make(memory, disk)
    features = drv.device_features()
    assert features & m.F_VERSION_1 and features & m.F_EVENT_IDX and features & m.F_INDIRECT_DESC
    drv.write(m.Reg.DEVICE_FEATURES_SEL, 2)
    assert drv.read(m.Reg.DEVICE_FEATURES) == 0


def test_handshake_accepts_offered_features(memory, disk):
    dev, drv, _ = make(memory, disk)
    assert drv.negotiate(drv.device_features())
    assert dev.driver_features == dev.device_features


def test_handshake_refuses_legacy_driver_and_unoffered_features(memory, disk):
    _, drv, _ = make(memory, disk)
    assert not drv.negotiate(drv.device_features() & ~m.F_VERSION_1)
    assert not drv.negotiate(drv.device_features() | 1 << 40)


def test_driver_features_frozen_after_features_ok(memory, disk):
    dev, drv, _ = make(memory, disk)
    assert drv.negotiate(m.F_VERSION_1)
    drv.write(m.Reg.DRIVER_FEATURES_SEL, 0)
    drv.write(m.Reg.DRIVER_FEATURES, 0xFFFFFFFF)
    assert dev.driver_features == m.F_VERSION_1


def test_queue_setup_and_num_max(memory, disk):
    dev, drv, _ = make(memory, disk)
    drv.init()
    drv.write(m.Reg.QUEUE_SEL, 0)
    assert drv.read(m.Reg.QUEUE_NUM_MAX) == 256
    assert drv.read(m.Reg.QUEUE_READY) == 1
    queue = dev.queues[0]
    assert (queue.size, queue.desc, queue.avail, queue.used) == (
        256, drv.queues[0].desc, drv.queues[0].avail, drv.queues[0].used)
    assert queue.event_idx and queue.indirect
    drv.write(m.Reg.QUEUE_SEL, 1)                  # no such queue
    assert drv.read(m.Reg.QUEUE_NUM_MAX) == 0
    assert drv.read(m.Reg.STATUS) == 0x0F


def test_queue_registers_ignored_while_ready(memory, disk):
    dev, drv, _ = make(memory, disk)
    drv.init()
    drv.write(m.Reg.QUEUE_SEL, 0)
    drv.write(m.Reg.QUEUE_DESC_LOW, 0x4000)
    drv.write(m.Reg.QUEUE_NUM, 2)
    assert dev.queues[0].desc == drv.queues[0].desc and dev.queues[0].size == 256


def test_a_queue_size_beyond_num_max_is_ignored_and_the_snapshot_still_restores(memory, disk):
    """A driver must not write QueueNum > QueueNumMax (4.2.3.2): ignored, so a guest cannot leave
    a state behind that its own snapshot's restore would refuse."""
    dev, drv, _ = make(memory, disk)
    drv.write(m.Reg.STATUS, 0)
    drv.write(m.Reg.QUEUE_SEL, 0)
    drv.write(m.Reg.QUEUE_NUM, 128)
    drv.write(m.Reg.QUEUE_NUM, 70000)
    assert dev.queues[0].size == 128
    again = m.VirtioMmio(VirtioBlk(disk, disk_id="vol0"), memory, IrqRecorder())
    again.restore(codec.decode(again.State, json.loads(json.dumps(codec.encode(dev.save())))))
    assert again.queues[0].size == 128


def test_bad_queue_layout_sets_needs_reset(memory, disk):
    dev, drv, irq = make(memory, disk)
    assert drv.negotiate(drv.device_features())
    drv.write(m.Reg.QUEUE_SEL, 0)
    drv.write(m.Reg.QUEUE_NUM, 100)                # not a power of two
    drv.write(m.Reg.QUEUE_READY, 1)
    assert drv.read(m.Reg.STATUS) & m.STATUS_NEEDS_RESET
    assert "power of two" in dev.last_error
    drv.write(m.Reg.STATUS, 0)
    assert drv.read(m.Reg.STATUS) == 0


def _read_request(drv, sector):
    q = drv.queues[0]
    header = (0).to_bytes(4, "little") + bytes(4) + sector.to_bytes(8, "little")
    return q.add([header], [512, 1])


def test_notify_completes_and_interrupts_then_ack(memory, disk):
    dev, drv, irq = make(memory, disk)
    drv.init()
    sub = _read_request(drv, 1)
    drv.notify(0)
    assert drv.queues[0].take_used() == [(sub.head, 513)]
    assert irq.count == 1
    assert drv.read(m.Reg.INTERRUPT_STATUS) == m.INT_VRING
    drv.ack()
    assert drv.read(m.Reg.INTERRUPT_STATUS) == 0
    # The VMM's ioeventfd path reaches the same code.
    _read_request(drv, 2)
    dev.queue_notify(0)
    assert len(drv.queues[0].take_used()) == 1 and irq.count == 2


def test_no_queue_processing_before_driver_ok(memory, disk):
    dev, drv, irq = make(memory, disk)
    assert drv.negotiate(drv.device_features())
    drv.queues = [drv.setup_queue(0)]
    _read_request(drv, 0)
    drv.notify(0)
    assert drv.queues[0].take_used() == [] and irq.count == 0
    drv.write(m.Reg.STATUS, 0x0F)                  # DRIVER_OK: the pending request is served
    assert len(drv.queues[0].take_used()) == 1 and irq.count == 1


def test_event_idx_suppresses_interrupts(memory, disk):
    dev, drv, irq = make(memory, disk)
    drv.init()
    q = drv.queues[0]
    q.set_used_event(5)                            # "interrupt me when used idx passes 5"
    for sector in range(3):
        _read_request(drv, sector)
        drv.notify(0)
    assert irq.count == 0 and q.used_idx() == 3
    for sector in range(3):
        _read_request(drv, sector)
    drv.notify(0)
    assert irq.count == 1 and q.used_idx() == 6
    assert q.avail_event() == 6                    # device asks to be notified at the next entry


def test_no_interrupt_flag_without_event_idx(memory, disk):
    dev, drv, irq = make(memory, disk)
    drv.init(features=m.F_VERSION_1)
    q = drv.queues[0]
    q.set_avail_flags(1)                           # VIRTQ_AVAIL_F_NO_INTERRUPT
    _read_request(drv, 0)
    drv.notify(0)
    assert q.used_idx() == 1 and irq.count == 0
    q.set_avail_flags(0)
    _read_request(drv, 0)
    drv.notify(0)
    assert irq.count == 1


def test_reset_clears_queues_and_interrupts(memory, disk):
    dev, drv, irq = make(memory, disk)
    drv.init()
    _read_request(drv, 0)
    drv.notify(0)
    drv.write(m.Reg.STATUS, 0)
    assert drv.read(m.Reg.STATUS) == 0 and drv.read(m.Reg.INTERRUPT_STATUS) == 0
    drv.write(m.Reg.QUEUE_SEL, 0)
    assert drv.read(m.Reg.QUEUE_READY) == 0
    assert dev.queues[0].last_avail_idx == 0 and dev.driver_features == 0


def test_config_space_and_generation(memory, disk):
    _, drv, irq = make(memory, disk)
    assert int.from_bytes(drv.config(0, 8), "little") == 64        # capacity in sectors
    assert drv.config(0, 4) + drv.config(4, 4) == drv.config(0, 8)
    assert drv.config(0x200, 4) == bytes(4)                       # past the end reads zero
    drv.init()
    assert drv.read(m.Reg.CONFIG_GENERATION) == 0                 # the config never changes
    assert drv.read(m.Reg.INTERRUPT_STATUS) == 0 and irq.count == 0


def test_shared_memory_registers_report_none(memory, disk):
    _, drv, _ = make(memory, disk)
    drv.write(m.Reg.SHM_SEL, 0)
    assert drv.read(m.Reg.SHM_LEN_LOW) == drv.read(m.Reg.SHM_LEN_HIGH) == 0xFFFFFFFF


def test_save_restore_round_trip_keeps_inflight_indices(memory, disk):
    dev, drv, irq = make(memory, disk)
    drv.init()
    for sector in range(3):
        _read_request(drv, sector)
    drv.notify(0)                                  # three completed; interrupt not yet acked
    pending = _read_request(drv, 7)                # made available, not yet notified
    state = dev.save()
    text = json.dumps(codec.encode(state))

    irq2 = IrqRecorder()
    dev2 = m.VirtioMmio(VirtioBlk(disk, disk_id="vol0"), memory, irq2)
    dev2.restore(codec.decode(dev2.State, json.loads(text)))
    assert irq2.count == 1                         # pending used-buffer interrupt re-raised
    assert dev2.save() == state
    assert dev2.queues[0].last_avail_idx == 3 and dev2.queues[0].used_idx == 3
    dev2.kick()                                    # the VMM resumes: the queued request is served
    assert drv.queues[0].take_used()[-1] == (pending.head, 513)
    assert dev2.queues[0].used_idx == 4


def test_restore_refuses_mismatched_state(memory, disk, tmp_path):
    dev, drv, _ = make(memory, disk)
    drv.init()
    data = codec.encode(dev.save())
    ro = m.VirtioMmio(VirtioBlk(disk, read_only=True), memory, IrqRecorder())
    with pytest.raises(ValueError, match="features"):
        ro.restore(codec.decode(ro.State, data))
    other = m.VirtioMmio(VirtioBlk(disk), memory, IrqRecorder())
    bad = dict(data, queues=[dict(data["queues"][0], used_idx=70000)])
    with pytest.raises(ValueError, match="used_idx"):
        other.restore(codec.decode(other.State, bad))
    with pytest.raises(ValueError, match="status"):
        other.restore(codec.decode(other.State, dict(data, status=0x1FF)))
    with pytest.raises(ValueError, match="queue count"):
        other.restore(codec.decode(other.State, dict(data, queues=[])))


def test_restore_refuses_another_device_models_state(memory, disk):
    from volt_spec.devices.virtio.net import NetState
    dev, drv, _ = make(memory, disk)
    drv.init()
    state = dev.save().replace(device=NetState())
    with pytest.raises(ValueError, match="device state type"):
        m.VirtioMmio(VirtioBlk(disk), memory, IrqRecorder()).restore(state)


def test_bus_routes_wide_accesses(memory, disk):
    from volt_spec import layout
    from volt_spec.devices.bus import MmioBus
    dev, _, _ = make(memory, disk)
    bus = MmioBus()
    bus.insert(layout.VIRTIO_MMIO_BASE, m.WINDOW_SIZE, dev)
    assert bus.read(layout.VIRTIO_MMIO_BASE, 4) == b"virt"
