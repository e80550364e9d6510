"""`volt agent` end to end on a real git repository and real VMs: it converges, restarts what dies,
follows commits (reconfigure, prune), shares ownership with clones, refuses a conflicting source,
stops everything through stop triggers on SIGTERM, and a new agent restores it all."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from .agentproc import AgentProc
from .gitrepo import clone, commit_all, git, upstream
from .timing import scaled
from .voltcli import spec_text, write

pytestmark = pytest.mark.hwlane

POLICY = """  restartPolicy: {policy}
  snapshots:
    restore: latest
    triggers: [{{trigger: stop}}]
"""


def vm_spec(name: str, memory: str = "128Mi", policy: str = "Always", cmdline: str = "volt.ticks=0 volt.tick_ms=200"):
    return spec_text(name, memory=memory, cmdline=cmdline) + POLICY.format(policy=policy)


def wait_for(cond, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + scaled(timeout)
    while not (value := cond()):
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        time.sleep(0.1)          # the state is another process's: poll it
    return value


def states(volt) -> dict[str, dict]:
    return {r["name"]: r for r in volt.status()}


@pytest.fixture
def repo(tmp_path):
    up = upstream(tmp_path / "up.git")
    work = clone(up, tmp_path / "work")
    (work / "vms").mkdir()
    for name in ("a", "b", "c"):
        write(work / "vms" / f"{name}.yaml", vm_spec(name))
    write(work / "README.md", "fleet\n")
    commit_all(work, "three VMs")
    return up, work


def test_the_agent_keeps_a_host_converged_on_a_git_repository(volt, repo, tmp_path):
    up, work = repo
    agent = AgentProc(volt, f"file://{up}", "--path", "vms", "--interval", "2s")
    try:
        first = agent.synced()
        assert first["event"] == "synced" and first.get("created") == 3, agent.events
        running = wait_for(lambda: (s := states(volt)) and all(r["state"] == "running" for r in s.values()) and s,
                           "three running VMs")
        assert sorted(running) == ["a", "b", "c"]
        assert {r["commit"] for r in running.values()} == {git(work, "rev-parse", "HEAD")}
        status = json.loads(volt("agent", "status", "-o", "json").stdout)
        assert status[0]["state"] == "running" and status[0]["commit"] == git(work, "rev-parse", "HEAD")
        assert f"agent: file://{up} (vms) at {git(work, 'rev-parse', 'HEAD')[:12]}, last sync 20" in volt("status").stdout

        os.kill(running["a"]["pid"], signal.SIGKILL)
        wait_for(lambda: (r := states(volt)["a"])["state"] == "running" and r["pid"] != running["a"]["pid"],
                 "vm/a restarted", timeout=15)
        assert states(volt)["a"]["restarts"] == 1

        write(work / "vms" / "b.yaml", vm_spec("b", memory="256Mi"))
        (work / "vms" / "c.yaml").unlink()
        commit_all(work, "b bigger, c gone")
        wait_for(lambda: set(states(volt)) == {"a", "b"} and states(volt)["b"]["memory_mib"] == 256,
                 "b reconfigured and c pruned", timeout=2 + 30)
        volt.wait_state("b", "running")

        _second_agents_on_a_clone(volt, up, tmp_path)

        assert agent.stop() == 0
        stopped = agent.wait_event(lambda e: e["event"] == "stopped", "stopped")
        assert stopped
        for name in ("a", "b"):
            assert volt.state(name)["state"] == "stopped"
            snaps = json.loads(volt("snapshots", "list", name, "-o", "json").stdout)
            assert [s["trigger"] for s in snaps][-1:] == ["stop"], snaps
    finally:
        if agent.proc.poll() is None:
            agent.stop(signal.SIGKILL)

    again = AgentProc(volt, f"file://{up}", "--path", "vms", "--interval", "30s")
    try:
        again.synced()
        results = {e["vm"]: e for e in again.events if e["event"] == "vm"}
        assert {n: e["action"] for n, e in results.items()} == {"a": "restored", "b": "restored"}, again.events
        volt.wait_log("a", "tick 1 ")
    finally:
        assert again.stop() == 0


def _second_agents_on_a_clone(volt, up: Path, tmp_path: Path) -> None:
    """A clone owns the same VMs (nothing changes); a conflicting source is refused, and its SIGTERM
    stops nothing of another source's."""
    other = clone(up, tmp_path / "other")
    pids = {n: r["pid"] for n, r in states(volt).items()}
    same = AgentProc(volt, str(other), "--path", "vms", "--interval", "30s")
    try:
        e = same.synced()
        assert e["event"] == "synced" and e.get("unchanged") == 2 and "created" not in e, same.events
    finally:
        same.stop(signal.SIGKILL)
    rival = AgentProc(volt, str(other), "--path", "vms", "--source", "rival", "--interval", "30s")
    e = rival.synced()
    assert e["event"] == "sync-failed" and "conflict: vm/a is owned by" in e["error"], rival.events
    assert "last_error" in json.dumps(json.loads(volt("agent", "status", "-o", "json").stdout))
    assert rival.stop() == 0
    assert {n: r["pid"] for n, r in states(volt).items()} == pids


def test_a_guest_that_powers_off_is_completed_under_on_failure_and_restarted_with_backoff_under_always(
        volt, tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    once = "volt.ticks=2 volt.tick_ms=50 volt.poweroff"
    write(specs / "job.yaml", vm_spec("job", policy="OnFailure", cmdline=once))
    write(specs / "loop.yaml", vm_spec("loop", policy="Always", cmdline=once))
    agent = AgentProc(volt, str(specs), "--interval", "1s")
    try:
        agent.synced()
        job = volt.wait_state("job", "completed")
        assert job["reason"] == "guest powered off" and job["restarts"] == 0
        loop = wait_for(lambda: (r := volt.state("loop"))["restarts"] == 1 and "restarting in" in r["reason"] and r,
                        "vm/loop held in back-off after its first restart")
        assert loop["state"] == "stopped" and "(1 restart)" in loop["reason"], loop
        assert "restarting in" in volt("status", "loop").stdout
    finally:
        assert agent.stop() == 0
    assert volt("diff", str(specs / "job.yaml")).returncode == 0
    assert volt("apply", str(specs / "job.yaml")).stdout.strip() == "vm/job unchanged"
    assert volt.state("job")["state"] == "completed"
