"""Writing a snapshot directory: a temp dir, the memory file, state.json, fsync, rename.

The order of what is saved is vmm/persist.py's; this module only makes the result durable and
atomic: the snapshot appears under its final name only when complete on disk (temp dir + fsync +
rename), so a crash mid-write leaves nothing that looks valid, and older snapshots are untouched.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile

from ..kvm.flavour import cpu_identity, kvm_flavour
from .format import MEMORY_FILE, STATE_FILE, SnapshotError, encode
from .memory_file import CopiedWrite, ForkedWrite, MemoryFileError, write_memory
from .store import disk_usage

FORK_ENV = "VOLT_SNAPSHOT_FORK"          # "0": copy guest memory in this process (for comparison)

__all__ = ["MEMORY_FILE", "begin", "commit", "compress_memory", "discard", "disk_usage", "host_identity", "start_diff",
           "start_memory_writer"]


def host_identity() -> dict:
    cpu = cpu_identity()
    return {"kernel": platform.release(), "kvm": kvm_flavour(), "cpu_vendor": cpu["vendor"],
            "cpu_model": cpu["model_name"], "cpu_family": cpu["family"], "cpu_model_number": cpu["model"]}


def begin(dest: str) -> tuple[str, str]:
    """(dest made absolute, a new temp directory beside it); refuses a dest that exists."""
    dest = os.path.abspath(dest)
    if os.path.exists(dest):
        raise SnapshotError(f"{dest} already exists (snapshots are immutable; pick another name)")
    parent = os.path.dirname(dest)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    return dest, tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.partial-", dir=parent)


def discard(tmp: str) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def start_memory_writer(memory, tmp: str):
    """Start copying guest memory into tmp's memory file; returns a callable that waits for it and
    returns its description. Forked by default, so the guest is paused only for the fork."""
    path = os.path.join(tmp, MEMORY_FILE)
    if os.environ.get(FORK_ENV, "1") == "0":
        described = write_memory(memory, path)
        return lambda: described
    writer = ForkedWrite(memory, path)

    def wait() -> dict:
        try:
            return writer.wait()
        except MemoryFileError as e:
            raise SnapshotError(str(e)) from None
    return wait


def start_diff(memory, tmp: str, dirty: list) -> CopiedWrite:
    """A diff's memory file, pre-copied: the pages in `dirty` (logged so far, the guest still
    running) copied now; `add()` the rest in the pause, then `wait()` writes it (memory_file.py)."""
    return CopiedWrite(memory, os.path.join(tmp, MEMORY_FILE), dirty)


def compress_memory(tmp: str) -> dict:
    """memory.snap replaced by memory.snap.zst (compressed.py), its checksum taken in the same
    read: what state.json's memory gains (file, compressed, sha256)."""
    from .compressed import FILE, compress_file
    src = os.path.join(tmp, MEMORY_FILE)
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info, sha256 = compress_file(fd, os.path.join(tmp, FILE))
    finally:
        os.close(fd)
    os.unlink(src)
    return {"file": FILE, "compressed": info, "sha256": sha256}


def commit(tmp: str, dest: str, state: dict) -> None:
    """state.json, the fsyncs, the memory fingerprint, then the rename that makes `dest` appear."""
    state_fd = os.open(os.path.join(tmp, STATE_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(state_fd, "wb") as f:
        f.write(encode(state))
        f.flush()
        os.fsync(f.fileno())
    memory_file = state["memory"].get("file", MEMORY_FILE)
    _fsync_path(os.path.join(tmp, memory_file))
    record_fingerprint(tmp, state["memory"]["sha256"], memory_file)
    _fsync_path(tmp, directory=True)
    os.rename(tmp, dest)
    _fsync_path(os.path.dirname(dest), directory=True)


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def record_fingerprint(snapshot_dir: str, sha256: str, memory_file: str = MEMORY_FILE) -> None:
    """The memory file as written, so a restore of it need not read it all (fingerprint.py)."""
    from .fingerprint import record
    fd = os.open(os.path.join(snapshot_dir, memory_file), os.O_RDONLY | os.O_CLOEXEC)
    try:
        record(snapshot_dir, fd, sha256)
    finally:
        os.close(fd)
