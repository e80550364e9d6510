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
       volt-vmm --api-sock PATH                  (configure through the API)
       volt-vmm --snapshot DIR --api-sock PATH   (snapshot a running VMM)

Boot a microVM on /dev/kvm and stream its serial console (COM1) to stdout.

  --kernel PATH     ELF with a PVH note (booted by PVH), another ELF vmlinux or a
                    bzImage (booted by the 64-bit Linux boot protocol)
  --initrd PATH     initramfs loaded beside the kernel
  --cmdline STR     kernel command line (default: empty)
  --memory MIB      guest RAM in MiB (default 128); RAM beyond 3 GiB lives above 4 GiB
  --vcpus N         number of vCPUs (default 1)
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
  --restore DIR     start from the snapshot in DIR instead of booting
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
  --disk-override NAME=PATH, --tap-override NAME=TAP
                    on --restore: put disk NAME at PATH / attach NIC NAME to TAP
                    (each clone of a snapshot needs its own disk)
  --policy FILE     snapshot policy (JSON: vm, snapshot_dir, triggers, retain) carried
                    out by this VMM: ready / interval / console / stop triggers
  --version         print the version and exit

Bytes arriving on stdin go to the guest's serial port (COM1 receive).

exit status: 0 guest powered off or reset, 1 bad input or host problem,
             2 bad command line, 3 guest crashed, 4 guest killed after --stop-timeout

example:
  volt-vmm --kernel "$(volt guest build)" --cmdline "volt.ticks=3 volt.poweroff"
"""

_REPEATED = {"--disk", "--net", "--disk-override", "--tap-override"}
_FLAGS = {"--virtio-cmdline", "--no-ioeventfd", "--no-irqfd", "--verify", "--jail", "--seccomp", "--seccomp-selftest"}
_OPTIONS = {"--disk": str, "--net": str, "--disk-override": str, "--tap-override": str,
            "--kernel": str, "--initrd": str, "--cmdline": str, "--memory": int, "--vcpus": int,
            "--boot": str, "--stop-timeout": float, "--api-sock": str, "--name": str,
            "--restore": str, "--snapshot": str, "--clock": str, "--policy": str, "--state-dir": str}


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
    if "kernel" not in opts and "restore" not in opts and "api_sock" not in opts:
        return fail(status.USAGE, "--kernel (boot), --restore (from a snapshot) or --api-sock alone "
                                  "(configure through the API) is required (see volt-vmm --help)")
    if opts.get("clock", "continue") not in ("continue", "realtime"):
        return fail(status.USAGE, "--clock must be continue or realtime")
    if opts.get("jail"):
        from .jailed import run_jailed
        return run_jailed(argv, opts)
    if not placed_by_jail():
        return fail(status.VMM_ERROR, "the jail did not place this VMM in its cgroup")
    if opts.get("seccomp"):            # before any guest input is read and before any thread starts
        from ..jail.seccomp import install, prepare_thread_filters
        install()
        prepare_thread_filters()
        if opts.get("seccomp_selftest"):
            from ..jail.libc import mount
            mount(None, "/", None, 0)  # forbidden: the filter kills the process here (SIGSYS)

    from ..kvm.errors import KvmError, MissingCapability
    from ..kvm.system import Kvm, KvmUnavailable
    from ..snapshot.format import SnapshotError
    from .config import VmmConfigError

    try:
        kvm = Kvm()
        kvm.require()
        if "restore" in opts:
            machine, protocol, booted_from = restore(kvm, opts["restore"], opts.get("clock", "continue"), opts)
        elif "kernel" in opts:
            machine, protocol = boot(kvm, config_from(opts, kvm), opts)
            booted_from = "cold"
        else:
            return serve_unconfigured(kvm, opts)
    except (VmmConfigError, KvmUnavailable, MissingCapability, SnapshotError) as e:
        return fail(status.VMM_ERROR, str(e))
    except ValueError as e:             # VirtioError and other one-line input problems
        return fail(status.VMM_ERROR, str(e))
    except KvmError as e:
        return fail(status.VMM_ERROR, f"KVM refused to build the VM: {e}")
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        return fail(status.VMM_ERROR, f"internal error while building the VM: {type(e).__name__}: {e}")
    return serve(machine, opts, protocol, booted_from)


def virtio_configs(opts: dict):
    if not opts.get("disk") and not opts.get("net"):
        return [], []                   # no virtio: keep its modules (threading, select...) unloaded
    from .virtio import DiskConfig, NetConfig
    disks = [DiskConfig.parse(t, i) for i, t in enumerate(opts.get("disk", []))]
    nets = [NetConfig.parse(t, i, opts.get("name", "vm")) for i, t in enumerate(opts.get("net", []))]
    return disks, nets


def pairs(items: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            from .config import VmmConfigError
            raise VmmConfigError(f"{option} {item}: expected NAME=VALUE")
        out[key] = value
    return out


def config_from(opts: dict, kvm):
    from .config import VmConfig, host_memory_mib
    config = VmConfig(kernel=opts["kernel"], initrd=opts.get("initrd"), cmdline=opts.get("cmdline", ""),
                      memory_mib=opts.get("memory", 128), vcpus=opts.get("vcpus", 1), boot=opts.get("boot"))
    config.check(host_memory_mib(), kvm.max_vcpus())
    return config


def serve(machine, opts: dict, protocol: str, booted_from: str, server=None) -> int:
    """The VM runs: feed stdin to its UART, serve the API, wait for it to stop."""
    from .sync import Worker
    Worker(machine.pump_console_input, 0)
    if "api_sock" in opts and server is None:
        try:
            server = start_api(machine, opts["api_sock"], opts.get("name", "vm"), protocol, booted_from,
                               state_dir(opts))
        except Exception as e:  # noqa: BLE001 - OSError, SocketInUse: one line either way
            return fail(status.VMM_ERROR, f"cannot serve the API on {opts['api_sock']}: "
                                          f"{getattr(e, 'strerror', None) or e}")
    try:
        return supervise(machine, opts.get("stop_timeout", 10.0))
    finally:
        if server is not None:
            server.close()


def start_policy(machine, path: str, booted_from: str) -> None:
    """The snapshot policy, watching the console before the first guest instruction (so a
    `ready` marker is never printed before anyone looks)."""
    import json
    from .config import VmmConfigError
    from .policy import PolicyEngine
    try:
        with open(path) as f:
            policy = json.load(f)
        machine.policy = PolicyEngine(machine, policy, booted_from)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise VmmConfigError(f"--policy {path}: {getattr(e, 'strerror', None) or e}") from None
    machine.add_console_tap(machine.policy.on_console)


def state_dir(opts: dict) -> str:
    """Where the API may write and load snapshots: --state-dir, else the API socket's directory."""
    return os.path.abspath(opts.get("state_dir") or os.path.dirname(os.path.abspath(opts["api_sock"])))


def start_api(machine, path: str, name: str, protocol: str, booted_from: str = "cold", state: str = ""):
    """Serve the HTTP API (after the vCPUs run, so it never delays the boot)."""
    from ..api.server import ApiServer
    from .api_handler import VmmApi
    server = ApiServer(path, VmmApi(machine, name, protocol, booted_from, state or os.path.dirname(path)))
    server.start()
    return server


def boot(kvm, config, opts: dict | None = None):
    """Build the VM, load the kernel and start the vCPUs."""
    from ..boot import layout
    from .loader import plan_boot, read_file
    from .machine import Machine

    opts = opts or {}
    kernel = read_file(config.kernel, "kernel")
    initrd = read_file(config.initrd, "initrd") if config.initrd else None
    from ..boot.acpi import build_acpi_tables
    machine = Machine(kvm, config)
    try:
        disks, nets = virtio_configs(opts)
        cmdline = config.cmdline
        descs = []
        if disks or nets:
            from .virtio import VirtioDevices
            machine.virtio = VirtioDevices(machine, disks, nets, ioeventfd=not opts.get("no_ioeventfd"),
                                           irqfd=not opts.get("no_irqfd"))
            if opts.get("virtio_cmdline"):
                cmdline = f"{cmdline} {machine.virtio.cmdline_words()}".strip()
            else:
                descs = machine.virtio.acpi_descs()
        acpi = build_acpi_tables(config.vcpus, virtio=descs)
        plan = plan_boot(kernel, initrd, cmdline, config.memory_mib * layout.MiB, acpi.rsdp_addr, config.boot)
        machine.load(plan, acpi.blob, acpi.base)
        if "policy" in opts:
            start_policy(machine, opts["policy"], "cold")
    except BaseException:
        machine.close()
        raise
    launch(machine)
    return machine, plan.protocol


def launch(machine, restored: bool = False) -> None:
    """Start the vCPUs, then the virtio I/O thread; after a restore, serve what the guest queued
    just before the snapshot."""
    machine.start()
    if machine.virtio is not None:
        machine.virtio.start()
        if restored:
            machine.virtio.kick_all()


def restore(kvm, snapshot_dir: str, clock: str = "continue", opts: dict | None = None):
    """Build the VM from a snapshot (memory mapped MAP_PRIVATE) and start the vCPUs."""
    from ..snapshot.restore import load, restore_into
    from ..snapshot.vcpu_state import xsave_size
    from .config import VmConfig
    from .machine import Machine

    from ..snapshot.format import SnapshotError
    from .config import host_memory_mib
    state, memory, checks = load(snapshot_dir, xsave_size(kvm), (host_memory_mib(), kvm.max_vcpus()),
                                 full_check=bool((opts or {}).get("verify")))
    try:
        meta, bootinfo = state["meta"], state.get("boot", {})
        config = VmConfig(kernel=bootinfo.get("kernel", ""), initrd=bootinfo.get("initrd"),
                          cmdline=bootinfo.get("cmdline", ""), memory_mib=int(meta["memory_mib"]),
                          vcpus=int(meta["vcpus"]), boot=bootinfo.get("boot"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        memory.close()
        checks()                        # a corrupt file: say so rather than what is missing
        raise SnapshotError(f"{snapshot_dir}: bad metadata in state.json ({e})") from None
    opts = opts or {}
    try:
        machine = Machine(kvm, config, memory=memory)
    except BaseException:
        memory.close()
        raise
    try:
        checks()            # CRC and host compatibility, while KVM registers the memory
        if state.get("virtio"):
            from .virtio import VirtioDevices
            disks, nets = VirtioDevices.configs_for_restore(
                state["virtio"], snapshot_dir, pairs(opts.get("disk_override", []), "--disk-override"),
                pairs(opts.get("tap_override", []), "--tap-override"))
            machine.virtio = VirtioDevices(machine, disks, nets, ioeventfd=not opts.get("no_ioeventfd"),
                                           irqfd=not opts.get("no_irqfd"))
        restore_into(machine, state, clock)
        if machine.virtio is not None:
            machine.virtio.restore(state["virtio"])
        booted_from = f"snapshot {os.path.basename(os.path.normpath(snapshot_dir))}"
        if "policy" in opts:
            start_policy(machine, opts["policy"], booted_from)
    except BaseException:
        machine.close()
        raise
    launch(machine, restored=True)
    return machine, bootinfo.get("boot") or "snapshot", booted_from


def serve_unconfigured(kvm, opts: dict) -> int:
    """Firecracker's mode: no VM until the API configures one (boot source + InstanceStart, or a snapshot load)."""
    from ..api.server import ApiServer
    from .api_handler import ConfigApi, VmmApi
    handler = ConfigApi(kvm, opts)
    try:
        server = ApiServer(opts["api_sock"], handler)
        server.start()
    except Exception as e:  # noqa: BLE001
        return fail(status.VMM_ERROR, f"cannot serve the API on {opts['api_sock']}: {getattr(e, 'strerror', None) or e}")
    handler.started.wait()
    machine, protocol, booted_from = handler.result
    server.handler = VmmApi(machine, opts.get("name", "vm"), protocol, booted_from, state_dir(opts))
    return serve(machine, opts, protocol, booted_from, server=server)


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
        machine.send_ctrl_alt_del()

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
