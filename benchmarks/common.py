"""Shared by the benchmarks: spawn a VMM (or QEMU) and time it until a console line appears."""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

SPAWN_TIMEOUT_S = 60.0
QMP_POLL_S = 0.001


def spawn_until(cmd: list[str], pattern: re.Pattern[bytes], timeout: float,
                after_spawn: Callable[[subprocess.Popen], None] | None = None,
                popen: Callable[..., subprocess.Popen] = subprocess.Popen) -> tuple[float, re.Match]:
    """Spawn `cmd` (with `popen`: jailed_popen for a jailed VMM; optionally drive it with
    `after_spawn`); seconds until a whole console line matches `pattern`, and the match. The
    process is killed afterwards."""
    t0 = time.perf_counter()
    proc = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        if after_spawn is not None:
            after_spawn(proc)
        buf = b""
        deadline = t0 + timeout
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.perf_counter()))
            if not ready:
                raise RuntimeError(f"no line matching {pattern.pattern!r} within {timeout:g} s: {' '.join(cmd)}")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"exited (status {proc.wait()}) before {pattern.pattern!r}: {' '.join(cmd)}")
            buf += chunk
            m = pattern.search(buf)
            if m and b"\n" in buf[m.end():]:
                return time.perf_counter() - t0, m
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def ms(seconds: float) -> float:
    return seconds * 1000.0


def stats(samples: list[float]) -> list[str]:
    """min / median / max, formatted."""
    if not samples:
        return ["-", "-", "-"]
    return [f"{min(samples):.2f}", f"{statistics.median(samples):.2f}", f"{max(samples):.2f}"]


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


KILL_WAIT_S = 60


class Console:
    """A long-lived process whose stdout lines are collected by a thread (the pipe never fills)."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        self.err = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err, stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.eof = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\r\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = SPAWN_TIMEOUT_S) -> str:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if rx.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if self.eof or remaining <= 0:
                    raise RuntimeError(f"no line matching {pattern!r}; last lines: {self.lines[-5:]}")
                self.cond.wait(remaining)

    def close(self) -> None:
        self.proc.kill()
        try:
            self.proc.wait(KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            # Seen only in the lane: a VMM stuck inside the (nested, emulated) KVM ignores SIGKILL.
            raise RuntimeError(f"{self.proc.args[0]} (pid {self.proc.pid}) did not die within "
                               f"{KILL_WAIT_S} s of SIGKILL") from None
        self.thread.join(5)
        self.proc.stdout.close()
        self.err.close()

    def __enter__(self) -> "Console":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Qmp:
    """A minimal QMP client: one JSON object per line, events skipped."""

    def __init__(self, path: str, timeout: float = SPAWN_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"QMP socket {path} never accepted") from None
                time.sleep(QMP_POLL_S)
        self.sock.settimeout(timeout)
        self.rfile = self.sock.makefile("rb")
        self._line()                                        # the greeting
        self.execute("qmp_capabilities")

    def _line(self) -> dict:
        raw = self.rfile.readline()
        if not raw:
            raise RuntimeError("QMP connection closed")
        return json.loads(raw)

    def execute(self, command: str, **arguments) -> object:
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._line()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def jailed_popen(cmd: list[str], **popen) -> subprocess.Popen:
    """Start a volt-vmm command line in its jail, as volt's supervisor does (jail/enter.py): what the
    caller times holds the jail's whole cost in the supervisor and the VMM (cgroups, handing the
    state directories over, namespaces, the root's mounts, dropping root, the seccomp filters). The
    jail's description is made before, once per command line, as volt makes it before it starts
    the supervisor."""
    from volt_spec.jail.enter import spawn
    jail_config, taps = _jail_config(tuple(cmd))
    proc, jail = spawn(cmd + ["--seccomp"], jail_config, taps, **popen)
    _cgroups.update(jail["cgroup"])
    return proc


_cgroups: set[str] = set()


@atexit.register
def _remove_cgroups() -> None:
    """The jails' cgroups, once the benchmark is done (volt's supervisor removes a VM's itself)."""
    from volt_spec.jail.cgroups import remove
    remove({path: path for path in _cgroups})


_configs: dict = {}


def _jail_config(cmd: tuple[str, ...]):
    """(the JailConfig, the tap devices to open) of a volt-vmm command line, as `volt-vmm --jail`
    makes them (vmm/jailed.py): from the VmmConfig its flags describe, and its --config/--policy files."""
    if cmd not in _configs:
        from volt_spec.vmm.config.args import config_from_args
        from volt_spec.vmm.jailed import jail_for
        from volt_spec.vmm.main import parse_args
        opts = parse_args(list(cmd[cmd.index(next(a for a in cmd if a.startswith("--"))):]))
        config = config_from_args(opts)
        files = [opts[k] for k in ("config", "policy") if k in opts]
        _configs[cmd] = (jail_for(config, files), [nic.tap for nic in config.network])
    return _configs[cmd]
