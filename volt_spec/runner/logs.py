"""`volt logs` (the console log, rotated once) and `volt console` (interactive, detach with Ctrl-])."""

from __future__ import annotations

import os
import select
import socket
import sys
import time

from .home import VmDir

DETACH = b"\x1d"      # Ctrl-]


def print_log(vm_dir: VmDir, follow: bool, tail: int = -1) -> None:
    out = sys.stdout.buffer
    rotated = vm_dir.console_log.with_name("console.log.1")
    data = b""
    for path in (rotated, vm_dir.console_log):
        try:
            data += path.read_bytes()
        except FileNotFoundError:
            pass
    if tail >= 0:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-tail:]) if tail else b""
    out.write(data)
    out.flush()
    if not follow:
        return
    path = vm_dir.console_log
    pos = path.stat().st_size if path.exists() else 0
    inode = path.stat().st_ino if path.exists() else None
    try:
        while True:
            try:
                st = path.stat()
            except FileNotFoundError:
                time.sleep(0.2)
                continue
            if st.st_ino != inode:          # rotated: start the new file from its beginning
                inode, pos = st.st_ino, 0
            if st.st_size > pos:
                with open(path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                pos += len(chunk)
                out.write(chunk)
                out.flush()
            else:
                time.sleep(0.2)             # follow mode polls the file like `tail -f`
    except KeyboardInterrupt:
        return


def attach_console(vm_dir: VmDir) -> None:
    """Bridge this terminal and the VM's console socket until Ctrl-] or the VM ends."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(vm_dir.console_sock))
    stdin_fd = sys.stdin.fileno()
    is_tty = os.isatty(stdin_fd)
    old = None
    if is_tty:
        import termios
        import tty
        old = termios.tcgetattr(stdin_fd)
        tty.setraw(stdin_fd)
        sys.stderr.write(f"attached to vm/{vm_dir.name}; detach with Ctrl-]\r\n")
    try:
        while True:
            ready, _, _ = select.select([sock, stdin_fd], [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                os.write(1, data)
            if stdin_fd in ready:
                data = os.read(stdin_fd, 1024)
                if not data:
                    break
                if is_tty and DETACH in data:
                    data = data[:data.index(DETACH)]
                    if data:
                        sock.sendall(data)
                    break
                sock.sendall(data)
    finally:
        if old is not None:
            import termios
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, old)
            sys.stderr.write("\ndetached\n")
        sock.close()
