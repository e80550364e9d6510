"""`volt agent install`: a systemd unit that runs the agent at host boot and stops it (and, through
it, every VM with its stop triggers) at shutdown: libvirt-guests' managed save, declaratively.

KillMode=process: systemd signals only the agent; the agent stops its VMs itself (stop triggers
first), and if the agent crashes its VMs keep running and the restarted agent finds them.
Delegate=yes: the VMMs' cgroups are made below the unit's own.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from ..fsutil import atomic_write

UNIT_DIR = Path("/etc/systemd/system")
STOP_TIMEOUT_S = 900          # every VM's stop-trigger snapshot, then its shutdown
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class UnitError(RuntimeError):
    """The unit could not be written or enabled: the one-line reason."""


def unit_name(name: str) -> str:
    if not name or not set(name) <= _NAME_OK or name.startswith((".", "-")) or len(name) > 200:
        raise UnitError(f"unit name {name!r}: use letters, digits, '-', '_' or '.'")
    return name if name.endswith(".service") else f"{name}.service"


def unit_text(agent_args: list[str], home: Path, description: str) -> str:
    """The unit file for `volt agent run AGENT_ARGS...` with $VOLT_HOME = home."""
    command = shlex.join([sys.executable, "-m", "volt_spec", "agent", "run", *agent_args])
    env = shlex.quote(f"VOLT_HOME={home}")
    return f"""# Written by `volt agent install`; `volt agent install` again rewrites it.
[Unit]
Description={description}
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
Environment={env}
ExecStart={command.replace('%', '%%')}
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=5s
KillMode=process
Delegate=yes
TimeoutStopSec={STOP_TIMEOUT_S}s

[Install]
WantedBy=multi-user.target
"""


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def install(name: str, text: str, unit_dir: Path = UNIT_DIR, enable: bool = True) -> list[str]:
    """Write the unit atomically; enable and start it when systemd runs. What was done, as lines."""
    path = unit_dir / unit_name(name)
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text, mode=0o644)
    except OSError as e:
        raise UnitError(f"cannot write {path}: {e.strerror or e}") from None
    done = [f"wrote {path}"]
    if not enable:
        return done
    if not systemd_running():
        return done + [f"systemd is not running here: enable it later with systemctl enable --now {path.name}"]
    for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", path.name]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            said = (r.stderr or r.stdout).strip().splitlines()
            raise UnitError(f"{' '.join(cmd)} failed: {said[-1] if said else f'status {r.returncode}'}")
    return done + [f"enabled and started {path.name}"]
