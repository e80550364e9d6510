"""Status never lies: a live VMM whose API is slow is busy, not failed, and apply never replaces it.

The VMM is made slow for real: SIGSTOP freezes the whole process (alive, its API silent) for as
long as the test says, which no timing of a snapshot could promise; the last test writes a real
1 GiB snapshot and watches status meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from .timing import scaled
from .voltcli import spec_text, write

# Not in the hardware-KVM lane: nothing here depends on the kind of KVM.


@pytest.fixture
def frozen(volt, tmp_path):
    """A running VM whose VMM is stopped (SIGSTOP); continued at teardown whatever happened."""
    spec = write(tmp_path / "b.yaml", spec_text("b"))
    volt("apply", spec)
    pid = volt.wait_state("b", "running")["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield spec, pid
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_frozen_vmm_is_busy_not_failed(volt, frozen):
    spec, pid = frozen
    row = volt.state("b")
    assert row["state"] == "busy" and row["pid"] == pid, row
    assert "did not answer" in row["reason"]
    assert " busy " in volt("status").stdout


def test_apply_waits_a_bounded_time_then_refuses_to_replace_a_live_vm(volt, frozen):
    spec, pid = frozen
    volt.env["VOLT_BUSY_WAIT_S"] = "2"
    r = volt("apply", spec, check=1)
    assert f"its VMM (pid {pid}) is alive" in r.stdout and "not replacing" in r.stdout, r.stdout
    assert "vm/b is busy" in r.stderr and "waiting up to 2 s" in r.stderr
    os.kill(pid, signal.SIGCONT)
    row = volt.wait_state("b", "running")
    assert row["pid"] == pid, "the live VM was replaced"


def test_apply_waiting_on_a_busy_vm_goes_on_when_it_answers(volt, frozen):
    spec, pid = frozen
    proc = subprocess.Popen([sys.executable, "-m", "volt_spec", "apply", spec], env=volt.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        warning = proc.stderr.readline()               # the marker: apply says it waits
        assert "vm/b is busy" in warning, warning
        os.kill(pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=scaled(60))
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip() == "vm/b unchanged", (out, err)
    assert volt.state("b")["pid"] == pid


def test_status_during_a_large_snapshot_never_says_failed(volt, tmp_path):
    spec = write(tmp_path / "big.yaml", spec_text("big", cmdline="volt.ticks=0 volt.tick_ms=200 volt.mem=768",
                                                 memory="1Gi"))
    volt("apply", spec)
    volt.wait_log("big", "mem-ok", timeout=120)
    pid = volt.state("big")["pid"]
    snap = subprocess.Popen([sys.executable, "-m", "volt_spec", "snapshot", "big", "--name", "large", "-o", "json"],
                            env=volt.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    states = []
    while snap.poll() is None:
        states.append(volt.state("big")["state"])
    out, err = snap.communicate()
    assert snap.returncode == 0, err
    assert json.loads(out)["id"] == "large"
    assert set(states) <= {"running", "busy"}, states
    assert volt("apply", spec).stdout.strip() == "vm/big unchanged"
    assert volt.state("big")["pid"] == pid
