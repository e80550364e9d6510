"""The shape of the object `ApiServer` routes requests to (type checking only).

`server.py` never imports this module at runtime (it keeps `typing` out of the
VMM); handlers need not subclass it. Every method is optional: a missing one
makes its route answer 404, or 405 when the path has other methods.
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

    def snapshot_load(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """PUT /snapshot/load {"snapshot_path": ...} -> 200 with the dict, or 204."""

    def route(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any] | None] | None:
        """Any other path: (status, body) to answer, or None for 404."""
