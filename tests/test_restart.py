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
