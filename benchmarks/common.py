"""Shared by the benchmarks: spawn a VMM (or QEMU) and time it until a console line appears."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from typing import Callable


def spawn_until(cmd: list[str], pattern: re.Pattern[bytes], timeout: float,
                after_spawn: Callable[[subprocess.Popen], None] | None = None) -> tuple[float, re.Match]:
    """Spawn `cmd` (optionally drive it with `after_spawn`); seconds until a whole console line
    matches `pattern`, and the match. The process is killed afterwards."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        if after_spawn is not None:
            after_spawn(proc)
        buf = b""
        deadline = t0 + timeout
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.perf_counter()))
            if not ready:
                raise RuntimeError(f"no line matching {pattern.pattern!r} within {timeout:g} s: {' '.join(cmd)}")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"exited (status {proc.wait()}) before {pattern.pattern!r}: {' '.join(cmd)}")
            buf += chunk
            m = pattern.search(buf)
            if m and b"\n" in buf[m.end():]:
                return time.perf_counter() - t0, m
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
