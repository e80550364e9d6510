"""`volt agent`: the reconciler that keeps this host on a source of specs; `volt agent status`."""

from __future__ import annotations

from typing import Optional

import typer
from typer.core import TyperGroup

from .. import status_codes as rc
from .common import (HELP, NO_JAIL, OUTPUT, RECURSIVE, app, duration_or_exit, err, home_dir, one_of_or_exit,
                     print_json_or_yaml, set_no_jail)


class _RunByDefault(TyperGroup):
    """`volt agent PATH|URL ...` means `volt agent run PATH|URL ...`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


agent_app = typer.Typer(cls=_RunByDefault, no_args_is_help=True, rich_markup_mode=None, context_settings=HELP,
                        help="Keep this host converged on a directory or git repository of specs.")
app.add_typer(agent_app, name="agent")


@agent_app.command("run")
def run(target: str = typer.Argument(..., metavar="PATH|GIT-URL",
                                     help="A directory of specs, a git checkout (pulled in place when it has "
                                          "an origin), or a git URL (cloned into the agent's cache)."),
        branch: Optional[str] = typer.Option(None, "--branch", help="The branch to follow (default: the remote's)."),
        subdir: str = typer.Option("", "--path", metavar="SUBDIR", help="The specs' directory inside the repository."),
        interval: str = typer.Option("30s", "--interval", help="Time between syncs (10s, 5m, ...)."),
        source: Optional[str] = typer.Option(None, "--source", metavar="NAME",
                                             help="Own the VMs as NAME (default: the repository's origin URL)."),
        output: str = typer.Option("text", "-o", "--output", help="Event lines as text or json."),
        recursive: bool = RECURSIVE, no_jail: bool = NO_JAIL) -> None:
    """Pull, apply (with prune for this source), watch, repeat, until SIGTERM.

    A VM whose VMM ends is restarted within seconds under its spec.restartPolicy, with
    crash-loop back-off; a failed pull is reported and what the checkout holds is still
    reconciled; a failed apply is retried after 20 s x attempt. SIGHUP syncs now. SIGTERM
    stops every VM of this source through its stop triggers (snapshots), then exits 0:
    the next agent restores them.

    Example: volt agent https://git.example.com/fleet.git --path vms --interval 1m
    """
    set_no_jail(no_jail)
    from ..runner.agent import Agent
    from ..runner.agentstate import EventLog
    from ..runner.gitsource import Source, SourceError
    one_of_or_exit("-o", output, ("text", "json"))
    interval_s = duration_or_exit("--interval", interval)
    home = home_dir()
    try:
        src = Source(target, home / "agent-cache", branch, subdir)
    except SourceError as e:
        err(str(e))
        raise typer.Exit(rc.USAGE)
    raise typer.Exit(Agent(src, home, interval_s, EventLog(json_lines=output == "json"), source, recursive).run())


@agent_app.command("status")
def status(output: str = OUTPUT) -> None:
    """The agents of this host: source, state, the commit last applied, last sync, last error.

    Example: volt agent status -o json
    """
    from ..runner.agentstate import all_agents
    rows = all_agents(home_dir())
    if output in ("json", "yaml"):
        print_json_or_yaml(rows, output)
        return
    from tabulate import tabulate
    if not rows:
        typer.echo("no agents have run here (volt agent PATH|URL starts one)")
        return
    body = [[r.get("source"), r.get("state"), r.get("pid") or "-", (r.get("commit") or "-")[:12],
             r.get("last_sync") or "-", r.get("last_error") or ""] for r in rows]
    typer.echo(tabulate(body, headers=["SOURCE", "STATE", "PID", "COMMIT", "LAST-SYNC", "LAST-ERROR"],
                        tablefmt="plain"))


@agent_app.command("install")
def install(target: str = typer.Argument(..., metavar="PATH|GIT-URL", help="What the agent follows (as for run)."),
            branch: Optional[str] = typer.Option(None, "--branch", help="The branch to follow."),
            subdir: str = typer.Option("", "--path", metavar="SUBDIR", help="The specs' directory in the repository."),
            interval: str = typer.Option("30s", "--interval", help="Time between syncs."),
            source: Optional[str] = typer.Option(None, "--source", metavar="NAME", help="Own the VMs as NAME."),
            recursive: bool = RECURSIVE,
            name: str = typer.Option("volt-agent", "--name", help="The unit's name (NAME.service)."),
            unit_dir: str = typer.Option("/etc/systemd/system", "--unit-dir", help="Where to write the unit."),
            enable: bool = typer.Option(True, "--enable/--no-enable",
                                        help="Enable and start it (when systemd runs).")) -> None:
    """Write a systemd unit that runs `volt agent` at boot and stops it, VMs first, at shutdown.

    Type=notify (ready after the first sync), Restart=always, after network-online.target;
    KillMode=process so the agent stops its VMs itself, through their stop triggers.

    Example: volt agent install https://git.example.com/fleet.git --path vms
    """
    from ..runner.gitsource import is_remote
    from ..runner.unit import UnitError, install as write_unit, unit_text
    from pathlib import Path
    duration_or_exit("--interval", interval)
    where = target if is_remote(target) else str(Path(target).resolve())
    args = [where, "--interval", interval, *(["--branch", branch] if branch else []),
            *(["--path", subdir] if subdir else []), *(["--source", source] if source else []),
            *(["--recursive"] if recursive else [])]
    text = unit_text(args, home_dir(), f"volt agent: keep this host's microVMs on {where}")
    try:
        for line in write_unit(name, text, Path(unit_dir), enable):
            typer.echo(line)
    except UnitError as e:
        err(str(e))
        raise typer.Exit(rc.FAILED)
