"""Raw structure bytes <-> base64 text for state.json."""

from __future__ import annotations

import binascii
import ctypes


def pack(struct: ctypes.Structure) -> str:
    return binascii.b2a_base64(bytes(struct), newline=False).decode()


def unpack_into(cls: type, text: str) -> ctypes.Structure:
    """A `cls` instance filled from base64 `text`; refuses a size mismatch."""
    return from_raw(cls, binascii.a2b_base64(text))


def from_raw(cls: type, raw: bytes) -> ctypes.Structure:
    """A `cls` instance holding exactly `raw`; refuses a size mismatch."""
    if len(raw) != ctypes.sizeof(cls):
        raise ValueError(f"{cls.__name__}: {len(raw)} bytes in the snapshot, {ctypes.sizeof(cls)} expected")
    return cls.from_buffer_copy(raw)


def b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode()


def unb64(text: str) -> bytes:
    return binascii.a2b_base64(text)
