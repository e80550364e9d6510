"""Snapshot and restore latency of the test guest: volt-vmm, phase by phase, and beside QEMU.

Every figure is min / median / max over N runs (`--runs`, QEMU `--qemu-runs`), in ms.

1. Restore library call, in-process: the product's own restore, `builder.build_from_snapshot(kvm,
   VmmConfig(restore=RestoreConfig(DIR)))`, without `launch` (no vCPU ever runs); after each call
   the memory-slot thread is joined and the VM destroyed (`machine.close()`).
   - "phases" (1a): the steps of that very call, timed as they run inside it, in its order. For
     the call only, the benchmark wraps the module and class attributes the call reaches
     (PHASE_HOOKS: `snapshot.restore.load` and what it calls -- read_raw, parse, check_shape,
     map_memory --, the `checks()` closure `load` returns and what it calls -- verify,
     check_compatible, check_memory --, `machine.create_vm`, `Machine.__init__`,
     `Devices.__init__`, `persist.restore`, `Machine.create_vcpus`, `restore_vcpu_registers`,
     `Devices.restore`, `Machine.wait_memory`, `restore_vcpu_msrs_and_events`, `restore_vm`, ...)
     and puts the originals back afterwards. The table is the call tree in the order each step
     first ran (indented by nesting); each row is that step's own time, its nested steps'
     excluded, so "...: its own code" rows are the code of that function no hook splits
     further, and the main-thread rows add up to the whole (instrumented) call. A hook the call
     no longer reaches is reported, and its time stays in its caller's row. The memory
     registration (`Machine._register_memory`, KVM_SET_USER_MEMORY_REGION per slot) runs on a
     thread of its own beside the rest: its row is marked and not in the sum; the main thread's
     wait for it is the `Machine.wait_memory` row. The "ioctl" column is the time spent inside
     the unavoidable KVM ioctl wrappers (below) by that step's own thread during that step.
   - "whole call" (1b): the same call, timed end to end with only the ioctl wrappers installed
     (no phase hooks: their few microseconds per step are not in it), beside the sum of its
     unavoidable ioctls in the same call: KVM_CREATE_VM, TSS/identity map, CREATE_IRQCHIP,
     CREATE_PIT2, SET_USER_MEMORY_REGION, CREATE_VCPU, every vCPU SET_* and SET_IRQCHIP/PIT2/CLOCK
     (not KVM_CHECK_EXTENSION or GET_VCPU_MMAP_SIZE: queries a VMM could ask once). "timed inside
     the call" sums them as they ran in that very call, on either thread: memory registration
     runs beside the rest of the build, and its figure also holds the wait for the GIL while
     the main thread works, i.e. it is the memory thread's share of the critical path; call
     minus that sum is the work on the critical path that is not a KVM ioctl. Target: <= 1 ms.
     The instrumented call of 1a (the same iteration) is shown beside it, for the hooks' cost.
2. Spawn -> running: `volt-vmm --restore DIR` spawned, until the first `tick` line reaches
   our end of its stdout pipe (the guest ticks every 10 ms, so this is <= 10 ms after it runs).
3. Per memory size (`--sizes`, guest running `volt.mem=64`, a ring-3 memory workload):
   snapshot create = wall time of PUT /snapshot/create; pause = the guest's pause (`paused_ms`
   in the reply: vCPU + device state and memory written, vCPUs stopped); restore = (2) for that
   snapshot. Target: restore flat in memory size (largest / smallest <= 1.3).
4. Cold boot (`--kernel`) vs restore: spawn -> first `tick` line, same command line.
5. QEMU (`qemu-system-x86_64 -M microvm`, when installed) with the very same guest ELF:
   save = QMP `stop` + `migrate exec:cat > FILE` until `query-migrate` says completed (the guest
   is stopped throughout: QEMU's pause; the default 128 MiB/s migration throttle is lifted with
   `migrate-set-parameters max-bandwidth`, else 64 MiB of guest data alone take 0.5 s); restore = spawn with `-incoming exec:cat FILE`, poll
   QMP `query-status` until the migration is in, `cont`, until the first `tick` line.

usage: python benchmarks/restore.py [--runs N] [--qemu-runs N] [--sizes 128,1024,4096]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from volt_spec.api.client import ApiClient  # noqa: E402
from volt_spec.guest.build import build_guest  # noqa: E402
from volt_spec.kvm.flavour import kvm_flavour  # noqa: E402
from volt_spec.kvm.system import Kvm  # noqa: E402
from volt_spec.kvm.vcpu import Vcpu  # noqa: E402
from volt_spec.kvm.vm import Vm  # noqa: E402
from volt_spec.runner.vmctl import vmm_command  # noqa: E402
from volt_spec.snapshot import restore as snapshot_restore, vcpu_state, vm_state  # noqa: E402
from volt_spec.vmm import builder, machine as vmm_machine, persist  # noqa: E402
from volt_spec.vmm.config import RestoreConfig, VmmConfig  # noqa: E402
from volt_spec.vmm.devices import Devices  # noqa: E402
from volt_spec.vmm.machine import Machine  # noqa: E402

from common import (SPAWN_TIMEOUT_S, Console, Qmp, QMP_POLL_S, jailed_popen, median, ms, spawn_until,  # noqa: E402
                    stats)

TICK_CMDLINE = "volt.ticks=0 volt.tick_ms=10"
MEM_WORKLOAD_MIB = 64
MEM_CMDLINE = f"{TICK_CMDLINE} volt.mem={MEM_WORKLOAD_MIB}"
TICK_LINE = re.compile(rb"^tick \d+ ", re.M)
MEM_OK_LINE = re.compile(r"^mem-ok [0-9a-f]{16}")
QEMU_MAX_BANDWIDTH = 1 << 40     # bytes/s: lifts QEMU's default 128 MiB/s migration throttle

# The ioctl wrappers whose time is "unavoidable" for a restore (class, method).
UNAVOIDABLE_IOCTLS: tuple[tuple[type, str], ...] = (
    (Kvm, "create_vm"),
    (Vm, "set_tss_addr"), (Vm, "set_identity_map_addr"), (Vm, "create_irqchip"), (Vm, "create_pit2"),
    (Vm, "set_user_memory_region"), (Vm, "create_vcpu"),
    (Vcpu, "set_cpuid2"), (Vcpu, "set_mp_state"), (Vcpu, "set_sregs"), (Vcpu, "set_regs"),
    (Vcpu, "set_xsave"), (Vcpu, "set_xcrs"), (Vcpu, "set_debugregs"), (Vcpu, "set_lapic"),
    (Vcpu, "set_msrs"), (Vcpu, "set_vcpu_events"),
    (Vm, "set_irqchip"), (Vm, "set_pit2"), (Vm, "set_clock"),
)

# What build_from_snapshot calls, as (owner, attribute, phase): each is looked up through its
# owner at call time (a module global, an import inside a function, a method), so wrapping the
# owner's attribute times the product's own step where it runs. One phase may have several hooks.
HOST_LIMITS = "host limits (XSAVE size, MemTotal, max vCPUs)"
MEMORY_THREAD = "memory registration (SET_USER_MEMORY_REGION) [memory thread, beside the rest]"
PHASE_HOOKS: tuple[tuple[object, str, str], ...] = (
    (builder, "build_from_snapshot", "build_from_snapshot(): its own code"),
    (vcpu_state, "xsave_size", HOST_LIMITS),
    (builder, "host_memory_mib", HOST_LIMITS),
    (Kvm, "max_vcpus", HOST_LIMITS),
    (snapshot_restore, "load", "snapshot.restore.load(): its own code (memory file name, checks closure)"),
    (snapshot_restore, "read_raw", "state.json read"),
    (snapshot_restore, "parse", "state.json parse (JSON, format, version)"),
    (snapshot_restore, "check_shape", "state shape check (vCPUs, memory size and regions)"),
    (snapshot_restore, "map_memory", "memory map (memory.snap MAP_PRIVATE)"),
    (persist, "machine_of", "persist.machine_of (machine config from the state)"),
    (Machine, "__init__", "Machine(): its own code (fields, memory thread start)"),
    (vmm_machine, "create_vm", "VM create (KVM_CREATE_VM, TSS, identity map, irqchip, PIT2)"),
    (Machine, "_register_memory", MEMORY_THREAD),
    (Devices, "__init__", "device construction"),
    (snapshot_restore, "verify", "state.json CRC"),
    (snapshot_restore, "check_compatible", "host compatibility (CPU vendor and model, KVM kind, XSAVE size)"),
    (snapshot_restore, "check_memory", "memory file fingerprint check"),
    (persist, "restore", "persist.restore(): its own code (clock advance, ...)"),
    (Machine, "create_vcpus", "vCPU create"),
    (vcpu_state, "restore_vcpu_registers", "vCPU registers (CPUID2 .. LAPIC)"),
    (Devices, "restore", "device state"),
    (Machine, "wait_memory", "wait for the memory thread (join)"),
    (vcpu_state, "restore_vcpu_msrs_and_events", "vCPU MSRs + events"),
    (vm_state, "restore_vm", "irqchip + PIT2 + clock (restore_vm)"),
)
CHECKS_PHASE = "checks() (returned by load): its own code"


# -- small helpers ------------------------------------------------------------------------------

class Patches:
    """Attributes replaced for a while and always put back (also after an exception)."""

    def __init__(self) -> None:
        self._saved: list[tuple[object, str, object]] = []

    def replace(self, owner: object, name: str, make: Callable[[Callable], Callable]) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, make(original))

    def undo(self) -> None:
        while self._saved:
            owner, name, original = self._saved.pop()
            setattr(owner, name, original)


class IoctlClock:
    """Times every call of the unavoidable KVM ioctl wrappers while active (any thread): the
    samples since the last take(), and a running total per thread (for PhaseClock)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.by_thread: dict[int, float] = {}
        self._patches = Patches()

    def __enter__(self) -> "IoctlClock":
        for cls, name in UNAVOIDABLE_IOCTLS:
            self._patches.replace(cls, name, self._timed)
        return self

    def __exit__(self, *exc) -> None:
        self._patches.undo()

    def _timed(self, fn: Callable) -> Callable:
        samples, by_thread = self.samples, self.by_thread

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                samples.append(dt)
                ident = threading.get_ident()       # one key per thread: no two threads race on one
                by_thread[ident] = by_thread.get(ident, 0.0) + dt
        return timed

    def take(self) -> float:
        """Seconds accumulated since the last take()."""
        total = sum(self.samples)
        self.samples.clear()
        return total

    def thread_total(self, ident: int) -> float:
        return self.by_thread.get(ident, 0.0)


class PhaseClock:
    """While installed, times each PHASE_HOOKS step where the product calls it: per phase, its
    own (wall, ioctl) seconds, nested phases excluded, on the thread that ran it."""

    def __init__(self, ioctls: IoctlClock) -> None:
        self.ioctls = ioctls
        self.main = threading.get_ident()
        self.order: dict[str, tuple[int, bool]] = {}     # phase -> (depth, on another thread), by first run
        self.totals: dict[str, list[float]] = {}
        self._stacks: dict[int, list[list[float]]] = {}
        self._patches = Patches()
        self.missing: list[str] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator["PhaseClock"]:
        self.totals = {}
        try:
            for owner, name, phase in PHASE_HOOKS:
                if name not in vars(owner):
                    self.missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
                    continue
                wrap = self._load_hook if (owner, name) == (snapshot_restore, "load") else self.timed
                self._patches.replace(owner, name, functools.partial(wrap, phase=phase))
            yield self
        finally:
            self._patches.undo()

    def _load_hook(self, fn: Callable, phase: str) -> Callable:
        """load() returns the `checks` closure the builder runs later: time that one too."""
        def load(*args, **kwargs):
            state, memory, checks = fn(*args, **kwargs)
            return state, memory, self.timed(checks, CHECKS_PHASE)
        return self.timed(functools.wraps(fn)(load), phase)

    def timed(self, fn: Callable, phase: str) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            ident = threading.get_ident()
            stack = self._stacks.setdefault(ident, [])
            self.order.setdefault(phase, (len(stack), ident != self.main))
            nested = [0.0, 0.0]
            stack.append(nested)
            io0, t0 = self.ioctls.thread_total(ident), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                wall, io = time.perf_counter() - t0, self.ioctls.thread_total(ident) - io0
                stack.pop()
                total = self.totals.setdefault(phase, [0.0, 0.0])
                total[0] += wall - nested[0]
                total[1] += io - nested[1]
                if stack:
                    stack[-1][0] += wall
                    stack[-1][1] += io
        return timed

    def take(self) -> dict[str, tuple[float, float]]:
        out = {phase: (wall, io) for phase, (wall, io) in self.totals.items()}
        self.totals = {}
        return out


def destroy(machine: Machine) -> None:
    """Join the memory-slot thread (raising what it raised), then close every fd and mapping of a
    machine that never ran: KVM frees the VM with the last fd."""
    machine.wait_memory()
    worker = getattr(machine, "_memory_worker", None)
    if worker is not None and worker.is_alive():
        raise RuntimeError("the memory-slot thread is still running after wait_memory()")
    machine.close()


# -- 1. the restore library call ----------------------------------------------------------------

def restore_call(kvm: Kvm, snap: str, ioctls: IoctlClock, phases: PhaseClock | None = None):
    """builder.build_from_snapshot() end to end, not launched: (wall s, unavoidable ioctl s on
    every thread, {phase: (own wall s, own ioctl s)} when `phases` is given)."""
    config = VmmConfig(restore=RestoreConfig(snap))
    ioctls.take()
    with phases.installed() if phases is not None else contextlib.nullcontext():
        t0 = time.perf_counter()
        machine = builder.build_from_snapshot(kvm, config)
        wall = time.perf_counter() - t0
    try:
        return wall, ioctls.take(), phases.take() if phases is not None else {}
    finally:
        destroy(machine)


def library_samples(snaps: dict[int, str], runs: int):
    """Per size, `runs` plain calls [(wall, ioctl)] and instrumented calls [(wall, ioctl, phases)],
    one of each per iteration after one of each to warm imports and the page cache."""
    plain: dict[int, list] = {size: [] for size in snaps}
    phased: dict[int, list] = {size: [] for size in snaps}
    kvm = Kvm()
    try:
        with IoctlClock() as ioctls:
            phase_clock = PhaseClock(ioctls)
            for i in range(runs + 1):
                for size, snap in snaps.items():
                    a = restore_call(kvm, snap, ioctls)
                    b = restore_call(kvm, snap, ioctls, phase_clock)
                    if i:
                        plain[size].append(a[:2])
                        phased[size].append(b)
    finally:
        kvm.close()
    return plain, phased, phase_clock


def phase_table(phased: dict[int, list], clock: PhaseClock, runs: int) -> list[list]:
    """1a: a row per phase in the order it first ran, indented by nesting: the first size's
    min/median/max and median ioctl, the other sizes' medians."""
    first, *others = phased

    def own(size: int, phase: str, which: int) -> list[float]:
        return [ms(p.get(phase, (0.0, 0.0))[which]) for _w, _i, p in phased[size]]

    rows = []
    for phase, (depth, background) in clock.order.items():
        rows.append(["  " * depth + phase, runs, *stats(own(first, phase, 0)), f"{median(own(first, phase, 1)):.2f}",
                     *[f"{median(own(size, phase, 0)):.2f}" for size in others]])
    main_phases = [p for p, (_d, bg) in clock.order.items() if not bg]

    def summed(size: int, which: int) -> list[float]:
        return [ms(sum(p.get(ph, (0.0, 0.0))[which] for ph in main_phases)) for _w, _i, p in phased[size]]

    rows.append(["sum of the main thread's phases", runs, *stats(summed(first, 0)),
                 f"{median(summed(first, 1)):.2f}", *[f"{median(summed(size, 0)):.2f}" for size in others]])
    rows.append(["(the instrumented call, end to end)", runs, *stats([ms(w) for w, _i, _p in phased[first]]),
                 "", *[f"{median([ms(w) for w, _i, _p in phased[size]]):.2f}" for size in others]])
    return rows


def whole_table(plain: dict[int, list], phased: dict[int, list], runs: int) -> tuple[list[list], float]:
    """1b: per size, the plain call, its in-call ioctl sum and the difference, and the same for
    the instrumented call; returns the rows and the smallest size's median difference (ms)."""
    rows, gap_first = [], float("nan")
    for size in plain:
        walls, inside = [ms(w) for w, _ in plain[size]], [ms(i) for _, i in plain[size]]
        gaps = [w - i for w, i in zip(walls, inside)]
        pwalls = [ms(w) for w, _i, _p in phased[size]]
        pgaps = [w - ms(i) for w, (_w, i, _p) in zip(pwalls, phased[size])]
        rows.append([f"{size} MiB: build_from_snapshot() call", runs, *stats(walls)])
        rows.append([f"{size} MiB: unavoidable ioctls, timed inside the call", runs, *stats(inside)])
        rows.append([f"{size} MiB: call - that ioctl sum", runs, *stats(gaps)])
        rows.append([f"{size} MiB: (the call with 1a's phase hooks)", runs, *stats(pwalls)])
        rows.append([f"{size} MiB: (that call - its ioctl sum)", runs, *stats(pgaps)])
        if size == min(plain):
            gap_first = median(gaps)
    return rows, gap_first


def bench_library_call(snaps: dict[int, str], runs: int) -> tuple[list[list], list[list], float, list[str]]:
    """Tables for (1): (phase rows, whole-call rows, median of call - in-call ioctl sum for the
    smallest size in ms, notes on hooks the call did not reach)."""
    plain, phased, clock = library_samples(snaps, runs)
    notes = [f"hook {name}: not found (its time stays in its caller's row)" for name in sorted(set(clock.missing))]
    ran = set(clock.order)
    notes += [f"hook for {phase!r}: never called by build_from_snapshot"
              for phase in dict.fromkeys(p for _o, _n, p in PHASE_HOOKS) if phase not in ran]
    whole_rows, gap = whole_table(plain, phased, runs)
    return phase_table(phased, clock, runs), whole_rows, gap, notes


# -- processes and console lines ----------------------------------------------------------------

def spawn_to_tick(cmd: list[str], after_spawn: Callable[[subprocess.Popen], None] | None = None,
                  timeout: float = SPAWN_TIMEOUT_S, popen=subprocess.Popen) -> float:
    """Spawn `cmd` (jailed with popen=jailed_popen), optionally drive it (`after_spawn`), return
    seconds until a `tick` line arrives."""
    return spawn_until(cmd, TICK_LINE, timeout, after_spawn, popen=popen)[0]


# -- 2-4. volt-vmm snapshots, restores and cold boots -------------------------------------------

def volt_snapshots(guest: str, work: Path, size: int, cmdline: str, runs: int) -> tuple[str, list[float], list[float], int]:
    """Boot a guest of `size` MiB, take `runs` snapshots: (kept dir, create ms, paused ms, bytes on disk)."""
    sock = str(work / f"volt-{size}.sock")
    cmd = vmm_command() + ["--kernel", guest, "--memory", str(size), "--cmdline", cmdline, "--api-sock", sock]
    create, paused, disk = [], [], 0
    keep = str(work / f"volt-{size}-{cmdline.count('mem')}")
    with Console(cmd, work / f"volt-{size}.log") as vm:
        vm.wait_for(r"^tick 3 ")
        if "volt.mem" in cmdline:
            vm.wait_for(MEM_OK_LINE.pattern)
        client = ApiClient(sock, timeout=600)
        for i in range(runs + 1):
            dest = keep if i == 0 else str(work / f"volt-{size}-scratch-{i}")
            t0 = time.perf_counter()
            reply = client.put("/snapshot/create", {"snapshot_path": dest}) or {}
            wall = time.perf_counter() - t0
            if i == 0:
                disk = int(reply.get("size_bytes", 0))
            else:                                          # the first one warms the page cache
                create.append(ms(wall))
                paused.append(float(reply["paused_ms"]))
                shutil.rmtree(dest)
    return keep, create, paused, disk


def volt_restores(snap: str, runs: int, popen=subprocess.Popen) -> list[float]:
    cmd = vmm_command() + ["--restore", snap]
    spawn_to_tick(cmd, popen=popen)
    return [ms(spawn_to_tick(cmd, popen=popen)) for _ in range(runs)]


def volt_cold_boots(guest: str, size: int, runs: int) -> list[float]:
    cmd = vmm_command() + ["--kernel", guest, "--memory", str(size), "--cmdline", TICK_CMDLINE]
    spawn_to_tick(cmd)
    return [ms(spawn_to_tick(cmd)) for _ in range(runs)]


# -- 5. QEMU ------------------------------------------------------------------------------------

def qemu_command(qemu: str, guest: str, size: int, sock: str) -> list[str]:
    return [qemu, "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", f"{size}M",
            "-nodefaults", "-no-reboot", "-nographic", "-serial", "stdio", "-kernel", guest,
            "-append", MEM_CMDLINE, "-qmp", f"unix:{sock},server=on,wait=off"]


def qemu_saves(qemu: str, guest: str, work: Path, size: int, runs: int) -> tuple[str, list[float], int]:
    """Boot under QEMU, then `runs` times: stop, migrate to a file, cont. (kept file, save ms, file bytes)."""
    sock = str(work / f"qemu-{size}.qmp")
    keep = str(work / f"qemu-{size}.mig")
    saves: list[float] = []
    with Console(qemu_command(qemu, guest, size, sock), work / f"qemu-{size}.log") as vm:
        vm.wait_for(r"^tick 3 ")
        vm.wait_for(MEM_OK_LINE.pattern)
        qmp = Qmp(sock)
        try:
            qmp.execute("migrate-set-parameters", **{"max-bandwidth": QEMU_MAX_BANDWIDTH})
            for i in range(runs + 1):
                path = keep if i == runs else str(work / f"qemu-{size}-scratch.mig")
                t0 = time.perf_counter()
                qmp.execute("stop")
                qmp.execute("migrate", uri=f"exec:cat > {path}")
                while (status := qmp.execute("query-migrate").get("status")) not in ("completed", "failed"):
                    time.sleep(QMP_POLL_S)
                wall = time.perf_counter() - t0
                if status != "completed":
                    raise RuntimeError(f"QEMU migration to {path} failed")
                if i > 0:                                   # the first one warms up
                    saves.append(ms(wall))
                if i < runs:
                    qmp.execute("cont")
                    os.unlink(path)
        finally:
            qmp.close()
    return keep, saves, os.stat(keep).st_size


def qemu_restores(qemu: str, guest: str, work: Path, size: int, mig: str, runs: int) -> list[float]:
    """Spawn with -incoming, wait for the state to be in (paused), cont, first tick line."""
    sock = str(work / f"qemu-{size}-in.qmp")
    cmd = qemu_command(qemu, guest, size, sock) + ["-incoming", f"exec:cat {mig}"]

    def resume(_proc: subprocess.Popen) -> None:
        qmp = Qmp(sock)
        try:
            while (st := qmp.execute("query-status"))["status"] != "paused":
                if st["status"] not in ("inmigrate", "prelaunch"):
                    raise RuntimeError(f"QEMU incoming ended in state {st['status']!r}")
                time.sleep(QMP_POLL_S)
            qmp.execute("cont")
        finally:
            qmp.close()

    def once() -> float:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
        return ms(spawn_to_tick(cmd, resume))

    once()
    return [once() for _ in range(runs)]


# -- main ---------------------------------------------------------------------------------------

def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


HEADER = ["measurement", "runs", "min ms", "median ms", "max ms"]


class Figures:
    """What the runs measured, for the tables and the targets."""

    def __init__(self) -> None:
        self.snap_rows: list[list] = []
        self.pause_by_size: dict[int, float] = {}
        self.restore_by_size: dict[int, list[float]] = {}
        self.restore_tick: list[float] = []
        self.jailed_tick: list[float] = []
        self.cold: list[float] = []
        self.phase_rows: list[list] = []
        self.whole_rows: list[list] = []
        self.gap = float("nan")
        self.notes: list[str] = []
        self.qemu_rows: list[list] = []
        self.qemu_save: dict[int, float] = {}
        self.qemu_restore: dict[int, list[float]] = {}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="runs per volt-vmm figure (default 20)")
    ap.add_argument("--qemu-runs", type=int, default=5, help="runs per QEMU figure (default 5; 0 skips QEMU)")
    ap.add_argument("--sizes", default="128,1024,4096", help="guest memory sizes in MiB (default 128,1024,4096)")
    return ap.parse_args()


def volt_figures(f: Figures, guest: str, work: Path, sizes: list[int], runs: int) -> None:
    """(1)-(4): snapshots first (the plain ticking guest, then one per size with the workload),
    the library call on those, then the spawned restores and cold boots."""
    tick_snap, _, _, _ = volt_snapshots(guest, work, sizes[0], TICK_CMDLINE, 0)
    mem_snaps: dict[int, str] = {}
    for size in sizes:
        snap, create, paused, disk = volt_snapshots(guest, work, size, MEM_CMDLINE, runs)
        mem_snaps[size] = snap
        f.pause_by_size[size] = median(paused)
        f.snap_rows.append([f"{size} MiB: snapshot create (API call)", runs, *stats(create)])
        f.snap_rows.append([f"{size} MiB: guest paused (paused_ms)", runs, *stats(paused)])
        f.snap_rows.append([f"{size} MiB: on disk {disk / 1048576:.1f} MiB", "", "", "", ""])

    f.phase_rows, f.whole_rows, f.gap, f.notes = bench_library_call(mem_snaps, runs)

    f.restore_tick = volt_restores(tick_snap, runs)
    f.jailed_tick = volt_restores(tick_snap, runs, popen=jailed_popen)
    f.snap_rows.append([f"{sizes[0]} MiB: restore spawn -> first tick, unjailed", runs, *stats(f.restore_tick)])
    f.snap_rows.append([f"{sizes[0]} MiB: restore spawn -> first tick, jailed", runs, *stats(f.jailed_tick)])
    f.cold = volt_cold_boots(guest, sizes[0], runs)
    for size in sizes:
        f.restore_by_size[size] = volt_restores(mem_snaps[size], runs)
        f.snap_rows.append([f"{size} MiB: restore spawn -> first tick", runs, *stats(f.restore_by_size[size])])


def qemu_figures(f: Figures, qemu: str, guest: str, work: Path, sizes: list[int], runs: int) -> None:
    """(5): per size, QEMU's saves and its restores from the last save."""
    for size in sizes:
        mig, saves, nbytes = qemu_saves(qemu, guest, work, size, runs)
        f.qemu_save[size] = median(saves)
        f.qemu_restore[size] = qemu_restores(qemu, guest, work, size, mig, runs)
        os.unlink(mig)
        f.qemu_rows.append([f"{size} MiB: QEMU save (stop + migrate to file)", runs, *stats(saves)])
        f.qemu_rows.append([f"{size} MiB: QEMU restore spawn -> cont -> first tick", runs,
                            *stats(f.qemu_restore[size])])
        f.qemu_rows.append([f"{size} MiB: QEMU file {nbytes / 1048576:.1f} MiB", "", "", "", ""])


def print_tables(f: Figures, sizes: list[int], runs: int, qemu_runs: int) -> None:
    print(f"1a. build_from_snapshot() by phase, each step's own time as it ran inside the call "
          f"(min/median/max: {sizes[0]} MiB snapshot; in-process, vCPUs not started)")
    print(tabulate(f.phase_rows, headers=HEADER + ["median ioctl ms"] + [f"median ms {size} MiB" for size in sizes[1:]]))
    for note in f.notes:
        print(f"  note: {note}")
    print("\n1b. build_from_snapshot() as one call vs the unavoidable ioctls inside it")
    print(tabulate(f.whole_rows, headers=HEADER))
    print("\n2/4. spawn -> running: restore vs cold boot "
          f"({sizes[0]} MiB, cmdline {TICK_CMDLINE!r}, first `tick` line on the stdout pipe)")
    print(tabulate([["volt-vmm --restore", runs, *stats(f.restore_tick)],
                    ["volt-vmm --kernel (cold boot)", runs, *stats(f.cold)]], headers=HEADER))
    print(f"\n3. per memory size, guest running volt.mem={MEM_WORKLOAD_MIB}")
    print(tabulate(f.snap_rows, headers=HEADER))
    if f.qemu_rows:
        print(f"\n5. QEMU -M microvm, same guest and cmdline ({qemu_runs} runs each)")
        print(tabulate(f.qemu_rows, headers=HEADER))
    else:
        print("\n5. qemu-system-x86_64 not installed (or --qemu-runs 0): no side-by-side figures")


def target_rows(f: Figures, sizes: list[int]) -> list[list]:
    small, large = sizes[0], sizes[-1]
    ours = {size: median(v) for size, v in f.restore_by_size.items()}
    rows = []
    for size in sizes:
        if size in f.qemu_restore:
            theirs = median(f.qemu_restore[size])
            r = ours[size] / theirs
            rows.append([f"{size} MiB restore spawn->running: volt / QEMU", f"{ours[size]:.1f} / {theirs:.1f} ms",
                         f"{r:.2f}", "<= 0.6", verdict(r <= 0.6)])
    flat = ours[large] / ours[small]
    rows.append([f"volt restore {large} MiB / {small} MiB", f"{ours[large]:.1f} / {ours[small]:.1f} ms",
                 f"{flat:.2f}", "<= 1.3", verdict(flat <= 1.3)])
    if f.qemu_restore:
        q = median(f.qemu_restore[large]) / median(f.qemu_restore[small])
        rows.append([f"(QEMU restore {large} MiB / {small} MiB)", "", f"{q:.2f}", "", ""])
    for size in sizes:
        if size in f.qemu_save:
            pause, save = f.pause_by_size[size], f.qemu_save[size]
            rows.append([f"{size} MiB pause: volt paused_ms vs QEMU save", f"{pause:.1f} / {save:.1f} ms",
                         ratio(pause, save), "<= 1.0", verdict(pause <= save)])
    rows.append([f"build_from_snapshot() - ioctl sum ({small} MiB)", f"{f.gap:.2f} ms", "", "<= 1 ms",
                 verdict(f.gap <= 1.0)])
    jail_cost = median(f.jailed_tick) - median(f.restore_tick)
    rows.append(["the jail's cost, restore spawn -> first tick", f"{median(f.jailed_tick):.1f} - "
                 f"{median(f.restore_tick):.1f} ms", f"{jail_cost:.1f} ms", "<= 10 ms", verdict(jail_cost <= 10)])
    return rows


def main() -> None:
    args = parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    guest = str(build_guest())
    qemu = shutil.which("qemu-system-x86_64") if args.qemu_runs > 0 else None
    started = time.monotonic()
    f = Figures()
    with tempfile.TemporaryDirectory(prefix="volt-restore-bench-") as tmp:
        volt_figures(f, guest, Path(tmp), sizes, args.runs)
        if qemu:
            qemu_figures(f, qemu, guest, Path(tmp), sizes, args.qemu_runs)
    print(f"test guest, 1 vCPU, KVM: {kvm_flavour()}; total benchmark time {time.monotonic() - started:.0f} s\n")
    print_tables(f, sizes, args.runs, args.qemu_runs)
    print("\ntargets (medians)")
    print(tabulate(target_rows(f, sizes), headers=["target", "figures", "ratio", "goal", ""]))


if __name__ == "__main__":
    main()
