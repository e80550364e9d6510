"""16550A UART: register behaviour Linux's 8250 driver depends on, interrupts, persistence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volt_spec.devices import serial as uart
from volt_spec.devices.irq import RecordingIrq
from volt_spec.devices.serial import Serial, SerialState
from volt_spec.snapshot import codec

from .device_json import via_snapshot


class Harness:
    def __init__(self) -> None:
        self.irq = RecordingIrq()
        self.sent = bytearray()
        self.dev = Serial(self.irq, self.sent.extend)


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_thr_bytes_go_out_one_by_one_at_once(h: Harness) -> None:
    chunks: list[bytes] = []
    dev = Serial(h.irq, chunks.append)
    for b in b"hi\n":
        dev.write(uart.DATA, b)
    assert chunks == [b"h", b"i", b"\n"]
    assert dev.read(uart.LSR) & (uart.LSR_THRE | uart.LSR_TEMT) == uart.LSR_THRE | uart.LSR_TEMT


def test_dlab_switches_offsets_0_and_1_to_the_divisor_latch(h: Harness) -> None:
    h.dev.write(uart.IER, 0x05)
    h.dev.write(uart.LCR, 0x80 | 0x03)
    h.dev.write(uart.DATA, 0x01)
    h.dev.write(uart.IER, 0x02)
    assert (h.dev.read(uart.DATA), h.dev.read(uart.IER)) == (0x01, 0x02)
    assert h.sent == b""                     # a DLL write is not a transmission
    h.dev.write(uart.LCR, 0x03)
    assert h.dev.read(uart.IER) == 0x05      # IER untouched by the DLM write
    assert h.dev.save().divisor == 0x0201


def test_ier_keeps_only_low_nibble_like_linux_autoconfig_expects(h: Harness) -> None:
    h.dev.write(uart.IER, 0)
    assert h.dev.read(uart.IER) & 0x0F == 0
    h.dev.write(uart.IER, 0xFF)
    assert h.dev.read(uart.IER) == 0x0F      # also: no XScale UUE bit 6


def test_linux_8250_loopback_probe(h: Harness) -> None:
    save_mcr = h.dev.read(uart.MCR)
    h.dev.write(uart.MCR, uart.MCR_LOOP | 0x0A)       # LOOP | RTS | OUT2
    status1 = h.dev.read(uart.MSR) & 0xF0
    h.dev.write(uart.MCR, save_mcr)
    assert status1 == 0x90                           # DCD | CTS
    assert h.dev.read(uart.MSR) & 0xF0 == uart.MSR_IDLE_LINES


@pytest.mark.parametrize(("mcr", "lines"), [
    (uart.MCR_DTR, uart.MSR_DSR), (uart.MCR_RTS, uart.MSR_CTS),
    (uart.MCR_OUT1, uart.MSR_RI), (uart.MCR_OUT2, uart.MSR_DCD), (0, 0),
])
def test_loopback_mirrors_each_mcr_bit(h: Harness, mcr: int, lines: int) -> None:
    h.dev.write(uart.MCR, uart.MCR_LOOP | mcr)
    assert h.dev.read(uart.MSR) & 0xF0 == lines


def test_loopback_bytes_return_to_receiver_not_output(h: Harness) -> None:
    h.dev.write(uart.MCR, uart.MCR_LOOP)
    h.dev.write(uart.DATA, 0x5A)
    assert h.sent == b""
    assert h.dev.read(uart.LSR) & uart.LSR_DR
    assert h.dev.read(uart.DATA) == 0x5A
    assert not h.dev.read(uart.LSR) & uart.LSR_DR


def test_fifo_enable_identifies_a_16550a(h: Harness) -> None:
    assert h.dev.read(uart.IIR) == uart.IIR_NO_INT
    h.dev.write(uart.IIR, uart.FCR_ENABLE_FIFO)
    assert h.dev.read(uart.IIR) >> 6 == 3
    # 16750 check: with DLAB set and the 64-byte bit requested, IIR bit 5 stays clear.
    h.dev.write(uart.LCR, 0x80)
    h.dev.write(uart.IIR, uart.FCR_ENABLE_FIFO | 0x20)
    assert h.dev.read(uart.IIR) >> 5 == 6


def test_thre_interrupt_raise_clear_and_rearm(h: Harness) -> None:
    h.dev.write(uart.IER, uart.IER_ETBEI)
    assert h.irq.levels == [True]
    assert h.dev.read(uart.IIR) == uart.IIR_THRE
    assert h.irq.levels == [True, False]           # reading IIR acknowledged it
    assert h.dev.read(uart.IIR) == uart.IIR_NO_INT
    h.dev.write(uart.DATA, ord("x"))               # sent at once: THR empty again
    assert h.irq.levels == [True, False, True]
    assert h.dev.read(uart.IIR) == uart.IIR_THRE
    h.dev.write(uart.IER, 0)
    assert h.irq.level is False


def test_thre_reasserts_on_each_enable_so_linux_sees_no_thre_bug(h: Harness) -> None:
    # serial8250_do_startup's UART_BUG_THRE test.
    h.dev.write(uart.IER, uart.IER_ETBEI)
    iir1 = h.dev.read(uart.IIR)
    h.dev.write(uart.IER, 0)
    h.dev.write(uart.IER, uart.IER_ETBEI)
    iir = h.dev.read(uart.IIR)
    h.dev.write(uart.IER, 0)
    assert not iir1 & uart.IIR_NO_INT and not iir & uart.IIR_NO_INT
    assert h.irq.rising_edges == 2


def test_set_level_called_only_on_change(h: Harness) -> None:
    h.dev.write(uart.IER, uart.IER_ETBEI)
    for b in b"many bytes while THRE stays pending":
        h.dev.write(uart.DATA, b)
    h.dev.write(uart.SCR, 1)
    h.dev.read(uart.LSR)
    assert h.irq.levels == [True]
    h.dev.write(uart.IER, uart.IER_ETBEI | uart.IER_ERBFI)   # ETBEI already on: no new THRE
    h.dev.enqueue_input(b"ab")                               # RDA on top of THRE: still high
    assert h.irq.levels == [True]


def test_rda_interrupt_until_receiver_drained(h: Harness) -> None:
    h.dev.enqueue_input(b"ok")
    assert h.irq.levels == []                     # ERBFI off: no interrupt
    h.dev.write(uart.IER, uart.IER_ERBFI)
    assert h.irq.levels == [True]
    assert h.dev.read(uart.IIR) == uart.IIR_RDA
    assert h.dev.read(uart.DATA) == ord("o")
    assert h.irq.level is True
    assert h.dev.read(uart.DATA) == ord("k")
    assert h.irq.levels == [True, False]
    assert h.dev.read(uart.IIR) == uart.IIR_NO_INT


def test_rda_outranks_thre_and_iir_read_keeps_thre(h: Harness) -> None:
    h.dev.write(uart.IER, uart.IER_ERBFI | uart.IER_ETBEI)
    h.dev.enqueue_input(b"z")
    assert h.dev.read(uart.IIR) == uart.IIR_RDA     # does not acknowledge THRE
    h.dev.read(uart.DATA)
    assert h.dev.read(uart.IIR) == uart.IIR_THRE
    assert h.dev.read(uart.IIR) == uart.IIR_NO_INT


def test_fifo_bits_in_iir_and_fcr_clears_receiver(h: Harness) -> None:
    h.dev.write(uart.IIR, uart.FCR_ENABLE_FIFO)
    h.dev.write(uart.IER, uart.IER_ERBFI)
    h.dev.enqueue_input(b"abc")
    assert h.dev.read(uart.IIR) == uart.IIR_RDA | uart.IIR_FIFO_ENABLED
    h.dev.write(uart.IIR, uart.FCR_ENABLE_FIFO | uart.FCR_CLEAR_RX)
    assert h.dev.save().rx == b""
    assert not h.dev.read(uart.LSR) & uart.LSR_DR
    assert h.irq.level is False


def test_modem_status_deltas_interrupt_and_clear_on_read(h: Harness) -> None:
    h.dev.write(uart.IER, uart.IER_EDSSI)
    h.dev.write(uart.MCR, uart.MCR_LOOP | uart.MCR_OUT1)   # loopback: CTS/DSR/DCD drop, RI up
    assert h.irq.level is True
    assert h.dev.read(uart.IIR) == uart.IIR_MSR
    msr = h.dev.read(uart.MSR)
    assert msr == uart.MSR_RI | uart.MSR_DCTS | uart.MSR_DDSR | uart.MSR_DDCD
    assert h.irq.level is False
    h.dev.write(uart.MCR, uart.MCR_LOOP)                    # RI trailing edge
    assert h.dev.read(uart.MSR) == uart.MSR_TERI


def test_input_buffer_is_bounded_and_counts_drops(h: Harness) -> None:
    assert h.dev.enqueue_input(bytes(uart.RX_LIMIT - 1)) == uart.RX_LIMIT - 1
    assert h.dev.enqueue_input(b"xyz") == 1
    assert (len(h.dev.save().rx), h.dev.dropped) == (uart.RX_LIMIT, 2)


def test_scratch_and_lcr_registers_store_values(h: Harness) -> None:
    h.dev.write(uart.SCR, 0xA5)
    h.dev.write(uart.LCR, 0x1B)
    assert (h.dev.read(uart.SCR), h.dev.read(uart.LCR)) == (0xA5, 0x1B)


def test_state_roundtrip_through_json_behaves_identically(h: Harness) -> None:
    h.dev.write(uart.LCR, 0x83)
    h.dev.write(uart.DATA, 3)
    h.dev.write(uart.LCR, 0x03)
    h.dev.write(uart.IIR, uart.FCR_ENABLE_FIFO)
    h.dev.write(uart.IER, uart.IER_ERBFI | uart.IER_ETBEI)
    h.dev.write(uart.SCR, 0x42)
    h.dev.enqueue_input(b"\x00\xffpending")
    state = h.dev.save()
    back = via_snapshot(state)
    assert back == state and back.rx == b"\x00\xffpending"

    twin = Harness()
    twin.dev.restore(back)
    assert twin.irq.levels == [True]                  # pending interrupt re-raised
    script = [(uart.IIR, None), (uart.DATA, None), (uart.LSR, None), (uart.DATA, 0x41),
              (uart.IIR, None), (uart.SCR, None), (uart.DATA, None)]
    for dev in (h, twin):
        dev.irq.clear()
    results = []
    for dev in (h, twin):
        out = []
        for offset, value in script:
            if value is None:
                out.append(dev.dev.read(offset))
            else:
                dev.dev.write(offset, value)
        results.append((out, dev.irq.levels, bytes(dev.sent[-1:])))
    assert results[0] == results[1]


@pytest.mark.parametrize("bad", [
    {"ier": 0x10}, {"mcr": 0x20}, {"divisor": 0x10000}, {"rx": bytes(uart.RX_LIMIT + 1)},
    {"thre_pending": True, "ier": 0}, {"lcr": True}, {"msr_delta": 0x10},
])
def test_restore_refuses_invalid_state(h: Harness, bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        h.dev.restore(SerialState(**bad))                 # type: ignore[arg-type]
    assert h.irq.levels == []


def test_json_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="SerialState: unknown field"):
        codec.decode(SerialState, dict(codec.encode(SerialState()), extra=1))


accesses = st.lists(
    st.one_of(
        st.tuples(st.just("r"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("w"), st.integers(0, 7), st.integers(0, 255)),
        st.tuples(st.just("in"), st.just(0), st.integers(0, 300)),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(accesses)
def test_random_register_traffic_never_raises_and_stays_in_byte_range(ops) -> None:
    irq = RecordingIrq()
    dev = Serial(irq, lambda data: None)
    for kind, offset, value in ops:
        if kind == "r":
            assert 0 <= dev.read(offset) <= 0xFF
        elif kind == "w":
            dev.write(offset, value)
        else:
            dev.enqueue_input(bytes(value % 256 for _ in range(value % 7)))
    # Only real changes reach the line: levels strictly alternate, starting high.
    assert all(a != b for a, b in zip([False, *irq.levels], irq.levels))
    restored = Serial(RecordingIrq(), lambda data: None)
    restored.restore(via_snapshot(dev.save()))
    assert restored.save() == dev.save()
