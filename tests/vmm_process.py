"""Run volt-vmm as a real process and wait for console markers with a deadline (no sleeps)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

from .timing import scaled


class VmmProcess:
    """A running volt-vmm whose stdout is read line by line as the guest prints."""

    def __init__(self, *args: str, code: str | None = None) -> None:
        """`code`: a directory holding another volt_spec to run instead (an older build's)."""
        self.args = [sys.executable, "-m", "volt_spec.vmm.main", *args]
        env = dict(os.environ, PYTHONPATH=code) if code else None
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env, cwd=code)
        self.lines: list[str] = []
        self._buf = b""
        self.started = time.monotonic()

    def _read_some(self, timeout: float) -> bool:
        """Read what is available within `timeout`; False at EOF."""
        ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0))
        if not ready:
            return True
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            return False
        self._buf += chunk
        *complete, self._buf = self._buf.split(b"\n")
        self.lines += [c.decode(errors="replace").rstrip("\r") for c in complete]
        return True

    def drain(self) -> str:
        """Read everything already in the pipe (call it with the VM paused: all it printed is
        there); returns the partial last line, if any (the guest was paused mid-line)."""
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0)
            if not ready or not self._read_some(0):
                return self._buf.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30.0, accept=None) -> re.Match:
        """The first console line matching `pattern` (regex) that `accept(match)` (if given) takes;
        fails with the console and stderr on timeout or when the VMM exits first."""
        rx = re.compile(pattern)
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                m = rx.search(line)
                if m and (accept is None or accept(m)):
                    return m
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s; console:\n"
                                     + "\n".join(self.lines[-40:]))
            if not self._read_some(min(remaining, 1.0)):
                if self._buf:                                # a last line without its newline
                    self.lines.append(self._buf.decode(errors="replace"))
                    self._buf = b""
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m and (accept is None or accept(m)):
                        return m
                err = self.proc.stderr.read().decode(errors="replace")
                raise AssertionError(f"volt-vmm exited before {pattern!r}; stderr: {err}\nconsole:\n"
                                     + "\n".join(self.lines[-40:]))

    def wait_for_value(self, pattern: str, at_least: int, timeout: float = 30.0) -> int:
        """Wait for a line whose first group (an integer) is >= at_least; returns it."""
        m = self.wait_for(pattern, timeout, accept=lambda m: int(m.group(1)) >= at_least)
        return int(m.group(1))

    def wait_api(self, sock: str, timeout: float = 10.0):
        """An ApiClient once the VMM's API answers (it starts just after the vCPUs)."""
        from volt_spec.api.client import ApiClient
        client = ApiClient(sock, timeout=scaled(60))
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while not client.ping():
            assert self.proc.poll() is None, "volt-vmm exited before its API came up"
            assert time.monotonic() < deadline, f"no API on {sock} within {timeout}s"
            time.sleep(0.005)       # the socket appears from another process
        return client

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        """Wait for exit: (exit code, stderr). Drains stdout into `lines`."""
        deadline = time.monotonic() + scaled(timeout)
        while self._read_some(max(0.0, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("volt-vmm did not exit in time; console:\n" + "\n".join(self.lines[-40:]))
        if self._buf:
            self.lines.append(self._buf.decode(errors="replace"))
            self._buf = b""
        code = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return code, self.proc.stderr.read().decode(errors="replace")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "VmmProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        self.proc.stdout.close()
        self.proc.stderr.close()


def run_vmm(*args: str, timeout: float = 30.0) -> tuple[int, list[str], str]:
    """Run volt-vmm to completion: (exit code, console lines, stderr)."""
    with VmmProcess(*args) as vmm:
        code, err = vmm.finish(timeout)
        return code, vmm.lines, err
