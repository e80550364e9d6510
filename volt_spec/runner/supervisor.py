"""The per-VM supervisor: starts volt-vmm, keeps its console, and records how it ended.

It outlives the VMM so that `volt status` can trust an exit record even after a
`kill -9` of the VMM. Run detached by `volt apply`:

    python -m volt_spec.runner.supervisor VMDIR GENERATION -- volt-vmm ARGS...
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .home import write_json
from .procs import signal_name, start_ticks

CONSOLE_LOG_MAX = 1 << 20          # bytes per console.log file before it rotates to console.log.1
STDERR_TAIL = 20


class ConsoleLog:
    """Append-only console log, capped in size: the full file rotates to `.1`."""

    def __init__(self, path: Path, enabled: bool, cap: int = CONSOLE_LOG_MAX) -> None:
        self.path, self.enabled, self.cap = path, enabled, cap
        self.f = open(path, "ab") if enabled else None
        self.size = path.stat().st_size if enabled else 0

    def write(self, data: bytes) -> None:
        if not self.f:
            return
        if self.size + len(data) > self.cap:
            self.f.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.f = open(self.path, "ab")
            self.size = 0
        self.f.write(data)
        self.f.flush()
        self.size += len(data)


class ConsoleHub:
    """console.sock: every client sees the guest's output from now on and may type into it."""

    def __init__(self, path: Path, vmm_stdin) -> None:
        self.path, self.vmm_stdin = path, vmm_stdin
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.server.bind(str(path))
        finally:
            os.umask(old)
        self.server.listen(4)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                self.clients.append(conn)
            threading.Thread(target=self._read_client, args=(conn,), daemon=True).start()

    def _read_client(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
            try:
                self.vmm_stdin.write(data)
                self.vmm_stdin.flush()
            except (OSError, ValueError):
                break
        with self.lock:
            if conn in self.clients:
                self.clients.remove(conn)
        conn.close()

    def broadcast(self, data: bytes) -> None:
        with self.lock:
            for conn in list(self.clients):
                try:
                    conn.sendall(data)
                except OSError:
                    self.clients.remove(conn)

    def close(self) -> None:
        self.server.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class Supervisor:
    def __init__(self, vm_dir: Path, generation: str, vmm_cmd: list[str], log_console: bool) -> None:
        self.vm_dir, self.generation, self.vmm_cmd = vm_dir, generation, vmm_cmd
        self.console = ConsoleLog(vm_dir / "console.log", log_console)
        self.stderr_tail: list[str] = []
        self.output_hooks: list = []          # callables(bytes) fed with console output (policies)

    def run(self) -> int:
        proc = subprocess.Popen(self.vmm_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, close_fds=True)
        self.proc = proc
        write_json(self.vm_dir / "instance.json", {
            "generation": self.generation,
            "supervisor_pid": os.getpid(), "supervisor_start": start_ticks(os.getpid()),
            "vmm_pid": proc.pid, "vmm_start": start_ticks(proc.pid),
            "started_at": time.time(), "api_sock": str(self.vm_dir / "api.sock"),
            "cmd": self.vmm_cmd,
        })
        hub = ConsoleHub(self.vm_dir / "console.sock", proc.stdin)
        signal.signal(signal.SIGTERM, lambda *_: self._forward(signal.SIGTERM))
        signal.signal(signal.SIGINT, lambda *_: self._forward(signal.SIGTERM))
        err_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        err_thread.start()
        while True:
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            self.console.write(data)
            hub.broadcast(data)
            for hook in self.output_hooks:
                hook(data)
        code = proc.wait()
        err_thread.join(timeout=5)
        hub.close()
        self._record_exit(code)
        return 0

    def _forward(self, signum: int) -> None:
        try:
            self.proc.send_signal(signum)
        except ProcessLookupError:
            pass

    def _pump_stderr(self) -> None:
        with open(self.vm_dir / "supervisor.log", "ab") as log:
            for raw in self.proc.stderr:
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").strip()
                if line:
                    self.stderr_tail = (self.stderr_tail + [line])[-STDERR_TAIL:]

    def _record_exit(self, code: int) -> None:
        last = self.stderr_tail[-1].removeprefix("volt-vmm: ") if self.stderr_tail else ""
        if code < 0:
            reason = f"killed by signal {-code} ({signal_name(-code)})"
        elif code == 0:
            reason = last or "guest powered off"
        else:
            reason = last or f"volt-vmm exited with status {code}"
        write_json(self.vm_dir / "exit.json", {
            "generation": self.generation, "code": code if code >= 0 else None,
            "signal": -code if code < 0 else None, "reason": reason, "ended_at": time.time(),
            "clean": code == 0,
        })


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: python -m volt_spec.runner.supervisor VMDIR GENERATION -- CMD...\n")
        return 2
    vm_dir, generation, cmd = Path(argv[0]), argv[1], argv[3:]
    log_console = os.environ.get("VOLT_CONSOLE_LOG", "1") != "0"
    return Supervisor(vm_dir, generation, cmd, log_console).run()


if __name__ == "__main__":
    sys.exit(main())
