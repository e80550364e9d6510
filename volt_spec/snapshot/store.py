"""Snapshot directories as a store: naming, removal, size on disk (shared by the CLI and the VMM's policy)."""

from __future__ import annotations

import os
import secrets
import shutil
import time


def new_id(vm_name: str) -> str:
    """<vm>-<UTC time>-<4 hex>: sorts by time, unique enough for snapshots taken in the same second."""
    return f"{vm_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def remove(path: str) -> None:
    """Delete a snapshot directory: renamed aside first, so it stops being listed at once."""
    parent, name = os.path.split(os.path.normpath(path))
    tmp = os.path.join(parent, f".{name}.deleting-{os.getpid()}")
    os.rename(path, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def disk_usage(path: str) -> int:
    """Bytes the snapshot occupies on disk (holes in memory.snap cost nothing)."""
    return sum(os.stat(os.path.join(path, name)).st_blocks * 512 for name in os.listdir(path))
