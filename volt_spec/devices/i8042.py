"""i8042 keyboard controller (ports 0x60/0x64) as a pure state machine.

Enough of an 8042 and an AT keyboard behind it for Linux's i8042 and atkbd
drivers (drivers/input/serio/i8042.c, drivers/input/keyboard/atkbd.c) to
probe it, for the guest to reboot through command 0xFE, and for the VMM to
deliver Ctrl-Alt-Del. There is no auxiliary (mouse) device: boot the guest
with `i8042.noaux i8042.nomux i8042.nopnp` as Firecracker does, so Linux does
not wait on aux-port timeouts.

Offsets are relative to port 0x60: offset 0 is the data port, offset 4 the
status (read) / command (write) port. The controller answers at once, so the
input-buffer-full status bit never sets. IRQ 1 is an edge-triggered ISA line:
it is pulsed each time a new byte becomes visible in the output buffer while
the command byte enables keyboard interrupts.
"""

from __future__ import annotations

from volt_spec import layout
from volt_spec.devices.irq import pulse
from volt_spec.devices.state import DeviceState

# Boot path: no `typing`, `collections`, `enum` or `dataclasses` at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from volt_spec.devices.irq import IrqLine

DATA_OFFSET = 0
COMMAND_OFFSET = layout.I8042_CMD_PORT - layout.I8042_DATA_PORT    # 4
PORT_SPAN = COMMAND_OFFSET + 1

# Status register bits (i8042.h I8042_STR_*).
STR_OBF = 0x01            # output buffer full: a byte waits at port 0x60
STR_IBF = 0x02            # input buffer full: never set, commands complete at once
STR_SYS = 0x04            # system flag: power-on self test passed
STR_CMDDAT = 0x08         # last write went to the command port
STR_KEYLOCK = 0x10        # set = keyboard not inhibited
STR_AUXDATA = 0x20

# Command byte bits (i8042.h I8042_CTR_*).
CTR_KBDINT = 0x01
CTR_AUXINT = 0x02
CTR_SYS = 0x04
CTR_KBDDIS = 0x10
CTR_AUXDIS = 0x20
CTR_XLATE = 0x40
# Interrupts on, POST passed, set-2 -> set-1 translation (Firecracker's default).
DEFAULT_CTR = CTR_KBDINT | CTR_SYS | CTR_XLATE


class Cmd:
    """Controller commands written to port 0x64 (i8042.h I8042_CMD_*); a namespace of ints."""

    __slots__ = ()

    READ_CTR = 0x20
    WRITE_CTR = 0x60
    AUX_DISABLE = 0xA7
    AUX_ENABLE = 0xA8
    AUX_TEST = 0xA9
    SELF_TEST = 0xAA
    KBD_TEST = 0xAB
    KBD_DISABLE = 0xAD
    KBD_ENABLE = 0xAE
    READ_OUTPORT = 0xD0
    WRITE_OUTPORT = 0xD1
    WRITE_KBD_OUTBUF = 0xD2
    WRITE_AUX_OUTBUF = 0xD3
    WRITE_AUX = 0xD4
    PULSE_RESET = 0xFE


# Commands whose parameter byte follows on port 0x60.
CMDS_WITH_PARAM = frozenset({
    Cmd.WRITE_CTR, Cmd.WRITE_OUTPORT, Cmd.WRITE_KBD_OUTBUF, Cmd.WRITE_AUX_OUTBUF, Cmd.WRITE_AUX,
})
CTRL_RAM_LAST = 0x3F          # 0x21..0x3F read the rest of the controller RAM
OUTPORT_RESET_RELEASED = 0x01  # output port bit 0 low holds the CPU in reset

# Controller replies.
SELF_TEST_OK = 0x55
PORT_TEST_OK = 0x00
AUX_TEST_CLOCK_LOW = 0x01     # "aux clock line stuck low": Linux then skips the aux port
OUTPORT_DEFAULT = 0x03        # bit 0 = CPU not in reset, bit 1 = A20 enabled


class KbdCmd:
    """Commands the guest sends to the keyboard through port 0x60 (atkbd.c ATKBD_CMD_*); ints."""

    __slots__ = ()

    SET_LEDS = 0xED
    ECHO = 0xEE
    SCANCODE_SET = 0xF0
    GET_ID = 0xF2
    SET_REP = 0xF3
    ENABLE = 0xF4
    RESET_DIS = 0xF5
    RESET_DEF = 0xF6
    RESET_BAT = 0xFF


KBD_CMDS_WITH_PARAM = frozenset({KbdCmd.SET_LEDS, KbdCmd.SCANCODE_SET, KbdCmd.SET_REP})

# Keyboard replies.
KBD_ACK = 0xFA
KBD_BAT_OK = 0xAA
KBD_ID = (0xAB, 0x83)             # MF2 keyboard, untranslated
KBD_ID_TRANSLATED = (0xAB, 0x41)  # what the controller shows with XLATE on
KBD_SET2 = 0x02
KBD_SET2_TRANSLATED = 0x41

# Scancode set 1: Ctrl, Alt, keypad Del (E0-prefixed) pressed, then released.
CTRL_ALT_DEL = bytes([0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D])

OUTPUT_LIMIT = 64             # bytes the controller queues for the guest; excess dropped


class I8042State(DeviceState):
    """Everything needed to resume the controller exactly; defaults are the power-on values."""

    __slots__ = ("ctr", "cmd_flag", "outport", "output", "pending_cmd", "pending_kbd_cmd")
    FIELDS = {
        "ctr": (int, DEFAULT_CTR),
        "cmd_flag": (bool, False),        # STR_CMDDAT: last write was to the command port
        "outport": (int, OUTPORT_DEFAULT),
        "output": (bytes, b""),           # bytes queued for the guest at port 0x60
        "pending_cmd": (int, 0),          # controller command waiting for its parameter (0 = none)
        "pending_kbd_cmd": (int, 0),      # keyboard command waiting for its parameter (0 = none)
    }


class I8042:
    """The controller; `on_reset` is called when the guest pulses the CPU reset line."""

    State = I8042State

    def __init__(self, irq: IrqLine, on_reset: Callable[[], None]) -> None:
        self._irq = irq
        self._on_reset = on_reset
        self._ctr = DEFAULT_CTR
        self._cmd_flag = False
        self._outport = OUTPORT_DEFAULT
        # Output buffer. bytearray front deletion is O(1) in CPython (a start offset moves).
        self._output = bytearray()
        self._pending_cmd = 0
        self._pending_kbd_cmd = 0
        self.dropped = 0

    # -- predicates and the output buffer -------------------------------------

    def _kbd_int_enabled(self) -> bool:
        return bool(self._ctr & CTR_KBDINT)

    def _translated(self) -> bool:
        return bool(self._ctr & CTR_XLATE)

    def _status(self) -> int:
        status = STR_SYS | STR_KEYLOCK
        if self._output:
            status |= STR_OBF
        if self._cmd_flag:
            status |= STR_CMDDAT
        return status

    def _push(self, data: bytes | tuple[int, ...]) -> None:
        """Queue bytes for the guest; interrupt if one becomes visible at port 0x60."""
        was_empty = not self._output
        for value in data:
            if len(self._output) >= OUTPUT_LIMIT:
                self.dropped += 1
                continue
            self._output.append(int(value))
        if was_empty and self._output:
            self._signal()

    def _signal(self) -> None:
        if self._kbd_int_enabled():
            pulse(self._irq)

    # -- guest side ------------------------------------------------------------

    def read(self, offset: int) -> int:
        """A guest `inb` from 0x60 + offset."""
        match offset:
            case 0:
                if not self._output:
                    return 0      # stale buffer; Linux checks OBF first
                value = self._output[0]
                del self._output[0]
                if self._output:
                    self._signal()    # the next byte is now visible
                return value
            case 4:
                return self._status()
            case _:
                return 0xFF

    def write(self, offset: int, value: int) -> None:
        """A guest `outb` to 0x60 + offset."""
        value &= 0xFF
        match offset:
            case 0:
                self._cmd_flag = False
                self._write_data(value)
            case 4:
                self._cmd_flag = True
                self._pending_cmd = 0
                self._command(value)
            case _:
                pass

    def _command(self, cmd: int) -> None:
        match cmd:
            case _ if cmd in CMDS_WITH_PARAM:
                self._pending_cmd = cmd
            case Cmd.READ_CTR:
                self._push((self._ctr,))
            case _ if Cmd.READ_CTR < cmd <= CTRL_RAM_LAST:
                self._push((0,))      # rest of the controller RAM: unused, reads 0
            case Cmd.AUX_DISABLE:
                self._ctr |= CTR_AUXDIS
            case Cmd.AUX_ENABLE:
                self._ctr &= ~CTR_AUXDIS
            case Cmd.AUX_TEST:
                self._push((AUX_TEST_CLOCK_LOW,))
            case Cmd.SELF_TEST:
                self._push((SELF_TEST_OK,))
            case Cmd.KBD_TEST:
                self._push((PORT_TEST_OK,))
            case Cmd.KBD_DISABLE:
                self._ctr |= CTR_KBDDIS
            case Cmd.KBD_ENABLE:
                self._ctr &= ~CTR_KBDDIS
            case Cmd.READ_OUTPORT:
                self._push((self._outport,))
            case Cmd.PULSE_RESET:
                self._on_reset()
            case _:
                pass      # unknown or unmodelled command: ignored, like a real 8042

    def _write_data(self, value: int) -> None:
        cmd, self._pending_cmd = self._pending_cmd, 0
        match cmd:
            case Cmd.WRITE_CTR:
                self._write_ctr(value)
            case Cmd.WRITE_OUTPORT:
                self._outport = value
                if not value & OUTPORT_RESET_RELEASED:
                    self._on_reset()
            case Cmd.WRITE_KBD_OUTBUF:
                self._push((value,))
            case Cmd.WRITE_AUX_OUTBUF | Cmd.WRITE_AUX:
                pass      # no aux device behind the controller
            case _:
                self._keyboard(value)

    def _write_ctr(self, value: int) -> None:
        enabling = value & CTR_KBDINT and not self._ctr & CTR_KBDINT
        self._ctr = value
        if enabling and self._output:
            self._signal()    # a byte was already waiting: now it interrupts

    def _keyboard(self, value: int) -> None:
        """A byte for the keyboard itself (atkbd.c command set)."""
        if self._pending_kbd_cmd:
            cmd, self._pending_kbd_cmd = self._pending_kbd_cmd, 0
            if cmd == KbdCmd.SCANCODE_SET and value == 0:
                # Parameter 0 asks for the current set: ACK then the set number.
                self._push((KBD_ACK, KBD_SET2_TRANSLATED if self._translated() else KBD_SET2))
            else:
                self._push((KBD_ACK,))
            return
        match value:
            case _ if value in KBD_CMDS_WITH_PARAM:
                self._pending_kbd_cmd = value
                self._push((KBD_ACK,))
            case KbdCmd.ECHO:
                self._push((KbdCmd.ECHO,))
            case KbdCmd.GET_ID:
                self._push((KBD_ACK, *(KBD_ID_TRANSLATED if self._translated() else KBD_ID)))
            case KbdCmd.RESET_BAT:
                self._push((KBD_ACK, KBD_BAT_OK))
            case _:
                self._push((KBD_ACK,))    # F4/F5/F6 and anything unknown: acknowledged

    # -- host side -------------------------------------------------------------

    def send_ctrl_alt_del(self) -> None:
        """Queue Ctrl-Alt-Del (set 1 make + break codes) for the guest."""
        self._push(CTRL_ALT_DEL)

    # -- persistence -------------------------------------------------------------

    def save(self) -> I8042State:
        return I8042State(
            ctr=self._ctr, cmd_flag=self._cmd_flag, outport=self._outport,
            output=bytes(self._output), pending_cmd=self._pending_cmd,
            pending_kbd_cmd=self._pending_kbd_cmd,
        )

    def restore(self, state: I8042State) -> None:
        """Load `state` (validated first).

        IRQ 1 is edge-triggered and this device never holds it high, so there
        is no level to re-raise: an interrupt in flight lives in the saved PIC.
        """
        _check_i8042_state(state)
        self._ctr = state.ctr
        self._cmd_flag = state.cmd_flag
        self._outport = state.outport
        self._output = bytearray(state.output)
        self._pending_cmd = state.pending_cmd
        self._pending_kbd_cmd = state.pending_kbd_cmd


def _check_i8042_state(state: I8042State) -> None:
    for name in ("ctr", "outport", "pending_cmd", "pending_kbd_cmd"):
        value = getattr(state, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFF:
            raise ValueError(f"i8042 state: {name}={value!r} out of range")
    if not isinstance(state.cmd_flag, bool):
        raise ValueError(f"i8042 state: cmd_flag={state.cmd_flag!r} is not a bool")
    if state.pending_cmd and state.pending_cmd not in CMDS_WITH_PARAM:
        raise ValueError(f"i8042 state: pending_cmd={state.pending_cmd:#x} takes no parameter")
    if state.pending_kbd_cmd and state.pending_kbd_cmd not in KBD_CMDS_WITH_PARAM:
        raise ValueError(f"i8042 state: pending_kbd_cmd={state.pending_kbd_cmd:#x} takes no parameter")
    if not isinstance(state.output, bytes) or len(state.output) > OUTPUT_LIMIT:
        raise ValueError("i8042 state: output must be bytes of at most OUTPUT_LIMIT")
