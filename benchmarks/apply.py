"""Cost of the declarative layer: `volt apply` (cold boot) and `volt status`, with 1 and 20 VMs.

Each figure is the wall time of the real CLI process, as a user sees it.
usage: python benchmarks/apply.py [--runs N] [--many 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

SPEC = """apiVersion: volt/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  kernel: {{path: "builtin:testguest", cmdline: "volt.ticks=0 volt.tick_ms=1000"}}
  vcpus: 1
  memory: 128Mi
"""


def volt(env: dict, *args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "volt_spec", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return (time.perf_counter() - t0) * 1000


def row(label: str, samples: list[float]) -> list:
    return [label, len(samples), f"{min(samples):.0f}", f"{statistics.median(samples):.0f}",
            f"{max(samples):.0f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--many", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, VOLT_HOME=f"{tmp}/home")
        one = Path(tmp) / "one.yaml"
        one.write_text(SPEC.format(name="bench"))
        many = Path(tmp) / "many"
        many.mkdir()
        for i in range(args.many):
            (many / f"vm{i:02d}.yaml").write_text(SPEC.format(name=f"vm{i:02d}"))
        rows = []
        volt(env, "apply", str(one))
        volt(env, "delete", "--all")
        create, unchanged, status1, delete = [], [], [], []
        for _ in range(args.runs):
            create.append(volt(env, "apply", str(one)))
            unchanged.append(volt(env, "apply", str(one)))
            status1.append(volt(env, "status"))
            delete.append(volt(env, "delete", "--all"))
        rows += [row("apply, 1 VM, cold boot (created)", create), row("apply, 1 VM, unchanged", unchanged),
                 row("status, 1 VM", status1), row("delete, 1 VM", delete)]
        create_many, status_many = [], []
        for _ in range(max(1, args.runs // 2)):
            create_many.append(volt(env, "apply", str(many)))
            status_many += [volt(env, "status") for _ in range(3)]
            volt(env, "delete", "--all")
        rows += [row(f"apply, {args.many} VMs, cold boot", create_many),
                 row(f"status, {args.many} VMs", status_many)]
    print(tabulate(rows, headers=["measurement", "runs", "min ms", "median ms", "max ms"]))


if __name__ == "__main__":
    main()
