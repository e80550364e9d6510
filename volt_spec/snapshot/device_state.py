"""Device states <-> JSON without importing dataclasses on the restore path.

Saving uses each device's own `save() -> State` (a frozen dataclass); its fields are
read through the class's `__dataclass_fields__`. Bytes become {"b64": ...}. Restoring
hands the device a plain attribute object: `restore(state)` only reads attributes
and validates them itself.
"""

from __future__ import annotations

import types

from .b64 import b64, unb64


def encode_state(state: object) -> dict:
    out = {}
    for name in type(state).__dataclass_fields__:
        value = getattr(state, name)
        if isinstance(value, (bytes, bytearray)):
            value = {"b64": b64(bytes(value))}
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def decode_state(data: dict) -> types.SimpleNamespace:
    fields = {}
    for name, value in data.items():
        if isinstance(value, dict) and set(value) == {"b64"}:
            value = unb64(value["b64"])
        fields[name] = value
    return types.SimpleNamespace(**fields)
