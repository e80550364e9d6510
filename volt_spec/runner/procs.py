"""Process identity that survives pid reuse: a pid plus its start time from /proc."""

from __future__ import annotations

import os
import signal


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    state = fields[0]
    if state in (b"Z", b"X"):
        return None
    return int(fields[19])


def is_alive(pid: int | None, ticks: int | None) -> bool:
    """True when `pid` runs and is the same process that started at `ticks`."""
    if not pid:
        return False
    now = start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def kill(pid: int, ticks: int | None, signum: int = signal.SIGKILL) -> bool:
    """Signal the process only if it is still the one we started."""
    if not is_alive(pid, ticks):
        return False
    try:
        os.kill(pid, signum)
        return True
    except ProcessLookupError:
        return False
