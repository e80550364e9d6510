"""Spec files the schema accepted before: their documents, read back instead of parsed again.

A file whose every document is a mapping the JSON Schema accepts is kept as its documents (data,
and the line:col of every key and value) under a key over its text and all that decides those two
stages: vm.schema.json, the parser and the schema check (source.py, messages.py), the installed
ruamel.yaml, its C parser, jsonschema and referencing (their files' size and mtime), Python's
version. The same text read again skips YAML and jsonschema (the ~50 ms import and validator): its
stage-2 rules (files, host limits, names across files) are checked as always, and a file that
fails stage 1 is never kept, so its errors come from the parser and the schema as without a cache.

Entries are files under $VOLT_CACHE (else ~/.cache/volt-spec)/specs/ (0600), at most MAX_ENTRIES
of at most MAX_BYTES in all (the oldest go); one that is not this user's own regular file, names
another key, cannot be read or makes no sense is ignored, and one that cannot be written is not:
either way the file is parsed and checked as without a cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path

from .source import Document

FORMAT = b"volt-spec-cache 1"
MAX_ENTRIES = 512
MAX_BYTES = 64 << 20           # 5000 documents make ~5 MiB
_CODE = ("source.py", "messages.py")                               # this package's, next to this file
_INSTALLED = ("ruamel.yaml", "_ruamel_yaml", "jsonschema", "referencing")   # by their files' size and mtime


def cache_dir() -> Path:
    """$VOLT_CACHE/specs, else ~/.cache/volt-spec/specs (the test guest's and kernels' cache)."""
    env = os.environ.get("VOLT_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "volt-spec") / "specs"


@functools.cache
def fingerprint() -> bytes:
    """What decides a file's documents and the schema's verdict, besides the file's text."""
    from .files import schema_text
    h = hashlib.sha256(FORMAT + repr(sys.version_info[:2]).encode() + b"\0" + schema_text().encode())
    here = Path(__file__).parent
    for name in _CODE:
        h.update(b"\0" + name.encode() + b"\0" + (here / name).read_bytes())
    for module in _INSTALLED:
        h.update(b"\0" + module.encode() + b"\0" + _installed(module).encode())
    return h.digest()


def _installed(module: str) -> str:
    """Where `module` is installed and its file's size and mtime, found without importing it."""
    from importlib.util import find_spec
    try:
        spec = find_spec(module)
        st = os.stat(spec.origin)
    except (ImportError, ValueError, AttributeError, TypeError, OSError):
        return "absent"
    return f"{spec.origin}:{st.st_size}:{st.st_mtime_ns}"


def _key(text: str) -> str:
    return hashlib.sha256(fingerprint() + text.encode()).hexdigest()


def lookup(file: str, text: str) -> list[Document] | None:
    """The documents of `text` (named `file`) when it passed before, else None. Only an entry that
    is this user's own regular file and names this key is read: under sudo, $HOME (and so the
    cache) may be another user's, who must not choose what root's `volt apply` reads."""
    from ..fsutil import open_regular
    try:
        key = _key(text)
        fd = open_regular(cache_dir() / f"{key}.json")
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_uid != os.geteuid():
                return None
            raw = json.loads(f.read())
        if raw["key"] != key:
            return None
        return [_document(file, i, d) for i, d in enumerate(raw["documents"])] or None
    except Exception:  # noqa: BLE001 - missing, unreadable or not ours: parse the file
        return None


def _document(file: str, index: int, d: dict) -> Document:
    if not isinstance(d["data"], dict):
        raise ValueError("not a mapping")
    return Document(file, index, d["data"], _pos(d["start"]),
                    {tuple(p): _pos(pos) for p, pos in d["values"]}, {tuple(p): _pos(pos) for p, pos in d["keys"]})


def _pos(pos: list) -> tuple[int, int]:
    line, col = pos
    if type(line) is not int or type(col) is not int:
        raise ValueError("not a position")
    return line, col


def store(text: str, docs: list[Document]) -> None:
    """Keep the documents of a file that passed stage 1 (best effort: never fails)."""
    try:
        key = _key(text)
        body = json.dumps({"key": key, "documents": [
            {"data": d.data, "start": d.start, "values": [[p, pos] for p, pos in d.values.items()],
             "keys": [[p, pos] for p, pos in d.keys.items()]} for d in docs]}, separators=(",", ":"))
        if len(body) > MAX_BYTES:
            return
        folder = cache_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(body)
            os.replace(tmp, folder / f"{key}.json")     # readers see no entry or all of it
        finally:
            tmp.unlink(missing_ok=True)
        _prune(folder)
    except Exception:  # noqa: BLE001 - a read-only or full disk, another's folder: no cache, same answers
        pass


def _prune(folder: Path) -> None:
    """Keep the newest entries: at most MAX_ENTRIES, of at most MAX_BYTES in all."""
    entries = sorted(os.scandir(folder), key=lambda e: e.stat().st_mtime_ns, reverse=True)
    total = 0
    for i, e in enumerate(entries):
        total += e.stat().st_size
        if i >= MAX_ENTRIES or total > MAX_BYTES:
            try:
                os.unlink(e.path)
            except OSError:
                pass
