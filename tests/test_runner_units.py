"""Runner pieces that need no KVM: console log rotation, process identity, atomic writes, ages."""

from __future__ import annotations

import os

from volt_spec.fsutil import atomic_write
from volt_spec.runner.procs import is_alive, start_ticks
from volt_spec.runner.status import _age
from volt_spec.runner.supervisor import ConsoleLog


def test_console_log_is_capped_and_rotated_once(tmp_path):
    log = ConsoleLog(tmp_path / "console.log", enabled=True, cap=100)
    for i in range(30):
        log.write(f"line {i:02d}\n".encode())          # 8 bytes each
    current = (tmp_path / "console.log").read_bytes()
    rotated = (tmp_path / "console.log.1").read_bytes()
    assert len(current) <= 100 and len(rotated) <= 100
    assert current.endswith(b"line 29\n")
    assert (rotated + current).endswith(b"".join(f"line {i:02d}\n".encode() for i in range(30 - (len(rotated) + len(current)) // 8, 30)))


def test_disabled_console_log_writes_nothing(tmp_path):
    log = ConsoleLog(tmp_path / "console.log", enabled=False)
    log.write(b"hello\n")
    assert not (tmp_path / "console.log").exists()


def test_process_identity_survives_pid_reuse():
    me = os.getpid()
    ticks = start_ticks(me)
    assert ticks is not None and is_alive(me, ticks)
    assert not is_alive(me, ticks + 1)           # same pid, different start: another process
    assert not is_alive(None, None)


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "a" / "f.json"
    atomic_write(path, "one")
    atomic_write(path, b"two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]


def test_ages_read_like_kubectl():
    assert [_age(x) for x in (None, 5, 65, 3700, 90000)] == ["-", "5s", "1m05s", "1h01m", "1d01h"]


def test_root_disk_puts_root_on_the_command_line():
    from volt_spec.runner.apply import root_words
    assert root_words([]) == ""
    assert root_words([{"name": "a"}, {"name": "b", "root": True, "readOnly": True}]) == "root=/dev/vdb ro"
    assert root_words([{"name": "r", "root": True}]) == "root=/dev/vda rw"


def test_status_of_a_vmm_just_killed_waits_for_its_supervisors_record(tmp_path):
    """The VMM is dead, its supervisor alive and still draining its output: status waits for the
    exit record (CI saw "gone without an exit record" there, for a VMM killed by signal 9), and
    says busy, not failed, while the supervisor has not written it."""
    import os
    import threading
    import time
    from volt_spec.runner.home import VmDir, write_json
    from volt_spec.runner.observe import BUSY, FAILED, observe
    from volt_spec.runner.procs import start_ticks
    vm = VmDir(tmp_path, "v")
    vm.ensure()
    write_json(vm.applied, {"running": True, "applied_at": time.time() - 60})
    me = os.getpid()                                   # the "supervisor": alive
    write_json(vm.instance, {"generation": "g1", "vmm_pid": 2 ** 22 + 7, "supervisor_pid": me,
                             "supervisor_start": start_ticks(me), "started_at": time.time() - 50})
    record = {"generation": "g1", "code": -9, "reason": "killed by signal 9 (SIGKILL)", "ended_at": time.time()}
    writer = threading.Timer(0.2, lambda: write_json(vm.exit_record, record))
    writer.start()
    row = observe(vm)
    writer.join()
    assert (row["state"], row["reason"]) == (FAILED, "killed by signal 9 (SIGKILL)"), row
    vm.exit_record.unlink()
    from volt_spec.runner import observe as module
    module.RECORD_WAIT_S, saved = 0.05, module.RECORD_WAIT_S
    try:
        row = module.observe(vm)
    finally:
        module.RECORD_WAIT_S = saved
    assert row["state"] == BUSY and "has not recorded why yet" in row["reason"], row
    write_json(vm.instance, {"generation": "g1", "vmm_pid": 2 ** 22 + 7, "started_at": time.time() - 50})
    assert "gone without an exit record" in observe(vm)["reason"]     # no supervisor either: failed


def test_status_after_an_interrupted_apply_says_so_not_powered_off(tmp_path):
    """kill -9 of `volt apply` between writing the spec and starting the VM: status must not
    repeat how an older instance ended as if it were this one's."""
    import time
    from volt_spec.runner.home import VmDir, write_json
    from volt_spec.runner.observe import NOT_STARTED, observe
    vm = VmDir(tmp_path, "v")
    vm.ensure()
    write_json(vm.applied, {"running": True, "applied_at": time.time()})
    assert observe(vm)["reason"] == NOT_STARTED                     # created, never started
    write_json(vm.instance, {"generation": "g1", "vmm_pid": 2 ** 22 + 7, "started_at": time.time() - 60})
    write_json(vm.exit_record, {"generation": "g1", "code": 0, "reason": "guest powered off", "clean": True,
                                "ended_at": time.time() - 30})
    row = observe(vm)
    assert row["state"] == "stopped" and row["reason"].startswith(NOT_STARTED) and "guest powered off" in row["reason"]
    write_json(vm.applied, {"running": True, "applied_at": time.time() - 45})   # applied before it ended
    assert observe(vm)["reason"] == "guest powered off"
