"""The CLI staples a kubectl user reaches for: --version, -h, completion, explain, -o formats,
selectors, several names, wait, diff as YAML with prunes. Specs with `running: false` (no KVM)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .voltcli import Volt, spec_text, write

LABELLED = spec_text("{name}", running=False).replace("metadata:\n  name: {name}\n",
                                                      "metadata:\n  name: {name}\n  labels: {labels}\n")


@pytest.fixture
def cli(tmp_path):
    return Volt(tmp_path / "home")


@pytest.fixture
def fleet(cli, tmp_path):
    """Three stopped VMs: web (team=a, tier=front), db (team=b, tier=back), job (no labels)."""
    d = tmp_path / "fleet"
    d.mkdir()
    for name, labels in (("web", "{team: a, tier: front}"), ("db", "{team: b, tier: back}"), ("job", "{}")):
        write(d / f"{name}.yaml", LABELLED.replace("{name}", name).replace("{labels}", labels))
    cli("apply", str(d))
    return d


def test_version_and_short_help(cli):
    assert cli("--version").stdout.startswith("volt 0.")
    assert cli("-h").stdout.startswith("Usage: volt")
    assert "--selector" in cli("status", "-h").stdout


def test_completion_scripts_complete_commands_and_vm_names(cli, fleet):
    for shell in ("bash", "zsh", "fish"):
        assert "_VOLT_COMPLETE=complete_" in cli("completion", shell).stdout
    env = dict(cli.env, COMP_WORDS="volt status w", COMP_CWORD="2", _VOLT_COMPLETE="complete_bash")
    r = subprocess.run([os.path.join(os.path.dirname(os.sys.executable), "volt")], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.split() == ["web"], r
    assert cli("completion", "tcsh", check=2).stderr.strip() == "volt: completion: 'tcsh' is not one of bash, zsh, fish"


def test_explain_reads_the_schema(cli):
    out = cli("explain", "spec.snapshots.triggers").stdout
    assert out.startswith("FIELD: spec.snapshots.triggers <[]object>")
    assert "  trigger <string> -required-" in out and "  every <string>" in out
    assert "one of: Always, OnFailure, Never" in cli("explain", "spec.restartPolicy").stdout
    r = cli("explain", "spec.nope", check=2)
    assert r.stderr.startswith("volt: 'spec.nope': spec has no field 'nope' (it has: kernel,")


def test_output_formats(cli, fleet):
    assert cli("status", "-o", "name").stdout.split() == ["vm/db", "vm/job", "vm/web"]
    assert cli("status", "-o", "jsonpath={.items[*].name}").stdout == "db job web"
    assert cli("status", "web", "-o", "jsonpath={.labels.team}").stdout == "a"
    wide = cli("status", "-o", "wide").stdout.splitlines()
    assert "LABELS" in wide[0] and "OWNER" in wide[0] and "team=a,tier=front" in wide[-1]
    assert "in-sync" in wide[-1]
    rows = json.loads(cli("status", "-o", "json").stdout)
    assert {r["spec"] for r in rows} == {"in-sync"} and rows[0]["restart_policy"] == "Always"
    assert cli("status", "-o", "xml", check=2).stderr.startswith("volt: -o must be one of table, wide, json")
    assert cli("status", "-o", "jsonpath={range .items[*]}", check=2).stderr.strip() == \
        "volt: jsonpath: {range} without {end}"


def test_selectors_and_several_names(cli, fleet):
    names = lambda *args: cli("status", *args, "-o", "name").stdout.split()   # noqa: E731
    assert names("-l", "team") == ["vm/db", "vm/web"]
    assert names("-l", "tier in (front),team=a") == ["vm/web"]
    assert names("-l", "!team") == ["vm/job"]
    assert names("web", "db") == ["vm/web", "vm/db"]
    r = cli("status", "web", "nosuch", "-o", "name", check=1)
    assert r.stdout.split() == ["vm/web"] and "no VM named 'nosuch'" in r.stderr
    assert cli("status", "web", "-l", "team=a", check=2).stderr.strip() == \
        "volt: give VM names or -l SELECTOR, not both"
    assert cli("stop", "-l", "team").stdout.splitlines() == ["vm/db stopped (not running)",
                                                             "vm/web stopped (not running)"]
    assert [ln.split(" in ")[0] for ln in cli("delete", "-l", "team=b").stdout.splitlines()] == ["vm/db deleted"]
    assert names() == ["vm/job", "vm/web"]


def test_wait_for_conditions(cli, fleet):
    assert cli("wait", "web", "job", "--for", "stopped").stdout.splitlines() == [
        "vm/web condition met (stopped)", "vm/job condition met (stopped)"]
    r = cli("wait", "-l", "team=a", "--for", "running", "--timeout", "1s", check=1)
    assert r.stderr.strip() == ("volt: timed out after 1s waiting for running: vm/web: stopped "
                                "(spec.running is false)")
    assert "--for must be one of" in cli("wait", "web", "--for", "happy", check=2).stderr
    assert cli("wait", "nosuch", "--for", "running", check=1).stderr.startswith("volt: no VM named 'nosuch'")


def test_diff_is_yaml_and_shows_prunes(cli, fleet):
    write(fleet / "web.yaml", LABELLED.replace("{name}", "web").replace("{labels}", "{team: z}"))
    (fleet / "db.yaml").unlink()
    r = cli("diff", str(fleet), "--prune", check=1)
    assert r.stdout.startswith("# vm/web: would be configured\n--- vm/web (applied)\n")
    assert "-    team: a\n" in r.stdout and "+    team: z\n" in r.stdout and "\\ No newline" not in r.stdout
    assert "# vm/db: would be deleted\n" in r.stdout and "-kind: VirtualMachine\n" in r.stdout
    assert r.stdout.endswith("\n")
    assert "vm/db" not in cli("diff", str(fleet), check=1).stdout


def test_restore_naming_a_missing_snapshot_is_refused_at_apply(cli, tmp_path):
    spec = write(tmp_path / "g.yaml", spec_text("g") + "  snapshots: {restore: golden-1}\n")
    for args in ([spec], [spec, "--dry-run"]):
        r = cli("apply", *args, check=1)
        assert r.stdout.startswith("vm/g failed: spec.snapshots.restore names golden-1, which cannot be restored "
                                   "(snapshot golden-1 not found; volt snapshots list g); nothing was changed"), r.stdout
    assert not (cli.home / "vms" / "g").exists()
    bad = write(tmp_path / "b.yaml", spec_text("b") + "  snapshots: {restore: {id: golden-1, fallback: maybe}}\n")
    r = cli("validate", bad, check=1)
    assert "fallback" in r.stdout and "b.yaml:" in r.stdout, r.stdout


def test_specs_from_stdin_and_recursive_directories(cli, tmp_path):
    top = tmp_path / "tree"
    (top / "team-a").mkdir(parents=True)
    (top / ".git").mkdir()
    write(top / "root.yaml", spec_text("root", running=False))
    write(top / "team-a" / "deep.yaml", spec_text("deep", running=False))
    write(top / ".git" / "hidden.yaml", "not: [a spec")
    assert cli("validate", str(top)).stdout.strip() == "1 VM valid in 1 file"
    assert cli("validate", "-R", str(top)).stdout.strip() == "2 VMs valid in 2 files"
    out = cli("apply", "-R", str(top)).stdout.splitlines()
    assert [ln.split(" in ")[0] for ln in out] == ["vm/root created (stopped)", "vm/deep created (stopped)"]
    (top / "team-a" / "deep.yaml").unlink()
    assert cli("apply", str(top), "--prune").stdout.splitlines() == ["vm/root unchanged"]   # not its subdirectory
    assert cli("apply", "-R", str(top), "--prune").stdout.splitlines()[1].startswith("vm/deep deleted")

    def stdin(*args, text: str, check: int = 0):
        r = subprocess.run([os.sys.executable, "-m", "volt_spec", *args], input=text, env=cli.env, text=True,
                           capture_output=True, timeout=120)
        assert r.returncode == check, r
        return r
    piped = spec_text("piped", running=False)
    assert stdin("validate", "-", text=piped).stdout.strip() == "1 VM valid in 1 file"
    r = stdin("validate", "-", text=piped.replace("vcpus: 1", "vcpus: many"), check=1)
    assert r.stdout.startswith("<stdin>:9:10: spec.vcpus: expected an integer"), r.stdout
    assert stdin("apply", "-", text=piped).stdout.startswith("vm/piped created (stopped)")
    assert stdin("apply", "-", text=piped).stdout.strip() == "vm/piped unchanged"
    assert cli.state("piped")["spec"] == "unknown"
    r = stdin("apply", "-", "--prune", text=piped, check=2)
    assert r.stderr.strip() == "volt: --prune needs spec files or directories: specs read from stdin have none to prune in"
