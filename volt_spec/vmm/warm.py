"""A warm VMM (`volt-vmm --warm`): a VM of one shape made ahead, waiting to become a snapshot's VM.

Made ahead: every module a restore imports, the VM (TSS, identity map, irqchip, PIT), its vCPUs,
and guest RAM -- anonymous and untouched, so it costs page tables, not memory -- registered in
KVM's memory slots. It holds no VM's files: `PUT /snapshot/load` brings them as file descriptors
(SCM_RIGHTS), named by index in the body, `{"fds": {"state": 0, "memory": 1, "fingerprint": 2}}`
(fingerprint, memory.verified, optional: without it the memory file is read in full); the memory
file is mapped MAP_FIXED|MAP_PRIVATE over the registered RAM (restore.load_fds: no memory-slot
ioctl), the vCPU and device state is put back (persist.restore) and the vCPUs run.

A warm VMM becomes one VM. A load refused before anything changed (bad fds, a snapshot of
another shape: a 400 naming both) leaves it warm; one that fails after the memory was mapped
ends it (a 400, then the VMM exits), so a pool never hands out a half-restored VM.
"""

from __future__ import annotations

import os
import time

from ..api.errors import ApiError
from ..snapshot.format import SnapshotError, plain_file_name
from . import status
from .machine import Machine
from .sync import Flag

WARM = "Warm"
FD_ROLES = ("state", "memory", "fingerprint")
REQUIRED_ROLES = ("state", "memory")
LOAD_FIELDS = {"fds", "clock", "resume_vm", "snapshot_id", "_arrived_ns"}
PREIMPORT = ("snapshot.b64", "snapshot.fingerprint", "snapshot.memory_file", "snapshot.restore",
             "snapshot.vcpu_state", "snapshot.vm_state", "vmm.builder", "vmm.persist", "vmm.api_handler")
ALL_RUNNING_WAIT_S = 1.0
MAX_FDS = 8                     # fds one request may pass (a state, a memory file, a fingerprint, ...)


def prepare(kvm, config) -> Machine:
    """The VM of `config.machine`'s shape with its vCPUs and registered RAM; every restore module imported."""
    from ..kvm.memory import _mmap_fn
    from .config import host_memory_mib
    for module in PREIMPORT:
        __import__(f"volt_spec.{module}")
    _mmap_fn()                                      # libc's mmap looked up now, not at the load
    config.machine.check_host(host_memory_mib(), kvm.max_vcpus())
    machine = Machine(kvm, config.machine)
    try:
        machine.create_vcpus()
        preset_cpuid(machine)
        machine.wait_memory()
        rehearse(machine)
        machine.prestart()
    except BaseException:
        machine.close()
        raise
    return machine


def preset_cpuid(machine: Machine) -> None:
    """Each vCPU's CPUID as a cold boot of this shape sets it (builder.set_boot_vcpus): a snapshot of
    this shape taken on this host records the same, and its load skips the SET_CPUID2 (0.25 ms on PVM)."""
    from ..boot.cpuid import vcpu_cpuid
    from ..snapshot.vcpu_state import pack_cpuid
    supported = machine.kvm.get_supported_cpuid()
    n = machine.config.vcpus
    for vcpu in machine.vcpus:
        vcpu.set_cpuid2(vcpu_cpuid(supported, vcpu.index, n))
    machine.cpuid_set = [pack_cpuid(vcpu.get_cpuid2()) for vcpu in machine.vcpus]


def rehearse(machine: Machine) -> None:
    """Run a load's code once on the VM's own fresh state (saved, encoded, decoded and put back:
    nothing changes), so the real load pays none of a new process's first-call costs (ctypes
    structure classes, lazy imports, cold interpreter paths): without it, measured, the first load
    in a process took 2-5x as long as the next."""
    from ..snapshot import format as fmt
    from ..snapshot.vcpu_state import restore_vcpu, save_vcpu, xsave_size
    from ..snapshot.vm_state import restore_vm, save_vm
    indices, xsize = machine.kvm.get_msr_index_list(), xsave_size(machine.kvm)
    state = {"vcpus": [save_vcpu(v, indices, xsize) for v in machine.vcpus], "vm": save_vm(machine.vm),
             "devices": machine.devices.save()}
    raw = fmt.encode(state)
    doc, parsed = fmt.parse(raw, "rehearsal")
    fmt.verify(raw, doc, parsed, "rehearsal")
    for vcpu, saved in zip(machine.vcpus, parsed["vcpus"]):
        restore_vcpu(vcpu, saved)
    machine.devices.restore(parsed["devices"])
    restore_vm(machine.vm, parsed["vm"])


class WarmApi:
    """The API of a warm VMM until its load: GET /vm (state "Warm" and its shape), PUT /snapshot/load."""

    def __init__(self, kvm, config, machine: Machine) -> None:
        from ..snapshot.vcpu_state import xsave_size
        from .config import host_memory_mib
        self.kvm, self.config, self.machine = kvm, config, machine
        self.host = (host_memory_mib(), kvm.max_vcpus())
        self.xsave_size = xsave_size(kvm)
        self.started = Flag()                     # set once the VM runs (or the VMM is spent)
        self.spent = ""                           # why a failed load ended this VMM
        self.vm_api = None                        # the VM's API once loaded (main.serve_warm swaps it in)

    def get_vm(self) -> dict:
        if self.vm_api is not None:            # loaded: a request routed here before the swap
            return self.vm_api.get_vm()
        c = self.config.machine
        return {"name": self.config.name, "state": WARM, "pid": os.getpid(),
                "shape": {"vcpus": c.vcpus, "memory_mib": c.memory_mib}}

    def snapshot_load(self, body: dict, fds: tuple = ()) -> dict | None:
        arrived = body.get("_arrived_ns") or time.perf_counter_ns()
        if self.started.is_set():
            raise ApiError(400, "this warm VMM has already loaded a snapshot")
        options = load_options(body, fds)
        timing = {"load_arrived_ns": arrived}      # the load's steps, for GET /vm (benchmarks/pool.py)
        memory_fd = os.dup(options["memory"])     # the fds passed live only during this call
        try:
            state, checks = self._map(options, memory_fd)
        except BaseException:
            os.close(memory_fd)
            raise
        timing["mapped_ns"] = time.perf_counter_ns()
        try:
            self._restore(state, checks, options, timing)
        except (SnapshotError, ValueError, OSError) as e:
            self._spend(str(e))
            raise ApiError(400, f"{e} (this warm VMM is spent and exits)") from None
        self._launch(options, timing)
        return None

    def _map(self, options: dict, memory_fd: int):
        from ..snapshot.restore import load_fds
        fingerprint = read_small(options.get("fingerprint"))
        try:
            return load_fds(options["state"], memory_fd, fingerprint, self.machine.memory, self.machine.config.vcpus,
                            self.xsave_size, self.host, where=f"snapshot {options['snapshot_id']}")
        except SnapshotError as e:
            if any(r.backing is not None for r in self.machine.memory.regions):
                self._spend(str(e))
                raise ApiError(400, f"{e} (this warm VMM is spent and exits)") from None
            raise ApiError(400, str(e)) from None

    def _restore(self, state: dict, checks, options: dict, timing: dict) -> None:
        """The rest of a restore (builder.build_from_snapshot's, on the VM made ahead)."""
        from . import persist
        checks()
        timing["checked_ns"] = time.perf_counter_ns()
        machine = self.machine
        _, machine.boot_source = persist.machine_of(state, options["snapshot_id"])
        if state.get("virtio"):
            raise SnapshotError(f"snapshot {options['snapshot_id']} has virtio devices; a warm VMM does not "
                                f"restore disks or NICs yet (restore it cold)")
        persist.restore(machine, state, options["clock"])
        machine.booted_from = f"snapshot {options['snapshot_id']}"
        machine.boot_protocol = machine.boot_source.boot or "snapshot"
        timing["restored_ns"] = time.perf_counter_ns()

    def _launch(self, options: dict, timing: dict) -> None:
        from .builder import launch
        machine = self.machine
        machine.timing = timing
        machine.devices.add_console_tap(first_byte_stamp(machine.timing))
        launch(machine, restored=True)
        machine.timing["launched_ns"] = time.perf_counter_ns()
        # Wait (the GIL released) for the vCPU threads to reach KVM_RUN: carrying on here would
        # hold them off the GIL for up to its switch interval (5 ms).
        machine.all_running.wait(ALL_RUNNING_WAIT_S)
        if options["resume_vm"] is False:
            machine.pause(keep=True)
        from .api_handler import VmmApi
        self.vm_api = VmmApi(machine, self.config.name, self.config.api.state_dir)
        self.started.set()

    def _spend(self, reason: str) -> None:
        """A failed load after the memory was mapped: this VMM ends, once the reply is sent."""
        self.spent = reason
        self.machine.request_exit(status.VMM_ERROR, f"warm VMM spent: {reason}")

    def after_reply(self) -> None:
        """The server sent a reply: if it said the load failed for good, main() may now exit."""
        if self.spent:
            self.started.set()


def load_options(body: dict, fds: tuple) -> dict:
    """The load body's fields, checked: the fds by role (indexes into those passed), the clock,
    resume_vm, and the snapshot's id (a plain name, for GET /vm's booted_from)."""
    unknown = sorted(set(body) - LOAD_FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)} (a warm VMM loads by fds, not snapshot_path)"
                       if "snapshot_path" in unknown else f"unknown field(s) {', '.join(unknown)}")
    named = body.get("fds")
    if not isinstance(named, dict) or set(named) - set(FD_ROLES) or not set(REQUIRED_ROLES) <= set(named):
        raise ApiError(400, 'fds must name the passed fds by role: {"state": i, "memory": j[, "fingerprint": k]}')
    out: dict = {}
    for role, index in named.items():
        if type(index) is not int or not 0 <= index < len(fds):
            raise ApiError(400, f"fds.{role}: {index!r} is not the index of one of the {len(fds)} fds passed")
        out[role] = fds[index]
    clock = body.get("clock", "continue")
    if clock not in ("continue", "realtime"):
        raise ApiError(400, f"clock must be \"continue\" or \"realtime\", not {clock!r}")
    snapshot_id = body.get("snapshot_id", "snapshot")
    if not plain_file_name(snapshot_id):
        raise ApiError(400, f"snapshot_id {snapshot_id!r} is not a plain name")
    resume = body.get("resume_vm", True)
    if not isinstance(resume, bool):
        raise ApiError(400, "resume_vm must be true or false")
    return dict(out, clock=clock, snapshot_id=snapshot_id, resume_vm=resume)


def read_small(fd: int | None, limit: int = 4096) -> bytes | None:
    """The first `limit` bytes of a passed fd (the memory.verified line), None without one."""
    if fd is None:
        return None
    try:
        return os.pread(fd, limit, 0)
    except OSError as e:
        raise ApiError(400, f"the fingerprint fd cannot be read: {e.strerror}") from None


def first_byte_stamp(timing: dict):
    """A console tap that records when the restored guest's first serial byte came out."""
    def tap(data: bytes) -> None:
        if "first_serial_ns" not in timing and data:
            timing["first_serial_ns"] = time.perf_counter_ns()
    return tap
