"""JSON form of the devices' frozen state dataclasses (kept apart from the types).

States hold only ints, bools, bytes and lists; bytes travel as base64
strings. Loading is strict: unknown or missing fields are refused, so a
snapshot from a different device version fails loudly instead of half-loading.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def state_to_dict(state: object) -> dict[str, Any]:
    """`dataclasses.asdict` with bytes fields as base64 text."""
    return {
        name: base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        for name, value in dataclasses.asdict(state).items()
    }


def state_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a `cls` state from `state_to_dict` output; refuses unknown or missing fields."""
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    if set(data) != names:
        raise ValueError(
            f"{cls.__name__}: unknown fields {sorted(set(data) - names)}, "
            f"missing {sorted(names - set(data))}"
        )
    values = {
        name: base64.b64decode(value, validate=True) if hints[name] is bytes else value
        for name, value in data.items()
    }
    return cls(**values)


def state_to_json(state: object) -> str:
    return json.dumps(state_to_dict(state), sort_keys=True)


def state_from_json(cls: type[T], text: str) -> T:
    return state_from_dict(cls, json.loads(text))
