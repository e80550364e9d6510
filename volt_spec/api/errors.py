"""Exceptions shared by the API server and its client.

`ApiError` travels both ways: a handler raises it to choose the HTTP status,
and the client raises it when the VMM answers with a 4xx/5xx `fault_message`.
"""

from __future__ import annotations


class ApiError(Exception):
    """An HTTP-level failure: a status code plus Firecracker's `fault_message` text."""

    def __init__(self, status: int, message: str, *, allow: tuple[str, ...] = ()) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        # For 405 raised by a fallback route: the methods the path does accept.
        self.allow = allow


class ApiUnavailable(Exception):
    """The VMM's API socket cannot be reached (missing, refused, timed out, hung up)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"volt-vmm API at {path}: {reason}")
        self.path = path
        self.reason = reason


class SocketInUse(Exception):
    """A live API server already answers on the socket path; it is left untouched."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: another volt-vmm API server is listening there")
        self.path = path
