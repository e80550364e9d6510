"""Device state <-> JSON: the one codec for every device's entry in state.json.

A state class declares `FIELDS = {name: (kind, default)}` (see devices/state.py); this
module reads only the class it is handed, so snapshot/ never imports the devices.
Kinds and their JSON form:

    int, bool, str          the JSON value itself (an int is never a bool)
    bytes                   {"b64": "<base64>"}
    [kind]                  a list of `kind`
    a state class           an object, recursively
    (StateA, StateB)        an object: the class that has its field names

Decoding is strict, because a snapshot from another build must fail loudly rather than
half-load: unknown or missing fields, a wrong type, and base64 that does not re-encode
to the same text are refused with a one-line ValueError naming the class and the field.
Ranges and lengths are left to each device's `restore()`.
"""

from __future__ import annotations

import binascii

from .b64 import b64, unb64

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol, TypeVar

    class State(Protocol):
        FIELDS: dict[str, tuple[object, object]]

    S = TypeVar("S", bound=State)

_SCALARS = (int, bool, str)


def encode(state: State) -> dict:
    """The JSON-ready form of `state`; a value that does not fit its kind is a bug, refused."""
    cls = type(state)
    return {name: _encode_value(kind, getattr(state, name), f"{cls.__name__}.{name}")
            for name, (kind, _) in cls.FIELDS.items()}


def _encode_value(kind: object, value: object, where: str) -> object:
    if kind is bytes:
        if isinstance(value, (bytes, bytearray)):
            return {"b64": b64(bytes(value))}
    elif isinstance(kind, list):
        if isinstance(value, (list, tuple)):
            return [_encode_value(kind[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    elif kind in _SCALARS:
        if _is(kind, value):
            return value
    elif isinstance(value, kind):         # a state class, or a tuple of them
        return encode(value)
    raise ValueError(f"{where}: {_show(value)} is not {_kind_name(kind)}")


def decode(cls: type[S], data: object) -> S:
    """A `cls` state from its JSON form; ValueError (one line) for anything but an exact fit."""
    return _decode_state(cls, data, cls.__name__)


def _decode_state(cls: type[S], data: object, where: str) -> S:
    label = where if where == cls.__name__ else f"{where} ({cls.__name__})"
    if not isinstance(data, dict):
        raise ValueError(f"{label}: {_show(data)} is not an object")
    fields = cls.FIELDS
    unknown = sorted(str(name) for name in data if name not in fields)
    missing = [name for name in fields if name not in data]
    if unknown or missing:
        problems = ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []) \
            + ([f"missing field(s) {', '.join(missing)}"] if missing else [])
        raise ValueError(f"{label}: {'; '.join(problems)}")
    return cls(**{name: _decode_value(kind, data[name], f"{where}.{name}")
                  for name, (kind, _) in fields.items()})


def _decode_value(kind: object, value: object, where: str) -> object:
    if kind in _SCALARS:
        if not _is(kind, value):
            raise ValueError(f"{where}: {_show(value)} is not {_kind_name(kind)}")
        return value
    if kind is bytes:
        return _decode_bytes(value, where)
    if isinstance(kind, list):
        if not isinstance(value, list):
            raise ValueError(f"{where}: {_show(value)} is not a list")
        return [_decode_value(kind[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(kind, tuple):
        return _decode_state(_pick(kind, value), value, where)
    return _decode_state(kind, value, where)


def _decode_bytes(value: object, where: str) -> bytes:
    if not isinstance(value, dict) or set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise ValueError(f'{where}: {_show(value)} is not {{"b64": "<base64>"}}')
    text = value["b64"]
    try:
        raw = unb64(text)
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or b64(raw) != text:       # the decoder skips junk; a round trip does not
        raise ValueError(f"{where}: {_show(text)} is not base64")
    return raw


def _pick(classes: tuple[type, ...], value: object) -> type:
    """The union member whose fields `value` has most of (an exact fit if there is one)."""
    names = set(value) if isinstance(value, dict) else set()
    return max(classes, key=lambda cls: (names == set(cls.FIELDS), len(names & set(cls.FIELDS))))


def _is(kind: type, value: object) -> bool:
    """isinstance, except that a bool is not an int (JSON true must not pass for 1)."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _kind_name(kind: object) -> str:
    if isinstance(kind, tuple):
        return " or ".join(f"a {cls.__name__}" for cls in kind)
    if isinstance(kind, list):
        return f"a list of {_kind_name(kind[0])}"
    return "an int" if kind is int else f"a {kind.__name__}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
