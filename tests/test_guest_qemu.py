"""Side-by-side check: the test guest boots under QEMU (microvm and pc) on this machine's KVM.

Skipped when qemu-system-x86_64 or /dev/kvm is missing: this is a peer
check of the guest, not a test of our VMM.
"""

from __future__ import annotations

import os
import pathlib
import selectors
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable

import pytest

from volt_spec.guest import protocol
from volt_spec.guest.build import build_guest

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed"),
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="/dev/kvm is not usable"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed"),
]

MICROVM = "microvm,acpi=on"
PC = "pc"
BOOT_TIMEOUT_S = 20.0
PC_TIMEOUT_S = 40.0              # SeaBIOS alone takes ~5 s here


def qemu_argv(elf: pathlib.Path, append: str, smp: int = 1, machine: str = MICROVM) -> list[str]:
    return [
        str(QEMU), "-M", machine, "-enable-kvm", "-cpu", "host,-arch-capabilities",
        "-m", "128M", "-smp", str(smp), "-display", "none", "-nodefaults", "-no-reboot",
        "-serial", "stdio", "-kernel", str(elf), "-append", append,
    ]


def read_lines(
    proc: subprocess.Popen[bytes], timeout: float, until: Callable[[list[str]], bool] | None = None
) -> list[str]:
    """Guest lines until the process exits or ``until(lines)`` holds; fails on timeout."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"guest timed out after {timeout} s; output so far: {lines!r}")
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                return lines
            buf += chunk
            *complete, buf = buf.split(b"\n")
            lines += [c.decode(errors="replace").strip() for c in complete]
            if until is not None and until(lines):
                return lines


def boot(append: str, smp: int = 1, machine: str = MICROVM, timeout: float = BOOT_TIMEOUT_S) -> tuple[list[str], int]:
    """Boot the guest to power-off; return its lines and QEMU's exit status."""
    proc = subprocess.Popen(qemu_argv(build_guest(), append, smp, machine), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        lines = read_lines(proc, timeout)
        return lines, proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def ready(lines: list[str]) -> tuple[int, int, int]:
    matches = [m for m in map(protocol.READY_RE.match, lines) if m]
    assert len(matches) == 1, lines
    uptime, cpus, mem = (int(g) for g in matches[0].groups())
    return uptime, cpus, mem


def test_one_cpu_ticks_then_powers_off() -> None:
    lines, rc = boot(protocol.cmdline(ticks=3, tick_ms=100, poweroff=True))
    assert rc == 0
    uptime, cpus, mem = ready(lines)
    assert (cpus, mem) == (1, 128)
    assert uptime < 1000, "boot to ready must be well under a second"
    ticks = [tuple(map(int, m.groups())) for m in map(protocol.TICK_RE.match, lines) if m]
    assert [i for i, _ in ticks] == [1, 2, 3]
    clocks = [uptime] + [ms for _, ms in ticks]
    gaps = [b - a for a, b in zip(clocks, clocks[1:])]
    assert all(99 <= g < 1000 for g in gaps), gaps     # armed from the current TSC: never early
    assert lines[-1] == protocol.POWEROFF
    assert lines.index(protocol.POWEROFF) > lines.index(f"tick 3 clock_ms={ticks[-1][1]}")


def test_four_cpus_report_before_ready() -> None:
    lines, rc = boot(protocol.cmdline(poweroff=True), smp=4)
    assert rc == 0
    _, cpus, mem = ready(lines)
    assert (cpus, mem) == (4, 128)
    up = sorted(int(m.group(1)) for m in map(protocol.CPU_UP_RE.match, lines) if m)
    assert up == [1, 2, 3]
    ready_at = next(i for i, l in enumerate(lines) if l.startswith("VOLT-READY"))
    assert all(protocol.CPU_UP_RE.match(l) for l in lines[:ready_at])
    assert not any(protocol.TICK_RE.match(l) for l in lines), "no ticks without volt.ticks"
    assert lines[ready_at + 1:] == [protocol.POWEROFF]


def test_memory_workload_runs_in_ring3_with_stable_checksum() -> None:
    lines, rc = boot(protocol.cmdline(ticks=2, tick_ms=700, mem_mib=8, poweroff=True))
    assert rc == 0
    sums = [m.group(1) for m in map(protocol.MEM_OK_RE.match, lines) if m]
    assert len(sums) >= 2, lines
    assert set(sums) == {protocol.mem_checksum(8)}
    # Ticks kept coming while ring 3 ran (the timer interrupts user mode).
    assert [l.split()[1] for l in lines if protocol.TICK_RE.match(l)] == ["1", "2"]
    assert not any(l.startswith(("mem-CORRUPT", "VOLT-PANIC")) for l in lines)


def test_memory_workload_too_large_is_refused() -> None:
    lines, rc = boot(protocol.cmdline(ticks=1, tick_ms=50, mem_mib=4096, poweroff=True))
    assert rc == 0
    assert any(l.startswith(protocol.MEM_ERROR_PREFIX + "volt.mem=4096") for l in lines), lines
    assert not any(protocol.MEM_OK_RE.match(l) for l in lines)


def test_pc_machine_powers_off_through_pm1a() -> None:
    lines, rc = boot(protocol.cmdline(ticks=1, tick_ms=50, poweroff=True), smp=2, machine=PC, timeout=PC_TIMEOUT_S)
    assert rc == 0
    guest = lines[next(i for i, l in enumerate(lines) if protocol.CPU_UP_RE.match(l)):]
    _, cpus, mem = ready(guest)
    assert (cpus, mem) == (2, 128)
    assert guest[-2:] == ["tick 1 clock_ms=" + guest[-2].split("=")[-1], protocol.POWEROFF]


def test_ctrl_alt_del_powers_off_on_pc() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "monitor.sock")
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            listener.listen(1)
            listener.settimeout(PC_TIMEOUT_S)
            argv = qemu_argv(build_guest(), protocol.cmdline(), machine=PC) + ["-monitor", f"unix:{path}"]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            try:
                monitor, _ = listener.accept()
                with monitor:
                    lines = read_lines(proc, PC_TIMEOUT_S, until=lambda ls: any(l.startswith("VOLT-READY") for l in ls))
                    monitor.sendall(b"sendkey ctrl-alt-delete\n")
                    lines += read_lines(proc, BOOT_TIMEOUT_S)
                assert proc.wait(timeout=BOOT_TIMEOUT_S) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert lines[-2:] == [protocol.CTRL_ALT_DEL, protocol.POWEROFF], lines
