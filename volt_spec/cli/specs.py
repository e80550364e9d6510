"""`volt validate`, `schema`, `apply`, `diff`: the commands that read spec files."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from .. import status_codes as rc
from .common import NO_JAIL, PATHS, RECURSIVE, app, err, home_dir, set_no_jail


@app.command("validate")
def validate(paths: List[str] = PATHS, recursive: bool = RECURSIVE) -> None:
    """Check specs against the schema and the host; report every error as file:line:col.

    Example: volt validate examples/vms/   |   kustomize build | volt validate -
    """
    from ..schema import validate_command
    raise typer.Exit(validate_command(paths, recursive=recursive))


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema (draft 2020-12) of a VM spec, for editors and CI.

    Example: volt schema > vm.schema.json   (then: # yaml-language-server: $schema=vm.schema.json)
    """
    from ..schema import schema_text
    typer.echo(schema_text())


@app.command("explain")
def explain(field: str = typer.Argument("", metavar="FIELD",
                                        help="A dotted field path: spec, spec.snapshots.triggers, metadata.labels.")) -> None:
    """Document a spec field from the schema: its type, default, allowed values and its fields.

    Example: volt explain spec.snapshots.triggers
    """
    import json as json_mod
    from ..schema.explain import ExplainError, explain as explain_field
    from ..schema.files import schema_text
    try:
        typer.echo(explain_field(json_mod.loads(schema_text()), field.removeprefix("VirtualMachine.")))
    except ExplainError as e:
        err(str(e))
        raise typer.Exit(rc.USAGE)


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
          recursive: bool = RECURSIVE, no_jail: bool = NO_JAIL) -> None:
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
    from .plain import apply_command
    raise typer.Exit(apply_command(paths, dry_run, prune, source, force_conflicts, recursive))


@app.command("diff")
def diff(paths: List[str] = PATHS,
         prune: bool = typer.Option(False, "--prune", help="Also show the VMs `apply --prune` would delete."),
         source: Optional[str] = typer.Option(None, "--source", metavar="NAME", help="As for apply."),
         recursive: bool = RECURSIVE) -> None:
    """Show what `volt apply` would change, as a unified YAML diff per VM.

    Exit status as kubectl diff: 0 no changes, 1 changes, >1 an error (a spec that does not
    validate, or a VM another source owns).
    Example: volt diff --prune examples/vms/ || echo "apply would change something"
    """
    import difflib
    from ..runner import apply as ap
    from ..runner.home import VmDir
    from ..runner.reconcile import apply_paths
    try:
        from ..schema import load_specs
        specs, errors = load_specs(paths, recursive=recursive)
    except Exception as e:  # noqa: BLE001
        err(str(e))
        raise typer.Exit(rc.DIFF_ERROR)
    for e in errors:
        typer.echo(str(e), err=True)
    if errors:
        raise typer.Exit(rc.DIFF_ERROR)
    home = home_dir()
    by_name = {s.name: s for s in specs}
    changed = failed = False
    for result in apply_paths(specs, paths, home, dry_run=True, prune=prune and "-" not in paths, source=source,
                              recursive=recursive):
        if result.error:
            err(f"vm/{result.name}: {result.error}")
            failed = True
            continue
        if result.action == ap.UNCHANGED:
            continue
        changed = True
        spec = by_name.get(result.name)
        old = (VmDir(home, result.name).read_applied() or {}).get("document")
        typer.echo(f"# vm/{result.name}: would be {result.action}" + (f" ({result.detail})" if result.detail else ""))
        new_text = yaml_lines(spec.document) if spec is not None and result.action != ap.DELETED else []
        sys.stdout.writelines(difflib.unified_diff(yaml_lines(old) if old else [], new_text,
                                                   f"vm/{result.name} (applied)",
                                                   f"vm/{result.name} ({spec.source if spec else 'deleted'})"))
    raise typer.Exit(rc.DIFF_ERROR if failed else rc.DIFF_CHANGES if changed else rc.OK)


def yaml_lines(document: dict) -> list[str]:
    """A document as block YAML lines, each ending in a newline (so a diff never says "no newline")."""
    import io
    from ruamel.yaml import YAML
    yaml = YAML()
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(_sorted(document), out)
    return out.getvalue().splitlines(keepends=True)


def _sorted(value):
    """Keys in order at every level: the applied record keeps them sorted, a file as written."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    return [_sorted(v) for v in value] if isinstance(value, list) else value
