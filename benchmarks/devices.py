"""virtio device throughput of the test guest: volt-vmm (with and without ioeventfd/irqfd) vs QEMU.

The guest measures itself in ring 3 (src/blkbench.c, src/net.c; times from its
TSC at the kvmclock-derived rate) and prints one line per phase:
  - virtio-blk (`volt.blk=bench`): sequential write and read of one region in
    128 KiB requests (MB/s), then random 4 KiB reads and writes (IOPS), with up
    to 5 requests in flight and one QueueNotify per batch;
  - virtio-net (`volt.net=flood`): ICMP echo requests to a tap peer in a private
    network namespace, up to 8 unanswered, replies counted (packets per second,
    counting the echo replies received: each one is a request out and a reply in).

Each backend boots the SAME guest ELF on the SAME disk file (page-cached on the
host: these are device-path numbers, not disk numbers).  Backends:
  - volt-vmm, queue notifications by ioeventfd and interrupts by irqfd,
  - volt-vmm with --no-ioeventfd --no-irqfd (every notify is an MMIO exit served
    on the vCPU thread),
  - qemu-system-x86_64 -M microvm (when installed), virtio-mmio modern, cache=writeback.

usage: python benchmarks/devices.py [--runs N] [--blk-ms MS] [--net-count N] [--no-qemu] [--no-net]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from volt_spec.guest import protocol  # noqa: E402
from volt_spec.guest.build import build_guest  # noqa: E402
from volt_spec.kvm.flavour import kvm_flavour  # noqa: E402
from volt_spec.runner.vmctl import vmm_command  # noqa: E402

DISK_MIB = 64                      # the sequential region: the whole disk
GUEST_MIB = 256
TAP = "vbench0"
PEER_CIDR = f"{protocol.NET_DEFAULT_PEER}/24"
RUN_TIMEOUT_S = 120
MB = 1e6                           # throughput in decimal MB/s, as fio and dd print it
SEQ_PHASES = ("seqwrite", "seqread")
RAND_PHASES = ("randread4k", "randwrite4k")


class BenchError(RuntimeError):
    """A guest run ended without its benchmark lines."""


@dataclass(frozen=True)
class Backend:
    """One way of running the guest: a label, and argv() builds its command line."""

    label: str
    kind: str                      # "volt" or "qemu"
    extra: tuple[str, ...] = ()

    def argv(self, guest: str, cmdline: str, disk: str | None, tap: str | None) -> list[str]:
        if self.kind == "volt":
            cmd = [*vmm_command(), "--kernel", guest, "--memory", str(GUEST_MIB), "--cmdline", cmdline]
            if disk:
                cmd += ["--disk", disk]
            if tap:
                cmd += ["--net", f"tap={tap}"]
            return cmd + list(self.extra)
        cmd = [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
               "-M", "microvm,acpi=on", "-enable-kvm", "-cpu", "host,-arch-capabilities",
               "-m", f"{GUEST_MIB}M", "-nodefaults", "-no-reboot", "-nographic", "-serial", "stdio",
               "-kernel", guest, "-append", cmdline, "-global", "virtio-mmio.force-legacy=false"]
        if disk:
            cmd += ["-drive", f"file={disk},format=raw,if=none,id=d0,cache=writeback",
                    "-device", "virtio-blk-device,drive=d0"]
        if tap:
            cmd += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                    "-device", "virtio-net-device,netdev=n0"]
        return cmd


@dataclass
class Samples:
    """Per-metric samples of one backend, one value per run."""

    values: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, metric: str, value: float) -> None:
        self.values.setdefault(metric, []).append(value)


def run_guest(argv: list[str], netns: str | None = None) -> list[str]:
    """Run one VM to power-off; its console lines."""
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                         stdin=subprocess.DEVNULL, check=False)
    lines = res.stdout.splitlines()
    if any(ln.startswith((protocol.BLK_FAIL_PREFIX, protocol.NET_FAIL_PREFIX, "VOLT-PANIC")) for ln in lines):
        raise BenchError(f"guest failed: {[ln for ln in lines if 'FAIL' in ln or 'PANIC' in ln]}")
    if res.returncode != 0:
        raise BenchError(f"exit {res.returncode}: {' '.join(argv)}\n{res.stderr[-2000:]}")
    return lines


def blk_run(backend: Backend, guest: str, disk: str, blk_ms: int, into: Samples) -> None:
    lines = run_guest(backend.argv(guest, protocol.bench_cmdline(blk=True, blk_ms=blk_ms), disk, None))
    seen, chunk = set(), 256
    for line in lines:
        if m := protocol.BLK_BENCH_START_RE.match(line):
            chunk = int(m.group(2))
        elif m := protocol.BLK_BENCH_BYTES_RE.match(line):
            phase, nbytes, ns = m.group(1), int(m.group(2)), int(m.group(3))
            into.add(f"{phase} MB/s", nbytes / ns * 1e9 / MB)
            into.add(f"{phase} us/request", ns / 1e3 / (nbytes / (protocol.SECTOR_SIZE * chunk)))
            seen.add(phase)
        elif m := protocol.BLK_BENCH_OPS_RE.match(line):
            phase, ops, ns = m.group(1), int(m.group(2)), int(m.group(3))
            into.add(f"{phase} IOPS", ops / ns * 1e9)
            into.add(f"{phase} us/request", ns / 1e3 / ops)
            seen.add(phase)
    if seen != set(SEQ_PHASES + RAND_PHASES):
        raise BenchError(f"{backend.label}: missing blk-bench phases, got {sorted(seen)}: {lines[-5:]}")


def net_run(backend: Backend, guest: str, netns: str, count: int, into: Samples) -> None:
    cmdline = protocol.bench_cmdline(net=True, net_count=count)
    lines = run_guest(backend.argv(guest, cmdline, None, TAP), netns)
    m = next((m for ln in lines if (m := protocol.NET_BENCH_RE.match(ln))), None)
    if m is None:
        raise BenchError(f"{backend.label}: no net-bench line: {lines[-5:]}")
    sent, received, ns = int(m.group(1)), int(m.group(2)), int(m.group(3))
    into.add("echo replies/s", received / ns * 1e9)
    into.add("us/echo (8 in flight)", ns / 1e3 / max(received, 1))
    into.add("lost", float(sent - received))


class Netns:
    """A private network namespace holding the tap the guest talks to; the host's stack answers pings."""

    def __init__(self) -> None:
        self.name = f"volt-bench-{os.getpid()}"

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def __enter__(self) -> str:
        self._ip("netns", "add", self.name)
        try:
            self._ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
            self._ip("netns", "exec", self.name, "ip", "tuntap", "add", "dev", TAP, "mode", "tap")
            self._ip("netns", "exec", self.name, "ip", "addr", "add", PEER_CIDR, "dev", TAP)
            self._ip("netns", "exec", self.name, "ip", "link", "set", TAP, "up")
        except BaseException:
            self.__exit__()
            raise
        return self.name

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


def attempt(run, backend: Backend, into: Samples, *args: object) -> None:
    """One run; a failed one is recorded (and reported under the tables), not retried."""
    try:
        run(backend, *args, into)
    except (BenchError, subprocess.TimeoutExpired) as e:
        into.failures.append(f"{run.__name__}: {e}")
        print(f"{backend.label}: {run.__name__} failed: {e}", file=sys.stderr)


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def table(metrics: list[str], backends: list[Backend], samples: dict[str, Samples]) -> str:
    rows = []
    for metric in metrics:
        for b in backends:
            vals = samples[b.label].values.get(metric)
            if vals:
                rows.append([metric, b.label, len(vals), fmt(min(vals)), fmt(statistics.median(vals)),
                             fmt(max(vals))])
    return tabulate(rows, headers=["metric", "backend", "runs", "min", "median", "max"], disable_numparse=True,
                    colalign=("left", "left", "right", "right", "right", "right"))


def ratios(metrics: list[str], backends: list[Backend], samples: dict[str, Samples]) -> str:
    """Median of each backend relative to QEMU's median (higher is better for rates)."""
    qemu = next((b for b in backends if b.kind == "qemu"), None)
    if qemu is None:
        return ""
    rows = []
    for metric in metrics:
        base = samples[qemu.label].values.get(metric)
        if not base:
            continue
        row = [metric]
        for b in backends:
            vals = samples[b.label].values.get(metric)
            row.append(f"{statistics.median(vals) / statistics.median(base):.2f}x" if vals else "-")
        rows.append(row)
    return tabulate(rows, headers=["median / qemu median", *(b.label for b in backends)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--blk-ms", type=int, default=1000, help="time cap of each random 4 KiB phase")
    ap.add_argument("--net-count", type=int, default=20000, help="echo requests per net run")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--no-net", action="store_true")
    args = ap.parse_args()

    guest = str(build_guest())
    backends = [Backend("volt-vmm ioeventfd+irqfd", "volt"),
                Backend("volt-vmm exits+IRQ_LINE", "volt", ("--no-ioeventfd", "--no-irqfd"))]
    qemu = shutil.which("qemu-system-x86_64")
    if qemu and not args.no_qemu:
        backends.append(Backend("qemu microvm", "qemu"))
    samples = {b.label: Samples() for b in backends}

    with tempfile.TemporaryDirectory(prefix="volt-bench-") as tmp:
        disk = str(Path(tmp) / "disk.img")
        with open(disk, "wb") as f:
            f.write(b"\0" * (DISK_MIB << 20))       # allocated, not sparse: every backend sees the same file
        for b in backends:
            run_guest(b.argv(guest, protocol.bench_cmdline(blk=True, blk_ms=100), disk, None))  # warm-up
        for _ in range(args.runs):                  # interleave backends so drift hits all alike
            for b in backends:
                attempt(blk_run, b, samples[b.label], guest, disk, args.blk_ms)
    if not args.no_net:
        with Netns() as ns:
            for _ in range(args.runs):
                for b in backends:
                    attempt(net_run, b, samples[b.label], guest, ns, args.net_count)

    qemu_version = ""
    if qemu and not args.no_qemu:
        qemu_version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"virtio devices, test guest (ring-3 polling drivers), KVM: {kvm_flavour()}"
          + (f"; {qemu_version}" if qemu_version else ""))
    print(f"virtio-blk: {DISK_MIB} MiB region, 128 KiB sequential requests, 4 KiB random, "
          f"up to 5 in flight, random phases capped at {args.blk_ms} ms; disk file page-cached on the host\n")
    blk_rates = ["seqwrite MB/s", "seqread MB/s", "randread4k IOPS", "randwrite4k IOPS"]
    blk_lat = [f"{p} us/request" for p in SEQ_PHASES + RAND_PHASES]
    print(table(blk_rates, backends, samples))
    print()
    print(table(blk_lat, backends, samples))
    net_metrics = ["echo replies/s", "us/echo (8 in flight)", "lost"]
    if not args.no_net:
        print(f"\nvirtio-net: {args.net_count} ICMP echo requests to the tap peer (host stack in a private "
              "netns), up to 8 unanswered\n")
        print(table(net_metrics, backends, samples))
    ratio = ratios(blk_rates + ([] if args.no_net else net_metrics[:1]), backends, samples)
    for b in backends:
        for failure in samples[b.label].failures:
            print(f"FAILED RUN ({b.label}): {failure}")
    if ratio:
        print()
        print(ratio)
    else:
        print("\nqemu-system-x86_64 not used: no side-by-side figures")


if __name__ == "__main__":
    main()
