"""Reading spec files: YAML documents as plain data, with the line:col of every key and value.

Each document is copied into plain dicts/lists/scalars (what JSON Schema checks and what gets
hashed), with the position of every mapping key/value and sequence item in a side table indexed
by path: from the composed nodes' marks on the fast path (load_documents), else from ruamel's
round-trip objects (``.lc``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from .errors import SpecError

TYPE_CHECKING = False
if TYPE_CHECKING:                  # annotations only: typing costs ~2 ms a command
    from typing import Any

MAX_NODES = 100_000          # alias bombs ("billion laughs") expand past this: refuse them
Path = tuple[str | int, ...]
Pos = tuple[int, int]


_HINTS = {       # ruamel's wording -> what the user probably did
    "expected <block end>": "; check the indentation",
    "mapping values are not allowed here": "; quote a value that contains ': '",
    "cannot start any token": "; YAML is indented with spaces, not tabs",
}


class _TooLarge(Exception):
    pass


class _Recursive(Exception):
    pass


@dataclass
class Document:
    """One YAML document of a spec file: its plain data and where each part of it was written."""

    file: str
    index: int
    data: Any
    start: Pos
    values: dict[Path, Pos] = field(default_factory=dict)
    keys: dict[Path, Pos] = field(default_factory=dict)

    def at(self, path: Path) -> Pos:
        """Position of the value at `path`, else of its nearest written ancestor."""
        path = tuple(path)
        while path:
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.start

    def key_at(self, path: Path) -> Pos:
        """Position of the mapping key that ends `path` (falls back to the value)."""
        return self.keys.get(tuple(path)) or self.at(path)


def line_count(text: str) -> int:
    """Lines in `text` as positions count them (at least 1)."""
    return max(1, text.count("\n") + (0 if text.endswith("\n") else 1))


def clamp(text: str, line: int, col: int, n: int | None = None) -> Pos:
    """Keep a parser position inside the file (end-of-stream marks may point one line past it).
    `n`: the file's line_count, when the caller knows it (counting is O(file), per position)."""
    n = line_count(text) if n is None else n
    if line < 1:
        return 1, 1
    if line > n:
        last = text.split("\n")[n - 1] if text else ""
        return n, len(last) + 1
    return line, max(col, 1)


def key_text(key: Any) -> str:
    """A mapping key as a string (YAML allows any scalar or even collections as keys)."""
    if isinstance(key, str):
        return str(key)
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _lc(obj: Any, kind: str, k: Any) -> Pos | None:
    try:
        line, col = getattr(obj.lc, kind)(k)
    except Exception:     # merged (<<) keys and odd nodes have no position: use the parent's
        return None
    return line + 1, col + 1


def _scalar(v: Any) -> Any:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    import datetime                     # here: only a timestamp or an odd scalar gets this far
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.decode("latin-1")
    if hasattr(v, "value") and hasattr(v, "tag"):        # TaggedScalar: `!custom text`
        return _scalar(v.value)
    return str(v)


class _Copier:
    """Copies ruamel's round-trip objects into plain Python, filling a Document's position tables."""

    def __init__(self, doc: Document, text: str, n_lines: int | None = None) -> None:
        self.doc, self.text, self.nodes, self.stack = doc, text, 0, set()
        self.n_lines = line_count(text) if n_lines is None else n_lines

    def _pos(self, obj: Any, kind: str, k: Any) -> Pos | None:
        pos = _lc(obj, kind, k)
        return None if pos is None else clamp(self.text, *pos, self.n_lines)

    def copy(self, obj: Any, path: Path) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooLarge
        if isinstance(obj, dict):
            return self._nest(obj, path, self._mapping)
        if isinstance(obj, (list, tuple)) and not isinstance(obj, str):
            return self._nest(obj, path, self._sequence)
        return _scalar(obj)

    def _nest(self, obj: Any, path: Path, how: Any) -> Any:
        if id(obj) in self.stack:
            raise _Recursive
        self.stack.add(id(obj))
        try:
            return how(obj, path)
        finally:
            self.stack.discard(id(obj))

    def _mapping(self, obj: dict, path: Path) -> dict:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            sub = path + (key_text(k),)
            if (kp := self._pos(obj, "key", k)) is not None:
                self.doc.keys[sub] = kp
            if (vp := self._pos(obj, "value", k)) is not None:
                self.doc.values[sub] = vp
            out[sub[-1]] = self.copy(v, sub)
        return out

    def _sequence(self, obj: list, path: Path) -> list:
        out = []
        for i, v in enumerate(obj):
            if (ip := self._pos(obj, "item", i)) is not None:
                self.doc.values[path + (i,)] = ip
            out.append(self.copy(v, path + (i,)))
        return out


def _char(c: Any) -> str:
    code = c if isinstance(c, int) else ord(str(c)[:1] or "\0")
    return f"U+{code:04X}"


def _yaml_error(file: str, text: str, e: Exception) -> SpecError:
    from ruamel.yaml.error import MarkedYAMLError
    from ruamel.yaml.reader import ReaderError
    if isinstance(e, MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        problem = " ".join(str(e.problem or e.context or "invalid YAML").split())
        if e.context and e.problem and e.context_mark is not None:
            problem += f" ({' '.join(str(e.context).split())} at line {e.context_mark.line + 1})"
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        hint = next((h for k, h in _HINTS.items() if k in problem), "")
        return SpecError(file, *clamp(text, line, col), f"YAML syntax error: {problem}{hint}")
    if isinstance(e, ReaderError):
        before = text[: max(e.position, 0)]
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        return SpecError(file, *clamp(text, line, col),
                         f"YAML syntax error: unacceptable character {_char(e.character)}")
    if isinstance(e, RecursionError):
        return SpecError(file, 1, 1, "YAML nested too deeply")
    return SpecError(file, 1, 1, f"YAML could not be read: {' '.join(str(e).split())}")


def load_documents(file: str, text: str) -> tuple[list[Document], list[SpecError]]:
    """Every document in `text`; a syntax error stops the file but keeps the documents before it.

    Plain files take the fast path (libyaml's C parser, when ruamel.yaml.clib is installed: ~10x
    ruamel's pure-Python round-trip parser); anything else (a syntax error, a duplicate key, a
    merge key, a custom tag, an alias bomb) is read again by the round-trip loader, whose
    positions and messages are the reference."""
    n_lines = line_count(text)
    fast = _fast_documents(file, text, n_lines)
    return fast if fast is not None else _roundtrip_documents(file, text, n_lines)


def _fast_documents(file: str, text: str, n_lines: int) -> tuple[list[Document], list[SpecError]] | None:
    from ruamel.yaml import YAML
    yaml = YAML(typ="safe", pure=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nodes = list(yaml.compose_all(text))
        docs = []
        for node in nodes:
            start = clamp(text, node.start_mark.line + 1, node.start_mark.column + 1, n_lines)
            doc = Document(file, len(docs), None, start)
            doc.data = _NodeCopier(doc, text, n_lines, yaml.constructor).copy(node, ())
            docs.append(doc)
    except Exception:      # noqa: BLE001 - not a plain file: the round-trip loader says what is wrong
        return None
    return (docs, []) if docs else None


class _Unusual(Exception):
    """Something the fast path leaves to the round-trip loader."""


_PLAIN_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "timestamp", "binary")}


class _NodeCopier:
    """Copies composed YAML nodes into plain Python with their positions (as _Copier does for
    round-trip objects); raises _Unusual for what only the round-trip loader handles."""

    def __init__(self, doc: Document, text: str, n_lines: int, constructor: Any) -> None:
        self.doc, self.text, self.n_lines, self.constructor = doc, text, n_lines, constructor
        self.nodes, self.stack = 0, set()

    def _pos(self, node: Any) -> Pos:
        return clamp(self.text, node.start_mark.line + 1, node.start_mark.column + 1, self.n_lines)

    def copy(self, node: Any, path: Path) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES or id(node) in self.stack:
            raise _Unusual
        kind = node.id
        if kind == "scalar":
            if node.tag not in _PLAIN_TAGS:
                raise _Unusual
            return _scalar(self.constructor.construct_object(node, deep=True))
        self.stack.add(id(node))
        try:
            if kind == "mapping" and node.tag == "tag:yaml.org,2002:map":
                return self._mapping(node, path)
            if kind == "sequence" and node.tag == "tag:yaml.org,2002:seq":
                return [self._item(item, path + (i,)) for i, item in enumerate(node.value)]
            raise _Unusual
        finally:
            self.stack.discard(id(node))

    def _item(self, node: Any, path: Path) -> Any:
        self.doc.values[path] = self._pos(node)
        return self.copy(node, path)

    def _mapping(self, node: Any, path: Path) -> dict:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.id != "scalar" or key_node.tag == "tag:yaml.org,2002:merge":
                raise _Unusual
            key = key_text(self.copy(key_node, path))
            if key in out:
                raise _Unusual                     # duplicate key: the round-trip loader's error
            sub = path + (key,)
            self.doc.keys[sub] = self._pos(key_node)
            self.doc.values[sub] = self._pos(value_node)
            out[key] = self.copy(value_node, sub)
        return out


def _roundtrip_documents(file: str, text: str, n_lines: int) -> tuple[list[Document], list[SpecError]]:
    from ruamel.yaml import YAML
    docs: list[Document] = []
    errors: list[SpecError] = []
    yaml = YAML(typ="rt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            constructor, parser = yaml.get_constructor_parser(text)
            try:
                while constructor.composer.check_node():
                    node = constructor.composer.get_node()
                    data = constructor.construct_document(node)
                    start = clamp(text, node.start_mark.line + 1, node.start_mark.column + 1, n_lines)
                    doc = Document(file, len(docs), None, start)
                    try:
                        doc.data = _Copier(doc, text, n_lines).copy(data, ())
                    except _TooLarge:
                        errors.append(SpecError(file, *start, f"document has more than {MAX_NODES} "
                                                "nodes once aliases are expanded"))
                        continue
                    except _Recursive:
                        errors.append(SpecError(file, *start, "document refers to itself "
                                                "through an alias"))
                        continue
                    docs.append(doc)
            finally:
                parser.dispose()
    except Exception as e:     # every ruamel failure becomes a positioned error, never a traceback
        errors.append(_yaml_error(file, text, e))
    if not docs and not errors:
        errors.append(SpecError(file, 1, 1, "file is empty: expected a VirtualMachine document"))
    return docs, errors
