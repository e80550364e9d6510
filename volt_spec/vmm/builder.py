"""VmmConfig -> a built Machine, ready to launch: by a cold boot, or from a snapshot.

Build order for a boot (each step one or a few ioctls; memory registration, the slow one, runs
on its own thread from the moment the VM exists): VM -> devices -> ACPI and the boot plan ->
RAM writes -> vCPUs (CPUID, MSRs, LAPIC LINTs, entry registers) -> policy. For a restore the
snapshot is read and its shape checked before the VM is created; its CRC, host compatibility
and memory are checked while KVM registers the memory, before any vCPU exists (persist.py
orders the rest). Nothing runs until `launch`.
"""

from __future__ import annotations

import ctypes
import os

from ..kvm import structs as s
from ..kvm.vcpu import KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED
from .config import VmmConfig, host_memory_mib
from .machine import Machine
from .vmgenid import write_new_id

MSR_IA32_MISC_ENABLE = 0x1A0
MISC_ENABLE_FAST_STRING = 1
APIC_LVT0 = 0x350
APIC_LVT1 = 0x360
APIC_MODE_NMI = 0x4
APIC_MODE_EXTINT = 0x7


def build(kvm, config: VmmConfig) -> Machine:
    """A cold boot: kernel, initrd, ACPI tables, devices and the BSP's entry state in a new VM."""
    from ..boot.acpi import build_acpi_tables
    from .loader import plan_boot, read_file
    boot = config.boot_source
    config.machine.check_host(host_memory_mib(), kvm.max_vcpus())
    kernel = read_file(boot.kernel, "kernel")
    initrd = read_file(boot.initrd, "initrd") if boot.initrd else None
    machine = Machine(kvm, config.machine)
    try:
        machine.boot_source = boot
        devices = machine.devices
        devices.attach_virtio(config.drives, config.network, config.virtio, config.name, machine.exit_event)
        cmdline, descs = boot.cmdline, []
        if devices.virtio is not None and config.virtio.announce == "cmdline":
            cmdline = f"{cmdline} {devices.virtio.cmdline_words()}".strip()
        elif devices.virtio is not None:
            descs = devices.virtio.acpi_descs()
        acpi = build_acpi_tables(config.machine.vcpus, virtio=descs)
        plan = plan_boot(kernel, initrd, cmdline, machine.mem_size, acpi.rsdp_addr, boot.boot)
        for addr, data in plan.writes:
            machine.memory.write(addr, data)
        machine.memory.write(acpi.base, acpi.blob)
        write_new_id(machine)
        set_boot_vcpus(machine, plan)
        machine.boot_protocol = plan.protocol
        attach_policy(machine, config.policy)
    except BaseException:
        machine.close()
        raise
    return machine


def build_from_snapshot(kvm, config: VmmConfig, into=None) -> Machine:
    """A restore of `config.restore`: memory mapped MAP_PRIVATE from the snapshot, every component's
    state put back (persist.py). `into` is a VM made ahead (machine.create_vm: a warm pool's)."""
    from ..snapshot.restore import load
    from ..snapshot.vcpu_state import xsave_size
    from . import persist
    restore = config.restore
    state, memory, checks = load(restore.snapshot_dir, xsave_size(kvm), (host_memory_mib(), kvm.max_vcpus()),
                                 full_check=restore.verify)
    try:
        machine_config, boot_source = persist.machine_of(state, restore.snapshot_dir)
        machine_config.track_dirty_pages = config.machine.track_dirty_pages
        machine_config.compress_snapshots = config.machine.compress_snapshots
        machine = Machine(kvm, machine_config, memory=memory, vm=into)
    except BaseException as e:
        memory.close()
        if not isinstance(e, Exception):
            raise
        checks()                        # a corrupt file: say so rather than what is missing
        raise
    try:
        checks()            # CRC, host compatibility and memory, while KVM registers the memory
        machine.boot_source = boot_source
        if state.get("virtio"):
            from .virtio import VirtioDevices
            drives, nets = VirtioDevices.configs_for_restore(state["virtio"], restore.snapshot_dir,
                                                             restore.disk_overrides, restore.tap_overrides,
                                                             restore.mac_overrides, machine.disk_copies)
            machine.devices.attach_virtio(drives, nets, config.virtio, config.name, machine.exit_event)
        persist.restore(machine, state, restore.clock)
        machine.booted_from = f"snapshot {os.path.basename(os.path.normpath(restore.snapshot_dir))}"
        if memory.filling_method:
            machine.booted_from += f" (compressed memory, {memory.filling_method})"
        if machine.dirty is not None and not memory.filling_method:    # the next diff is on the snapshot restored
            machine.lineage = persist.lineage_of(os.path.basename(os.path.normpath(restore.snapshot_dir)),
                                                 state["memory"])
        machine.boot_protocol = boot_source.boot or "snapshot"
        attach_policy(machine, config.policy)
    except BaseException:
        machine.close()
        raise
    return machine


def launch(machine: Machine, restored: bool = False) -> None:
    """Start the vCPUs, then the virtio I/O thread; after a restore, serve what the guest queued
    just before the snapshot."""
    machine.start()
    virtio = machine.devices.virtio
    if virtio is not None:
        virtio.start()
        if restored:
            virtio.kick_all()


def attach_policy(machine: Machine, policy) -> None:
    """The snapshot policy, watching the console before the first guest instruction (so a
    `ready` marker is never printed before anyone looks)."""
    if policy is None:
        return
    from .policy import PolicyEngine
    machine.policy = PolicyEngine(machine, policy, machine.booted_from)
    machine.devices.add_console_tap(machine.policy.on_console)


# -- the vCPUs' entry state on a cold boot -------------------------------------------------------
def set_boot_vcpus(machine: Machine, plan) -> None:
    """Every vCPU at its power-on state: the BSP at the kernel's entry, the APs waiting for INIT/SIPI."""
    from ..boot.cpuid import vcpu_cpuid
    machine.create_vcpus()
    supported = machine.kvm.get_supported_cpuid()
    n = machine.config.vcpus
    for vcpu in machine.vcpus:
        vcpu.set_cpuid2(vcpu_cpuid(supported, vcpu.index, n))
        vcpu.set_msrs([(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING)])
        set_lints(vcpu)
        if vcpu.index == 0:
            set_entry(vcpu, plan)
        else:
            vcpu.set_mp_state(KVM_MP_STATE_UNINITIALIZED)


def set_lints(vcpu) -> None:
    """LINT0 = ExtINT (the PIC), LINT1 = NMI, as firmware leaves them."""
    lapic = vcpu.get_lapic()
    regs = bytearray(lapic.regs)
    for off, mode in ((APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)):
        v = int.from_bytes(regs[off:off + 4], "little")
        v = (v & ~0x700) | (mode << 8)
        regs[off:off + 4] = v.to_bytes(4, "little")
    ctypes.memmove(ctypes.addressof(lapic), bytes(regs), len(regs))
    vcpu.set_lapic(lapic)


def set_entry(vcpu, plan) -> None:
    sregs = vcpu.get_sregs()
    for name, value in plan.sregs.items():
        if name in ("gdt", "idt"):
            table = getattr(sregs, name)
            table.base, table.limit = value
        elif isinstance(value, dict):
            seg = getattr(sregs, name)
            for field, v in value.items():
                setattr(seg, field, v)
        else:
            setattr(sregs, name, value)
    vcpu.set_sregs(sregs)
    regs = s.KvmRegs()
    regs.rflags = 0x2
    for name, value in plan.regs.items():
        setattr(regs, name, value)
    vcpu.set_regs(regs)
    vcpu.set_mp_state(KVM_MP_STATE_RUNNABLE)

