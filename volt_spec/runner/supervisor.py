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
    """Append-only console log, capped in size: the full file rotates to `.1`.

    A write that fails (ENOSPC, EIO) loses that output but nothing else: the guest runs on, the
    supervisor stays, and the next write that succeeds first says how much was lost and why."""

    def __init__(self, path: Path, enabled: bool, cap: int = CONSOLE_LOG_MAX) -> None:
        self.path, self.enabled, self.cap = path, enabled, cap
        self.fd = self._open() if enabled else None
        self.size = os.fstat(self.fd).st_size if enabled else 0
        self.lost, self.error = 0, ""

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> None:
        if self.fd is None:
            return
        try:
            if self.lost:
                note = f"\n[volt: {self.lost} bytes of console output lost: {self.error}]\n".encode()
                self._append(note)
                self.lost, self.error = 0, ""
            self._append(data)
        except OSError as e:
            self.lost += len(data) - getattr(e, "written", 0)
            self.error = e.strerror or str(e)

    def _append(self, data: bytes) -> None:
        """Write all of `data` (unbuffered: nothing is held back to fail later); an OSError
        carries how much of it was written (`written`)."""
        if self.size + len(data) > self.cap:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            os.close(self.fd)
            self.fd, self.size = self._open(), 0
        done = 0
        try:
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError as e:
            e.written = done
            raise
        finally:
            self.size += done


class ExitReserve:
    """Disk space set aside at start so the exit record can be written on a full disk: status
    must say how the VM ended even then. Freed just before the record is written."""

    SIZE = 64 << 10

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.SIZE)
        finally:
            os.close(fd)

    def release(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


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
    def __init__(self, vm_dir: Path, generation: str, vmm_cmd: list[str], log_console: bool,
                 jail: str | None = None, taps: list[str] = ()) -> None:
        self.vm_dir, self.generation, self.vmm_cmd = vm_dir, generation, vmm_cmd
        self.jail_file, self.taps, self.jail = jail, list(taps), None
        self.console = ConsoleLog(vm_dir / "console.log", log_console)
        self.stderr_tail: list[str] = []
        self.output_hooks: list = []          # callables(bytes) fed with console output (policies)

    def run(self) -> int:
        """Supervise one VMM; exits with an errno when the VM directory cannot be written to
        before the VMM runs (vmctl reports it), 0 otherwise."""
        try:
            self.reserve = ExitReserve(self.vm_dir / ".exit-reserve")
        except OSError as e:
            sys.stderr.write(f"supervisor: cannot reserve space for the exit record: {e.strerror}\n")
            return e.errno or 1
        try:
            proc = self._spawn()
        except (OSError, RuntimeError, ValueError) as e:    # the jail's steps, a tap, the exec
            self.reserve.release()
            sys.stderr.write(f"supervisor: cannot start the VMM: {describe(e)}\n")
            return getattr(e, "errno", None) or 1
        self.proc = proc
        try:
            write_json(self.vm_dir / "instance.json", {
                "generation": self.generation,
                "supervisor_pid": os.getpid(), "supervisor_start": start_ticks(os.getpid()),
                "vmm_pid": proc.pid, "vmm_start": start_ticks(proc.pid),
                "started_at": time.time(), "api_sock": str(self.vm_dir / "run" / "api.sock"),
                "cmd": self.vmm_cmd, "jail": self.jail,
            })
        except OSError as e:                # never leave a VMM running that nobody can find
            proc.kill()
            proc.wait()
            self.reserve.release()
            sys.stderr.write(f"supervisor: cannot write instance.json: {e.strerror}\n")
            return e.errno or 1
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
        if self.jail:
            from ..jail.cgroups import remove
            remove({str(i): path for i, path in enumerate(self.jail["cgroup"])})
        return 0

    def _spawn(self) -> subprocess.Popen:
        """The VMM, in its jail when there is a jail file (jail/enter.py), else as it is."""
        pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True)
        if self.jail_file is None:
            return subprocess.Popen(self.vmm_cmd, **pipes)
        from ..jail.config import JailConfig
        from ..jail.enter import spawn
        proc, self.jail = spawn(self.vmm_cmd, JailConfig.load(self.jail_file), self.taps, **pipes)
        return proc

    def _forward(self, signum: int) -> None:
        try:
            self.proc.send_signal(signum)
        except ProcessLookupError:
            pass

    def _pump_stderr(self) -> None:
        """The VMM's stderr into supervisor.log; drained even when the log cannot be written
        (a full disk), or the VMM would block on its next warning."""
        log = ConsoleLog(self.vm_dir / "supervisor.log", True)
        for raw in self.proc.stderr:
            log.write(raw)
            line = raw.decode(errors="replace").strip()
            if line:
                self.stderr_tail = (self.stderr_tail + [line])[-STDERR_TAIL:]

    def _record_exit(self, code: int) -> None:
        last = self.stderr_tail[-1].removeprefix("volt-vmm: ") if self.stderr_tail else ""
        if code < 0:
            reason = f"killed by signal {-code} ({signal_name(-code)})"
            if -code == signal.SIGSYS:
                reason += ": a system call its seccomp filter forbids"
        elif code == 0:
            reason = last or "guest powered off"
        else:
            reason = last or f"volt-vmm exited with status {code}"
        if self.console.lost:
            reason += f" (console output lost: {self.console.error})"
        record = {"generation": self.generation, "code": code if code >= 0 else None,
                  "signal": -code if code < 0 else None, "reason": reason, "ended_at": time.time(),
                  "clean": code == 0}
        self.reserve.release()              # the space set aside is what this write may need
        try:
            write_json(self.vm_dir / "exit.json", record)
        except OSError as e:
            sys.stderr.write(f"supervisor: cannot write exit.json: {e.strerror}; the VM ended: {reason}\n")


def describe(e: BaseException) -> str:
    """One line naming the cause: an OSError's text and the file it was about."""
    from ..fsutil import os_error
    return os_error(e) if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") < 2 or len(argv) < argv.index("--") + 2:
        sys.stderr.write("usage: python -m volt_spec.runner.supervisor VMDIR GENERATION "
                         "[--jail FILE] [--tap=NAME]... -- CMD...\n")
        return 2
    split = argv.index("--")
    vm_dir, generation, opts, cmd = Path(argv[0]), argv[1], argv[2:split], argv[split + 1:]
    jail = opts[opts.index("--jail") + 1] if "--jail" in opts else None
    taps = [o.removeprefix("--tap=") for o in opts if o.startswith("--tap=")]
    log_console = os.environ.get("VOLT_CONSOLE_LOG", "1") != "0"
    return Supervisor(vm_dir, generation, cmd, log_console, jail, taps).run()


if __name__ == "__main__":
    sys.exit(main())
