"""Unix sockets past sun_path's 108 bytes (a deep $VOLT_HOME): bind and connect still work."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from volt_spec.api import unixpath


def deep(tmp_path):
    d = tmp_path / ("d" * 60) / ("e" * 60)
    d.mkdir(parents=True)
    return str(d / "api.sock")


def test_a_path_past_sun_path_binds_and_connects(tmp_path):
    path = deep(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as plain, pytest.raises(OSError):
        plain.bind(path)                                   # what this module exists for
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        unixpath.bind(server, path)
        server.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            unixpath.connect(client, path)
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
    assert (tmp_path / ("d" * 60) / ("e" * 60) / "api.sock").is_socket()


def test_a_short_path_is_used_as_it_is(tmp_path):
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        unixpath.bind(server, path)
        assert server.getsockname() == path


def test_a_missing_directory_is_an_error_naming_it(tmp_path):
    path = str(tmp_path / ("x" * 120) / "api.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, pytest.raises(FileNotFoundError):
        unixpath.connect(s, path)


@pytest.mark.parametrize("depth", ["short", "deep"])
def test_a_mode_given_is_the_socket_files_from_its_birth_and_the_umask_is_untouched(tmp_path, depth):
    path = deep(tmp_path) if depth == "deep" else str(tmp_path / "s.sock")
    old = os.umask(0)                     # a permissive umask would leave the file 0777
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            unixpath.bind(server, path, 0o600)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert os.umask(0) == 0       # bind did not swap the process's umask
    finally:
        os.umask(old)
