"""Hand a snapshot to a warm VMM (vmm/warm.py): its files opened here and passed as fds.

The warm VMM never opens a host path; what it restores from is what volt opened, by name
inside the snapshot's own directory (no symlinks, regular files only).
"""

from __future__ import annotations

import os

from ..api.client import ApiClient
from ..fsutil import open_regular
from ..snapshot.fingerprint import FINGERPRINT_FILE
from ..snapshot.format import MEMORY_FILE, STATE_FILE

LOAD_TIMEOUT_S = 60.0            # a memory file without its fingerprint is read in full


def load_snapshot(socket: str, snapshot_dir: str, snapshot_id: str | None = None, clock: str = "continue",
                  resume: bool = True, timeout: float = LOAD_TIMEOUT_S) -> None:
    """PUT /snapshot/load on the warm VMM at `socket` with the snapshot's state, memory and
    fingerprint as fds; raises ApiError (the VMM's one-line reason) or ApiUnavailable."""
    fds: list[int] = []
    try:
        fds.append(open_regular(os.path.join(snapshot_dir, STATE_FILE)))
        fds.append(open_regular(os.path.join(snapshot_dir, MEMORY_FILE)))
        named = {"state": 0, "memory": 1}
        try:
            fds.append(open_regular(os.path.join(snapshot_dir, FINGERPRINT_FILE)))
            named["fingerprint"] = 2
        except OSError:
            pass                        # none: the VMM checks the memory in full
        body = {"fds": named, "clock": clock, "resume_vm": resume,
                "snapshot_id": snapshot_id or os.path.basename(os.path.normpath(snapshot_dir))}
        ApiClient(socket, timeout=timeout).put("/snapshot/load", body, fds=fds)
    finally:
        for fd in fds:
            os.close(fd)
