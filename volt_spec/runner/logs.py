"""`volt logs` (the console log, rotated once) and `volt console` (interactive, detach with Ctrl-])."""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from pathlib import Path

from ..api import unixpath
from .home import VmDir
from .procs import is_alive

DETACH = b"\x1d"      # Ctrl-]
POLL_S = 0.2          # follow mode polls the file like `tail -f`


def instance_live(vm_dir: VmDir, generation: str | None) -> bool:
    """May the VMM instance `generation` still add to the console log? Not once its supervisor
    wrote its exit record (it does so after the last of the VMM's output), nor once another
    instance (or none) is the VM's, nor when its supervisor is gone (killed, no record)."""
    inst = vm_dir.read_instance()
    if generation is None or not inst or inst.get("generation") != generation:
        return False
    ended = vm_dir.read_exit()
    if ended and ended.get("generation") == generation:
        return False
    return is_alive(inst.get("supervisor_pid"), inst.get("supervisor_start"))


def live_generation(vm_dir: VmDir) -> str | None:
    """The generation of the VM's current instance if it is still running, else None."""
    generation = (vm_dir.read_instance() or {}).get("generation")
    return generation if instance_live(vm_dir, generation) else None


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class LogFollower:
    """console.log read as it grows, across its rotation to console.log.1 (`tail -F`).

    The file is held open: when the path names a new file, the rest of the old one (written
    before the rotation) is read first, and a whole file that came and went between two reads
    (console.log.1 is neither the old file nor the new one) next, then the new file from its
    beginning; so nothing is lost or printed twice however the reads fall."""

    def __init__(self, path: Path) -> None:
        self.path, self.rotated = path, path.with_name(path.name + ".1")
        self.f = None
        self._open()

    def _open(self) -> bool:
        try:
            self.f = open(self.path, "rb")
        except FileNotFoundError:
            self.f = None
        return self.f is not None

    def _read_rotated(self, skip: set) -> bytes:
        try:
            with open(self.rotated, "rb") as f:
                return b"" if _ident(os.fstat(f.fileno())) in skip else f.read()
        except FileNotFoundError:
            return b""

    def backlog(self) -> bytes:
        """All there is now: console.log.1, then console.log."""
        mine = {_ident(os.fstat(self.f.fileno()))} if self.f else set()
        return self._read_rotated(mine) + self.read()

    def read(self) -> bytes:
        """What was written since the last read (b"" when nothing was)."""
        if self.f is None:
            return self.f.read() if self._open() else b""
        data = self.f.read()
        try:
            now = _ident(os.stat(self.path))
        except FileNotFoundError:           # between the rename and the new file: next time
            return data
        old = _ident(os.fstat(self.f.fileno()))
        if now == old:
            return data
        data += self.f.read() + self._read_rotated({old, now})
        self.f.close()
        return data + (self.f.read() if self._open() else b"")

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


class Prefixed:
    """Whole lines to a shared stream, each starting `[vm/NAME] ` (several VMs' logs at once)."""

    def __init__(self, name: str, out, lock) -> None:
        self.prefix, self.out, self.lock, self.partial = f"[vm/{name}] ".encode(), out, lock, b""

    def write(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if lines:
            with self.lock:
                self.out.write(b"".join(self.prefix + line + b"\n" for line in lines))

    def flush(self) -> None:
        with self.lock:
            self.out.flush()

    def close(self) -> None:
        """The last line, if it had no newline yet."""
        if self.partial:
            self.write(b"\n")


def print_logs(vm_dirs: list[VmDir], follow: bool, tail: int = -1) -> None:
    """Several VMs' logs, each line prefixed with its VM; followed side by side with `follow`."""
    import threading
    lock = threading.Lock()
    outs = [Prefixed(d.name, sys.stdout.buffer, lock) for d in vm_dirs]
    threads = [threading.Thread(target=print_log, args=(d, follow, tail, o), daemon=True)
               for d, o in zip(vm_dirs, outs)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)              # a join with a timeout lets Ctrl-C through
    except KeyboardInterrupt:
        pass
    for o in outs:
        o.close()
    sys.stdout.buffer.flush()


def print_log(vm_dir: VmDir, follow: bool, tail: int = -1, out=None) -> None:
    """Print the console log; with `follow`, keep printing what the VM's current instance adds
    until it has ended and all it wrote is printed (at once when it is not running)."""
    out = out if out is not None else sys.stdout.buffer
    generation = live_generation(vm_dir) if follow else None    # decided before reading: no end is missed
    log = LogFollower(vm_dir.console_log)
    try:
        data = log.backlog()
        if tail >= 0:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail else b""
        out.write(data)
        out.flush()
        while generation is not None:
            live = instance_live(vm_dir, generation)    # before the read: its output is all there once not
            chunk = log.read()
            if chunk:
                out.write(chunk)
                out.flush()
            if not live:
                return
            if not chunk:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        return
    finally:
        log.close()


class CrlfOutput:
    """Guest output for a terminal in raw mode: a LF not preceded by CR becomes CR LF.

    `volt console` puts the terminal in raw mode (every key goes to the guest as typed, Ctrl-C
    included), which also turns off the terminal's own LF -> CR LF output mapping; a guest that
    ends its lines with a bare LF (the test guest, early boot output, a program writing to
    /dev/ttyS0 without ONLCR) would then staircase. Linux's serial console and getty already send
    CR LF, which passes unchanged, also when a read ends between the CR and the LF; a lone CR
    (a progress line redrawn in place) is left alone too. This is what picocom's `--imap lfcrlf`
    and minicom's "add carriage return" do; `virsh console` and `screen` pass bytes through and
    rely on the guest's tty for it."""

    def __init__(self) -> None:
        self.after_cr = False

    def feed(self, data: bytes) -> bytes:
        if not data:
            return data
        out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self.after_cr and data[:1] == b"\n":
            out = out[1:]                   # its CR came at the end of the last read
        self.after_cr = data[-1:] == b"\r"
        return out


def attach_console(vm_dir: VmDir) -> None:
    """Bridge this terminal and the VM's console socket until Ctrl-] or the VM ends.

    Output: translated by CrlfOutput when stdout is a terminal (raw mode, see there); a pipe or a
    file gets the guest's bytes as they are, as `volt logs` does. Input: passed as typed, so Enter
    sends CR, as a serial terminal's does: Linux's serial tty maps it to LF (ICRNL) for getty and
    the shell, and the test guest reads nothing. Detach: Ctrl-], when stdin is a terminal; when
    it is not, at the end of input."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unixpath.connect(sock, str(vm_dir.console_sock))
    stdin_fd = sys.stdin.fileno()
    is_tty = os.isatty(stdin_fd)
    translate = CrlfOutput().feed if os.isatty(1) else (lambda data: data)
    old = None
    if is_tty:
        import termios
        import tty
        old = termios.tcgetattr(stdin_fd)
        tty.setraw(stdin_fd)
        sys.stderr.write(f"attached to vm/{vm_dir.name}; detach with Ctrl-]\r\n")
        sys.stderr.flush()
    try:
        _bridge(sock, stdin_fd, is_tty, translate)
    finally:
        if old is not None:
            import termios
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, old)
            sys.stderr.write("\ndetached\n")
        sock.close()


def _bridge(sock: socket.socket, stdin_fd: int, is_tty: bool, translate) -> None:
    while True:
        ready, _, _ = select.select([sock, stdin_fd], [], [])
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            _write_all(1, translate(data))
        if stdin_fd in ready:
            data = os.read(stdin_fd, 1024)
            if not data:
                return
            if is_tty and DETACH in data:
                data = data[:data.index(DETACH)]
                if data:
                    sock.sendall(data)
                return
            sock.sendall(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
