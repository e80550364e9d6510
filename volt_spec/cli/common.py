"""What every `volt` command module shares: the typer apps, common options, and the helpers that
turn a library failure into one `volt: ...` line and an exit status."""

from __future__ import annotations

import json
import os
import sys

import typer

from .. import status_codes as rc

app = typer.Typer(help="Declarative lifecycle for KVM microVMs: keep VM specs in YAML, apply them.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None)
snapshots_app = typer.Typer(help="The snapshot catalogue: list, verify, delete.", no_args_is_help=True,
                            rich_markup_mode=None)
app.add_typer(snapshots_app, name="snapshots")
guest_app = typer.Typer(help="The built-in test guest (a tiny PVH kernel of our own).",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(guest_app, name="guest")

PATHS = typer.Argument(..., help="Spec files or directories (every *.yaml / *.yml in a directory).")
OUTPUT = typer.Option("table", "-o", "--output", help="table, json or yaml.")


NO_JAIL = typer.Option(False, "--no-jail", help="Run the VMMs this command starts without their jail "
                                                "(debugging only: root, the host's filesystem, no seccomp).")


def set_no_jail(flag: bool) -> None:
    """--no-jail: runner/vmctl.py reads it from the environment when it starts a VMM."""
    if flag:
        from ..runner.vmctl import NO_JAIL_ENV
        os.environ[NO_JAIL_ENV] = "1"


def err(message: str) -> None:
    typer.echo(f"volt: {message}", err=True)


def load_or_exit(paths: list[str]):
    """Load and check specs; print every error as file:line:col and exit 1 on any."""
    from ..schema import load_specs
    specs, errors = load_specs(paths)
    for e in errors:
        typer.echo(str(e), err=True)
    if errors:
        raise typer.Exit(rc.INVALID)
    return specs


def home_dir():
    """$VOLT_HOME, imported on use: `volt --help` and `volt schema` load no runner."""
    from ..runner.home import volt_home
    return volt_home()


def print_json_or_yaml(rows: list[dict], output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(rows, indent=2))
    else:
        from ruamel.yaml import YAML
        yaml = YAML()
        yaml.default_flow_style = False
        yaml.dump(rows, sys.stdout)


def print_rows(rows: list[dict], output: str) -> None:
    if output in ("json", "yaml"):
        print_json_or_yaml(rows, output)
    else:
        from ..runner.status import table
        typer.echo(table(rows))
