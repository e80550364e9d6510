"""One microVM: KVM VM + guest RAM + devices + one thread per vCPU.

Build order (each step is one or a few ioctls; the slow one is memory registration):
create VM -> TSS/identity map -> irqchip + PIT -> memory slots -> kernel, ACPI and
boot structures into RAM -> vCPUs (CPUID, MSRs, LAPIC LINTs, registers) -> devices.
"""

from __future__ import annotations

import ctypes
import os
import _thread

import _signal as signal  # the C module: `signal` would pull in enum (~4 ms before KVM_RUN)

from ..boot import layout
from ..jail import enter_device_thread
from ..kvm import exits as x
from ..kvm import structs as s
from ..kvm.memory import GuestMemory
from ..kvm.system import Kvm
from ..kvm.vcpu import KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, Vcpu
from ..kvm.vm import Vm
from . import status
from .config import VmConfig
from .loader import BootPlan
from .sync import Flag, Worker

MSR_IA32_MISC_ENABLE = 0x1A0
MISC_ENABLE_FAST_STRING = 1
APIC_LVT0 = 0x350
APIC_LVT1 = 0x360
APIC_MODE_NMI = 0x4
APIC_MODE_EXTINT = 0x7
KICK_SIGNAL = signal.SIGUSR1
PAUSE_TIMEOUT_S = 5.0

# VM lifecycle (cloud-hypervisor style): one table of legal transitions.
NOT_STARTED, RUNNING, PAUSED, STOPPED = "NotStarted", "Running", "Paused", "Stopped"
VALID_TRANSITIONS = {
    NOT_STARTED: (RUNNING, STOPPED),
    RUNNING: (PAUSED, STOPPED),
    PAUSED: (RUNNING, STOPPED),
    STOPPED: (),
}


class InvalidStateTransition(RuntimeError):
    """A lifecycle request that is not legal in the VM's current state."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(f"the VM is {old}; it cannot become {new}")
        self.old, self.new = old, new


def _ignore_kick(signum, frame) -> None:
    """SIGUSR1 only interrupts KVM_RUN (EINTR); nothing to do."""


def install_kick_handler() -> None:
    """The handler must exist before any vCPU is kicked; Python allows it only from the main thread."""
    try:
        signal.signal(KICK_SIGNAL, _ignore_kick)
    except ValueError:
        pass            # not the main thread: main() installed it already


class KvmIrqLine:
    """A device's interrupt output wired to one GSI through KVM_IRQ_LINE."""

    __slots__ = ("vm", "gsi")

    def __init__(self, vm: Vm, gsi: int) -> None:
        self.vm, self.gsi = vm, gsi

    def set_level(self, level: bool) -> None:
        self.vm.irq_line(self.gsi, level)


class _Shifted:
    """A device seen through a second, non-contiguous port: offsets shifted by `delta`."""

    __slots__ = ("dev", "delta")

    def __init__(self, dev, delta: int) -> None:
        self.dev, self.delta = dev, delta

    def read(self, offset: int) -> int:
        return self.dev.read(offset + self.delta)

    def write(self, offset: int, value: int) -> None:
        self.dev.write(offset + self.delta, value)


HISTORY_MAX = 64 << 10


class StdoutSink:
    """Guest serial bytes straight to fd 1: no buffering, so a pipe reader sees each at once."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.broken = False
        self.count = 0
        self.taps: list = []            # callables(bytes) that also see the output (snapshot policy)
        self.history: bytearray | None = bytearray()   # output until the first tap (replayed to it)

    def __call__(self, data: bytes) -> None:
        self.count += len(data)
        if self.history is not None and len(self.history) < HISTORY_MAX:
            self.history += data
        for tap in self.taps:
            tap(data)
        if self.broken:
            return
        try:
            os.write(self.fd, data)
        except (BrokenPipeError, OSError):
            self.broken = True


class Machine:
    """A built VM, ready to run."""

    def __init__(self, kvm: Kvm, config: VmConfig, out=None, memory: GuestMemory | None = None) -> None:
        self.kvm = kvm
        self.config = config
        self.mem_size = config.memory_mib * layout.MiB
        self.exit_event = Flag()
        self.exit_code: int | None = None
        self.exit_reason = ""
        self.vcpus: list[Vcpu] = []
        self.exit_counts: list[int] = [0] * config.vcpus
        self.threads: list[Worker] = []
        self.out = out or StdoutSink()
        self.bus_lock = _thread.allocate_lock()
        self.snapshot_lock = _thread.allocate_lock()     # one snapshot at a time (API or policy)
        self.policy = None                                # a PolicyEngine once one is configured
        self.virtio = None                                # VirtioDevices when disks/NICs are attached
        self.state = NOT_STARTED
        self._state_lock = _thread.allocate_lock()
        self._pause_requested = False
        self._hold: object | None = None
        self._parked = 0
        self._all_parked = Flag()
        self._resume = Flag()

        self.vm = Vm(kvm.create_vm())
        self.vm.set_tss_addr(layout.KVM_TSS_ADDR)
        self.vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        self.vm.create_pit2()
        self.memory = memory or GuestMemory.anonymous(layout.ram_ranges(self.mem_size))
        # KVM_SET_USER_MEMORY_REGION takes ~5 ms here, mostly in the kernel with the GIL released:
        # run it beside the rest of the build and join before the first KVM_RUN.
        self._memory_worker = Worker(self._register_memory)
        self._make_devices()

    def _register_memory(self) -> None:
        for slot, region in enumerate(self.memory.regions):
            self.vm.set_user_memory_region(slot, region.gpa, region.size, region.host_addr)

    def wait_memory(self) -> None:
        """Join the memory-slot thread; raise what it raised."""
        self._memory_worker.join()

    # -- building ------------------------------------------------------------------------------
    def _make_devices(self) -> None:
        from ..devices.acpi_pm import AcpiSleep
        from ..devices.bus import MmioBus, PioBus, Sink
        from ..devices.i8042 import I8042
        from ..devices.rtc import Rtc
        from ..devices.serial import Serial
        import time

        self.serial = Serial(KvmIrqLine(self.vm, layout.COM1_IRQ), self.out)
        self.i8042 = I8042(KvmIrqLine(self.vm, layout.I8042_IRQ), self._on_reset)
        self.acpi_sleep = AcpiSleep(self._on_sleep)
        self.pio = PioBus()
        self.pio.insert(layout.COM1_PORT, 8, self.serial)
        self.pio.insert(layout.I8042_DATA_PORT, 1, self.i8042)
        self.pio.insert(layout.I8042_CMD_PORT, 1, _Shifted(self.i8042, 4))
        self.pio.insert(layout.ACPI_SLEEP_CONTROL_PORT, 2, self.acpi_sleep)
        self.rtc = Rtc(time.time)
        self.pio.insert(layout.RTC_INDEX_PORT, 2, self.rtc)
        self.pio.insert_noise_sinks()
        for com in (0x2F8, 0x3E8, 0x2E8):           # absent COM2-4: quiet, not "unknown"
            self.pio.insert(com, 8, Sink())
        self.mmio = MmioBus()

    def load(self, plan: BootPlan, acpi_blob: bytes, acpi_base: int) -> None:
        """Write the boot plan and ACPI tables into RAM and create every vCPU at its entry state."""
        for addr, data in plan.writes:
            self.memory.write(addr, data)
        self.memory.write(acpi_base, acpi_blob)
        mmap_size = self.kvm.get_vcpu_mmap_size()
        supported = self.kvm.get_supported_cpuid()
        from ..boot.cpuid import vcpu_cpuid
        for i in range(self.config.vcpus):
            vcpu = Vcpu(self.vm.create_vcpu(i), i, mmap_size)
            vcpu.set_cpuid2(vcpu_cpuid(supported, i, self.config.vcpus))
            vcpu.set_msrs([(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING)])
            self._set_lints(vcpu)
            if i == 0:
                self._set_entry(vcpu, plan)
            else:
                vcpu.set_mp_state(KVM_MP_STATE_UNINITIALIZED)   # APs wait for INIT/SIPI
            self.vcpus.append(vcpu)

    @staticmethod
    def _set_lints(vcpu: Vcpu) -> None:
        """LINT0 = ExtINT (the PIC), LINT1 = NMI, as firmware leaves them."""
        lapic = vcpu.get_lapic()
        regs = bytearray(lapic.regs)
        for off, mode in ((APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)):
            v = int.from_bytes(regs[off:off + 4], "little")
            v = (v & ~0x700) | (mode << 8)
            regs[off:off + 4] = v.to_bytes(4, "little")
        ctypes.memmove(ctypes.addressof(lapic), bytes(regs), len(regs))
        vcpu.set_lapic(lapic)

    @staticmethod
    def _set_entry(vcpu: Vcpu, plan: BootPlan) -> None:
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

    def create_vcpus(self) -> None:
        """Bare vCPUs for a restore: their state comes from the snapshot."""
        mmap_size = self.kvm.get_vcpu_mmap_size()
        for i in range(self.config.vcpus):
            self.vcpus.append(Vcpu(self.vm.create_vcpu(i), i, mmap_size))

    def device_table(self) -> dict:
        """The stateful devices, by the name their state is saved under."""
        return {"serial": self.serial, "i8042": self.i8042, "acpi_sleep": self.acpi_sleep,
                "rtc": self.rtc}

    def save_devices(self) -> dict:
        from ..snapshot.device_state import encode_state
        with self.bus_lock:
            return {name: encode_state(dev.save()) for name, dev in self.device_table().items()}

    def restore_devices(self, states: dict) -> None:
        from ..snapshot.device_state import decode_state
        table = self.device_table()
        unknown = set(states) - set(table)
        if unknown:
            raise ValueError(f"snapshot has state for unknown device(s): {', '.join(sorted(unknown))}")
        with self.bus_lock:
            for name, dev in table.items():
                if name in states:
                    try:
                        dev.restore(decode_state(states[name]))
                    except (AttributeError, TypeError, ValueError) as e:
                        raise ValueError(f"device {name}: bad saved state ({e})") from None

    # -- running -------------------------------------------------------------------------------
    def _transition(self, new: str) -> None:
        if new not in VALID_TRANSITIONS[self.state]:
            raise InvalidStateTransition(self.state, new)
        self.state = new

    def start(self) -> None:
        self.wait_memory()
        install_kick_handler()
        self._transition(RUNNING)
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
            if not self._all_parked.wait(PAUSE_TIMEOUT_S):
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
        self._resume = Flag()
        self._all_parked = Flag()
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
        self._resume.set()

    def _park(self, vcpu: Vcpu) -> None:
        """In a vCPU thread after an interrupted KVM_RUN: wait here while the VM is paused."""
        with self.bus_lock:
            self._parked += 1
            if self._parked == len(self.vcpus):
                self._all_parked.set()
        resume = self._resume
        while not resume.wait(0.5):
            if self.exit_event.is_set():
                break
        with self.bus_lock:
            self._parked -= 1

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

    def send_ctrl_alt_del(self) -> None:
        with self.bus_lock:
            self.i8042.send_ctrl_alt_del()

    def add_console_tap(self, tap) -> None:
        """Let `tap` see the console from the very first byte: what came before is replayed."""
        with self.bus_lock:
            history = self.out.history
            if history:
                tap(bytes(history))
            self.out.history = None
            self.out.taps.append(tap)

    def console_input(self, data: bytes) -> int:
        """Host keystrokes into the UART's receive FIFO (raises its interrupt); bytes accepted."""
        with self.bus_lock:
            return self.serial.enqueue_input(data)

    def pump_console_input(self, fd: int = 0) -> None:
        """Feed fd (stdin) to the UART until EOF; runs in its own thread."""
        while not self.exit_event.is_set():
            try:
                data = os.read(fd, 4096)
            except OSError:
                return
            if not data:
                return
            self.console_input(data)

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

    def _vcpu_loop(self, vcpu: Vcpu) -> None:
        enter_device_thread()                 # the process's seccomp filter and this thread's narrower one
        pio, mmio, lock = self.pio, self.mmio, self.bus_lock
        counts, index = self.exit_counts, vcpu.index
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
