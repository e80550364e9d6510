"""`volt agent`: the reconciler that keeps this host on a source of specs; `volt agent status`."""

from __future__ import annotations

from typing import Optional

import typer
from typer.core import TyperGroup

from .. import status_codes as rc
from .common import NO_JAIL, OUTPUT, app, err, home_dir, print_json_or_yaml, set_no_jail


class _RunByDefault(TyperGroup):
    """`volt agent PATH|URL ...` means `volt agent run PATH|URL ...`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


agent_app = typer.Typer(cls=_RunByDefault, no_args_is_help=True, rich_markup_mode=None,
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
        no_jail: bool = NO_JAIL) -> None:
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
    from ..schema.sizes import duration_seconds
    if output not in ("text", "json"):
        err(f"-o must be text or json, not {output!r}")
        raise typer.Exit(rc.USAGE)
    try:
        interval_s = duration_seconds(interval)
    except ValueError as e:
        err(f"--interval: {e}")
        raise typer.Exit(rc.USAGE)
    home = home_dir()
    try:
        src = Source(target, home / "agent-cache", branch, subdir)
    except SourceError as e:
        err(str(e))
        raise typer.Exit(rc.USAGE)
    raise typer.Exit(Agent(src, home, interval_s, EventLog(json_lines=output == "json"), source).run())


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
