"""The hardware-KVM lane's pure parts: module load order, the job it runs, how it reads results."""

from __future__ import annotations

import subprocess

import pytest

from volt_spec.boot.kernel_fetch import KernelFetchError, _load_order
from tests.hwlane.lane import CHECKOUT, ci_files, job_script, outcome_counts


def fake_module(tmp_path, name, depends):
    path = tmp_path / f"{name}.ko"
    path.write_bytes(b"\x7fELF...\0license=GPL\0depends=" + ",".join(depends).encode() + b"\0vermagic=6.1\0")
    return path


def test_modules_load_after_their_dependencies(tmp_path):
    found = {"9p": fake_module(tmp_path, "9p", ["9pnet", "fscache", "netfs"]),
             "9pnet": fake_module(tmp_path, "9pnet", []), "fscache": fake_module(tmp_path, "fscache", ["netfs"]),
             "netfs": fake_module(tmp_path, "netfs", []), "kvm_amd": fake_module(tmp_path, "kvm-amd", ["kvm", "ccp"]),
             "kvm": fake_module(tmp_path, "kvm", ["irqbypass"]), "ccp": fake_module(tmp_path, "ccp", []),
             "irqbypass": fake_module(tmp_path, "irqbypass", [])}
    order = _load_order(["9p", "kvm-amd"], found, "linux-image.deb")
    assert sorted(order) == sorted(found)
    for name, path in found.items():
        deps = path.read_bytes().split(b"depends=")[1].split(b"\0")[0].decode()
        for dep in filter(None, deps.split(",")):
            assert order.index(dep.replace("-", "_")) < order.index(name), (dep, name, order)


def test_a_missing_dependency_is_named(tmp_path):
    found = {"a": fake_module(tmp_path, "a", ["b"])}
    with pytest.raises(KernelFetchError, match="has no module b .needed by a."):
        _load_order(["a"], found, "x.deb")


def test_the_job_scales_deadlines_and_runs_this_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr("tests.hwlane.lane.local_trees", lambda results: [])
    script = job_script(tmp_path, [["-m", "hwlane and not linux"], ["-m", "hwlane and linux"]], tmp_path / "cache")
    assert "export VOLT_TIMEOUT_SCALE=10" in script and f"export PYTHONPATH={CHECKOUT}" in script
    assert f"--junitxml={tmp_path / 'junit-1.xml'}" in script and f"--junitxml={tmp_path / 'junit-2.xml'}" in script
    assert script.count(f"echo $? >> {tmp_path / 'rc'}.part") == 2
    assert script.rstrip().endswith(f"mv {tmp_path / 'rc'}.part {tmp_path / 'rc'}")
    assert "-p tests.hwlane.progress" in script and f"VOLT_LANE_PROGRESS={tmp_path / 'progress.log'}" in script
    assert "bash -c 'python benchmarks/linux.py' 2>&1; echo $? >>" in job_script(tmp_path, [], tmp_path,
                                                                              command="python benchmarks/linux.py")


def test_a_lane_command_with_a_bash_syntax_error_still_records_its_exit_status(tmp_path):
    """The job script is sh: a command with bash syntax (or a syntax error) runs in its own bash,
    so the lane reads its exit status instead of seeing a job that ended without one."""
    script = job_script(tmp_path, [], tmp_path, command='echo ${PIPESTATUS[0]}; false | true; exit ${PIPESTATUS[0]}')
    line = next(ln for ln in script.splitlines() if ln.startswith("bash -c"))
    subprocess.run(["sh", "-c", line], check=True, capture_output=True)
    assert (tmp_path / "rc.part").read_text() == "1\n"
    bad = next(ln for ln in job_script(tmp_path, [], tmp_path, command="if then").splitlines() if ln.startswith("bash -c"))
    subprocess.run(["sh", "-c", bad], check=True, capture_output=True)
    assert (tmp_path / "rc.part").read_text() == "1\n2\n"


def test_real_linux_runs_alone_after_the_rest():
    from tests.hwlane.lane import lane_phases
    rest, linux = lane_phases("ci", ["-x"])
    assert rest[:2] == ["-m", "hwlane and not linux"] and "-n" in rest and rest[-1] == "-x"
    assert linux[:2] == ["-m", "hwlane and linux"] and "-n" not in linux
    assert "tests/test_linux_e2e.py" in linux and "tests/test_e2e_policy.py" not in linux


def test_the_phases_exit_statuses_combine():
    from tests.hwlane.lane import combined_rc
    assert combined_rc("0\n0\n") == 0 and combined_rc("0\n5\n") == 0 and combined_rc("5\n5\n") == 5
    assert combined_rc("1\n0\n") == 1 and combined_rc("0\n2\n") == 2 and combined_rc("") == 1


def test_ci_set_holds_the_guest_booting_files():
    files = ci_files()
    for name in ("test_snapshot_restore", "test_e2e_policy", "test_virtio_e2e", "test_linux_e2e"):
        assert f"tests/{name}.py" in files
    assert "tests/test_schema_corpus.py" not in files


def test_outcomes_survive_a_crash_and_the_worst_phase_counts(tmp_path):
    from tests.hwlane.progress import phase_outcome, read_progress
    log = tmp_path / "progress.log"
    lines = [(phase_outcome(w, o), n) for w, o, n in [
        ("setup", "passed", "t::a"), ("call", "passed", "t::a"), ("teardown", "passed", "t::a"),
        ("call", "failed", "t::b"), ("setup", "skipped", "t::c"),
        ("call", "passed", "t::d"), ("teardown", "failed", "t::d"), ("setup", "failed", "t::e")]]
    log.write_text("".join(f"{o} {n}\n" for o, n in lines if o) + "passed t::torn-by-the-cra")
    finished = read_progress(log)
    assert finished == {"t::a": "passed", "t::b": "failed", "t::c": "skipped", "t::d": "errors",
                        "t::e": "errors"}
    assert outcome_counts(finished)[0]["errors"] == 2 and outcome_counts(finished)[1][:3] == ["t::b", "t::d", "t::e"]


def test_a_second_l1_runs_only_what_the_first_had_not_finished(tmp_path):
    """A real pytest run with the plugin: tests listed as done are deselected, the rest logged."""
    from tests.hwlane.progress import read_progress
    import os
    import sys
    (tmp_path / "test_x.py").write_text("def test_done():\n    assert False\n\n"
                                        "def test_left():\n    pass\n\n"
                                        "def test_left_failing():\n    assert False\n")
    (tmp_path / "done").write_text("test_x.py::test_done\n")
    env = {**os.environ, "VOLT_LANE_PROGRESS": str(tmp_path / "p.log"), "VOLT_LANE_DONE": str(tmp_path / "done"),
           "PYTHONPATH": str(CHECKOUT)}
    env.pop("PYTEST_XDIST_WORKER", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.hwlane.progress", "-p", "no:cacheprovider",
                          "-q", "test_x.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "1 deselected" in run.stdout, run.stdout
    assert (tmp_path / "p.log").read_text().splitlines() == [
        "passed test_x.py::test_left", "failed test_x.py::test_left_failing",
        "why test_x.py::test_left_failing\tassert False"]
    reasons = {}
    read_progress(tmp_path / "p.log", reasons=reasons)
    assert reasons == {"test_x.py::test_left_failing": "assert False"}, "CI shows the lane's last lines: they say why"


def pytest_like_the_lane(tmp_path, test_file: str):
    """pytest in `tmp_path` with the lane's plugin and rerun rule (one rerun); progress to p.log."""
    import os
    import subprocess
    import sys
    from tests.hwlane.lane import RERUN_ON
    env = {**os.environ, "VOLT_LANE_PROGRESS": str(tmp_path / "p.log"), "PYTHONPATH": str(CHECKOUT)}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("VOLT_LANE_DONE", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.hwlane.progress", "-p", "no:cacheprovider",
                           "-q", "--reruns", "1", "--only-rerun", RERUN_ON, test_file], cwd=tmp_path, env=env,
                          capture_output=True, text=True)


def test_a_guest_triple_fault_is_run_again_once_and_logged(tmp_path):
    """As the lane runs pytest: a triple fault gets one more try (logged as a rerun), any other
    failure none."""
    from tests.hwlane.progress import read_progress
    (tmp_path / "test_y.py").write_text(
        "import pathlib\n"
        "def test_flaky_emulator(tmp_path_factory):\n"
        "    mark = pathlib.Path(__file__).with_name('tried')\n"
        "    if not mark.exists():\n"
        "        mark.write_text('1')\n"
        "        raise AssertionError('volt-vmm: guest triple fault (vcpu 0, rip=0xfff0)')\n\n"
        "def test_ours():\n    assert False, 'a real bug'\n")
    pytest_like_the_lane(tmp_path, "test_y.py")
    reruns = []
    assert read_progress(tmp_path / "p.log", reruns) == {"test_y.py::test_flaky_emulator": "passed",
                                                         "test_y.py::test_ours": "failed"}
    assert reruns == ["test_y.py::test_flaky_emulator"]


def fake_vm(home, name, quiet_s, pid, generation="g1", ended=None):
    """A VM directory as the supervisor leaves it: instance.json, a console last written
    `quiet_s` ago and, when `ended`, the exit record of that generation."""
    import json
    import os
    import time
    vm = home / "vms" / name
    vm.mkdir(parents=True)
    (vm / "instance.json").write_text(json.dumps({"generation": generation, "vmm_pid": pid,
                                                  "api_sock": str(vm / "run" / "api.sock")}))
    (vm / "console.log").write_text("tick 10\n")
    then = time.time() - quiet_s
    os.utime(vm / "console.log", (then, then))
    if ended:
        (vm / "exit.json").write_text(json.dumps({"generation": ended, "reason": "guest powered off"}))
    return vm


def test_a_running_guest_with_a_silent_console_is_stalled(tmp_path):
    import os
    import time
    from tests.hwlane.progress import QUIET_S, stalled_vms
    home = tmp_path / "w" / "home"
    fake_vm(home, "stuck", QUIET_S + 60, os.getpid())
    fake_vm(home, "chatty", 1, os.getpid())
    fake_vm(home, "done", QUIET_S + 60, os.getpid(), ended="g1")
    fake_vm(home, "gone", QUIET_S + 60, 2 ** 22 + 12345)                   # no such process
    assert stalled_vms(tmp_path, time.time(), running=lambda inst: True) == ["vm/stuck silent for 180 s"]
    assert stalled_vms(tmp_path, time.time(), running=lambda inst: False) == [], "a VMM that does not answer"


def test_a_test_that_failed_beside_a_stalled_guest_is_run_again(tmp_path):
    """As the lane runs pytest: the failure's message gains the stall, so the test gets another try."""
    from tests.hwlane.progress import read_progress
    (tmp_path / "test_z.py").write_text(
        "import json, os, pathlib, socket, threading, time\n"
        "def serve(path):\n"
        "    s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(4)\n"
        "    body = json.dumps({'state': 'Running'}).encode()\n"
        "    def loop():\n"
        "        while True:\n"
        "            c, _ = s.accept(); c.recv(65536)\n"
        "            c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: '\n"
        "                      + str(len(body)).encode() + b'\\r\\n\\r\\n' + body); c.close()\n"
        "    threading.Thread(target=loop, daemon=True).start()\n"
        "def test_waits_on_a_stuck_guest(tmp_path):\n"
        "    mark = pathlib.Path(__file__).with_name('tried')\n"
        "    if mark.exists():\n"
        "        return\n"
        "    mark.write_text('1')\n"
        "    vm = tmp_path / 'home' / 'vms' / 'p'; (vm / 'run').mkdir(parents=True)\n"
        "    (vm / 'instance.json').write_text(json.dumps({'generation': 'g', 'vmm_pid': os.getpid(),\n"
        "                                                 'api_sock': str(vm / 'run' / 'api.sock')}))\n"
        "    (vm / 'console.log').write_text('tick 10\\n'); os.utime(vm / 'console.log', (1, 1))\n"
        "    serve(str(vm / 'run' / 'api.sock'))\n"
        "    assert False, \"'dirty-ok gen=2' not in vm/p's console\"\n")
    out = pytest_like_the_lane(tmp_path, "test_z.py")
    reruns = []
    assert read_progress(tmp_path / "p.log", reruns) == {"test_z.py::test_waits_on_a_stuck_guest": "passed"}, out.stdout
    assert reruns == ["test_z.py::test_waits_on_a_stuck_guest"], "its own message names no triple fault"


def test_the_lane_passes_only_when_every_test_inside_passed():
    from tests.hwlane.lane import LaneResult
    assert LaneResult(0, {"passed": 3}).ok()
    assert LaneResult(5, {"passed": 3}, attempts=2).ok()       # the second L1 had nothing left
    assert not LaneResult(5, {"passed": 3}).ok()
    assert not LaneResult(1, {"passed": 3, "failed": 1}, failed=["t::b"]).ok()
    assert not LaneResult(0, {"passed": 0}).ok()


def test_an_l1_panic_is_seen_in_the_middle_of_a_pytest_line():
    from tests.hwlane.lane import L1_PANIC
    line = "tests/test_e2e_snapshot.py::test_x [  638.512045] Kernel panic - not syncing: corrupted stack end"
    assert L1_PANIC.search(line) and not L1_PANIC.search("Kernel panic mentioned by a test")


def test_after_an_l1_panic_a_fresh_l1_gets_what_had_finished(monkeypatch):
    from tests.hwlane import lane
    seen = []

    def fake_run_lane(image, phases, timeout_s, memory_mib, keep=None, command=None, progress=None):
        seen.append(dict(progress.finished))
        progress.finished["t::a"] = "passed"
        if len(seen) == 1:
            progress.reruns.append("t::a")
            raise lane.L1Crashed("the L1 kernel panicked")
        progress.finished["t::b"] = "failed"
        progress.reasons["t::b"] = "AssertionError: ('a clock went backwards', ...)"
        return 1

    monkeypatch.setattr(lane, "prepare_l1", lambda cache: "image")
    monkeypatch.setattr(lane, "run_lane", fake_run_lane)
    result = lane.run_attempts([], 3600, 8192)
    assert seen == [{}, {"t::a": "passed"}] and result.attempts == 2 and result.counts["passed"] == 1
    assert result.reruns == ["t::a"], "a rerun in the first L1 is still reported"
    assert result.failed == ["t::b"] and result.reasons == {"t::b": "AssertionError: ('a clock went backwards', ...)"}


def test_the_lane_gives_up_when_l1_boots_in_a_row_finish_nothing(monkeypatch):
    from tests.hwlane import lane
    boots = []

    def crashing(*args, progress=None, **kwargs):
        boots.append(1)
        raise lane.L1Crashed("the L1 kernel panicked")

    monkeypatch.setattr(lane, "prepare_l1", lambda cache: "image")
    monkeypatch.setattr(lane, "run_lane", crashing)
    with pytest.raises(lane.LaneError, match=f"{lane.L1_STALLED_BOOTS} L1 boots in a row finished no test"):
        lane.run_attempts([], 3600, 8192)
    assert len(boots) == lane.L1_STALLED_BOOTS


def test_the_lane_boots_fresh_l1s_while_each_finishes_tests(monkeypatch):
    """CI saw four L1 panics in one lane run, each after more tests had finished."""
    from tests.hwlane import lane

    def crashing_after_one(*args, progress=None, **kwargs):
        progress.finished[f"t::{len(progress.finished)}"] = "passed"
        if len(progress.finished) < 6:
            raise lane.L1Crashed("the L1 kernel panicked")
        return 0

    monkeypatch.setattr(lane, "prepare_l1", lambda cache: "image")
    monkeypatch.setattr(lane, "run_lane", crashing_after_one)
    result = lane.run_attempts([], 3600, 8192)
    assert result.attempts == 6 and result.counts["passed"] == 6 and result.ok()


def test_the_lane_boots_at_most_l1_max_boots(monkeypatch):
    from tests.hwlane import lane

    def always_progressing(*args, progress=None, **kwargs):
        progress.finished[f"t::{len(progress.finished)}"] = "passed"
        raise lane.L1Crashed("the L1 kernel panicked")

    monkeypatch.setattr(lane, "prepare_l1", lambda cache: "image")
    monkeypatch.setattr(lane, "run_lane", always_progressing)
    with pytest.raises(lane.LaneError, match=f"the last of at most {lane.L1_MAX_BOOTS}"):
        lane.run_attempts([], 3600, 8192)


def fake_qemu(tmp_path, version):
    usr = tmp_path / "usr"
    (usr / "bin").mkdir(parents=True)
    (usr / "share" / "qemu").mkdir(parents=True)
    binary = usr / "bin" / "qemu-system-x86_64"
    binary.write_text(f"#!/bin/sh\necho 'QEMU emulator version {version} (Debian 1:{version}+ds-2)'\n")
    binary.chmod(0o755)
    return binary


def test_the_l1_qemu_named_by_env_runs_with_its_own_firmware(tmp_path, monkeypatch):
    from tests.hwlane.qemu import lane_qemu
    binary = fake_qemu(tmp_path, "10.0.2")
    monkeypatch.setenv("VOLT_LANE_QEMU", str(binary))
    qemu = lane_qemu(tmp_path / "cache")
    assert qemu.version == "10.0.2"
    assert qemu.argv() == [str(binary), "-L", str(tmp_path / "usr" / "share" / "qemu")]


def test_an_old_system_qemu_is_passed_over_for_the_cached_backport(tmp_path, monkeypatch):
    from tests.hwlane import qemu as q
    old = fake_qemu(tmp_path / "system", "7.2.22")
    cached = fake_qemu(tmp_path / "cache" / "hwlane" / "qemu-10.0.2", "10.0.2")
    monkeypatch.delenv("VOLT_LANE_QEMU", raising=False)
    monkeypatch.setenv("PATH", f"{old.parent}:/usr/bin:/bin")
    assert q.lane_qemu(tmp_path / "cache").binary == cached
    young = fake_qemu(tmp_path / "young", "10.1.0")
    monkeypatch.setenv("PATH", f"{young.parent}:/usr/bin:/bin")
    assert q.lane_qemu(tmp_path / "cache").binary == young


def test_an_l1_silent_past_its_heartbeat_is_a_crash(tmp_path, monkeypatch, capsys):
    """An L1 whose timers stopped prints nothing, not even the job's heartbeat: a fresh L1 is
    booted for it as after a panic, instead of waiting out the lane's deadline."""
    from tests.hwlane import lane
    monkeypatch.setattr(lane, "SILENT_S", 1)
    alive = ["sh", "-c", f"echo 'LANE: ready'; for i in 1 2 3 4 5 6; do echo '{lane.HEARTBEAT}'; sleep 0.3; done"]
    assert lane._boot_and_wait(alive, tmp_path / "alive.log", 60) is True
    assert lane.HEARTBEAT not in capsys.readouterr().out, "heartbeats are not echoed"
    with pytest.raises(lane.L1Crashed, match="the L1 went silent"):
        lane._boot_and_wait(["sh", "-c", "echo 'LANE: ready'; sleep 30"], tmp_path / "silent.log", 60)


def test_the_job_prints_its_heartbeat(tmp_path):
    from tests.hwlane import lane
    script = job_script(tmp_path, [["-m", "hwlane"]], tmp_path / "cache")
    assert f"while sleep {lane.HEARTBEAT_S}; do echo '{lane.HEARTBEAT}'; done" in script


def test_a_failure_in_the_lane_says_its_first_and_last_lines():
    """CI keeps only the lane's tail: a failed volt command's stderr (its last lines) must be in it."""
    from tests.hwlane.progress import why_of
    text = "AssertionError: volt snapshot s1 exited 1\nstdout: \nstderr: volt: vm/s1 is busy\n"
    assert why_of(text) == "AssertionError: volt snapshot s1 exited 1 | stdout: | stderr: volt: vm/s1 is busy"
    long = "no line matching 'X'\n" + "\n".join(f"console {i}" for i in range(100))
    assert why_of(long) == "no line matching 'X' | ... | console 96 | console 97 | console 98 | console 99"
    assert len(why_of("x" * 5000 + "\n" + "y" * 5000)) <= 700


def test_qemu_crashing_under_the_job_is_an_l1_crash_and_before_it_a_failure(tmp_path):
    """CI saw QEMU exit -11 (SIGSEGV) in the middle of the Linux tests: a fresh L1 runs what is
    left, as after an L1 panic. A QEMU that dies before the L1 is up is a lane failure."""
    from tests.hwlane.lane import MARKER, L1Crashed, LaneError, _boot_and_wait
    crash = ["sh", "-c", f"echo '{MARKER}ready'; kill -SEGV $$"]
    with pytest.raises(L1Crashed, match="QEMU crashed"):
        _boot_and_wait(crash, tmp_path / "console.log", timeout_s=30)
    with pytest.raises(LaneError, match="QEMU exited -11") as info:
        _boot_and_wait(["sh", "-c", "kill -SEGV $$"], tmp_path / "console.log", timeout_s=30)
    assert not isinstance(info.value, L1Crashed)
