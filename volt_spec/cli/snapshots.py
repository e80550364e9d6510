"""`volt snapshot`, `restore` and `volt snapshots list|verify|delete`: taking, using and keeping snapshots."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .. import status_codes as rc
from .common import (NO_JAIL, OUTPUT, SELECTOR, app, err, home_dir, is_path, load_or_exit, pick_vms, print_rows,
                     set_no_jail, snapshots_app)


def _vm_names(targets: list[str], selector: str | None) -> list[str]:
    """VM names: NAMEs, the VMs spec paths declare (a / or a .yaml/.yml suffix), or -l SELECTOR."""
    names: list[str] = []
    for t in targets:
        names += [s.name for s in load_or_exit([t])] if is_path(t) else [t]
    if not names and selector is None:
        err("say which VMs: NAME..., a spec PATH, or -l SELECTOR")
        raise typer.Exit(rc.USAGE)
    return pick_vms(names, selector, home_dir())


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
def snapshot(targets: List[str] = typer.Argument(None, metavar="NAME|PATH...",
                                                 help="VM names, or spec files (a / or .yaml/.yml suffix)."),
             selector: Optional[str] = SELECTOR,
             name: Optional[str] = typer.Option(None, "--name", help="Snapshot id, for one VM (default: "
                                                                     "<vm>-<time>-<rand>)."),
             expire: bool = typer.Option(False, "--expire", help="Subject it to the spec's retain rules, as a "
                                                                 "policy snapshot is (default: kept until deleted)."),
             diff: Optional[bool] = typer.Option(None, "--diff/--full", help="A diff (only the pages changed since "
                                                 "the last snapshot taken or restored; the VM's spec needs "
                                                 "snapshots.incremental) or a full snapshot (default: as "
                                                 "snapshots.incremental.fullEvery says, else full)."),
             output: str = typer.Option("text", "-o", "--output", help="text or json.")) -> None:
    """Take a point-in-time snapshot of running VMs (memory and all device state).

    The guest is paused only while its state and memory are copied; the command
    returns once the snapshot is complete on disk. Prints its id, size on disk and
    how long the guest was paused (-o json: id, path, size_bytes, logical_bytes, paused_ms,
    kind (full or diff) and a diff's parent; a list when several VMs were asked for).
    A manual snapshot is kept until `volt snapshots delete`: it neither counts against
    spec.snapshots.retain nor ages out by it, unless taken with --expire (retention then
    runs at once, as after a policy snapshot).

    Example: volt snapshot hello --name warm   |   volt snapshot -l tier=db   |   volt snapshot db --diff
    """
    if output not in ("text", "json"):
        err(f"-o must be text or json, not {output!r}")
        raise typer.Exit(rc.USAGE)
    names = _vm_names(targets or [], selector)
    if name and len(names) != 1:
        err(f"--name names one snapshot; {len(names)} VMs were asked for")
        raise typer.Exit(rc.USAGE)
    results, failed = [], False
    for vm_name in names:
        result = _snapshot_one(vm_name, name, expire, diff)
        failed |= result is None
        if result is not None and output == "json":
            results.append(result)
        elif result is not None:
            kind = f"diff on {result['parent']}, " if result.get("kind") == "diff" else ""
            typer.echo(f"snapshot {result['id']} of vm/{vm_name}: {kind}{result['size_bytes'] / 1048576:.1f} MiB on "
                       f"disk ({result['logical_bytes'] / 1048576:.0f} MiB of memory), guest paused "
                       f"{result['paused_ms']:.1f} ms")
    if output == "json":
        typer.echo(json.dumps(results[0] if len(names) == 1 and results else results, indent=2))
    raise typer.Exit(rc.FAILED if failed else rc.OK)


def _snapshot_one(vm_name: str, name: str | None, expire: bool, diff: bool | None = None) -> dict | None:
    """One VM's snapshot, or None after saying why not."""
    from ..runner.home import VmDir
    from ..runner.snapshots import SnapshotCommandError, take
    vm_dir = VmDir(home_dir(), vm_name)
    if not vm_dir.exists():
        err(f"no VM named {vm_name!r}")
        return None
    try:
        with vm_dir.lock():
            return _with_write_progress(vm_dir, lambda: take(vm_dir, name, expire=expire, diff=diff))
    except SnapshotCommandError as e:
        err(str(e))
        return None


@app.command("restore")
def restore(name: str = typer.Argument(..., help="The VM to replace by a restore."),
            snapshot_id: Optional[str] = typer.Option(None, "--snapshot", help="Which snapshot (default: newest valid)."),
            no_jail: bool = NO_JAIL) -> None:
    """Replace a VM by a restore of one of its snapshots (the current instance is stopped).

    Example: volt restore hello --snapshot warm
    """
    set_no_jail(no_jail)
    from ..runner import vmctl
    from ..runner.home import VmDir
    from ..runner.snapshots import list_snapshots
    home = home_dir()
    vm_dir = VmDir(home, name)
    applied = vm_dir.read_applied()
    if not applied:
        err(f"no VM named {name!r}")
        raise typer.Exit(rc.FAILED)
    every = list_snapshots(home, name)
    rows = [r for r in every if r["valid"] and r["id"] == (snapshot_id or r["id"])]
    if not rows:
        why = next((r["reason"] for r in every if r["id"] == snapshot_id and r["reason"]), "")
        said = f"no valid snapshot {snapshot_id or ''} for vm/{name}".replace("  ", " ")
        err(said + (f": {why}" if why else f" (volt snapshots list {name})"))
        raise typer.Exit(rc.FAILED)
    snap = rows[-1]
    import time
    t0 = time.monotonic()
    clock = (applied.get("snapshots") or {}).get("clock", "continue")
    with vm_dir.lock():
        vmctl.kill_now(vm_dir)
        how = _into_warm(vm_dir, applied, Path(snap["path"]), clock)
        try:
            if not how:
                vmctl.start(vm_dir, applied["vm"], restore_from=Path(snap["path"]), clock=clock)
        except vmctl.VmStartError as e:
            err(f"vm/{name}: restore of {snap['id']} failed: {e}")
            raise typer.Exit(rc.FAILED)
    typer.echo(f"vm/{name} restored from {snap['id']}{how} in {(time.monotonic() - t0) * 1000:.0f} ms")


def _into_warm(vm_dir, applied: dict, snap: Path, clock: str) -> str:
    """", into a warm VMM" when the VM asks for a pool and one of its shape was ready, else ""."""
    if not (applied.get("snapshots") or {}).get("pool"):
        return ""
    from ..runner.pool import PoolMiss, restore_into_warm
    try:
        return ", into a warm VMM" if restore_into_warm(vm_dir, applied["vm"], snap, clock, applied) else ""
    except PoolMiss as e:
        err(f"warning: vm/{vm_dir.name}: {e}; starting it the usual way")
        return ""


@snapshots_app.command("list")
def snapshots_list(vm: Optional[str] = typer.Argument(None, help="Only this VM's snapshots."),
                   output: str = OUTPUT) -> None:
    """List snapshots (also those of deleted VMs), oldest first.

    PARENT names the snapshot a diff stands on (snapshots.incremental; - for a full one); a
    diff's SIZE counts its own files only, and it is valid only while its parents are. -o json
    adds `kind` and, for a diff, `tracking`: how its pages were found (kvm-dirty-log+clear:
    KVM's dirty log with manual protection, or kvm-dirty-log, plus the devices' own record).

    Example: volt snapshots list hello -o json
    """
    from ..runner.snapshots import list_snapshots
    rows = list_snapshots(home_dir(), vm)
    if output == "json":
        typer.echo(json.dumps([_snap_json(r) for r in rows], indent=2))
    elif output == "yaml":
        print_rows([_snap_json(r) for r in rows], "yaml")
    else:
        from tabulate import tabulate
        import time
        body = [[r["id"], r["vm"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])) if r["created"] else "-",
                 _trigger(r), f"{r['size_bytes'] / 1048576:.1f}Mi / {r['logical_bytes'] / 1048576:.0f}Mi",
                 f"{r['paused_ms']:.1f}" if r["paused_ms"] is not None else "-", r["parent"] or "-",
                 "yes" if r["valid"] else f"no: {r['reason']}"] for r in rows]
        typer.echo(tabulate(body, headers=["ID", "VM", "CREATED", "TRIGGER", "SIZE (disk/logical)",
                                           "PAUSED ms", "PARENT", "VALID"], tablefmt="plain") if rows else "no snapshots")


def _trigger(r: dict) -> str:
    """What took it; `manual, expires` for one retention governs (volt snapshot --expire)."""
    if r["trigger"] == "manual" and r["expire"]:
        return "manual, expires"
    return r["trigger"] or "-"


def _snap_json(r: dict) -> dict:
    """A row for -o json|yaml: `created` in RFC 3339 (UTC)."""
    from ..runner.times import rfc3339
    out = {k: r[k] for k in ("id", "vm", "created", "trigger", "expire", "size_bytes", "logical_bytes",
                             "paused_ms", "kind", "parent", "tracking", "valid", "reason", "path")}
    out["created"] = rfc3339(out["created"]) if out["created"] else None
    return out


def _snapshot_path(snapshot_id: str) -> Path:
    """The snapshot's directory, or a one-line error and exit 1."""
    from ..runner.snapshots import find
    path = find(home_dir(), snapshot_id)
    if path is None:
        err(f"no snapshot {snapshot_id!r} (volt snapshots list)")
        raise typer.Exit(rc.FAILED)
    return path


@snapshots_app.command("verify")
def snapshots_verify(snapshot_id: str = typer.Argument(..., help="The snapshot to check.")) -> None:
    """Check a snapshot: the CRC of its state and the checksum of its memory file.

    Example: volt snapshots verify hello-20261127-120000-ab12
    """
    from ..runner.progress import Progress
    from ..runner.snapshots import summary
    path = _snapshot_path(snapshot_id)
    memory = next((path / name for name in ("memory.snap", "memory.snap.zst") if (path / name).exists()), None)
    bar = Progress(memory.stat().st_size if memory is not None else 1, f"verifying {snapshot_id}")
    row = summary(path, path.parent.name, deep=True, progress=bar)
    bar.close()
    if not row["valid"]:
        typer.echo(f"snapshot {snapshot_id}: INVALID: {row['reason']}")
        raise typer.Exit(rc.FAILED)
    typer.echo(f"snapshot {snapshot_id}: ok (state CRC-64 and memory checksum match)")


@snapshots_app.command("squash")
def snapshots_squash(snapshot_id: str = typer.Argument(..., help="The diff snapshot to make full."),
                     output: str = typer.Option("text", "-o", "--output", help="text or json.")) -> None:
    """Merge a diff snapshot and the chain under it into a full snapshot of the same id.

    Its memory file then holds every page and it needs no parent (the parents stay: delete
    them or let retention do it); restoring it maps one file. Diffs taken on it still restore.

    Example: volt snapshots squash hello-20261205-120000-ab12
    """
    from ..runner.snapshots import SnapshotCommandError, squash
    path = _snapshot_path(snapshot_id)
    try:
        row = squash(home_dir(), path)
    except SnapshotCommandError as e:
        err(str(e))
        raise typer.Exit(rc.FAILED) from None
    if output == "json":
        typer.echo(json.dumps(_snap_json(row), indent=2))
    else:
        typer.echo(f"snapshot {snapshot_id} squashed: a full snapshot, {row['size_bytes'] / 1048576:.1f} MiB on disk")


@snapshots_app.command("export")
def snapshots_export(snapshot_id: str = typer.Argument(..., help="The snapshot to export."),
                     out: str = typer.Option(..., "-o", "--output", help="The file to write (replaced atomically)."),
                     fmt: str = typer.Option("text", "--format", help="text or json.")) -> None:
    """Write a snapshot (state, memory and disk copies) to one compressed, checked file.

    zstd's seekable format, with a checksum over everything; a diff is written in its full form,
    so the file needs nothing else. `volt snapshots import FILE` puts it back, here or on another
    host of the same kind (CPU vendor and model, KVM kind).

    Example: volt snapshots export warm -o warm.volt
    """
    from ..runner.progress import Progress
    from ..runner.snapshots import SnapshotCommandError, export, summary
    path = _snapshot_path(snapshot_id)
    row = summary(path, path.parent.name)
    if not row["valid"]:
        err(f"snapshot {snapshot_id} is not valid: {row['reason']}")
        raise typer.Exit(rc.FAILED)
    bar = Progress(max(row["size_bytes"], 1), f"exporting {snapshot_id}")
    try:
        result = export(home_dir(), path, out, bar)
    except SnapshotCommandError as e:
        bar.close()
        err(str(e))
        raise typer.Exit(rc.FAILED) from None
    bar.close()
    if fmt == "json":
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(f"snapshot {snapshot_id} exported to {out}: {result['bytes'] / 1048576:.1f} MiB "
                   f"({result['data_bytes'] / 1048576:.1f} MiB of data)")


@snapshots_app.command("import")
def snapshots_import(file: str = typer.Argument(..., help="A file `volt snapshots export` wrote."),
                     vm: Optional[str] = typer.Option(None, "--vm", help="Whose snapshot it becomes (default: "
                                                                        "the VM it was taken of)."),
                     as_id: Optional[str] = typer.Option(None, "--id", help="Its id here (default: its own).")) -> None:
    """Check an exported snapshot and add it to the catalogue.

    Every byte is checked against the file's checksum, then the snapshot's state CRC and memory
    checksum; only then does it appear (nothing is left behind when it is refused). It is then
    restored like any other: `volt restore VM --snapshot ID`, or `snapshots.restore: ID`.

    Example: volt snapshots import warm.volt --vm web --id warm
    """
    from ..runner.snapshots import SnapshotCommandError, import_export
    try:
        dest = import_export(home_dir(), file, vm, as_id)
    except SnapshotCommandError as e:
        err(str(e))
        raise typer.Exit(rc.FAILED) from None
    typer.echo(f"snapshot {dest.name} of vm/{dest.parent.name} imported from {file}")


@snapshots_app.command("delete")
def snapshots_delete(target: str = typer.Argument(..., metavar="SNAPSHOT_ID|VM",
                                                  help="The snapshot to delete; with --all, the VM whose snapshots."),
                     all_: bool = typer.Option(False, "--all", help="Every snapshot of the VM named, also of a "
                                                                    "VM that was deleted.")) -> None:
    """Delete a snapshot, or with --all every snapshot of one VM (snapshots outlive their VM).

    Example: volt snapshots delete hello-20261127-120000-ab12   |   volt snapshots delete --all hello
    """
    if all_:
        from ..runner.snapshots import delete_all
        deleted = delete_all(home_dir(), target)
        typer.echo(f"{len(deleted)} snapshot{'s' * (len(deleted) != 1)} of vm/{target} deleted" if deleted
                   else f"vm/{target} has no snapshots")
        return
    from ..runner.snapshots import SnapshotCommandError, delete
    try:
        delete(_snapshot_path(target))
    except SnapshotCommandError as e:
        err(str(e))
        raise typer.Exit(rc.FAILED) from None
    typer.echo(f"snapshot {target} deleted")
