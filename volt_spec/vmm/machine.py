"""One microVM's lifecycle and vCPU threads: the KVM VM, its guest RAM, its devices (devices.py).

The VM is made here (create VM -> TSS/identity map -> irqchip + PIT -> memory slots, the slow
ioctl on a thread of its own); what goes into it (kernel, vCPU entry state, or a snapshot's
state) is the builder's (builder.py, persist.py). The lifecycle is one table of legal
transitions; every change of state goes through it.
"""

from __future__ import annotations

import _thread
from time import perf_counter_ns

import _signal as signal  # the C module: `signal` would pull in enum (~4 ms before KVM_RUN)

from .. import layout
from ..jail import enter_device_thread
from ..kvm import exits as x
from ..kvm.memory import GuestMemory
from ..kvm.system import Kvm
from ..kvm.vcpu import Vcpu
from ..kvm.vm import Vm
from . import status
from .config import MachineConfig
from .sync import Flag, Worker

KICK_SIGNAL = signal.SIGUSR1
# A vCPU parks within microseconds of its kick unless a device callback is stuck, but a loaded
# host can stall a thread for seconds (the TCG lane runs VMMs 10-50x slower), and a policy
# snapshot refused for it is not retried. Firecracker waits 30 s for a vCPU's answer as well.
PAUSE_TIMEOUT_S = 30.0

# VM lifecycle (cloud-hypervisor style): one table of legal transitions.
NOT_STARTED, RUNNING, PAUSED, STOPPED = "NotStarted", "Running", "Paused", "Stopped"
VALID_TRANSITIONS = {
    NOT_STARTED: (RUNNING, STOPPED),
    RUNNING: (PAUSED, STOPPED),
    PAUSED: (RUNNING, STOPPED),
    STOPPED: (),
}


class PauseRound:
    """One pause: the vCPUs parked in it and the flags that end it. A vCPU counts only in the
    round it was kicked for, so a round never counts one still leaving the round before (two
    pauses in quick succession: a hold released, then a snapshot's pause)."""

    __slots__ = ("parked", "all_parked", "resume")

    def __init__(self) -> None:
        self.parked = 0
        self.all_parked = Flag()
        self.resume = Flag()


class InvalidStateTransition(RuntimeError):
    """A lifecycle request that is not legal in the VM's current state."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(f"the VM is {old}; it cannot become {new}")
        self.old, self.new = old, new


def create_vm(kvm: Kvm) -> Vm:
    """A VM with its TSS, identity map, in-kernel irqchip and PIT: no memory, no vCPUs yet
    (a warm pool can create it ahead of the restore that fills it)."""
    vm = Vm(kvm.create_vm())
    vm.set_tss_addr(layout.KVM_TSS_ADDR)
    vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDR)
    vm.create_irqchip()
    vm.create_pit2()
    return vm


def _ignore_kick(signum, frame) -> None:
    """SIGUSR1 only interrupts KVM_RUN (EINTR); nothing to do."""


def install_kick_handler() -> None:
    """The handler must exist before any vCPU is kicked; Python allows it only from the main thread."""
    try:
        signal.signal(KICK_SIGNAL, _ignore_kick)
    except ValueError:
        pass            # not the main thread: main() installed it already


class Machine:
    """A VM: created here, filled by the builder, run and stopped through the lifecycle table."""

    def __init__(self, kvm: Kvm, config: MachineConfig, memory: GuestMemory | None = None,
                 vm: Vm | None = None, out=None) -> None:
        self.kvm = kvm
        self.config = config
        self.mem_size = config.memory_mib * layout.MiB
        self.exit_event = Flag()
        self.exit_code: int | None = None
        self.exit_reason = ""
        self.vcpus: list[Vcpu] = []
        self.exit_counts: list[int] = [0] * config.vcpus
        self.run_entered_ns: list[int] = [0] * config.vcpus   # perf_counter_ns of each vCPU's first KVM_RUN
        self.all_running = Flag()                         # set by the last vCPU thread to get there
        self._go: Flag | None = None                      # what prestarted vCPU threads wait for
        self.cpuid_set: list[str] | None = None           # each vCPU's CPUID set ahead (packed; warm.py)
        self.generation_id = b""                          # the VM generation ID the guest sees (vmgenid.py)
        self.timing: dict | None = None                   # a warm load's stamps (vmm/warm.py)
        self.disk_copies: dict[str, str] = {}             # a restore's disks put back: name -> reflink | sparse copy
        self.threads: list[Worker] = []
        self.snapshot_lock = _thread.allocate_lock()     # one snapshot at a time (API or policy)
        self.policy = None                                # the PolicyEngine, once one is configured
        self.boot_protocol = "pvh"                        # what the builder booted (or restored) by
        self.booted_from = "cold"                         # "cold" or "snapshot ID"
        self.boot_source = None                           # its BootSourceConfig (a restore's: the snapshot's)
        self.state = NOT_STARTED
        self._state_lock = _thread.allocate_lock()
        self._pause_requested = False
        self._hold: object | None = None
        self._round = PauseRound()

        self.vm = vm or create_vm(kvm)
        self.memory = memory or GuestMemory.anonymous(layout.ram_ranges(self.mem_size))
        self.dirty = None                                 # a DirtyTracker when diff snapshots are wanted
        self.lineage: dict | None = None                  # what a diff of this memory is on (persist.py)
        if config.track_dirty_pages:
            from .dirty import DirtyTracker
            self.dirty = DirtyTracker(self.vm, self.memory)
        # KVM_SET_USER_MEMORY_REGION takes ~5 ms here, mostly in the kernel with the GIL released:
        # run it beside the rest of the build and join before the first KVM_RUN.
        self._memory_worker = Worker(self._register_memory)
        from .devices import Devices
        self.devices = Devices(self.vm, self.memory, self._on_reset, self._on_sleep, out)
        self.bus_lock = self.devices.lock

    def _register_memory(self) -> None:
        flags = self.dirty.flags if self.dirty is not None else 0
        for slot, region in enumerate(self.memory.regions):
            self.vm.set_user_memory_region(slot, region.gpa, region.size, region.host_addr, flags)

    def wait_memory(self) -> None:
        """Join the memory-slot thread; raise what it raised."""
        self._memory_worker.join()

    def create_vcpus(self) -> None:
        """The vCPUs, bare: their state comes from the builder (entry registers) or a snapshot.
        Once only: a warm VMM's exist before the restore that fills them."""
        if self.vcpus:
            return
        mmap_size = self.kvm.get_vcpu_mmap_size()
        for i in range(self.config.vcpus):
            self.vcpus.append(Vcpu(self.vm.create_vcpu(i), i, mmap_size))

    def close(self) -> None:
        """Release the VM (vCPU fds, VM fd, guest memory) after it stopped or failed to build."""
        self.wait_memory_quietly()
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        self.vm.close()
        self.memory.close()

    def wait_memory_quietly(self) -> None:
        try:
            self.wait_memory()
        except OSError:
            pass

    # -- running -------------------------------------------------------------------------------
    def _transition(self, new: str) -> None:
        if new not in VALID_TRANSITIONS[self.state]:
            raise InvalidStateTransition(self.state, new)
        self.state = new

    def prestart(self) -> None:
        """Start the vCPU threads now, each parked before its first KVM_RUN until `start`: a warm
        VMM's, so that its load pays no thread start-up."""
        self._go = Flag()
        for vcpu in self.vcpus:
            self.threads.append(Worker(self._vcpu_loop, vcpu, self._go))

    def start(self) -> None:
        self.wait_memory()
        install_kick_handler()
        self._transition(RUNNING)
        if self._go is not None:
            self._go.set()
            return
        for vcpu in self.vcpus:
            self.threads.append(Worker(self._vcpu_loop, vcpu))

    def pause(self, keep: bool = False) -> None:
        """Stop every vCPU outside KVM_RUN, with any pending I/O exit completed. Idempotent.
        `keep` (a user's pause) also turns a hold (see `hold`) into a plain pause."""
        with self._state_lock:
            if keep:
                self._hold = None
            if self.state != PAUSED:
                self._begin_pause()
            if not self._round.all_parked.wait(PAUSE_TIMEOUT_S):
                self._hold = None
                self._resume_locked()
                raise RuntimeError(f"vCPUs did not pause within {PAUSE_TIMEOUT_S:g} s")

    def hold(self) -> object | None:
        """Pause without waiting, from anywhere, a vCPU thread in a device callback included:
        the vCPUs park at their next exit (this one as soon as its callback returns), so a
        snapshot taken next holds the guest exactly as it was here. Returns a token for
        `release`, or None when the VM is not running or someone else is pausing it."""
        if not self._state_lock.acquire(False):
            return None
        try:
            if self.state != RUNNING:
                return None
            self._begin_pause()
            self._hold = token = object()
            return token
        finally:
            self._state_lock.release()

    def release(self, token: object | None) -> None:
        """End a hold: resume, unless a user paused the VM since (then it stays paused)."""
        with self._state_lock:
            if token is not None and self._hold is token:
                self._hold = None
                self._resume_locked()

    def _begin_pause(self) -> None:
        self._transition(PAUSED)
        self._round = PauseRound()
        self._pause_requested = True
        self.kick_all()

    def resume(self) -> None:
        """Let paused vCPUs run again. Idempotent."""
        with self._state_lock:
            self._hold = None
            self._resume_locked()

    def _resume_locked(self) -> None:
        if self.state == RUNNING:
            return
        self._transition(RUNNING)
        self._pause_requested = False
        for vcpu in self.vcpus:
            vcpu.set_immediate_exit(False)
        self._round.resume.set()

    def _park(self, vcpu: Vcpu) -> None:
        """In a vCPU thread after an interrupted KVM_RUN: wait here while the VM is paused."""
        pause = self._round
        with self.bus_lock:
            pause.parked += 1
            if pause.parked == len(self.vcpus):
                pause.all_parked.set()
        while not pause.resume.wait(0.5):
            if self.exit_event.is_set():
                break

    def request_exit(self, code: int, reason: str) -> None:
        """Record the first reason the VM stops, wake the main thread and kick the vCPUs."""
        with self.bus_lock:
            self._stopping(code, reason)
        self.kick_all()

    def kick_all(self) -> None:
        me = _thread.get_ident()
        for vcpu, t in zip(self.vcpus, self.threads):
            vcpu.set_immediate_exit(True)
            if t.ident is not None and t.ident != me and t.is_alive():
                try:
                    signal.pthread_kill(t.ident, KICK_SIGNAL)
                except ProcessLookupError:
                    pass

    def _on_sleep(self, slp_typ: int) -> None:
        if slp_typ == layout.ACPI_S5_SLP_TYP:
            self._stopping(status.OK, "guest powered off")

    def _on_reset(self) -> None:
        self._stopping(status.OK, "guest requested a reset")

    def _stopping(self, code: int, reason: str) -> None:
        # Called with bus_lock held (from a device callback): record and kick without re-locking.
        if self.exit_code is None:
            self.exit_code, self.exit_reason = code, reason
        self.exit_event.set()
        for vcpu in self.vcpus:
            vcpu.set_immediate_exit(True)

    def _vcpu_loop(self, vcpu: Vcpu, go: Flag | None = None) -> None:
        enter_device_thread()                 # the process's seccomp filter and this thread's narrower one
        while go is not None and not go.wait(0.5):
            if self.exit_event.is_set():      # a prestarted thread of a VM that never started
                return
        pio, mmio, lock = self.devices.pio, self.devices.mmio, self.bus_lock
        counts, index = self.exit_counts, vcpu.index
        self.run_entered_ns[index] = perf_counter_ns()
        if all(self.run_entered_ns):
            self.all_running.set()
        try:
            while not self.exit_event.is_set():
                ex = vcpu.run()
                counts[index] += 1
                cls = type(ex)
                if cls is x.IoOut:
                    with lock:
                        pio.write(ex.port, ex.data)
                elif cls is x.IoIn:
                    with lock:
                        data = pio.read(ex.port, ex.size)
                    vcpu.complete_io_in(data)
                elif cls is x.MmioWrite:
                    with lock:
                        mmio.write(ex.addr, ex.data)
                elif cls is x.MmioRead:
                    with lock:
                        data = mmio.read(ex.addr, ex.size)
                    vcpu.complete_mmio_read(data)
                elif cls is x.Interrupted:
                    if self._pause_requested:
                        self._park(vcpu)
                    elif not self.exit_event.is_set():
                        vcpu.set_immediate_exit(False)      # a stray kick: run on, unless a
                        if self._pause_requested or self.exit_event.is_set():   # pause raced it
                            vcpu.set_immediate_exit(True)
                else:
                    self._fatal_exit(vcpu, ex)
                    return
        except Exception as e:  # noqa: BLE001 - a vCPU thread must report, never die silently
            self.request_exit(status.VMM_ERROR, f"vcpu {vcpu.index}: {e}")

    def _fatal_exit(self, vcpu: Vcpu, ex: x.Exit) -> None:
        where = f"vcpu {vcpu.index}"
        try:
            where += f", rip={vcpu.get_regs().rip:#x}"
        except OSError:
            pass
        match ex:
            case x.Shutdown():
                self.request_exit(status.GUEST_CRASH, f"guest triple fault ({where})")
            case x.InternalError():
                self.request_exit(status.GUEST_CRASH, f"KVM internal error: {ex.describe()} ({where})")
            case x.FailEntry():
                self.request_exit(status.GUEST_CRASH,
                                  f"VM entry failed, hardware reason {ex.reason:#x} ({where})")
            case x.SystemEvent(type=t) if t == x.KVM_SYSTEM_EVENT_SHUTDOWN:
                self.request_exit(status.OK, "guest powered off")
            case x.SystemEvent(type=t) if t == x.KVM_SYSTEM_EVENT_RESET:
                self.request_exit(status.OK, "guest requested a reset")
            case x.SystemEvent():
                self.request_exit(status.GUEST_CRASH, f"guest crashed (system event {ex.type}, {where})")
            case x.Hlt():
                self.request_exit(status.GUEST_CRASH, f"guest halted with no interrupt source ({where})")
            case _:
                self.request_exit(status.VMM_ERROR, f"unhandled vCPU exit {ex!r} ({where})")
