"""Snapshot policies: triggers run by the VM's own VMM, retention, failures visible in status."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from volt_spec.api.client import ApiClient

from .timing import scaled

pytestmark = pytest.mark.hwlane


POLICY_SPEC = """apiVersion: volt/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  kernel: {{path: "builtin:testguest", cmdline: "{cmdline}"}}
  memory: 128Mi
  snapshots:
    triggers: {triggers}
    retain: {retain}
"""


def spec(tmp_path, name, triggers, retain="{count: 5}", cmdline="volt.ticks=0 volt.tick_ms=100"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(POLICY_SPEC.format(name=name, triggers=triggers, retain=retain, cmdline=cmdline))
    return str(path)


def snaps(volt, vm=None):
    return json.loads(volt("snapshots", "list", *([vm] if vm else []), "-o", "json").stdout)


def quiet_snaps(volt, name):
    """The VM's snapshots, listed while no snapshot (or its retention) was under way: a listing
    that raced with one can see its retention half done (under TCG, with a snapshot a second,
    it often does); None then."""
    before = policy_status(volt, name)
    rows = snaps(volt, name)
    after = policy_status(volt, name)
    quiet = before["in_progress"] is None and after["in_progress"] is None
    return rows if quiet and after["snapshots_taken"] == before["snapshots_taken"] else None


def policy_status(volt, name):
    return ApiClient(str(volt.home / "vms" / name / "run" / "api.sock")).get("/vm")["policy"]


def state_of(volt, name: str) -> str:
    """The VM's policy status and exit record (first, on one line: a CI summary shows a failure's
    first line and its last ones), then its console's end."""
    try:
        p = policy_status(volt, name)
        policy = f"in_progress={p['in_progress']} taken={p['snapshots_taken']} last_error={p['last_error']}"
    except Exception as e:  # noqa: BLE001 - the VMM may be gone: say so
        policy = f"no API answer ({e})"
    console = volt.log(name).splitlines()[-5:]
    return f"{policy}; ended: {volt.ended(name)}\nconsole: " + "\n".join(console)


def wait_until(predicate, timeout=30.0, what="condition", explain=None):
    """`explain()`: what to say beside a timeout (the VM's policy status, its console's end)."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (f"; {explain()}" if explain else "")
        time.sleep(0.05)      # polling another process's progress (files / API)


def test_ready_trigger_one_snapshot_per_cold_boot_then_restore(volt, tmp_path):
    path = spec(tmp_path, "rdy", "[{trigger: ready}]")
    volt("apply", path)
    rows = wait_until(lambda: snaps(volt), what="the ready snapshot", explain=lambda: state_of(volt, "rdy"))
    volt.wait_log("rdy", "tick 8 ")
    assert [r["trigger"] for r in snaps(volt)] == ["ready"]
    assert policy_status(volt, "rdy")["snapshots_taken"] == 1
    volt("delete", "rdy")
    out = volt("apply", path).stdout
    assert out.startswith(f"vm/rdy restored from {rows[0]['id']}"), out
    log = volt.wait_log("rdy", "tick 4 ")
    assert "VOLT-READY" not in log
    first = int(re.search(r"^tick (\d+) ", log, re.M).group(1))
    assert first == 1            # the guest was held as it printed the marker, before its first tick
    assert len(snaps(volt)) == 1                       # a restore is not a cold boot: no new ready snapshot


def test_interval_trigger_and_retention_keep_exactly_count(volt, tmp_path):
    path = spec(tmp_path, "ivl", "[{trigger: interval, every: 1s}]", retain="{count: 2}")
    volt("apply", path)
    wait_until(lambda: policy_status(volt, "ivl")["snapshots_taken"] >= 4, timeout=20, what="4 interval snapshots")
    row = volt.state("ivl")
    assert row["last_snapshot"]["trigger"] == "interval"
    assert row["next_snapshot_in_s"] is not None and row["next_snapshot_in_s"] <= 1.0
    assert "NEXT-SNAPSHOT" in volt("status").stdout
    # Under TCG a snapshot takes about the interval: stop the trigger (applied live) to list
    # the snapshots while none is being taken.
    assert volt("apply", spec(tmp_path, "ivl", "[]", retain="{count: 2}")).stdout.startswith("vm/ivl configured")
    rows = wait_until(lambda: quiet_snaps(volt, "ivl"), what="a listing no snapshot raced with")
    assert len(rows) == 2 and all(r["trigger"] == "interval" and r["valid"] for r in rows), rows


def test_console_trigger_fires_on_a_matching_line(volt, tmp_path):
    path = spec(tmp_path, "con", '[{trigger: console, match: "^tick 3 "}]')
    volt("apply", path)
    wait_until(lambda: snaps(volt), what="the console snapshot")
    volt.wait_log("con", "tick 6 ")
    assert [r["trigger"] for r in snaps(volt)] == ["console"]


def test_stop_trigger_fires_on_volt_stop(volt, tmp_path):
    path = spec(tmp_path, "stp", "[{trigger: stop}]")
    volt("apply", path)
    volt.wait_log("stp", "tick 2 ")
    assert snaps(volt) == []
    assert volt("stop", "stp").stdout.strip() == "vm/stp stopped (powered off)"
    assert [r["trigger"] for r in snaps(volt)] == ["stop"]


def test_policy_change_applies_to_a_running_vm(volt, tmp_path):
    path = spec(tmp_path, "chg", "[]")
    volt("apply", path)
    pid = volt.wait_state("chg", "running")["pid"]
    spec(tmp_path, "chg", "[{trigger: interval, every: 1s}]")
    out = volt("apply", path).stdout
    assert out.startswith("vm/chg configured"), out
    wait_until(lambda: snaps(volt), what="a snapshot under the new policy")
    assert volt.state("chg")["pid"] == pid


def test_failing_trigger_keeps_the_vm_running_and_shows_in_status(volt, tmp_path):
    folder = volt.home / "snapshots" / "ro"
    folder.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], check=True)
    try:
        path = spec(tmp_path, "ro", "[{trigger: interval, every: 1s}]")
        volt("apply", path)
        row = wait_until(lambda: (r := volt.state("ro"))["reason"].startswith("warning:") and r,
                         what="the failure in status")
        assert row["state"] == "running"
        assert "interval snapshot failed" in row["reason"] and "Read-only file system" in row["reason"]
        assert "warning: interval snapshot failed" in volt("status").stdout
        volt.wait_log("ro", "tick 15 ")                  # the guest kept running meanwhile
        assert snaps(volt) == []
    finally:
        volt("delete", "--all", check=None)
        subprocess.run(["umount", str(folder)], check=False)


def test_incremental_policy_snapshots_are_diffs_and_retention_keeps_their_parents(volt, tmp_path):
    path = tmp_path / "inc.yaml"
    text = POLICY_SPEC.format(name="inc", triggers="[{trigger: interval, every: 1s}]", retain="{count: 1}",
                              cmdline="volt.ticks=0 volt.tick_ms=100 volt.dirty=4")
    path.write_text(text + "    incremental: {fullEvery: 20}\n")
    volt("apply", str(path))
    wait_until(lambda: policy_status(volt, "inc")["snapshots_taken"] >= 5, timeout=30, what="5 interval snapshots",
               explain=lambda: state_of(volt, "inc"))
    text = text.replace("[{trigger: interval, every: 1s}]", "[]")
    path.write_text(text + "    incremental: {fullEvery: 20}\n")
    assert volt("apply", str(path)).stdout.startswith("vm/inc configured")
    rows = wait_until(lambda: quiet_snaps(volt, "inc"), what="a listing no snapshot raced with")
    # count: 1 keeps the newest, a diff, and so the whole chain it stands on: all of them here.
    assert [r["kind"] for r in rows] == ["full"] + ["diff"] * (len(rows) - 1) and len(rows) >= 5, rows
    assert all(r["valid"] for r in rows) and [r["parent"] for r in rows[1:]] == [r["id"] for r in rows[:-1]], rows
