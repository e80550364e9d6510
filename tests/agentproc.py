"""A `volt agent -o json` process under test, its events collected as they come."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

from .timing import scaled


class AgentProc:
    """A `volt agent -o json` process; its events collected as they come (a thread reads them)."""

    def __init__(self, volt, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "volt_spec", "agent", *args, "-o", "json"],
                                     env=volt.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.events.append(json.loads(line))
                self.cond.notify_all()

    def wait_event(self, pred, what: str, timeout: float = 60.0, after: int = 0) -> dict:
        deadline = time.monotonic() + scaled(timeout)
        with self.cond:
            while True:
                for e in self.events[after:]:
                    if pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no {what} within {timeout}s; events: {self.events[-12:]}; "
                                         f"stderr: {self.proc.stderr.read() if self.proc.poll() is not None else ''}")
                self.cond.wait(left)

    def synced(self, after: int = 0, timeout: float = 60.0) -> dict:
        return self.wait_event(lambda e: e["event"] in ("synced", "sync-failed"), "sync", timeout, after)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(scaled(timeout))
