"""Keeping and removing snapshots on real guests: manual ones are kept beyond `retain` unless taken
with --expire; `snapshots delete --all` and `delete --purge` reach the snapshots of a deleted VM."""

from __future__ import annotations

import json
import os

import pytest

from .test_e2e_policy import spec
from .voltcli import spec_text, write

pytestmark = pytest.mark.hwlane


def listed(volt, vm: str) -> list[tuple[str, str, bool]]:
    rows = json.loads(volt("snapshots", "list", vm, "-o", "json").stdout)
    return [(r["id"], r["trigger"], r["expire"]) for r in rows]


def test_manual_snapshots_are_kept_beyond_retain_unless_taken_with_expire(volt, tmp_path):
    volt("apply", spec(tmp_path, "keep", "[{trigger: stop}]", retain="{count: 1}"))
    volt.wait_log("keep", "VOLT-READY")
    volt("snapshot", "keep", "--name", "m1")
    volt("snapshot", "keep", "--name", "m2")
    assert listed(volt, "keep") == [("m1", "manual", False), ("m2", "manual", False)]   # 2 > count: kept
    volt("snapshot", "keep", "--name", "e1", "--expire")
    volt("snapshot", "keep", "--name", "e2", "--expire")     # retention at once: e1 goes, e2 is the newest
    assert listed(volt, "keep") == [("m1", "manual", False), ("m2", "manual", False), ("e2", "manual", True)]
    assert "manual, expires" in volt("snapshots", "list", "keep").stdout
    volt("stop", "keep")                                       # the stop trigger's snapshot replaces e2
    rows = listed(volt, "keep")
    assert [r[:2] for r in rows[:2]] == [("m1", "manual"), ("m2", "manual")] and len(rows) == 3, rows
    assert rows[2][1] == "stop"


def test_snapshots_of_a_deleted_vm_can_be_deleted_all_at_once_or_purged(volt, tmp_path):
    path = write(tmp_path / "old.yaml", spec_text("old"))
    volt("apply", path)
    volt.wait_log("old", "VOLT-READY")
    volt("snapshot", "old", "--name", "a")
    volt("snapshot", "old", "--name", "b")
    assert volt("delete", "old").stdout.startswith("vm/old deleted")
    folder = volt.home / "snapshots" / "old"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    os.symlink(outside, folder / "c")                      # named like a snapshot, pointing out
    assert volt("snapshots", "delete", "--all", "old").stdout.strip() == "2 snapshots of vm/old deleted"
    assert listed(volt, "old") == [] and (outside / "precious").exists()
    assert volt("snapshots", "delete", "--all", "old").stdout.strip() == "vm/old has no snapshots"

    volt("apply", path)
    volt.wait_log("old", "VOLT-READY")
    volt("snapshot", "old", "--name", "c2")
    volt("delete", "old")
    assert listed(volt, "old") == [("c2", "manual", False)]    # snapshots outlive their VM
    out = volt("delete", "old", "--purge").stdout
    assert out.startswith("vm/old snapshots purged (the VM was already deleted) in "), out
    assert not os.path.lexists(folder) and (outside / "precious").exists()
    assert "vm/old failed: no such VM" in volt("delete", "old", "--purge", check=1).stdout
    r = volt("snapshots", "delete", "--all", "../old", check=2)
    assert "is not a VM name" in r.stderr
