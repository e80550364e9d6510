"""Names and paths from users, the catalogue and the API never leave their directories.

Each test plants victims outside $VOLT_HOME (or outside the VMM's state directory) and checks
they survive what was tried; every refusal is one line and a non-zero exit, no traceback.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from volt_spec.api.errors import ApiError

from .kvm_required import require_kvm
from .vmm_process import VmmProcess
from .voltcli import Volt, spec_text, write


@pytest.fixture
def planted(tmp_path):
    """A $VOLT_HOME beside victims that look like what volt would delete."""
    home = tmp_path / "home"
    home.mkdir()
    victims = tmp_path / "victims"
    (victims / "vm").mkdir(parents=True)
    (victims / "vm" / "applied.json").write_text("{}")
    (victims / "snap").mkdir()
    (victims / "snap" / "state.json").write_text("{}")
    return Volt(home), victims


def survived(victims) -> bool:
    return (victims / "vm" / "applied.json").exists() and (victims / "snap" / "state.json").exists()


@pytest.mark.parametrize("args", [
    ["snapshots", "delete", "{victims}/snap"],
    ["snapshots", "delete", ".."],
    ["snapshots", "delete", "../../victims/snap"],
    ["snapshots", "verify", "../../victims/snap"],
    ["stop", "../../victims/vm"],
    ["logs", "../x"],
    ["console", "../x"],
    ["snapshot", "ok", "--name", "../../victims/snap"],
    ["restore", "../../victims/vm"],
    ["restore", "ok", "--snapshot", "../x"],
    ["snapshots", "list", "../../victims"],
    ["status", "../../victims/vm"],
    ["delete", "UPPER"],
    ["delete", "trailing-dash-"],
    ["delete", "dot.ted"],
    ["delete", "a" * 64],
])
def test_a_name_that_would_be_a_path_is_refused_and_nothing_outside_is_touched(planted, tmp_path, args):
    volt, victims = planted
    args = [a.replace("{victims}", str(victims)) for a in args]
    r = volt(*args, check=None)
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr
    assert re.match(r"^volt: .*(is not a VM name|is not a snapshot id|no VM named|no snapshot)", r.stderr), r.stderr
    assert survived(victims)
    assert not list(tmp_path.glob("*.lock")) and not list(victims.rglob("*.lock"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "victims"]


@pytest.mark.parametrize("args", [["delete", "../../victims/vm"], ["delete", "../victims/vm", "--purge"],
                                  ["delete", "-f", "{victims}/vm"], ["snapshot", "../../victims/vm"]])
def test_a_target_with_a_slash_is_a_spec_path_and_nothing_outside_is_touched(planted, tmp_path, args):
    """`volt delete X/Y` reads X/Y as a spec path (never as a name made into a path under $VOLT_HOME):
    there is no spec there, so it is refused and nothing is deleted."""
    volt, victims = planted
    r = volt(*[a.replace("{victims}", str(victims)) for a in args], check=1)
    assert re.match(r"^\S*victims/vm: (no such file or directory|directory has no \*\.yaml)", r.stderr), r.stderr
    assert survived(victims)


def test_names_match_the_schema_rules():
    """One rule everywhere: names.py holds the schema's patterns."""
    from volt_spec.names import SNAPSHOT_REF, VM_NAME
    from volt_spec.schema import schema_text
    text = schema_text()
    assert json.dumps(VM_NAME.pattern) in text and json.dumps(SNAPSHOT_REF.pattern) in text
    assert text.count(json.dumps(SNAPSHOT_REF.pattern)) == 2      # restore: ID and restore: {id: ID}


def test_the_catalogue_skips_what_is_not_a_snapshot_and_never_blocks(tmp_path):
    """FIFOs as state.json and memory.snap, symlinked and badly named directories: listed as
    invalid or skipped at once (a FIFO would hang a plain open)."""
    volt = Volt(tmp_path / "home")
    snaps = volt.home / "snapshots"
    (snaps / "w" / "fifo-state").mkdir(parents=True)
    os.mkfifo(snaps / "w" / "fifo-state" / "state.json")
    (snaps / "w" / "fifo-mem").mkdir()
    (snaps / "w" / "fifo-mem" / "state.json").write_text("{}")
    os.mkfifo(snaps / "w" / "fifo-mem" / "memory.snap")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", snaps / "w" / "linked")
    (snaps / "w" / ".hidden").mkdir()
    (snaps / "Bad Name").mkdir()
    started = time.monotonic()
    rows = json.loads(volt("snapshots", "list", "-o", "json", timeout=30).stdout)
    assert {r["id"]: r["valid"] for r in rows} == {"fifo-mem": False, "fifo-state": False}
    assert "FIFO" in next(r["reason"] for r in rows if r["id"] == "fifo-state")
    assert volt("snapshots", "verify", "fifo-state", check=1, timeout=30).stdout.count("INVALID") == 1
    assert "no snapshot 'linked'" in volt("snapshots", "delete", "linked", check=1).stderr
    assert (tmp_path / "elsewhere").is_dir()
    assert time.monotonic() - started < 60, "the catalogue waited on a FIFO"


def test_status_and_apply_do_not_hang_on_a_fifo_in_the_catalogue(tmp_path, guest_kernel_ready):
    volt = Volt(tmp_path / "home")
    spec = write(tmp_path / "f.yaml", spec_text("f"))
    folder = volt.home / "snapshots" / "f" / "planted"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "state.json")
    r = volt("apply", spec, timeout=90)
    assert r.stdout.startswith("vm/f created"), r.stdout
    row = volt.state("f")
    assert row["state"] == "running" and row["last_snapshot"] is None
    volt("delete", "f")


@pytest.fixture
def guest_kernel_ready():
    require_kvm()
    from volt_spec.guest.build import build_guest
    return str(build_guest())


@pytest.fixture
def api_vmm(tmp_path, guest_kernel_ready):
    state = tmp_path / "state"
    state.mkdir()
    sock = str(state / "api.sock")
    with VmmProcess("--kernel", guest_kernel_ready, "--cmdline", "volt.ticks=0 volt.tick_ms=200",
                    "--api-sock", sock) as vmm:
        vmm.wait_for(r"^tick 1 ")
        yield vmm, vmm.wait_api(sock), state


@pytest.mark.parametrize("path", ["/etc/volt-x", "relative/snap", "", "{tmp}/outside", "{state}/../outside",
                                  "{state}", "{state}/link/snap", 42, None])
def test_the_api_writes_snapshots_only_under_the_state_directory(api_vmm, tmp_path, path):
    vmm, api, state = api_vmm
    os.symlink(tmp_path, state / "link")
    if isinstance(path, str):
        path = path.replace("{tmp}", str(tmp_path)).replace("{state}", str(state))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ApiError) as e:
        api.put("/snapshot/create", {"snapshot_path": path})
    assert e.value.status == 400 and "snapshot_path" in e.value.message, e.value.message
    assert not os.path.exists("/etc/volt-x") and not os.path.exists(os.path.join(os.getcwd(), "relative"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    result = api.put("/snapshot/create", {"snapshot_path": str(state / "good")})      # and it still works
    assert result["id"] == "good" and (state / "good" / "state.json").is_file()


def test_the_api_policy_may_not_point_snapshots_elsewhere(api_vmm, tmp_path):
    vmm, api, state = api_vmm
    for bad in ({"vm": "w", "snapshot_dir": str(tmp_path), "triggers": []},
                {"vm": "../../w", "snapshot_dir": str(state / "w"), "triggers": []}):
        with pytest.raises(ApiError) as e:
            api.put("/policy", bad)
        assert e.value.status == 400, e.value.message
    api.put("/policy", {"vm": "w", "snapshot_dir": str(state / "w"), "triggers": []})
