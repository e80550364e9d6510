"""`volt wait`: block until VMs reach a condition (kubectl wait), checked live, with a deadline."""

from __future__ import annotations

import time
from pathlib import Path

from .home import VmDir
from .observe import COMPLETED, RUNNING, STOPPED, observe

CONDITIONS = ("running", "stopped", "completed", "snapshot")
POLL_S = 0.1


def _newest_snapshot(vm_dir: VmDir) -> float:
    from ..snapshot.catalogue import newest
    snap = newest(vm_dir.snapshots, vm_dir.name)
    return (snap.created or 0.0) if snap is not None else 0.0


def met(vm_dir: VmDir, condition: str, since: float) -> tuple[bool, str]:
    """(condition holds, what the VM is doing now) for one VM."""
    if condition == "snapshot":
        created = _newest_snapshot(vm_dir)
        return created >= since, "no snapshot since the wait began" if created < since else "snapshot taken"
    obs = observe(vm_dir)
    want = {"running": (RUNNING,), "stopped": (STOPPED, COMPLETED), "completed": (COMPLETED,)}[condition]
    now = obs["state"] + (f" ({obs['reason']})" if obs["reason"] else "")
    return obs["state"] in want, now


def wait(home: Path, names: list[str], condition: str, timeout_s: float, report=None) -> list[str]:
    """Wait until every VM meets `condition`; report(name) as each does. The ones that did not
    within `timeout_s`, each as "vm/NAME: what it is doing" (empty: all met)."""
    since = time.time()
    deadline = time.monotonic() + timeout_s
    pending = {n: VmDir(home, n) for n in names}
    last: dict[str, str] = {}
    while pending:
        for name, vm_dir in list(pending.items()):
            ok, now = met(vm_dir, condition, since)
            last[name] = now
            if ok:
                del pending[name]
                if report:
                    report(name)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)       # another process's state: nothing to block on but the files
    return [f"vm/{n}: {last[n]}" for n in pending]
