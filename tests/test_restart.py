"""Restart policy and crash-loop back-off (runner/restart.py): pure logic."""

from __future__ import annotations

import pytest

from volt_spec.runner.home import VmDir
from volt_spec.runner.restart import Backoff, delay_s, wants_restart


def test_back_off_is_immediate_then_doubles_from_10s_to_5min():
    assert [delay_s(n) for n in range(8)] == [0, 10, 20, 40, 80, 160, 300, 300]


@pytest.mark.parametrize("policy, state, ended_by, want", [
    ("Always", "failed", "failure", True), ("OnFailure", "failed", "failure", True),
    ("Never", "failed", "failure", False), ("Always", "stopped", "guest", True),
    ("OnFailure", "stopped", "guest", False), ("Always", "stopped", "request", False),
    ("Always", "running", None, False),
])
def test_which_ends_a_policy_restarts(policy, state, ended_by, want):
    assert wants_restart(policy, {"state": state, "ended_by": ended_by}) is want


def test_an_end_is_counted_once_and_a_long_run_starts_over(tmp_path):
    b = Backoff()
    b.ended("g1", started_at=100.0, ended_at=105.0)
    assert b.due_in(now=105.0) == 0                 # the first restart: at once
    b.restarted()
    b.ended("g2", started_at=106.0, ended_at=110.0)
    assert b.due_in(now=110.0) == 10 and b.describe(now=110.0) == "restarting in 10s (1 restart)"
    b.ended("g2", started_at=106.0, ended_at=999.0)  # the same end seen again: no change
    assert b.next_at == 120.0
    b.restarted()
    b.ended("g3", started_at=200.0, ended_at=210.0)
    assert b.due_in(now=210.0) == 20 and "(2 restarts)" in b.describe(now=210.0)
    b.restarted()
    b.ended("g4", started_at=300.0, ended_at=300.0 + 600)   # up 10 min: the count starts over
    assert b.restarts == 0 and b.due_in(now=900.0) == 0
    vm = VmDir(tmp_path, "v")
    vm.ensure()
    b.save(vm)
    again = Backoff.load(vm)
    assert (again.restarts, again.next_at, again.generation) == (0, 900.0, "g4")
    (vm.path / "restarts.json").write_text("{\"restarts\": \"x\"}")
    assert Backoff.load(vm).restarts == 0


def test_an_agent_waits_for_the_exit_record_before_it_restarts_a_vm(tmp_path):
    """The VMM is gone but its supervisor still writes the record: hold this pass (a restart now
    would go uncounted and skip the back-off); with the supervisor gone too it is a failure."""
    import io
    import json
    import os
    import subprocess
    import time

    from volt_spec.runner import apply as ap
    from volt_spec.runner.agent import Agent
    from volt_spec.runner.agentstate import EventLog
    from volt_spec.runner.gitsource import Source
    from volt_spec.runner.home import VmDir
    from volt_spec.runner.procs import start_ticks
    from volt_spec.schema.model import build_spec

    home = tmp_path / "home"
    spec = build_spec(str(tmp_path / "a.yaml"), {"apiVersion": "volt/v1", "kind": "VirtualMachine",
                                                 "metadata": {"name": "a"},
                                                 "spec": {"kernel": {"path": "builtin:testguest"}}})
    vm_dir = VmDir(home, "a")
    vm_dir.ensure()
    vm_dir.applied.write_text(json.dumps({"machine_hash": spec.machine_hash(), "running": True,
                                          "owner": {"source": None, "file": str(tmp_path / "a.yaml")}}))
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = {"supervisor_pid": os.getpid(), "supervisor_start": start_ticks(os.getpid())}
    gone = {"supervisor_pid": dead.pid, "supervisor_start": 1}
    agent = Agent(Source(str(tmp_path), home / "cache"), home, 30.0, EventLog(io.StringIO()))
    for supervisor in (live, gone):
        vm_dir.instance.write_text(json.dumps({"generation": "g1", "vmm_pid": dead.pid, "vmm_start": 1,
                                               "started_at": time.time() - 60, **supervisor}))
        held = agent.held(spec)
        if supervisor is live:
            assert held is not None and held.action == ap.UNCHANGED and "has not recorded why yet" in held.detail
        else:
            assert held is None                               # restart it, counted
    assert json.loads((vm_dir.path / "restarts.json").read_text())["restarts"] == 1
    rival = Agent(Source(str(tmp_path), home / "cache"), home, 30.0, EventLog(io.StringIO()), source_name="rival")
    (vm_dir.path / "restarts.json").unlink()
    assert rival.held(spec) is None and not (vm_dir.path / "restarts.json").exists()   # not its VM: apply says so
    # A VMM alive but not answering (busy, or killed and still tearing its memory down, which the
    # lane saw take long enough for a sync to restart it uncounted) is held, not applied.
    vm_dir.instance.write_text(json.dumps({"generation": "g2", "vmm_pid": os.getpid(),
                                           "vmm_start": start_ticks(os.getpid()), "started_at": time.time(), **live}))
    held = agent.held(spec)
    assert held is not None and held.action == ap.UNCHANGED and held.detail.startswith("busy: "), held
    assert not (vm_dir.path / "restarts.json").exists()
