"""Restores on warm VMMs (volt-vmm --warm) beside a cold `volt-vmm --restore`, in one run.

1. Warm restores (`--restores`, default 200), in batches of `--batch` warm VMMs made ready
   first (each becomes one VM; the idle ones cost no CPU while another is measured). Per
   restore, from in-VMM perf_counter_ns stamps (one clock with ours: CLOCK_MONOTONIC):
   - load -> KVM_RUN: the load request's arrival in the VMM (its first byte read) to the last
     vCPU thread entering KVM_RUN. Goal p50 <= 0.79 ms (zeroboot's published fork p50, from
     other hardware), p99 <= 2 ms;
   - load -> first serial byte: to the restored guest's first byte on its UART (the guest
     prints a tick every 10 ms, so this holds up to 10 ms of guest time);
   - send -> first byte here: from our PUT /snapshot/load (the fds opened) to that byte
     reaching our end of the VMM's stdout pipe.
   Then as many again on primed warm VMMs: each given the snapshot with "prepare" first (files
   read, parsed, checked and mapped ahead, as zeroboot keeps its template's memory mapped), so the
   timed load is the state put back and the vCPUs started.
2. Cold: `volt-vmm --restore DIR` spawned -> its first serial byte at our end (`--cold-runs`).
   The ratio warm / cold is the figure (these machines are noisy; absolute times drift).
3. A burst of 16 concurrent clone restores: 16 warm VMMs, 16 loads sent at once; wall time
   until every one has printed its first byte (Cloud Hypervisor's mmap fork: 613 ms for 16).
4. Memory (`--clones`, default 20; `--skip-memory` to leave it out): a 1 GiB guest that touched
   512 MiB before its snapshot, restored into N warm VMMs and left ticking; each clone's USS
   (Private_Clean + Private_Dirty of smaps_rollup) beside one cold-restored VMM's of the same
   snapshot (serving its API, as every VMM volt starts does) (target: within 1.1x: the snapshot's pages are shared through the page cache, not
   copied per clone), and the total PSS.

5. `volt apply` of a VM restored into a warm VMM of the runner's pool (spec.snapshots.pool) beside
   the same restore started cold (`--apply-runs`, each; wall time of the whole command).

usage: python benchmarks/pool.py [--restores 200] [--batch 8] [--cold-runs 20] [--clones 20] [--apply-runs 10]
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from volt_spec.api.client import ApiClient  # noqa: E402
from volt_spec.guest.build import build_guest  # noqa: E402
from volt_spec.runner.warmload import load_snapshot  # noqa: E402

VMM = [sys.executable, "-m", "volt_spec.vmm.main"]
TICKS = "volt.ticks=0 volt.tick_ms=10"
WAIT_S = 60.0
# The load's steps inside the VMM (vmm/warm.py's stamps): (row, from, to).
STEPS = [("  request read (head, body, fds) and handed to a worker", "load_arrived_ns", "handler_ns"),
         ("  load options checked", "handler_ns", "options_ns"),
         ("  state read, parsed and shape-checked, memory mapped MAP_FIXED", "options_ns", "mapped_ns"),
         ("  CRC, host compatibility, memory fingerprint", "mapped_ns", "checked_ns"),
         ("  vCPU, device and VM state put back (persist.restore)", "checked_ns", "restored_ns"),
         ("  vCPU threads started (launch)", "restored_ns", "launched_ns"),
         ("  until the last vCPU thread enters KVM_RUN", "launched_ns", "run_ns")]


class Vmm:
    """A volt-vmm process with its stdout read on demand."""

    def __init__(self, args: list[str], sock: str | None = None) -> None:
        self.sock = sock
        self.proc = subprocess.Popen(VMM + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        self.out = b""

    def api(self) -> ApiClient:
        client = ApiClient(self.sock, timeout=WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while not client.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no API on {self.sock}: {self.proc.stderr.read().decode(errors='replace')}")
            time.sleep(0.005)      # the socket appears from another process
        return client

    def wait_output(self, needle: bytes = b"", timeout: float = WAIT_S) -> int:
        """perf_counter_ns when `needle` (any byte when empty) is first in the output read."""
        deadline = time.monotonic() + timeout
        while not (self.out and needle in self.out):
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RuntimeError(f"no {needle!r} within {timeout:g} s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"volt-vmm exited: {self.proc.stderr.read().decode(errors='replace')}")
            self.out += chunk
        return time.perf_counter_ns()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


def take_snapshot(work: Path, guest: str, name: str, memory: int = 128, cmdline: str = TICKS,
                  marker: bytes = b"tick 3 ") -> str:
    """Boot the test guest, wait for `marker`, snapshot it through the API; the snapshot's directory."""
    sock = str(work / f"{name}.sock")
    vmm = Vmm(["--kernel", guest, "--memory", str(memory), "--cmdline", cmdline, "--api-sock", sock], sock)
    try:
        vmm.wait_output(marker, timeout=600)
        vmm.api().put("/snapshot/create", {"snapshot_path": str(work / name)})
    finally:
        vmm.kill()
    return str(work / name)


def warm_vmms(work: Path, n: int, memory: int = 128) -> list[Vmm]:
    """n warm VMMs of (1 vCPU, `memory` MiB), each answering its API."""
    vmms = []
    for _ in range(n):
        sock = tempfile.mktemp(prefix="warm-", suffix=".sock", dir=work)
        vmms.append(Vmm(["--warm", "--vcpus", "1", "--memory", str(memory), "--api-sock", sock], sock))
    for vmm in vmms:
        vmm.api()
    return vmms


def warm_restores(work: Path, snap: str, total: int, batch: int, primed: bool = False) -> dict[str, list[float]]:
    """Per restore: load -> KVM_RUN, load -> first serial byte (in the VMM), send -> first byte here (ms).
    `primed`: each warm VMM was given the snapshot with "prepare" first (not timed)."""
    rows: dict[str, list[float]] = {"run": [], "serial": [], "here": [], **{k: [] for k, _, _ in STEPS}}
    while len(rows["run"]) < total:
        vmms = warm_vmms(work, min(batch, total - len(rows["run"])))
        try:
            for vmm in vmms:
                if primed:
                    load_snapshot(vmm.sock, snap, prepare=True)
                sent = time.perf_counter_ns()
                load_snapshot(vmm.sock, snap)
                here = vmm.wait_output()
                t = vmm.api().get("/vm")["timing"]
                rows["run"].append((max(t["run_entered_ns"]) - t["load_arrived_ns"]) / 1e6)
                rows["serial"].append((t["first_serial_ns"] - t["load_arrived_ns"]) / 1e6)
                rows["here"].append((here - sent) / 1e6)
                t["run_ns"] = max(t["run_entered_ns"])
                for key, a, b in STEPS:
                    rows[key].append((t[b] - t[a]) / 1e6)
                vmm.kill()
        finally:
            for vmm in vmms:
                if vmm.proc.poll() is None:
                    vmm.kill()
    return rows


def cold_restores(snap: str, runs: int) -> list[float]:
    """`volt-vmm --restore` spawned -> its first serial byte here (ms)."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        vmm = Vmm(["--restore", snap])
        try:
            out.append((vmm.wait_output() - t0) / 1e6)
        finally:
            vmm.kill()
    return out


def burst(work: Path, snap: str, n: int = 16) -> float:
    """n loads sent at once to n warm VMMs: ms until every clone has printed its first byte."""
    vmms = warm_vmms(work, n)
    try:
        done: list[int] = []
        errors: list[BaseException] = []

        def one(vmm: Vmm) -> None:
            try:
                load_snapshot(vmm.sock, snap)
                done.append(vmm.wait_output())
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=one, args=(v,)) for v in vmms]
        t0 = time.perf_counter_ns()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return (max(done) - t0) / 1e6
    finally:
        for vmm in vmms:
            vmm.kill()


def memory_of(pid: int) -> tuple[int, int]:
    """(USS, PSS) in KiB from /proc/PID/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields[key] = int(rest.split()[0])
    return fields["Private_Clean"] + fields["Private_Dirty"], fields["Pss"]


def sharing(work: Path, guest: str, clones: int) -> list[list]:
    """USS of `clones` idle warm-restored clones of a 1 GiB guest that touched 512 MiB, beside one
    cold-restored VMM's; total PSS."""
    snap = take_snapshot(work, guest, "big", memory=1024, cmdline=f"{TICKS} volt.mem=512", marker=b"mem-ok")
    cold = Vmm(["--restore", snap, "--api-sock", str(work / "cold.sock")])   # as volt runs a VMM: with its API
    vmms = warm_vmms(work, clones, memory=1024)
    try:
        cold.wait_output(b"tick")
        for vmm in vmms:
            load_snapshot(vmm.sock, snap)
        for vmm in [cold, *vmms]:
            vmm.wait_output(b"mem-ok")
        cold_uss, cold_pss = memory_of(cold.proc.pid)
        mem = [memory_of(v.proc.pid) for v in vmms]
    finally:
        for vmm in [cold, *vmms]:
            vmm.kill()
    uss = [u for u, _ in mem]
    return [["one cold-restored VMM: USS", f"{cold_uss / 1024:.1f} MiB", f"PSS {cold_pss / 1024:.1f} MiB"],
            [f"{clones} warm clones: USS per clone (min / median / max)",
             f"{min(uss) / 1024:.1f} / {statistics.median(uss) / 1024:.1f} / {max(uss) / 1024:.1f} MiB",
             f"median / cold USS = {statistics.median(uss) / cold_uss:.2f} (target <= 1.10)"],
            [f"{clones} warm clones: total PSS", f"{sum(p for _, p in mem) / 1024:.1f} MiB", ""]]


APPLY_SPEC = """apiVersion: volt/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  kernel: {{path: "builtin:testguest", cmdline: "{cmdline}"}}
  memory: 128Mi
  snapshots: {{restore: {restore}, pool: {pool}}}
"""


def apply_times(work: Path, runs: int) -> tuple[list[float], list[float]]:
    """`volt apply` wall time (ms) of a VM restored into a warm VMM of the pool, and of the same
    restore started cold (pool: 0), alternating; an anchor VM of the shape keeps the pool wanted.
    Each pooled run waits first until the pool is refilled (the refill runs in the background)."""
    env = dict(os.environ, VOLT_HOME=str(work / "volt-home"))

    def volt(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "volt_spec", *args], env=env, check=True, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL).stdout

    def spec(name: str, restore: str = "never", pool: int = 0) -> str:
        path = work / f"{name}.yaml"
        path.write_text(APPLY_SPEC.format(name=name, cmdline=TICKS, restore=restore, pool=pool))
        return str(path)
    volt("apply", spec("src"))
    log = work / "volt-home" / "vms" / "src" / "console.log"
    deadline = time.monotonic() + WAIT_S
    while b"tick 3 " not in (log.read_bytes() if log.exists() else b""):
        if time.monotonic() > deadline:
            raise RuntimeError("the source VM did not tick")
        time.sleep(0.01)
    volt("snapshot", "src", "--name", "gold")
    volt("delete", "src")
    volt("apply", spec("anchor", "gold", 1))
    pooled, cold = [], []
    for _ in range(runs):
        deadline = time.monotonic() + WAIT_S
        while "1 of 1 warm VMMs ready" not in volt("status"):
            if time.monotonic() > deadline:
                raise RuntimeError("the pool did not refill")
            time.sleep(0.05)
        for name, pool, out in (("p", 1, pooled), ("c", 0, cold)):
            t0 = time.perf_counter()
            said = volt("apply", spec(name, "gold", pool))
            out.append((time.perf_counter() - t0) * 1000)
            if ("into a warm VMM" in said) != bool(pool):
                raise RuntimeError(f"unexpected: {said.strip()}")
            volt("delete", name)
    volt("delete", "--all")
    return pooled, cold


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def row(name: str, samples: list[float], goal: str = "") -> list:
    return [name, len(samples), f"{pct(samples, 0.5):.3f}", f"{pct(samples, 0.99):.3f}", f"{max(samples):.3f}", goal]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--restores", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cold-runs", type=int, default=20)
    ap.add_argument("--clones", type=int, default=20)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--apply-runs", type=int, default=10, help="volt apply of a pooled VM vs a cold one, each")
    args = ap.parse_args()
    guest = str(build_guest())
    with tempfile.TemporaryDirectory(prefix="volt-pool-bench-") as tmp:
        work = Path(tmp)
        snap = take_snapshot(work, guest, "snap")
        warm = warm_restores(work, snap, args.restores, args.batch)
        primed = warm_restores(work, snap, args.restores, args.batch, primed=True)
        cold = cold_restores(snap, args.cold_runs)
        burst_ms = burst(work, snap)
        p50, p99 = pct(warm["run"], 0.5), pct(warm["run"], 0.99)
        print(tabulate([row("warm: load arrival -> last vCPU in KVM_RUN", warm["run"],
                            f"p50 <= 0.79 {'MET' if p50 <= 0.79 else 'MISSED'}, "
                            f"p99 <= 2 {'MET' if p99 <= 2 else 'MISSED'}"),
                        *[row(key, warm[key]) for key, _, _ in STEPS],
                        row("warm: load arrival -> first serial byte (in the VMM)", warm["serial"]),
                        row("primed warm: load arrival -> last vCPU in KVM_RUN", primed["run"],
                            f"p50 <= 0.79 {'MET' if pct(primed['run'], 0.5) <= 0.79 else 'MISSED'}, "
                            f"p99 <= 2 {'MET' if pct(primed['run'], 0.99) <= 2 else 'MISSED'}"),
                        *[row(key, primed[key]) for key, _, _ in STEPS],
                        row("primed warm: load arrival -> first serial byte (in the VMM)", primed["serial"]),
                        row("warm: PUT sent -> first byte at our end", warm["here"]),
                        row("cold volt-vmm --restore: spawn -> first byte at our end", cold)],
                       headers=["ms", "n", "p50", "p99", "max", "goal"]))
        print(f"\nwarm (PUT sent -> first byte) / cold (spawn -> first byte), p50: "
              f"{pct(warm['here'], 0.5) / pct(cold, 0.5):.3f}; load -> KVM_RUN p50 / cold p50: "
              f"{p50 / pct(cold, 0.5):.4f}")
        print(f"burst: 16 concurrent clone restores, all printing: {burst_ms:.1f} ms (Cloud Hypervisor mmap fork: 613 ms)")
        pooled, cold_apply = apply_times(work, args.apply_runs)
        print()
        print(tabulate([row("volt apply, restored into a warm VMM of the pool", pooled),
                        row("volt apply, the same restore started cold (pool: 0)", cold_apply)],
                       headers=["ms", "n", "p50", "p99", "max", ""]))
        print(f"volt apply pooled / cold, p50: {pct(pooled, 0.5) / pct(cold_apply, 0.5):.2f}")
        if not args.skip_memory:
            print()
            print(tabulate(sharing(work, guest, args.clones), headers=["memory", "", ""]))


if __name__ == "__main__":
    main()
