"""CRC-64/ECMA-182 (poly 0x42F0E1EBA9EA3693, init 0, not reflected, xorout 0), via crcmod.

Check value: crc64(b"123456789") == 0x6C40DF5F0B497347. (crcmod's predefined
"crc-64" is a different CRC.) Importing `crcmod` costs ~15 ms (it pulls in typing
via crcmod.predefined), which would sit on the restore path; so we load crcmod's
C extension module by itself and give it the table, exactly as
`crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, rev=False, xorOut=0)` does. If
that is not possible, we fall back to the public API.
"""

from __future__ import annotations

import os
import struct
import sys

POLY = 0x142F0E1EBA9EA3693
WIDTH = 64
CHECK = 0x6C40DF5F0B497347


def _table() -> bytes:
    mask = (1 << WIDTH) - 1
    poly = POLY & mask
    top = 1 << (WIDTH - 1)
    out = []
    for i in range(256):
        crc = i << (WIDTH - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
        out.append(crc)
    return struct.pack("<256Q", *out)


def _load_extension():
    import _imp
    for entry in sys.path:
        folder = os.path.join(entry or ".", "crcmod")
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith("_crcfunext") and name.endswith(".so"):
                spec = type("Spec", (), {"name": "crcmod._crcfunext", "origin": os.path.join(folder, name)})
                module = _imp.create_dynamic(spec)
                _imp.exec_dynamic(module)
                return module
    return None


def _make():
    try:
        ext = _load_extension()
    except Exception:  # noqa: BLE001 - any trouble: use the public API
        ext = None
    if ext is not None:
        table, fun = _table(), ext._crc64

        def crc64(data: bytes, crc: int = 0) -> int:
            return fun(data, crc, table)
        return crc64
    import crcmod
    return crcmod.mkCrcFun(POLY, initCrc=0, rev=False, xorOut=0)


crc64 = _make()
