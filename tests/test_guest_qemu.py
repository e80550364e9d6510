"""Side-by-side check: the test guest boots under QEMU (microvm and pc) on this machine's KVM.

Skipped when qemu-system-x86_64 or /dev/kvm is missing: this is a peer
check of the guest, not a test of our VMM.  The virtio tests drive QEMU's
virtio-mmio devices (modern transport) from the guest's ring 3: a raw disk
image for virtio-blk, a TAP interface in a private network namespace (root
only) for virtio-net.
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
import uuid
from collections.abc import Callable, Iterator

import pytest

from volt_spec.guest import protocol
from volt_spec.guest.build import build_guest

from .timing import scaled

QEMU = shutil.which("qemu-system-x86_64")
# QEMU is an optional side-by-side peer: without it these tests skip, and the skip reason is
# printed in the test summary (make test runs pytest with -rs; CI installs QEMU so they run).
# /dev/kvm and gcc are not optional: without them the tests fail, as every KVM test does.
pytestmark = pytest.mark.skipif(
    QEMU is None, reason="QEMU SIDE-BY-SIDE TESTS NOT RUN: qemu-system-x86_64 is not installed "
                         "(apt-get install qemu-system-x86)")


@pytest.fixture(autouse=True)
def _kvm_and_gcc() -> None:
    from .kvm_required import require_kvm
    require_kvm()
    if shutil.which("gcc") is None:
        pytest.fail("gcc is not installed: the test guest cannot be built (apt-get install gcc binutils)",
                    pytrace=False)

MICROVM = "microvm,acpi=on"
PC = "pc"
BOOT_TIMEOUT_S = 20.0
PC_TIMEOUT_S = 40.0              # SeaBIOS alone takes ~5 s here
MODERN_VIRTIO = ["-global", "virtio-mmio.force-legacy=false"]   # QEMU 7.2 microvm defaults to legacy
PEER_ADDR = "10.0.2.1"           # protocol.NET_DEFAULT_PEER: the host end of the TAP


def qemu_argv(
    elf: pathlib.Path, append: str, smp: int = 1, machine: str = MICROVM, extra: list[str] | None = None
) -> list[str]:
    return [
        str(QEMU), "-M", machine, "-enable-kvm", "-cpu", "host,-arch-capabilities",
        "-m", "128M", "-smp", str(smp), "-display", "none", "-nodefaults", "-no-reboot",
        "-serial", "stdio", "-kernel", str(elf), "-append", append, *(extra or []),
    ]


def read_lines(
    proc: subprocess.Popen[bytes], timeout: float, until: Callable[[list[str]], bool] | None = None
) -> list[str]:
    """Guest lines until the process exits or ``until(lines)`` holds; fails on timeout."""
    assert proc.stdout is not None
    timeout = scaled(timeout)
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


def boot(
    append: str, smp: int = 1, machine: str = MICROVM, timeout: float = BOOT_TIMEOUT_S,
    extra: list[str] | None = None, prefix: list[str] | None = None,
    until: Callable[[list[str]], bool] | None = None,
) -> tuple[list[str], int]:
    """Boot the guest to power-off (or until ``until(lines)``, then kill it); return its lines and exit status."""
    argv = (prefix or []) + qemu_argv(build_guest(), append, smp, machine, extra)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        lines = read_lines(proc, timeout, until)
        if until is not None and proc.poll() is None:
            proc.kill()
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
    assert [i for i, _, _ in ticks] == [1, 2, 3]
    clocks = [uptime] + [ms for _, ms, _ in ticks]
    gaps = [b - a for a, b in zip(clocks, clocks[1:])]
    assert all(99 <= g < 1000 for g in gaps), gaps     # armed from the current TSC: never early
    assert lines[-1] == protocol.POWEROFF
    assert lines.index(protocol.POWEROFF) > lines.index(f"tick 3 clock_ms={ticks[-1][1]} tsc_ms={ticks[-1][2]}")


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
    assert protocol.TICK_RE.match(guest[-2]) and guest[-2].startswith("tick 1 ") and guest[-1] == protocol.POWEROFF


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


# ---- virtio-blk / virtio-net (driven from the guest's ring 3) ----

def blk_args(image: pathlib.Path, readonly: bool = False) -> list[str]:
    drive = f"file={image},format=raw,if=none,id=d0" + (",readonly=on" if readonly else "")
    return [*MODERN_VIRTIO, "-drive", drive, "-device", "virtio-blk-device,drive=d0"]


def disk(tmp_path: pathlib.Path, content: bytes = b"", size: int = 1 << 20) -> pathlib.Path:
    image = tmp_path / "disk.img"
    image.write_bytes(content + bytes(size - len(content)))
    return image


def failures(lines: list[str]) -> list[str]:
    return [l for l in lines if l.startswith((protocol.BLK_FAIL_PREFIX, protocol.NET_FAIL_PREFIX, "VOLT-PANIC"))]


def test_blk_rw_writes_the_pattern_and_reports_its_checksum(tmp_path: pathlib.Path) -> None:
    image = disk(tmp_path)
    lines, rc = boot(protocol.cmdline(poweroff=True, blk="rw"), extra=blk_args(image))
    assert rc == 0
    assert f"blk-ok 128 {protocol.blk_checksum(128)}" in lines, lines
    data = image.read_bytes()
    assert data[:128 * protocol.SECTOR_SIZE] == protocol.blk_image(128)
    assert data[128 * protocol.SECTOR_SIZE:] == bytes(len(data) - 128 * protocol.SECTOR_SIZE), "wrote past N"
    assert lines[-1] == protocol.POWEROFF and not failures(lines)


def test_blk_rw_spans_several_requests(tmp_path: pathlib.Path) -> None:
    image = disk(tmp_path)
    lines, rc = boot(protocol.cmdline(poweroff=True, blk="rw", blk_sectors=300), extra=blk_args(image))
    assert rc == 0
    assert f"blk-ok 300 {protocol.blk_checksum(300)}" in lines, lines
    assert image.read_bytes()[:300 * protocol.SECTOR_SIZE] == protocol.blk_image(300)


def test_blk_larger_than_the_disk_is_refused(tmp_path: pathlib.Path) -> None:
    image = disk(tmp_path, size=64 * protocol.SECTOR_SIZE)
    lines, rc = boot(protocol.cmdline(poweroff=True, blk="rw"), extra=blk_args(image))
    assert rc == 0
    assert "blk-FAIL capacity 64 < 128" in lines, lines
    assert image.read_bytes() == bytes(64 * protocol.SECTOR_SIZE)


def test_blk_ro_write_is_refused_and_read_checksums_the_disk(tmp_path: pathlib.Path) -> None:
    content = os.urandom(128 * protocol.SECTOR_SIZE)
    image = disk(tmp_path, content)
    lines, rc = boot(protocol.cmdline(poweroff=True, blk="ro"), extra=blk_args(image, readonly=True))
    assert rc == 0
    assert protocol.BLK_RO_OK in lines, lines
    assert f"blk-read {protocol.blk_checksum_of(content)}" in lines, lines
    assert lines.index(protocol.BLK_RO_OK) < lines.index(f"blk-read {protocol.blk_checksum_of(content)}")
    assert image.read_bytes()[:len(content)] == content


def test_blk_ro_on_a_writable_disk_reports_the_accepted_write(tmp_path: pathlib.Path) -> None:
    content = os.urandom(128 * protocol.SECTOR_SIZE)
    image = disk(tmp_path, content)
    lines, rc = boot(protocol.cmdline(poweroff=True, blk="ro"), extra=blk_args(image))
    assert rc == 0
    assert "blk-FAIL write-accepted" in lines, lines
    assert f"blk-read {protocol.blk_checksum_of(content)}" in lines, lines
    assert image.read_bytes()[:len(content)] == content, "sector 0 is written back unchanged"


def test_blk_without_a_device_fails_cleanly() -> None:
    lines, rc = boot(protocol.cmdline(poweroff=True, blk="rw"), extra=MODERN_VIRTIO)
    assert rc == 0
    assert "blk-FAIL no-device" in lines and lines[-1] == protocol.POWEROFF, lines


def test_blk_found_through_the_command_line_without_acpi(tmp_path: pathlib.Path) -> None:
    # acpi=off: no DSDT, so QEMU's appended "virtio_mmio.device=512@0x...:<irq>" is the only source.
    image = disk(tmp_path)
    lines, _ = boot(protocol.cmdline(blk="rw"), machine="microvm,acpi=off", extra=blk_args(image),
                    until=lambda ls: any(l.startswith(("blk-", "VOLT-PANIC")) for l in ls))
    assert f"blk-ok 128 {protocol.blk_checksum(128)}" in lines, lines


def test_blk_loop_rounds_leave_the_last_round_on_disk(tmp_path: pathlib.Path) -> None:
    image = disk(tmp_path)
    rounds_seen = lambda ls: sum(1 for l in ls if protocol.BLK_ROUND_RE.match(l)) >= 4
    lines, _ = boot(protocol.cmdline(blk="rw", io_loop=True), extra=blk_args(image), until=rounds_seen)
    rounds = [(int(m.group(1)), m.group(2)) for m in map(protocol.BLK_ROUND_RE.match, lines) if m]
    assert rounds[0][0] == 1
    assert [r for r, _ in rounds] == sorted({r for r, _ in rounds}), "rounds increase"
    for r, checksum in rounds[:3]:
        assert checksum == protocol.blk_checksum(128, r)
    # Killed mid-round: a prefix of sectors holds round R+1, the rest round R >= the last printed.
    data = image.read_bytes()
    on_disk = [protocol.blk_sector_round(data[s * 512:(s + 1) * 512], s) for s in range(128)]
    assert None not in on_disk
    last = on_disk[-1]
    assert last >= rounds[-1][0]
    assert all(r in (last, last + 1) for r in on_disk)
    assert on_disk == sorted(on_disk, reverse=True)


@pytest.fixture()
def tap_netns() -> Iterator[str]:
    """A network namespace holding tap0 with the peer address: the host kernel answers ARP and ping."""
    if os.geteuid() != 0 or shutil.which("ip") is None or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root, iproute2 and /dev/net/tun for a TAP interface")
    ns = f"volt-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"],
                    ["ip", "addr", "add", f"{PEER_ADDR}/24", "dev", "tap0"],
                    ["ip", "link", "set", "tap0", "up"]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


NET_ARGS = [*MODERN_VIRTIO, "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device", "virtio-net-device,netdev=n0"]


def test_net_echo_pings_the_host_through_a_tap(tap_netns: str) -> None:
    lines, rc = boot(protocol.cmdline(poweroff=True, net=True), extra=NET_ARGS,
                     prefix=["ip", "netns", "exec", tap_netns])
    assert rc == 0
    assert "net-ok 8 8" in lines and not failures(lines), lines


def test_net_custom_addresses_and_count(tap_netns: str) -> None:
    subprocess.run(["ip", "netns", "exec", tap_netns, "ip", "addr", "add", "192.168.77.1/24", "dev", "tap0"],
                   check=True)
    lines, rc = boot(protocol.cmdline(poweroff=True, net=True, net_count=3, ip="192.168.77.9", peer="192.168.77.1"),
                     extra=NET_ARGS, prefix=["ip", "netns", "exec", tap_netns])
    assert rc == 0
    assert "net-ok 3 3" in lines, lines


def test_net_unanswered_arp_fails_after_a_bounded_wait(tap_netns: str) -> None:
    start = time.monotonic()
    lines, rc = boot(protocol.cmdline(poweroff=True, net=True, peer="10.0.2.99"), extra=NET_ARGS,
                     prefix=["ip", "netns", "exec", tap_netns])
    assert rc == 0
    assert "net-FAIL arp-timeout" in lines, lines
    assert time.monotonic() - start < BOOT_TIMEOUT_S


def test_blk_net_mem_and_ticks_run_together(tmp_path: pathlib.Path, tap_netns: str) -> None:
    image = disk(tmp_path)

    def enough(ls: list[str]) -> bool:
        count = lambda rx: sum(1 for l in ls if rx.match(l))
        return (count(protocol.BLK_ROUND_RE) >= 3 and count(protocol.NET_ROUND_RE) >= 3
                and count(protocol.MEM_OK_RE) >= 2 and count(protocol.TICK_RE) >= 2) or bool(failures(ls))

    lines, _ = boot(protocol.cmdline(ticks=0, tick_ms=300, mem_mib=8, blk="rw", net=True, io_loop=True),
                    extra=[*blk_args(image), *NET_ARGS], prefix=["ip", "netns", "exec", tap_netns], until=enough)
    assert not failures(lines), lines
    assert {m.group(1) for m in map(protocol.MEM_OK_RE.match, lines) if m} == {protocol.mem_checksum(8)}
    nets = [tuple(map(int, m.groups())) for m in map(protocol.NET_ROUND_RE.match, lines) if m]
    assert [n for n, _, _ in nets] == list(range(1, len(nets) + 1))
    assert all(sent - received <= 1 for _, sent, received in nets), nets   # at most the one in flight
    assert nets[-1][1] > nets[0][1]
    for r, checksum in [(int(m.group(1)), m.group(2)) for m in map(protocol.BLK_ROUND_RE.match, lines) if m]:
        assert checksum == protocol.blk_checksum(128, r)


def test_io_loop_survives_a_pause_longer_than_its_timeouts(tmp_path: pathlib.Path, tap_netns: str) -> None:
    # The guest TSC is the host's, so a paused VM sees time jump past every deadline; whatever
    # was in flight at the pause must still complete (ring 3 drains completions before it checks
    # deadlines, and its clock skips gaps longer than 200 ms), with no FAIL line and no lost ping.
    image = disk(tmp_path)
    monitor_path = tmp_path / "monitor.sock"
    argv = ["ip", "netns", "exec", tap_netns, *qemu_argv(
        build_guest(), protocol.cmdline(blk="rw", net=True, io_loop=True), extra=[
            *blk_args(image), *NET_ARGS, "-monitor", f"unix:{monitor_path},server=on,wait=off"])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    count = lambda ls, rx: sum(1 for l in ls if rx.match(l))
    try:
        lines = read_lines(proc, BOOT_TIMEOUT_S, until=lambda ls: count(ls, protocol.NET_ROUND_RE) >= 2)
        with socket.socket(socket.AF_UNIX) as monitor:
            monitor.connect(str(monitor_path))
            monitor.sendall(b"stop\n")
            time.sleep(2.5)              # the scenario itself: longer than the 2 s ping timeout
            monitor.sendall(b"cont\n")
            before = len(lines)
            lines += read_lines(proc, BOOT_TIMEOUT_S,
                                until=lambda ls: count(ls, protocol.NET_ROUND_RE) >= 3 or bool(failures(ls)))
    finally:
        proc.kill()
        proc.wait()
    assert not failures(lines), lines
    assert before < len(lines)
    _, sent, received = map(int, protocol.NET_ROUND_RE.match([l for l in lines if l.startswith("net-round")][-1]).groups())
    assert sent == received, lines[-5:]
