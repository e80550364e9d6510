"""A tiny initramfs (cpio newc, gzip) with busybox and an /init that prints a marker and powers off."""

from __future__ import annotations

import gzip
from pathlib import Path

INIT_MARKER = "VOLT-LINUX-INIT"
INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox echo "{INIT_MARKER} $(/bin/busybox cat /proc/cpuinfo | /bin/busybox grep -c ^processor) cpus"
/bin/busybox poweroff -f
"""


def _entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    head = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    blob = head + name.encode() + b"\0"
    blob += b"\0" * (-len(blob) % 4)
    blob += data + b"\0" * (-len(data) % 4)
    return blob


def build_initramfs(busybox: Path, out: Path) -> Path:
    entries = [("bin", 0o040755, b""), ("proc", 0o040755, b""), ("dev", 0o040755, b""),
               ("bin/busybox", 0o100755, busybox.read_bytes()),
               ("bin/sh", 0o120777, b"busybox"),
               ("init", 0o100755, INIT_SCRIPT.encode())]
    archive = b"".join(_entry(n, m, d, i + 1) for i, (n, m, d) in enumerate(entries))
    archive += _entry("TRAILER!!!", 0, b"", 0)
    out.write_bytes(gzip.compress(archive, 6))
    return out
