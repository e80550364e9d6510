"""Restart policy and crash-loop back-off: when `volt agent` starts a VM that ended again.

`spec.restartPolicy` (Kubernetes' names): Always restarts any end the user did not ask for;
OnFailure only a failure (a clean power-off is `completed`); Never none. Restarts back off like
kubelet's: the first at once, then 10 s doubling to 5 min; a VM that stayed up 10 min starts
over. The count and the next allowed time live in the VM's restarts.json, so `volt status` can
say `restarting in 40s (3 restarts)` and an agent that restarts picks up where the last left off.
"""

from __future__ import annotations

import time

from .home import VmDir, read_json, write_json
from .observe import FAILED, STOPPED

BACKOFF_FIRST_S = 10.0
BACKOFF_MAX_S = 300.0
RESET_AFTER_S = 600.0


def wants_restart(policy: str, obs: dict) -> bool:
    """Does a VM that ended (observe's dict) get started again under `policy`? One stopped on
    purpose (`volt stop`) is not an end the policy is about: the next sync's apply starts it."""
    if obs["state"] == FAILED:
        return policy in ("Always", "OnFailure")
    return obs["state"] == STOPPED and obs.get("ended_by") == "guest" and policy == "Always"


def delay_s(restarts: int) -> float:
    """The wait before restart number `restarts + 1`: 0, 10, 20, 40, ... 300 s."""
    if restarts <= 0:
        return 0.0
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (restarts - 1))


class Backoff:
    """One VM's restart record: how many restarts since it last stayed up, and when the next may be."""

    __slots__ = ("restarts", "next_at", "generation")

    def __init__(self, restarts: int = 0, next_at: float = 0.0, generation: str | None = None) -> None:
        self.restarts, self.next_at, self.generation = restarts, next_at, generation

    @classmethod
    def load(cls, vm_dir: VmDir) -> "Backoff":
        raw = read_json(vm_dir.path / "restarts.json") or {}
        try:
            return cls(int(raw.get("restarts", 0)), float(raw.get("next_at", 0.0)), raw.get("generation"))
        except (TypeError, ValueError):
            return cls()

    def save(self, vm_dir: VmDir) -> None:
        write_json(vm_dir.path / "restarts.json", {"restarts": self.restarts, "next_at": self.next_at,
                                                   "generation": self.generation})

    def ended(self, generation: str | None, started_at: float, ended_at: float) -> None:
        """Note an instance's end once (by its generation): the next restart's earliest time."""
        if generation is not None and generation == self.generation:
            return
        self.generation = generation
        if ended_at - started_at >= RESET_AFTER_S:
            self.restarts = 0
        self.next_at = ended_at + delay_s(self.restarts)

    def due_in(self, now: float | None = None) -> float:
        return max(0.0, self.next_at - (time.time() if now is None else now))

    def restarted(self) -> None:
        self.restarts += 1

    def describe(self, now: float | None = None) -> str:
        wait = self.due_in(now)
        count = f"{self.restarts} restart{'s' if self.restarts != 1 else ''}"
        return f"restarting in {wait:.0f}s ({count})" if wait > 0 else f"restarting ({count})"
