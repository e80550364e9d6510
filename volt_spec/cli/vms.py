"""`volt status`, `delete`, `stop`, `logs`, `console`: the commands on VMs that exist."""

from __future__ import annotations

from typing import List, Optional

import typer

from .. import status_codes as rc
from .common import (NO_JAIL, OUTPUT, SELECTOR, app, complete_vm, duration_or_exit, err, home_dir, is_path,
                     load_or_exit, one_of_or_exit, pick_vms, set_no_jail)


@app.command("status")
def status(names: Optional[List[str]] = typer.Argument(None, help="VMs to show; all when omitted.",
                                                      autocompletion=complete_vm),
           selector: Optional[str] = SELECTOR, output: str = OUTPUT) -> None:
    """Show VMs: live state (checked now), size, uptime, how they booted, spec drift.

    States: running, paused, busy (alive, its API slow: a snapshot?), stopped, failed,
    completed (powered off by itself under restartPolicy OnFailure or Never). The table ends
    with a line per running agent (volt agent status has the details).

    Example: volt status -l team=web -o jsonpath='{.items[?(@.state=="failed")].name}'
    """
    from .plain import status_command
    raise typer.Exit(status_command(names, selector, output))


@app.command("delete")
def delete(targets: Optional[List[str]] = typer.Argument(None, help="VM names, or spec paths (with a / or a "
                                                                    ".yaml/.yml suffix).", autocompletion=complete_vm),
           files: Optional[List[str]] = typer.Option(None, "-f", "--filename",
                                                     help="A spec file or directory whose VMs to delete."),
           selector: Optional[str] = SELECTOR,
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
    elif selector is not None:
        names = pick_vms(names, selector, home)
    elif not names and not paths:
        err("say which VMs: NAME..., -f PATH, -l SELECTOR, or --all")
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
    if (home / "pool").is_dir():
        from ..runner.pool import fill
        fill(home)                       # warm VMMs no VM asks for any more are stopped
    raise typer.Exit(rc.FAILED if failed else rc.OK)


@app.command("stop")
def stop(names: Optional[List[str]] = typer.Argument(None, help="The VMs to stop.", autocompletion=complete_vm),
         selector: Optional[str] = SELECTOR,
         all_: bool = typer.Option(False, "--all", help="Stop every VM."),
         timeout: float = typer.Option(10.0, "--timeout", help="Seconds before a hard kill.")) -> None:
    """Ask the guests to shut down (Ctrl-Alt-Del), kill them after --timeout.

    The specs are not changed: the next `volt apply` (or the agent's next sync) starts them
    again. To keep one down, set `spec.running: false` and apply.
    Example: volt stop hello   |   volt stop -l team=batch
    """
    from ..runner import vmctl
    from ..runner.home import VmDir
    if not (names or selector or all_):
        err("say which VMs: NAME..., -l SELECTOR, or --all")
        raise typer.Exit(rc.USAGE)
    home = home_dir()
    failed = False
    for name in pick_vms(names, selector, home):
        vm_dir = VmDir(home, name)
        if not vm_dir.exists():
            err(f"no VM named {name!r}")
            failed = True
            continue
        with vm_dir.lock():
            how = vmctl.stop(vm_dir, timeout)
        typer.echo(f"vm/{name} stopped ({how})")
    raise typer.Exit(rc.FAILED if failed else rc.OK)


@app.command("logs")
def logs(names: Optional[List[str]] = typer.Argument(None, help="The VMs whose serial console to show.",
                                                    autocompletion=complete_vm),
         selector: Optional[str] = SELECTOR,
         follow: bool = typer.Option(False, "-f", "--follow",
                                     help="Keep printing new output until the VM's running instance ends."),
         tail: int = typer.Option(-1, "--tail", help="Only the last N lines (-1: all).")) -> None:
    """Print VMs' serial console logs (capped at 1 MiB per file, rotated once).

    With -f it exits (status 0) once the VM's running instance has ended and all it wrote is
    printed, at once when the VM is not running. Several VMs (names or -l) are printed side
    by side, each line starting with [vm/NAME].

    Example: volt logs hello -f   |   volt logs -l team=web --tail 20
    """
    from ..runner.home import VmDir
    from ..runner.logs import print_log, print_logs
    if not (names or selector):
        err("say which VMs: NAME... or -l SELECTOR")
        raise typer.Exit(rc.USAGE)
    home = home_dir()
    vm_dirs = [VmDir(home, n) for n in pick_vms(names, selector, home)]
    missing = [d.name for d in vm_dirs if not d.exists()]
    for n in missing:
        err(f"no VM named {n!r}")
    if missing:
        raise typer.Exit(rc.FAILED)
    if len(vm_dirs) == 1 and names:
        print_log(vm_dirs[0], follow, tail)
    else:
        print_logs(vm_dirs, follow, tail)


@app.command("console")
def console(name: str = typer.Argument(..., help="The VM to attach to.")) -> None:
    """Attach to a VM's serial console; detach with Ctrl-].

    Keys go to the guest as typed (Enter sends CR, as a serial terminal's does); on a terminal a
    guest's bare LF is shown as CR LF, so its lines start at the left. Example: volt console hello
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


@app.command("wait")
def wait(names: Optional[List[str]] = typer.Argument(None, help="The VMs to wait for.", autocompletion=complete_vm),
         selector: Optional[str] = SELECTOR,
         condition: str = typer.Option(..., "--for", metavar="running|stopped|completed|snapshot",
                                       help="running; stopped (or completed); completed (powered off by "
                                            "itself under restartPolicy OnFailure/Never); snapshot (a new one "
                                            "taken after the wait began)."),
         timeout: str = typer.Option("30s", "--timeout", help="Give up after this long (30s, 5m, ...).")) -> None:
    """Wait until VMs reach a condition; exit 0 when all do, 1 at the timeout (saying where each is).

    Example: volt apply vm.yaml && volt wait hello --for=running --timeout 1m
    """
    from ..runner.home import VmDir
    from ..runner.wait import CONDITIONS, wait as wait_for
    one_of_or_exit("--for", condition, CONDITIONS)
    timeout_s = duration_or_exit("--timeout", timeout)
    if not (names or selector):
        err("say which VMs: NAME... or -l SELECTOR")
        raise typer.Exit(rc.USAGE)
    home = home_dir()
    chosen = pick_vms(names, selector, home)
    missing = [n for n in chosen if not VmDir(home, n).exists()]
    for n in missing:
        err(f"no VM named {n!r}")
    if missing or not chosen:
        err("no VMs match" if not chosen else "nothing waited for")
        raise typer.Exit(rc.FAILED)
    late = wait_for(home, chosen, condition, timeout_s, report=lambda n: typer.echo(f"vm/{n} condition met ({condition})"))
    for line in late:
        err(f"timed out after {timeout} waiting for {condition}: {line}")
    raise typer.Exit(rc.FAILED if late else rc.OK)


@app.command("scale")
def scale(name: str = typer.Argument(..., help="The spec's metadata.name (its clones are NAME-0, NAME-1, ...)."),
          replicas: int = typer.Argument(..., metavar="N", help="How many clones to run (1-256)."),
          no_jail: bool = NO_JAIL) -> None:
    """Run N clones of a spec with spec.replicas: add clones, or delete them from the highest index down.

    Like kubectl scale, it changes the applied count only: the next `volt apply` of the spec file
    (or the agent's next sync) sets it back to what the file says. Prints a line per clone it
    created, restored or deleted; unchanged clones are listed too.

    Example: volt scale web 5   |   volt status -o name | grep web-
    """
    from ..runner.scale import ScaleError, scale as scale_set
    set_no_jail(no_jail)
    home = home_dir()
    try:
        results = list(scale_set(home, name, replicas))
    except ScaleError as e:
        err(str(e))
        raise typer.Exit(rc.FAILED)
    failed = False
    for result in results:
        failed |= result.error is not None
        typer.echo(result.line())
    raise typer.Exit(rc.FAILED if failed else rc.OK)
