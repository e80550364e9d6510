"""`volt status`: one row per VM, live state plus what was applied."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .home import VmDir, all_vm_names
from .observe import ALIVE, observe
from .owner import Owner
from .times import rfc3339


def _age(seconds: float | None) -> str:
    """42s, 5m12s, 3h05m, 2d03h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _drift(records: list[tuple[str, dict]]) -> dict[str, str]:
    """in-sync / drifted / unknown (applied from stdin) per VM: does the spec file it came from
    still say what was applied?

    A file whose bytes are those applied is in sync without parsing it (YAML and the
    schema cost ~150 ms); only a changed file is loaded to see which of its VMs drifted."""
    from ..fsutil import file_sha256
    by_source: dict[str, list[tuple[str, dict]]] = {}
    for name, rec in records:
        by_source.setdefault(rec.get("source", ""), []).append((name, rec))
    out = {}
    for source, items in by_source.items():
        if source.endswith("/<stdin>"):              # applied from standard input: no file to compare
            out.update((name, "unknown") for name, _ in items)
            continue
        digest = file_sha256(source) if source else None
        if digest is not None and all(rec.get("source_sha256") == digest for _, rec in items):
            out.update((name, "in-sync") for name, _ in items)
            continue
        from ..schema import load_specs
        current = {}
        if source and Path(source).exists():
            try:
                specs, _ = load_specs([source])
                current = {s.name: s.spec_hash() for s in specs}
            except Exception:  # noqa: BLE001 - an unreadable spec counts as drift
                current = {}
        for name, rec in items:
            out[name] = "in-sync" if current.get(name) == rec.get("spec_hash") else "drifted"
    return out


def last_snapshot(vm_dir: VmDir) -> dict | None:
    """The newest snapshot of a VM: {id, created, trigger} (read from its state.json)."""
    try:                                  # none taken (the jail makes the folder): no catalogue import
        with os.scandir(vm_dir.snapshots) as entries:
            if next(entries, None) is None:
                return None
    except (FileNotFoundError, NotADirectoryError, PermissionError):     # as the catalogue: none
        return None
    from ..snapshot.catalogue import newest
    snap = newest(vm_dir.snapshots, vm_dir.name)
    if snap is None:
        return None
    created = snap.created or None
    return {"id": snap.id, "created": rfc3339(created), "trigger": snap.meta.get("trigger", "manual"),
            "age_s": round(time.time() - created, 1) if created else None}


def _restarts(vm_dir: VmDir, obs: dict, rec: dict) -> dict | None:
    """The agent's restart record for an ended VM: {restarts, next_at, describe}; None when none."""
    from .restart import Backoff
    if not (vm_dir.path / "restarts.json").exists():
        return None
    b = Backoff.load(vm_dir)
    if obs["state"] in ALIVE:
        return {"restarts": b.restarts, "next_at": 0.0, "describe": ""}
    return {"restarts": b.restarts, "next_at": b.next_at, "describe": b.describe()}


def collect(home: Path, names: list[str] | None = None) -> list[dict]:
    """A row per VM (`names`, else all): what `volt status` prints and `-o json` gives scripts."""
    names = names if names is not None else all_vm_names(home)
    records = []
    for name in names:
        rec = VmDir(home, name).read_applied()
        if rec:
            records.append((name, rec))
    drift = _drift(records)
    rows = []
    for name, rec in records:
        vm_dir = VmDir(home, name)
        obs = observe(vm_dir)
        vm = rec.get("vm", {})
        policy = obs.get("policy") or {}
        reason = obs["reason"]
        if policy.get("last_error"):
            reason = f"warning: {policy['last_error']}" + (f"; {reason}" if reason else "")
        restarts = _restarts(vm_dir, obs, rec)
        if restarts and restarts["next_at"] > time.time():
            reason = restarts["describe"] + (f"; {reason}" if reason else "")
        due = policy.get("next_interval_due")
        rows.append({
            "name": name,
            "state": obs["state"],
            "vcpus": vm.get("vcpus"),
            "memory_mib": vm.get("memory_mib"),
            "uptime_s": obs["uptime_s"],
            "started_at": rfc3339(obs["started_at"]) if obs.get("started_at") else None,
            "pid": obs["pid"],
            "booted_from": obs["booted_from"] or "-",
            "last_snapshot": last_snapshot(vm_dir),
            "spec": drift.get(name, "drifted"),
            "reason": reason,
            "next_snapshot_in_s": round(max(0.0, due - time.time()), 1) if due else None,
            "jail": (vm_dir.read_instance() or {}).get("jail") if obs["pid"] else None,
            "labels": rec.get("labels", {}),
            "source": rec.get("source"),
            "owner": Owner.from_record(rec).id,
            "commit": rec.get("commit"),
            "restart_policy": rec.get("restart_policy", "Always"),
            "restarts": restarts["restarts"] if restarts else 0,
        })
    return rows


def _snap_cell(snap: dict | None) -> str:
    if not snap:
        return "-"
    return f"{_age(snap['age_s'])} ago ({snap['trigger']})"


def table(rows: list[dict], wide: bool = False) -> str:
    """The status table; `wide` adds labels, restart policy and count, the owner and its commit."""
    from .plaintable import table as plain_table      # tabulate's plain format; tabulate only if needed
    if not rows:
        return "no VMs (volt apply SPEC creates one)"
    headers = ["NAME", "STATE", "VCPUS", "MEMORY", "UPTIME", "PID", "BOOTED", "LAST-SNAPSHOT", "NEXT-SNAPSHOT",
               "SPEC", "REASON"]
    if wide:
        headers[-1:-1] = ["LABELS", "RESTART", "RESTARTS", "OWNER", "COMMIT"]
    body = []
    for r in rows:
        row = [r["name"], r["state"], r["vcpus"], f"{r['memory_mib']}Mi", _age(r["uptime_s"]),
               r["pid"] or "-", r["booted_from"], _snap_cell(r["last_snapshot"]),
               "in " + _age(r["next_snapshot_in_s"]) if r["next_snapshot_in_s"] is not None else "-",
               r["spec"], r["reason"] or ""]
        if wide:
            labels = ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "-"
            row[-1:-1] = [labels, r["restart_policy"], r["restarts"], r["owner"], (r["commit"] or "-")[:12]]
        body.append(row)
    return plain_table(body, headers)
