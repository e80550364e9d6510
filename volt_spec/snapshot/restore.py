"""Start a Machine from a snapshot instead of booting: verify, map memory, put state back.

Refused with a one-line reason, before any VM is created: a CRC mismatch, an unknown
format version, a missing or short memory file, a different CPU vendor or KVM kind,
or a different XSAVE size.
"""

from __future__ import annotations

import os
import time

from ..kvm.flavour import cpu_identity, kvm_flavour
from .format import MEMORY_FILE, SnapshotError, parse, read_raw, verify
from .memory_file import MemoryFileError, map_memory
from .vcpu_state import VcpuStateError, restore_vcpu_msrs_and_events, restore_vcpu_registers
from .vm_state import elapsed_ns, restore_vm


def check_compatible(state: dict, where: str, xsave_size: int | None = None) -> None:
    host = state.get("meta", {}).get("host", {})
    here_kvm = kvm_flavour()
    if host.get("kvm") != here_kvm:
        raise SnapshotError(f"{where}: taken on {host.get('kvm')} KVM, this host has {here_kvm} KVM")
    cpu = cpu_identity()
    if host.get("cpu_vendor") != cpu["vendor"]:
        raise SnapshotError(f"{where}: taken on a {host.get('cpu_vendor')} CPU, this host has {cpu['vendor']}")
    if host.get("cpu_model") not in (None, cpu["model_name"]):
        raise SnapshotError(f"{where}: taken on a {host.get('cpu_model')!r}, this host has a {cpu['model_name']!r} "
                            f"(the guest may rely on features this CPU lacks)")
    saved = state.get("meta", {}).get("xsave_size")
    if xsave_size is not None and saved is not None and int(saved) != xsave_size:
        raise SnapshotError(f"{where}: XSAVE area of {saved} bytes, this host uses {xsave_size}")


def load(snapshot_dir: str, xsave_size: int | None = None):
    """(state, memory mapped MAP_PRIVATE, checks) -- nothing created in KVM yet.

    `checks()` verifies the CRC and the host's compatibility; the caller runs it while
    KVM registers the memory (a 5 ms ioctl on another thread) and before any vCPU runs,
    so a bad snapshot is still refused with nothing started. If the memory cannot even be
    mapped, the CRC is checked first so the reason given is the real one.
    """
    raw, path = read_raw(snapshot_dir)
    doc, state = parse(raw, path)

    def checks() -> None:
        verify(raw, doc, state, path)
        check_compatible(state, snapshot_dir, xsave_size)

    try:
        memory = map_memory(os.path.join(snapshot_dir, state["memory"].get("file", MEMORY_FILE)),
                            state["memory"])
    except MemoryFileError as e:
        checks()
        raise SnapshotError(str(e)) from None
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as e:
        checks()
        raise SnapshotError(f"{snapshot_dir}: bad memory layout in state.json ({e})") from None
    return state, memory, checks


def restore_into(machine, state: dict, clock_mode: str = "continue") -> list[int]:
    """Create the vCPUs and restore vCPU, VM and device state, in the documented order."""
    refused: list[int] = []
    try:
        # While the memory-slot thread runs (KVM_SET_USER_MEMORY_REGION, ~5 ms): everything
        # that does not name guest RAM.
        machine.create_vcpus()
        for vcpu, vstate in zip(machine.vcpus, state["vcpus"]):
            restore_vcpu_registers(vcpu, vstate)
        machine.restore_devices(state.get("devices", {}))
        machine.wait_memory()
        # Guest RAM registered: MSRs (kvmclock, async PF point into it) and events, then the
        # VM-wide irqchip, PIT and clock.
        advance = elapsed_ns(state["vm"], clock_mode)
        tsc_set_at = time.monotonic_ns()
        for vcpu, vstate in zip(machine.vcpus, state["vcpus"]):
            refused += restore_vcpu_msrs_and_events(vcpu, vstate, advance)
        restore_vm(machine.vm, state["vm"], advance, tsc_set_at)
    except VcpuStateError as e:
        raise SnapshotError(str(e)) from None
    except (OSError, KeyError, ValueError) as e:
        raise SnapshotError(f"restoring VM state: {e}") from None
    return refused
