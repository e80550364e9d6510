"""`volt status`, `delete`, `stop`, `logs`, `console`: the commands on VMs that exist."""

from __future__ import annotations

from typing import List, Optional

import typer

from .. import status_codes as rc
from .common import OUTPUT, app, err, home_dir, load_or_exit, print_rows


@app.command("status")
def status(name: Optional[str] = typer.Argument(None, help="One VM; all when omitted."),
           output: str = OUTPUT) -> None:
    """Show VMs: live state (checked now), size, uptime, how they booted, spec drift.

    Example: volt status -o json | jq '.[] | select(.state == "failed")'
    """
    from ..runner.status import collect
    if output not in ("table", "json", "yaml"):
        err(f"-o must be table, json or yaml, not {output!r}")
        raise typer.Exit(rc.USAGE)
    rows = collect(home_dir(), name)
    if name and not rows:
        err(f"no VM named {name!r} (volt status lists them all)")
        raise typer.Exit(rc.FAILED)
    print_rows(rows, output)


def is_path(target: str) -> bool:
    """A command-line target is a spec path when it has a `/` or a .yaml/.yml suffix; anything else
    is a VM name, even when a file of that name exists here (`volt delete readme`)."""
    return "/" in target or target.endswith((".yaml", ".yml"))


@app.command("delete")
def delete(targets: Optional[List[str]] = typer.Argument(None, help="VM names, or spec paths (with a / or a "
                                                                    ".yaml/.yml suffix)."),
           files: Optional[List[str]] = typer.Option(None, "-f", "--filename",
                                                     help="A spec file or directory whose VMs to delete."),
           all_: bool = typer.Option(False, "--all", help="Delete every VM."),
           purge: bool = typer.Option(False, "--purge", help="Delete the VMs' snapshots too.")) -> None:
    """Delete VMs (stopping them first). Their snapshots stay unless --purge.

    Example: volt delete hello   |   volt delete -f examples/vms/pair.yaml   |   volt delete --all
    """
    from ..runner import apply as ap
    from ..runner.home import VmDir, all_vm_names
    home = home_dir()
    paths = list(files or []) + [t for t in targets or [] if is_path(t)]
    names = [t for t in targets or [] if not is_path(t)]
    if all_:
        names = all_vm_names(home)
    elif not names and not paths:
        err("say which VMs: NAME..., -f PATH, or --all")
        raise typer.Exit(rc.USAGE)
    for s in load_or_exit(paths) if paths and not all_ else []:   # kubectl delete -f: its VMs that exist
        if VmDir(home, s.name).exists():
            names.append(s.name)
        else:
            typer.echo(f"vm/{s.name} not found (skipped)")
    failed = False
    for n in dict.fromkeys(names):
        result = ap.delete(n, home, purge)
        failed |= result.error is not None
        typer.echo(result.line())
    raise typer.Exit(rc.FAILED if failed else rc.OK)


@app.command("stop")
def stop(name: str = typer.Argument(..., help="The VM to stop."),
         timeout: float = typer.Option(10.0, "--timeout", help="Seconds before a hard kill.")) -> None:
    """Ask the guest to shut down (Ctrl-Alt-Del), kill it after --timeout.

    The spec is not changed: the next `volt apply` starts it again. To keep it
    down, set `spec.running: false` and apply.
    Example: volt stop hello
    """
    from ..runner import vmctl
    from ..runner.home import VmDir
    vm_dir = VmDir(home_dir(), name)
    if not vm_dir.exists():
        err(f"no VM named {name!r}")
        raise typer.Exit(rc.FAILED)
    with vm_dir.lock():
        how = vmctl.stop(vm_dir, timeout)
    typer.echo(f"vm/{name} stopped ({how})")


@app.command("logs")
def logs(name: str = typer.Argument(..., help="The VM whose serial console to show."),
         follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new output."),
         tail: int = typer.Option(-1, "--tail", help="Only the last N lines (-1: all).")) -> None:
    """Print a VM's serial console log (capped at 1 MiB per file, rotated once).

    Example: volt logs hello -f
    """
    from ..runner.home import VmDir
    from ..runner.logs import print_log
    vm_dir = VmDir(home_dir(), name)
    if not vm_dir.exists():
        err(f"no VM named {name!r}")
        raise typer.Exit(rc.FAILED)
    print_log(vm_dir, follow, tail)


@app.command("console")
def console(name: str = typer.Argument(..., help="The VM to attach to.")) -> None:
    """Attach to a VM's serial console; detach with Ctrl-].

    Example: volt console hello
    """
    from ..runner.home import VmDir
    from ..runner.logs import attach_console
    vm_dir = VmDir(home_dir(), name)
    if not vm_dir.exists():
        err(f"no VM named {name!r}")
        raise typer.Exit(rc.FAILED)
    try:
        attach_console(vm_dir)
    except OSError as e:
        err(f"cannot attach to vm/{name}: {e.strerror or e} (is it running? see volt status {name})")
        raise typer.Exit(rc.FAILED)
