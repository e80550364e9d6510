"""Strict readers for the VMM's config sections: one line naming the field when a value is wrong.

Kept free of `typing`, `dataclasses` and `json`: these run on the boot and restore path.
"""

from __future__ import annotations

MISSING = object()


class VmmConfigError(ValueError):
    """A bad VM configuration: the message is the one line the user sees."""


class Reader:
    """Reads one section (a dict) field by field; unknown fields are refused up front.

    `labels` renames fields in messages (the command line says `--memory`, vm.json says
    `machine.memory_mib`)."""

    def __init__(self, data: object, where: str, fields: tuple[str, ...], labels: dict | None = None) -> None:
        if not isinstance(data, dict):
            raise VmmConfigError(f"{where} must be an object")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise VmmConfigError(f"{where}: unknown field(s) {', '.join(map(str, unknown))} "
                                 f"(known: {', '.join(fields)})")
        self.data, self.where, self.labels = data, where, labels or {}

    def name(self, key: str) -> str:
        return self.labels.get(key) or f"{self.where}.{key}"

    def get(self, key: str, default: object = MISSING) -> object:
        value = self.data.get(key, default)
        if value is MISSING:
            raise VmmConfigError(f"{self.name(key)} is required")
        return value

    def int(self, key: str, default: object = MISSING, low: int = 0, high: int | None = None) -> int:
        value = self.get(key, default)
        if type(value) is not int or value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"{low} to {high}"
            raise VmmConfigError(f"{self.name(key)} must be an integer {bound}, not {value!r}")
        return value

    def number(self, key: str, default: object = MISSING, positive: bool = True) -> float:
        value = self.get(key, default)
        if type(value) not in (int, float) or (positive and not value > 0):
            raise VmmConfigError(f"{self.name(key)} must be a positive number, not {value!r}")
        return float(value)

    def flag(self, key: str, default: object = MISSING) -> bool:
        value = self.get(key, default)
        if type(value) is not bool:
            raise VmmConfigError(f"{self.name(key)} must be true or false, not {value!r}")
        return value

    def text(self, key: str, default: object = MISSING, empty: bool = False) -> str:
        value = self.get(key, default)
        if type(value) is not str or (not empty and not value) or "\0" in value:
            raise VmmConfigError(f"{self.name(key)} must be a {'' if empty else 'non-empty '}string "
                                 f"without NUL, not {value!r}")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self.data.get(key) is None else self.text(key)

    def choice(self, key: str, choices: tuple, default: object = MISSING) -> object:
        value = self.get(key, default)
        if value not in choices:
            raise VmmConfigError(f"{self.name(key)} must be {' or '.join(map(str, choices))}, not {value!r}")
        return value

    def items(self, key: str, where: str) -> list:
        value = self.get(key, [])
        if not isinstance(value, list):
            raise VmmConfigError(f"{where} must be a list")
        return value


def path_text(value: str, what: str) -> str:
    """A host path from the config: absolute paths are kept, others are made so."""
    import os
    if not value or "\0" in value:
        raise VmmConfigError(f"{what} must be a non-empty path without NUL")
    return os.path.abspath(value)


class Section:
    """A config section: `__slots__` are its fields; `to_dict` is the JSON form `from_dict` reads."""

    __slots__ = ()

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"
