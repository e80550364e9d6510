"""The per-VM supervisor: starts volt-vmm, keeps its console, and records how it ended.

It outlives the VMM so that `volt status` can trust an exit record even after a
`kill -9` of the VMM. Run detached by `volt apply`:

    python -m volt_spec.runner.supervisor VMDIR GENERATION [--jail FILE] [--tap=NAME]... [--pool [--prime=SNAPSHOT]] -- volt-vmm ARGS...
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

from ..api import unixpath
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
        unixpath.bind(self.server, str(path), 0o600)
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
    """`pool`: a warm VMM's supervisor (runner/pool.py), which a VM adopts later: it then answers
    one request on control.sock, {"vm_dir", "generation", "console_log"}, and from then on keeps
    that VM's console, instance and exit records instead of the pool entry's."""

    def __init__(self, vm_dir: Path, generation: str, vmm_cmd: list[str], log_console: bool,
                 jail: str | None = None, taps: list[str] = (), pool: bool = False, prime: str | None = None) -> None:
        self.vm_dir, self.generation, self.vmm_cmd = vm_dir, generation, vmm_cmd
        self.jail_file, self.taps, self.jail, self.pool, self.prime = jail, list(taps), None, pool, prime
        self.console = ConsoleLog(vm_dir / "console.log", log_console)
        self.err_log: ConsoleLog | None = None
        self.hub: ConsoleHub | None = None
        self.switch = threading.Lock()        # held while an adoption moves the records
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
        self.started_at = time.time()
        try:
            self._write_instance()
        except OSError as e:                # never leave a VMM running that nobody can find
            proc.kill()
            proc.wait()
            self.reserve.release()
            sys.stderr.write(f"supervisor: cannot write instance.json: {e.strerror}\n")
            return e.errno or 1
        self.hub = ConsoleHub(self.vm_dir / "console.sock", proc.stdin)
        signal.signal(signal.SIGTERM, lambda *_: self._forward(signal.SIGTERM))
        signal.signal(signal.SIGINT, lambda *_: self._forward(signal.SIGTERM))
        self.err_log = ConsoleLog(self.vm_dir / "supervisor.log", True)
        err_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        err_thread.start()
        if self.pool:
            threading.Thread(target=self._serve_adoption, daemon=True).start()
        if self.prime:
            threading.Thread(target=self._prepare, daemon=True).start()
        while True:
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            with self.switch:
                self.console.write(data)
                self.hub.broadcast(data)
            for hook in self.output_hooks:
                hook(data)
        code = proc.wait()
        err_thread.join(timeout=5)
        with self.switch:
            self.hub.close()
            self._record_exit(code)
        if self.jail:
            from ..jail.cgroups import remove
            remove({str(i): path for i, path in enumerate(self.jail["cgroup"])})
        return 0

    def _write_instance(self) -> None:
        write_json(self.vm_dir / "instance.json", {
            "generation": self.generation,
            "supervisor_pid": os.getpid(), "supervisor_start": start_ticks(os.getpid()),
            "vmm_pid": self.proc.pid, "vmm_start": start_ticks(self.proc.pid),
            "started_at": self.started_at, "api_sock": str(self.vm_dir / "run" / "api.sock"),
            "cmd": self.vmm_cmd, "jail": self.jail, **({"pool": True} if self.pool else {}),
        })

    def _prepare(self) -> None:
        """Prime the warm VMM with a snapshot (a load with prepare: vmm/warm.py) once it answers;
        primed.json says so. A failure leaves it warm and unprimed (pool.py takes it all the same)."""
        from ..api.client import ApiClient, ApiError, ApiUnavailable
        from .warmload import load_snapshot
        folder = self.vm_dir                      # the pool entry's (an adoption may move vm_dir)
        sock = str(folder / "run" / "api.sock")
        deadline = time.monotonic() + 120
        while not ApiClient(sock, timeout=1.0).ping():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return
            time.sleep(0.05)      # the VMM starts: its socket appears from another process
        try:
            load_snapshot(sock, self.prime, prepare=True)
            write_json(folder / "primed.json", {"snapshot": self.prime})
        except (ApiError, ApiUnavailable, OSError) as e:
            sys.stderr.write(f"supervisor: could not prepare the warm VMM with {self.prime}: {describe(e)}\n")

    def _serve_adoption(self) -> None:
        """control.sock (0600, root's): the one request that makes this warm VMM a VM's."""
        import json
        path = self.vm_dir / "control.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unixpath.bind(server, str(path), 0o600)
        server.listen(1)
        while self.pool:
            conn, _ = server.accept()
            with conn:
                try:
                    request = json.loads(conn.makefile("rb").readline() or b"{}")
                    self.adopt(Path(request["vm_dir"]), str(request["generation"]), bool(request["console_log"]))
                    reply = {"ok": True}
                except (OSError, ValueError, KeyError, TypeError) as e:
                    reply = {"ok": False, "error": describe(e)}
                conn.sendall(json.dumps(reply).encode() + b"\n")
        server.close()

    def adopt(self, vm_dir: Path, generation: str, log_console: bool) -> None:
        """From now on keep `vm_dir`'s records: its console log and socket, supervisor.log, the
        space for its exit record, and its instance.json (written last: it makes the VM visible)."""
        with self.switch:
            reserve = ExitReserve(vm_dir / ".exit-reserve")
            self.reserve.release()
            self.reserve, self.vm_dir, self.generation, self.pool = reserve, vm_dir, generation, False
            self.started_at = time.time()             # the VM's start: its uptime is from now
            if self.console.fd is not None:
                os.close(self.console.fd)
            self.console = ConsoleLog(vm_dir / "console.log", log_console)
            old_err, self.err_log = self.err_log, ConsoleLog(vm_dir / "supervisor.log", True)
            os.close(old_err.fd)
            self.hub.close()
            self.hub = ConsoleHub(vm_dir / "console.sock", self.proc.stdin)
            self._write_instance()

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
        for raw in self.proc.stderr:
            self.err_log.write(raw)
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
                         "[--jail FILE] [--tap=NAME]... [--pool [--prime=SNAPSHOT]] -- CMD...\n")
        return 2
    split = argv.index("--")
    vm_dir, generation, opts, cmd = Path(argv[0]), argv[1], argv[2:split], argv[split + 1:]
    jail = opts[opts.index("--jail") + 1] if "--jail" in opts else None
    taps = [o.removeprefix("--tap=") for o in opts if o.startswith("--tap=")]
    log_console = os.environ.get("VOLT_CONSOLE_LOG", "1") != "0"
    prime = next((o.removeprefix("--prime=") for o in opts if o.startswith("--prime=")), None)
    return Supervisor(vm_dir, generation, cmd, log_console, jail, taps, pool="--pool" in opts, prime=prime).run()


if __name__ == "__main__":
    sys.exit(main())
