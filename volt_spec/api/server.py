"""HTTP/1.1 server on a Unix stream socket, routing Firecracker-like endpoints.

Runs inside volt-vmm, so it imports only socket, select, json, os, stat, time, _queue and
_thread (no http.server, email, threading or typing). A fixed set of threads, whatever the
clients do: one poller accepts and watches idle keep-alive connections, WORKERS workers each
serve one readable connection at a time (one request, or a pipelined run of them) and hand it
back. Open connections are capped (MAX_CONNECTIONS: past it a 503 and a close), and every request
has deadlines: its head within HEAD_TIMEOUT_S, its body within BODY_TIMEOUT_S, the next request on
a kept-alive connection within the idle timeout, measured from the first byte read, so a client
trickling a byte at a time (slowloris) is dropped at the deadline. Handler calls are serialized by
one lock, as Firecracker's single API thread serializes requests to its VMM: a handler never races
itself. Every failure to parse a request becomes a 4xx reply and a closed connection, never a dead
server.
"""

from __future__ import annotations

import _queue
import _thread
import errno
import json
import os
import select
import socket
import stat
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from volt_spec.api.handler import ApiHandler

from volt_spec.api.errors import ApiError, SocketInUse

SERVER_NAME = "volt-vmm"
# Kept equal to pyproject's [project].version (tests compare them); reading
# importlib.metadata would drag email and zipfile into the VMM.
SERVER_VERSION = "0.1.0"

SOCKET_MODE = 0o600
BIND_UMASK = 0o177  # the socket file is born 0600: no window where others can connect
LISTEN_BACKLOG = 128
MAX_BODY = 1 << 20  # 1 MiB, Firecracker's default http_api_max_payload_size
MAX_LINE = 8192  # request line or one header line
MAX_HEADERS = 64
MAX_LEADING_BLANK_LINES = 4  # RFC 9112 2.2: ignore stray CRLFs before a request
IDLE_TIMEOUT_S = 60.0  # a kept-alive connection with no new request is dropped after this
HEAD_TIMEOUT_S = 10.0  # a request line and headers must arrive within this (the first request too)
BODY_TIMEOUT_S = 30.0  # and the body within this after the head
SEND_TIMEOUT_S = 10.0  # a client that does not read its reply is dropped after this
WORKERS = 4
MAX_CONNECTIONS = 64
MAX_LENGTH_DIGITS = 18  # a longer Content-Length is over any limit (and int() of 5000 digits raises)
LIVE_PROBE_TIMEOUT_S = 0.5

REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 204: "No Content",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Content Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable",
}

VM_STATES = ("Paused", "Resumed")
VERSION_PATHS = ("/", "/version")
# path -> {method: handler method name}; a route exists only if the handler has it.
ROUTES: dict[str, dict[str, str]] = {
    "/vm": {"GET": "get_vm", "PATCH": "set_state"},
    "/actions": {"PUT": "action"},
    "/snapshot/create": {"PUT": "snapshot_create"},
    "/snapshot/load": {"PUT": "snapshot_load"},
}
_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                         b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class _Reject(Exception):
    """A request the server refuses before routing; the connection then closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """One parsed request: method, path (no query), lower-cased headers, raw body."""

    __slots__ = ("method", "path", "headers", "body", "keep_alive")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes,
                 keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class _Conn:
    """One client connection and the bytes read from it but not yet parsed."""

    __slots__ = ("sock", "buf", "idle_until")

    def __init__(self, sock: socket.socket, idle_until: float) -> None:
        self.sock, self.buf, self.idle_until = sock, b"", idle_until

    def fill(self, deadline: float) -> bool:
        """Read what the client sent next, waiting no later than `deadline`; False at EOF."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def readline(self, deadline: float) -> bytes | None:
        """One line without its CRLF/LF; None when the client hung up mid-line."""
        while True:
            end = self.buf.find(b"\n", 0, MAX_LINE + 1)
            if end >= 0:
                line, self.buf = self.buf[:end + 1], self.buf[end + 1:]
                return _strip_line(line)
            if len(self.buf) > MAX_LINE:
                raise _Reject(400, f"line longer than {MAX_LINE} bytes")
            if not self.fill(deadline):
                return None

    def read(self, n: int, deadline: float) -> bytes | None:
        while len(self.buf) < n:
            if not self.fill(deadline):
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


class ApiServer:
    """The API socket: bound (0600) on construction, served after start(), removed by close()."""

    def __init__(self, path: str, handler: ApiHandler, *, max_body: int = MAX_BODY,
                 idle_timeout: float = IDLE_TIMEOUT_S, workers: int = WORKERS,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.path = path
        self.handler = handler
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.workers, self.max_connections = workers, max_connections
        self._handler_lock = _thread.allocate_lock()
        self._conns_lock = _thread.allocate_lock()
        self._conns: set[socket.socket] = set()       # every open connection (close() hangs up on them)
        self._ready = _queue.SimpleQueue()            # readable connections, for the workers
        self._returned: list[_Conn] = []              # kept-alive connections, back to the poller
        self._closing = False
        self._polling = _thread.allocate_lock()       # held while the poller runs
        _clear_stale_socket(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(BIND_UMASK)
            try:
                self._sock.bind(path)
            finally:
                os.umask(old_umask)
            os.chmod(path, SOCKET_MODE)
            self._ino = os.stat(path).st_ino
            self._sock.listen(LISTEN_BACKLOG)
            self._sock.setblocking(False)
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except BaseException:
            self._sock.close()
            raise

    def start(self) -> None:
        """Serve on background threads: the poller and the workers."""
        self._polling.acquire()
        _thread.start_new_thread(self._poll_loop, ())
        for _ in range(self.workers):
            _thread.start_new_thread(self._work_loop, ())

    def close(self) -> None:
        """Stop accepting, hang up on open connections and unlink the socket file."""
        if self._closing:
            return
        self._closing = True
        self._wake()
        if self._polling.locked():
            self._polling.acquire(True, 5.0)
        self._sock.close()
        for _ in range(self.workers):
            self._ready.put(None)
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            if os.stat(self.path).st_ino == self._ino:  # never unlink a successor's socket
                os.unlink(self.path)
        except OSError:
            pass

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass                      # the pipe is full: the poller is awake anyway

    # -- the poller: accepts, and watches idle connections -------------------------------------
    def _poll_loop(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        idle: dict[int, _Conn] = {}
        try:
            while not self._closing:
                now = time.monotonic()
                soonest = min((c.idle_until for c in idle.values()), default=now + 60.0)
                events = poller.poll(max(0, int((soonest - now) * 1000) + 1))
                for fd, _ in events:
                    if fd == self._sock.fileno():
                        self._accept(poller, idle)
                    elif fd == self._wake_r:
                        self._take_returned(poller, idle)
                    elif (conn := idle.pop(fd, None)) is not None:
                        poller.unregister(fd)
                        self._ready.put(conn)
                self._expire(poller, idle, time.monotonic())
        finally:
            for conn in idle.values():
                self._forget(conn.sock)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._polling.release()

    def _accept(self, poller, idle: dict[int, _Conn]) -> None:
        """Every connection waiting in the backlog (one accept per wakeup lets it overflow)."""
        while not self._closing:
            try:
                sock, _ = self._sock.accept()
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    _pause(0.05)  # out of fds: let connections finish
                return
            self._admit(sock, poller, idle)

    def _admit(self, sock: socket.socket, poller, idle: dict[int, _Conn]) -> None:
        with self._conns_lock:
            full = len(self._conns) >= self.max_connections
            if not full:
                self._conns.add(sock)
        if full:                      # refuse at once: a 503 the client can read, then hang up
            try:
                sock.setblocking(False)
                sock.send(_response(503, {"fault_message": f"too many connections (at most "
                                                           f"{self.max_connections})"}, close=True))
            except OSError:
                pass
            sock.close()
            return
        conn = _Conn(sock, time.monotonic() + min(self.idle_timeout, HEAD_TIMEOUT_S))
        idle[sock.fileno()] = conn
        poller.register(sock.fileno(), select.POLLIN)

    def _take_returned(self, poller, idle: dict[int, _Conn]) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._conns_lock:
            returned, self._returned = self._returned, []
        for conn in returned:
            idle[conn.sock.fileno()] = conn
            poller.register(conn.sock.fileno(), select.POLLIN)

    def _expire(self, poller, idle: dict[int, _Conn], now: float) -> None:
        for fd in [fd for fd, c in idle.items() if c.idle_until <= now]:
            poller.unregister(fd)
            self._forget(idle.pop(fd).sock)

    def _forget(self, sock: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(sock)
        sock.close()

    # -- the workers: one connection at a time ---------------------------------------------------
    def _work_loop(self) -> None:
        while True:
            conn = self._ready.get()
            if conn is None:
                return
            if self._serve(conn):
                conn.idle_until = time.monotonic() + self.idle_timeout
                with self._conns_lock:
                    self._returned.append(conn)
                self._wake()
            else:
                self._forget(conn.sock)

    def _serve(self, conn: _Conn) -> bool:
        """Answer the requests the client has sent; True to keep the connection for more."""
        try:
            while not self._closing:
                try:
                    request = self._read_request(conn)
                except _Reject as e:
                    self._send(conn, _response(e.status, {"fault_message": e.message}, close=True))
                    return False
                if request is None:
                    return False
                status, payload, allow = self.dispatch(request.method, request.path, request.body)
                keep = request.keep_alive and not self._closing
                try:
                    reply = _response(status, payload, close=not keep, allow=allow)
                except (TypeError, ValueError) as e:  # the handler returned something not JSON
                    reply = _response(500, {"fault_message": f"unserializable reply: {e}"},
                                      close=not keep)
                self._send(conn, reply)
                if not keep:
                    return False
                if not conn.buf:
                    return True           # wait for the next request in the poller, not here
        except (OSError, ValueError):
            pass  # peer vanished, missed its deadline, or the server is closing
        return False

    @staticmethod
    def _send(conn: _Conn, data: bytes) -> None:
        conn.sock.settimeout(SEND_TIMEOUT_S)
        conn.sock.sendall(data)

    def _read_request(self, conn: _Conn) -> Request | None:
        """Parse one request within its deadlines; None on a clean or mid-request hang-up."""
        deadline = time.monotonic() + HEAD_TIMEOUT_S
        line = b"\r\n"
        for _ in range(MAX_LEADING_BLANK_LINES + 1):
            line = conn.readline(deadline)
            if line is None:
                return None
            if line:
                break
        if not line:
            raise _Reject(400, "empty request")
        method, path, version = _parse_request_line(line)
        headers = {}
        while True:
            raw = conn.readline(deadline)
            if raw is None:
                return None
            if not raw:
                break
            if len(headers) >= MAX_HEADERS:
                raise _Reject(400, "too many header fields")
            name, value = _parse_header(raw)
            if name in headers:
                if name == "content-length" and headers[name] != value:
                    raise _Reject(400, "conflicting Content-Length fields")
                value = headers[name] + ", " + value
            headers[name] = value
        if "transfer-encoding" in headers:
            raise _Reject(411, "Transfer-Encoding is not supported; send Content-Length")
        length = _content_length(headers.get("content-length"), self.max_body)
        if length and "100-continue" in headers.get("expect", "").lower():
            self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        body = conn.read(length, time.monotonic() + BODY_TIMEOUT_S) if length else b""
        if body is None:
            return None
        tokens = {t.strip() for t in headers.get("connection", "").lower().split(",")}
        keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
        return Request(method, path, headers, body, keep_alive)

    def dispatch(self, method: str, path: str, body: bytes) -> tuple[int, dict | None, tuple]:
        """Route one request to the handler: (status, JSON body or None, Allow methods)."""
        try:
            if path in VERSION_PATHS:
                if method != "GET":
                    raise ApiError(405, f"{method} {path}: allowed: GET", allow=("GET",))
                return 200, {"name": SERVER_NAME, "version": SERVER_VERSION}, ()
            methods = {m: getattr(self.handler, name) for m, name in ROUTES.get(path, {}).items()
                       if hasattr(self.handler, name)}
            if methods:
                if method not in methods:
                    allow = tuple(sorted(methods))
                    raise ApiError(405, f"{method} {path}: allowed: {', '.join(allow)}", allow=allow)
                return self._call_builtin(method, path, methods[method], body)
            return self._call_fallback(method, path, body)
        except ApiError as e:
            return e.status, {"fault_message": e.message}, e.allow
        except Exception as e:  # noqa: BLE001 - any handler bug becomes a 500, the server lives on
            return 500, {"fault_message": f"{type(e).__name__}: {e}"}, ()

    def _call_builtin(self, method: str, path: str, fn, body: bytes) -> tuple[int, dict | None, tuple]:
        if method == "GET":
            with self._handler_lock:
                result = fn()
            if not isinstance(result, dict):
                raise TypeError(f"GET {path} handler returned {type(result).__name__}, not an object")
            return 200, result, ()
        obj = _json_object(body, required=True)
        match path:
            case "/vm":
                state = _only_field(obj, "state")
                if state not in VM_STATES:
                    raise ApiError(400, f"state must be one of {', '.join(VM_STATES)}, not {state!r}")
                with self._handler_lock:
                    fn(state)
                return 204, None, ()
            case "/actions":
                action_type = obj.get("action_type")
                if not isinstance(action_type, str):
                    raise ApiError(400, "action_type (a string) is required")
                with self._handler_lock:
                    fn(action_type, obj)
                return 204, None, ()
            case _:  # /snapshot/create, /snapshot/load
                if not isinstance(obj.get("snapshot_path"), str):
                    raise ApiError(400, "snapshot_path (a string) is required")
                with self._handler_lock:
                    result = fn(obj)
                return _maybe_body(path, result)

    def _call_fallback(self, method: str, path: str, body: bytes) -> tuple[int, dict | None, tuple]:
        route = getattr(self.handler, "route", None)
        if route is None:
            raise ApiError(404, f"no such endpoint: {path}")
        obj = _json_object(body, required=False)
        with self._handler_lock:
            result = route(method, path, obj)
        if result is None:
            raise ApiError(404, f"no such endpoint: {path}")
        status, payload = result
        if not isinstance(status, int) or not 200 <= status <= 599:
            raise TypeError(f"{method} {path} handler returned status {status!r}")
        if payload is not None and not isinstance(payload, dict):
            raise TypeError(f"{method} {path} handler returned {type(payload).__name__}, not an object")
        return status, (None if status == 204 else payload), ()


def _pause(seconds: float) -> None:
    """Sleep without importing time: wait on a lock nobody releases."""
    lock = _thread.allocate_lock()
    lock.acquire()
    lock.acquire(True, seconds)


def _clear_stale_socket(path: str) -> None:
    """Unlink a dead socket left by a crashed VMM; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket; not replacing it", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(LIVE_PROBE_TIMEOUT_S)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listening: stale
    except OSError:
        raise SocketInUse(path) from None  # e.g. a full backlog: someone is there
    else:
        raise SocketInUse(path)
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _strip_line(line: bytes) -> bytes:
    """A line read up to its LF, without CRLF/LF; refuses a stray CR or NUL in the head."""
    line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    if b"\r" in line or b"\0" in line:
        raise _Reject(400, "stray CR or NUL in request head")
    return line


def _is_token(b: bytes) -> bool:
    return bool(b) and all(c in _TOKEN_CHARS for c in b)


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise _Reject(400, "malformed request line")
    method, target, version = parts
    if not _is_token(method):
        raise _Reject(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _Reject(400, "only HTTP/1.0 and HTTP/1.1 are spoken here")
    if not target.startswith(b"/") or any(c <= 0x20 or c >= 0x7F for c in target):
        raise _Reject(400, "request target must be an absolute path")
    path = target.split(b"?", 1)[0].decode("ascii")
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    return method.decode("ascii"), path, version.decode("ascii")


def _parse_header(raw: bytes) -> tuple[str, str]:
    name, sep, value = raw.partition(b":")
    if not sep or not _is_token(name):  # also rejects obs-fold and "Name :"
        raise _Reject(400, "malformed header field")
    return name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")


def _content_length(value: str | None, limit: int) -> int:
    if value is None:
        return 0
    if not value.isdigit() or not value.isascii():
        raise _Reject(400, "Content-Length must be a decimal number")
    if len(value) > MAX_LENGTH_DIGITS:
        raise _Reject(413, f"Content-Length of {len(value)} digits exceeds the {limit}-byte limit")
    length = int(value)
    if length > limit:
        raise _Reject(413, f"request body of {length} bytes exceeds the {limit}-byte limit")
    return length


def _json_object(body: bytes, *, required: bool) -> dict | None:
    if not body:
        if required:
            raise ApiError(400, "a JSON object body is required")
        return None
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"body must be a JSON object, not {type(obj).__name__}")
    return obj


def _only_field(obj: dict, field: str) -> object:
    unknown = sorted(set(obj) - {field})
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    if field not in obj:
        raise ApiError(400, f"{field} is required")
    return obj[field]


def _maybe_body(path: str, result: object) -> tuple[int, dict | None, tuple]:
    if result is None:
        return 204, None, ()
    if not isinstance(result, dict):
        raise TypeError(f"PUT {path} handler returned {type(result).__name__}, not an object")
    return 200, result, ()


def _response(status: int, payload: dict | None, *, close: bool, allow: tuple = ()) -> bytes:
    """Serialize a response. 204 carries no body and, per RFC 9110 8.6, no Content-Length."""
    body = b"" if status == 204 or payload is None else json.dumps(payload).encode()
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
            f"Server: {SERVER_NAME}",
            "Content-Type: application/json"]
    if status != 204:
        head.append(f"Content-Length: {len(body)}")
    if allow:
        head.append(f"Allow: {', '.join(allow)}")
    head.append("Connection: close" if close else "Connection: keep-alive")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
