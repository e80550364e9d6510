"""Full vs diff snapshots of a guest that filled 256 MiB once and rewrites 16 MiB between snapshots.

The test guest runs `volt.mem=256 volt.dirty=16` (a 256 MiB region written once and then only
read, and a 16 MiB region rewritten every `volt.tick_ms` = 100 ms) under
`volt-vmm --track-dirty-pages`, for each memory size (`--sizes`, default 1024 and 4096 MiB).

1. Capture: a full snapshot, then diffs, each taken after the guest finished another pass over
   its 16 MiB (so 16 MiB and a few pages of stack and counters changed since the snapshot
   before). Per kind: bytes written (the memory file's data bytes plus state.json), the
   guest's pause (`paused_ms`: vCPUs stopped, device and vCPU state saved, the dirty log read
   and re-protected, the memory writer forked) and the end-to-end time of PUT /snapshot/create
   (until it is complete and fsynced on disk). Full: median of `--runs` full snapshots taken
   the same way.
2. Restore: `volt-vmm --restore DIR` spawned until its first `tick` line, for the full snapshot
   and for the ends of chains of 1, 5 and 10 diffs (median of `--runs`, after one warm-up that
   fills the page cache).
The 256 MiB are filled with `volt.memfill=text` (bytes that compress about as guest RAM does; the
default pattern does not compress at all); the 16 MiB rewritten between snapshots do not compress.

3. Compression: `volt snapshots export` of the full snapshot (zstd level 1, seekable frames of
   4 MiB, its data extents only) and `import` of that file (decompress, checksum, write, then
   the memory checksum read back), in MB/s of the snapshot's data bytes, and the size ratio;
   beside the zstd CLI (`zstd -1 -T1`, `zstd -d`) on the same memory.snap in the same run (it
   reads the whole file, holes as zeros: its MB/s are over the file's full size).

4. Compressed at rest (`snapshots.compress: zstd`): the full snapshot's memory.snap compressed
   as the VMM does it (2 MiB frames, level 1: size ratio, compress MB/s; decompress MB/s over
   every frame that is not zeros, as the memory server does, zstd's frame checksums checked), then `volt-vmm --restore` of it until the first `tick` line,
   decompressed on demand (userfaultfd: the default) and ahead (into a memfd first:
   VOLT_COMPRESSED_RESTORE=ahead), beside the uncompressed snapshot in the same run.

Targets (issue 14): a diff writes at most 1.1x the dirtied bytes plus its state; its pause at
most 2 ms plus 1 ms per 64 MiB dirtied; a 10-diff chain restores within 1.3x of a full snapshot;
a compressed snapshot restores to its first tick within 2x of an uncompressed one.

usage: python benchmarks/snapshots.py [--sizes 1024,4096] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from volt_spec.api.client import ApiClient  # noqa: E402
from volt_spec.guest.build import build_guest  # noqa: E402
from volt_spec.kvm.flavour import kvm_flavour  # noqa: E402
from volt_spec.runner.vmctl import vmm_command  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Console, ms, spawn_until  # noqa: E402

CMDLINE = "volt.ticks=0 volt.tick_ms=100 volt.mem=256 volt.memfill=text volt.dirty=16"
DIRTY_MIB = 16
TICK_LINE = re.compile(rb"^tick \d+ ", re.M)
GEN = re.compile(r"^dirty-ok gen=(\d+)$")
CHAINS = (1, 5, 10)


def next_pass(vm: Console) -> None:
    """Wait until the guest has finished one more pass over its dirty region."""
    gens = [int(m.group(1)) for line in vm.lines if (m := GEN.match(line))]
    vm.wait_for(rf"^dirty-ok gen={(gens[-1] if gens else 0) + 1}$")


def take(client: ApiClient, dest: Path, kind: str) -> dict:
    t0 = time.perf_counter()
    reply = client.put("/snapshot/create", {"snapshot_path": str(dest), "snapshot_type": kind}) or {}
    reply["wall_ms"] = ms(time.perf_counter() - t0)
    reply["written"] = int(reply["memory_data_bytes"]) + (dest / "state.json").stat().st_size
    assert reply.get("kind", "full") == kind.lower(), (kind, reply)
    return reply


def capture(guest: str, work: Path, size: int, runs: int) -> tuple[list[dict], list[dict], Path]:
    """(full snapshots, the diff chain on the first full one, the folder)."""
    folder = work / f"{size}"
    folder.mkdir()
    sock = str(work / f"{size}.sock")
    cmd = vmm_command() + ["--kernel", guest, "--memory", str(size), "--cmdline", CMDLINE, "--api-sock", sock,
                           "--state-dir", str(folder), "--track-dirty-pages"]
    with Console(cmd, work / f"{size}.log") as vm:
        vm.wait_for(r"^mem-ok ", timeout=300)
        vm.wait_for(r"^dirty-ok gen=2$", timeout=300)
        client = ApiClient(sock, timeout=600)
        fulls = []
        for i in range(runs):
            next_pass(vm)
            fulls.append(take(client, folder / f"full-{i}", "Full"))
        diffs = []
        for i in range(1, max(CHAINS) + 1):
            next_pass(vm)
            diffs.append(take(client, folder / f"diff-{i}", "Diff"))
    return fulls, diffs, folder


def restore_ms(snap: Path, runs: int, env: dict | None = None) -> float:
    import functools
    import subprocess
    cmd = vmm_command() + ["--restore", str(snap)]
    popen = functools.partial(subprocess.Popen, env=dict(os.environ, **(env or {})))
    spawn_until(cmd, TICK_LINE, 120, popen=popen)
    return statistics.median(ms(spawn_until(cmd, TICK_LINE, 120, popen=popen)[0]) for _ in range(runs))


def compressed_copy(snap: Path, dest: Path) -> tuple[float, dict]:
    """`snap` as `snapshots.compress: zstd` keeps it (what the VMM does after a snapshot, timed):
    memory.snap.zst beside a state.json that names it. Returns (seconds compressing, its layout)."""
    from volt_spec.snapshot.compressed import FILE, compress_file
    from volt_spec.snapshot.create import record_fingerprint
    from volt_spec.snapshot.format import MEMORY_FILE, STATE_FILE, encode, read_state
    dest.mkdir()
    state = read_state(str(snap))
    fd = os.open(snap / MEMORY_FILE, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        info, _ = compress_file(fd, str(dest / FILE))
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
    state["memory"].update(file=FILE, compressed=info)
    (dest / STATE_FILE).write_bytes(encode(state))
    record_fingerprint(str(dest), state["memory"]["sha256"], FILE)
    return seconds, state["memory"]


def report(size: int, fulls: list[dict], diffs: list[dict], folder: Path, runs: int) -> list[str]:
    med = lambda rows, key: statistics.median(r[key] for r in rows)   # noqa: E731
    print(f"\n{size} MiB guest ({kvm_flavour()} KVM): full = median of {len(fulls)}, diff = median of {len(diffs)}")
    print(tabulate([[kind, f"{med(rows, 'written') / 2**20:.1f}", f"{med(rows, 'paused_ms'):.2f}",
                     f"{med(rows, 'wall_ms'):.1f}"] for kind, rows in (("full", fulls), ("diff", diffs))],
                   headers=["snapshot", "MiB written", "pause ms", "end-to-end ms"], tablefmt="github"))
    # The last full snapshot was taken right before the first diff: it is the chain's base.
    base = folder / "full-{}".format(len(fulls) - 1)
    full_ms = restore_ms(base, runs)
    rows = [["full", f"{full_ms:.1f}", "1.00"]]
    for n in CHAINS:
        t = restore_ms(folder / f"diff-{n}", runs)
        rows.append([f"chain of {n} diff{'s' * (n > 1)}", f"{t:.1f}", f"{t / full_ms:.2f}"])
    print(tabulate(rows, headers=["restore from", "spawn -> first tick ms", "vs full"], tablefmt="github"))
    dirtied = DIRTY_MIB << 20
    ratio = med(diffs, "written") / dirtied
    pause_goal = 2 + DIRTY_MIB / 64
    chain_ratio = float(rows[-1][2])
    return [f"{size} MiB: diff writes {ratio:.2f}x the 16 MiB dirtied incl. state (goal <= 1.1): "
            f"{'MET' if ratio <= 1.1 else 'MISSED'}",
            f"{size} MiB: diff pause {med(diffs, 'paused_ms'):.2f} ms (goal <= {pause_goal:.2f}): "
            f"{'MET' if med(diffs, 'paused_ms') <= pause_goal else 'MISSED'}",
            f"{size} MiB: 10-diff chain restore {chain_ratio:.2f}x full (goal <= 1.3): "
            f"{'MET' if chain_ratio <= 1.3 else 'MISSED'}"]


def compressed_restore(folder: Path, work: Path, runs: int) -> tuple[list[list[str]], list[list[str]], str]:
    """snapshots.compress: zstd on the chain's full snapshot: its compression (size, MB/s) and
    the restore to first tick, decompressed on demand and ahead, beside the uncompressed one."""
    from volt_spec.snapshot.compressed import Frames
    snap = sorted(folder.glob("full-*"))[-1]
    work.mkdir(exist_ok=True)
    seconds, layout = compressed_copy(snap, work / "compressed")
    zst = work / "compressed" / layout["file"]
    fd = os.open(zst, os.O_RDONLY)
    try:
        frames = Frames(fd, layout["size"], str(zst))
        t0 = time.perf_counter()
        for i in range(len(frames)):                   # what a restore's memory server does
            if not frames.is_zero(i):
                frames.frame(i)
        t_d = time.perf_counter() - t0
    finally:
        os.close(fd)
    data, out = layout["data_bytes"], layout["compressed"]["bytes"]
    sizes = [["snapshots.compress: zstd (2 MiB frames)", f"{data / 2**20:.0f} MiB data", f"{out / 2**20:.1f}",
              f"{data / out:.2f}", f"{data / seconds / 1e6:.0f}", f"{data / t_d / 1e6:.0f}"]]
    plain = restore_ms(snap, runs)
    lazy = restore_ms(work / "compressed", runs)
    ahead = restore_ms(work / "compressed", runs, {"VOLT_COMPRESSED_RESTORE": "ahead"})
    rows = [["uncompressed (memory.snap, MAP_PRIVATE)", f"{plain:.1f}", "1.00"],
            ["compressed, on demand (userfaultfd)", f"{lazy:.1f}", f"{lazy / plain:.2f}"],
            ["compressed, decompressed ahead (memfd)", f"{ahead:.1f}", f"{ahead / plain:.2f}"]]
    verdict = (f"compressed restore (on demand) {lazy / plain:.2f}x uncompressed (goal <= 2): "
               f"{'MET' if lazy / plain <= 2 else 'MISSED'}; ahead: {ahead / plain:.2f}x")
    return sizes, rows, verdict


def compression(folder: Path, work: Path) -> list[list[str]]:
    """Export/import of the chain's full snapshot and the zstd CLI on its memory file."""
    import shutil
    import subprocess
    from volt_spec.snapshot.export import export, import_into
    snap = sorted(folder.glob("full-*"))[-1]
    work.mkdir(exist_ok=True)
    out = work / "export.volt"
    t0 = time.perf_counter()
    result = export(str(snap), str(out), "bench")
    t_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    import_into(str(out), str(work / "imported"), "again")
    t_import = time.perf_counter() - t0
    data = result["data_bytes"]
    rows = [["volt snapshots export / import", f"{data / 2**20:.0f} MiB data", f"{result['bytes'] / 2**20:.1f}",
             f"{data / result['bytes']:.2f}", f"{data / t_export / 1e6:.0f}", f"{data / t_import / 1e6:.0f}"]]
    zstd = shutil.which("zstd")
    if zstd:
        mem, packed, back = snap / "memory.snap", work / "memory.zst", work / "memory.back"
        size = mem.stat().st_size
        t0 = time.perf_counter()
        subprocess.run([zstd, "-1", "-T1", "-q", "-f", "-o", str(packed), str(mem)], check=True)
        t_c = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([zstd, "-d", "-q", "-f", "--sparse", "-o", str(back), str(packed)], check=True)
        t_d = time.perf_counter() - t0
        rows.append(["zstd -1 -T1 / zstd -d, memory.snap", f"{size / 2**20:.0f} MiB file", f"{packed.stat().st_size / 2**20:.1f}",
                     f"{data / packed.stat().st_size:.2f}", f"{size / t_c / 1e6:.0f}", f"{size / t_d / 1e6:.0f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    guest = str(build_guest())
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="volt-bench-snap-", dir=os.environ.get("VOLT_BENCH_DIR", "/var/tmp")) as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            fulls, diffs, folder = capture(guest, Path(tmp), size, args.runs)
            verdicts += report(size, fulls, diffs, folder, args.runs)
            sizes, restores, verdict = compressed_restore(folder, Path(tmp) / f"{size}-c", args.runs)
            print(tabulate(compression(folder, Path(tmp) / f"{size}-z") + sizes, tablefmt="github",
                           headers=["compression", "input", "MiB out", "ratio (data / out)",
                                    "compress MB/s", "decompress MB/s"]))
            print(tabulate(restores, headers=["restore from", "spawn -> first tick ms", "vs uncompressed"],
                           tablefmt="github"))
            verdicts.append(f"{size} MiB: {verdict}")
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
