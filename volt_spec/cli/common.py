"""What every `volt` command module shares: the typer apps, common options, and the helpers that
turn a library failure into one `volt: ...` line and an exit status (those are typer-free, in
plain.py, so that a plain `volt status` runs without typer; re-exported here)."""

from __future__ import annotations

import os

import typer

from .. import status_codes as rc
from .plain import (FORMATS, check_output, err, home_dir, load_or_exit, pick_vms,  # noqa: F401 - re-exported
                    print_json_or_yaml, print_rows)

__all__ = ["FORMATS", "HELP", "NO_JAIL", "OUTPUT", "PATHS", "SELECTOR", "app", "check_output", "complete_vm", "err",
           "guest_app", "home_dir", "load_or_exit", "pick_vms", "print_json_or_yaml", "print_rows", "set_no_jail",
           "snapshots_app", "version"]

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(help="Declarative lifecycle for KVM microVMs: keep VM specs in YAML, apply them.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None, context_settings=HELP)
snapshots_app = typer.Typer(help="The snapshot catalogue: list, verify, delete.", no_args_is_help=True,
                            rich_markup_mode=None, context_settings=HELP)
app.add_typer(snapshots_app, name="snapshots")
guest_app = typer.Typer(help="The built-in test guest (a tiny PVH kernel of our own).",
                        no_args_is_help=True, rich_markup_mode=None, context_settings=HELP)
app.add_typer(guest_app, name="guest")


def version() -> str:
    """volt's version as installed (the package's metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("volt-spec")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(flag: bool) -> None:
    if flag:
        typer.echo(f"volt {version()}")
        raise typer.Exit()


@app.callback()
def _options(show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                               help="Print volt's version and exit.")) -> None:
    """Declarative lifecycle for KVM microVMs: keep VM specs in YAML, apply them."""

PATHS = typer.Argument(..., help="Spec files or directories (every *.yaml / *.yml in a directory); - reads "
                                 "standard input (relative paths in it are from the current directory).")
RECURSIVE = typer.Option(False, "-R", "--recursive", help="Read directories' subdirectories too (not hidden ones).")
OUTPUT = typer.Option("table", "-o", "--output", metavar="FORMAT",
                      help="table, wide, json, yaml, name (vm/NAME lines) or jsonpath=TEMPLATE "
                           "(kubectl's: '{.items[*].name}', '{range .items[*]}{.name}{\"\\n\"}{end}').")
SELECTOR = typer.Option(None, "-l", "--selector", metavar="SELECTOR",
                        help="Only VMs whose labels match (a=b, a!=b, 'a in (x,y)', 'a notin (x,y)', a, !a; "
                             "comma-separated, all must hold).")


NO_JAIL = typer.Option(False, "--no-jail", help="Run the VMMs this command starts without their jail "
                                                "(debugging only: root, the host's filesystem, no seccomp).")


def set_no_jail(flag: bool) -> None:
    """--no-jail: runner/vmctl.py reads it from the environment when it starts a VMM."""
    if flag:
        from ..runner.vmctl import NO_JAIL_ENV
        os.environ[NO_JAIL_ENV] = "1"


def complete_vm(incomplete: str) -> list[str]:
    """VM names for shell completion (`volt completion`)."""
    from ..runner.home import all_vm_names, volt_home
    return [n for n in all_vm_names(volt_home()) if n.startswith(incomplete)]


def is_path(target: str) -> bool:
    """A command-line target is a spec path when it has a `/` or a .yaml/.yml suffix; anything else
    is a VM name, even when a file of that name exists here (`volt delete readme`)."""
    return "/" in target or target.endswith((".yaml", ".yml"))


def duration_or_exit(option: str, value: str) -> int:
    """Seconds in a duration option (30s, 5m, 1h, 7d), else a one-line usage error (exit 2)."""
    from ..schema.sizes import duration_seconds
    try:
        return duration_seconds(value)
    except ValueError as e:
        err(f"{option}: {e}")
        raise typer.Exit(rc.USAGE)


def one_of_or_exit(option: str, value: str, allowed: tuple[str, ...]) -> None:
    """A usage error (exit 2) unless `value` is one of `allowed`."""
    if value not in allowed:
        err(f"{option} must be {' or '.join(allowed) if len(allowed) == 2 else 'one of ' + ', '.join(allowed)}, "
            f"not {value!r}")
        raise typer.Exit(rc.USAGE)
