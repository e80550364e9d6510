"""The CLI without typer: the helpers every command shares, the bodies of the commands a user runs
most (`status`, `apply`, `validate`), and `dispatch`, which runs those straight from a plain command
line. Importing typer and click and building the app costs ~45 ms, more than a `volt status` of
ten VMs itself, so a command line made only of a command, its arguments and the options named
here never imports them; anything else (--help, other options, other commands) is parsed by typer
(cli/__init__.py), whose commands call these same bodies. Exit statuses are SystemExit, which
both paths pass through.
"""

from __future__ import annotations

import errno
import json
import os
import sys

from .. import status_codes as rc

FORMATS = ("table", "wide", "json", "yaml", "name")
_ANSI = r"\033\[[0-?]*[ -/]*[@-~]"         # click's: styles stripped from a stream that is no terminal


def echo(message: str = "", err: bool = False, nl: bool = True) -> None:
    """typer.echo (click.echo) without click: flushed, and ANSI styles dropped unless a terminal."""
    stream = sys.stderr if err else sys.stdout
    out = message + "\n" if nl else message
    if "\033" in out and not _isatty(stream):
        import re
        out = re.sub(_ANSI, "", out)
    if out:
        stream.write(out)
    stream.flush()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except Exception:  # noqa: BLE001 - as click: a stream that cannot say is not a terminal
        return False


def err(message: str) -> None:
    echo(f"volt: {message}", err=True)


def load_or_exit(paths: list[str], recursive: bool = False):
    """Load and check specs; print every error as file:line:col and exit 1 on any."""
    from ..schema import load_specs
    specs, errors = load_specs(paths, recursive=recursive)
    for e in errors:
        echo(str(e), err=True)
    if errors:
        raise SystemExit(rc.INVALID)
    return specs


def home_dir():
    """$VOLT_HOME, imported on use: `volt --help` and `volt schema` load no runner."""
    from ..runner.home import volt_home
    return volt_home()


def print_json_or_yaml(rows: list[dict], output: str) -> None:
    if output == "json":
        echo(json.dumps(rows, indent=2))
    else:
        from ruamel.yaml import YAML
        yaml = YAML()
        yaml.default_flow_style = False
        yaml.dump(rows, sys.stdout)


def check_output(output: str) -> None:
    """Refuse an unknown -o before any work is done (exit 2, one line)."""
    if output not in FORMATS and not output.startswith("jsonpath="):
        err(f"-o must be one of {', '.join(FORMATS)} or jsonpath=TEMPLATE, not {output!r}")
        raise SystemExit(rc.USAGE)


def print_rows(rows: list[dict], output: str, single: bool = False, kind: str = "vm") -> None:
    """Rows as -o asks; for jsonpath the root is {"items": rows}, or the row when one was named."""
    if output in ("json", "yaml"):
        print_json_or_yaml(rows, output)
    elif output == "name":
        for r in rows:
            echo(f"{kind}/{r['name']}")
    elif output.startswith("jsonpath="):
        from .jsonpath import JsonPathError, render
        try:
            text = render(output[len("jsonpath="):], rows[0] if single and len(rows) == 1 else {"items": rows})
        except JsonPathError as e:
            err(str(e))
            raise SystemExit(rc.USAGE)
        echo(text, nl=False)                # as kubectl: the template says where lines end
    else:
        from ..runner.status import table
        echo(table(rows, wide=output == "wide"))


def pick_vms(names: list[str] | None, selector: str | None, home) -> list[str]:
    """The VMs a command acts on: NAMEs or -l SELECTOR (never both), else every VM."""
    from ..runner.home import VmDir, all_vm_names
    from ..runner.selector import SelectorError, select
    try:
        return select(list(names or []), selector,
                      lambda n: (VmDir(home, n).read_applied() or {}).get("labels") or {},
                      lambda: all_vm_names(home))
    except SelectorError as e:
        err(str(e))
        raise SystemExit(rc.USAGE)


def status_command(names: list[str] | None, selector: str | None, output: str) -> int:
    """`volt status` (cli/vms.py says what it shows)."""
    from ..runner.home import VmDir
    from ..runner.status import collect
    check_output(output)
    home = home_dir()
    chosen = pick_vms(names, selector, home)
    missing = [n for n in names or [] if not VmDir(home, n).exists()]
    rows = collect(home, [n for n in chosen if n not in missing])
    if rows or not missing:
        print_rows(rows, output, single=bool(names) and len(names) == 1)
    if output in ("table", "wide") and not names and selector is None:
        _agent_lines(home)
        _pool_lines(home)
    for n in missing:
        err(f"no VM named {n!r} (volt status lists them all)")
    return rc.FAILED if missing else rc.OK


def _agent_lines(home) -> None:
    """Under the table: each agent that runs here, its commit, last sync and last error."""
    if not (home / "agents").is_dir():           # no agent ever ran here (all_agents: none)
        return
    from ..runner.agentstate import all_agents
    for a in all_agents(home):
        if a.get("state") in ("running", "syncing"):
            commit = (a.get("commit") or "-")[:12]
            error = f"; last error: {a['last_error']}" if a.get("last_error") else ""
            echo(f"agent: {a.get('source')} at {commit}, last sync {a.get('last_sync') or '-'}{error}")


def _pool_lines(home) -> None:
    """Under the table: the warm pool per shape (runner/pool.py), ready of wanted, and what it costs."""
    if not (home / "pool").is_dir():
        return
    from ..runner.pool import summary
    for p in summary(home):
        primed = f" ({p['primed']} prepared with a snapshot)" if p["primed"] else ""
        echo(f"pool: {p['shape']}: {p['ready']} of {p['wanted']} warm VMMs ready{primed}, "
             f"{p['private_kib'] / 1024:.1f} MiB private memory")


def apply_command(paths: list[str], dry_run: bool = False, prune: bool = False, source: str | None = None,
                  force_conflicts: bool = False, recursive: bool = False) -> int:
    """`volt apply`: see cli/specs.py."""
    from ..runner.reconcile import apply_paths
    if prune and "-" in paths:
        err("--prune needs spec files or directories: specs read from stdin have none to prune in")
        return rc.USAGE
    specs = load_or_exit(paths, recursive)
    failed = False
    for result in apply_paths(specs, paths, home_dir(), dry_run=dry_run, prune=prune, source=source,
                              force_conflicts=force_conflicts, recursive=recursive):
        failed |= result.error is not None
        echo(result.line(dry_run))
    return rc.FAILED if failed else rc.OK


def _validate(paths: list[str]) -> int:
    from ..schema import validate_command
    return validate_command(paths)


_STATUS_OPTIONS = {"-o": "output", "--output": "output", "-l": "selector", "--selector": "selector"}


def _status(args: list[str]) -> int | None:
    """`volt status [NAME...] [-o FORMAT] [-l SELECTOR]` (--output=FORMAT too), each option at
    most once and no value starting with `-`; None for anything else."""
    names: list[str] = []
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            names.append(arg)
            continue
        key, eq, value = arg.partition("=")
        name = _STATUS_OPTIONS.get(key)
        if name is None or name in opts or (eq and (not key.startswith("--") or not value)):
            return None                     # click reads `-o=json` as "=json": typer's to say so
        if not eq:
            if i == len(args) or args[i].startswith("-"):
                return None
            value, i = args[i], i + 1
        opts[name] = value
    return status_command(names or None, opts.get("selector"), opts.get("output", "table"))


def _paths(command):
    """A command of spec paths only (no options): `command(paths)`."""
    return lambda args: command(args) if args and not any(a.startswith("-") for a in args) else None


_COMMANDS = {"status": _status, "validate": _paths(_validate), "apply": _paths(apply_command)}


def dispatch(argv: list[str]) -> int | None:
    """Run `argv` (sys.argv[1:]) without typer and return its exit status, or None when typer must
    parse it. Failures are turned into exit statuses as typer's click does: Ctrl-C 130, a closed
    stdout (`volt status | head -1`) 1 and quiet, EOF on stdin "Aborted!" and 1."""
    if not argv or argv[0] not in _COMMANDS or any(k.endswith("_COMPLETE") for k in os.environ):
        return None
    try:
        return _COMMANDS[argv[0]](argv[1:])
    except KeyboardInterrupt:
        return 130
    except EOFError:
        echo("", err=True)
        echo("Aborted!", err=True)
        return 1
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
        sys.stdout, sys.stderr = _Pacified(sys.stdout), _Pacified(sys.stderr)
        return 1


class _Pacified:
    """click's PacifyFlushWrapper: a stream whose reader has gone; flushing it again is quiet."""

    def __init__(self, wrapped) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        try:
            self.wrapped.flush()
        except OSError as e:
            if e.errno != errno.EPIPE:
                raise

    def __getattr__(self, name: str):
        return getattr(self.wrapped, name)
