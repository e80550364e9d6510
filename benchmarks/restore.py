"""Snapshot and restore latency of the test guest: volt-vmm, phase by phase, and beside QEMU.

Every figure is min / median / max over N runs (`--runs`, QEMU `--qemu-runs`), in ms.

1. Restore library call, in-process (no vCPU is started; every VM is destroyed after use):
   - "phases": the steps of `volt_spec.vmm.main.restore()` called one by one, each timed alone:
     state.json read + CRC (`format.read_state`), host checks (`check_compatible`, XSAVE size),
     memory map (`memory_file.map_memory`), VM create (KVM_CREATE_VM, TSS, identity map,
     irqchip, PIT2: `Machine` minus memory registration and devices), memory registration
     (KVM_SET_USER_MEMORY_REGION per slot), device construction, vCPU create, vCPU state
     (`restore_vcpu`), irqchip + PIT, clock, device state. The "ioctl" column is the time spent
     inside the KVM ioctl wrappers during that phase.
   - "whole call": `main.restore()` itself (its `machine.start()` stubbed to a join of the memory
     thread), timed end to end, beside the sum of its unavoidable ioctls in the same call:
     KVM_CREATE_VM, TSS/identity map, CREATE_IRQCHIP, CREATE_PIT2, SET_USER_MEMORY_REGION,
     CREATE_VCPU, every vCPU SET_* and SET_IRQCHIP/PIT2/CLOCK. "timed inside the call" sums
     them as they ran in that very call: memory registration runs on a thread beside the rest
     of the build, and its figure there also holds the wait for the GIL while the main thread
     works, i.e. it is the memory thread's share of the critical path; call minus that sum is
     the work on the critical path that is not a KVM ioctl. Target: <= 1 ms. "sequential" is
     the same sum from the phased restore of the same iteration, for reference (pairing two
     separate calls makes the difference noisy: the memory-slot ioctl alone varies 4-10 ms here).
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
import time
from pathlib import Path
from typing import Callable, Iterator

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from volt_spec.api.client import ApiClient  # noqa: E402
from volt_spec.guest.build import build_guest  # noqa: E402
from volt_spec.kvm import structs as s  # noqa: E402
from volt_spec.kvm.flavour import kvm_flavour  # noqa: E402
from volt_spec.kvm.system import Kvm  # noqa: E402
from volt_spec.kvm.vcpu import Vcpu  # noqa: E402
from volt_spec.kvm.vm import KVM_CLOCK_REALTIME, Vm  # noqa: E402
from volt_spec.runner.vmctl import vmm_command  # noqa: E402
from volt_spec.snapshot.b64 import unpack_into  # noqa: E402
from volt_spec.snapshot.format import MEMORY_FILE, read_state  # noqa: E402
from volt_spec.snapshot.memory_file import map_memory  # noqa: E402
from volt_spec.snapshot.restore import check_compatible  # noqa: E402
from volt_spec.snapshot.vcpu_state import restore_vcpu, xsave_size  # noqa: E402
from volt_spec.snapshot.vm_state import CHIPS  # noqa: E402
from volt_spec.vmm import main as vmm_main  # noqa: E402
from volt_spec.vmm.config import VmConfig  # noqa: E402
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


# -- small helpers ------------------------------------------------------------------------------

class IoctlClock:
    """Times every call of the unavoidable KVM ioctl wrappers while active (any thread)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._saved: list[tuple[type, str, Callable]] = []

    def __enter__(self) -> "IoctlClock":
        for cls, name in UNAVOIDABLE_IOCTLS:
            original = cls.__dict__[name]
            self._saved.append((cls, name, original))
            setattr(cls, name, self._timed(original))
        return self

    def __exit__(self, *exc) -> None:
        for cls, name, original in self._saved:
            setattr(cls, name, original)
        self._saved.clear()

    def _timed(self, fn: Callable) -> Callable:
        samples = self.samples

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                samples.append(time.perf_counter() - t0)
        return timed

    def take(self) -> float:
        """Seconds accumulated since the last take()."""
        total = sum(self.samples)
        self.samples.clear()
        return total


def destroy(machine: Machine) -> None:
    """Close every fd and mapping of a machine that never ran: KVM frees the VM with the last fd."""
    machine.close()


@contextlib.contextmanager
def vcpus_not_started() -> Iterator[None]:
    """main.restore() without its last step: Machine.start only joins the memory thread."""
    original = Machine.start
    Machine.start = Machine.wait_memory
    try:
        yield
    finally:
        Machine.start = original


class PhasedMachine(Machine):
    """A Machine whose constructor does only the KVM part; the benchmark runs the rest, timed."""

    def _register_memory(self) -> None:
        pass

    def _make_devices(self) -> None:
        pass


# -- 1. the restore library call ----------------------------------------------------------------

PHASES = ("state.json read + CRC", "host checks (vendor, KVM kind, XSAVE size)", "memory map (MAP_PRIVATE)",
          "VM create (VM, TSS, identity, irqchip, PIT2)", "memory registration (SET_USER_MEMORY_REGION)",
          "device construction", "vCPU create", "vCPU state", "irqchip + PIT2 state", "clock",
          "device state")


def restore_phased(kvm: Kvm, snap: str, clock: IoctlClock) -> dict[str, tuple[float, float]]:
    """One restore, step by step as main.restore() does them: {phase: (wall s, ioctl s)}."""
    out: dict[str, tuple[float, float]] = {}
    t = time.perf_counter()
    clock.take()

    def lap(phase: str) -> None:
        nonlocal t
        now = time.perf_counter()
        out[phase] = (now - t, clock.take())
        t = time.perf_counter()

    state = read_state(snap)
    lap(PHASES[0])
    check_compatible(state, snap)
    check_compatible(state, snap, xsave_size(kvm))
    lap(PHASES[1])
    memory = map_memory(os.path.join(snap, state["memory"].get("file", MEMORY_FILE)), state["memory"])
    lap(PHASES[2])
    meta, boot = state["meta"], state.get("boot", {})
    config = VmConfig(kernel=boot.get("kernel", ""), cmdline=boot.get("cmdline", ""),
                      memory_mib=int(meta["memory_mib"]), vcpus=int(meta["vcpus"]))
    machine = PhasedMachine(kvm, config, memory=memory)
    machine.wait_memory()
    lap(PHASES[3])
    try:
        Machine._register_memory(machine)
        lap(PHASES[4])
        Machine._make_devices(machine)
        lap(PHASES[5])
        machine.create_vcpus()
        lap(PHASES[6])
        for vcpu, vstate in zip(machine.vcpus, state["vcpus"]):
            restore_vcpu(vcpu, vstate)
        lap(PHASES[7])
        vm_state = state["vm"]
        for name, _chip in CHIPS:                      # vm_state.restore_vm, split at the clock
            machine.vm.set_irqchip(unpack_into(s.KvmIrqchip, vm_state[name]))
        machine.vm.set_pit2(unpack_into(s.KvmPitState2, vm_state["pit2"]))
        lap(PHASES[8])
        data = s.KvmClockData()
        data.clock = int(vm_state["clock"]["clock"])   # "continue" mode: flags 0
        assert not data.flags & KVM_CLOCK_REALTIME
        machine.vm.set_clock(data)
        lap(PHASES[9])
        machine.restore_devices(state.get("devices", {}))
        lap(PHASES[10])
    finally:
        destroy(machine)
    return out


def restore_whole(kvm: Kvm, snap: str, clock: IoctlClock) -> tuple[float, float]:
    """main.restore() end to end (no vCPU started): (wall s, unavoidable ioctl s)."""
    clock.take()
    with vcpus_not_started():
        t0 = time.perf_counter()
        machine, _protocol, _from = vmm_main.restore(kvm, snap, "continue")
        wall = time.perf_counter() - t0
    ioctls = clock.take()
    destroy(machine)
    return wall, ioctls


def bench_library_call(snaps: dict[int, str], runs: int) -> tuple[list[list], list[list], float]:
    """Tables for (1); returns (phase rows, whole-call rows, median of call - in-call ioctl sum
    for the smallest size, ms)."""
    kvm = Kvm()
    first = min(snaps)
    phases = {size: {p: [] for p in PHASES} for size in snaps}
    whole: dict[int, list[tuple[float, float]]] = {size: [] for size in snaps}
    try:
        with IoctlClock() as clock:
            for size in snaps:                              # warm imports and the page cache
                restore_phased(kvm, snaps[size], clock)
                restore_whole(kvm, snaps[size], clock)
            for _ in range(runs):
                for size in snaps:
                    for phase, sample in restore_phased(kvm, snaps[size], clock).items():
                        phases[size][phase].append(sample)
                    whole[size].append(restore_whole(kvm, snaps[size], clock))
    finally:
        kvm.close()

    def seq_ioctls(size: int) -> list[float]:
        return [ms(sum(phases[size][p][i][1] for p in PHASES)) for i in range(runs)]

    others = [size for size in snaps if size != first]
    phase_rows = []
    for p in PHASES:
        walls = [ms(w) for w, _ in phases[first][p]]
        phase_rows.append([p, runs, *stats(walls), f"{median([ms(i) for _, i in phases[first][p]]):.2f}",
                           *[f"{median([ms(w) for w, _ in phases[size][p]]):.2f}" for size in others]])
    totals = {size: [ms(sum(phases[size][p][i][0] for p in PHASES)) for i in range(runs)] for size in snaps}
    phase_rows.append(["sum of phases", runs, *stats(totals[first]), f"{median(seq_ioctls(first)):.2f}",
                       *[f"{median(totals[size]):.2f}" for size in others]])
    whole_rows, gap_first = [], float("nan")
    for size, samples in whole.items():
        walls = [ms(w) for w, _ in samples]
        inside = [ms(i) for _, i in samples]
        gaps = [w - i for w, i in zip(walls, inside)]
        whole_rows.append([f"{size} MiB: main.restore() call", runs, *stats(walls)])
        whole_rows.append([f"{size} MiB: unavoidable ioctls, timed inside the call", runs, *stats(inside)])
        whole_rows.append([f"{size} MiB: call - that ioctl sum", runs, *stats(gaps)])
        whole_rows.append([f"{size} MiB: (unavoidable ioctls, sequential)", runs, *stats(seq_ioctls(size))])
        if size == first:
            gap_first = median(gaps)
    return phase_rows, whole_rows, gap_first


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="runs per volt-vmm figure (default 20)")
    ap.add_argument("--qemu-runs", type=int, default=5, help="runs per QEMU figure (default 5; 0 skips QEMU)")
    ap.add_argument("--sizes", default="128,1024,4096", help="guest memory sizes in MiB (default 128,1024,4096)")
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    runs = args.runs
    guest = str(build_guest())
    qemu = shutil.which("qemu-system-x86_64") if args.qemu_runs > 0 else None
    header = ["measurement", "runs", "min ms", "median ms", "max ms"]
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="volt-restore-bench-") as tmp:
        work = Path(tmp)
        # Snapshots first: one of the plain ticking guest, then one per size with the workload.
        tick_snap, _, _, _ = volt_snapshots(guest, work, sizes[0], TICK_CMDLINE, 0)
        mem_snaps: dict[int, str] = {}
        snap_rows = []
        pause_by_size: dict[int, float] = {}
        for size in sizes:
            snap, create, paused, disk = volt_snapshots(guest, work, size, MEM_CMDLINE, runs)
            mem_snaps[size] = snap
            pause_by_size[size] = median(paused)
            snap_rows.append([f"{size} MiB: snapshot create (API call)", runs, *stats(create)])
            snap_rows.append([f"{size} MiB: guest paused (paused_ms)", runs, *stats(paused)])
            snap_rows.append([f"{size} MiB: on disk {disk / 1048576:.1f} MiB", "", "", "", ""])

        phase_rows, whole_rows, gap = bench_library_call(mem_snaps, runs)

        restore_tick = volt_restores(tick_snap, runs)
        jailed_tick = volt_restores(tick_snap, runs, popen=jailed_popen)
        snap_rows.append([f"{sizes[0]} MiB: restore spawn -> first tick, unjailed", runs, *stats(restore_tick)])
        snap_rows.append([f"{sizes[0]} MiB: restore spawn -> first tick, jailed", runs, *stats(jailed_tick)])
        cold = volt_cold_boots(guest, sizes[0], runs)
        restore_by_size: dict[int, list[float]] = {}
        for size in sizes:
            restore_by_size[size] = volt_restores(mem_snaps[size], runs)
            snap_rows.append([f"{size} MiB: restore spawn -> first tick", runs, *stats(restore_by_size[size])])

        qemu_rows, qemu_save, qemu_restore = [], {}, {}
        if qemu:
            for size in sizes:
                mig, saves, nbytes = qemu_saves(qemu, guest, work, size, args.qemu_runs)
                qemu_save[size] = median(saves)
                qemu_restore[size] = qemu_restores(qemu, guest, work, size, mig, args.qemu_runs)
                os.unlink(mig)
                qemu_rows.append([f"{size} MiB: QEMU save (stop + migrate to file)", args.qemu_runs, *stats(saves)])
                qemu_rows.append([f"{size} MiB: QEMU restore spawn -> cont -> first tick", args.qemu_runs,
                                  *stats(qemu_restore[size])])
                qemu_rows.append([f"{size} MiB: QEMU file {nbytes / 1048576:.1f} MiB", "", "", "", ""])

    print(f"test guest, 1 vCPU, KVM: {kvm_flavour()}; total benchmark time {time.monotonic() - started:.0f} s\n")
    print(f"1a. restore library call by phase (min/median/max: {sizes[0]} MiB snapshot; in-process, "
          "vCPUs not started)")
    print(tabulate(phase_rows, headers=header + ["median ioctl ms"] + [f"median ms {size} MiB" for size in sizes[1:]]))
    print("\n1b. main.restore() as one call vs the unavoidable ioctls inside it")
    print(tabulate(whole_rows, headers=header))
    print("\n2/4. spawn -> running: restore vs cold boot "
          f"({sizes[0]} MiB, cmdline {TICK_CMDLINE!r}, first `tick` line on the stdout pipe)")
    print(tabulate([["volt-vmm --restore", runs, *stats(restore_tick)],
                    ["volt-vmm --kernel (cold boot)", runs, *stats(cold)]], headers=header))
    print(f"\n3. per memory size, guest running volt.mem={MEM_WORKLOAD_MIB}")
    print(tabulate(snap_rows, headers=header))
    if qemu:
        print(f"\n5. QEMU -M microvm, same guest and cmdline ({args.qemu_runs} runs each)")
        print(tabulate(qemu_rows, headers=header))
    else:
        print("\n5. qemu-system-x86_64 not installed (or --qemu-runs 0): no side-by-side figures")

    small, large = sizes[0], sizes[-1]
    ours = {size: median(v) for size, v in restore_by_size.items()}
    targets = []
    for size in sizes:
        if size in qemu_restore:
            r = ours[size] / median(qemu_restore[size])
            targets.append([f"{size} MiB restore spawn->running: volt / QEMU", f"{ours[size]:.1f} / "
                            f"{median(qemu_restore[size]):.1f} ms", f"{r:.2f}", "<= 0.6", verdict(r <= 0.6)])
    flat = ours[large] / ours[small]
    targets.append([f"volt restore {large} MiB / {small} MiB", f"{ours[large]:.1f} / {ours[small]:.1f} ms",
                    f"{flat:.2f}", "<= 1.3", verdict(flat <= 1.3)])
    if qemu_restore:
        q = median(qemu_restore[large]) / median(qemu_restore[small])
        targets.append([f"(QEMU restore {large} MiB / {small} MiB)", "", f"{q:.2f}", "", ""])
    for size in sizes:
        if size in qemu_save:
            targets.append([f"{size} MiB pause: volt paused_ms vs QEMU save", f"{pause_by_size[size]:.1f} / "
                            f"{qemu_save[size]:.1f} ms", ratio(pause_by_size[size], qemu_save[size]), "<= 1.0",
                            verdict(pause_by_size[size] <= qemu_save[size])])
    targets.append([f"main.restore() - ioctl sum ({small} MiB)", f"{gap:.2f} ms", "", "<= 1 ms", verdict(gap <= 1.0)])
    jail_cost = median(jailed_tick) - median(restore_tick)
    targets.append(["the jail's cost, restore spawn -> first tick", f"{median(jailed_tick):.1f} - "
                    f"{median(restore_tick):.1f} ms", f"{jail_cost:.1f} ms", "<= 10 ms", verdict(jail_cost <= 10)])
    print("\ntargets (medians)")
    print(tabulate(targets, headers=["target", "figures", "ratio", "goal", ""]))


if __name__ == "__main__":
    main()
