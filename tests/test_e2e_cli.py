"""The CLI staples on running VMs: selectors and several names for snapshot and stop, `volt wait`
for running and for a snapshot, RFC 3339 times in -o json."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from .timing import scaled
from .voltcli import spec_text, write

pytestmark = pytest.mark.hwlane


def labelled(name: str, team: str) -> str:
    return spec_text(name).replace(f"  name: {name}\n", f"  name: {name}\n  labels: {{team: {team}}}\n")


def test_selectors_wait_and_times_on_running_vms(volt, tmp_path):
    d = tmp_path / "specs"
    d.mkdir()
    for name, team in (("s1", "a"), ("s2", "a"), ("s3", "b")):
        write(d / f"{name}.yaml", labelled(name, team))
    volt("apply", str(d))
    assert volt("wait", "-l", "team", "--for", "running", "--timeout", "60s").stdout.count("condition met") == 3
    row = volt.state("s1")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["started_at"]), row

    waiter = subprocess.Popen([sys.executable, "-m", "volt_spec", "wait", "s3", "--for", "snapshot",
                               "--timeout", "2m"], env=volt.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    lines = volt("snapshot", "-l", "team=a").stdout.splitlines()
    assert [ln.split()[3] for ln in lines] == ["vm/s1:", "vm/s2:"], lines
    taken = json.loads(volt("snapshot", "s3", "-o", "json").stdout)
    assert taken["id"].startswith("s3-")
    out, errs = waiter.communicate(timeout=scaled(120))
    assert waiter.returncode == 0 and out.strip() == "vm/s3 condition met (snapshot)", errs
    both = json.loads(volt("snapshot", "s1", "s3", "-o", "json").stdout)
    assert [t["id"][:3] for t in both] == ["s1-", "s3-"]
    assert "--name names one snapshot" in volt("snapshot", "s1", "s2", "--name", "x", check=2).stderr
    snaps = json.loads(volt("snapshots", "list", "s1", "-o", "json").stdout)
    assert all(re.fullmatch(r"\d{4}-.*Z", s["created"]) for s in snaps), snaps

    assert volt("stop", "-l", "team=a").stdout.splitlines() == ["vm/s1 stopped (powered off)",
                                                                "vm/s2 stopped (powered off)"]
    assert volt("wait", "s1", "s2", "--for", "stopped").returncode == 0
    assert volt.state("s3")["state"] == "running"


def test_logs_of_several_vms_are_prefixed_and_follow_ends_with_them(volt, tmp_path):
    d = tmp_path / "specs"
    d.mkdir()
    for name in ("l1", "l2"):
        write(d / f"{name}.yaml", labelled(name, "a").replace("volt.ticks=0", "volt.ticks=3 volt.poweroff"))
    volt("apply", str(d))
    out = volt("logs", "-l", "team=a", "-f", timeout=60).stdout.splitlines()
    for name in ("l1", "l2"):
        mine = [ln for ln in out if ln.startswith(f"[vm/{name}] ")]
        assert any("tick 3 " in ln for ln in mine), out
        assert [ln[len(f"[vm/{name}] "):] for ln in mine] == volt.log(name).splitlines()
    assert all(ln.startswith(("[vm/l1] ", "[vm/l2] ")) for ln in out)
    assert volt("logs", "l1", "nosuch", check=1).stderr.strip() == "volt: no VM named 'nosuch'"
