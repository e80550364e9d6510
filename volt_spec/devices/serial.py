"""16550A UART (COM1) as a pure register state machine.

Semantics follow the TI/National 16550A datasheet and what Linux's 8250 driver
(drivers/tty/serial/8250/8250_port.c) relies on:

* `autoconfig()` checks that IER keeps exactly its low 4 bits, runs the
  loopback test (MCR = LOOP|RTS|OUT2 must read back MSR[7:4] = DCD|CTS = 0x90)
  and identifies a 16550A from IIR[7:6] = 0b11 after enabling the FIFOs and
  IIR bit 5 clear (no 64-byte FIFO, so not a 16750).
* `serial8250_do_startup()` checks that a transmitter-empty (THRE) interrupt is
  re-asserted each time IER.ETBEI is enabled while THR is empty; otherwise it
  flags UART_BUG_THRE and falls back to polling.

Transmission is instantaneous: every byte written to THR is handed to `out`
immediately, so LSR always reports THRE|TEMT. The device holds no threads;
the VMM serialises calls (vCPU exits and host input) and owns the IRQ line.
"""

from __future__ import annotations

from volt_spec.devices.irq import LevelLatch
from volt_spec.devices.state import DeviceState

# Boot path: no `typing`, `collections` or `dataclasses` at run time (see devices/state.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from volt_spec.devices.irq import IrqLine

# Register offsets from the base port (datasheet table 2).
DATA = 0          # RBR (read) / THR (write); DLL when LCR.DLAB = 1
IER = 1           # interrupt enable; DLM when LCR.DLAB = 1
IIR = 2           # interrupt identification (read) / FCR (write)
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7
REGISTER_COUNT = 8

# IER bits. Only the low nibble exists on a 16550A (Linux probes that).
IER_ERBFI = 0x01          # received data available
IER_ETBEI = 0x02          # transmitter holding register empty
IER_ELSI = 0x04           # receiver line status
IER_EDSSI = 0x08          # modem status
IER_MASK = 0x0F

# IIR values, highest priority first (datasheet table 4). Bit 0 set = nothing pending.
IIR_NO_INT = 0x01
IIR_RDA = 0x04
IIR_THRE = 0x02
IIR_MSR = 0x00
IIR_FIFO_ENABLED = 0xC0   # IIR[7:6] mirror FCR[0]

# FCR bits.
FCR_ENABLE_FIFO = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
FCR_TRIGGER_MASK = 0xC0   # RX trigger level: stored, not modelled (data interrupts at once)

LCR_DLAB = 0x80

# MCR bits.
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

# LSR bits.
LSR_DR = 0x01
LSR_THRE = 0x20
LSR_TEMT = 0x40

# MSR bits: deltas in the low nibble, line states in the high nibble.
MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_DELTA_MASK = 0x0F
# Outside loopback the "modem" is always present and ready.
MSR_IDLE_LINES = MSR_DCD | MSR_DSR | MSR_CTS

# Power-on values in the style of rust-vmm vm-superio: 8N1, 9600 baud, OUT2 on.
DEFAULT_DIVISOR = 12      # 115200 / 12 = 9600 baud
DEFAULT_LCR = 0x03
DEFAULT_MCR = MCR_OUT2

RX_LIMIT = 64 * 1024      # host input buffered at most; the rest is dropped and counted


class SerialState(DeviceState):
    """Everything needed to resume the UART exactly; defaults are the power-on values."""

    __slots__ = ("divisor", "ier", "fcr", "lcr", "mcr", "msr_delta", "scr", "thre_pending", "rx",
                 "dropped")
    FIELDS = {
        "divisor": (int, DEFAULT_DIVISOR),
        "ier": (int, 0),
        "fcr": (int, 0),
        "lcr": (int, DEFAULT_LCR),
        "mcr": (int, DEFAULT_MCR),
        "msr_delta": (int, 0),
        "scr": (int, 0),
        "thre_pending": (bool, False),
        "rx": (bytes, b""),               # the RX FIFO, oldest byte first
        "dropped": (int, 0),
    }


def _loopback_lines(mcr: int) -> int:
    """MSR line bits in loopback: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD (datasheet 8.6)."""
    lines = 0
    if mcr & MCR_RTS:
        lines |= MSR_CTS
    if mcr & MCR_DTR:
        lines |= MSR_DSR
    if mcr & MCR_OUT1:
        lines |= MSR_RI
    if mcr & MCR_OUT2:
        lines |= MSR_DCD
    return lines


def _msr_lines(mcr: int) -> int:
    return _loopback_lines(mcr) if mcr & MCR_LOOP else MSR_IDLE_LINES


def _msr_deltas(old: int, new: int) -> int:
    """Delta bits for a change of line bits; RI reports only its trailing (1->0) edge."""
    changed = old ^ new
    delta = 0
    if changed & MSR_CTS:
        delta |= MSR_DCTS
    if changed & MSR_DSR:
        delta |= MSR_DDSR
    if changed & MSR_DCD:
        delta |= MSR_DDCD
    if old & MSR_RI and not new & MSR_RI:
        delta |= MSR_TERI
    return delta


class Serial:
    """A 16550A at 8 consecutive ports; `out` receives each transmitted byte."""

    State = SerialState

    def __init__(self, irq: IrqLine, out: Callable[[bytes], None]) -> None:
        self._irq = LevelLatch(irq)
        self._out = out
        self._divisor = DEFAULT_DIVISOR
        self._ier = 0
        self._fcr = 0
        self._lcr = DEFAULT_LCR
        self._mcr = DEFAULT_MCR
        self._msr_delta = 0
        self._scr = 0
        self._thre_pending = False
        # RX FIFO. bytearray front deletion is O(1) in CPython (it moves a start offset).
        self._rx = bytearray()
        self.dropped = 0          # host input bytes lost because the buffer was full

    # -- predicates -------------------------------------------------------

    def _dlab(self) -> bool:
        return bool(self._lcr & LCR_DLAB)

    def _loopback(self) -> bool:
        return bool(self._mcr & MCR_LOOP)

    def _rda_pending(self) -> bool:
        return bool(self._ier & IER_ERBFI) and bool(self._rx)

    def _msr_pending(self) -> bool:
        return bool(self._ier & IER_EDSSI) and bool(self._msr_delta)

    def _iir(self) -> int:
        """Highest-priority pending source (no line-status errors are ever generated)."""
        fifo = IIR_FIFO_ENABLED if self._fcr & FCR_ENABLE_FIFO else 0
        if self._rda_pending():
            return IIR_RDA | fifo
        if self._thre_pending:
            return IIR_THRE | fifo
        if self._msr_pending():
            return IIR_MSR | fifo
        return IIR_NO_INT | fifo

    def _update_irq(self) -> None:
        # The line follows "any interrupt pending" (as in QEMU and vm-superio; the PC's
        # OUT2 gate is not modelled). LevelLatch forwards only real changes.
        self._irq.update(not self._iir() & IIR_NO_INT)

    # -- guest side ---------------------------------------------------------

    def read(self, offset: int) -> int:
        """A guest `inb` from base + offset."""
        match offset:
            case 0 if self._dlab():
                return self._divisor & 0xFF
            case 1 if self._dlab():
                return self._divisor >> 8
            case 0:
                value = self._pop_rx()
                self._update_irq()
                return value
            case 1:
                return self._ier
            case 2:
                value = self._iir()
                # Reading IIR while it reports THRE acknowledges that interrupt.
                if value & ~IIR_FIFO_ENABLED == IIR_THRE:
                    self._thre_pending = False
                    self._update_irq()
                return value
            case 3:
                return self._lcr
            case 4:
                return self._mcr
            case 5:
                return LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0)
            case 6:
                value = _msr_lines(self._mcr) | self._msr_delta
                self._msr_delta = 0       # reading MSR clears the delta bits
                self._update_irq()
                return value
            case 7:
                return self._scr
            case _:
                return 0xFF

    def write(self, offset: int, value: int) -> None:
        """A guest `outb` to base + offset."""
        value &= 0xFF
        match offset:
            case 0 if self._dlab():
                self._divisor = (self._divisor & 0xFF00) | value
            case 1 if self._dlab():
                self._divisor = (self._divisor & 0x00FF) | (value << 8)
            case 0:
                self._transmit(value)
            case 1:
                self._write_ier(value)
            case 2:
                self._write_fcr(value)
            case 3:
                self._lcr = value
            case 4:
                self._write_mcr(value)
            case 7:
                self._scr = value
            case _:
                pass            # LSR and MSR are read-only (factory test writes ignored)
        self._update_irq()

    def _transmit(self, value: int) -> None:
        if self._loopback():
            # Loopback: the serializer output is wired to the receiver, nothing leaves.
            self._push_rx(value)
        else:
            self._out(bytes([value]))
        # Writing THR clears the THRE interrupt; the byte is gone at once, so THR
        # is empty again and the interrupt is re-armed.
        self._thre_pending = bool(self._ier & IER_ETBEI)

    def _write_ier(self, value: int) -> None:
        old = self._ier
        self._ier = value & IER_MASK
        if self._ier & IER_ETBEI and not old & IER_ETBEI:
            # Enabling ETBEI with THR empty raises THRE (8250_port.c UART_BUG_THRE test).
            self._thre_pending = True
        elif not self._ier & IER_ETBEI:
            self._thre_pending = False

    def _write_fcr(self, value: int) -> None:
        if (value ^ self._fcr) & FCR_ENABLE_FIFO or value & FCR_CLEAR_RX:
            # Toggling FIFO mode also resets the FIFOs (datasheet FCR bit 0).
            self._rx.clear()
        self._fcr = value & (FCR_ENABLE_FIFO | FCR_TRIGGER_MASK)

    def _write_mcr(self, value: int) -> None:
        old_lines = _msr_lines(self._mcr)
        self._mcr = value & MCR_MASK
        self._msr_delta |= _msr_deltas(old_lines, _msr_lines(self._mcr))

    def _pop_rx(self) -> int:
        """The oldest received byte (0 when empty, as an idle RBR reads)."""
        if not self._rx:
            return 0
        value = self._rx[0]
        del self._rx[0]
        return value

    def _push_rx(self, value: int) -> bool:
        if len(self._rx) >= RX_LIMIT:
            self.dropped += 1
            return False
        self._rx.append(value)
        return True

    # -- host side ---------------------------------------------------------

    def enqueue_input(self, data: bytes) -> int:
        """Queue bytes typed on the host for the guest; returns how many were accepted."""
        room = max(0, RX_LIMIT - len(self._rx))
        accepted = data[:room]
        self._rx.extend(accepted)
        self.dropped += len(data) - len(accepted)
        self._update_irq()
        return len(accepted)

    # -- persistence -------------------------------------------------------

    def save(self) -> SerialState:
        return SerialState(
            divisor=self._divisor, ier=self._ier, fcr=self._fcr, lcr=self._lcr,
            mcr=self._mcr, msr_delta=self._msr_delta, scr=self._scr,
            thre_pending=self._thre_pending, rx=bytes(self._rx), dropped=self.dropped,
        )

    def restore(self, state: SerialState) -> None:
        """Load `state` (validated first) and drive the interrupt level it implies."""
        _check_serial_state(state)
        self._divisor = state.divisor
        self._ier = state.ier
        self._fcr = state.fcr
        self._lcr = state.lcr
        self._mcr = state.mcr
        self._msr_delta = state.msr_delta
        self._scr = state.scr
        self._thre_pending = state.thre_pending
        self._rx = bytearray(state.rx)
        self.dropped = state.dropped
        self._update_irq()


def _check_serial_state(state: SerialState) -> None:
    def byte(name: str, value: object, mask: int = 0xFF) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value & ~mask or value < 0:
            raise ValueError(f"serial state: {name}={value!r} out of range")

    byte("divisor", state.divisor, 0xFFFF)
    byte("ier", state.ier, IER_MASK)
    byte("fcr", state.fcr, FCR_ENABLE_FIFO | FCR_TRIGGER_MASK)
    byte("lcr", state.lcr)
    byte("mcr", state.mcr, MCR_MASK)
    byte("msr_delta", state.msr_delta, MSR_DELTA_MASK)
    byte("scr", state.scr)
    if not isinstance(state.thre_pending, bool):
        raise ValueError(f"serial state: thre_pending={state.thre_pending!r} is not a bool")
    if state.thre_pending and not state.ier & IER_ETBEI:
        raise ValueError("serial state: THRE pending with ETBEI disabled")
    if not isinstance(state.rx, bytes) or len(state.rx) > RX_LIMIT:
        raise ValueError("serial state: rx must be bytes of at most RX_LIMIT")
    if not isinstance(state.dropped, int) or state.dropped < 0:
        raise ValueError(f"serial state: dropped={state.dropped!r} invalid")
