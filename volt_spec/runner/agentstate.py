"""What an agent says about itself: its state file (for `volt agent status` and `volt status`) and
its event log (one event per line: text, or JSON with `-o json`), times in RFC 3339 UTC.

    $VOLT_HOME/agents/<key>.json   source, path, pid, commit last applied, last sync, last error
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from .home import private_dir, read_json, write_json
from .procs import is_alive, start_ticks
from .times import rfc3339


class EventLog:
    """One line per event: `TIME EVENT key=value ...`, or a JSON object per line."""

    def __init__(self, out: TextIO | None = None, json_lines: bool = False) -> None:
        self.out, self.json_lines = out or sys.stdout, json_lines

    def event(self, name: str, **fields) -> None:
        fields = {k: v for k, v in fields.items() if v not in (None, "")}
        now = rfc3339(time.time())
        if self.json_lines:
            line = json.dumps({"time": now, "event": name, **fields}, sort_keys=False)
        else:
            line = " ".join([now, name, *(f"{k}={_text(v)}" for k, v in fields.items())])
        self.out.write(line + "\n")
        self.out.flush()


def _text(value) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in " \"=\n")) else text


class AgentState:
    """The state file of the agent for one source."""

    def __init__(self, path: Path, source: dict) -> None:
        self.path, self.source = path, source

    @classmethod
    def for_source(cls, home: Path, source) -> "AgentState":
        key = hashlib.sha256(f"{source.target}\0{source.branch}\0{source.subdir}".encode()).hexdigest()[:16]
        return cls(home / "agents" / f"{key}.json",
                   {"source": source.describe(), "path": str(source.path), "branch": source.branch})

    def _write(self, **fields) -> None:
        private_dir(self.path.parent)
        write_json(self.path, dict(read_json(self.path) or {}, **self.source, **fields))

    def started(self) -> None:
        self._write(pid=os.getpid(), pid_start=start_ticks(os.getpid()), started_at=rfc3339(time.time()),
                    state="syncing", stopped_at=None)

    def synced(self, commit: str | None, error: str | None) -> None:
        self._write(commit=commit, last_sync=rfc3339(time.time()), last_error=error, state="running")

    def stopped(self) -> None:
        self._write(state="stopped", stopped_at=rfc3339(time.time()))


def all_agents(home: Path) -> list[dict]:
    """Every agent that ran on this host, with `state` checked now (a dead pid is not running)."""
    try:
        names = sorted(n for n in os.listdir(home / "agents") if n.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    rows = []
    for name in names:
        rec = read_json(home / "agents" / name)
        if not isinstance(rec, dict):
            continue
        if rec.get("state") != "stopped" and not is_alive(rec.get("pid"), rec.get("pid_start")):
            rec["state"] = "dead"
        rows.append(rec)
    return rows
