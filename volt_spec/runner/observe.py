"""What a VM is doing right now, checked live every time (never from a stale cache)."""

from __future__ import annotations

import time

from .home import VmDir
from .procs import is_alive

RUNNING, PAUSED, STOPPED, FAILED, BUSY, COMPLETED = "running", "paused", "stopped", "failed", "busy", "completed"
NOT_STARTED = "not started since its spec was applied (an interrupted apply?); volt apply starts it"
ALIVE = (RUNNING, PAUSED, BUSY)
RECORD_WAIT_S = 2.0                      # how long a status waits for a dying VMM's exit record          # a VMM process is there: never replaced for being slow


def observe(vm_dir: VmDir, api_timeout: float = 1.0) -> dict:
    """{state, pid, uptime_s, reason, booted_from} for the VM's current instance.

    running/paused: the VMM process (pid + start time, so a reused pid does not count)
    is alive AND its API socket answers. busy: it is alive but its API did not answer in
    time (a large snapshot being written, a host under load): slow is not failed.
    failed: it died uncleanly. stopped: never started, stopped on purpose, or powered off.
    completed: it powered off by itself and its restartPolicy (Never, OnFailure) keeps it so.
    """
    inst = vm_dir.read_instance()
    applied = vm_dir.read_applied() or {}
    out = {"state": STOPPED, "pid": None, "uptime_s": None, "reason": "",
           "booted_from": None, "generation": None, "policy": None, "ended_by": None}
    if not inst:
        if applied and not applied.get("running", True):
            out["reason"] = "spec.running is false"
        elif applied:
            out["reason"] = NOT_STARTED
        return out
    out["generation"] = inst.get("generation")
    out["booted_from"] = inst.get("booted_from", "cold")
    pid, ticks = inst.get("vmm_pid"), inst.get("vmm_start")
    if is_alive(pid, ticks):
        from ..api.client import ApiClient, ApiError, ApiUnavailable
        out["pid"] = pid
        out["uptime_s"] = round(time.time() - inst.get("started_at", time.time()), 1)
        out["started_at"] = inst.get("started_at")
        try:
            vm = ApiClient(str(vm_dir.api_sock), timeout=api_timeout).get("/vm")
        except (ApiUnavailable, ApiError) as e:
            out.update(state=BUSY, reason=f"VMM alive, its API did not answer within {api_timeout:g} s "
                                         f"(a snapshot in progress?): {e}")
            return out
        out["state"] = PAUSED if vm.get("state") == "Paused" else RUNNING
        out["policy"] = vm.get("policy")
        out["booted_from"] = inst.get("booted_from") or vm.get("boot", {}).get("booted_from", "cold")
        return out
    ended = _exit_record(vm_dir, inst)
    if ended is None and is_alive(inst.get("supervisor_pid"), inst.get("supervisor_start")):
        out.update(state=BUSY, reason=f"volt-vmm ended; its supervisor (pid {inst.get('supervisor_pid')}) "
                                      f"has not recorded why yet")
        return out
    if ended and ended.get("generation") == inst.get("generation"):
        out["reason"] = ended.get("reason", "")
        clean = ended.get("clean", False)
        stopped_on_purpose = inst.get("stop_requested", False)
        out.update(ended_by="request" if stopped_on_purpose else "guest" if clean else "failure",
                   started_at=inst.get("started_at"), ended_at=ended.get("ended_at"))
        out["state"] = STOPPED if (clean or stopped_on_purpose) else FAILED
        if clean and not stopped_on_purpose and applied.get("restart_policy", "Always") != "Always":
            out["state"] = COMPLETED
            return out
        if applied.get("running", True) and float(ended.get("ended_at", 0)) < float(applied.get("applied_at", 0)):
            out["reason"] = f"{NOT_STARTED} (its last instance had ended: {out['reason'] or 'stopped'})"
        return out
    out.update(state=FAILED, reason="volt-vmm and its supervisor are gone without an exit record")
    return out


def _exit_record(vm_dir: VmDir, inst: dict) -> dict | None:
    """The current instance's exit record; while its supervisor lives (it writes the record once
    the VMM's output is drained), waited for up to RECORD_WAIT_S: a VMM just killed is not yet
    "gone without an exit record"."""
    deadline = time.monotonic() + RECORD_WAIT_S
    while True:
        ended = vm_dir.read_exit()
        if ended and ended.get("generation") == inst.get("generation"):
            return ended
        if time.monotonic() > deadline or not is_alive(inst.get("supervisor_pid"), inst.get("supervisor_start")):
            return None
        time.sleep(0.01)   # the supervisor writes it: another process, no fd to wait on
