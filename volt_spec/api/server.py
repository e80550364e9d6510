"""HTTP/1.1 server on a Unix stream socket, routing Firecracker-like endpoints.

Runs inside volt-vmm, so it imports only socket, select, json, os, stat, time, errno, array,
_queue and _thread (no http.server, email, threading or typing). A fixed set of threads, whatever the
clients do: one poller accepts and watches idle keep-alive connections, WORKERS workers each
serve one readable connection at a time (one request, or a pipelined run of them) and hand it
back. Open connections are capped (MAX_CONNECTIONS: past it a 503 and a close), and every request
has deadlines (framing.py: its head within HEAD_TIMEOUT_S, its body within BODY_TIMEOUT_S); the
next request on a kept-alive connection must come within the idle timeout, measured from the first
byte read, so a client trickling a byte at a time (slowloris) is dropped at the deadline. Handler
calls are serialized by one lock (routes.py). Every failure to parse a request becomes a 4xx reply
and a closed connection, never a dead server.

With `accept_fds > 0` a request may carry up to that many file descriptors (SCM_RIGHTS; a warm
VMM is handed its snapshot's files so). The server owns them: it closes every one after the
request's dispatch returns, and on any reject, error or hang-up; a handler that keeps one dups it.

This module is the connection life cycle; framing.py reads requests and writes replies, routes.py
maps them onto the handler.
"""

from __future__ import annotations

import _queue
import _thread
import errno
import os
import select
import socket
import stat
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from volt_spec.api.handler import ApiHandler

from volt_spec.api import framing, routes, unixpath
from volt_spec.api.errors import SocketInUse
from volt_spec.api.framing import MAX_BODY, Conn, Reject, response

SOCKET_MODE = 0o600
LISTEN_BACKLOG = 128
IDLE_TIMEOUT_S = 60.0  # a kept-alive connection with no new request is dropped after this
WORKERS = 4
MAX_CONNECTIONS = 64
LIVE_PROBE_TIMEOUT_S = 0.5


class ApiServer:
    """The API socket: bound (0600) on construction, served after start(), removed by close()."""

    def __init__(self, path: str, handler: ApiHandler, *, max_body: int = MAX_BODY,
                 idle_timeout: float = IDLE_TIMEOUT_S, workers: int = WORKERS,
                 max_connections: int = MAX_CONNECTIONS, accept_fds: int = 0) -> None:
        self.path = path
        self.accept_fds = accept_fds
        self.handler = handler
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.workers, self.max_connections = workers, max_connections
        self._handler_lock = _thread.allocate_lock()
        self._conns_lock = _thread.allocate_lock()
        self._conns: set[socket.socket] = set()       # every open connection (close() hangs up on them)
        self._ready = _queue.SimpleQueue()            # readable connections, for the workers
        self._returned: list[Conn] = []               # kept-alive connections, back to the poller
        self._closing = False
        self._polling = _thread.allocate_lock()       # held while the poller runs
        _clear_stale_socket(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unixpath.bind(self._sock, path, SOCKET_MODE)
            os.chmod(path, SOCKET_MODE)               # exactly 0600, whatever the umask took away
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
        idle: dict[int, Conn] = {}
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
                self._forget(conn)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._polling.release()

    def _accept(self, poller, idle: dict[int, Conn]) -> None:
        """Every connection waiting in the backlog (one accept per wakeup lets it overflow)."""
        while not self._closing:
            try:
                sock, _ = self._sock.accept()
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    _pause(0.05)  # out of fds: let connections finish
                return
            self._admit(sock, poller, idle)

    def _admit(self, sock: socket.socket, poller, idle: dict[int, Conn]) -> None:
        with self._conns_lock:
            full = len(self._conns) >= self.max_connections
            if not full:
                self._conns.add(sock)
        if full:                      # refuse at once: a 503 the client can read, then hang up
            try:
                sock.setblocking(False)
                sock.send(response(503, {"fault_message": f"too many connections (at most "
                                                           f"{self.max_connections})"}, close=True))
            except OSError:
                pass
            sock.close()
            return
        conn = Conn(sock, time.monotonic() + min(self.idle_timeout, framing.HEAD_TIMEOUT_S),
                    self.accept_fds)
        idle[sock.fileno()] = conn
        poller.register(sock.fileno(), select.POLLIN)

    def _take_returned(self, poller, idle: dict[int, Conn]) -> None:
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

    def _expire(self, poller, idle: dict[int, Conn], now: float) -> None:
        for fd in [fd for fd, c in idle.items() if c.idle_until <= now]:
            poller.unregister(fd)
            self._forget(idle.pop(fd))

    def _forget(self, conn: Conn) -> None:
        """Close a connection, and any fds it received for a request never dispatched."""
        conn.close_fds()
        with self._conns_lock:
            self._conns.discard(conn.sock)
        conn.sock.close()

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
                self._forget(conn)

    def _serve(self, conn: Conn) -> bool:
        """Answer the requests the client has sent; True to keep the connection for more."""
        try:
            while not self._closing:
                try:
                    request = framing.read_request(conn, self.max_body)
                except Reject as e:
                    conn.send(response(e.status, {"fault_message": e.message}, close=True))
                    return False
                if request is None:
                    return False
                reply, keep = self._answer(request)
                try:
                    conn.send(reply)
                finally:
                    self._replied()
                if not keep:
                    return False
                if not conn.buf:
                    return True           # wait for the next request in the poller, not here
        except (OSError, ValueError):
            pass  # peer vanished, missed its deadline, or the server is closing
        return False

    def _answer(self, request: framing.Request) -> tuple[bytes, bool]:
        """The reply to one request and whether to keep the connection. Its fds are closed before
        the reply goes out, so a client that has the reply knows the server holds none of them."""
        try:
            status, payload, allow = self.dispatch(request.method, request.path, request.body,
                                                   tuple(request.fds), request.arrived_ns)
        finally:
            request.close_fds()
        keep = request.keep_alive and not self._closing
        try:
            return response(status, payload, close=not keep, allow=allow), keep
        except (TypeError, ValueError) as e:  # the handler returned something not JSON
            return response(500, {"fault_message": f"unserializable reply: {e}"}, close=not keep), keep

    def _replied(self) -> None:
        """Tell a handler that wants to know (`after_reply`) that a reply has gone out: a warm
        VMM whose load failed ends only once its client has the reason."""
        hook = getattr(self.handler, "after_reply", None)
        if hook is not None:
            hook()

    def dispatch(self, method: str, path: str, body: bytes, fds: tuple = (),
                 arrived_ns: int = 0) -> routes.Reply:
        """Route one request to the handler: (status, JSON body or None, Allow methods). `fds`
        are valid during the call only (the caller closes them)."""
        return routes.dispatch(self.handler, self._handler_lock, method, path, body, fds,
                               arrived_ns)


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
        unixpath.connect(probe, path)
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
