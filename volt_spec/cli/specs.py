"""`volt validate`, `schema`, `apply`, `diff`: the commands that read spec files."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from .. import status_codes as rc
from .common import NO_JAIL, PATHS, app, err, home_dir, load_or_exit, set_no_jail


@app.command("validate")
def validate(paths: List[str] = PATHS) -> None:
    """Check specs against the schema and the host; report every error as file:line:col.

    Example: volt validate examples/vms/
    """
    from ..schema import validate_command
    raise typer.Exit(validate_command(paths))


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema (draft 2020-12) of a VM spec, for editors and CI.

    Example: volt schema > vm.schema.json   (then: # yaml-language-server: $schema=vm.schema.json)
    """
    from ..schema import schema_text
    typer.echo(schema_text())


@app.command("apply")
def apply(paths: List[str] = PATHS,
          dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change; change nothing."),
          prune: bool = typer.Option(False, "--prune",
                                     help="Delete the VMs owned by files under these paths that no longer "
                                          "declare them (and nothing else)."),
          source: Optional[str] = typer.Option(None, "--source", metavar="NAME",
                                               help="Record NAME as the owner of these VMs (default: the git "
                                                    "origin URL and the file's path in the repository, else "
                                                    "the file's absolute path)."),
          force_conflicts: bool = typer.Option(False, "--force-conflicts",
                                               help="Take over VMs that another source owns."),
          no_jail: bool = NO_JAIL) -> None:
    """Make the VMs declared in PATHS exist and match their specs (idempotent).

    Prints one line per VM: created | unchanged | configured | replaced | restored | deleted.
    Changing memory, vCPUs, kernel, initrd or cmdline replaces the VM; labels, power state
    (spec.running) and snapshot policy are configured in place.

    Each VM is owned by the source that applied it: two checkouts of one git repository own the
    same VMs; a spec for a VM another source owns is refused as a conflict.

    Every VMM runs in a jail of its own (namespaces, a minimal root, its own uid, no
    capabilities, a seccomp filter, a cgroup sized by spec.resources).

    Example: volt apply examples/vms/hello.yaml
    """
    set_no_jail(no_jail)
    from ..runner.reconcile import apply_paths
    specs = load_or_exit(paths)
    failed = False
    for result in apply_paths(specs, paths, home_dir(), dry_run=dry_run, prune=prune, source=source,
                              force_conflicts=force_conflicts):
        failed |= result.error is not None
        typer.echo(result.line(dry_run))
    raise typer.Exit(rc.FAILED if failed else rc.OK)


@app.command("diff")
def diff(paths: List[str] = PATHS) -> None:
    """Show what `volt apply` would change, as a unified diff per VM.

    Exit status as kubectl diff: 0 no changes, 1 changes, >1 an error.
    Example: volt diff examples/vms/ || echo "apply would change something"
    """
    import difflib
    from ..runner import apply as ap
    from ..runner.home import VmDir
    try:
        from ..schema import load_specs
        specs, errors = load_specs(paths)
    except Exception as e:  # noqa: BLE001
        err(str(e))
        raise typer.Exit(rc.DIFF_ERROR)
    for e in errors:
        typer.echo(str(e), err=True)
    if errors:
        raise typer.Exit(rc.DIFF_ERROR)
    home = home_dir()
    changed = False
    for spec in specs:
        action, detail = ap.plan(spec, home)
        if action == ap.UNCHANGED:
            continue
        changed = True
        old = (VmDir(home, spec.name).read_applied() or {}).get("document")
        old_text = json.dumps(old, indent=2, sort_keys=True).splitlines(keepends=True) if old else []
        new_text = json.dumps(spec.document, indent=2, sort_keys=True).splitlines(keepends=True)
        typer.echo(f"# vm/{spec.name}: would be {action}" + (f" ({detail})" if detail else ""))
        sys.stdout.writelines(difflib.unified_diff(old_text, new_text, f"vm/{spec.name} (applied)",
                                                   f"vm/{spec.name} ({spec.source})"))
    raise typer.Exit(rc.DIFF_CHANGES if changed else rc.OK)
