"""`volt validate` on one file of N documents: the time should grow linearly with N.

Each figure is the wall time of the real CLI process, with a cache of its own (empty: a file is
parsed, not read back from schema/cache.py). Also timed: a file whose last document
has a duplicate key, which the round-trip loader (pure Python, the reference for positions and
messages) reads again after the fast C path declines it.
usage: python benchmarks/validate.py [--sizes 1000,2000,5000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

DOC = """apiVersion: volt/v1
kind: VirtualMachine
metadata:
  name: vm-{i}
  labels: {{team: bench}}
spec:
  kernel:
    path: builtin:testguest
    cmdline: "volt.ticks=3"
  vcpus: 1
  memory: 128Mi
"""


def timed(path: Path, expect_rc: int) -> float:
    env = dict(os.environ, VOLT_CACHE=str(path.parent / "cache"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "volt_spec", "validate", str(path)], capture_output=True,
                          stdin=subprocess.DEVNULL, env=env)
    assert proc.returncode == expect_rc, proc.stderr.decode()[-500:]
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,2000,5000")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, args.sizes.split(",")):
            good = Path(tmp, f"good{n}.yaml")
            good.write_text("---\n".join(DOC.format(i=i) for i in range(n)))
            bad = Path(tmp, f"bad{n}.yaml")
            bad.write_text(good.read_text() + "  vcpus: 2\n")
            g, b = timed(good, 0), timed(bad, 1)
            rows.append([n, f"{g:.2f}", f"{g / n * 1e6:.0f}", f"{b:.2f}", f"{b / n * 1e6:.0f}"])
    print(tabulate(rows, headers=["documents", "valid s", "us/doc", "dup key s", "us/doc"], tablefmt="github"))


if __name__ == "__main__":
    main()
