"""The base of every device's saved state: declared fields with power-on defaults.

Each device module defines its state class beside the device (SerialState in serial.py,
QueueState in virtio/queue.py, ...) and names it as the device's `State`. A subclass
declares `__slots__` and `FIELDS = {name: (kind, default)}`; `kind` is what
snapshot/codec.py checks a saved value against and converts it by:

    int (never a bool), bool, str, bytes         a value of that type
    [kind]                                        a list of `kind`
    a DeviceState subclass                        a nested state
    (StateA, StateB)                              one of these nested states

States are plain classes, not dataclasses: volt-vmm's boot and restore path must not
import `dataclasses` (or `typing`, via `inspect`). They are immutable once built, so a
saved state cannot change under the snapshot writer. The device's `restore()` still
checks ranges and lengths: a state may be built by hand, and a kind says nothing of them.
"""

from __future__ import annotations


class _Required:
    """Marks a field without a power-on default (it must always be given)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


class DeviceState:
    """Fields from `FIELDS`, defaults filled in, unknown names refused."""

    __slots__ = ()
    FIELDS: dict = {}

    def __init__(self, **values: object) -> None:
        fields = self.FIELDS
        unknown = [name for name in values if name not in fields]
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown field(s) {', '.join(sorted(unknown))}")
        for name, (_, default) in fields.items():
            value = values.get(name, default)
            if value is REQUIRED:
                raise ValueError(f"{type(self).__name__}: field {name} is required")
            if isinstance(value, list) and name not in values:
                value = list(value)       # a default list is never shared between states
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use replace()")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.FIELDS)

    __hash__ = None                       # equal by value, and may hold lists

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__name__}({inner})"

    def replace(self, **changes: object) -> DeviceState:
        """A copy with `changes` applied (tests build invalid states this way)."""
        values = {name: getattr(self, name) for name in self.FIELDS}
        values.update(changes)
        return type(self)(**values)
