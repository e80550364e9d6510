"""virtio-net device model (virtio 1.2 section 5.1): one rx/tx queue pair over a tap.

With VIRTIO_F_VERSION_1 every packet starts with the 12-byte `virtio_net_hdr`
(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers):
num_buffers is present even without VIRTIO_NET_F_MRG_RXBUF (5.1.6). No offloads
are offered, so transmitted headers carry nothing we need (they are stripped)
and received frames get a zeroed header with num_buffers = 1.

Receive: the VMM calls `poll_rx()` when the tap fd is readable. It always drains
the tap (so a level-triggered poller does not spin), keeps up to RX_PENDING_MAX
frames while the guest has no receive buffers, and drops beyond that (counted).
A notify on the rx queue (new buffers) delivers what is pending.
"""

from __future__ import annotations

from volt_spec.devices.state import DeviceState
from volt_spec.devices.virtio.queue import read_buffers, write_buffers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from volt_spec.devices.virtio.queue import Transport

    class FrameIo(Protocol):
        """A tap: nonblocking whole-frame reads and writes."""

        def read(self) -> bytes | None: ...

        def write(self, frame: bytes) -> bool: ...

        def fileno(self) -> int: ...

DEVICE_ID = 1
RX_QUEUE = 0                      # receiveq1
TX_QUEUE = 1                      # transmitq1
QUEUE_SIZE = 256

# Feature bits (5.1.3).
F_MAC = 1 << 5
F_STATUS = 1 << 16

S_LINK_UP = 1                     # virtio_net_config.status (5.1.4)

HDR_SIZE = 12                     # struct virtio_net_hdr with num_buffers (5.1.6)
RX_HDR = bytes(10) + (1).to_bytes(2, "little")     # no offloads, num_buffers = 1
MAX_FRAME = 65535 + 14            # largest Ethernet frame a tap can hand us, generous
RX_PENDING_MAX = 256              # frames kept while the guest has no rx buffers
COUNTERS = 6                      # rx frames, bytes, dropped; tx frames, bytes, dropped


class NetState(DeviceState):
    """Frames received but not yet delivered (hex text), and the six traffic counters."""

    __slots__ = ("pending", "counters")
    FIELDS = {
        "pending": ([str], []),
        "counters": ([int], [0] * COUNTERS),
    }


class VirtioNet:
    """A NIC whose wire is `tap` (a `Tap`, or a `FakeTap` in tests)."""

    State = NetState
    device_id = DEVICE_ID
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE)
    features = F_MAC | F_STATUS

    def __init__(self, tap: FrameIo, mac: bytes) -> None:
        if len(mac) != 6 or mac[0] & 1:
            raise ValueError(f"virtio-net MAC {mac.hex(':')} is not a 6-byte unicast address")
        self.tap = tap
        self.mac = bytes(mac)
        self._pending: list[bytes] = []
        self._transport: Transport | None = None
        self.rx_frames = self.rx_bytes = self.rx_dropped = 0
        self.tx_frames = self.tx_bytes = self.tx_dropped = 0

    # -- transport hooks --------------------------------------------------------

    def attach(self, transport: Transport) -> None:
        self._transport = transport

    def config_bytes(self) -> bytes:
        """struct virtio_net_config: mac[6], le16 status."""
        return self.mac + S_LINK_UP.to_bytes(2, "little")

    def config_write(self, offset: int, data: bytes) -> None:
        """The config space is read-only for a modern driver (5.1.4.2)."""

    def reset(self) -> None:
        """Frames queued for the old driver instance are stale once it resets."""
        self._pending.clear()

    def process_queue(self, index: int) -> None:
        if index == RX_QUEUE:
            self._deliver()           # the driver added receive buffers
        elif index == TX_QUEUE:
            self._transmit()

    # -- host side --------------------------------------------------------------

    def poll_rx(self) -> None:
        """The tap is readable: drain it into the pending list, then fill rx buffers."""
        transport = self._transport
        with transport.lock:
            while (frame := self._read_tap()) is not None:
                if len(self._pending) >= RX_PENDING_MAX:
                    self.rx_dropped += 1
                else:
                    self._pending.append(frame)
            if self._pending:
                transport.service(RX_QUEUE, self.process_queue)

    def _read_tap(self) -> bytes | None:
        try:
            return self.tap.read()
        except OSError:
            return None

    # -- queues ------------------------------------------------------------------

    def _deliver(self) -> None:
        queue = self._transport.queues[RX_QUEUE]
        memory = self._transport.memory
        while self._pending:
            chain = queue.pop()
            if chain is None:
                return                # wait for the driver to add buffers (notify on rx)
            packet = RX_HDR + self._pending[0]
            if chain.writable_len < len(packet):
                # Too small for this frame (no MRG_RXBUF to spread it): drop the frame
                # and keep the buffer for the next one.
                queue.undo_pop()
                self._pending.pop(0)
                self.rx_dropped += 1
                continue
            write_buffers(memory, chain.writable, packet)
            queue.add_used(chain.head, len(packet))
            self._pending.pop(0)
            self.rx_frames += 1
            self.rx_bytes += len(packet) - HDR_SIZE

    def _transmit(self) -> None:
        queue = self._transport.queues[TX_QUEUE]
        memory = self._transport.memory
        while (chain := queue.pop()) is not None:
            length = chain.readable_len
            if HDR_SIZE < length <= HDR_SIZE + MAX_FRAME:
                frame = read_buffers(memory, chain.readable)[HDR_SIZE:]
                if self._write_tap(frame):
                    self.tx_frames += 1
                    self.tx_bytes += len(frame)
                else:
                    self.tx_dropped += 1
            else:
                self.tx_dropped += 1  # header only, or larger than any frame
            queue.add_used(chain.head, 0)

    def _write_tap(self, frame: bytes) -> bool:
        try:
            return bool(self.tap.write(frame))
        except OSError:
            return False

    # -- persistence --------------------------------------------------------------

    def save(self) -> NetState:
        return NetState(pending=[frame.hex() for frame in self._pending],
                        counters=[self.rx_frames, self.rx_bytes, self.rx_dropped,
                                  self.tx_frames, self.tx_bytes, self.tx_dropped])

    def restore(self, state: NetState) -> None:
        """Load `state`, validated: at most RX_PENDING_MAX hex frames, six counters >= 0."""
        pending, counters = state.pending, state.counters
        if (not isinstance(pending, list) or len(pending) > RX_PENDING_MAX
                or not all(isinstance(f, str) for f in pending)
                or not isinstance(counters, list) or len(counters) != COUNTERS
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                           for c in counters)):
            raise ValueError("virtio-net state: bad shape")
        self._pending = [bytes.fromhex(frame) for frame in pending]
        (self.rx_frames, self.rx_bytes, self.rx_dropped,
         self.tx_frames, self.tx_bytes, self.tx_dropped) = counters
