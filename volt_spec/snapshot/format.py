"""state.json: the snapshot container, versioned and CRC-checked.

    {"format": "volt-snapshot", "version": "1.0.0", "crc64": "<16 hex digits>", "state": {...}}

`crc64` is CRC-64/ECMA-182 (see crc.py) over exactly the UTF-8 bytes of
json.dumps(state, sort_keys=True, separators=(",", ":")) -- the canonical form of
the "state" member, whatever whitespace the file itself uses. Bytes inside the
state are base64 text. A reader refuses: other formats, a major version it does not
know, unknown top-level members, a CRC mismatch, and files over MAX_STATE_BYTES.
Memory lives beside it in memory.snap (see memory_file.py).
"""

from __future__ import annotations

import os

from .crc import crc64

FORMAT = "volt-snapshot"
VERSION = "1.0.0"
MAX_STATE_BYTES = 64 << 20
STATE_FILE = "state.json"
MEMORY_FILE = "memory.snap"
TOP_LEVEL = {"format", "version", "crc64", "state"}
# What a snapshot may name as one of its files: [A-Za-z0-9][A-Za-z0-9._-]{0,127} (no '/', no '..').
# Checked without `re`: this module is on volt-vmm's restore path, which keeps its imports lean.
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_NAME_CHARS = _ALNUM | frozenset("._-")


def plain_file_name(name: object) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= 128 and name[0] in _ALNUM
            and all(c in _NAME_CHARS for c in name))


class SnapshotError(RuntimeError):
    """A snapshot that cannot be used: the message is the one-line reason."""


def canonical(state: dict) -> bytes:
    import json
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()


def encode(state: dict) -> bytes:
    import json
    body = canonical(state)
    doc = {"format": FORMAT, "version": VERSION, "crc64": f"{crc64(body):016x}"}
    # The state member is written in its canonical form, so the file's bytes are easy to check by hand.
    head = json.dumps(doc, sort_keys=True)[:-1]
    return head.encode() + b', "state": ' + body + b"}\n"


def decode(raw: bytes, where: str) -> dict:
    """The verified state of a state.json file's bytes."""
    doc, state = parse(raw, where)
    verify(raw, doc, state, where)
    return state


def parse(raw: bytes, where: str) -> tuple[dict, dict]:
    """(document, state) after the structural checks, before the CRC (see `verify`)."""
    if len(raw) > MAX_STATE_BYTES:
        raise SnapshotError(f"{where}: {len(raw)} bytes is over the {MAX_STATE_BYTES >> 20} MiB limit")
    from .fastjson import loads
    try:
        doc = loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise SnapshotError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnapshotError(f"{where}: not a volt snapshot (format is not {FORMAT!r})")
    unknown = set(doc) - TOP_LEVEL
    if unknown:
        raise SnapshotError(f"{where}: unknown member(s) {', '.join(sorted(unknown))}")
    version = str(doc.get("version", ""))
    if version.split(".")[0] != VERSION.split(".")[0]:
        raise SnapshotError(f"{where}: snapshot format version {version!r} is not supported "
                            f"(this volt reads {VERSION.split('.')[0]}.x)")
    state = doc.get("state")
    if not isinstance(state, dict):
        raise SnapshotError(f"{where}: no state object")
    return doc, state


def verify(raw: bytes, doc: dict, state: dict, where: str) -> None:
    """Refuse a state whose CRC-64 does not match the one recorded."""
    want = str(doc.get("crc64", ""))
    # Files we wrote hold the state in canonical form already: CRC those bytes as they are,
    # and re-serialise only when that does not match (a file reformatted by hand, or corrupt).
    got = f"{crc64(_state_bytes(raw)):016x}"
    if got != want.lower().removeprefix("0x"):
        got = f"{crc64(canonical(state)):016x}"
    if want.lower().removeprefix("0x") != got:
        raise SnapshotError(f"{where}: CRC-64 mismatch (recorded {want}, computed {got}): the file is corrupt")


def _state_bytes(raw: bytes) -> bytes:
    """The bytes of the "state" member as `encode` lays it out (the last member of the object)."""
    start = raw.find(b', "state": ')
    end = raw.rstrip().rfind(b"}")
    return raw[start + 11:end] if 0 <= start < end else b""


def read_state(snapshot_dir: str) -> dict:
    raw, path = read_raw(snapshot_dir)
    return decode(raw, path)


def read_raw(snapshot_dir: str) -> tuple[bytes, str]:
    """state.json's bytes: a regular file (a FIFO or device planted there is refused, never
    waited on; a symlink too), read up to one byte past MAX_STATE_BYTES."""
    from ..fsutil import read_regular
    path = os.path.join(snapshot_dir, STATE_FILE)
    try:
        raw = read_regular(path, MAX_STATE_BYTES)
    except FileNotFoundError:
        raise SnapshotError(f"{snapshot_dir}: no {STATE_FILE} (not a snapshot, or an unfinished one)") from None
    except OSError as e:
        raise SnapshotError(f"{path}: {e.strerror or e}") from None
    return raw, path


def snapshot_file(snapshot_dir: str, name: object, what: str = "file") -> str:
    """The path of a file a snapshot names (memory.snap, a disk copy): a plain name inside the
    snapshot's own directory, never a path (a crafted state.json could name any host file)."""
    if not plain_file_name(name):
        raise SnapshotError(f"{snapshot_dir}: the {what} named in state.json ({name!r}) is not a plain file name "
                            f"in the snapshot's directory")
    return os.path.join(snapshot_dir, name)


def memory_path(snapshot_dir: str, layout: dict) -> str:
    return snapshot_file(snapshot_dir, layout.get("file", MEMORY_FILE), "memory file")
