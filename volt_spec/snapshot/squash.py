"""`volt snapshots squash`: a diff and its chain made one full snapshot, in place.

Kept apart from chain.py, which the restore path imports: this module reads a chain through that
restore (snapshot/restore.py) and writes a new memory file.
"""

from __future__ import annotations

import os

from .chain import is_diff
from .format import SnapshotError


def squash(snapshot_dir: str) -> dict:
    """Merge a diff and the chain under it into a full snapshot of the same id, in place: its
    memory file holds every page, its state no parent. The new directory is written beside it
    (hidden, fsynced) and swapped in by two renames; the parents stay (other diffs may need
    them). The squashed memory records the checksum it replaces (`squashed_from`), so a diff
    taken on the diff before it was squashed still finds its parent. Returns the new state."""
    import shutil
    import tempfile
    from . import create
    parent_dir, name = os.path.split(os.path.normpath(snapshot_dir))
    tmp = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent_dir)
    aside = os.path.join(parent_dir, f".{name}.deleting-{os.getpid()}")
    try:
        state = squash_into(snapshot_dir, tmp)
        os.rename(snapshot_dir, aside)
        create.commit(tmp, snapshot_dir, state)
    except BaseException:
        create.discard(tmp)
        if not os.path.exists(snapshot_dir) and os.path.exists(aside):
            os.rename(aside, snapshot_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return state


def squash_into(snapshot_dir: str, tmp: str) -> dict:
    """Write the full form of the diff `snapshot_dir` into the empty directory `tmp` (its other
    files hard-linked, memory.snap from the chain as a restore maps it); its state, not yet
    written (create.commit writes it)."""
    from .fingerprint import FINGERPRINT_FILE
    from .format import MEMORY_FILE, STATE_FILE
    from .memory_file import memory_digest, write_memory
    from .restore import load
    state, memory, checks = load(snapshot_dir)
    try:
        checks()
        if not is_diff(state):
            raise SnapshotError(f"{snapshot_dir}: a full snapshot already")
        for entry in os.scandir(snapshot_dir):      # disk copies and the like: the same files
            if entry.name not in (STATE_FILE, MEMORY_FILE, FINGERPRINT_FILE) and entry.is_file(follow_symlinks=False):
                os.link(entry.path, os.path.join(tmp, entry.name))
        described = write_memory(memory, os.path.join(tmp, MEMORY_FILE))
    finally:
        memory.close()
    old = state["memory"]
    described["sha256"] = memory_digest(os.path.join(tmp, MEMORY_FILE))
    described["squashed_from"] = [old["sha256"], *old.get("squashed_from", [])]
    return dict(state, memory=described)
