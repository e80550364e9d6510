"""volt-vmm: boot one microVM and stream its serial console to stdout.

Kept lean on purpose: before the first KVM_RUN this imports only ctypes, mmap,
os, struct, signal and threading (check with `python -X importtime`).
"""

from __future__ import annotations

import os
import sys

import _signal as signal  # the C module: `signal` would pull in enum (~4 ms before KVM_RUN)

from . import status

USAGE = """\
usage: volt-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--memory MIB]
                [--vcpus N] [--boot pvh|linux64] [--stop-timeout SECONDS]
                [--api-sock PATH] [--name NAME]
       volt-vmm --restore DIR [--clock continue|realtime] [--api-sock PATH]
       volt-vmm --config FILE                    (the whole VM as JSON: what volt writes)
       volt-vmm --api-sock PATH                  (configure through the API)
       volt-vmm --warm --vcpus N --memory MIB --api-sock PATH
                                                 (a VM made ahead, for a snapshot load by fds)
       volt-vmm --snapshot DIR --api-sock PATH   (snapshot a running VMM)

Boot a microVM on /dev/kvm and stream its serial console (COM1) to stdout.

  --kernel PATH     ELF with a PVH note (booted by PVH), another ELF vmlinux or a
                    bzImage (booted by the 64-bit Linux boot protocol)
  --initrd PATH     initramfs loaded beside the kernel
  --cmdline STR     kernel command line (default: empty)
  --memory MIB      guest RAM in MiB (default 128); RAM beyond 3 GiB lives above 4 GiB
  --vcpus N         number of vCPUs (default 1)
  --track-dirty-pages
                    log which guest pages change (KVM's dirty log and the devices'
                    writes), so PUT /snapshot/create {"snapshot_type": "Diff"} writes
                    only those since the last snapshot taken or restored
  --compress-snapshots
                    keep full snapshots' memory zstd-compressed (memory.snap.zst, 2 MiB
                    frames); a restore decompresses on demand (userfaultfd) or ahead
  --boot MODE       force pvh or linux64 instead of choosing by the kernel's format
  --stop-timeout S  on SIGTERM/SIGINT the guest gets Ctrl-Alt-Del and S seconds
                    (default 10) to power off before it is killed
  --api-sock PATH   serve the HTTP API on this Unix socket (mode 0600) once the
                    vCPUs run: GET /vm, PATCH /vm {"state": "Paused"|"Resumed"},
                    PUT /actions {"action_type": "SendCtrlAltDel"}
                    (PUT /snapshot/create {"snapshot_path": DIR} takes a snapshot);
                    given alone, volt-vmm waits to be configured through the API
                    (PUT /boot-source, /machine-config, /actions InstanceStart, or
                    PUT /snapshot/load {"snapshot_path": DIR})
  --config FILE     the VM as one JSON document (vm.json: name, machine, boot_source or
                    restore, drives, network, virtio, policy, api, stop_timeout; volt
                    writes it for every VM it starts); combines only with --jail/--seccomp
  --restore DIR     start from the snapshot in DIR instead of booting
  --warm            make the VM of this shape (--vcpus, --memory) ahead: vCPUs created,
                    RAM registered, every module imported; then wait on --api-sock for
                    PUT /snapshot/load {"fds": {"state": 0, "memory": 1, "fingerprint": 2}}
                    with state.json, memory.snap (and memory.verified) passed as file
                    descriptors (SCM_RIGHTS): the memory is mapped over the registered RAM
  --clock MODE      on --restore: continue (default: the guest's clock resumes where
                    it stopped) or realtime (it advances by the time that passed)
  --verify          on --restore: read the whole memory file and compare its checksum
                    even when its fingerprint says it is unchanged since last checked
  --state-dir DIR   the only directory the API may write snapshots to or load them
                    from (default: the directory of --api-sock)
  --jail            run in a jail of its own (namespaces, a root holding only the
                    kernel, initrd, disks and state, a uid of its own, no capabilities,
                    a seccomp filter, a cgroup); volt jails the VMMs it starts
  --seccomp         load the seccomp filter before reading any guest input (the jail
                    passes it); --seccomp-selftest then makes a forbidden call
  --snapshot DIR    client mode: snapshot the VM behind --api-sock into DIR
  --name NAME       the VM's name, reported by GET /vm
  --disk PATH[,ro][,name=NAME]
                    a virtio-blk disk backed by PATH (repeatable; size a multiple of 512)
  --net tap=TAP[,mac=MAC][,name=NAME]
                    a virtio-net NIC on host tap device TAP (repeatable; MAC derived
                    from the VM and NIC names when omitted)
  --virtio-cmdline  announce virtio devices on the kernel command line
                    (virtio_mmio.device=...) instead of in the ACPI DSDT
  --no-ioeventfd, --no-irqfd
                    serve queue notifications by MMIO exits / interrupts by
                    KVM_IRQ_LINE instead (slower; for comparison)
  --disk-override NAME=PATH, --tap-override NAME=TAP, --mac-override NAME=MAC
                    on --restore: put disk NAME at PATH / attach NIC NAME to TAP /
                    give NIC NAME that MAC (each clone of a snapshot needs its own)
  --policy FILE     snapshot policy carried out by this VMM (JSON: vm, snapshot_dir,
                    triggers [{"trigger": "ready"|"interval"|"console"|"stop", "marker",
                    "every_s", "match"}], retain {"count", "max_age_s"})
  --version         print the version and exit

Bytes arriving on stdin go to the guest's serial port (COM1 receive).

exit status: 0 guest powered off or reset, 1 bad input or host problem,
             2 bad command line, 3 guest crashed, 4 guest killed after --stop-timeout

example:
  volt-vmm --kernel "$(volt guest build)" --cmdline "volt.ticks=3 volt.poweroff"
"""

_REPEATED = {"--disk", "--net", "--disk-override", "--tap-override", "--mac-override"}
_FLAGS = {"--warm", "--track-dirty-pages", "--compress-snapshots", "--virtio-cmdline", "--no-ioeventfd", "--no-irqfd", "--verify", "--jail", "--seccomp", "--seccomp-selftest"}
_OPTIONS = {"--disk": str, "--net": str, "--disk-override": str, "--tap-override": str, "--mac-override": str,
            "--kernel": str, "--initrd": str, "--cmdline": str, "--memory": int, "--vcpus": int,
            "--boot": str, "--stop-timeout": float, "--api-sock": str, "--name": str,
            "--restore": str, "--snapshot": str, "--clock": str, "--policy": str, "--state-dir": str,
            "--config": str}


class UsageError(Exception):
    pass


def parse_args(argv: list[str]) -> dict[str, object]:
    """A small getopt: argparse alone costs ~3 ms of import on the boot path."""
    opts: dict[str, object] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            opts["help"] = True
            i += 1
            continue
        if arg == "--version":
            opts["version"] = True
            i += 1
            continue
        if arg in _FLAGS:
            opts[arg[2:].replace("-", "_")] = True
            i += 1
            continue
        name, eq, value = arg.partition("=")
        if name not in _OPTIONS:
            raise UsageError(f"unknown option {arg!r}")
        if not eq:
            if i + 1 >= len(argv):
                raise UsageError(f"{name} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        try:
            key = name[2:].replace("-", "_")
            if name in _REPEATED:
                opts.setdefault(key, []).append(_OPTIONS[name](value))
            else:
                opts[key] = _OPTIONS[name](value)
        except ValueError:
            raise UsageError(f"{name}: {value!r} is not a valid {_OPTIONS[name].__name__}") from None
    return opts


def fail(code: int, message: str) -> int:
    os.write(2, f"volt-vmm: {message}\n".encode())
    return code


def run(argv: list[str]) -> int:
    try:
        opts = parse_args(argv)
    except UsageError as e:
        return fail(status.USAGE, f"{e} (see volt-vmm --help)")
    if opts.get("help"):
        sys.stdout.write(USAGE)
        return status.OK
    if opts.get("version"):
        sys.stdout.write("volt-vmm 0.1.0\n")
        return status.OK
    if "snapshot" in opts:
        return snapshot_client(opts)
    from .machine import install_kick_handler
    install_kick_handler()
    from .config import VmmConfigError
    from .config.args import config_from_args
    try:
        config = config_from_args(opts)
    except VmmConfigError as e:
        return fail(status.VMM_ERROR, str(e))
    if config.boot_source is None and config.restore is None and config.api is None:
        return fail(status.USAGE, "--kernel (boot), --restore (from a snapshot), --config FILE or --api-sock "
                                  "alone (configure through the API) is required (see volt-vmm --help)")
    if opts.get("jail"):
        from .jailed import run_jailed
        return run_jailed(argv, opts, config)
    if not placed_by_jail():
        return fail(status.VMM_ERROR, "the jail did not place this VMM in its cgroup")
    if opts.get("seccomp"):            # before any guest input is read and before any thread starts
        from ..jail.seccomp import install, prepare_thread_filters
        install()
        prepare_thread_filters()
        if opts.get("seccomp_selftest"):
            from ..jail.libc import mount
            mount(None, "/", None, 0)  # forbidden: the filter kills the process here (SIGSYS)
    return build_and_serve(config)


def build_and_serve(config) -> int:
    """Build the VM the config describes (or wait for the API to describe one), launch it, serve it."""
    from ..kvm.errors import KvmError, MissingCapability
    from ..kvm.system import Kvm, KvmUnavailable
    from ..snapshot.format import SnapshotError
    from .builder import build, build_from_snapshot, launch
    from .config import VmmConfigError

    try:
        kvm = Kvm()
        kvm.require()
        if config.restore is not None:
            machine = build_from_snapshot(kvm, config)
        elif config.boot_source is not None:
            machine = build(kvm, config)
        elif config.warm:
            return serve_warm(kvm, config)
        else:
            return serve_unconfigured(kvm, config)
    except (VmmConfigError, KvmUnavailable, MissingCapability, SnapshotError) as e:
        return fail(status.VMM_ERROR, str(e))
    except ValueError as e:             # VirtioError and other one-line input problems
        return fail(status.VMM_ERROR, str(e))
    except KvmError as e:
        return fail(status.VMM_ERROR, f"KVM refused to build the VM: {e}")
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        return fail(status.VMM_ERROR, f"internal error while building the VM: {type(e).__name__}: {e}")
    launch(machine, restored=config.restore is not None)
    return serve(machine, config)


def serve(machine, config, server=None) -> int:
    """The VM runs: feed stdin to its UART, serve the API, wait for it to stop."""
    from .sync import Worker
    Worker(machine.devices.pump_console_input, 0, machine.exit_event)
    if config.api is not None and server is None:
        try:
            server = start_api(machine, config)
        except Exception as e:  # noqa: BLE001 - OSError, SocketInUse: one line either way
            return fail(status.VMM_ERROR, f"cannot serve the API on {config.api.socket}: "
                                          f"{getattr(e, 'strerror', None) or e}")
    try:
        return supervise(machine, config.stop_timeout)
    finally:
        if server is not None:
            server.close()


def start_api(machine, config):
    """Serve the HTTP API (after the vCPUs run, so it never delays the boot)."""
    from ..api.server import ApiServer
    from .api_handler import VmmApi
    server = ApiServer(config.api.socket, VmmApi(machine, config.name, config.api.state_dir))
    server.start()
    return server


def serve_unconfigured(kvm, config) -> int:
    """Firecracker's mode: no VM until the API configures one (boot source + InstanceStart, or a snapshot load)."""
    from ..api.server import ApiServer
    from .api_handler import ConfigApi, VmmApi
    handler = ConfigApi(kvm, config)
    try:
        server = ApiServer(config.api.socket, handler)
        server.start()
    except Exception as e:  # noqa: BLE001
        return fail(status.VMM_ERROR, f"cannot serve the API on {config.api.socket}: "
                                      f"{getattr(e, 'strerror', None) or e}")
    handler.started.wait()
    server.handler = VmmApi(handler.machine, config.name, config.api.state_dir)
    return serve(handler.machine, config, server=server)


def serve_warm(kvm, config) -> int:
    """Make the VM ahead, serve the warm API (fds accepted) until a load, then serve the VM."""
    from ..api.server import ApiServer
    from .warm import MAX_FDS, WarmApi, prepare
    try:
        machine = prepare(kvm, config)
    except (ValueError, OSError) as e:
        return fail(status.VMM_ERROR, f"cannot make the warm VM: {e}")
    handler = WarmApi(kvm, config, machine)
    try:
        server = ApiServer(config.api.socket, handler, accept_fds=MAX_FDS)
        server.start()
    except Exception as e:  # noqa: BLE001 - OSError, SocketInUse: one line either way
        return fail(status.VMM_ERROR, f"cannot serve the API on {config.api.socket}: {getattr(e, 'strerror', None) or e}")
    handler.started.wait()
    if handler.spent:
        server.close()
        return fail(status.VMM_ERROR, f"warm VMM spent: {handler.spent}")
    server.handler = handler.vm_api
    return serve(machine, config, server=server)


def snapshot_client(opts: dict) -> int:
    """volt-vmm --snapshot DIR --api-sock PATH: ask the VMM behind PATH for a snapshot."""
    if "api_sock" not in opts:
        return fail(status.USAGE, "--snapshot needs --api-sock of the VMM to snapshot")
    from ..api.client import ApiClient, ApiError, ApiUnavailable
    try:
        result = ApiClient(opts["api_sock"], timeout=600).put(
            "/snapshot/create", {"snapshot_path": os.path.abspath(opts["snapshot"])})
    except (ApiError, ApiUnavailable) as e:
        return fail(status.VMM_ERROR, str(e))
    result = result or {}
    sys.stdout.write(f"snapshot {result.get('id')} at {result.get('path')}: "
                     f"{result.get('size_bytes', 0) / 1048576:.1f} MiB on disk, "
                     f"guest paused {result.get('paused_ms', 0):.1f} ms\n")
    return status.OK


def supervise(machine, stop_timeout: float) -> int:
    """Wait for the guest to stop; SIGTERM/SIGINT ask it politely (Ctrl-Alt-Del), then force."""
    asked: list[float] = []

    def on_stop_signal(signum, _frame):
        import time
        if asked:
            machine.request_exit(status.KILLED, f"stopped by signal {signum} (second request)")
            return
        asked.append(time.monotonic())
        if machine.policy is not None:
            machine.policy.before_stop()
        machine.devices.send_ctrl_alt_del()

    signal.signal(signal.SIGTERM, on_stop_signal)
    signal.signal(signal.SIGINT, on_stop_signal)
    while not machine.exit_event.wait(0.25):
        if asked:
            import time
            if time.monotonic() - asked[0] > stop_timeout:
                machine.request_exit(status.KILLED,
                                     f"guest did not power off within {stop_timeout:g} s of Ctrl-Alt-Del; killed")
    code = machine.exit_code if machine.exit_code is not None else status.VMM_ERROR
    if code != status.OK:
        fail(code, machine.exit_reason)
    return code


def placed_by_jail() -> bool:
    """A jailed VMM waits for its supervisor's go (it is then in its cgroups) before it reads
    guest input; the wait overlaps the move with this process's start. True unjailed."""
    from ..jail import GO, GO_FD_ENV
    fd = os.environ.pop(GO_FD_ENV, None)
    if fd is None:
        return True
    try:
        return os.read(int(fd), 1) == GO
    except (OSError, ValueError):
        return False
    finally:
        try:
            os.close(int(fd))
        except (OSError, ValueError):
            pass


def main() -> None:
    code = run(sys.argv[1:])
    sys.stdout.flush()
    # vCPU threads may still sit in KVM_RUN: leave without joining them.
    os._exit(code)


if __name__ == "__main__":
    main()
