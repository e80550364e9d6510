"""The one place that orders a snapshot's save and restore; each component saves and restores itself.

Save (the guest paused only for the capture and the fork of the memory writer): pause -> quiesce
the virtio I/O -> vCPUs (TSC read first, on vCPU 0) -> VM (irqchip, PIT, clock) -> legacy
devices -> virtio transports and disk copies -> fork the memory writer -> resume; then the
memory checksum, state.json and the fsyncs, and the rename that makes it visible (snapshot/create.py).

Restore (the builder has mapped the memory and created the VM): while the memory-slot thread
registers guest RAM, everything that does not name it (vCPU registers, legacy devices); then MSRs
(kvmclock and async PF point into RAM) and events, the VM-wide irqchip, PIT and clock, a new VM
generation ID and its interrupt (vmgenid.py), and the virtio transports.
"""

from __future__ import annotations

import os
import time

from ..snapshot.format import SnapshotError
from . import vmgenid
from .config import BootSourceConfig, MachineConfig

_msr_indices: list[int] | None = None     # KVM_GET_MSR_INDEX_LIST: the host's, asked once


def machine_of(state: dict, where: str) -> tuple[MachineConfig, BootSourceConfig]:
    """The machine a (shape-checked) snapshot state describes, and the boot source it recorded."""
    try:
        meta, boot = state["meta"], state.get("boot") or {}
        machine = MachineConfig(vcpus=int(meta["vcpus"]), memory_mib=int(meta["memory_mib"]))
        text = {k: boot.get(k) if isinstance(boot.get(k), str) else None for k in ("kernel", "initrd", "cmdline", "boot")}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SnapshotError(f"{where}: bad metadata in state.json ({e})") from None
    return machine, BootSourceConfig(text["kernel"] or "", text["initrd"], text["cmdline"] or "", text["boot"])


def restore_ahead(machine, state: dict, lapic: bool = True) -> None:
    """The part of a restore that depends on the state alone, not on when it runs: each vCPU's
    registers (the LAPIC, whose timer counts from when it is set, only with `lapic`), and the
    legacy devices. A primed warm VMM (warm.py) does it before the load request comes."""
    from ..snapshot.vcpu_state import VcpuStateError, restore_vcpu_registers
    try:
        machine.create_vcpus()
        preset = machine.cpuid_set or [None] * len(machine.vcpus)
        for vcpu, vstate, cpuid in zip(machine.vcpus, state["vcpus"], preset):
            restore_vcpu_registers(vcpu, vstate, cpuid, lapic=lapic)
        machine.devices.restore(state.get("devices", {}))
    except VcpuStateError as e:
        raise SnapshotError(str(e)) from None
    except (OSError, KeyError, ValueError) as e:
        raise SnapshotError(f"restoring VM state: {e}") from None


def restore(machine, state: dict, clock_mode: str = "continue", ahead: bool = False) -> list[int]:
    """Put every component's state back, in the order above; returns MSRs KVM refused. `ahead`:
    restore_ahead already ran for this state."""
    from ..snapshot.vcpu_state import VcpuStateError, restore_lapic, restore_vcpu_msrs_and_events
    from ..snapshot.vm_state import elapsed_ns, restore_vm
    refused: list[int] = []
    if not ahead:
        restore_ahead(machine, state)
    try:
        if ahead:
            for vcpu, vstate in zip(machine.vcpus, state["vcpus"]):
                restore_lapic(vcpu, vstate)
        machine.wait_memory()
        advance = elapsed_ns(state["vm"], clock_mode)
        tsc_set_at = time.monotonic_ns()
        for vcpu, vstate in zip(machine.vcpus, state["vcpus"]):
            refused += restore_vcpu_msrs_and_events(vcpu, vstate, advance)
        restore_vm(machine.vm, state["vm"], advance, tsc_set_at)
        vmgenid.write_new_id(machine)          # a new generation: every restore, every clone
        vmgenid.notify(machine)
    except VcpuStateError as e:
        raise SnapshotError(str(e)) from None
    except (OSError, KeyError, ValueError) as e:
        raise SnapshotError(f"restoring VM state: {e}") from None
    if machine.devices.virtio is not None:
        machine.devices.virtio.restore(state["virtio"])
    return refused


def save(machine, dest: str, meta: dict | None = None, resume: bool = True, diff: bool = False) -> dict:
    """Write a snapshot of `machine` to the new directory `dest`; returns a summary. With `diff`
    (and dirty tracking, and a parent: the last snapshot taken or restored) only the pages
    changed since the parent are written; otherwise all of them."""
    from ..snapshot import create
    from ..snapshot.memory_file import memory_digest
    machine.memory.wait_filled()                         # a compressed restore's memory all in (lazy_memory.py)
    dest, tmp = create.begin(dest)
    parent, machine.lineage = machine.lineage, None       # a failed snapshot breaks the chain
    try:
        xsize, was_running = _xsave_size(machine), machine.state == "Running"
        staged = None
        if diff and parent is not None:                   # pre-copy what the guest wrote so far
            staged = create.start_diff(machine.memory, tmp, machine.dirty.collect(guest_only=True))
        t0 = time.perf_counter()
        machine.pause()
        try:
            captured, memory_writer = _capture(machine, tmp, xsize, staged)
        finally:
            if resume and was_running:
                machine.resume()
        paused_ms = (time.perf_counter() - t0) * 1000
        memory = memory_writer()
        if machine.config.compress_snapshots and staged is None:
            memory.update(create.compress_memory(tmp))      # its checksum too, in the one read
        else:
            memory["sha256"] = memory_digest(os.path.join(tmp, create.MEMORY_FILE))
        if staged is not None:
            memory["diff"] = {"parent": parent["id"], "parent_sha256": parent["sha256"],
                              "depth": parent["depth"] + 1, "tracking": machine.dirty.method}
        c, boot = machine.config, machine.boot_source or BootSourceConfig("")
        state = {
            "meta": dict(meta or {}, created=time.time(), memory_mib=c.memory_mib, vcpus=c.vcpus,
                         xsave_size=xsize, host=create.host_identity(), paused_ms=round(paused_ms, 3)),
            "boot": {"kernel": boot.kernel, "initrd": boot.initrd, "cmdline": boot.cmdline, "boot": boot.boot},
            "memory": memory, **captured}
        create.commit(tmp, dest, state)
    except BaseException:
        create.discard(tmp)
        raise
    if machine.dirty is not None:
        machine.lineage = lineage_of(os.path.basename(dest), memory)
    return {"id": os.path.basename(dest), "path": dest, "paused_ms": round(paused_ms, 3),
            "size_bytes": create.disk_usage(dest), "logical_bytes": memory["size"],
            "memory_data_bytes": memory["data_bytes"], "created": state["meta"]["created"],
            **({"memory_compressed_bytes": memory["compressed"]["bytes"]} if "compressed" in memory else {}),
            "kind": "diff" if staged is not None else "full",
            **({"parent": parent["id"]} if staged is not None else {})}


def diff_wanted(machine, full_every: int | None = None) -> bool:
    """Whether the next snapshot can be a diff: the VM tracks dirty pages, has a parent (the last
    snapshot taken or restored, none after a failed one) and, with `full_every` K, the parent is
    fewer than K - 1 diffs from its full snapshot."""
    lineage = machine.lineage
    return (machine.dirty is not None and lineage is not None
            and (full_every is None or lineage["depth"] + 1 < full_every))


def lineage_of(snapshot_id: str, memory: dict) -> dict:
    """What a diff on this snapshot records of it: its id, its memory checksum, its chain depth."""
    depth = memory.get("diff", {}).get("depth", 0)
    return {"id": snapshot_id, "sha256": memory["sha256"], "depth": depth}


def _xsave_size(machine) -> int:
    from ..snapshot.vcpu_state import xsave_size
    global _msr_indices
    if _msr_indices is None:
        _msr_indices = machine.kvm.get_msr_index_list()
    return xsave_size(machine.kvm)


def _capture(machine, tmp: str, xsize: int, staged=None):
    """Everything but memory, the dirty record taken (reset either way: a full snapshot starts the
    next diff's count) and the memory writer started -- a diff's last pages copied into `staged` --
    while the guest is paused and the device I/O threads hold still (so memory and the virtqueues
    agree). Returns (captured, the writer's wait)."""
    from contextlib import nullcontext
    from ..snapshot.create import start_memory_writer
    from ..snapshot.vcpu_state import save_vcpu
    from ..snapshot.vm_state import save_vm
    virtio = machine.devices.virtio
    with virtio.quiesced() if virtio is not None else nullcontext():
        tsc_read_at: list[int] = []
        vcpus = [save_vcpu(v, _msr_indices, xsize, tsc_read_at if v.index == 0 else None) for v in machine.vcpus]
        captured = {"vcpus": vcpus, "vm": save_vm(machine.vm, tsc_read_at[0] if tsc_read_at else None),
                    "devices": machine.devices.save()}
        if virtio is not None:
            captured["virtio"] = virtio.save(tmp)
        dirty = machine.dirty.collect() if machine.dirty is not None else None
        if staged is None:
            return captured, start_memory_writer(machine.memory, tmp)
        staged.add(dirty)
        return captured, staged.wait
