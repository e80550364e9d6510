"""Snapshot policy, carried out inside the VMM with nobody at the keyboard.

Triggers (a PolicyConfig's, mapped from spec.snapshots by runner/vmconfig.py):
  ready     the first time the guest prints `marker` after a cold boot (one per boot)
  interval  every `every_s` seconds, counted from when the VMM started
  console   whenever a console line matches the regex `match`
  stop      before the guest is asked to stop (volt stop / volt delete / SIGTERM)
Retention (`retain`) runs after every successful policy snapshot (and a manual one taken with
`volt snapshot --expire`): oldest first, keep at most `count`, none older than `max_age_s`, but
never the newest and never the one this VM was restored from. It governs only policy snapshots
and `--expire` ones: a manual snapshot is kept until deleted and does not count
(snapshot/catalogue.py `expires`). A failing trigger logs one line on stderr, keeps the VM
running, leaves older snapshots alone, and is reported by GET /vm (`volt status`).

Console lines reach `on_console` from a vCPU thread with the device lock held, so it
only matches, holds the guest (Machine.hold: the vCPUs park at their next exit, nothing
waits) and queues; snapshots are taken by the policy's own worker thread, which then
releases the hold. So a `ready` or `console` snapshot holds the guest exactly as it
printed the line, however long the worker took to get there.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from ..snapshot.store import new_id, remove
from .config import PolicyConfig

MAX_LINE = 4096


class PolicyEngine:
    def __init__(self, machine, policy: PolicyConfig, booted_from: str) -> None:
        self.machine = machine
        self.booted_from = booted_from
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.queue: list[tuple[str, object | None]] = []
        self.partial = b""
        self.ready_done = booted_from != "cold"     # a restored guest already was "ready"
        self.taken = 0
        self.in_progress: str | None = None     # the trigger of the snapshot being taken, retention included
        self.last: dict | None = None
        self.last_error: str | None = None
        self.started = time.time()
        self.set_policy(policy)
        threading.Thread(target=self._worker, name="snapshot-policy", daemon=True).start()

    # -- configuration -------------------------------------------------------------------------
    def set_policy(self, policy: PolicyConfig) -> None:
        """Take a (new) policy, checked whole already (vmm/config/policy.py): the console patterns are
        compiled before any of it replaces the old one; a running VM keeps running (PUT /policy)."""
        console = []
        if policy.kinds("console"):
            from ..patterns import compile_pattern   # RE2: linear time, a pattern never freezes the console
            console = [compile_pattern(t.match) for t in policy.kinds("console")]
        ready = next((t.marker.encode() for t in policy.kinds("ready")), None)
        intervals = [t.every_s for t in policy.kinds("interval")]
        interval = min(intervals) if intervals else None
        with self.lock:
            self.policy, self.vm, self.dir, self.triggers = policy, policy.vm, policy.snapshot_dir, policy.triggers
            self.ready_marker, self.console_res, self.interval = ready, console, interval
            self.next_due = (time.time() + interval) if interval else None
            self.retain = policy.retain
            self.wake.notify()

    def status(self) -> dict:
        with self.lock:
            return {"triggers": [t.trigger for t in self.triggers], "snapshots_taken": self.taken,
                    "in_progress": self.in_progress,
                    "last": self.last, "last_error": self.last_error, "next_interval_due": self.next_due}

    # -- trigger sources -----------------------------------------------------------------------
    def on_console(self, data: bytes) -> None:
        """Serial output (vCPU thread, device lock held): find whole lines, match, queue. Never blocks long."""
        if self.ready_marker is None and not self.console_res:
            return
        buf = self.partial + data
        *lines, self.partial = buf.split(b"\n")
        if len(self.partial) > MAX_LINE:
            self.partial = self.partial[-MAX_LINE:]
        for raw in lines:
            line = raw.rstrip(b"\r")
            if self.ready_marker is not None and not self.ready_done and self.ready_marker in line:
                self.ready_done = True
                self._enqueue("ready", self._hold())
            if self.console_res:
                text = line.decode(errors="replace")
                if any(rx.search(text) for rx in self.console_res):
                    self._enqueue("console", self._hold())

    def _hold(self) -> object | None:
        """Hold the guest at this line for the snapshot, unless there is nowhere to write it or
        another snapshot is under way (the guest would wait for it)."""
        if not self.dir or self.machine.snapshot_lock.locked():
            return None
        return self.machine.hold()

    def before_stop(self) -> None:
        """The guest is about to be asked to stop: take the `stop` snapshot now (synchronously)."""
        if any(t.trigger == "stop" for t in self.triggers):
            self.snapshot("stop")

    def _enqueue(self, trigger: str, hold: object | None = None) -> None:
        # Called with the device lock held: no waiting on self.lock for long (the worker
        # holds it only briefly), and the snapshot itself happens on the worker.
        with self.lock:
            self.queue.append((trigger, hold))
            self.wake.notify()

    def _worker(self) -> None:
        while True:
            with self.lock:
                while not self.queue:
                    timeout = None if self.next_due is None else max(0.0, self.next_due - time.time())
                    if timeout == 0.0:
                        self.queue.append(("interval", None))
                        self.next_due = time.time() + self.interval
                        break
                    self.wake.wait(timeout)
                trigger, hold = self.queue.pop(0)
            if self.machine.exit_event.is_set():
                return
            try:
                self.snapshot(trigger)
            finally:
                self.machine.release(hold)

    # -- doing it ------------------------------------------------------------------------------
    def snapshot(self, trigger: str) -> dict | None:
        """Take one snapshot and apply retention; `in_progress` says so meanwhile (status: busy)."""
        if not self.dir:
            return None
        with self.lock:
            self.in_progress = trigger
        try:
            return self._snapshot(trigger)
        finally:
            with self.lock:
                self.in_progress = None

    def _snapshot(self, trigger: str) -> dict | None:
        from . import persist
        snap_id = new_id(self.vm)
        meta = {"id": snap_id, "vm": self.vm, "trigger": trigger,
                "machine_hash": self.policy.machine_hash, "shape_hash": self.policy.shape_hash,
                "spec": self.policy.spec}
        try:
            with self.machine.snapshot_lock:
                diff = self.policy.full_every is not None and persist.diff_wanted(self.machine, self.policy.full_every)
                result = persist.save(self.machine, os.path.join(self.dir, snap_id), meta, diff=diff)
        except Exception as e:  # noqa: BLE001 - the worker must live on and say why (status, stderr)
            message = getattr(e, "strerror", None) or str(e) or type(e).__name__
            with self.lock:
                self.last_error = f"{trigger} snapshot failed at {time.strftime('%H:%M:%S')}: {message}"
            os.write(2, f"volt-vmm: warning: {self.last_error}\n".encode())
            return None
        with self.lock:
            self.taken += 1
            self.last = {"id": snap_id, "trigger": trigger, "created": result["created"],
                         "paused_ms": result["paused_ms"]}
            self.last_error = None
        self.apply_retention()
        return result

    def apply_retention(self) -> list[str]:
        """Delete what the retain rules say (oldest first; snapshot/catalogue.py); returns the ids deleted."""
        from ..snapshot.catalogue import retention_victims
        count, max_age = self.retain.count, self.retain.max_age_s
        if not self.dir or (count is None and max_age is None):
            return []
        keep = {self.booted_from.removeprefix("snapshot ")} if self.booted_from.startswith("snapshot ") else set()
        doomed = retention_victims(Path(self.dir), self.vm, count, max_age, keep, time.time())
        for path in doomed:
            try:
                remove(str(path))
            except OSError:
                pass
        return [path.name for path in doomed]
