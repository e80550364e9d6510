"""End to end: `volt apply / status / diff / stop / delete` with the test guest on real KVM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from .voltcli import spec_text, write

pytestmark = pytest.mark.hwlane


def test_apply_is_idempotent_and_replaces_on_memory_change(volt, tmp_path):
    spec = write(tmp_path / "hello.yaml", spec_text("hello"))
    out = volt("apply", spec).stdout
    assert out.startswith("vm/hello created in "), out
    row = volt.wait_state("hello", "running")
    assert row["vcpus"] == 1 and row["memory_mib"] == 128 and row["spec"] == "in-sync"
    assert row["booted_from"] == "cold" and row["pid"]
    old_pid = row["pid"]
    volt.wait_log("hello", "tick 2 ")
    logs = volt("logs", "hello").stdout
    assert "VOLT-READY" in logs and "tick 1 " in logs

    assert volt("apply", spec).stdout.strip() == "vm/hello unchanged"
    assert volt("diff", spec).returncode == 0

    write(tmp_path / "hello.yaml", spec_text("hello", memory="256Mi"))
    assert volt.state("hello")["spec"] == "drifted"
    d = volt("diff", spec, check=1)
    assert "would be replaced" in d.stdout and "256Mi" in d.stdout
    out = volt("apply", spec).stdout
    assert out.startswith("vm/hello replaced (machine changed: memory)"), out
    row = volt.wait_state("hello", "running")
    assert row["memory_mib"] == 256 and row["pid"] != old_pid
    assert row["spec"] == "in-sync"
    volt.wait_log("hello", "mem_mib=256")


def test_diff_exit_codes(volt, tmp_path):
    spec = write(tmp_path / "d.yaml", spec_text("d1"))
    assert volt("diff", spec, check=1).stdout.startswith("# vm/d1: would be created")
    volt("apply", spec)
    assert volt("diff", spec).stdout == ""
    bad = write(tmp_path / "bad.yaml", "apiVersion: volt/v1\nkind: VirtualMachine\nmetadata: {name: X}\n")
    r = volt("diff", bad, check=None)
    assert r.returncode > 1 and "bad.yaml:" in r.stderr


def test_prune_deletes_what_the_directory_no_longer_declares(volt, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    write(repo / "a.yaml", spec_text("a"))
    write(repo / "b.yaml", spec_text("b"))
    out = volt("apply", str(repo)).stdout.splitlines()
    assert [ln.split(" in ")[0] for ln in out] == ["vm/a created", "vm/b created"]
    (repo / "b.yaml").unlink()
    assert volt("apply", str(repo), "--prune", "--dry-run").stdout.splitlines() == [
        "vm/a unchanged (dry run)", "vm/b deleted (dry run)"]
    out = volt("apply", str(repo), "--prune").stdout.splitlines()
    assert out[0] == "vm/a unchanged" and out[1].startswith("vm/b deleted")
    assert [r["name"] for r in volt.status()] == ["a"]


def test_killed_vmm_shows_failed_and_apply_recovers(volt, tmp_path):
    spec = write(tmp_path / "k.yaml", spec_text("k"))
    volt("apply", spec)
    pid = volt.wait_state("k", "running")["pid"]
    os.kill(pid, signal.SIGKILL)
    row = volt.wait_state("k", "failed")
    assert "killed by signal 9" in row["reason"], row
    assert row["pid"] is None
    table = volt("status").stdout
    assert "failed" in table and "killed by signal 9" in table
    out = volt("apply", spec).stdout
    assert out.startswith("vm/k replaced (was failed: killed by signal 9"), out
    assert volt.wait_state("k", "running")["pid"] != pid


def test_concurrent_applies_start_one_vm(volt, tmp_path):
    spec = write(tmp_path / "c.yaml", spec_text("c"))
    results = []

    def run():
        results.append(volt("apply", spec).stdout.strip())

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    verbs = sorted(r.split()[1] for r in results)
    assert verbs == ["created", "unchanged", "unchanged"], results
    vmm = subprocess.run(["pgrep", "-f", f"{volt.home}/vms/c/run/vm.json"], capture_output=True, text=True)
    pids = [p for p in vmm.stdout.split() if p]
    # the supervisor's command line names the socket too: one supervisor + one VMM
    assert len(pids) == 2, vmm.stdout


def test_running_false_keeps_it_down_and_stop_sends_ctrl_alt_del(volt, tmp_path):
    spec = write(tmp_path / "s.yaml", spec_text("s"))
    volt("apply", spec)
    volt.wait_log("s", "VOLT-READY")
    out = volt("stop", "s").stdout
    assert out.strip() == "vm/s stopped (powered off)"
    assert "VOLT-CTRL-ALT-DEL" in volt("logs", "s").stdout
    assert volt.state("s")["state"] == "stopped"
    assert volt("apply", spec).stdout.startswith("vm/s configured (started)")
    volt.wait_state("s", "running")
    write(tmp_path / "s.yaml", spec_text("s", running=False))
    assert volt("apply", spec).stdout.startswith("vm/s configured (stopped)")
    assert volt.state("s")["state"] == "stopped"
    assert volt("apply", spec).stdout.strip() == "vm/s unchanged"


def test_failed_apply_creates_nothing_and_keeps_the_old_vm(volt, tmp_path):
    (tmp_path / "notakernel").write_bytes(b"hello")
    bad = write(tmp_path / "bad.yaml", spec_text("bad").replace("builtin:testguest", "notakernel"))
    r = volt("apply", bad, check=1)
    assert "vm/bad failed: kernel: not an ELF file or a bzImage; nothing was created" in r.stdout
    assert volt.status() == []

    good = write(tmp_path / "g.yaml", spec_text("g"))
    volt("apply", good)
    volt.wait_state("g", "running")
    write(tmp_path / "g.yaml", spec_text("g", memory="256Mi").replace("builtin:testguest", str(tmp_path / "notakernel")))
    r = volt("apply", good, check=1)
    assert "the previous VM was started again" in r.stdout, r.stdout
    row = volt.wait_state("g", "running")
    assert row["memory_mib"] == 128


def test_delete_by_name_and_by_path(volt, tmp_path):
    spec = write(tmp_path / "pair.yaml", spec_text("p1") + "---\n" + spec_text("p2"))
    volt("apply", spec)
    assert volt("delete", "p1").stdout.startswith("vm/p1 deleted")
    assert [r["name"] for r in volt.status()] == ["p2"]
    out = volt("delete", spec).stdout.splitlines()
    assert out[0] == "vm/p1 not found (skipped)" and out[1].startswith("vm/p2 deleted")
    assert volt.status() == []
    r = volt("delete", "nope", check=1)
    assert "vm/nope failed: no such VM" in r.stdout


def test_status_yaml_and_table(volt, tmp_path):
    spec = write(tmp_path / "t.yaml", spec_text("t"))
    volt("apply", spec)
    volt.wait_state("t", "running")
    table = volt("status").stdout
    for col in ("NAME", "STATE", "VCPUS", "MEMORY", "UPTIME", "PID", "BOOTED", "LAST-SNAPSHOT", "SPEC"):
        assert col in table
    assert "running" in table and "in-sync" in table
    assert "state: running" in volt("status", "t", "-o", "yaml").stdout
    keys = set(volt.state("t"))
    assert {"name", "state", "vcpus", "memory_mib", "uptime_s", "pid", "booted_from", "last_snapshot",
            "spec", "reason"} <= keys


def test_console_attach_streams_the_guest(volt, tmp_path):
    spec = write(tmp_path / "con.yaml", spec_text("con", cmdline="volt.ticks=0 volt.tick_ms=50"))
    volt("apply", spec)
    volt.wait_log("con", "VOLT-READY")
    proc = subprocess.Popen([sys.executable, "-m", "volt_spec", "console", "con"], env=volt.env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    while b"tick" not in seen:
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, proc.stderr.read()
        seen += chunk
    proc.stdin.close()                 # end of input detaches a non-interactive console
    assert proc.wait(timeout=10) == 0
    r = volt("console", "nope", check=1)
    assert "no VM named 'nope'" in r.stderr


def test_restore_of_a_missing_snapshot_with_fallback_boot_warns_and_boots(volt, tmp_path):
    spec = write(tmp_path / "fb.yaml", spec_text("fb") + "  snapshots: {restore: {id: golden-1, fallback: boot}}\n")
    r = volt("apply", spec)
    assert r.stdout.startswith("vm/fb created"), r.stdout
    assert "warning: vm/fb: snapshot golden-1 not found; cold boot instead" in r.stderr
    volt.wait_log("fb", "tick 1 ")


def test_a_guest_that_powers_off_during_its_start_was_created_and_completed(volt, tmp_path):
    """However the race between the guest's power-off and the API's first answer goes (the slow
    lane loses it), a run to completion is a start that worked, not a failed one rolled back."""
    spec = write(tmp_path / "quick.yaml", spec_text("quick", cmdline="volt.ticks=1 volt.tick_ms=1 volt.poweroff")
                 + "  restartPolicy: Never\n")
    out = volt("apply", spec).stdout
    assert out.startswith("vm/quick created"), out
    row = volt.wait_state("quick", "completed")
    assert row["reason"] == "guest powered off"
    assert volt("apply", spec).stdout.strip() == "vm/quick unchanged"
