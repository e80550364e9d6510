"""Hand a snapshot to a warm VMM (vmm/warm.py): its files opened here and passed as fds.

The warm VMM never opens a host path; what it restores from is what volt opened, by name
inside the snapshot's own directory (no symlinks, regular files only). A VM it becomes (the
pool's: runner/pool.py) gets its state directory, disks and taps the same way.
"""

from __future__ import annotations

import os
from contextlib import ExitStack

from ..api.client import ApiClient
from ..fsutil import open_regular
from ..snapshot.fingerprint import FINGERPRINT_FILE
from ..snapshot.format import MEMORY_FILE, STATE_FILE

LOAD_TIMEOUT_S = 60.0            # a memory file without its fingerprint is read in full


def load_snapshot(socket: str, snapshot_dir: str, snapshot_id: str | None = None, clock: str = "continue",
                  resume: bool = True, timeout: float = LOAD_TIMEOUT_S, vm: dict | None = None,
                  prepare: bool = False) -> None:
    """PUT /snapshot/load on the warm VMM at `socket` with the snapshot's state, memory and
    fingerprint as fds; raises ApiError (the VMM's one-line reason) or ApiUnavailable.

    `vm` makes the VMM that VM: {"name", "state_dir", "disks": [{"name", "path", "readOnly"}],
    "network": [{"name", "tap", "mac"}], "policy": PolicyConfig dict or None}; the state directory,
    disks and taps are opened here (taps as root: created when missing) and passed as fds.
    `prepare`: only prime the VMM with these files (it stays warm; a later load of them is faster)."""
    fds: list[int] = []
    with ExitStack() as stack:
        stack.callback(lambda: [os.close(fd) for fd in fds])
        named = {"state": _pass(fds, open_regular(os.path.join(snapshot_dir, STATE_FILE))),
                 "memory": _pass(fds, open_regular(os.path.join(snapshot_dir, MEMORY_FILE)))}
        try:
            named["fingerprint"] = _pass(fds, open_regular(os.path.join(snapshot_dir, FINGERPRINT_FILE)))
        except OSError:
            pass                        # none: the VMM checks the memory in full
        body = {"fds": named, "clock": clock, "resume_vm": resume,
                "snapshot_id": snapshot_id or os.path.basename(os.path.normpath(snapshot_dir)),
                **({"prepare": True} if prepare else {})}
        if vm is not None:
            body["vm"] = _identity(vm, fds, named, stack)
        ApiClient(socket, timeout=timeout).put("/snapshot/load", body, fds=fds)


def _pass(fds: list[int], fd: int) -> int:
    fds.append(fd)
    return len(fds) - 1


def _identity(vm: dict, fds: list[int], named: dict, stack: ExitStack) -> dict:
    """The load's `vm` section; its directory, disks and taps opened into `fds` by role."""
    from ..devices.virtio.tap import Tap
    nofollow = os.O_CLOEXEC | os.O_NOFOLLOW
    named["state_dir"] = _pass(fds, os.open(vm["state_dir"], os.O_RDONLY | os.O_DIRECTORY | nofollow))
    disks = {}
    for d in vm.get("disks", []):
        named[f"disk:{d['name']}"] = _pass(fds, os.open(d["path"], (os.O_RDONLY if d.get("readOnly") else os.O_RDWR)
                                                        | nofollow))
        disks[d["name"]] = d["path"]
    taps, macs = {}, {}
    for n in vm.get("network", []):
        tap = Tap(n["tap"])
        stack.callback(tap.close)
        named[f"tap:{n['name']}"] = len(fds)
        fds.append(os.dup(tap.fileno()))
        taps[n["name"]] = n["tap"]
        if n.get("mac"):
            macs[n["name"]] = n["mac"]
    return {"name": vm["name"], "state_dir": vm["state_dir"], "disks": disks, "taps": taps, "macs": macs,
            "policy": vm.get("policy")}
