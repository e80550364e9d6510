"""json.loads without importing `json` (which pulls in `re`, `enum`, ~8 ms) on the restore path.

CPython's own C scanner (`_json.make_scanner`) does the parsing; only the small
context object `json.decoder.JSONDecoder` would give it is written out here.
Falls back to the `json` module if `_json` is unavailable.
"""

from __future__ import annotations


def _constant(name: str) -> float:
    return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_constant)


try:
    from _json import make_scanner as _make_scanner
    _scan = _make_scanner(_Context())
except ImportError:  # pragma: no cover - every CPython has _json
    _scan = None


def loads(raw: bytes | str):
    text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    if _scan is None:
        import json
        return json.loads(text)
    start = len(text) - len(text.lstrip())
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError("expecting a JSON value") from None
    if text[end:].strip():
        raise ValueError(f"extra data at character {end}")
    return value
