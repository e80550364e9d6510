"""What a no-op `volt` command costs, beside the venv's `python -c pass` in the same run.

Applies a directory of N test-guest specs once (N real VMs on /dev/kvm, tiny), then times, runs
alternating: `python -c pass`, `volt --help`, `volt validate DIR`, `volt apply DIR` (unchanged),
`volt diff DIR`, `volt status` and `volt status -o json`, each the wall time of the `volt` script
beside sys.executable (what a user runs). The VMs are deleted at the end.

The package is byte-compiled first (as an installed one is; PYTHONDONTWRITEBYTECODE may be set).
usage: python benchmarks/cli.py [--runs N] [--vms N] [--nice]
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from common import median, ms, stats

SPEC = """apiVersion: volt/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  kernel: {{path: builtin:testguest, cmdline: "volt.ticks=0 volt.tick_ms=500"}}
  vcpus: 1
  memory: 64Mi
"""
STATUS_FACTOR, STATUS_SLACK_MS = 2.0, 40.0    # volt status <= 2x `python -c pass` + 40 ms
NOOP_LIMIT_MS = 150.0                          # volt apply (unchanged) and volt validate


def volt_command() -> list[str]:
    """The `volt` script next to this Python (what a user runs), else `python -m volt_spec`."""
    script = Path(sys.executable).with_name("volt")
    return [str(script)] if script.exists() else [sys.executable, "-m", "volt_spec"]


def commands(spec_dir: Path, vms: int) -> dict[str, tuple[list[str], int]]:
    """label -> (argv, the exit status it must have)."""
    volt, d = volt_command(), str(spec_dir)
    return {
        "python -c pass": ([sys.executable, "-c", "pass"], 0),
        "volt --help": (volt + ["--help"], 0),
        f"volt validate DIR ({vms} specs)": (volt + ["validate", d], 0),
        f"volt apply DIR (unchanged, {vms} VMs)": (volt + ["apply", d], 0),
        f"volt diff DIR ({vms} VMs)": (volt + ["diff", d], 0),
        f"volt status ({vms} VMs)": (volt + ["status"], 0),
        f"volt status -o json ({vms} VMs)": (volt + ["status", "-o", "json"], 0),
    }


def run(argv: list[str], env: dict, want: int) -> tuple[float, str]:
    """Seconds `argv` took, and its stdout; a wrong exit status stops the benchmark."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != want:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}, not {want}:\n{proc.stdout}{proc.stderr}")
    return took, proc.stdout


def setup(tmp: Path, vms: int, env: dict) -> tuple[Path, float]:
    """The spec directory under `tmp`, its VMs applied (and a second apply says all unchanged);
    and how long that first apply of `vms` new VMs took (they start side by side), in s."""
    spec_dir = tmp / "specs"
    spec_dir.mkdir()
    for i in range(vms):
        (spec_dir / f"vm{i:02d}.yaml").write_text(SPEC.format(name=f"bench-cli-{i:02d}"))
    created_s, _ = run(volt_command() + ["apply", str(spec_dir)], env, 0)
    _, out = run(volt_command() + ["apply", str(spec_dir)], env, 0)
    unchanged = [line for line in out.splitlines() if line.endswith(" unchanged")]
    if len(unchanged) != vms:
        raise SystemExit(f"the second apply changed something:\n{out}")
    return spec_dir, created_s


def measure(cmds: dict[str, tuple[list[str], int]], env: dict, runs: int, nice: bool) -> dict[str, list[float]]:
    """ms per command, `runs` rounds, each round every command once (after one warm-up round);
    `nice`: the commands run at nice -20 (root), so that a busy host disturbs them less."""
    samples: dict[str, list[float]] = {label: [] for label in cmds}
    before = os.getpriority(os.PRIO_PROCESS, 0)
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, -20)
    try:
        for round_ in range(runs + 1):
            for label, (argv, want) in cmds.items():
                took, _ = run(argv, env, want)
                if round_:
                    samples[label].append(ms(took))
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)
    return samples


def targets(samples: dict[str, list[float]], vms: int) -> list[list[str]]:
    base = median(samples["python -c pass"])
    status_limit = STATUS_FACTOR * base + STATUS_SLACK_MS
    checks = [(f"volt status ({vms} VMs)", f"<= {STATUS_FACTOR:g}x baseline + {STATUS_SLACK_MS:g} ms", status_limit),
              (f"volt apply DIR (unchanged, {vms} VMs)", f"<= {NOOP_LIMIT_MS:g} ms", NOOP_LIMIT_MS),
              (f"volt validate DIR ({vms} specs)", f"<= {NOOP_LIMIT_MS:g} ms", NOOP_LIMIT_MS)]
    rows = []
    for label, rule, limit in checks:
        got = median(samples[label])
        rows.append([label, rule, f"{limit:.1f}", f"{got:.1f}", "met" if got <= limit else "MISSED"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--vms", type=int, default=10)
    ap.add_argument("--nice", action="store_true", help="time the commands at nice -20 (root only)")
    args = ap.parse_args()
    compileall.compile_dir(importlib.util.find_spec("volt_spec").submodule_search_locations[0], quiet=1)
    tmp = Path(tempfile.mkdtemp(prefix="volt-bench-cli-"))
    env = dict(os.environ, VOLT_HOME=str(tmp / "home"))
    try:
        spec_dir, created_s = setup(tmp, args.vms, env)
        load = os.getloadavg()[0]
        samples = measure(commands(spec_dir, args.vms), env, args.runs, args.nice)
    finally:
        subprocess.run(volt_command() + ["delete", "--all"], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
    base = median(samples["python -c pass"])
    rows = [[label, len(s), *stats(s), f"{median(s) / base:.1f}x"] for label, s in samples.items()]
    print(f"no-op CLI commands, {args.vms} VMs, via {' '.join(volt_command())}"
          f"{' at nice -20' if args.nice else ''}, load average {load:.1f} when timing began")
    print(tabulate(rows, headers=["command", "runs", "min ms", "median ms", "max ms", "/ baseline"]))
    print()
    print(tabulate(targets(samples, args.vms), headers=["target", "rule", "limit ms", "median ms", ""]))
    print(f"\nvolt apply DIR ({args.vms} new VMs, started side by side): {created_s:.2f} s (one run)")


if __name__ == "__main__":
    main()
