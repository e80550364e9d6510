"""End to end: `volt snapshot`, restore on apply, fallbacks, and crashes mid-snapshot."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from .voltcli import spec_text, write

pytestmark = pytest.mark.hwlane


def first_tick(log: str) -> int:
    return int(re.search(r"^tick (\d+) ", log, re.M).group(1))


def test_apply_restores_latest_snapshot_after_delete(volt, tmp_path):
    spec = write(tmp_path / "w.yaml", spec_text("w", cmdline="volt.ticks=0 volt.tick_ms=50 volt.mem=8"))
    volt("apply", spec)
    log = volt.wait_log("w", "tick 5 ")
    checksum = re.search(r"mem-ok (\w+)", volt.wait_log("w", "mem-ok")).group(1)
    out = volt("snapshot", "w", "--name", "warm").stdout
    assert re.match(r"snapshot warm of vm/w: [\d.]+ MiB on disk \(128 MiB of memory\), guest paused [\d.]+ ms", out), out
    rows = json.loads(volt("snapshots", "list", "-o", "json").stdout)
    assert [(r["id"], r["vm"], r["trigger"], r["valid"]) for r in rows] == [("warm", "w", "manual", True)]
    assert volt.state("w")["last_snapshot"]["id"] == "warm"
    volt("delete", "w")
    assert [r["id"] for r in json.loads(volt("snapshots", "list", "-o", "json").stdout)] == ["warm"]
    out = volt("apply", spec).stdout
    assert re.match(r"vm/w restored from warm in (\d+ ms|[\d.]+ s)", out), out
    row = volt.wait_state("w", "running")
    assert row["booted_from"] == "snapshot warm"
    log = volt.wait_log("w", "mem-ok")
    assert first_tick(log) > 5
    assert re.search(r"mem-ok (\w+)", log).group(1) == checksum
    assert "VOLT-READY" not in log          # it continued; it did not boot again


def test_corrupt_latest_snapshot_falls_back_to_cold_boot_with_a_warning(volt, tmp_path):
    spec = write(tmp_path / "f.yaml", spec_text("f"))
    volt("apply", spec)
    volt.wait_log("f", "VOLT-READY")
    snap = json.loads(volt("snapshot", "f", "--name", "s1", "-o", "json").stdout)
    assert snap["id"] == "s1" and snap["path"].endswith("/snapshots/f/s1") and snap["paused_ms"] > 0
    volt("delete", "f")
    state = volt.home / "snapshots" / "f" / "s1" / "state.json"
    raw = bytearray(state.read_bytes())
    raw[raw.index(b'"lapic":"') + 20] ^= 1
    state.write_bytes(bytes(raw))
    r = volt("apply", spec)
    assert r.stdout.startswith("vm/f created"), r.stdout
    assert "warning: vm/f: s1: " in r.stderr and "CRC-64 mismatch" in r.stderr and "cold boot" in r.stderr
    assert volt.state("f")["booted_from"] == "cold"
    v = volt("snapshots", "verify", "s1", check=1)
    assert "INVALID" in v.stdout and "CRC-64" in v.stdout
    assert volt("snapshots", "delete", "s1").stdout.strip() == "snapshot s1 deleted"
    assert json.loads(volt("snapshots", "list", "-o", "json").stdout) == []
    assert "no snapshot 'nope'" in volt("snapshots", "delete", "nope", check=1).stderr


def test_spec_change_does_not_restore_an_old_shape(volt, tmp_path):
    spec = write(tmp_path / "m.yaml", spec_text("m"))
    volt("apply", spec)
    volt.wait_log("m", "VOLT-READY")
    volt("snapshot", "m")
    write(tmp_path / "m.yaml", spec_text("m", memory="256Mi"))
    out = volt("apply", spec).stdout
    assert out.startswith("vm/m replaced (machine changed: memory)"), out
    assert volt.state("m")["booted_from"] == "cold"


def test_vmm_killed_mid_snapshot_leaves_older_snapshots_intact(volt, tmp_path):
    # 160 MiB of guest data keep the snapshot writing long enough to be killed in the middle; more
    # only lengthens the lane's slowest test (the L2 touches every page through TCG's nested paging)
    spec = write(tmp_path / "k.yaml", spec_text("k", cmdline="volt.ticks=0 volt.mem=160", memory="256Mi"))
    volt("apply", spec)
    volt.wait_log("k", "mem-ok", timeout=60)
    volt("snapshot", "k", "--name", "good")
    pid = volt.state("k")["pid"]
    snapdir = volt.home / "snapshots" / "k"
    proc = subprocess.Popen([sys.executable, "-m", "volt_spec", "snapshot", "k", "--name", "doomed"],
                            env=volt.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".doomed") for p in snapdir.iterdir()):
        assert time.monotonic() < deadline, "the snapshot never started writing"
        time.sleep(0.001)          # watching another process's progress on disk
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "Traceback" not in err, (out, err)
    rows = json.loads(volt("snapshots", "list", "-o", "json").stdout)
    assert [(r["id"], r["valid"]) for r in rows] == [("good", True)]
    assert volt("snapshots", "verify", "good").stdout.endswith("ok (state CRC-64 and memory checksum match)\n")
    assert volt.wait_state("k", "failed")["reason"].startswith("killed by signal 9")
    assert volt("apply", spec).stdout.startswith("vm/k restored from good")
    volt("snapshot", "k", "--name", "after")         # the next snapshot clears the partial leftovers
    assert not any(p.name.startswith(".") for p in snapdir.iterdir())


def test_volt_restore_replaces_the_running_vm(volt, tmp_path):
    spec = write(tmp_path / "r.yaml", spec_text("r", cmdline="volt.ticks=0 volt.tick_ms=50"))
    volt("apply", spec)
    volt.wait_log("r", "tick 3 ")
    volt("snapshot", "r", "--name", "early")
    volt.wait_log("r", "tick 30 ")
    old_pid = volt.state("r")["pid"]
    out = volt("restore", "r", "--snapshot", "early").stdout
    assert re.match(r"vm/r restored from early in (\d+ ms|[\d.]+ s)", out), out
    row = volt.wait_state("r", "running")
    assert row["pid"] != old_pid and row["booted_from"] == "snapshot early"
    assert "no valid snapshot nope" in volt("restore", "r", "--snapshot", "nope", check=1).stderr


def test_apply_never_runs_a_guest_on_memory_that_changed(volt, tmp_path):
    """A memory.snap edited in place keeps its size (the catalogue lists it) but not its
    fingerprint: the restore reads it in full, refuses it, and apply boots fresh and says why."""
    spec = write(tmp_path / "e.yaml", spec_text("e"))
    volt("apply", spec)
    volt.wait_log("e", "tick 1 ")
    volt("snapshot", "e", "--name", "warm")
    volt("delete", "e")
    mem = volt.home / "snapshots" / "e" / "warm" / "memory.snap"
    fd = os.open(mem, os.O_RDWR)
    try:
        offset = os.lseek(fd, 0, os.SEEK_DATA) + 64
        os.pwrite(fd, bytes([os.pread(fd, 1, offset)[0] ^ 0xFF]), offset)
    finally:
        os.close(fd)
    r = volt("apply", spec)
    assert r.stdout.startswith("vm/e created"), r.stdout
    assert "restore of warm refused" in r.stderr and "does not match the checksum" in r.stderr, r.stderr
    assert volt.state("e")["booted_from"] == "cold"
    assert "INVALID" in volt("snapshots", "verify", "warm", check=1).stdout


def test_a_snapshot_id_is_found_across_vms_and_must_be_unique(volt, tmp_path):
    """`restore: ID` looks in the VM's own snapshots, then across every VM's (a snapshot of another
    VM of the same machine shape); an id two VMs have is refused until written VM/ID."""
    for name in ("src", "other"):
        volt("apply", write(tmp_path / f"{name}.yaml", spec_text(name)))
        volt.wait_log(name, "tick 2 ")
    snap = json.loads(volt("snapshot", "src", "--name", "golden-1", "-o", "json").stdout)
    dst = write(tmp_path / "dst.yaml", spec_text("dst") + "  snapshots: {restore: golden-1}\n")
    out = volt("apply", dst).stdout
    assert out.startswith(f"vm/dst restored from {snap['id']}"), out
    assert volt.wait_state("dst", "running")["booted_from"] == f"snapshot {snap['id']}"

    volt("snapshot", "other", "--name", "golden-1")
    amb = write(tmp_path / "amb.yaml", spec_text("amb") + "  snapshots: {restore: golden-1}\n")
    r = volt("apply", amb, check=1)
    assert "snapshot id golden-1 is ambiguous: other, src each have one; name one as VM/golden-1" in r.stdout, r.stdout
    assert volt("status", "-o", "json").stdout.count('"amb"') == 0
    write(tmp_path / "amb.yaml", spec_text("amb") + "  snapshots: {restore: other/golden-1}\n")
    assert volt("apply", amb).stdout.startswith("vm/amb restored from golden-1")
