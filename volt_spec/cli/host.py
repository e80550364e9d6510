"""`volt guest build` and `volt host`: this machine, not its VMs."""

from __future__ import annotations

import typer

from .. import status_codes as rc
from .common import app, err, guest_app


@guest_app.command("build")
def guest_build(force: bool = typer.Option(False, "--force", help="Rebuild even when cached.")) -> None:
    """Build the test guest with this machine's gcc/ld (cached) and print its path.

    Example: volt-vmm --kernel "$(volt guest build)" --cmdline "volt.ticks=3 volt.poweroff"
    """
    from ..guest.build import GuestBuildError, build_guest
    try:
        typer.echo(build_guest(force=force))
    except GuestBuildError as e:
        err(str(e))
        raise typer.Exit(rc.FAILED)


@app.command("host")
def host_info() -> None:
    """Say which kind of KVM this host has (hardware or PVM) and what it offers.

    Example: volt host
    """
    from ..kvm.flavour import cpu_identity, kvm_flavour
    from ..kvm.system import Kvm, KvmUnavailable
    flavour = kvm_flavour()
    cpu = cpu_identity()
    typer.echo(f"kvm: {flavour}" + (" (software virtualization: guest kernel mode is emulated, slow)"
                                     if flavour == "pvm" else ""))
    typer.echo(f"cpu: {cpu['vendor']} {cpu['model_name']}")
    try:
        kvm = Kvm()
    except KvmUnavailable as e:
        err(str(e))
        raise typer.Exit(rc.FAILED)
    typer.echo(f"max vcpus per VM: {kvm.max_vcpus()}")


@app.command("completion")
def completion(shell: str = typer.Argument(..., metavar="bash|zsh|fish", help="The shell to complete in.")) -> None:
    """Print the shell completion script for volt (commands, options, VM names).

    Example: volt completion bash > /etc/bash_completion.d/volt   |   source <(volt completion zsh)
    """
    import click
    from click.shell_completion import get_completion_class
    from typer._completion_classes import completion_init
    completion_init()                        # typer's scripts and classes (cli.main does it on a tab)
    shells = ("bash", "zsh", "fish")
    if shell not in shells:
        err(f"completion: {shell!r} is not one of {', '.join(shells)}")
        raise typer.Exit(rc.USAGE)
    command = typer.main.get_command(app)
    script = get_completion_class(shell)(command, {}, "volt", "_VOLT_COMPLETE").source()
    click.echo(script)
