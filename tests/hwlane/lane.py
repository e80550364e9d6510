"""The hardware-KVM lane: run the test suite inside a Linux that has a real (SVM) KVM.

Our machines' /dev/kvm is PVM, which hides what users' hardware KVM exposes (a guest TSC of its
own, CPUID filtering, TSC-deadline and kvmclock across a restore) and cannot boot a stock Linux.
QEMU's TCG emulates AMD SVM well enough that Debian's generic kernel booted in it (the "L1") loads
kvm_amd with nested paging; the host's / is shared read-only by virtio-9p, made writable there by
a tmpfs overlay, and the checkout's own venv runs the tests in a chroot of it. The pytest result
comes back through a second, writable 9p share (a junit file and the exit status).

Everything the tests fetch (kernels, busybox, modules, the test guest) is fetched or built on the
host first, into $VOLT_CACHE, so the L1 needs no network.

Emulation artefacts (measured with QEMU's own L2s beside ours, so not ours): under multi-threaded
TCG, two Linux L2s at once make the L1 kernel die in its exception entry (a stack-guard hit,
"corrupted stack end") within minutes, on QEMU 7.2 and 10 alike; one at a time, 15 boots went
clean. So real-Linux tests run after the rest, alone (lane_phases), and after an L1 panic the lane
boots a fresh L1 for the tests that had not finished (tests/hwlane/progress.py logs each outcome
as it comes), for as long as each L1 finishes tests (L1_STALLED_BOOTS in a row that finish none,
or L1_MAX_BOOTS in all, end the lane). Single-threaded TCG is worse: there 2-vCPU Linux L2s of
both VMMs stall at boot. The L1 runs under QEMU from Debian backports when the system's is older
(tests/hwlane/qemu.py). $VOLT_LANE_L1_ARGS adds L1 kernel arguments (lane.kvm-amd=vgif=0 passes
module parameters; vgif=0 was tried and did not stop the panics).
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from volt_spec.boot.initramfs import initramfs_entries, write_cpio
from volt_spec.boot.kernel_fetch import default_cache_dir, fetch_busybox, fetch_debian_kernel, fetch_kernel_modules

from .progress import DONE_ENV, PROGRESS_ENV, STALLED, read_progress
from .qemu import Qemu, QemuFetchError, lane_qemu

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent
# What the L1 loads (their dependencies are found from each module's modinfo and loaded first).
L1_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay", "kvm-amd", "tun", "veth"]
TCG_THREAD = "multi"              # one host thread per L1 vCPU (VOLT_LANE_TCG_THREAD=single: one for all)
# EPYC with SVM, minus what TCG cannot emulate (QEMU would warn about each at start).
L1_CPU = ("EPYC,+svm,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,-topoext,-nrip-save,"
          "-xsavec")
# TCG's TSC is the host's, shared by all vCPUs, but Linux's boot-time sync check sees TCG's
# skew and marks it unstable (then KVM runs its unstable-TSC paths and the L1 clocksource is
# hpet). Users' servers have a stable TSC: tell the L1 so, like them it then runs KVM's master
# clock, and KVM_CLOCK_REALTIME works there.
# mitigations=off: no IBPB, retbleed/SRSO thunks or flushes around every L2 exit; under TCG these
# cost much and are paths TCG's SVM emulation gets wrong (a stack-guard panic in the L1's page-
# fault entry was seen with them on). The L1 is a throwaway test machine.
L1_KERNEL_ARGS = "tsc=reliable mitigations=off"
# TCG runs the suite 10-50x slower than a host: every test deadline is scaled by this.
TIMEOUT_SCALE = 10
WORKERS = 2
PER_TEST_TIMEOUT_S = 900         # one test, in the lane: a hang shows its stack and fails, the rest go on
BOOT_DEADLINE_S = 240             # QEMU start to "LANE: ready" (about 5-20 s when healthy)
# After an L1 panic a fresh L1 runs only the unfinished tests. CI saw four panics in one lane run
# (the Linux tests, alone, crash the L1 now and then), so boots go on while they make progress.
L1_STALLED_BOOTS = 3              # L1 boots in a row that finish no test: the lane gives up
L1_MAX_BOOTS = 10                 # L1 boots per lane run, whatever they finish
# A test whose guest triple-faulted or stalled (progress.py STALLED) in the lane is run again (and
# the lane names it): TCG's SVM breaks L2s now and then, QEMU's as well as ours. Only in the lane:
# make test on the host, where a triple fault or a stall is always ours, reruns nothing.
RERUN_ON = f"guest triple fault|{STALLED}"
# How often: a Linux L2 boot alone triple-faulted in 3 of 8 boots in one L1 (2026-12-06; none in
# 28 in two others), so once leaves a Linux test failing about one run in ten; twice, one in 35.
RERUNS = 2
PROGRESS_FILE = "progress.log"    # in the results share: one line per finished test (tests/hwlane/progress.py)
MARKER = "LANE: "
FAIL_MARKER = "LANE-FAIL: "
# The job prints a heartbeat every HEARTBEAT_S; an L1 silent for SILENT_S (not even that) has
# stopped: seen in the lane, QEMU near idle, the L1's own `sleep 20` never returning (its timers
# stopped under TCG). It is handled like a panic: a fresh L1 for the unfinished tests.
HEARTBEAT = MARKER + "heartbeat"
HEARTBEAT_S = 30
SILENT_S = 300


class LaneError(RuntimeError):
    """The lane could not run the tests: one line naming the cause."""


class L1Crashed(LaneError):
    """The L1 kernel itself panicked: TCG's SVM emulation, not our code (worth a fresh L1)."""


L1_PANIC = re.compile(r"\[\s*[\d.]+\] Kernel panic - not syncing")     # mid-line too (pytest's)
L1_BUG = re.compile(r"\[\s*[\d.]+\] (BUG|general protection fault|stack guard page)")


@dataclass
class LaneResult:
    rc: int
    counts: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    failed: list[str] = field(default_factory=list)
    attempts: int = 1
    reruns: list[str] = field(default_factory=list)     # run again after a guest triple fault or stall
    reasons: dict[str, str] = field(default_factory=dict)   # node id -> why it failed, one line

    def ok(self) -> bool:
        """Every test inside passed (pytest exits 5 when an L1 after a panic had none left to run)."""
        done = self.rc == 0 or (self.rc == 5 and self.attempts > 1)
        return done and not self.failed and self.counts.get("passed", 0) > 0

    def summary(self) -> str:
        parts = [f"{self.counts.get(k, 0)} {k}" for k in ("passed", "failed", "errors", "skipped")
                 if self.counts.get(k) or k == "passed"]
        boots = f", {self.attempts} L1 boots" if self.attempts > 1 else ""
        boots += f", {len(self.reruns)} run again after a guest triple fault or stall" if self.reruns else ""
        return (f"hardware-KVM lane: {', '.join(parts)} inside the L1 in {self.wall_s:.0f} s "
                f"(pytest exit {self.rc}{boots})")


@dataclass
class Progress:
    """What the L1 boots so far have shown: carried from one L1 to the next."""
    finished: dict[str, str] = field(default_factory=dict)    # node id -> outcome
    reruns: list[str] = field(default_factory=list)          # run again after a guest triple fault
    reasons: dict[str, str] = field(default_factory=dict)    # node id -> why it failed

    def read(self, log: Path) -> None:
        self.finished.update(read_progress(log, self.reruns, self.reasons))

    def result(self, rc: int, wall_s: float, attempts: int) -> LaneResult:
        counts, failed = outcome_counts(self.finished)
        return LaneResult(rc, counts, wall_s, failed, attempts, list(self.reruns),
                          {nodeid: self.reasons.get(nodeid, "") for nodeid in failed})


@dataclass(frozen=True)
class L1Image:
    """What boots an L1: the QEMU that runs it, its kernel and initramfs (prepared once per lane)."""
    qemu: Qemu
    vmlinuz: Path
    initrd: Path


def prepare_l1(cache: Path) -> L1Image:
    """Fetch QEMU, the L1's kernel and modules and the test inputs into the cache; build the initramfs."""
    try:
        qemu = lane_qemu(cache)
    except QemuFetchError as e:
        raise LaneError(f"no QEMU for the L1: {e} (Debian: apt-get install qemu-system-x86)") from None
    print(f"hardware-KVM lane: the L1 runs under QEMU {qemu.version} ({qemu.binary})", flush=True)
    prepare_host(cache)
    return L1Image(qemu, *l1_initramfs(cache))


def l1_initramfs(cache: Path) -> tuple[Path, Path]:
    """(the L1's vmlinuz, its initramfs): built from Debian packages and cached by content."""
    vmlinuz = fetch_debian_kernel(cache, flavour="generic")
    modules = fetch_kernel_modules(L1_MODULES, cache, flavour="generic", with_deps=True)
    busybox = fetch_busybox(cache)
    init = (HERE / "init.sh").read_bytes()
    digest = sha256(init + vmlinuz.name.encode() + busybox.name.encode()
                    + b"".join(m.name.encode() for m in modules)).hexdigest()[:16]
    out = cache / "hwlane" / f"l1-initrd-{digest}.gz"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        write_cpio(initramfs_entries(busybox, init, modules), tmp)
        os.replace(tmp, out)
    return vmlinuz, out


def prepare_host(cache: Path) -> None:
    """Fetch and build on the host what the tests inside would otherwise download."""
    from volt_spec.boot.initramfs import VIRTIO_MODULES
    from volt_spec.boot.kernel_fetch import vmlinux_path
    from volt_spec.guest.build import build_guest
    fetch_debian_kernel(cache)
    vmlinux_path(cache)
    fetch_busybox(cache)
    fetch_kernel_modules(VIRTIO_MODULES, cache)
    build_guest()


def qemu_argv(qemu: Qemu, vmlinuz: Path, initrd: Path, results: Path, memory_mib: int, cpus: int) -> list[str]:
    share = "security_model=none,multidevs=remap"
    return [*qemu.argv(), "-accel", f"tcg,thread={os.environ.get('VOLT_LANE_TCG_THREAD', TCG_THREAD)}", "-cpu", L1_CPU,
            "-m", str(memory_mib),
            "-smp", str(cpus), "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
            "-kernel", str(vmlinuz), "-initrd", str(initrd),
            "-append", f"console=ttyS0 panic=-1 loglevel=4 {L1_KERNEL_ARGS} {os.environ.get('VOLT_LANE_L1_ARGS', '')} "
                       f"lane.results={results}",
            "-virtfs", f"local,path=/,mount_tag=hostroot,readonly=on,{share}",
            "-virtfs", f"local,path={results},mount_tag=results,{share}"]


# Python's own files, read over 9p by every interpreter start, are copied into the L1's RAM
# first (one tar per tree, read at 9p's streaming speed): starts are ~35% faster under TCG.
PREFIX_EXCLUDES = ["lib/python3.*/site-packages", "lib/python3.*/test", "lib/python3.*/idlelib",
                   "lib/python3.*/tkinter", "lib/python3.*/ensurepip", "lib/python3.*/config-*", "*.opt-1.pyc",
                   "*.opt-2.pyc"]


def local_trees(results: Path) -> list[tuple[Path, Path]]:
    """(tar in the results share, the directory it replaces in the L1): the venv and the part
    of its base interpreter's prefix that the venv uses (bin/python3*, lib/python3.*, libpython)."""
    venv = CHECKOUT / ".venv"
    py = venv / "bin" / "python"
    prefix = Path(subprocess.run([str(py), "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                                 text=True, check=True).stdout.strip())
    members = [str(p.relative_to(prefix)) for p in [*prefix.glob("bin/python3*"), *prefix.glob("lib/python3.*"),
                                                     *prefix.glob("lib/libpython3*")]]
    trees = [(results / "prefix.tar", prefix, members, PREFIX_EXCLUDES), (results / "venv.tar", venv, ["."], [])]
    out = []
    for tar, root, names, excludes in trees:
        if names:
            subprocess.run(["tar", "-C", str(root), "-cf", str(tar), *(f"--exclude={e}" for e in excludes), *names],
                           check=True, capture_output=True)
            out.append((tar, root))
    return out


def job_script(results: Path, phases: list[list[str]], cache: Path, command: str | None = None) -> str:
    """What the L1 runs in its chroot: the checkout's own venv and pytest once per phase (junit to
    the results share, each phase's exit status on one line in `rc`), or `command` (a bash line
    run in the checkout with the venv first on PATH; in its own bash, so that its syntax error is
    its exit status 2, not the job's end without one, which reads as an L1 reset)."""
    env = {"PATH": f"{CHECKOUT / '.venv' / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root",
           "LANG": "C.UTF-8", "VOLT_CACHE": str(cache), "VOLT_LANE": "hw",
           "VOLT_TIMEOUT_SCALE": str(TIMEOUT_SCALE), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(CHECKOUT),       # this checkout's code, whatever the venv was installed from
           PROGRESS_ENV: str(results / PROGRESS_FILE), DONE_ENV: str(results / "done")}
    py = CHECKOUT / ".venv" / "bin" / "python"
    runs = [f"bash -c {shlex.quote(command)}"] if command else [shlex.join([
        str(py), "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.hwlane.progress", "--color=no", "-v",
        "-rfEsR", "--durations=20", f"--timeout={PER_TEST_TIMEOUT_S}",
        "-o", f"faulthandler_timeout={PER_TEST_TIMEOUT_S // 2}", f"--junitxml={results / f'junit-{i}.xml'}",
        "--reruns", str(RERUNS), "--only-rerun", RERUN_ON,
        *args]) for i, args in enumerate(phases, 1)]
    local = []
    for i, (tar, where) in enumerate(local_trees(results)):
        copy = f"/run/lane-local/{i}"
        local.append(f"mkdir -p {copy} && tar -xf {shlex.quote(str(tar))} -C {copy} && "
                     f"mount --bind {copy} {shlex.quote(str(where))} || echo '{MARKER}could not copy {where} to RAM'")
    rc = shlex.quote(str(results / "rc"))
    lines = ["set -u", f"(while sleep {HEARTBEAT_S}; do echo '{HEARTBEAT}'; done) &",
             *local, *(f"export {k}={shlex.quote(v)}" for k, v in env.items()),
             f"cd {shlex.quote(str(CHECKOUT))}",
             f'echo "{MARKER}volt host: $({shlex.quote(str(CHECKOUT / ".venv" / "bin" / "volt"))} host 2>&1 | tr "\\n" " ")"',
             f": > {rc}.part",
             *(f"{run} 2>&1; echo $? >> {rc}.part" for run in runs),
             f"mv {rc}.part {rc}"]
    return "\n".join(lines) + "\n"


def combined_rc(text: str) -> int:
    """One exit status for the phases' (one per line): the first failure, else 0 when any phase
    ran tests, else 5 (pytest's "no tests": every phase had nothing left or nothing selected)."""
    rcs = [int(word) for word in text.split() if word.isdigit()] or [1]
    bad = [rc for rc in rcs if rc not in (0, 5)]
    return bad[0] if bad else (0 if 0 in rcs else 5)


def run_lane(image: L1Image, phases: list[list[str]], timeout_s: float, memory_mib: int = 8192, cpus: int = 2,
             keep: Path | None = None, command: str | None = None,
             progress: Progress | None = None) -> int:
    """Boot the L1 once, run pytest inside (minus the tests `progress` has finished), return the
    job's exit status. `progress` gains every test that finished inside, even when the L1
    crashes. Raises LaneError (L1Crashed) with the reason."""
    progress = Progress() if progress is None else progress
    cache = default_cache_dir()
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    results = Path(tempfile.mkdtemp(prefix="volt-hwlane-", dir=keep))
    (results / "done").write_text("".join(f"{nodeid}\n" for nodeid in progress.finished))
    (results / "job.sh").write_text(job_script(results, phases, cache, command))
    console = results / "console.log"
    ran = False
    try:
        ran = _boot_and_wait(qemu_argv(image.qemu, image.vmlinuz, image.initrd, results, memory_mib, cpus),
                             console, timeout_s)
    finally:
        progress.read(results / PROGRESS_FILE)
    rc_file = results / "rc"
    if not rc_file.is_file() and ran:     # QEMU -no-reboot exits on a reset: the L1 itself triple-faulted
        raise L1Crashed(f"the L1 reset in the middle of the job, without a panic message (a triple fault "
                        f"of the L1 kernel under TCG); console: {console}")
    if not rc_file.is_file():
        raise LaneError("the job inside the L1 ended without an exit status; console: " + str(console))
    rc = combined_rc(rc_file.read_text())
    if keep is None:
        shutil.rmtree(results, ignore_errors=True)
    return rc


def _boot_and_wait(argv: list[str], console: Path, timeout_s: float) -> bool:
    """Run QEMU, echo its console with an `L1| ` prefix, enforce the deadlines. True when the L1
    got as far as running the job."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ready, buf, tail, bug = False, b"", [], None
    heard = started
    try:
        with open(console, "wb") as log:
            while True:
                now = time.monotonic()
                if not ready and now - started > BOOT_DEADLINE_S:
                    raise LaneError(f"the L1 did not come up within {BOOT_DEADLINE_S} s; last lines: {tail[-5:]}")
                if now - started > timeout_s:
                    raise LaneError(f"timeout: the lane ran over {timeout_s / 60:.0f} min; last lines: {tail[-5:]}")
                if ready and now - heard > SILENT_S:
                    raise L1Crashed(f"the L1 went silent: no console output, not even its heartbeat, for "
                                    f"{SILENT_S} s (its timers stopped under TCG); console: {console}")
                readable, _, _ = select.select([proc.stdout], [], [], 1.0)
                if not readable:
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                heard = time.monotonic()
                log.write(chunk)
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").rstrip("\r")
                    if line == HEARTBEAT:
                        continue
                    tail = (tail + [line])[-20:]
                    print(f"L1| {line}", flush=True)
                    ready = ready or line.startswith(MARKER + "ready")
                    if line.startswith(FAIL_MARKER):
                        raise LaneError(line[len(FAIL_MARKER):])
                    bug = bug or (line if L1_BUG.search(line) else None)
                    if L1_PANIC.search(line):
                        raise L1Crashed(f"the L1 kernel panicked ({bug or line}); console: {console}")
    finally:
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
    if code < 0 and ready:           # QEMU itself crashed under the job (TCG): like an L1 crash
        raise L1Crashed(f"QEMU crashed (signal {-code}) while the L1 ran the job; last lines: {tail[-3:]}")
    if code != 0:
        raise LaneError(f"QEMU exited {code}; last lines: {tail[-5:]}")
    return ready


def outcome_counts(finished: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    """{'passed', 'failed', 'errors', 'skipped'} and the failed test ids, from {node id: outcome}."""
    counts = {kind: 0 for kind in ("passed", "failed", "errors", "skipped")}
    for outcome in finished.values():
        counts[outcome] += 1
    return counts, [nodeid for nodeid, outcome in finished.items() if outcome in ("failed", "errors")]


def lane_phases(which: str, extra: list[str]) -> list[list[str]]:
    """The pytest runs inside: everything but real Linux on two workers, then real Linux alone.

    Two workers, a file each at a time (module fixtures stay on one): under TCG a test mostly
    waits on one busy interpreter, and the L1 has two vCPUs. But two Linux L2s at once make the
    L1 itself crash within minutes under multi-threaded TCG (QEMU's own L2s as well as ours,
    measured; one at a time: none in 15 boots), so the `linux` tests run after, on one worker.
    (Single-threaded TCG is no way out: there 2-vCPU Linux L2s of both VMMs stall at boot.)"""
    parallel = ["-n", str(WORKERS), "--dist", "loadfile"] if WORKERS > 1 else []
    if which == "ci":
        files = ci_files()
        linux = [f for f in files if "pytest.mark.linux" in (CHECKOUT / f).read_text()]
        return [["-m", "hwlane and not linux", *files, *parallel, *extra], ["-m", "hwlane and linux", *linux, *extra]]
    return [["-m", "not linux", *parallel, *extra], ["-m", "linux", *extra]]


def ci_files() -> list[str]:
    """The test files holding hwlane tests: pytest inside imports only these (collecting all
    of tests/ takes minutes under TCG)."""
    return sorted(str(p.relative_to(CHECKOUT)) for p in (CHECKOUT / "tests").glob("test_*.py")
                  if "pytest.mark.hwlane" in p.read_text())


def run_attempts(phases: list[list[str]], timeout_s: float, memory_mib: int, keep: Path | None = None,
                 command: str | None = None) -> LaneResult:
    """run_lane, again in a fresh L1 after an L1 panic, within one deadline: the tests that finished
    before it keep their outcome, the next L1 runs the others. The lane gives up after
    L1_STALLED_BOOTS boots in a row that finished no test (a test that always crashes the L1),
    after L1_MAX_BOOTS boots, or with under a minute left."""
    started = time.monotonic()
    deadline = started + timeout_s
    image = prepare_l1(default_cache_dir())
    progress = Progress()
    stalled = 0
    for attempt in range(1, L1_MAX_BOOTS + 1):
        before = len(progress.finished)
        try:
            rc = run_lane(image, phases, deadline - time.monotonic(), memory_mib, keep=keep, command=command,
                          progress=progress)
            return progress.result(rc, time.monotonic() - started, attempt)
        except L1Crashed as e:
            stalled = 0 if len(progress.finished) > before else stalled + 1
            why = give_up_reason(attempt, stalled, deadline - time.monotonic())
            if why:
                raise LaneError(f"{e} (L1 boot {attempt}: {why}; {len(progress.finished)} tests had finished)") from None
            again = "the command again" if command else f"the tests not yet finished ({len(progress.finished)} had)"
            print(f"hardware-KVM lane: {e}; a fresh L1 runs {again}", file=sys.stderr)
    raise AssertionError("unreachable")


def give_up_reason(attempt: int, stalled: int, left_s: float) -> str | None:
    """Why no fresh L1 is booted after a crash, or None."""
    if stalled >= L1_STALLED_BOOTS:
        return f"{stalled} L1 boots in a row finished no test"
    if attempt >= L1_MAX_BOOTS:
        return f"the last of at most {L1_MAX_BOOTS}"
    if left_s < 60:
        return "under a minute of the lane's time left"
    return None


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m tests.hwlane", description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["ci", "full"], default="ci",
                        help="ci: the tests that boot guests for snapshots, restore, clones, policies, "
                             "virtio, apply and Linux (marker hwlane); full: the whole suite")
    parser.add_argument("--timeout-min", type=float, default=None, help="default: 50 (ci), 300 (full), for all L1 boots together")
    parser.add_argument("--memory", type=int, default=8192, help="the L1's memory in MiB")
    parser.add_argument("--keep", type=Path, default=None, help="keep the console log and junit file under DIR")
    parser.add_argument("--run", default=None, metavar="COMMAND",
                        help="run this bash command in the checkout inside the L1 instead of pytest "
                             "(e.g. 'python benchmarks/linux.py'); its exit status is the lane's")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    phases = lane_phases(args.set, args.pytest_args)
    timeout = 60 * (args.timeout_min or (50 if args.set == "ci" else 300))
    try:
        result = run_attempts(phases, timeout, args.memory, keep=args.keep, command=args.run)
    except LaneError as e:
        print(f"hardware-KVM lane FAILED: {e}", file=sys.stderr)
        return 2
    if args.run:
        print(f"hardware-KVM lane: {args.run!r} exited {result.rc} inside the L1 ({result.wall_s:.0f} s)")
        return result.rc
    print(result.summary())
    for name in result.failed:
        why = result.reasons.get(name)
        print(f"  failed in the lane: {name}" + (f": {why}" if why else ""))
    for name in result.reruns:
        print(f"  run again after a guest triple fault or stall (emulation): {name}")
    return 0 if result.ok() else 1
