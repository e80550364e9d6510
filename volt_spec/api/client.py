"""Client for volt-vmm's Unix-socket API, used by the `volt` CLI and runner.

One request per connection (`Connection: close`): no stale keep-alive sockets
to manage, and a VMM restart between two calls is simply a new connection.
Transport failures become `ApiUnavailable`, 4xx/5xx replies `ApiError`.
File descriptors can go with a request (SCM_RIGHTS, on its first bytes); the
caller keeps owning them: the client never closes them.
"""

from __future__ import annotations

import array
import json
import socket

from volt_spec.api import unixpath
from volt_spec.api.errors import ApiError, ApiUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 0.5
MAX_RESPONSE_HEAD = 64 * 1024
MAX_RESPONSE_BODY = 16 << 20


class ApiClient:
    """Talks JSON over HTTP/1.1 to the API socket at `path`."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout

    def get(self, path: str) -> dict:
        """GET path -> the response object ({} for an empty reply)."""
        return self.request("GET", path) or {}

    def patch(self, path: str, body: dict) -> dict | None:
        """PATCH path with a JSON body -> the response object, or None for 204."""
        return self.request("PATCH", path, body)

    def put(self, path: str, body: dict, fds: Sequence[int] = ()) -> dict | None:
        """PUT path with a JSON body (and fds passed along) -> the response object, or None for 204."""
        return self.request("PUT", path, body, fds)

    def ping(self, timeout: float = PING_TIMEOUT_S) -> bool:
        """True when a server answers GET /vm (even with an error status), False when unreachable."""
        try:
            ApiClient(self.path, min(timeout, self.timeout)).get("/vm")
        except ApiUnavailable:
            return False
        except ApiError:
            return True
        return True

    def request(self, method: str, path: str, body: dict | None = None,
                fds: Sequence[int] = ()) -> dict | None:
        """Send one request, with `fds` passed along (still the caller's after); raise
        ApiUnavailable or ApiError, else return the JSON object or None."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1", "Host: localhost", "Accept: application/json",
                "Connection: close"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        message = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            self._connect(sock)
            try:
                _send(sock, message, fds)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may have refused early (e.g. 413); its reply is still readable
            status, data = self._read_response(sock)
        except TimeoutError:
            raise ApiUnavailable(self.path, f"no reply within {self.timeout:g}s") from None
        except (ConnectionError, OSError) as e:
            raise ApiUnavailable(self.path, f"connection failed: {e.strerror or e}") from None
        finally:
            sock.close()
        return self._decode(method, path, status, data)

    def _connect(self, sock: socket.socket) -> None:
        try:
            unixpath.connect(sock, self.path)
        except FileNotFoundError:
            raise ApiUnavailable(self.path, "no socket there (is the VM running?)") from None
        except ConnectionRefusedError:
            raise ApiUnavailable(self.path, "connection refused (stale socket, VMM gone?)") from None
        except PermissionError:
            raise ApiUnavailable(self.path, "permission denied") from None
        except TimeoutError:
            raise ApiUnavailable(self.path, f"connect timed out after {self.timeout:g}s") from None

    def _read_response(self, sock: socket.socket) -> tuple[int, bytes]:
        rfile = sock.makefile("rb")
        try:
            while True:
                status_line = rfile.readline(MAX_RESPONSE_HEAD)
                if not status_line:
                    raise ApiUnavailable(self.path, "server closed the connection without replying")
                parts = status_line.split(None, 2)
                if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                    raise ApiUnavailable(self.path, f"malformed status line {status_line[:80]!r}")
                status = int(parts[1])
                headers = self._read_headers(rfile)
                if status >= 200:
                    break  # skip 1xx interim replies
            if status == 204 or status == 304:
                return status, b""
            length = headers.get("content-length")
            if length is None:
                data = rfile.read(MAX_RESPONSE_BODY)
            elif not length.isdigit() or int(length) > MAX_RESPONSE_BODY:
                raise ApiUnavailable(self.path, f"bad Content-Length {length!r}")
            else:
                data = rfile.read(int(length))
                if len(data) < int(length):
                    raise ApiUnavailable(self.path, "connection closed mid-response")
            return status, data
        finally:
            rfile.close()

    def _read_headers(self, rfile) -> dict[str, str]:
        headers: dict[str, str] = {}
        total = 0
        while True:
            line = rfile.readline(MAX_RESPONSE_HEAD)
            total += len(line)
            if not line:
                raise ApiUnavailable(self.path, "connection closed mid-response")
            if line in (b"\r\n", b"\n"):
                return headers
            if total > MAX_RESPONSE_HEAD:
                raise ApiUnavailable(self.path, "response head too large")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()

    def _decode(self, method: str, path: str, status: int, data: bytes) -> dict | None:
        try:
            obj = json.loads(data) if data else None
        except ValueError:
            obj = None
        if status >= 400:
            if isinstance(obj, dict) and isinstance(obj.get("fault_message"), str):
                raise ApiError(status, obj["fault_message"])
            raise ApiError(status, data.decode("utf-8", "replace").strip() or f"{method} {path} failed")
        if data and not isinstance(obj, dict):
            raise ApiUnavailable(self.path, f"{method} {path}: reply is not a JSON object")
        return obj


def _send(sock: socket.socket, message: bytes, fds: Sequence[int]) -> None:
    """The whole message; fds ride on its first bytes (one sendmsg), the rest follows plainly."""
    if not fds:
        sock.sendall(message)
        return
    sent = sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    if sent < len(message):
        sock.sendall(message[sent:])
