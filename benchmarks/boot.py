"""Boot latency of the test guest: volt-vmm vs QEMU booting the very same file.

Prints min/median/max over N runs of
  - process spawn -> `VOLT-READY` on the console (wall clock, seen through a pipe),
  - KVM_CREATE_VM -> `VOLT-READY` (the guest's own uptime_ms: its kvmclock starts at VM creation),
and, when qemu-system-x86_64 is installed, spawn -> `VOLT-READY` for QEMU `-M microvm` and `-M pc`.

usage: python benchmarks/boot.py [--runs N] [--pc-runs N] [--memory MIB] [--vcpus N]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from volt_spec.guest.build import build_guest  # noqa: E402
from volt_spec.kvm.flavour import kvm_flavour  # noqa: E402
from volt_spec.runner.vmctl import vmm_command  # noqa: E402

from common import jailed_popen, spawn_until  # noqa: E402

READY = re.compile(rb"VOLT-READY uptime_ms=(\d+)")


def time_to_ready(cmd: list[str], timeout: float = 120.0, popen=None) -> tuple[float, int]:
    """Spawn `cmd`; seconds until a console line has VOLT-READY, and the guest's uptime_ms."""
    wall, m = spawn_until(cmd, READY, timeout, popen=popen) if popen else spawn_until(cmd, READY, timeout)
    return wall, int(m.group(1))


def stats_ms(samples: list[float]) -> list[str]:
    return [f"{min(samples):.1f}", f"{statistics.median(samples):.1f}", f"{max(samples):.1f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--pc-runs", type=int, default=10)
    ap.add_argument("--memory", type=int, default=128)
    ap.add_argument("--vcpus", type=int, default=1)
    args = ap.parse_args()
    guest = str(build_guest())
    cmdline = "volt.ticks=0"
    rows = []

    volt = vmm_command() + ["--kernel", guest, "--memory", str(args.memory), "--vcpus", str(args.vcpus),
                            "--cmdline", cmdline]
    time_to_ready(volt)  # warm the page cache
    spawn, uptime = [], []
    for _ in range(args.runs):
        wall, up = time_to_ready(volt)
        spawn.append(wall * 1000)
        uptime.append(float(up))
    rows.append(["volt-vmm: spawn -> VOLT-READY", args.runs, *stats_ms(spawn)])
    rows.append(["volt-vmm: KVM_CREATE_VM -> VOLT-READY (guest uptime_ms)", args.runs, *stats_ms(uptime)])
    time_to_ready(volt, popen=jailed_popen)
    jailed = [time_to_ready(volt, popen=jailed_popen)[0] * 1000 for _ in range(args.runs)]
    rows.append(["volt-vmm jailed: spawn -> VOLT-READY", args.runs, *stats_ms(jailed)])
    jail_cost = statistics.median(jailed) - statistics.median(spawn)

    qemu = shutil.which("qemu-system-x86_64")
    ratio = None
    if qemu:
        base = [qemu, "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", f"{args.memory}M",
                "-smp", str(args.vcpus), "-nographic", "-nodefaults", "-no-reboot", "-serial", "stdio",
                "-kernel", guest, "-append", cmdline]
        for machine, runs in (("microvm", args.runs), ("pc", args.pc_runs)):
            cmd = base[:1] + ["-M", machine] + base[1:]
            if runs <= 0:
                continue
            time_to_ready(cmd)
            samples = [time_to_ready(cmd)[0] * 1000 for _ in range(runs)]
            rows.append([f"qemu -M {machine}: spawn -> VOLT-READY", runs, *stats_ms(samples)])
            if machine == "microvm":
                ratio = statistics.median(spawn) / statistics.median(samples)
    print(f"test guest boot, {args.memory} MiB, {args.vcpus} vCPU(s), KVM: {kvm_flavour()}")
    print(tabulate(rows, headers=["measurement", "runs", "min ms", "median ms", "max ms"]))
    print(f"the jail costs {jail_cost:.1f} ms of spawn-to-ready (median jailed - median unjailed; target <= 10 ms)")
    if ratio is not None:
        print(f"volt-vmm / qemu microvm spawn-to-ready median: {ratio:.2f}x (target <= 0.80x)")
    else:
        print("qemu-system-x86_64 not installed: no side-by-side figures")


if __name__ == "__main__":
    main()
