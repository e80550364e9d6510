"""A real Linux guest on hardware KVM: volt-vmm beside QEMU `-M microvm`, same kernel, same initramfs.

Debian's cloud kernel with the workload initramfs (volt_spec/boot/initramfs.py: virtio modules,
then a counter with the uptime every 200 ms after READY_MARKER), 512 MiB, 2 vCPUs, no disks or
NICs, booted by both VMMs from the same files. Every row is min / median / max over `--runs`
runs in ms, then volt / QEMU:

- cold boot: spawn -> the READY line;
- cold boot, VMM already up: volt-vmm waiting on its API (`--api-sock` alone) -> PUT
  /boot-source, /machine-config, /actions InstanceStart; QEMU started with `-S` -> QMP `cont`;
  timed from the request to the READY line (process start-up taken out);
- snapshot pause: volt's `paused_ms` (PUT /snapshot/create); QEMU `stop` + `migrate exec:cat >
  FILE` until completed (its guest is stopped throughout), then `cont`;
- restore: spawn -> the next counter line (volt-vmm --restore; QEMU -incoming exec:cat + cont);
- restore, VMM already up: PUT /snapshot/load; QEMU `-incoming defer` -> `migrate-incoming`,
  `cont`; from the request to the next counter line.

Hardware KVM only (a stock Linux cannot finish booting on PVM): run it in the lane,
`python -m tests.hwlane --run 'python benchmarks/linux.py'`, where under QEMU's TCG Python
start-up and 9p reads dominate the absolute times; the ratios show where we stand. No gate.

usage: python benchmarks/linux.py [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from volt_spec.api.client import ApiClient  # noqa: E402
from volt_spec.boot.initramfs import READY_MARKER, VIRTIO_MODULES, build_workload_initramfs  # noqa: E402
from volt_spec.boot.kernel_fetch import fetch_busybox, fetch_debian_kernel, fetch_kernel_modules  # noqa: E402
from volt_spec.kvm.flavour import HARDWARE, kvm_flavour  # noqa: E402
from volt_spec.runner.vmctl import vmm_command  # noqa: E402

from common import QMP_POLL_S, Console, Qmp, median, ms, stats  # noqa: E402

MEMORY_MIB, VCPUS = 512, 2
CMDLINE = "console=ttyS0 panic=-1"
READY = rf"^{READY_MARKER} "
COUNTER = r"^counter \d+ "
# A boot takes ~40 s in the lane (TCG): 5 minutes there means a stuck guest, not a slow one.
TIMEOUT_S = min(float(os.environ.get("VOLT_TIMEOUT_SCALE") or 1), 2.5) * 120
T = TypeVar("T")
RETAKES: list[str] = []         # samples whose guest got stuck and were taken again (reported)


class Files:
    def __init__(self, work: Path) -> None:
        self.kernel = str(fetch_debian_kernel())
        self.initrd = str(build_workload_initramfs(fetch_busybox(), work / "initrd.gz",
                                                   fetch_kernel_modules(VIRTIO_MODULES)))
        self.work = work


def timed_wait(vm: Console, pattern: str, since: float) -> float:
    vm.wait_for(pattern, TIMEOUT_S)
    return time.perf_counter() - since


# -- volt-vmm -----------------------------------------------------------------------------------

def volt_boot_cmd(f: Files, sock: str) -> list[str]:
    return vmm_command() + ["--kernel", f.kernel, "--initrd", f.initrd, "--cmdline", CMDLINE,
                            "--memory", str(MEMORY_MIB), "--vcpus", str(VCPUS), "--api-sock", sock]


def volt_cold(f: Files, i: int) -> float:
    t0 = time.perf_counter()
    with Console(volt_boot_cmd(f, str(f.work / f"v{i}.sock")), f.work / f"volt-cold-{i}.log") as vm:
        return timed_wait(vm, READY, t0)


def waiting_volt(f: Files, name: str) -> tuple[Console, ApiClient]:
    sock = str(f.work / f"{name}.sock")
    vm = Console(vmm_command() + ["--api-sock", sock], f.work / f"{name}.log")
    client = ApiClient(sock, timeout=TIMEOUT_S)
    deadline = time.monotonic() + TIMEOUT_S
    while not client.ping():
        if time.monotonic() > deadline:
            vm.close()
            raise RuntimeError("volt-vmm's API never came up")
        time.sleep(0.01)            # the socket appears from another process
    return vm, client


def volt_cold_warm(f: Files, i: int) -> float:
    vm, client = waiting_volt(f, f"vw{i}")
    with vm:
        t0 = time.perf_counter()
        client.put("/boot-source", {"kernel_image_path": f.kernel, "initrd_path": f.initrd, "boot_args": CMDLINE})
        client.put("/machine-config", {"vcpu_count": VCPUS, "mem_size_mib": MEMORY_MIB})
        client.put("/actions", {"action_type": "InstanceStart"})
        return timed_wait(vm, READY, t0)


def volt_snapshots(f: Files, runs: int, attempt: int) -> tuple[str, list[float]]:
    """Boot, let the counter run, snapshot `runs` times: (kept dir, pauses)."""
    sock = str(f.work / f"vs{attempt}.sock")
    pauses, keep = [], str(f.work / f"volt-snap{attempt}")
    with Console(volt_boot_cmd(f, sock), f.work / f"volt-snap{attempt}.log") as vm:
        vm.wait_for(READY, TIMEOUT_S)
        vm.wait_for(r"^counter 5 ", TIMEOUT_S)
        client = ApiClient(sock, timeout=TIMEOUT_S)
        for i in range(runs):
            dest = keep if i == runs - 1 else str(f.work / f"volt-scratch-{attempt}-{i}")
            reply = client.put("/snapshot/create", {"snapshot_path": dest}) or {}
            pauses.append(float(reply["paused_ms"]))
            if dest != keep:
                shutil.rmtree(dest)
    return keep, pauses


def volt_restore(f: Files, snap: str, i: int) -> float:
    t0 = time.perf_counter()
    with Console(vmm_command() + ["--restore", snap], f.work / f"volt-restore-{i}.log") as vm:
        return timed_wait(vm, COUNTER, t0)


def volt_restore_warm(f: Files, snap: str, i: int) -> float:
    vm, client = waiting_volt(f, f"vr{i}")
    with vm:
        t0 = time.perf_counter()
        client.put("/snapshot/load", {"snapshot_path": snap})
        return timed_wait(vm, COUNTER, t0)


# -- QEMU ---------------------------------------------------------------------------------------

def qemu_cmd(qemu: str, f: Files, sock: str, *extra: str) -> list[str]:
    return [qemu, "-M", "microvm", "-enable-kvm", "-cpu", "host", "-m", f"{MEMORY_MIB}M", "-smp", str(VCPUS),
            "-nodefaults", "-no-user-config", "-no-reboot", "-nographic", "-serial", "stdio",
            "-kernel", f.kernel, "-initrd", f.initrd, "-append", CMDLINE,
            "-qmp", f"unix:{sock},server=on,wait=off", *extra]


def qemu_cold(qemu: str, f: Files, i: int) -> float:
    t0 = time.perf_counter()
    with Console(qemu_cmd(qemu, f, str(f.work / f"q{i}.qmp")), f.work / f"qemu-cold-{i}.log") as vm:
        return timed_wait(vm, READY, t0)


def qemu_cold_warm(qemu: str, f: Files, i: int) -> float:
    sock = str(f.work / f"qw{i}.qmp")
    with Console(qemu_cmd(qemu, f, sock, "-S"), f.work / f"qemu-coldw-{i}.log") as vm:
        qmp = Qmp(sock, TIMEOUT_S)
        try:
            t0 = time.perf_counter()
            qmp.execute("cont")
            return timed_wait(vm, READY, t0)
        finally:
            qmp.close()


def qemu_snapshots(qemu: str, f: Files, runs: int, attempt: int) -> tuple[str, list[float]]:
    sock = str(f.work / f"qs{attempt}.qmp")
    keep, pauses = str(f.work / f"qemu{attempt}.mig"), []
    with Console(qemu_cmd(qemu, f, sock), f.work / f"qemu-snap{attempt}.log") as vm:
        vm.wait_for(READY, TIMEOUT_S)
        vm.wait_for(r"^counter 5 ", TIMEOUT_S)
        qmp = Qmp(sock, TIMEOUT_S)
        try:
            qmp.execute("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
            for i in range(runs):
                path = keep if i == runs - 1 else str(f.work / f"qemu-scratch{attempt}.mig")
                t0 = time.perf_counter()
                qmp.execute("stop")
                qmp.execute("migrate", uri=f"exec:cat > {path}")
                while (status := qmp.execute("query-migrate").get("status")) not in ("completed", "failed"):
                    time.sleep(QMP_POLL_S)
                qmp.execute("cont")
                pauses.append(ms(time.perf_counter() - t0))
                if status != "completed":
                    raise RuntimeError("QEMU migration failed")
                if path != keep:
                    os.unlink(path)
        finally:
            qmp.close()
    return keep, pauses


def qemu_resume_when_in(qmp: Qmp) -> None:
    while (st := qmp.execute("query-status"))["status"] != "paused":
        if st["status"] not in ("inmigrate", "prelaunch"):
            raise RuntimeError(f"QEMU incoming ended in state {st['status']!r}")
        time.sleep(QMP_POLL_S)
    qmp.execute("cont")


def qemu_restore(qemu: str, f: Files, mig: str, i: int) -> float:
    sock = str(f.work / f"qr{i}.qmp")
    t0 = time.perf_counter()
    with Console(qemu_cmd(qemu, f, sock, "-incoming", f"exec:cat {mig}"), f.work / f"qemu-r-{i}.log") as vm:
        qmp = Qmp(sock, TIMEOUT_S)
        try:
            qemu_resume_when_in(qmp)
        finally:
            qmp.close()
        return timed_wait(vm, COUNTER, t0)


def qemu_restore_warm(qemu: str, f: Files, mig: str, i: int) -> float:
    sock = str(f.work / f"qrw{i}.qmp")
    with Console(qemu_cmd(qemu, f, sock, "-incoming", "defer"), f.work / f"qemu-rw-{i}.log") as vm:
        qmp = Qmp(sock, TIMEOUT_S)
        try:
            t0 = time.perf_counter()
            qmp.execute("migrate-incoming", uri=f"exec:cat {mig}")
            qemu_resume_when_in(qmp)
        finally:
            qmp.close()
        return timed_wait(vm, COUNTER, t0)


# -- the table ----------------------------------------------------------------------------------

def retaken(label: str, fn: Callable[[int], T], i: int, runs: int) -> T:
    """fn(i); when it times out, reported and taken once more as fn(runs + i) (under TCG an L2
    guest can get stuck, QEMU's as well as ours: tests/hwlane/lane.py)."""
    try:
        return fn(i)
    except RuntimeError as e:
        RETAKES.append(f"{label} #{i + 1}: {str(e)[:300]}")
        print(f"  {label} #{i + 1}: {str(e)[:300]}; taken again", file=sys.stderr, flush=True)
        return fn(runs + i)


def samples(label: str, fn: Callable[[int], float], runs: int) -> list[float]:
    """`runs` timings of fn in ms, each printed as it comes (stderr)."""
    out = []
    for i in range(runs):
        out.append(ms(retaken(label, fn, i, runs)))
        print(f"  {label} #{i + 1}: {out[-1]:.0f} ms", file=sys.stderr, flush=True)
    return out


def row(what: str, volt: list[float], qemu: list[float]) -> list[str]:
    ratio = median(volt) / median(qemu) if qemu else float("nan")
    return [what, *stats(volt), *stats(qemu), f"{ratio:.2f}x"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if kvm_flavour() != HARDWARE:
        print(f"benchmarks/linux.py needs hardware KVM (this host: {kvm_flavour()}); run it in the lane: "
              "python -m tests.hwlane --run 'python benchmarks/linux.py'", file=sys.stderr)
        return 2
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        print("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="volt-bench-linux-") as tmp:
        f, n = Files(Path(tmp)), args.runs
        rows = [row("cold boot: spawn -> READY", samples("volt cold boot", lambda i: volt_cold(f, i), n),
                    samples("QEMU cold boot", lambda i: qemu_cold(qemu, f, i), n)),
                row("cold boot, VMM up: request -> READY",
                    samples("volt cold boot, VMM up", lambda i: volt_cold_warm(f, i), n),
                    samples("QEMU cold boot, VMM up", lambda i: qemu_cold_warm(qemu, f, i), n))]
        vsnap, vpauses = retaken("volt snapshots", lambda i: volt_snapshots(f, n, i), 0, 1)
        qsnap, qpauses = retaken("QEMU snapshots", lambda i: qemu_snapshots(qemu, f, n, i), 0, 1)
        print(f"  snapshot pauses: volt {vpauses}, QEMU {qpauses}", file=sys.stderr, flush=True)
        rows.append(row("snapshot: guest pause", vpauses, qpauses))
        rows.append(row("restore: spawn -> next counter",
                        samples("volt restore", lambda i: volt_restore(f, vsnap, i), n),
                        samples("QEMU restore", lambda i: qemu_restore(qemu, f, qsnap, i), n)))
        rows.append(row("restore, VMM up: request -> next counter",
                        samples("volt restore, VMM up", lambda i: volt_restore_warm(f, vsnap, i), n),
                        samples("QEMU restore, VMM up", lambda i: qemu_restore_warm(qemu, f, qsnap, i), n)))
    heads = ["ms", "volt min", "median", "max", "QEMU min", "median", "max", "volt/QEMU"]
    print(f"Debian {Path(f.kernel).name}, workload initramfs, {MEMORY_MIB} MiB, {VCPUS} vCPUs; "
          f"{n} runs each; kvm: {kvm_flavour()}")
    print(tabulate(rows, headers=heads, tablefmt="github"))
    for retake in RETAKES:
        print(f"retaken: {retake}")
    print(f"wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
