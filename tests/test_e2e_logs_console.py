"""`volt logs -f` ends with the VM's instance; `volt console` on a real terminal (a pty) shows the
guest's lines starting at the left; both against the test guest on real KVM."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time

import pytest

from .timing import scaled
from .voltcli import spec_text, write

pytestmark = pytest.mark.hwlane


def read_until(fd: int, marker: bytes, timeout: float = 30.0) -> bytes:
    """Read `fd` (a pipe or a pty's master) until `marker` has been seen."""
    deadline, seen = time.monotonic() + scaled(timeout), b""
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} not seen within {scaled(timeout)} s: {seen[-500:]!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:              # a pty's master once its last slave is closed
                chunk = b""
            assert chunk, f"end of output before {marker!r}: {seen[-500:]!r}"
            seen += chunk
    return seen


def test_logs_follow_ends_once_the_vm_has_stopped_with_all_its_output(volt, tmp_path):
    volt("apply", write(tmp_path / "lf.yaml", spec_text("lf", cmdline="volt.ticks=0 volt.tick_ms=50")))
    volt.wait_state("lf", "running")
    proc = subprocess.Popen([sys.executable, "-m", "volt_spec", "logs", "lf", "-f"], env=volt.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = read_until(proc.stdout.fileno(), b"tick 3 ")
        assert proc.poll() is None                    # following while the VM runs
        assert volt("stop", "lf").stdout.strip() == "vm/lf stopped (powered off)"
        assert proc.wait(timeout=scaled(20)) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    out = (seen + proc.stdout.read()).decode()
    assert out == volt.log("lf")                      # all of it, once
    assert out.endswith("VOLT-CTRL-ALT-DEL\nVOLT-POWEROFF\n"), out[-300:]     # its last words
    # Not running now: -f prints what there is and returns at once.
    again = volt("logs", "lf", "-f", "--tail", "1", timeout=30)
    assert again.stdout == "VOLT-POWEROFF\n"


def test_console_on_a_terminal_turns_the_guests_bare_lf_into_cr_lf(volt, tmp_path):
    volt("apply", write(tmp_path / "tty.yaml", spec_text("tty", cmdline="volt.ticks=0 volt.tick_ms=50")))
    volt.wait_log("tty", "tick 1 ")
    raw = (volt.home / "vms" / "tty" / "console.log").read_bytes()
    assert b"\n" in raw and b"\r\n" not in raw       # the guest ends its lines with a bare LF
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "volt_spec", "console", "tty"], env=volt.env,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        seen = read_until(master, b"detach with Ctrl-]\r\n")
        seen += read_until(master, b"\n", timeout=10)    # a first whole line (the rest of one)
        seen += read_until(master, b"\n", timeout=10)    # and one more
        assert not re.search(rb"(?<!\r)\n", seen), seen
        assert re.search(rb"\r\ntick \d+ clock_ms=\d+ tsc_ms=\d+\r\n", seen), seen
        os.write(master, b"\x1d")                       # Ctrl-] detaches
        assert proc.wait(timeout=scaled(10)) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    assert volt.state("tty")["state"] == "running"    # detaching leaves the VM alone
