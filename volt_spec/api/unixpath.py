"""Unix sockets at any depth: bind and connect past sun_path's 108 bytes.

A $VOLT_HOME a few directories down (a CI workspace, a test's temporary directory) puts
`pool/<shape>/<id>/run/api.sock` past the limit, and bind() then fails with "AF_UNIX path too
long". A longer path is reached through an O_PATH descriptor of its directory: the kernel
resolves /proc/self/fd/N/NAME as it would the path itself (systemd connects the same way).
"""

from __future__ import annotations

import os
import socket

SUN_PATH_MAX = 107          # sun_path's bytes, less the terminating NUL


def bind(sock: socket.socket, path: str, mode: int | None = None) -> None:
    """`mode`: the socket file's permissions, set on the socket before bind() (Linux creates the
    file with the socket inode's mode less the umask), so it is born with them: no window where
    others may connect, and no process-wide umask swap racing the process's other threads."""
    if mode is not None:
        os.fchmod(sock.fileno(), mode)
    _via_short_path(sock.bind, path)


def connect(sock: socket.socket, path: str) -> None:
    _via_short_path(sock.connect, path)


def _via_short_path(call, path: str) -> None:
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        call(path)
        return
    head, name = os.path.split(path)
    fd = os.open(head or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        call(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)
