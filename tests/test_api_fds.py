"""File descriptors passed with API requests (SCM_RIGHTS), over real Unix sockets (no KVM).

The server runs in this process, so this process's fd table shows what it leaks. Leaks are
checked two ways: the non-socket entries of /proc/self/fd (sockets are left out: a closed
connection's server end may close a moment after the client has its reply), and pipes whose
write end is passed: once the test closes its own copy, the read end sees EOF only if every
other copy -- in the server, or in flight in a socket buffer -- is gone.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from volt_spec.api.client import ApiClient
from volt_spec.api.errors import ApiError
from volt_spec.api.server import ApiServer

LOAD = "/snapshot/load"


class FdVmm:
    """snapshot_load reports what it was handed: the fds' contents and flags, the body."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    def get_vm(self) -> dict:
        return {"state": "Running"}

    def snapshot_load(self, body: dict, fds: tuple) -> dict:
        now_ns = time.perf_counter_ns()
        self.bodies.append(dict(body))
        return {"count": len(fds), "contents": [_content(fd) for fd in fds],
                "cloexec": [bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC) for fd in fds],
                "arrived_ns": body.get("_arrived_ns"), "now_ns": now_ns}


def _content(fd: int) -> str | None:
    """A regular file's (a memfd's) first bytes; None for a pipe."""
    return os.pread(fd, 4096, 0).decode() if stat.S_ISREG(os.fstat(fd).st_mode) else None


@pytest.fixture
def serve(tmp_path: Path):
    """start(accept_fds=N) -> (a client, the handler) of a fresh in-process server."""
    servers: list[ApiServer] = []

    def start(accept_fds: int = 4) -> tuple[ApiClient, FdVmm]:
        handler = FdVmm()
        server = ApiServer(str(tmp_path / f"api{len(servers)}.sock"), handler, accept_fds=accept_fds)
        servers.append(server)
        server.start()
        return ApiClient(server.path, timeout=5.0), handler

    yield start
    for server in servers:
        server.close()


def memfd(content: bytes) -> int:
    fd = os.memfd_create("volt-test")
    os.write(fd, content)
    return fd


def non_socket_fds() -> int:
    """How many of this process's fds are not sockets."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue  # listdir's own directory fd, closed by now
        count += not target.startswith("socket:")
    return count


class PassedPipe:
    """A pipe whose write end is passed; after the request, `released()` says no copy is left."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def released(self) -> bool:
        """Close our write end; True when the read end then sees EOF (no other writer anywhere)."""
        os.close(self.w)
        try:
            return os.read(self.r, 1) == b""
        except BlockingIOError:
            return False
        finally:
            os.close(self.r)


def test_passed_fds_reach_snapshot_load_cloexec(serve):
    client, _ = serve()
    fds = [memfd(b"the state"), memfd(b"the memory")]
    try:
        reply = client.put(LOAD, {"fds": {"state": 0, "memory": 1}}, fds=fds)
        assert reply["contents"] == ["the state", "the memory"]
        assert reply["cloexec"] == [True, True]
        assert os.pread(fds[0], 64, 0) == b"the state"   # the client leaves the caller's fds open
    finally:
        for fd in fds:
            os.close(fd)


def test_fds_closed_after_every_request(serve):
    client, _ = serve()
    before = non_socket_fds()
    for i in range(50):
        pipe, content = PassedPipe(), memfd(f"request {i}".encode())
        try:
            reply = client.put(LOAD, {"fds": {"state": 0, "memory": 1}}, fds=[content, pipe.w])
        finally:
            os.close(content)
        assert reply["contents"] == [f"request {i}", None]
        assert pipe.released(), f"request {i}: the server still holds the passed pipe"
    assert non_socket_fds() == before


@pytest.mark.parametrize(("limit", "sent"), [(1, 2), (2, 3), (2, 8)])
def test_too_many_fds_is_400_and_closes_all(serve, limit: int, sent: int):
    # (1, 2): both fit the control buffer's padding, so the count refuses; the others are cut
    # short by the kernel (MSG_CTRUNC)
    client, handler = serve(accept_fds=limit)
    before = non_socket_fds()
    pipes = [PassedPipe() for _ in range(sent)]
    with pytest.raises(ApiError) as e:
        client.put(LOAD, {"fds": {"state": 0}}, fds=[p.w for p in pipes])
    assert e.value.status == 400
    assert f"too many file descriptors (at most {limit}" in e.value.message
    assert handler.bodies == []
    assert all(p.released() for p in pipes)
    assert non_socket_fds() == before


def test_server_without_accept_fds_discards_them(serve):
    client, handler = serve(accept_fds=0)
    before = non_socket_fds()
    pipe = PassedPipe()
    assert client.put(LOAD, {"snapshot_path": "/snap"}, fds=[pipe.w])["count"] == 0
    assert pipe.released(), "the kernel should have discarded the fd the server did not ask for"
    pipe = PassedPipe()
    with pytest.raises(ApiError) as e:
        client.put(LOAD, {"fds": {"state": 0}}, fds=[pipe.w])
    assert (e.value.status, e.value.message) == (400, "fds named but none were passed")
    assert pipe.released()
    assert len(handler.bodies) == 1
    assert non_socket_fds() == before


def test_fds_on_other_routes_are_closed_unseen(serve):
    client, _ = serve()
    before = non_socket_fds()
    pipe = PassedPipe()
    assert client.request("GET", "/vm", fds=[pipe.w]) == {"state": "Running"}
    assert pipe.released()
    assert non_socket_fds() == before


def test_arrived_ns_is_the_servers(serve):
    client, handler = serve()
    sent_ns = time.perf_counter_ns()
    reply = client.put(LOAD, {"snapshot_path": "/snap", "_arrived_ns": 1})
    assert sent_ns < reply["arrived_ns"] <= reply["now_ns"]
    assert handler.bodies[0]["_arrived_ns"] == reply["arrived_ns"]


@pytest.mark.parametrize("body", [{}, {"fds": [0]}, {"snapshot_path": 3}, {"clock": "continue"}])
def test_load_needs_a_path_or_an_fds_object(serve, body: dict):
    client, handler = serve()
    fd = memfd(b"x")
    try:
        with pytest.raises(ApiError) as e:
            client.put(LOAD, body, fds=[fd])
    finally:
        os.close(fd)
    assert e.value.status == 400 and handler.bodies == []


def put_load(body: bytes) -> bytes:
    return b"PUT /snapshot/load HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def read_status(rfile) -> int:
    """One reply's status, its head and body consumed."""
    status = int(rfile.readline().split()[1])
    length = 0
    while (line := rfile.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        length = int(value) if name.lower() == "content-length" else length
    rfile.read(length)
    return status


def test_pipelined_requests_fds_and_arrival(serve):
    """Two loads in one send: the fds, on the first bytes, are the first request's; the second
    request (already buffered) arrives when its parse starts, after the first's."""
    client, handler = serve()
    data = put_load(b'{"fds": {"state": 0}, "x": "first"}') + put_load(b'{"snapshot_path": "/snap"}')
    pipe = PassedPipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(client.path)
        s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pipe.w]))])
        with s.makefile("rb") as rfile:
            assert [read_status(rfile), read_status(rfile)] == [200, 200]
    first, second = handler.bodies
    assert first["x"] == "first" and "snapshot_path" in second
    assert 0 < first["_arrived_ns"] <= second["_arrived_ns"]
    assert pipe.released()


def test_cold_vmm_refuses_a_load_by_fds():
    from volt_spec.vmm.api_handler import ConfigApi
    with pytest.raises(ApiError) as e:
        ConfigApi(None, None).snapshot_load({"fds": {"state": 0}}, (0,))
    assert e.value.status == 400 and "volt-vmm --warm" in e.value.message
