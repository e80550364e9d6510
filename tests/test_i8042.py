"""i8042 controller: Linux probe path, keyboard commands, reset, Ctrl-Alt-Del, persistence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volt_spec.devices import i8042 as kbc
from volt_spec.devices.i8042 import I8042, I8042State
from volt_spec.devices.irq import RecordingIrq

from .device_json import via_snapshot

DATA, CMD = kbc.DATA_OFFSET, kbc.COMMAND_OFFSET


class Harness:
    def __init__(self) -> None:
        self.irq = RecordingIrq()
        self.resets = 0
        self.dev = I8042(self.irq, self._reset)

    def _reset(self) -> None:
        self.resets += 1

    def drain(self) -> list[int]:
        """Read bytes the way Linux does: while the status says OBF."""
        out = []
        while self.dev.read(CMD) & kbc.STR_OBF:
            out.append(self.dev.read(DATA))
        return out

    def command(self, cmd: int, *params: int) -> list[int]:
        self.dev.write(CMD, cmd)
        for p in params:
            self.dev.write(DATA, p)
        return self.drain()


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_status_after_power_on(h: Harness) -> None:
    status = h.dev.read(CMD)
    assert status & kbc.STR_SYS
    assert not status & (kbc.STR_OBF | kbc.STR_IBF)


def test_linux_i8042_probe_sequence(h: Harness) -> None:
    assert h.drain() == []                                   # i8042_flush: nothing stale
    assert h.command(kbc.Cmd.SELF_TEST) == [kbc.SELF_TEST_OK]
    ctr = h.command(kbc.Cmd.READ_CTR)
    assert ctr == h.command(kbc.Cmd.READ_CTR) == [kbc.DEFAULT_CTR]
    new_ctr = (ctr[0] & ~kbc.CTR_KBDINT) | kbc.CTR_KBDDIS
    assert h.command(kbc.Cmd.WRITE_CTR, new_ctr) == []
    assert h.command(kbc.Cmd.READ_CTR) == [new_ctr]
    assert h.command(kbc.Cmd.KBD_TEST) == [kbc.PORT_TEST_OK]
    # With KBDINT off during the probe, nothing interrupts after the CTR write.
    interrupts_before = h.irq.rising_edges
    h.command(kbc.Cmd.SELF_TEST)
    assert h.irq.rising_edges == interrupts_before


def test_aux_probe_fails_fast_instead_of_timing_out(h: Harness) -> None:
    assert h.command(kbc.Cmd.AUX_TEST) == [kbc.AUX_TEST_CLOCK_LOW]
    assert h.command(kbc.Cmd.WRITE_AUX_OUTBUF, 0x5A) == []
    h.command(kbc.Cmd.AUX_DISABLE)
    assert h.command(kbc.Cmd.READ_CTR)[0] & kbc.CTR_AUXDIS
    h.command(kbc.Cmd.AUX_ENABLE)
    assert not h.command(kbc.Cmd.READ_CTR)[0] & kbc.CTR_AUXDIS


def test_command_port_write_sets_cmd_status_bit(h: Harness) -> None:
    h.dev.write(CMD, kbc.Cmd.READ_CTR)
    assert h.dev.read(CMD) & kbc.STR_CMDDAT
    h.drain()
    h.dev.write(DATA, kbc.KbdCmd.ENABLE)
    assert not h.dev.read(CMD) & kbc.STR_CMDDAT


def test_disable_enable_keyboard_toggle_ctr(h: Harness) -> None:
    h.command(kbc.Cmd.KBD_DISABLE)
    assert h.command(kbc.Cmd.READ_CTR)[0] & kbc.CTR_KBDDIS
    h.command(kbc.Cmd.KBD_ENABLE)
    assert not h.command(kbc.Cmd.READ_CTR)[0] & kbc.CTR_KBDDIS


def test_cpu_reset_command_calls_back(h: Harness) -> None:
    h.dev.write(CMD, kbc.Cmd.PULSE_RESET)
    assert h.resets == 1
    h.command(kbc.Cmd.WRITE_OUTPORT, 0x02)      # output port bit 0 low: reset line asserted
    assert h.resets == 2
    h.command(kbc.Cmd.WRITE_OUTPORT, 0x03)
    assert h.resets == 2
    assert h.command(kbc.Cmd.READ_OUTPORT) == [0x03]


@pytest.mark.parametrize(("sent", "reply"), [
    ([0xFF], [kbc.KBD_ACK, kbc.KBD_BAT_OK]),
    ([0xF4], [kbc.KBD_ACK]),
    ([0xF5], [kbc.KBD_ACK]),
    ([0x42], [kbc.KBD_ACK]),
    ([0xEE], [0xEE]),
    ([0xF2], [kbc.KBD_ACK, 0xAB, 0x41]),            # translated ID with XLATE on
    ([0xED, 0x07], [kbc.KBD_ACK, kbc.KBD_ACK]),     # LEDs + parameter
    ([0xF0, 0x00], [kbc.KBD_ACK, kbc.KBD_ACK, 0x41]),
    ([0xF0, 0x02], [kbc.KBD_ACK, kbc.KBD_ACK]),
])
def test_keyboard_commands_queue_responses(h: Harness, sent: list[int], reply: list[int]) -> None:
    got = []
    for b in sent:
        h.dev.write(DATA, b)
        got += h.drain()
    assert got == reply


def test_untranslated_keyboard_id(h: Harness) -> None:
    h.command(kbc.Cmd.WRITE_CTR, kbc.DEFAULT_CTR & ~kbc.CTR_XLATE)
    h.dev.write(DATA, kbc.KbdCmd.GET_ID)
    assert h.drain() == [kbc.KBD_ACK, 0xAB, 0x83]


def test_ctrl_alt_del_bytes_and_one_interrupt_per_byte(h: Harness) -> None:
    h.dev.send_ctrl_alt_del()
    assert h.irq.levels == [True, False]
    assert h.drain() == [0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D]
    assert h.irq.rising_edges == 8
    assert h.irq.level is False


def test_no_interrupt_while_kbdint_off_then_one_when_enabled(h: Harness) -> None:
    h.command(kbc.Cmd.WRITE_CTR, kbc.DEFAULT_CTR & ~kbc.CTR_KBDINT)
    h.irq.clear()
    h.dev.send_ctrl_alt_del()
    assert h.irq.levels == []
    h.dev.write(CMD, kbc.Cmd.WRITE_CTR)
    h.dev.write(DATA, kbc.DEFAULT_CTR)
    assert h.irq.rising_edges == 1
    assert h.dev.read(DATA) == 0x1D


def test_empty_data_read_and_bad_offsets_are_harmless(h: Harness) -> None:
    assert h.dev.read(DATA) == 0
    assert h.dev.read(2) == 0xFF
    h.dev.write(2, 0xFE)
    assert h.resets == 0


def test_output_buffer_is_bounded(h: Harness) -> None:
    for _ in range(kbc.OUTPUT_LIMIT):
        h.dev.send_ctrl_alt_del()
    assert len(h.dev.save().output) == kbc.OUTPUT_LIMIT
    assert h.dev.dropped == 7 * kbc.OUTPUT_LIMIT


def test_state_roundtrip_through_json_behaves_identically(h: Harness) -> None:
    h.dev.send_ctrl_alt_del()
    h.dev.read(DATA)
    h.dev.write(DATA, kbc.KbdCmd.SET_LEDS)        # leaves a keyboard parameter pending
    h.dev.write(CMD, kbc.Cmd.WRITE_CTR)           # and a controller parameter pending
    state = h.dev.save()
    back = via_snapshot(state)
    assert back == state and back.pending_kbd_cmd == kbc.KbdCmd.SET_LEDS
    twin = Harness()
    twin.dev.restore(back)
    assert twin.irq.levels == []                  # edge line: nothing held high
    for dev in (h, twin):
        dev.irq.clear()
        dev.dev.write(DATA, kbc.DEFAULT_CTR)
    assert h.drain() == twin.drain()
    assert h.irq.levels == twin.irq.levels
    assert h.dev.save() == twin.dev.save()


@pytest.mark.parametrize("bad", [
    {"ctr": 0x100}, {"pending_cmd": 0x20}, {"pending_kbd_cmd": 0xF4},
    {"output": bytes(kbc.OUTPUT_LIMIT + 1)}, {"cmd_flag": 1},
])
def test_restore_refuses_invalid_state(h: Harness, bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        h.dev.restore(I8042State(**bad))          # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([0, 4, 1, 7]), st.integers(0, 255)),
                max_size=200))
def test_random_register_traffic_never_raises_and_stays_in_byte_range(ops) -> None:
    h = Harness()
    for is_read, offset, value in ops:
        if is_read:
            assert 0 <= h.dev.read(offset) <= 0xFF
        elif value == 0 and offset == 7:
            h.dev.send_ctrl_alt_del()
        else:
            h.dev.write(offset, value)
    assert all(0 <= b <= 0xFF for b in h.dev.save().output)
    # The edge line is never left high.
    assert h.irq.level is False
