"""`volt`: the user-facing command line (typer). Each command parses, then calls the library."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import status_codes as rc

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


def _no_jail(flag: bool) -> None:
    if flag:
        from .runner.vmctl import NO_JAIL_ENV
        os.environ[NO_JAIL_ENV] = "1"


def _err(message: str) -> None:
    typer.echo(f"volt: {message}", err=True)


def _load(paths: list[str]):
    """Load and check specs; print every error as file:line:col and exit 1 on any."""
    from .schema import load_specs
    specs, errors = load_specs(paths)
    for e in errors:
        typer.echo(str(e), err=True)
    if errors:
        raise typer.Exit(rc.INVALID)
    return specs


def _home():
    from .runner.home import volt_home
    return volt_home()


@app.command("validate")
def validate(paths: List[str] = PATHS) -> None:
    """Check specs against the schema and the host; report every error as file:line:col.

    Example: volt validate examples/vms/
    """
    from .schema import validate_command
    raise typer.Exit(validate_command(paths))


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema (draft 2020-12) of a VM spec, for editors and CI.

    Example: volt schema > vm.schema.json   (then: # yaml-language-server: $schema=vm.schema.json)
    """
    from .schema import schema_text
    typer.echo(schema_text())


@app.command("apply")
def apply(paths: List[str] = PATHS,
          dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change; change nothing."),
          prune: bool = typer.Option(False, "--prune",
                                     help="Delete VMs applied earlier from these paths that they no longer declare."),
          no_jail: bool = NO_JAIL) -> None:
    """Make the VMs declared in PATHS exist and match their specs (idempotent).

    Prints one line per VM: created | unchanged | configured | replaced | restored | deleted.
    Changing memory, vCPUs, kernel, initrd or cmdline replaces the VM; labels, power state
    (spec.running) and snapshot policy are configured in place.

    Every VMM runs in a jail of its own (namespaces, a minimal root, its own uid, no
    capabilities, a seccomp filter, a cgroup sized by spec.resources).

    Example: volt apply examples/vms/hello.yaml
    """
    _no_jail(no_jail)
    from .runner import apply as ap
    specs = _load(paths)
    home = _home()
    applied_from = [str(Path(p).resolve()) for p in paths]
    failed = False
    for spec in specs:
        if dry_run:
            action, detail = ap.plan(spec, home)
            result = ap.Result(spec.name, action, detail if action != ap.RESTORED else "")
        else:
            result = ap.apply_one(spec, home, applied_from)
        failed |= result.error is not None
        typer.echo(result.line(dry_run))
    if prune:
        for name in ap.prunable(specs, home, applied_from):
            result = ap.Result(name, ap.DELETED) if dry_run else ap.delete(name, home)
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
    from .runner import apply as ap
    from .runner.home import VmDir
    try:
        from .schema import load_specs
        specs, errors = load_specs(paths)
    except Exception as e:  # noqa: BLE001
        _err(str(e))
        raise typer.Exit(rc.DIFF_ERROR)
    for e in errors:
        typer.echo(str(e), err=True)
    if errors:
        raise typer.Exit(rc.DIFF_ERROR)
    home = _home()
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


@app.command("status")
def status(name: Optional[str] = typer.Argument(None, help="One VM; all when omitted."),
           output: str = OUTPUT) -> None:
    """Show VMs: live state (checked now), size, uptime, how they booted, spec drift.

    Example: volt status -o json | jq '.[] | select(.state == "failed")'
    """
    from .runner.status import collect
    if output not in ("table", "json", "yaml"):
        _err(f"-o must be table, json or yaml, not {output!r}")
        raise typer.Exit(rc.USAGE)
    rows = collect(_home(), name)
    if name and not rows:
        _err(f"no VM named {name!r} (volt status lists them all)")
        raise typer.Exit(rc.FAILED)
    _print_rows(rows, output)


def _print_rows(rows: list[dict], output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(rows, indent=2))
    elif output == "yaml":
        from ruamel.yaml import YAML
        yaml = YAML()
        yaml.default_flow_style = False
        yaml.dump(rows, sys.stdout)
    else:
        from .runner.status import table
        typer.echo(table(rows))


@app.command("delete")
def delete(targets: Optional[List[str]] = typer.Argument(None, help="VM names or spec paths."),
           all_: bool = typer.Option(False, "--all", help="Delete every VM."),
           purge: bool = typer.Option(False, "--purge", help="Delete the VMs' snapshots too.")) -> None:
    """Delete VMs (stopping them first). Their snapshots stay unless --purge.

    Example: volt delete hello   |   volt delete examples/vms/pair.yaml   |   volt delete --all
    """
    from .runner import apply as ap
    from .runner.home import all_vm_names
    home = _home()
    if all_:
        names = all_vm_names(home)
    elif targets:
        from .runner.home import VmDir
        names = []
        for t in targets:
            if Path(t).exists():
                for s in _load([t]):       # a spec path: its VMs that exist (kubectl delete -f)
                    if VmDir(home, s.name).exists():
                        names.append(s.name)
                    else:
                        typer.echo(f"vm/{s.name} not found (skipped)")
            else:
                names.append(t)
    else:
        _err("say which VMs: NAME..., a spec PATH, or --all")
        raise typer.Exit(rc.USAGE)
    failed = False
    for n in names:
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
    from .runner import vmctl
    from .runner.home import VmDir
    vm_dir = VmDir(_home(), name)
    if not vm_dir.exists():
        _err(f"no VM named {name!r}")
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
    from .runner.home import VmDir
    from .runner.logs import print_log
    vm_dir = VmDir(_home(), name)
    if not vm_dir.exists():
        _err(f"no VM named {name!r}")
        raise typer.Exit(rc.FAILED)
    print_log(vm_dir, follow, tail)


@app.command("console")
def console(name: str = typer.Argument(..., help="The VM to attach to.")) -> None:
    """Attach to a VM's serial console; detach with Ctrl-].

    Example: volt console hello
    """
    from .runner.home import VmDir
    from .runner.logs import attach_console
    vm_dir = VmDir(_home(), name)
    if not vm_dir.exists():
        _err(f"no VM named {name!r}")
        raise typer.Exit(rc.FAILED)
    try:
        attach_console(vm_dir)
    except OSError as e:
        _err(f"cannot attach to vm/{name}: {e.strerror or e} (is it running? see volt status {name})")
        raise typer.Exit(rc.FAILED)


def _vm_name(target: str) -> str:
    """A VM name, or the single VM a spec file declares."""
    if Path(target).is_file():
        specs = _load([target])
        if len(specs) != 1:
            _err(f"{target} declares {len(specs)} VMs; name one of them: {', '.join(s.name for s in specs)}")
            raise typer.Exit(rc.USAGE)
        return specs[0].name
    return target


def _with_write_progress(vm_dir, work):
    """Run `work` (a snapshot through the API) showing how much memory is written so far, on a TTY."""
    if not sys.stderr.isatty():
        return work()
    import threading
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = work()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    shown = False
    while t.is_alive():
        t.join(0.2)
        partial = [p for p in vm_dir.snapshots.glob(".*.partial-*/memory.snap")] if vm_dir.snapshots.is_dir() else []
        written = sum(p.stat().st_blocks * 512 for p in partial if p.exists())
        if partial:
            sys.stderr.write(f"\rwriting memory: {written / 1048576:8.1f} MiB")
            sys.stderr.flush()
            shown = True
    if shown:
        sys.stderr.write("\n")
    if "error" in result:
        raise result["error"]
    return result["value"]


@app.command("snapshot")
def snapshot(target: str = typer.Argument(..., help="A VM name or the spec file that declares it."),
             name: Optional[str] = typer.Option(None, "--name", help="Snapshot id (default: <vm>-<time>-<rand>)."),
             output: str = typer.Option("text", "-o", "--output", help="text or json.")) -> None:
    """Take a point-in-time snapshot of a running VM (memory and all device state).

    The guest is paused only while its state and memory are copied; the command
    returns once the snapshot is complete on disk. Prints its id, size on disk and
    how long the guest was paused (-o json: id, path, size_bytes, logical_bytes, paused_ms).
    Example: volt snapshot hello --name warm
    """
    if output not in ("text", "json"):
        _err(f"-o must be text or json, not {output!r}")
        raise typer.Exit(rc.USAGE)
    from .runner.home import VmDir
    from .runner.snapshots import SnapshotCommandError, take
    vm_name = _vm_name(target)
    vm_dir = VmDir(_home(), vm_name)
    if not vm_dir.exists():
        _err(f"no VM named {vm_name!r}")
        raise typer.Exit(rc.FAILED)
    try:
        with vm_dir.lock():
            result = _with_write_progress(vm_dir, lambda: take(vm_dir, name))
    except SnapshotCommandError as e:
        _err(str(e))
        raise typer.Exit(rc.FAILED)
    if output == "json":
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"snapshot {result['id']} of vm/{vm_name}: {result['size_bytes'] / 1048576:.1f} MiB on disk "
               f"({result['logical_bytes'] / 1048576:.0f} MiB of memory), guest paused {result['paused_ms']:.1f} ms")


@app.command("restore")
def restore(name: str = typer.Argument(..., help="The VM to replace by a restore."),
            snapshot_id: Optional[str] = typer.Option(None, "--snapshot", help="Which snapshot (default: newest valid)."),
            no_jail: bool = NO_JAIL) -> None:
    """Replace a VM by a restore of one of its snapshots (the current instance is stopped).

    Example: volt restore hello --snapshot warm
    """
    _no_jail(no_jail)
    from .runner import vmctl
    from .runner.home import VmDir
    from .runner.snapshots import list_snapshots
    home = _home()
    vm_dir = VmDir(home, name)
    applied = vm_dir.read_applied()
    if not applied:
        _err(f"no VM named {name!r}")
        raise typer.Exit(rc.FAILED)
    rows = [r for r in list_snapshots(home, name) if r["valid"]]
    if snapshot_id:
        rows = [r for r in rows if r["id"] == snapshot_id]
    if not rows:
        _err(f"no valid snapshot {snapshot_id or ''} for vm/{name} (volt snapshots list {name})".replace("  ", " "))
        raise typer.Exit(rc.FAILED)
    snap = rows[-1]
    import time
    t0 = time.monotonic()
    with vm_dir.lock():
        vmctl.kill_now(vm_dir)
        try:
            vmctl.start(vm_dir, applied["vm"], restore_from=Path(snap["path"]),
                        clock=(applied.get("snapshots") or {}).get("clock", "continue"))
        except vmctl.VmStartError as e:
            _err(f"vm/{name}: restore of {snap['id']} failed: {e}")
            raise typer.Exit(rc.FAILED)
    typer.echo(f"vm/{name} restored from {snap['id']} in {(time.monotonic() - t0) * 1000:.0f} ms")


@snapshots_app.command("list")
def snapshots_list(vm: Optional[str] = typer.Argument(None, help="Only this VM's snapshots."),
                   output: str = OUTPUT) -> None:
    """List snapshots (also those of deleted VMs), oldest first.

    Example: volt snapshots list hello -o json
    """
    from .runner.snapshots import list_snapshots
    rows = list_snapshots(_home(), vm)
    if output == "json":
        typer.echo(json.dumps([_snap_json(r) for r in rows], indent=2))
    elif output == "yaml":
        _print_rows([_snap_json(r) for r in rows], "yaml")
    else:
        from tabulate import tabulate
        import time
        body = [[r["id"], r["vm"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])) if r["created"] else "-",
                 r["trigger"] or "-", f"{r['size_bytes'] / 1048576:.1f}Mi / {r['logical_bytes'] / 1048576:.0f}Mi",
                 f"{r['paused_ms']:.1f}" if r["paused_ms"] is not None else "-",
                 "yes" if r["valid"] else f"no: {r['reason']}"] for r in rows]
        typer.echo(tabulate(body, headers=["ID", "VM", "CREATED", "TRIGGER", "SIZE (disk/logical)",
                                           "PAUSED ms", "VALID"], tablefmt="plain") if rows else "no snapshots")


def _snap_json(r: dict) -> dict:
    return {k: r[k] for k in ("id", "vm", "created", "trigger", "size_bytes", "logical_bytes", "paused_ms",
                              "valid", "reason", "path")}


def _snapshot_path(snapshot_id: str) -> Path:
    """The snapshot's directory, or a one-line error and exit 1."""
    from .runner.snapshots import find
    path = find(_home(), snapshot_id)
    if path is None:
        _err(f"no snapshot {snapshot_id!r} (volt snapshots list)")
        raise typer.Exit(rc.FAILED)
    return path


@snapshots_app.command("verify")
def snapshots_verify(snapshot_id: str = typer.Argument(..., help="The snapshot to check.")) -> None:
    """Check a snapshot: the CRC of its state and the checksum of its memory file.

    Example: volt snapshots verify hello-20261127-120000-ab12
    """
    from .runner.progress import Progress
    from .runner.snapshots import summary
    path = _snapshot_path(snapshot_id)
    bar = Progress((path / "memory.snap").stat().st_size if (path / "memory.snap").exists() else 1,
                   f"verifying {snapshot_id}")
    row = summary(path, path.parent.name, deep=True, progress=bar)
    bar.close()
    if not row["valid"]:
        typer.echo(f"snapshot {snapshot_id}: INVALID: {row['reason']}")
        raise typer.Exit(rc.FAILED)
    typer.echo(f"snapshot {snapshot_id}: ok (state CRC-64 and memory checksum match)")


@snapshots_app.command("delete")
def snapshots_delete(snapshot_id: str = typer.Argument(..., help="The snapshot to delete.")) -> None:
    """Delete a snapshot.

    Example: volt snapshots delete hello-20261127-120000-ab12
    """
    from .runner.snapshots import delete
    delete(_snapshot_path(snapshot_id))
    typer.echo(f"snapshot {snapshot_id} deleted")


@guest_app.command("build")
def guest_build(force: bool = typer.Option(False, "--force", help="Rebuild even when cached.")) -> None:
    """Build the test guest with this machine's gcc/ld (cached) and print its path.

    Example: volt-vmm --kernel "$(volt guest build)" --cmdline "volt.ticks=3 volt.poweroff"
    """
    from .guest.build import GuestBuildError, build_guest
    try:
        typer.echo(build_guest(force=force))
    except GuestBuildError as e:
        _err(str(e))
        raise typer.Exit(rc.FAILED)


@app.command("host")
def host_info() -> None:
    """Say which kind of KVM this host has (hardware or PVM) and what it offers.

    Example: volt host
    """
    from .kvm.flavour import cpu_identity, kvm_flavour
    from .kvm.system import Kvm, KvmUnavailable
    flavour = kvm_flavour()
    cpu = cpu_identity()
    typer.echo(f"kvm: {flavour}" + (" (software virtualization: guest kernel mode is emulated, slow)"
                                     if flavour == "pvm" else ""))
    typer.echo(f"cpu: {cpu['vendor']} {cpu['model_name']}")
    try:
        kvm = Kvm()
    except KvmUnavailable as e:
        _err(str(e))
        raise typer.Exit(rc.FAILED)
    typer.echo(f"max vcpus per VM: {kvm.max_vcpus()}")


def main() -> None:
    from .names import BadName
    try:
        app()
    except BadName as e:                 # a name that would have become a path outside $VOLT_HOME
        _err(str(e))
        sys.exit(rc.USAGE)
    except OSError as e:                 # a full disk, an I/O error, a read-only $VOLT_HOME
        from .fsutil import os_error
        _err(os_error(e))
        sys.exit(rc.FAILED)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
