"""Atomic file writes (a temp file in the same directory, fsync, rename, fsync the directory), and
opening files that must be regular without ever blocking on a FIFO."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never half."""
    _atomic(Path(path), lambda out: out.write(data.encode() if isinstance(data, str) else data), mode)


def atomic_copy(src: Path, dest: Path, mode: int = 0o644) -> None:
    """Copy `src` to `dest` with the same guarantee."""
    import shutil
    with open(src, "rb") as inp:
        _atomic(Path(dest), lambda out: shutil.copyfileobj(inp, out), mode)


def _atomic(path: Path, fill, mode: int) -> None:
    import tempfile                     # not at the top: the VMM's restore path imports this module
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class NotRegularFile(OSError):
    """A path that should name a regular file names a FIFO, device, socket, directory or symlink."""


def os_error(e: OSError) -> str:
    """One line for a failed file operation: what failed and where."""
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}"


PREOPEN_DIR_ENV = "VOLT_PREOPEN_DIR"        # a directory whose files the jail opened for this VMM
PREOPEN_FDS_ENV = "VOLT_PREOPEN_FDS"        # "name=fd,...": those files (jail/enter.py)
_preopened: dict[str, int] | None = None


def preopened_fd(path: str | os.PathLike) -> int | None:
    """A dup of the fd the jail opened for `path`, if it is a file of the pre-opened directory
    (another VM's snapshot: its uid's files, which this VMM's uid may not open itself)."""
    global _preopened
    if _preopened is None:
        folder, _preopened = os.environ.get(PREOPEN_DIR_ENV), {}
        for item in os.environ.get(PREOPEN_FDS_ENV, "").split(",") if folder else ():
            name, _, fd = item.partition("=")
            if fd.isdigit():
                os.set_inheritable(int(fd), False)
                _preopened[os.path.join(folder, name)] = int(fd)
    fd = _preopened.get(os.path.normpath(os.fspath(path))) if _preopened else None
    return None if fd is None else os.dup(fd)


def register_fd(path: str, fd: int) -> None:
    """From now on `path` is the file (or directory) behind `fd`, handed over by volt: a warm VMM
    becomes a VM whose files it never opened (runner/pool.py passes them over its API socket)."""
    preopened_fd("")                            # the jail's, read first
    _preopened[os.path.normpath(path)] = fd


def local_path(path: str) -> str:
    """`path` as this process reaches it: under a directory handed over as an fd (register_fd),
    through /proc/self/fd/N (the directory need not exist in this mount namespace); else itself."""
    path = os.path.normpath(path)
    for folder, fd in (_preopened or {}).items():
        if path == folder or path.startswith(folder + "/"):
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                return f"/proc/self/fd/{fd}" + path[len(folder):]
    return path


def open_regular(path: str | os.PathLike, follow: bool = False) -> int:
    """An O_RDONLY fd of `path` if it is a regular file. Never blocks (O_NONBLOCK: a FIFO planted
    where a file should be would hang the open) and, unless `follow`, refuses a symlink. A file
    the jail opened for this VMM (preopened_fd) is that fd, not opened again."""
    fd = preopened_fd(path)
    if fd is not None:
        return fd
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(errno.ELOOP, "is a symlink (refused)", str(path)) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "directory" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else \
            "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "socket" if stat.S_ISSOCK(mode) else "special file"
        raise NotRegularFile(errno.EINVAL, f"is a {kind}, not a regular file", str(path))
    return fd


def read_regular(path: str | os.PathLike, limit: int, follow: bool = False) -> bytes:
    """The bytes of a regular file (see open_regular), at most `limit` + 1 of them (the caller
    compares the length with `limit` to say "too large")."""
    fd = open_regular(path, follow)
    try:
        chunks, left = [], limit + 1
        while left > 0:
            data = os.read(fd, min(left, 1 << 20))
            if not data:
                break
            chunks.append(data)
            left -= len(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


def file_sha256(path: str) -> str | None:
    """sha256 of a file's bytes (hex), None when it cannot be read."""
    import hashlib
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


FICLONE = 0x40049409            # <linux/fs.h>: _IOW(0x94, 9, int)
REFLINK, SPARSE_COPY = "reflink", "sparse copy"


def copy_file(src: str, dst: str) -> str:
    """dst := src, by reflink when the filesystem allows, else a sparse copy (the source's holes stay
    holes: a clone of a 10 GiB disk holding 100 MiB costs 100 MiB); says which it was. Through a temp
    file renamed over dst or, where dst's directory cannot be written (a jail holds the disk file,
    not its directory), into dst in place, truncated first."""
    import fcntl
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_TRUNC
    try:
        out, tmp = os.open(dst + ".tmp", flags | os.O_CREAT, 0o600), dst + ".tmp"
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        out, tmp = os.open(dst, flags), None
    fin = open_regular(src)
    try:
        try:
            fcntl.ioctl(out, FICLONE, fin)
            how = REFLINK
        except OSError:
            _copy_extents(fin, out)
            how = SPARSE_COPY
        os.fsync(out)
    except BaseException:
        if tmp is not None:
            os.unlink(tmp)
        raise
    finally:
        os.close(fin)
        os.close(out)
    if tmp is not None:
        os.replace(tmp, dst)
    return how


def _copy_extents(fin: int, out: int) -> None:
    """The data extents of `fin` (SEEK_DATA / SEEK_HOLE) copied kernel-side; the size set last."""
    size = os.fstat(fin).st_size
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fin, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:           # no data after pos: the rest is a hole
                break
            raise
        end = os.lseek(fin, start, os.SEEK_HOLE)
        done = start
        while done < end:
            n = os.copy_file_range(fin, out, end - done, done, done)
            if n == 0:
                break
            done += n
        pos = end
    os.ftruncate(out, size)
