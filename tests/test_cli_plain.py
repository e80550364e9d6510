"""cli/plain.py: a plain `volt status|validate|apply` runs without typer, and says what typer's
parse of the same command line says; anything else is left to typer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from volt_spec.cli import plain

SPEC = ("apiVersion: volt/v1\nkind: VirtualMachine\nmetadata: {name: web}\n"
        "spec:\n  kernel: {path: builtin:testguest}\n  running: false\n")


@pytest.fixture
def calls(monkeypatch) -> list:
    seen: list = []
    monkeypatch.setattr(plain, "status_command", lambda *a: seen.append(("status", *a)) or 0)
    monkeypatch.setattr(plain, "apply_command", lambda paths: seen.append(("apply", paths)) or 0)
    monkeypatch.setattr(plain, "_COMMANDS", dict(plain._COMMANDS, apply=plain._paths(plain.apply_command)))
    monkeypatch.delenv("_VOLT_COMPLETE", raising=False)
    return seen


@pytest.mark.parametrize("argv, call", [
    (["status"], ("status", None, None, "table")),
    (["status", "a", "-o", "json", "b"], ("status", ["a", "b"], None, "json")),
    (["status", "--output=jsonpath={.items[*].name}", "--selector", "x=y"],
     ("status", None, "x=y", "jsonpath={.items[*].name}")),
    (["apply", "a.yaml", "dir/"], ("apply", ["a.yaml", "dir/"])),
])
def test_plain_command_lines_run_here(calls, argv, call) -> None:
    assert plain.dispatch(argv) == 0 and calls == [call]


@pytest.mark.parametrize("argv", [
    [], ["--help"], ["-h", "status"], ["--version"], ["diff", "a.yaml"], ["delete", "--all"], ["status", "--help"],
    ["status", "-h"], ["status", "-o"], ["status", "-o=json"], ["status", "-ojson"], ["status", "--output="],
    ["status", "-o", "json", "--output", "yaml"], ["status", "-o", "-l"], ["status", "--", "x"], ["status", "-x"],
    ["validate"], ["validate", "--bogus", "a.yaml"], ["apply"], ["apply", "a.yaml", "--dry-run"], ["apply", "-"],
])
def test_anything_else_is_typers(calls, argv) -> None:
    assert plain.dispatch(argv) is None and calls == []


def test_a_shell_completion_request_is_typers(calls, monkeypatch) -> None:
    monkeypatch.setenv("_VOLT_COMPLETE", "complete_bash")
    assert plain.dispatch(["status"]) is None


def volt(args: list[str], cwd, home, typer_path: bool) -> tuple[int, str, str]:
    """`volt ARGS` in a process of its own, straight or (typer_path) through typer's parse; the
    last line of stderr says whether typer was imported."""
    code = ("import atexit, sys; atexit.register(lambda: print('typer' in sys.modules, file=sys.stderr))\n"
            + ("import volt_spec.cli as c; c.dispatch = lambda argv: None\n" if typer_path else "")
            + f"sys.argv = ['volt', *{args!r}]\nfrom volt_spec.cli import main\nmain()\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "VOLT_HOME": str(home), "VOLT_CACHE": str(cwd / "cache")})
    err, _, imported = p.stderr.rstrip("\n").rpartition("\n")
    assert imported == str(typer_path), p.stderr
    return p.returncode, p.stdout, err


@pytest.mark.parametrize("args", [
    ["status"], ["status", "-o", "json"], ["status", "web", "nope"], ["status", "-o", "xml"], ["status", "-l", "a in"],
    ["status", "-o", "name", "-l", "a=b"], ["validate", "vms"], ["validate", "vms", "bad.yaml"], ["validate", "nope"],
    ["apply", "bad.yaml"], ["apply", "nope", "vms"],
])
def test_the_same_output_and_status_as_through_typer(tmp_path, args) -> None:
    (tmp_path / "vms").mkdir()
    (tmp_path / "vms" / "web.yaml").write_text(SPEC)
    (tmp_path / "bad.yaml").write_text(SPEC.replace("name: web", "name: Web_1").replace("running: false", "vcpus: 0"))
    home = tmp_path / "home"
    assert volt(args, tmp_path, home, typer_path=False) == volt(args, tmp_path, home, typer_path=True)
