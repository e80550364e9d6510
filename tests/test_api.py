"""The VMM's HTTP API over real Unix sockets, driven by a fake handler (no KVM)."""

from __future__ import annotations

import json
import select
import time
import os
import socket
import stat
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volt_spec.api.client import ApiClient
from volt_spec.api.errors import ApiError, ApiUnavailable, SocketInUse
from volt_spec.api.framing import MAX_BODY
from volt_spec.api.routes import SERVER_VERSION
from volt_spec.api.server import ApiServer

ROOT = Path(__file__).resolve().parents[1]


class FakeVmm:
    """Records calls; `gate` (when set) makes snapshot_create block until released."""

    def __init__(self) -> None:
        self.state = "Running"
        self.calls: list[tuple] = []
        self.lock = threading.Lock()
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def get_vm(self) -> dict:
        with self.lock:
            self.calls.append(("get_vm",))
        return {"state": self.state, "vcpus": 2}

    def set_state(self, state: str) -> None:
        self.calls.append(("set_state", state))
        self.state = "Paused" if state == "Paused" else "Running"

    def action(self, action_type: str, body: dict) -> None:
        if action_type == "Explode":
            raise RuntimeError("kaboom in the VMM")
        if action_type != "SendCtrlAltDel":
            raise ApiError(400, f"unsupported action {action_type}")
        self.calls.append(("action", action_type))

    def snapshot_create(self, body: dict) -> dict | None:
        if self.gate is not None:
            self.entered.set()
            self.gate.wait(10)
        if self.state != "Paused":
            raise ApiError(409, "snapshot needs a Paused VM")
        self.calls.append(("snapshot_create", body["snapshot_path"]))
        return {"bytes": 4096} if body.get("want_stats") else None

    def route(self, method: str, path: str, body: dict | None):
        match (method, path):
            case ("PUT", "/snapshot/policy"):
                self.calls.append(("policy", body))
                return 204, None
            case ("GET", "/snapshot/policy"):
                return 200, {"every_s": 30}
            case (_, "/snapshot/policy"):
                raise ApiError(405, "policy: GET or PUT", allow=("GET", "PUT"))
            case ("GET", "/weird"):
                return 200, {"obj": object()}
        return None


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "api.sock")


@pytest.fixture
def vmm() -> FakeVmm:
    return FakeVmm()


@pytest.fixture
def server(sock_path: str, vmm: FakeVmm):
    srv = ApiServer(sock_path, vmm)
    srv.start()
    yield srv
    srv.close()


@pytest.fixture
def client(server: ApiServer) -> ApiClient:
    return ApiClient(server.path, timeout=5.0)


def raw_connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def read_response(rfile) -> tuple[int, dict[str, str], bytes] | None:
    """One response from a raw connection: (status, headers, body), None at EOF."""
    line = rfile.readline()
    if not line:
        return None
    status = int(line.split()[1])
    headers = {}
    while (h := rfile.readline()) not in (b"\r\n", b""):
        name, _, value = h.decode().partition(":")
        headers[name.lower()] = value.strip()
    body = rfile.read(int(headers.get("content-length", 0)))
    return status, headers, body


def raw_exchange(path: str, data: bytes) -> tuple[int, dict[str, str], bytes] | None:
    with raw_connect(path) as s:
        s.sendall(data)
        return read_response(s.makefile("rb"))


# --- routes -------------------------------------------------------------------------


def test_get_vm(client: ApiClient) -> None:
    assert client.get("/vm") == {"state": "Running", "vcpus": 2}


def test_pause_resume(client: ApiClient, vmm: FakeVmm) -> None:
    assert client.patch("/vm", {"state": "Paused"}) is None
    assert client.get("/vm")["state"] == "Paused"
    client.patch("/vm", {"state": "Resumed"})
    assert [c for c in vmm.calls if c[0] == "set_state"] == [("set_state", "Paused"),
                                                             ("set_state", "Resumed")]


@pytest.mark.parametrize("body", [{"state": "Running"}, {"state": 1}, {},
                                  {"state": "Paused", "extra": 1}])
def test_patch_vm_rejects_bad_state(client: ApiClient, vmm: FakeVmm, body: dict) -> None:
    with pytest.raises(ApiError) as e:
        client.patch("/vm", body)
    assert e.value.status == 400
    assert not any(c[0] == "set_state" for c in vmm.calls)


def test_actions(client: ApiClient, vmm: FakeVmm) -> None:
    assert client.put("/actions", {"action_type": "SendCtrlAltDel"}) is None
    assert ("action", "SendCtrlAltDel") in vmm.calls
    with pytest.raises(ApiError) as e:
        client.put("/actions", {"action_type": "FlyAway"})
    assert (e.value.status, e.value.message) == (400, "unsupported action FlyAway")
    with pytest.raises(ApiError, match="action_type"):
        client.put("/actions", {"type": "SendCtrlAltDel"})


def test_snapshot_create_204_200_and_handler_status(client: ApiClient, vmm: FakeVmm) -> None:
    with pytest.raises(ApiError) as e:
        client.put("/snapshot/create", {"snapshot_path": "/s"})
    assert e.value.status == 409
    client.patch("/vm", {"state": "Paused"})
    assert client.put("/snapshot/create", {"snapshot_path": "/s"}) is None
    assert client.put("/snapshot/create", {"snapshot_path": "/t", "want_stats": True}) == {"bytes": 4096}
    with pytest.raises(ApiError, match="snapshot_path") as e:
        client.put("/snapshot/create", {"path": "/s"})
    assert e.value.status == 400


def test_missing_handler_method_is_404(client: ApiClient) -> None:
    with pytest.raises(ApiError) as e:  # FakeVmm has no snapshot_load
        client.put("/snapshot/load", {"snapshot_path": "/s"})
    assert e.value.status == 404


def test_fallback_route(client: ApiClient, vmm: FakeVmm) -> None:
    assert client.put("/snapshot/policy", {"every_s": 10}) is None
    assert ("policy", {"every_s": 10}) in vmm.calls
    assert client.get("/snapshot/policy") == {"every_s": 30}
    with pytest.raises(ApiError) as e:
        client.get("/nope")
    assert e.value.status == 404


def test_version(client: ApiClient) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert client.get("/") == {"name": "volt-vmm", "version": project["version"]}
    assert client.get("/version")["version"] == SERVER_VERSION


# --- error paths ----------------------------------------------------------------------


def test_405_carries_allow(server: ApiServer) -> None:
    status, headers, body = raw_exchange(server.path, b"DELETE /vm HTTP/1.1\r\n\r\n")
    assert status == 405
    assert headers["allow"] == "GET, PATCH"
    assert "fault_message" in json.loads(body)
    status, headers, _ = raw_exchange(server.path, b"POST /snapshot/policy HTTP/1.1\r\n\r\n")
    assert (status, headers["allow"]) == (405, "GET, PUT")


@pytest.mark.parametrize("body", [b"{nope", b"[1, 2]", b'"Paused"', b"\xff\xfe", b""])
def test_bad_json_is_400(server: ApiServer, body: bytes) -> None:
    req = b"PATCH /vm HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    status, headers, data = raw_exchange(server.path, req)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(data)["fault_message"]


def test_chunked_is_411(server: ApiServer, client: ApiClient) -> None:
    req = b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    with raw_connect(server.path) as s:
        s.sendall(req)
        rfile = s.makefile("rb")
        assert read_response(rfile)[0] == 411
        assert rfile.read() == b""  # connection closed: the chunks are never parsed as requests
    assert client.get("/vm")["state"] == "Running"


def test_handler_exception_is_500_and_server_lives(client: ApiClient) -> None:
    with pytest.raises(ApiError) as e:
        client.put("/actions", {"action_type": "Explode"})
    assert e.value.status == 500
    assert "kaboom in the VMM" in e.value.message
    with pytest.raises(ApiError) as e:
        client.get("/weird")  # handler returned something json cannot encode
    assert e.value.status == 500
    assert client.get("/vm")["vcpus"] == 2


def test_big_body_refused(server: ApiServer, client: ApiClient, vmm: FakeVmm) -> None:
    head = b"PUT /actions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
    assert raw_exchange(server.path, head)[0] == 413
    with pytest.raises(ApiError) as e:  # the client really sends 2 MiB; the reply still arrives
        client.put("/actions", {"action_type": "SendCtrlAltDel", "pad": "x" * (2 << 20)})
    assert e.value.status == 413
    assert not any(c[0] == "action" for c in vmm.calls)


def test_responses_have_content_type_and_length(server: ApiServer) -> None:
    with raw_connect(server.path) as s:
        s.sendall(b"GET /vm HTTP/1.1\r\n\r\nPATCH /vm HTTP/1.1\r\nContent-Length: 18\r\n\r\n"
                  b'{"state":"Paused"}')
        rfile = s.makefile("rb")
        status, headers, body = read_response(rfile)
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body)
        status, headers, body = read_response(rfile)
        assert (status, body) == (204, b"")
        assert headers["content-type"] == "application/json"


# --- socket file ------------------------------------------------------------------


def test_socket_mode_0600(server: ApiServer) -> None:
    st_ = os.stat(server.path)
    assert stat.S_ISSOCK(st_.st_mode)
    assert stat.S_IMODE(st_.st_mode) == 0o600


def test_stale_socket_replaced(sock_path: str, vmm: FakeVmm) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)
    dead.close()  # the file stays, nobody listens: what a crashed VMM leaves
    with ApiServer(sock_path, vmm):
        assert ApiClient(sock_path).get("/vm")["vcpus"] == 2
    assert not os.path.exists(sock_path)


def test_live_server_not_clobbered(server: ApiServer, client: ApiClient, vmm: FakeVmm) -> None:
    with pytest.raises(SocketInUse):
        ApiServer(server.path, FakeVmm())
    assert client.get("/vm")["vcpus"] == 2
    assert os.path.exists(server.path)


def test_regular_file_not_replaced(sock_path: str, vmm: FakeVmm) -> None:
    Path(sock_path).write_text("precious")
    with pytest.raises(FileExistsError):
        ApiServer(sock_path, vmm)
    assert Path(sock_path).read_text() == "precious"


def test_close_unlinks_and_client_reports_unavailable(server: ApiServer, client: ApiClient) -> None:
    assert client.ping()
    server.close()
    assert not os.path.exists(server.path)
    assert not client.ping()
    with pytest.raises(ApiUnavailable, match="no socket there") as e:
        client.get("/vm")
    assert server.path in str(e.value)


def test_refused_is_unavailable(sock_path: str) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)
    dead.close()
    with pytest.raises(ApiUnavailable, match="refused"):
        ApiClient(sock_path).get("/vm")


# --- concurrency and robustness --------------------------------------------------------


def test_concurrent_clients(client: ApiClient, vmm: FakeVmm) -> None:
    errors: list[BaseException] = []
    results: list[dict] = []

    def worker() -> None:
        try:
            for _ in range(20):
                results.append(client.get("/vm"))
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 200 and all(r["vcpus"] == 2 for r in results)
    assert vmm.calls.count(("get_vm",)) == 200


@pytest.mark.parametrize("garbage", [
    b"\x00\xff\xfe garbage\r\n\r\n",
    b"GET /vm\r\n\r\n",
    b"GET /vm HTTP/2.0\r\n\r\n",
    b"GET vm HTTP/1.1\r\n\r\n",
    b"GET /vm HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /vm HTTP/1.1\r\n folded: header\r\n\r\n",
    b"PUT /actions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"PUT /actions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
    b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n",
])
def test_garbage_gets_400_and_close(server: ApiServer, client: ApiClient, garbage: bytes) -> None:
    with raw_connect(server.path) as s:
        s.sendall(garbage)
        rfile = s.makefile("rb")
        status, _, body = read_response(rfile)
        assert status == 400
        assert json.loads(body)["fault_message"]
        assert rfile.read() == b""
    assert client.get("/vm")["vcpus"] == 2


@pytest.mark.parametrize("partial", [
    b"GET /v",
    b"GET /vm HTTP/1.1\r\nHost: x",
    b"PUT /actions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"action",
])
def test_disconnect_mid_request(server: ApiServer, client: ApiClient, vmm: FakeVmm,
                                partial: bytes) -> None:
    with raw_connect(server.path) as s:
        s.sendall(partial)
        s.shutdown(socket.SHUT_WR)
        assert s.makefile("rb").read() == b""  # the server hangs up without replying
    assert client.get("/vm")["vcpus"] == 2
    assert not any(c[0] == "action" for c in vmm.calls)


def test_keep_alive(server: ApiServer) -> None:
    with raw_connect(server.path) as s:
        rfile = s.makefile("rb")
        s.sendall(b"GET /vm HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(rfile)
        assert status == 200 and headers["connection"] == "keep-alive"
        s.sendall(b"PATCH /vm HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"state\":\"Paused\"}")
        assert read_response(rfile)[0] == 204
        s.sendall(b"get /VM HTTP/1.1\r\n\r\n")  # still open; paths and methods are case-sensitive
        assert read_response(rfile)[0] == 404
        s.sendall(b"GET /vm HTTP/1.1\r\ncOnNeCtIoN: close\r\n\r\n")  # header names are not
        status, headers, body = read_response(rfile)
        assert json.loads(body)["state"] == "Paused"
        assert headers["connection"] == "close"
        assert rfile.read() == b""


def test_http10_closes_by_default(server: ApiServer) -> None:
    with raw_connect(server.path) as s:
        s.sendall(b"GET /vm HTTP/1.0\r\n\r\n")
        rfile = s.makefile("rb")
        assert read_response(rfile)[0] == 200
        assert rfile.read() == b""


def test_timeout_is_unavailable(server: ApiServer, vmm: FakeVmm) -> None:
    vmm.gate = threading.Event()
    vmm.state = "Paused"
    try:
        with pytest.raises(ApiUnavailable, match="no reply within 0.2s"):
            ApiClient(server.path, timeout=0.2).put("/snapshot/create", {"snapshot_path": "/s"})
        assert vmm.entered.is_set()
    finally:
        vmm.gate.set()


def test_unaccepted_connection_times_out(sock_path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)  # connect succeeds into the backlog; nobody ever answers
    try:
        assert not ApiClient(sock_path).ping(timeout=0.1)
        with pytest.raises(ApiUnavailable):
            ApiClient(sock_path, timeout=0.1).get("/vm")
    finally:
        listener.close()


def test_server_import_stays_lean() -> None:
    code = ("import sys; import volt_spec.api.server; "
            "print(sorted({'threading', 'typing', 'http', 'email'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda m, rest: m + rest,
              st.sampled_from([b"GET /vm HTTP/1.1\r\n", b"PUT /actions HTTP/1.1\r\n",
                               b"PATCH /vm HTTP/1.1\r\nContent-Length: 4\r\n"]),
              st.binary(max_size=200)),
))
def test_random_bytes_never_kill_the_server(server: ApiServer, data: bytes) -> None:
    with raw_connect(server.path) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = s.makefile("rb").read()
    if not data.startswith((b"GET /vm HTTP/1.1\r\n", b"PUT ", b"PATCH ")):
        assert reply == b"" or reply.startswith(b"HTTP/1.1 400 ")
    else:  # a valid head may be followed by anything: any reply must still be well-formed
        assert reply == b"" or reply.startswith(b"HTTP/1.1 ")
    with raw_connect(server.path) as s:
        s.sendall(b"GET /vm HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, _, body = read_response(s.makefile("rb"))
    assert status == 200 and json.loads(body)["vcpus"] == 2


# --- abuse: bounded threads, capped connections, deadlines --------------------------------

def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_idle_connections_use_no_threads_and_past_the_cap_get_503(server: ApiServer, client: ApiClient) -> None:
    from volt_spec.api.server import MAX_CONNECTIONS
    before = _threads()
    socks = [raw_connect(server.path) for _ in range(MAX_CONNECTIONS + 20)]
    try:
        for s in socks[-10:]:       # the extra connections are refused at once with a 503
            status, _, body = read_response(s.makefile("rb"))
            assert status == 503 and "too many connections" in json.loads(body)["fault_message"]
        assert _threads() <= before, "a thread per connection"
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 10
    while True:                     # the server notices the hang-ups as it polls: then room again
        try:
            assert client.get("/vm")["vcpus"] == 2
            break
        except ApiError as e:
            assert e.status == 503 and time.monotonic() < deadline
            time.sleep(0.05)          # polling another thread's progress: no event to wait on


def test_a_client_trickling_its_head_is_dropped_at_the_deadline(server: ApiServer, monkeypatch) -> None:
    """Slowloris: a byte every 50 ms never idles the socket, but the head's deadline still passes."""
    import volt_spec.api.framing as framing
    monkeypatch.setattr(framing, "HEAD_TIMEOUT_S", 0.5)
    with raw_connect(server.path) as s:
        s.sendall(b"GET /vm HTTP/1.1\r\n")
        sent = 0
        try:
            while sent < 200:                     # 200 x 50 ms = 10 s: far past the deadline
                s.sendall(b"X")
                sent += 1
                time.sleep(0.05)                  # the stimulus: a slow client
                ready, _, _ = select.select([s], [], [], 0)
                if ready and s.recv(1) == b"":
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 200, "the server kept a trickling client past its deadline"


def test_a_huge_content_length_gets_413(server: ApiServer, client: ApiClient) -> None:
    with raw_connect(server.path) as s:
        s.sendall(b"PUT /actions HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")
        status, _, body = read_response(s.makefile("rb"))
    assert status == 413 and "Content-Length" in json.loads(body)["fault_message"]
    assert client.get("/vm")["vcpus"] == 2
