"""Atomic file writes: a temp file in the same directory, fsync, rename (and fsync the directory)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never half."""
    _atomic(Path(path), lambda out: out.write(data.encode() if isinstance(data, str) else data), mode)


def atomic_copy(src: Path, dest: Path, mode: int = 0o644) -> None:
    """Copy `src` to `dest` with the same guarantee."""
    with open(src, "rb") as inp:
        _atomic(Path(dest), lambda out: shutil.copyfileobj(inp, out), mode)


def _atomic(path: Path, fill, mode: int) -> None:
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
