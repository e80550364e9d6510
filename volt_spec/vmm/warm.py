"""A warm VMM (`volt-vmm --warm`): a VM of one shape made ahead, waiting to become a snapshot's VM.

Made ahead: every module a restore imports, the VM (TSS, identity map, irqchip, PIT), its vCPUs,
and guest RAM -- anonymous and untouched, so it costs page tables, not memory -- registered in
KVM's memory slots. It holds no VM's files: `PUT /snapshot/load` brings them as file descriptors
(SCM_RIGHTS), named by index in the body, `{"fds": {"state": 0, "memory": 1, "fingerprint": 2}}`
(fingerprint, memory.verified, optional: without it the memory file is read in full); the memory
file is mapped MAP_FIXED|MAP_PRIVATE over the registered RAM (restore.load_fds: no memory-slot
ioctl), the vCPU and device state is put back (persist.restore) and the vCPUs run.

A load with `"prepare": true` does the part that depends only on the files (read, parse, shape,
CRC, host compatibility, the memory's fingerprint, the mapping, the vCPU registers but the
LAPIC, the legacy devices: persist.restore_ahead) and leaves the VMM warm, primed: a later load
of the very same files (fstat: inode, size, mtime, ctime) starts from there, so what remains is
what depends on the moment (LAPICs and their timers, MSRs and the TSC, events, the VM's clock
and irqchip, a new generation ID) and the vCPUs started (zeroboot's template, kept ready).

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
FD_ROLES = ("state", "memory", "fingerprint", "state_dir")
DEVICE_ROLES = ("disk:", "tap:")           # + a device name: that disk's or NIC's tap's fd
REQUIRED_ROLES = ("state", "memory")
LOAD_FIELDS = {"fds", "clock", "resume_vm", "snapshot_id", "_arrived_ns", "vm", "prepare"}
PREIMPORT = ("snapshot.b64", "snapshot.fingerprint", "snapshot.memory_file", "snapshot.restore",
             "snapshot.vcpu_state", "snapshot.vm_state", "vmm.builder", "vmm.persist", "vmm.api_handler", "vmm.config")
# Not ahead: virtio (2.6 MiB of private memory a warm VMM; imported when a prepare brings a snapshot
# with devices), the snapshot policy (google-re2: 7 MiB) and names (`re`: 1.3 MiB, 5 ms): a warm VMM
# of untouched memory should cost little (benchmarks/pool.py compares its USS with a cold VMM's).
ALL_RUNNING_WAIT_S = 1.0
MAX_FDS = 32                    # fds one request may pass (state, memory, fingerprint, state dir, disks, taps)


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
        self.primed = None                        # (files_key, state) of a load with "prepare": true

    def get_vm(self) -> dict:
        if self.vm_api is not None:            # loaded: a request routed here before the swap
            return self.vm_api.get_vm()
        c = self.config.machine
        return {"name": self.config.name, "state": WARM, "pid": os.getpid(),
                "shape": {"vcpus": c.vcpus, "memory_mib": c.memory_mib}}

    def snapshot_load(self, body: dict, fds: tuple = ()) -> dict | None:
        handled = time.perf_counter_ns()
        arrived = body.get("_arrived_ns") or handled
        if self.started.is_set():
            raise ApiError(400, "this warm VMM has already loaded a snapshot")
        options = load_options(body, fds)
        # the load's steps, for GET /vm (benchmarks/pool.py)
        timing = {"load_arrived_ns": arrived, "handler_ns": handled, "options_ns": time.perf_counter_ns()}
        key = files_key(options)
        primed = self.primed is not None and self.primed[0] == key
        if primed:
            state, checks = self.primed[1], None     # prepared ahead from these very files
            timing["primed"] = True
        else:
            memory_fd = os.dup(options["memory"])     # the fds passed live only during this call
            try:
                state, checks = self._map(options, memory_fd)
            except BaseException:
                os.close(memory_fd)
                raise
        self.primed = None
        timing["mapped_ns"] = time.perf_counter_ns()
        try:
            if checks is not None:
                checks()
            timing["checked_ns"] = time.perf_counter_ns()
            if options["prepare"]:
                from . import persist
                if state.get("virtio"):
                    from . import virtio   # noqa: F401 - imported now, not at the load
                persist.restore_ahead(self.machine, state, lapic=False)
                self.primed = (key, state)
                return None
            self._restore(state, options, timing, ahead=primed)
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

    def _restore(self, state: dict, options: dict, timing: dict, ahead: bool = False) -> None:
        """The rest of a restore (builder.build_from_snapshot's, on the VM made ahead); `ahead`:
        a prepare put the registers and legacy devices back already."""
        from . import persist
        machine = self.machine
        _, machine.boot_source = persist.machine_of(state, options["snapshot_id"])
        if options["vm"] is not None:
            self._become(options["vm"], options)
        if state.get("virtio"):
            self._attach_virtio(state["virtio"], options)
        persist.restore(machine, state, options["clock"], ahead=ahead)
        machine.booted_from = f"snapshot {options['snapshot_id']}"
        machine.boot_protocol = machine.boot_source.boot or "snapshot"
        if (options["vm"] or {}).get("policy") is not None:
            from ..fsutil import local_path
            from .builder import attach_policy
            policy = options["vm"]["policy"]
            policy.snapshot_dir = local_path(policy.snapshot_dir or options["vm"]["state_dir"])
            attach_policy(machine, policy)
        timing["restored_ns"] = time.perf_counter_ns()

    def _become(self, vm: dict, options: dict) -> None:
        """Take on the identity of the VM volt makes of this one: its name, its state directory
        (handed over as a directory fd, reached through /proc/self/fd: it is not in this jail) and
        its snapshot policy (attach_policy, once booted_from is known). The fds passed live only
        during the request: kept as dups."""
        from ..fsutil import register_fd
        self.config.name = vm["name"]
        self.config.api.state_dir = vm["state_dir"]
        register_fd(vm["state_dir"], os.dup(options["state_dir"]))

    def _attach_virtio(self, saved: list, options: dict) -> None:
        """The snapshot's disks and NICs, on the files and taps volt handed over (every one named:
        a snapshot's own paths are never used), the writable disks already put back by volt."""
        from ..devices.virtio.tap import register
        from ..fsutil import register_fd
        from .virtio import VirtioDevices
        vm = options["vm"] or {}
        disks, taps = vm.get("disks", {}), vm.get("taps", {})
        for entry in saved:
            name, kind = entry.get("name"), entry.get("kind")
            if (kind == "blk" and name not in disks) or (kind != "blk" and name not in taps):
                raise SnapshotError(f"snapshot {options['snapshot_id']} has {'disk' if kind == 'blk' else 'NIC'} "
                                    f"{name!r}, and the load handed over none by that name")
        for name, path in disks.items():
            register_fd(path, os.dup(options[f"disk:{name}"]))
        for name, tap in taps.items():
            register(tap, os.dup(options[f"tap:{name}"]))
        drives, nets = VirtioDevices.configs_for_restore(saved, None, disks, taps, vm.get("macs"))
        self.machine.devices.attach_virtio(drives, nets, self.config.virtio, self.config.name,
                                           self.machine.exit_event)

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
    if not isinstance(named, dict) or not all(fd_role(r) for r in named) or not set(REQUIRED_ROLES) <= set(named):
        raise ApiError(400, 'fds must name the passed fds by role: {"state": i, "memory": j[, "fingerprint": k, '
                            '"state_dir": l, "disk:NAME": m, "tap:NAME": n]}')
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
    prepare = body.get("prepare", False)
    if not isinstance(prepare, bool):
        raise ApiError(400, "prepare must be true or false")
    return dict(out, clock=clock, snapshot_id=snapshot_id, resume_vm=resume, prepare=prepare,
                vm=vm_section(body.get("vm"), out))


def files_key(options: dict) -> tuple:
    """What identifies the state and memory files passed: a prepared load is used only for the very
    same files, unchanged (inode, size, mtime and ctime: what a memory fingerprint holds)."""
    out = []
    for role in ("state", "memory"):
        st = os.fstat(options[role])
        out += [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return tuple(out)


def fd_role(role: object) -> bool:
    if role in FD_ROLES:
        return True
    from .config import VmmConfigError, device_name
    prefix = next((p for p in DEVICE_ROLES if isinstance(role, str) and role.startswith(p)), None)
    try:
        return prefix is not None and bool(device_name(role[len(prefix):], "fd role"))
    except VmmConfigError:
        return False


VM_FIELDS = {"name", "state_dir", "disks", "taps", "macs", "policy"}


def vm_section(value: object, fds: dict) -> dict | None:
    """The load's `vm`: who this VMM becomes (name, state_dir: a path checked like --state-dir, its
    fd passed as "state_dir"), its disks {NAME: path} and taps {NAME: tap}, each passed as a
    "disk:NAME" / "tap:NAME" fd, its MACs, and its snapshot policy. None: stay anonymous."""
    if value is None:
        return None
    from .config import PolicyConfig, VmmConfigError, device_name, mac_text, path_text, tap_name
    if not isinstance(value, dict) or set(value) - VM_FIELDS or "name" not in value or "state_dir" not in value:
        raise ApiError(400, f"vm must be an object with name and state_dir (and {', '.join(sorted(VM_FIELDS - {'name', 'state_dir'}))})")
    paths = [value["state_dir"], *_obj(value, "disks").values()]
    if not all(isinstance(p, str) and os.path.isabs(p) for p in paths):
        raise ApiError(400, "vm.state_dir and vm.disks must be absolute paths")
    try:
        out = {"name": device_name(value["name"], "vm.name"), "state_dir": path_text(value["state_dir"], "vm.state_dir"),
               "disks": {device_name(k, "vm.disks"): path_text(v, f"vm.disks.{k}") for k, v in _obj(value, "disks").items()},
               "taps": {device_name(k, "vm.taps"): tap_name(v, f"vm.taps.{k}") for k, v in _obj(value, "taps").items()},
               "macs": {device_name(k, "vm.macs"): mac_text(v, f"vm.macs.{k}") for k, v in _obj(value, "macs").items()},
               "policy": PolicyConfig.from_dict(value["policy"], "vm.policy") if value.get("policy") else None}
    except VmmConfigError as e:
        raise ApiError(400, str(e)) from None
    missing = (["state_dir"] if "state_dir" not in fds else []) + [f"disk:{n}" for n in out["disks"] if f"disk:{n}" not in fds] \
        + [f"tap:{n}" for n in out["taps"] if f"tap:{n}" not in fds]
    if missing:
        raise ApiError(400, f"vm names {', '.join(missing)} but no fd was passed for it")
    return out


def _obj(value: dict, key: str) -> dict:
    got = value.get(key, {})
    if not isinstance(got, dict):
        raise ApiError(400, f"vm.{key} must be an object of NAME: VALUE")
    return got


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
