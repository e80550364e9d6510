"""What snapshot policies cost the guest.

For 128 MiB and 1 GiB guests running a memory workload (volt.mem=64) and ticking every
10 ms, an interval trigger snapshots every second for --seconds. Printed:
  - guest pause per snapshot (min/median/max of `paused_ms` recorded in each snapshot),
  - tick delay: how late ticks arrive (gap between consecutive tick clocks minus the
    period), with and without the interval trigger, and ticks seen in the window.
usage: python benchmarks/policy.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from volt_spec.guest.build import build_guest  # noqa: E402
from volt_spec.runner.vmctl import vmm_command  # noqa: E402
from volt_spec.snapshot.format import read_state  # noqa: E402
from volt_spec.vmm.config import PolicyConfig  # noqa: E402

TICK = re.compile(rb"^tick (\d+) clock_ms=(\d+)", re.M)
PERIOD_MS = 10


def run(guest: str, memory: int, seconds: float, policy: Path | None) -> bytes:
    """The guest's console for `seconds`; a VMM that exits before then is an error (its stderr said why)."""
    cmd = vmm_command() + ["--kernel", guest, "--memory", str(memory),
                           "--cmdline", f"volt.ticks=0 volt.tick_ms={PERIOD_MS} volt.mem=64"]
    if policy:
        cmd += ["--policy", str(policy)]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        out = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                out += os.read(proc.stdout.fileno(), 65536)
        code = proc.poll()
        proc.kill()
        proc.wait()
        proc.stdout.close()
        if code is not None:
            err.seek(0)
            raise RuntimeError(f"volt-vmm exited ({code}) within {seconds:g} s: {err.read().decode(errors='replace')}")
    return out


def delays(out: bytes) -> list[int]:
    clocks = [int(m.group(2)) for m in TICK.finditer(out)]
    return [b - a - PERIOD_MS for a, b in zip(clocks, clocks[1:])]


def stats(xs: list[float]) -> list[str]:
    return [f"{min(xs):.1f}", f"{statistics.median(xs):.1f}", f"{max(xs):.1f}"] if xs else ["-", "-", "-"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    guest = str(build_guest())
    rows = []
    for memory in (128, 1024):
        with tempfile.TemporaryDirectory() as tmp:
            snapdir = Path(tmp) / "snaps"
            policy = Path(tmp) / "policy.json"
            doc = {"vm": "bench", "snapshot_dir": str(snapdir), "triggers": [{"trigger": "interval", "every_s": 1}],
                   "retain": {"count": 1000}}
            PolicyConfig.from_dict(doc, "the benchmark's policy")      # the VMM's own check: fail here, loudly
            policy.write_text(json.dumps(doc))
            base = delays(run(guest, memory, args.seconds, None))
            with_policy_out = run(guest, memory, args.seconds, policy)
            with_policy = delays(with_policy_out)
            paused = []
            for snap in snapdir.iterdir() if snapdir.exists() else []:
                if not snap.name.startswith("."):
                    paused.append(float(read_state(str(snap))["meta"]["paused_ms"]))
        rows.append([f"{memory} MiB: guest pause per interval snapshot (ms)", len(paused), *stats(paused)])
        rows.append([f"{memory} MiB: tick delay without policy (ms)", len(base), *stats(base)])
        rows.append([f"{memory} MiB: tick delay with 1 s interval trigger (ms)", len(with_policy), *stats(with_policy)])
    print(f"guest: volt.mem=64 workload, ticks every {PERIOD_MS} ms, {args.seconds:g} s per run "
          "(every snapshot is kept for the pause figures)")
    print(tabulate(rows, headers=["measurement", "n", "min", "median", "max"]))


if __name__ == "__main__":
    main()
