"""Where volt keeps its state: $VOLT_HOME, one directory per VM, atomic writes, per-VM locks.

    $VOLT_HOME/
      vms/<name>/applied.json    the applied spec, its hashes and the path it was applied from
      vms/<name>/instance.json   the running instance: supervisor and VMM pids, start times, sockets
      vms/<name>/exit.json       how that instance ended (written by its supervisor)
      vms/<name>/console.log     serial console (capped and rotated to console.log.1)
      vms/<name>/run/api.sock    the VMM's HTTP API (run/ belongs to the VM's jail uid, as vm.json)
      vms/<name>/console.sock    the supervisor's console;  jail.json: what the VMM's jail holds
      locks/<name>.lock          flock(2) held while a command changes the VM
      snapshots/<name>/<id>/     snapshots (they outlive the VM unless purged)
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from ..fsutil import atomic_write
from ..names import VM_NAME, vm_name


def volt_home() -> Path:
    """$VOLT_HOME, else /var/lib/volt as root, else $XDG_STATE_HOME/volt (~/.local/state/volt)."""
    env = os.environ.get("VOLT_HOME")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/volt")
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "volt"


def write_json(path: Path, obj: object) -> None:
    """State files are root's alone (0600): they name paths, pids and the applied spec."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mode=0o600)


def private_dir(path: Path) -> Path:
    """`path` and any missing parents created 0700 (mkdir's mode only applies to the last)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
    return path


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (json.JSONDecodeError, OSError):
        return None


class VmDir:
    """The files of one VM under $VOLT_HOME."""

    def __init__(self, home: Path, name: str) -> None:
        self.home, self.name = home, vm_name(name)      # BadName before any path is made of it
        self.path = home / "vms" / name

    applied = property(lambda self: self.path / "applied.json")
    instance = property(lambda self: self.path / "instance.json")
    exit_record = property(lambda self: self.path / "exit.json")
    console_log = property(lambda self: self.path / "console.log")
    run = property(lambda self: self.path / "run")          # the VMM's own (its jail uid's): socket, vm.json
    api_sock = property(lambda self: self.path / "run" / "api.sock")
    vm_config = property(lambda self: self.path / "run" / "vm.json")
    jail_file = property(lambda self: self.path / "jail.json")
    console_sock = property(lambda self: self.path / "console.sock")
    supervisor_log = property(lambda self: self.path / "supervisor.log")
    snapshots = property(lambda self: self.home / "snapshots" / self.name)

    def exists(self) -> bool:
        return self.applied.exists()

    def ensure(self) -> Path:
        return private_dir(self.path)

    def read_applied(self) -> dict | None:
        return read_json(self.applied)

    def read_instance(self) -> dict | None:
        return read_json(self.instance)

    def read_exit(self) -> dict | None:
        return read_json(self.exit_record)

    def remove(self) -> None:
        import shutil                  # here: `volt status` and an unchanged apply remove nothing
        shutil.rmtree(self.path, ignore_errors=True)

    @contextmanager
    def lock(self):
        """Serialise commands that change this VM (two applies never start it twice)."""
        lock_path = self.home / "locks" / f"{self.name}.lock"
        private_dir(lock_path.parent)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def all_vm_names(home: Path) -> list[str]:
    """The VMs under $VOLT_HOME: real directories named as VMs are, holding an applied.json."""
    try:
        entries = list(os.scandir(home / "vms"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name for e in entries if VM_NAME.match(e.name) and e.is_dir(follow_symlinks=False)
                  and os.path.isfile(os.path.join(e.path, "applied.json")))
