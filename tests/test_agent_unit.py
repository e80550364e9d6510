"""The agent's own behaviour that needs no VM: systemd notification, SIGHUP, SIGTERM, its state
file, and the unit `volt agent install` writes (checked by systemd-analyze when installed)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from .agentproc import AgentProc
from .voltcli import Volt


@pytest.fixture
def cli(tmp_path):
    return Volt(tmp_path / "home")


def test_ready_after_the_first_sync_sighup_syncs_now_and_sigterm_exits_0(cli, tmp_path):
    specs = tmp_path / "empty"
    specs.mkdir()
    sock_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(30)
        cli.env["NOTIFY_SOCKET"] = str(sock_path)
        agent = AgentProc(cli, str(specs), "--interval", "1h")
        assert sock.recv(64) == b"READY=1"
        first = agent.synced()
        assert first["event"] == "synced", agent.events
        agent.proc.send_signal(signal.SIGHUP)
        again = agent.synced(after=agent.events.index(first) + 1)
        assert again["event"] == "synced"
        assert agent.stop() == 0
        assert sock.recv(64) == b"READY=1" and sock.recv(64) == b"STOPPING=1"
    rows = json.loads(cli("agent", "status", "-o", "json").stdout)
    assert [(r["source"], r["state"]) for r in rows] == [(str(specs), "stopped")]
    assert rows[0]["last_sync"].endswith("Z") and "T" in rows[0]["last_sync"]


def test_a_missing_directory_is_reported_and_an_invalid_spec_applies_nothing(cli, tmp_path):
    agent = AgentProc(cli, str(tmp_path / "nothing-here"), "--interval", "1h")
    e = agent.synced()
    assert e["event"] == "sync-failed" and "no such directory" in e["error"] and e["retry_in_s"] == 20
    assert agent.stop() == 0
    specs = tmp_path / "bad"
    specs.mkdir()
    (specs / "x.yaml").write_text("apiVersion: volt/v1\nkind: VirtualMachine\nmetadata: {name: X}\n")
    agent = AgentProc(cli, str(specs), "--interval", "1h")
    e = agent.synced()
    assert e["event"] == "sync-failed" and "nothing applied" in e["error"] and "x.yaml:" in e["error"]
    assert agent.stop() == 0


def test_bad_arguments_are_one_line_errors(cli, tmp_path):
    r = cli("agent", str(tmp_path), "--interval", "soon", check=2)
    assert r.stderr.strip() == "volt: --interval: 'soon' is not a duration"
    r = cli("agent", str(tmp_path), "--path", "../up", check=2)
    assert "must be a relative path inside the repository" in r.stderr
    r = cli("agent", "https://git.example.com/x.git", "--branch", "--upload-pack=touch /tmp/x", check=2)
    assert r.stderr.startswith("volt: --branch '--upload-pack=touch /tmp/x' is not a branch name")


def test_the_unit_install_writes_verifies(cli, tmp_path):
    units = tmp_path / "units"
    out = cli("agent", "install", "https://git.example.com/fleet.git", "--path", "vms", "--interval", "1m",
              "--unit-dir", str(units), "--no-enable").stdout
    assert out.strip() == f"wrote {units}/volt-agent.service"
    text = (units / "volt-agent.service").read_text()
    for line in ("Type=notify", "Restart=always", "After=network-online.target", "KillMode=process",
                 f"ExecStart={sys.executable} -m volt_spec agent run https://git.example.com/fleet.git "
                 "--interval 1m --path vms", f"Environment=VOLT_HOME={cli.home}"):
        assert line in text.splitlines(), line
    r = cli("agent", "install", str(tmp_path), "--name", "../evil", "--unit-dir", str(units), check=1)
    assert "unit name '../evil'" in r.stderr
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd): the unit was not verified")
    r = subprocess.run(["systemd-analyze", "verify", str(units / "volt-agent.service")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "volt-agent.service" not in r.stderr, r.stderr


def test_a_failed_pull_is_reported_and_what_the_checkout_holds_is_still_applied(cli, tmp_path):
    from .gitrepo import clone, commit_all, git, upstream
    from .voltcli import spec_text, write
    up = upstream(tmp_path / "up.git")
    work = clone(up, tmp_path / "work")
    write(work / "idle.yaml", spec_text("idle", running=False))
    commit_all(work, "one VM")
    checkout = clone(up, tmp_path / "checkout")
    agent = AgentProc(cli, str(checkout), "--interval", "1h")
    try:
        first = agent.synced()
        assert first["event"] == "synced" and first.get("created") == 1, agent.events
        up.rename(tmp_path / "away.git")              # the remote is unreachable; its URL is the same
        agent.proc.send_signal(signal.SIGHUP)
        failed = agent.wait_event(lambda e: e["event"] == "pull-failed", "a failed pull")
        assert "up.git" in failed["error"] and failed["note"] == "reconciling what the checkout holds"
        after = agent.synced(after=agent.events.index(failed))
        assert after["event"] == "synced" and after.get("unchanged") == 1, agent.events
        row = json.loads(cli("agent", "status", "-o", "json").stdout)[0]
        assert row["last_error"].startswith("pull failed: ") and row["commit"] == git(work, "rev-parse", "HEAD")
    finally:
        assert agent.stop() == 0
    assert cli.state("idle")["state"] == "stopped"
