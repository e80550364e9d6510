"""Drive the `volt` CLI as a user would: a real process, its own $VOLT_HOME."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .timing import scaled

SPEC = """apiVersion: volt/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  kernel:
    path: builtin:testguest
    cmdline: "{cmdline}"
  vcpus: {vcpus}
  memory: {memory}
  running: {running}
"""


def spec_text(name: str, cmdline: str = "volt.ticks=0 volt.tick_ms=200", vcpus: int = 1,
              memory: str = "128Mi", running: bool = True) -> str:
    return SPEC.format(name=name, cmdline=cmdline, vcpus=vcpus, memory=memory,
                       running="true" if running else "false")


class Volt:
    """`prefix` runs every command under another (e.g. `ip netns exec NS`): VMs started by
    apply then live in that network namespace, beside their taps."""

    def __init__(self, home: Path, prefix: list[str] = ()) -> None:
        self.home = home
        self.env = dict(os.environ, VOLT_HOME=str(home))
        self.prefix = list(prefix)

    def __call__(self, *args: str, check: int | None = 0, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.prefix, sys.executable, "-m", "volt_spec", *args], env=self.env, text=True,
                              capture_output=True, timeout=scaled(timeout), stdin=subprocess.DEVNULL)
        assert "Traceback" not in proc.stderr, proc.stderr
        if check is not None:
            assert proc.returncode == check, (f"volt {' '.join(args)} exited {proc.returncode}\n"
                                              f"stdout: {proc.stdout}\nstderr: {proc.stderr}{self.vm_records()}")
        return proc

    def vm_records(self) -> str:
        """Each VM's exit record and the tail of its supervisor log: what a failed command's
        message needs when the cause is a VMM that ended (seen only in the slow lane)."""
        out = []
        for vm in sorted((self.home / "vms").glob("*")) if (self.home / "vms").is_dir() else []:
            for name, tail in (("exit.json", 600), ("supervisor.log", 1500)):
                f = vm / name
                if f.exists():
                    out.append(f"\n--- {vm.name}/{name}:\n" + f.read_text(errors="replace")[-tail:])
        return "".join(out)

    def status(self, name: str | None = None) -> list[dict]:
        out = self(*(["status", name] if name else ["status"]), "-o", "json").stdout
        return json.loads(out)

    def state(self, name: str) -> dict:
        rows = self.status(name)
        assert len(rows) == 1
        return rows[0]

    def log(self, name: str) -> str:
        """The VM's console log so far ('' before it exists)."""
        log = self.home / "vms" / name / "console.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def ended(self, name: str) -> str | None:
        """Why the VM's current VMM ended (its supervisor's exit record), None while it runs: a
        wait on the console can then fail at once with the reason instead of at its deadline."""
        vm = self.home / "vms" / name
        try:
            inst = json.loads((vm / "instance.json").read_text())
            ended = json.loads((vm / "exit.json").read_text())
        except (OSError, ValueError):
            return None
        return ended.get("reason") or "ended" if ended.get("generation") == inst.get("generation") else None

    def wait_log(self, name: str, marker: str, timeout: float = 30.0) -> str:
        """Wait until the VM's console log holds `marker` in a whole line, and return the log's
        whole lines: the guest writes as it goes, so a line read mid-write (`mem-ok 2b2` of
        `mem-ok 2b2af3acbdd4a84c`, seen in the slow lane) must not count."""
        return self.wait_match(name, re.compile(re.escape(marker)), timeout=timeout, label=marker)[1]

    def wait_match(self, name: str, pattern: re.Pattern, offset: int = 0, timeout: float = 30.0,
                   forbid: str | None = None, label: str | None = None) -> tuple[re.Match, str]:
        """The first match of `pattern` in the whole lines of the VM's console after byte `offset`,
        and those lines; `forbid` fails at once when it shows up. Fails at once when the VMM ended,
        its reason on the first line (a CI summary shows a failure's first line; in the lane, "guest
        triple fault" is what makes the test run again), else at the deadline with the VM's state."""
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while True:
            ended = self.ended(name)          # read first: a VMM that ended wrote its whole console
            text = whole_lines(self.log(name)[offset:])
            assert forbid is None or forbid not in text, text[-2000:]
            found = pattern.search(text)
            if found:
                return found, text
            if ended is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.05)   # the guest writes the console from another process: poll it
        last = text.rstrip("\n").rsplit("\n", 1)[-1][-160:]
        within = f"before its VMM ended ({ended})" if ended else f"within {timeout}s ({self._state_line(name)})"
        raise AssertionError(f"{label or pattern.pattern!r} not in vm/{name}'s console {within}; "
                             f"last line: {last!r}\n{text[-2000:]}{self.vm_records()}")

    def _state_line(self, name: str) -> str:
        try:
            row = self.state(name)
            return f"state {row['state']}: {row.get('reason') or 'no reason'}"
        except Exception as e:  # noqa: BLE001 - the failure message must not hide the failure
            return f"state unknown: {e}"

    def wait_state(self, name: str, state: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + scaled(timeout)
        while True:
            row = self.state(name)
            if row["state"] == state or time.monotonic() > deadline:
                assert row["state"] == state, row
                return row
            time.sleep(0.05)


def whole_lines(text: str) -> str:
    """`text` up to its last newline: a console read while the guest writes may end mid-line."""
    return text[:text.rfind("\n") + 1]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)
