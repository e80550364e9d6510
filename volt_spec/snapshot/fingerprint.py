"""Is memory.snap still the file that was checked? A cheap fingerprint says, the checksum decides.

The full check (memory_digest against the sha256 that the CRC-checked state.json records) reads
every data extent, which a restore in milliseconds cannot pay each time. So when a memory file is
written or fully verified, its (inode, size, mtime_ns, ctime_ns) and that sha256 are recorded beside
it in FINGERPRINT_FILE. A restore whose memory file still has them skips the full check; a copy,
an edit in place, a truncate or a move to another file system changes the inode or ctime (which no
user call can set back), so the full check runs first and a mismatch refuses the restore.
"""

from __future__ import annotations

import os

from .format import SnapshotError

FINGERPRINT_FILE = "memory.verified"
VERSION = "v1"


def line(fd: int, sha256: str) -> bytes:
    """`v1 <inode> <size> <mtime_ns> <ctime_ns> <sha256>`: one line (no json on the restore path)."""
    st = os.fstat(fd)
    return f"{VERSION} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {sha256}\n".encode()


def record(snapshot_dir: str, fd: int, sha256: str) -> None:
    """Remember that the file open as `fd` was checked against `sha256` (atomic write)."""
    from ..fsutil import atomic_write
    atomic_write(os.path.join(snapshot_dir, FINGERPRINT_FILE), line(fd, sha256), mode=0o600)


def check_memory(snapshot_dir: str, fd: int, sha256: object, force: bool = False, digest=None) -> str:
    """Refuse a memory file that is not what the snapshot wrote. Returns how it was checked:
    "fingerprint" (unchanged since the last full check) or "checksum" (read in full, and the
    fingerprint recorded again when the directory is writable). `digest(fd)`: the file's checksum
    function when it is not memory_file.memory_digest_fd (a compressed file's)."""
    from ..fsutil import read_regular
    saved = None
    if not force:
        try:
            saved = read_regular(os.path.join(snapshot_dir, FINGERPRINT_FILE), 4096)
        except OSError:
            pass
    how = check_memory_fd(snapshot_dir, fd, sha256, saved, digest)
    if how == "checksum":
        try:
            record(snapshot_dir, fd, sha256)
        except OSError:
            pass                 # a read-only snapshot directory: the next restore checks in full again
    return how


def check_memory_fd(where: str, fd: int, sha256: object, saved: bytes | None, digest=None) -> str:
    """check_memory for a file known only by its fd (a warm VMM's) and the fingerprint line read
    beside it (`saved`, None when there is none): "fingerprint" or "checksum", or SnapshotError."""
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise SnapshotError(f"{where}: state.json records no memory checksum; the memory cannot be checked")
    if saved is not None and saved == line(fd, sha256):
        return "fingerprint"
    from .memory_file import memory_digest_fd
    from .compressed import CompressedError
    try:
        matches = (digest or memory_digest_fd)(fd) == sha256
    except CompressedError:
        matches = False
    if not matches:
        raise SnapshotError(f"{where}: the memory file does not match the checksum recorded when it was "
                            f"written (changed or corrupt); refusing to run a guest on it")
    return "checksum"
