"""`volt snapshots export` / `import`: a snapshot as one self-contained, compressed, checked file.

The file is zstd's seekable format (independent frames of FRAME bytes and an index; pyzstd
writes and reads it), so a reader can reach any part without decompressing what is before it.
Uncompressed, it is:

    MAGIC | manifest length (8 bytes, little-endian) | manifest (JSON) |
    each file's data extents, in manifest order | sha256 of everything before (32 bytes)

The manifest names the snapshot (id, vm) and each file (state.json, memory.snap, disk copies:
`name`, `size`, `extents`: the [offset, length] runs holding data, so a sparse memory file stays
sparse). A diff is exported in its full form (squash.py), so the file needs no parent. An import
is untrusted input: the manifest is checked (plain names, sizes, extents inside them, ascending)
before anything is written, every byte is hashed, the files land in a hidden directory that
becomes the snapshot only after the checksum, the state's CRC and the memory checksum match.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

from .format import MEMORY_FILE, STATE_FILE, SnapshotError, plain_file_name

MAGIC = b"VOLTEXP1"
FRAME = 4 << 20                      # uncompressed bytes per seekable frame
LEVEL = 1                            # zstd level: ~500 MB/s a core, ratio close to level 3 on guest RAM
CHUNK = 1 << 20
MAX_MANIFEST = 16 << 20
MAX_FILES = 64
MAX_FILE_BYTES = 1 << 42             # 4 TiB: more than any guest RAM or disk this host takes
MAX_EXTENTS = 1 << 20


class ExportError(SnapshotError):
    """An export that cannot be written or an import that is refused: the one-line reason."""


def export(snapshot_dir: str, out: str, vm: str, progress=None) -> dict:
    """Write `snapshot_dir` (a diff in its full form) to `out`, atomically (temp + fsync + rename)."""
    import shutil
    from .chain import is_diff
    from .format import read_state
    source, scratch = snapshot_dir, None
    if is_diff(read_state(snapshot_dir)):
        from .format import encode
        from .squash import squash_into
        scratch = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(os.path.normpath(snapshot_dir)))
        with open(os.path.join(scratch, STATE_FILE), "wb") as f:
            f.write(encode(squash_into(snapshot_dir, scratch)))
        source = scratch
    try:
        return _write(source, out, os.path.basename(os.path.normpath(snapshot_dir)), vm, progress)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _write(source: str, out: str, snap_id: str, vm: str, progress) -> dict:
    from pyzstd import CParameter, SeekableZstdFile
    from ..fsutil import open_regular
    from .fingerprint import FINGERPRINT_FILE
    names = sorted(e.name for e in os.scandir(source)
                   if e.is_file(follow_symlinks=False) and e.name != FINGERPRINT_FILE)
    fds = {name: open_regular(os.path.join(source, name)) for name in names}
    tmp = f"{out}.partial-{os.getpid()}"
    try:
        files = [{"name": n, "size": os.fstat(fd).st_size, "extents": _data_runs(fd)} for n, fd in fds.items()]
        manifest = json.dumps({"format": "volt-export", "version": 1, "id": snap_id, "vm": vm,
                               "files": files}, sort_keys=True).encode()
        digest = hashlib.sha256()
        option = {CParameter.compressionLevel: LEVEL, CParameter.checksumFlag: 1}
        with SeekableZstdFile(tmp, "w", level_or_option=option, max_frame_content_size=FRAME) as z:
            def put(data) -> None:
                z.write(data)
                digest.update(data)
            put(MAGIC + len(manifest).to_bytes(8, "little") + manifest)
            for f in files:
                for offset, length in f["extents"]:
                    for pos in range(offset, offset + length, CHUNK):
                        data = os.pread(fds[f["name"]], min(CHUNK, offset + length - pos), pos)
                        put(data)
                        if progress:
                            progress(len(data))
            z.write(digest.digest())
        _fsync(tmp)
        os.rename(tmp, out)
        _fsync(os.path.dirname(os.path.abspath(out)), directory=True)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        for fd in fds.values():
            os.close(fd)
    data = sum(n for f in files for _, n in f["extents"])
    return {"id": snap_id, "vm": vm, "file": out, "bytes": os.stat(out).st_size, "data_bytes": data}


def _data_runs(fd: int) -> list[list[int]]:
    from .memory_file import _file_data_runs
    return [[off, n] for off, n in _file_data_runs(fd, 0, os.fstat(fd).st_size)]


def _fsync(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(z) -> dict:
    """The manifest at the start of an open export, checked before anything is written."""
    head = z.read(len(MAGIC) + 8)
    if len(head) < len(MAGIC) + 8 or head[:len(MAGIC)] != MAGIC:
        raise ExportError("not a volt snapshot export (bad magic)")
    size = int.from_bytes(head[len(MAGIC):], "little")
    if size > MAX_MANIFEST:
        raise ExportError(f"its manifest claims {size} bytes (at most {MAX_MANIFEST})")
    raw = z.read(size)
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise ExportError(f"its manifest is not JSON ({e})") from None
    return check_manifest(manifest), head + raw


def check_manifest(m: object) -> dict:
    if not isinstance(m, dict) or m.get("format") != "volt-export" or m.get("version") != 1:
        raise ExportError("not a volt snapshot export of version 1")
    files = m.get("files")
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise ExportError(f"its manifest must list 1 to {MAX_FILES} files")
    names = set()
    for f in files:
        name, size, extents = (f.get("name"), f.get("size"), f.get("extents")) if isinstance(f, dict) else (None,) * 3
        if not plain_file_name(name) or name in names:
            raise ExportError(f"its manifest names a file {name!r}: not a plain, unique file name")
        names.add(name)
        if type(size) is not int or not 0 <= size <= MAX_FILE_BYTES:
            raise ExportError(f"{name}: bad size {size!r}")
        if not isinstance(extents, list) or len(extents) > MAX_EXTENTS:
            raise ExportError(f"{name}: bad extents")
        end = 0
        for e in extents:
            if (not isinstance(e, list) or len(e) != 2 or not all(type(v) is int for v in e)
                    or e[0] < end or e[1] <= 0 or e[0] + e[1] > size):
                raise ExportError(f"{name}: extent {e!r} is not inside the file, ascending")
            end = e[0] + e[1]
    from .compressed import FILE as COMPRESSED_FILE
    if STATE_FILE not in names or not names & {MEMORY_FILE, COMPRESSED_FILE}:
        raise ExportError(f"it holds no {STATE_FILE} or {MEMORY_FILE}")
    return m


def import_into(path: str, folder: str, snap_id: str, progress=None) -> str:
    """Unpack the export `path` as snapshot `snap_id` in `folder` (a VM's snapshot folder);
    returns the new snapshot's directory. Nothing is left behind when it is refused."""
    from pyzstd import SeekableFormatError, SeekableZstdFile, ZstdError
    dest = os.path.join(folder, snap_id)
    if os.path.exists(dest):
        raise ExportError(f"snapshot {snap_id} already exists")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{snap_id}.partial-", dir=folder)
    try:
        try:
            with SeekableZstdFile(path, "r") as z:
                manifest, head = read_manifest(z)
                _unpack(z, manifest, head, tmp, progress)
        except (ZstdError, SeekableFormatError, EOFError) as e:
            raise ExportError(f"it is corrupt ({e})") from None
        _verify(tmp)
        _fsync(tmp, directory=True)
        os.rename(tmp, dest)
        _fsync(folder, directory=True)
    except BaseException:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _unpack(z, manifest: dict, head: bytes, tmp: str, progress) -> None:
    digest = hashlib.sha256(head)
    for f in manifest["files"]:
        fd = os.open(os.path.join(tmp, f["name"]), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, f["size"])
            for offset, length in f["extents"]:
                for pos in range(offset, offset + length, CHUNK):
                    data = z.read(min(CHUNK, offset + length - pos))
                    if not data:
                        raise ExportError(f"it ends inside {f['name']} (truncated?)")
                    digest.update(data)
                    os.pwrite(fd, data, pos)
                    if progress:
                        progress(len(data))
            os.fsync(fd)
        finally:
            os.close(fd)
    if z.read(32) != digest.digest() or z.read(1):
        raise ExportError("its checksum does not match what it holds (corrupt or altered)")


def _verify(tmp: str) -> None:
    """The unpacked snapshot is sound: its state's CRC, and its memory read in full against the
    recorded checksum (then its fingerprint is recorded, so a restore need not read it again)."""
    from .fingerprint import record
    from .format import memory_path, read_state
    from .chain import is_diff
    from .compressed import CompressedError, checksum
    state = read_state(tmp)
    if is_diff(state):
        raise ExportError("it holds a diff snapshot (an export is a full one: it needs no parent)")
    layout = state.get("memory", {})
    mem, sha = memory_path(tmp, layout), layout.get("sha256")
    fd = os.open(mem, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            digest = checksum(fd, layout, mem)
        except (CompressedError, KeyError, TypeError, ValueError):
            digest = None
        if digest != sha:
            raise ExportError("its memory does not match the checksum in its state")
        record(tmp, fd, sha)
    finally:
        os.close(fd)
