"""`volt agent`: keep this host converged on a source of specs (Flux's pull model, on one host).

Each sync pulls the source, loads every spec it holds and applies them with prune for its own
scope; a pull that fails is reported and the agent reconciles what it has; specs that do not
validate change nothing (no prune from a broken commit); a failed apply backs off 20 s x attempt.
Between syncs the agent looks each second for VMMs of its own that ended and restarts them under
their restartPolicy with crash-loop back-off (runner/restart.py). SIGHUP syncs now; SIGTERM stops
every VM it owns through its stop triggers and exits 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from . import apply as ap
from .agentstate import AgentState, EventLog
from .gitsource import Source, SourceError
from .home import VmDir, all_vm_names
from .observe import BUSY, FAILED, STOPPED, observe
from .owner import Owner, Resolver
from .procs import is_alive
from .restart import Backoff, wants_restart

WATCH_S = 1.0                 # how often the agent looks for VMMs that ended
FAILED_SYNC_BACKOFF_S = 20.0  # x attempt (Flintlock's), at most the interval's 10x
SHUTDOWN_TIMEOUT_S = 30.0     # per VM: Ctrl-Alt-Del (after its stop trigger's snapshot), then kill


class Agent:
    def __init__(self, source: Source, home: Path, interval_s: float, log: EventLog,
                 source_name: str | None = None, recursive: bool = False) -> None:
        self.source, self.home, self.interval_s, self.log = source, home, interval_s, log
        self.source_name, self.recursive = source_name, recursive
        self.state = AgentState.for_source(home, source)
        self.wake = threading.Event()
        self.stopping = self.sync_requested = False
        self.specs: dict[str, object] = {}
        self.failures = 0
        self.scope = self._scope()            # the VMs this agent owns (held() leaves others to apply)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        self._signals()
        self.state.started()
        self.log.event("start", source=self.source.describe(), path=str(self.source.path),
                       interval_s=self.interval_s, pid=os.getpid())
        next_sync = 0.0
        while not self.stopping:
            now = time.monotonic()
            if now >= next_sync or self.sync_requested:
                self.sync_requested = False
                next_sync = now + self.sync()
                notify_systemd("READY=1")
            self.watch()
            self.wake.wait(max(0.0, min(WATCH_S, next_sync - time.monotonic())))
            self.wake.clear()
        self.shutdown()
        return 0

    def _signals(self) -> None:
        def stop(signum, _frame) -> None:
            self.stopping = True
            self.wake.set()

        def hup(_signum, _frame) -> None:
            self.sync_requested = True
            self.wake.set()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    # -- one sync ---------------------------------------------------------------------------
    def sync(self) -> float:
        """Pull, load, apply with prune; the seconds until the next sync."""
        t0 = time.monotonic()
        commit, error = self._pull()
        specs, errors = self._load()
        if errors:
            return self._failed(commit, f"{len(errors)} invalid spec(s), nothing applied: {errors[0]}")
        from .reconcile import apply_paths
        self.specs = {s.name: s for s in specs}
        self.scope = self._scope()
        counts: dict[str, int] = {}
        failed = []
        for result in apply_paths(specs, [str(self.source.path)], self.home, prune=True, source=self.source_name,
                                  warn=self._warn, skip=self.held, recursive=self.recursive):
            self._report(result)
            counts[result.action] = counts.get(result.action, 0) + 1
            if result.error:
                failed.append(f"vm/{result.name}: {result.error}")
        if failed:
            return self._failed(commit, f"{len(failed)} VM(s) failed: {failed[0]}")
        self.failures = 0
        self.state.synced(commit, error)
        self.log.event("synced", commit=commit, seconds=round(time.monotonic() - t0, 3), **counts)
        return self.interval_s

    def _pull(self) -> tuple[str | None, str | None]:
        try:
            return self.source.pull(), None
        except SourceError as e:
            self.log.event("pull-failed", error=str(e), note="reconciling what the checkout holds")
            return self.source.commit(), f"pull failed: {e}"

    def _load(self):
        """The source's specs; a directory without any is a source that declares no VMs (all its
        VMs are pruned), a missing one an error (a checkout that is not there prunes nothing)."""
        from ..schema import load_specs
        from ..schema.loader import SPEC_SUFFIXES
        path = self.source.path
        if not path.is_dir():
            from ..schema.errors import SpecError
            return [], [SpecError(str(path), 0, 0, "no such directory: nothing applied, nothing pruned")]
        files = path.rglob("*") if self.recursive else path.iterdir()
        if not any(p.name.endswith(SPEC_SUFFIXES) and p.is_file() for p in files):
            return [], []
        return load_specs([str(path)], recursive=self.recursive)

    def _failed(self, commit: str | None, error: str) -> float:
        self.failures += 1
        wait = min(FAILED_SYNC_BACKOFF_S * self.failures, max(self.interval_s, 10 * self.interval_s))
        self.state.synced(commit, error)
        self.log.event("sync-failed", commit=commit, error=error, attempt=self.failures, retry_in_s=wait)
        return wait

    def _report(self, result: ap.Result) -> None:
        if result.error:
            self.log.event("vm-failed", vm=result.name, action=result.action, error=result.error)
        elif result.action != ap.UNCHANGED or result.detail:
            self.log.event("vm", vm=result.name, action=result.action, detail=result.detail)

    def _warn(self, message: str) -> None:
        self.log.event("warning", message=message)

    # -- restarts ---------------------------------------------------------------------------
    def held(self, spec) -> ap.Result | None:
        """A Result that leaves an ended VM alone this pass (its restartPolicy, its back-off), else
        None: apply it (which starts it again when it ended). Only a VM of this agent's own: apply
        reports another source's as a conflict, whatever its state."""
        vm_dir = VmDir(self.home, spec.name)
        applied = vm_dir.read_applied()
        if applied is None or applied.get("machine_hash") != spec.machine_hash() or not spec.running:
            return None
        if not self.scope.covers(Owner.from_record(applied)):
            return None
        obs = observe(vm_dir)
        if obs["state"] == BUSY:      # alive but not answering (a snapshot), or ended with its record
            return ap.Result(spec.name, ap.UNCHANGED, f"busy: {obs['reason']}")   # not yet written: hold
        if obs["state"] == FAILED and obs.get("ended_by") is None:      # VMM and supervisor gone, no record
            inst = vm_dir.read_instance() or {}
            obs = dict(obs, ended_by="failure", started_at=inst.get("started_at"), ended_at=time.time())
        if obs["state"] not in (FAILED, STOPPED) or obs.get("ended_by") not in ("guest", "failure"):
            return None
        policy = spec.restart_policy
        if not wants_restart(policy, obs):
            return ap.Result(spec.name, ap.UNCHANGED, f"{obs['state']}; restartPolicy {policy}")
        backoff = Backoff.load(vm_dir)
        backoff.ended(obs["generation"], obs.get("started_at") or 0.0, obs.get("ended_at") or time.time())
        if backoff.due_in() > 0:
            backoff.save(vm_dir)
            return ap.Result(spec.name, ap.UNCHANGED, backoff.describe())
        self.log.event("restart", vm=spec.name, reason=obs["reason"], restarts=backoff.restarts + 1)
        backoff.restarted()
        backoff.save(vm_dir)
        return None

    def watch(self) -> None:
        """Restart (or hold) each VM of this source whose VMM is gone: within a second of its end."""
        from .reconcile import apply_paths
        ended = [s for name, s in self.specs.items() if self._ended(name)]
        if ended:
            for result in apply_paths(ended, [], self.home, source=self.source_name, warn=self._warn,
                                      skip=self.held):
                if result.action != ap.UNCHANGED or result.error:
                    self._report(result)

    def _ended(self, name: str) -> bool:
        """Its VMM is gone and nobody asked it to stop (cheap: no API call for a live one)."""
        inst = VmDir(self.home, name).read_instance()
        return bool(inst) and not inst.get("stop_requested") and not is_alive(inst.get("vmm_pid"),
                                                                              inst.get("vmm_start"))

    # -- shutdown ---------------------------------------------------------------------------
    def _scope(self):
        return Resolver(self.source_name).scope(str(self.source.path), self.recursive)

    def owned(self) -> list[str]:
        scope = self._scope()
        return [n for n in all_vm_names(self.home)
                if scope.covers(Owner.from_record(VmDir(self.home, n).read_applied() or {}))]

    def shutdown(self) -> None:
        """Stop every VM this source owns, in parallel, each through its stop trigger."""
        from . import vmctl
        names = self.owned()
        notify_systemd("STOPPING=1")
        self.log.event("stopping", vms=len(names))

        def stop(name: str) -> None:
            vm_dir = VmDir(self.home, name)
            with vm_dir.lock():
                how = vmctl.stop(vm_dir, SHUTDOWN_TIMEOUT_S)
            self.log.event("vm", vm=name, action="stopped", detail=how)
        threads = [threading.Thread(target=stop, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.state.stopped()
        self.log.event("stopped")


def notify_systemd(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET when systemd set it."""
    import socket
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode(), addr)
    except OSError:
        pass
