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
  --name NAME       the VM's name, reported by GET /vm
  --version         print the version and exit

Bytes arriving on stdin go to the guest's serial port (COM1 receive).

exit status: 0 guest powered off or reset, 1 bad input or host problem,
             2 bad command line, 3 guest crashed, 4 guest killed after --stop-timeout

example:
  volt-vmm --kernel "$(volt guest build)" --cmdline "volt.ticks=3 volt.poweroff"
"""

_OPTIONS = {"--kernel": str, "--initrd": str, "--cmdline": str, "--memory": int, "--vcpus": int,
            "--boot": str, "--stop-timeout": float, "--api-sock": str, "--name": str}


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
            opts[name[2:].replace("-", "_")] = _OPTIONS[name](value)
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
    if "kernel" not in opts:
        return fail(status.USAGE, "--kernel is required (see volt-vmm --help)")

    from ..kvm.errors import KvmError, MissingCapability
    from ..kvm.system import Kvm, KvmUnavailable
    from .config import VmConfig, VmmConfigError, host_memory_mib

    config = VmConfig(kernel=opts["kernel"], initrd=opts.get("initrd"), cmdline=opts.get("cmdline", ""),
                      memory_mib=opts.get("memory", 128), vcpus=opts.get("vcpus", 1), boot=opts.get("boot"))
    try:
        kvm = Kvm()
        kvm.require()
        config.check(host_memory_mib(), kvm.max_vcpus())
        machine, protocol = boot(kvm, config)
    except (VmmConfigError, KvmUnavailable, MissingCapability) as e:
        return fail(status.VMM_ERROR, str(e))
    except KvmError as e:
        return fail(status.VMM_ERROR, f"KVM refused to build the VM: {e}")
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        return fail(status.VMM_ERROR, f"internal error while building the VM: {type(e).__name__}: {e}")
    from .sync import Worker
    Worker(machine.pump_console_input, 0)
    server = None
    if "api_sock" in opts:
        try:
            server = start_api(machine, opts["api_sock"], opts.get("name", "vm"), protocol)
        except Exception as e:  # noqa: BLE001 - OSError, SocketInUse: one line either way
            return fail(status.VMM_ERROR, f"cannot serve the API on {opts['api_sock']}: "
                                          f"{getattr(e, 'strerror', None) or e}")
    try:
        return supervise(machine, opts.get("stop_timeout", 10.0))
    finally:
        if server is not None:
            server.close()


def start_api(machine, path: str, name: str, protocol: str):
    """Serve the HTTP API (after the vCPUs run, so it never delays the boot)."""
    from ..api.server import ApiServer
    from .api_handler import VmmApi
    server = ApiServer(path, VmmApi(machine, name, protocol))
    server.start()
    return server


def boot(kvm, config):
    """Build the VM, load the kernel and start the vCPUs."""
    from ..boot import layout
    from .loader import plan_boot, read_file
    from .machine import Machine

    kernel = read_file(config.kernel, "kernel")
    initrd = read_file(config.initrd, "initrd") if config.initrd else None
    from ..boot.acpi import build_acpi_tables
    acpi = build_acpi_tables(config.vcpus)
    plan = plan_boot(kernel, initrd, config.cmdline, config.memory_mib * layout.MiB, acpi.rsdp_addr,
                     config.boot)
    machine = Machine(kvm, config)
    machine.load(plan, acpi.blob, acpi.base)
    machine.start()
    return machine, plan.protocol


def supervise(machine, stop_timeout: float) -> int:
    """Wait for the guest to stop; SIGTERM/SIGINT ask it politely (Ctrl-Alt-Del), then force."""
    asked: list[float] = []

    def on_stop_signal(signum, _frame):
        import time
        if asked:
            machine.request_exit(status.KILLED, f"stopped by signal {signum} (second request)")
            return
        asked.append(time.monotonic())
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


def main() -> None:
    code = run(sys.argv[1:])
    sys.stdout.flush()
    # vCPU threads may still sit in KVM_RUN: leave without joining them.
    os._exit(code)


if __name__ == "__main__":
    main()
