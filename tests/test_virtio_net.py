"""virtio-net over a FakeTap: transmit, receive with headers, waiting for buffers, config."""

from __future__ import annotations

import pytest

from volt_spec.devices.virtio import mmio as m
from volt_spec.devices.virtio import net as n
from volt_spec.devices.virtio.tap import FakeTap, ifreq, mac_for
from volt_spec.devices.virtio.testing import IrqRecorder, MmioDriver
from volt_spec.snapshot import codec

from .device_json import via_snapshot

MAC = bytes.fromhex("02aabbccddee")
FRAME = bytes.fromhex("ffffffffffff") + MAC + b"\x08\x00" + b"hello" * 20


@pytest.fixture
def tap():
    t = FakeTap()
    yield t
    t.close()


def rx_pending(nic):
    """Frames read from the tap and not yet delivered, as the NIC would save them."""
    return len(nic.save().pending)


def setup(memory, tap):
    irq = IrqRecorder()
    nic = n.VirtioNet(tap, MAC)
    dev = m.VirtioMmio(nic, memory, irq)
    drv = MmioDriver(dev, memory)
    drv.init()
    return nic, dev, drv, irq


def test_mac_and_link_in_config(memory, tap):
    nic, dev, drv, _ = setup(memory, tap)
    assert drv.read(m.Reg.DEVICE_ID) == 1
    assert drv.config(0, 6) == MAC
    assert int.from_bytes(drv.config(6, 2), "little") == n.S_LINK_UP
    assert dev.device_features & n.F_MAC and dev.device_features & n.F_STATUS


def test_tx_strips_header_and_reaches_tap(memory, tap):
    nic, _, drv, irq = setup(memory, tap)
    tx = drv.queues[n.TX_QUEUE]
    sub = tx.add([bytes(n.HDR_SIZE), FRAME[:20], FRAME[20:]], [])
    drv.notify(n.TX_QUEUE)
    assert tap.sent() == [FRAME]
    assert tx.take_used() == [(sub.head, 0)] and irq.count == 1
    assert (nic.tx_frames, nic.tx_bytes) == (1, len(FRAME))


def test_tx_header_only_is_dropped_but_completed(memory, tap):
    nic, _, drv, _ = setup(memory, tap)
    tx = drv.queues[n.TX_QUEUE]
    tx.add([bytes(n.HDR_SIZE)], [])
    drv.notify(n.TX_QUEUE)
    assert tap.sent() == [] and len(tx.take_used()) == 1 and nic.tx_dropped == 1


def test_rx_lands_in_buffer_with_header(memory, tap):
    nic, _, drv, irq = setup(memory, tap)
    rx = drv.queues[n.RX_QUEUE]
    sub = rx.add([], [n.HDR_SIZE + 1514])
    drv.notify(n.RX_QUEUE)
    assert irq.count == 0
    tap.inject(FRAME)
    nic.poll_rx()
    used = rx.take_used()
    assert used == [(sub.head, n.HDR_SIZE + len(FRAME))]
    (data,) = rx.read(sub)
    assert data[:n.HDR_SIZE] == bytes(10) + b"\x01\x00"      # num_buffers = 1
    assert data[n.HDR_SIZE:n.HDR_SIZE + len(FRAME)] == FRAME
    assert irq.count == 1 and nic.rx_frames == 1


def test_rx_waits_for_buffers(memory, tap):
    nic, _, drv, irq = setup(memory, tap)
    rx = drv.queues[n.RX_QUEUE]
    tap.inject(FRAME)
    tap.inject(FRAME[::-1])
    nic.poll_rx()
    assert rx_pending(nic) == 2 and rx.used_idx() == 0 and irq.count == 0
    subs = [rx.add([], [2048]) for _ in range(2)]
    drv.notify(n.RX_QUEUE)
    assert [u[0] for u in rx.take_used()] == [s.head for s in subs]
    assert rx.read(subs[1])[0][n.HDR_SIZE:n.HDR_SIZE + len(FRAME)] == FRAME[::-1]
    assert rx_pending(nic) == 0


def test_rx_pending_is_bounded_and_tap_drained(memory, tap):
    nic, _, _, _ = setup(memory, tap)
    for i in range(n.RX_PENDING_MAX + 5):
        tap.inject(FRAME + bytes([i & 0xFF]))
        if i % 50 == 49:
            nic.poll_rx()           # socket buffer is finite: poll as the VMM would
    nic.poll_rx()
    assert rx_pending(nic) == n.RX_PENDING_MAX and nic.rx_dropped == 5
    assert tap.read() is None


def test_rx_buffer_too_small_drops_frame_keeps_buffer(memory, tap):
    nic, _, drv, _ = setup(memory, tap)
    rx = drv.queues[n.RX_QUEUE]
    sub = rx.add([], [n.HDR_SIZE + 20])
    tap.inject(FRAME)
    tap.inject(FRAME[:20])
    nic.poll_rx()
    assert rx.take_used() == [(sub.head, n.HDR_SIZE + 20)]
    assert nic.rx_dropped == 1


def test_reset_drops_pending_and_save_restore_keeps_it(memory, tap):
    nic, dev, drv, _ = setup(memory, tap)
    tap.inject(FRAME)
    nic.poll_rx()
    state = via_snapshot(dev.save())
    assert state.device.pending == [FRAME.hex()] and state.device.counters == [0] * 6
    tap2 = FakeTap()
    try:
        nic2 = n.VirtioNet(tap2, MAC)
        dev2 = m.VirtioMmio(nic2, memory, IrqRecorder())
        dev2.restore(state)
        assert dev2.save() == state
        rx = drv.queues[n.RX_QUEUE]
        sub = rx.add([], [n.HDR_SIZE + 1514])
        dev2.queue_notify(n.RX_QUEUE)                  # the restored frame reaches the guest
        assert rx.read(sub)[0][n.HDR_SIZE:n.HDR_SIZE + len(FRAME)] == FRAME
        assert rx_pending(nic2) == 0 and nic2.rx_frames == 1
    finally:
        tap2.close()
    drv.write(m.Reg.STATUS, 0)
    assert rx_pending(nic) == 0


@pytest.mark.parametrize("device", [
    {"pending": ["zz"], "counters": [0] * 6},                 # not hex
    {"pending": [], "counters": [0] * 5},                     # a counter missing
    {"pending": [], "counters": [0, 0, 0, 0, 0, -1]},
    {"pending": [FRAME.hex()] * (n.RX_PENDING_MAX + 1), "counters": [0] * 6},
])
def test_restore_refuses_bad_net_state(memory, tap, device):
    _, dev, _, _ = setup(memory, tap)
    data = dict(codec.encode(dev.save()), device=device)
    with pytest.raises(ValueError):
        m.VirtioMmio(n.VirtioNet(tap, MAC), memory, IrqRecorder()).restore(
            codec.decode(m.VirtioMmioState, data))


def test_mac_for_is_stable_local_unicast():
    mac = mac_for("web-1")
    assert mac == mac_for("web-1") != mac_for("web-2")
    assert len(mac) == 6 and mac[0] == 0x02


def test_ifreq_layout():
    raw = ifreq("volt0", 0x1002)
    assert len(raw) == 40 and raw[:6] == b"volt0\0" and raw[16:18] == b"\x02\x10"
    with pytest.raises(ValueError):
        ifreq("x" * 16, 0)


def test_multicast_mac_refused(tap):
    with pytest.raises(ValueError):
        n.VirtioNet(tap, b"\x01" + bytes(5))


def test_real_tap_when_available():
    """Opens a transient tap (gone at close); skipped without /dev/net/tun access."""
    import os

    from volt_spec.devices.virtio.tap import Tap
    try:
        tap = Tap(f"vtt{os.getpid() % 100000}")
    except OSError as e:
        pytest.skip(f"no tap here: {e}")
    try:
        assert tap.name.startswith("vtt") and tap.read() is None    # nonblocking, link down
    finally:
        tap.close()
