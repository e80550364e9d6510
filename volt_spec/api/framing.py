"""HTTP/1.1 framing for the API server: one request read within its deadlines, one response written.

Only the wire format lives here (request line, header fields, Content-Length bodies, keep-alive,
the reply's head); what a request means is routes.py's. Strict on purpose: anything unusual in a
request head is a `Reject` (a 4xx and a closed connection), never a guess. Lean like the server:
array, os, socket, time and json only.

File descriptors (SCM_RIGHTS) are read only from a `Conn` made with `accept_fds > 0`: those that
arrive while a request is being read are that request's (`Request.fds`), at most `accept_fds` of
them, received close-on-exec. Whoever takes a `Request` owns its fds and must close them
(`Request.close_fds`); a `Conn` closes those of a request it could not finish (`Conn.close_fds`).
With `accept_fds == 0` the socket is read with plain recv, and the kernel discards passed fds.
"""

from __future__ import annotations

import array
import json
import os
import socket
import time

SERVER_NAME = "volt-vmm"
MAX_BODY = 1 << 20  # 1 MiB, Firecracker's default http_api_max_payload_size
MAX_LINE = 8192  # request line or one header line
MAX_HEADERS = 64
MAX_LEADING_BLANK_LINES = 4  # RFC 9112 2.2: ignore stray CRLFs before a request
HEAD_TIMEOUT_S = 10.0  # a request line and headers must arrive within this (the first request too)
BODY_TIMEOUT_S = 30.0  # and the body within this after the head
SEND_TIMEOUT_S = 10.0  # a client that does not read its reply is dropped after this
MAX_LENGTH_DIGITS = 18  # a longer Content-Length is over any limit (and int() of 5000 digits raises)

REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 204: "No Content",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Content Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable",
}
_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                         b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class Reject(Exception):
    """A request the server refuses before routing; the connection then closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """One parsed request: method, path (no query), lower-cased headers, raw body, the fds passed
    with it (owned by whoever took the request) and when its first byte was read (perf_counter_ns,
    for timing a request from its arrival)."""

    __slots__ = ("method", "path", "headers", "body", "keep_alive", "fds", "arrived_ns")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes,
                 keep_alive: bool, fds: list[int] | None = None, arrived_ns: int = 0) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.fds = [] if fds is None else fds
        self.arrived_ns = arrived_ns

    def close_fds(self) -> None:
        """Close the fds passed with this request (once: the list is emptied)."""
        close_all(self.fds)


class Conn:
    """One client connection: the bytes and fds read from it but not yet parsed into a request."""

    __slots__ = ("sock", "buf", "idle_until", "accept_fds", "fds", "started_ns")

    def __init__(self, sock: socket.socket, idle_until: float, accept_fds: int = 0) -> None:
        self.sock, self.buf, self.idle_until = sock, b"", idle_until
        self.accept_fds = accept_fds
        self.fds: list[int] = []        # received for the request being read
        self.started_ns = 0             # when that request's first byte was read

    def fill(self, deadline: float) -> bool:
        """Read what the client sent next, waiting no later than `deadline`; False at EOF."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self.sock.settimeout(remaining)
        data = self._recv_with_fds() if self.accept_fds > 0 else self.sock.recv(65536)
        if data and not self.started_ns:
            self.started_ns = time.perf_counter_ns()
        self.buf += data
        return bool(data)

    def _recv_with_fds(self) -> bytes:
        """recvmsg: the bytes, and the fds passed with them kept for the request being read; more
        than accept_fds (or a control message cut short) is a 400, and every fd received closed."""
        data, ancdata, flags, _ = self.sock.recvmsg(
            65536, socket.CMSG_SPACE(self.accept_fds * 4), socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC or len(self.fds) > self.accept_fds:
            self.close_fds()
            raise Reject(400, f"too many file descriptors (at most {self.accept_fds} per request)")
        return data

    def take_request_state(self) -> tuple[list[int], int]:
        """The fds and arrival time of the request just read, handed over (the conn forgets them)."""
        fds, arrived = self.fds, self.started_ns
        self.fds, self.started_ns = [], 0
        return fds, arrived

    def close_fds(self) -> None:
        """Close fds received for a request that will not be dispatched (a reject, a hang-up)."""
        close_all(self.fds)

    def readline(self, deadline: float) -> bytes | None:
        """One line without its CRLF/LF; None when the client hung up mid-line."""
        while True:
            end = self.buf.find(b"\n", 0, MAX_LINE + 1)
            if end >= 0:
                line, self.buf = self.buf[:end + 1], self.buf[end + 1:]
                return _strip_line(line)
            if len(self.buf) > MAX_LINE:
                raise Reject(400, f"line longer than {MAX_LINE} bytes")
            if not self.fill(deadline):
                return None

    def read(self, n: int, deadline: float) -> bytes | None:
        while len(self.buf) < n:
            if not self.fill(deadline):
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def send(self, data: bytes) -> None:
        self.sock.settimeout(SEND_TIMEOUT_S)
        self.sock.sendall(data)


def read_request(conn: Conn, max_body: int) -> Request | None:
    """Parse one request within its deadlines; None on a clean or mid-request hang-up. Fds
    received meanwhile stay in `conn.fds` unless a request is returned (then they are its)."""
    deadline = time.monotonic() + HEAD_TIMEOUT_S
    # pipelined bytes already here: the request arrives now; else when fill() first reads
    conn.started_ns = time.perf_counter_ns() if conn.buf else 0
    line = b"\r\n"
    for _ in range(MAX_LEADING_BLANK_LINES + 1):
        line = conn.readline(deadline)
        if line is None:
            return None
        if line:
            break
    if not line:
        raise Reject(400, "empty request")
    method, path, version = _parse_request_line(line)
    headers = _read_headers(conn, deadline)
    if headers is None:
        return None
    if "transfer-encoding" in headers:
        raise Reject(411, "Transfer-Encoding is not supported; send Content-Length")
    length = _content_length(headers.get("content-length"), max_body)
    if length and "100-continue" in headers.get("expect", "").lower():
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = conn.read(length, time.monotonic() + BODY_TIMEOUT_S) if length else b""
    if body is None:
        return None
    tokens = {t.strip() for t in headers.get("connection", "").lower().split(",")}
    keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    fds, arrived_ns = conn.take_request_state()
    return Request(method, path, headers, body, keep_alive, fds, arrived_ns)


def close_all(fds: list[int]) -> None:
    """Close every fd in `fds` and empty the list, so nothing closes one twice."""
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass  # EBADF: a handler closed it itself, against the rule


def _read_headers(conn: Conn, deadline: float) -> dict[str, str] | None:
    """The header fields up to the blank line, repeated ones joined; None on a hang-up."""
    headers: dict[str, str] = {}
    while True:
        raw = conn.readline(deadline)
        if raw is None:
            return None
        if not raw:
            return headers
        if len(headers) >= MAX_HEADERS:
            raise Reject(400, "too many header fields")
        name, value = _parse_header(raw)
        if name in headers:
            if name == "content-length" and headers[name] != value:
                raise Reject(400, "conflicting Content-Length fields")
            value = headers[name] + ", " + value
        headers[name] = value


def _strip_line(line: bytes) -> bytes:
    """A line read up to its LF, without CRLF/LF; refuses a stray CR or NUL in the head."""
    line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    if b"\r" in line or b"\0" in line:
        raise Reject(400, "stray CR or NUL in request head")
    return line


def _is_token(b: bytes) -> bool:
    return bool(b) and all(c in _TOKEN_CHARS for c in b)


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise Reject(400, "malformed request line")
    method, target, version = parts
    if not _is_token(method):
        raise Reject(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise Reject(400, "only HTTP/1.0 and HTTP/1.1 are spoken here")
    if not target.startswith(b"/") or any(c <= 0x20 or c >= 0x7F for c in target):
        raise Reject(400, "request target must be an absolute path")
    path = target.split(b"?", 1)[0].decode("ascii")
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    return method.decode("ascii"), path, version.decode("ascii")


def _parse_header(raw: bytes) -> tuple[str, str]:
    name, sep, value = raw.partition(b":")
    if not sep or not _is_token(name):  # also rejects obs-fold and "Name :"
        raise Reject(400, "malformed header field")
    return name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")


def _content_length(value: str | None, limit: int) -> int:
    if value is None:
        return 0
    if not value.isdigit() or not value.isascii():
        raise Reject(400, "Content-Length must be a decimal number")
    if len(value) > MAX_LENGTH_DIGITS:
        raise Reject(413, f"Content-Length of {len(value)} digits exceeds the {limit}-byte limit")
    length = int(value)
    if length > limit:
        raise Reject(413, f"request body of {length} bytes exceeds the {limit}-byte limit")
    return length


def response(status: int, payload: dict | None, *, close: bool, allow: tuple = ()) -> bytes:
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
