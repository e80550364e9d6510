"""The shape of the object `ApiServer` routes requests to (type checking only).

`server.py` never imports this module at runtime (it keeps `typing` out of the
VMM); handlers need not subclass it. Every method is optional: a missing one
makes its route answer 404, or 405 when the path has other methods. Only
snapshot_load sees file descriptors passed with a request; the server closes
those passed with any other route unseen.
"""

from __future__ import annotations

from typing import Any, Protocol


class ApiHandler(Protocol):
    """Firecracker-like endpoints; raise `ApiError(status, message)` to refuse."""

    def get_vm(self) -> dict[str, Any]:
        """GET /vm -> 200 with this object."""

    def set_state(self, state: str) -> None:
        """PATCH /vm {"state": "Paused"|"Resumed"} -> 204."""

    def action(self, action_type: str, body: dict[str, Any]) -> None:
        """PUT /actions {"action_type": ...} -> 204."""

    def snapshot_create(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """PUT /snapshot/create {"snapshot_path": ...} -> 200 with the dict, or 204."""

    def snapshot_load(self, body: dict[str, Any], fds: tuple[int, ...]) -> dict[str, Any] | None:
        """PUT /snapshot/load {"snapshot_path": ...} or {"fds": {...}} -> 200 with the dict, or 204.

        `fds` are the file descriptors passed with the request (SCM_RIGHTS; empty unless the
        server was made with accept_fds > 0 and the client sent some). They are valid during this
        call only: the server closes them when it returns, so a handler that keeps one must
        os.dup it, and must not close them itself. A body naming `fds` always comes with some.
        `body["_arrived_ns"]`, when present, is the server's perf_counter_ns at the request's
        first byte (never the client's)."""

    def route(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any] | None] | None:
        """Any other path: (status, body) to answer, or None for 404."""
