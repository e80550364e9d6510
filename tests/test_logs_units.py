"""`volt logs` and `volt console` without a VM: the CR LF translation, following a log that the
supervisor's own ConsoleLog writes and rotates, and when an instance counts as ended."""

from __future__ import annotations

import os
import re

import pytest

from volt_spec.runner.home import VmDir, write_json
from volt_spec.runner.logs import CrlfOutput, LogFollower, instance_live, live_generation, print_log
from volt_spec.runner.procs import start_ticks
from volt_spec.runner.supervisor import ConsoleLog


def crlf(*chunks: bytes) -> list[bytes]:
    t = CrlfOutput()
    return [t.feed(c) for c in chunks]


@pytest.mark.parametrize("chunks, want", [
    ([b"a\nb\n"], b"a\r\nb\r\n"),                       # bare LF: the test guest's lines
    ([b"a\r\nb\r\n"], b"a\r\nb\r\n"),                   # Linux's CR LF passes as it is
    ([b"a\r", b"\nb\n"], b"a\r\nb\r\n"),                # CR LF split across two reads
    ([b"a\r", b"", b"\n"], b"a\r\n"),                   # an empty read in between changes nothing
    ([b"a\n", b"\n"], b"a\r\n\r\n"),                    # a LF after a LF is bare
    ([b"50%\r60%\r", b"done\n"], b"50%\r60%\rdone\r\n"),   # a lone CR redraws the line: left alone
    ([b"a\r\r\n"], b"a\r\r\n"),
    ([b"\n"], b"\r\n"),
    ([b"\r", b"\r", b"\n"], b"\r\r\n"),
])
def test_crlf_output(chunks, want):
    assert b"".join(crlf(*chunks)) == want


def test_crlf_output_never_leaves_a_bare_lf_whatever_the_split():
    data = b"boot\nlogin: \r\nx\r\r\n\n\ry\n"
    for cut in range(len(data) + 1):
        out = b"".join(crlf(data[:cut], data[cut:]))
        assert not re.search(rb"(?<!\r)\n", out), (cut, out)
        assert out.replace(b"\r\n", b"\n").replace(b"\r", b"") == data.replace(b"\r", b""), cut


def test_follower_reads_across_rotations_without_loss_or_repeats(tmp_path):
    path = tmp_path / "console.log"
    writer = ConsoleLog(path, True, cap=100)
    follower = LogFollower(path)
    sent, got = b"", follower.backlog()
    for i in range(200):
        line = f"line {i:04d} {'x' * (i % 23)}\n".encode()
        writer.write(line)
        sent += line
        if i % 7 == 0:                   # reads fall anywhere: before, after, across rotations
            got += follower.read()
    got += follower.read()
    assert got == sent
    assert (tmp_path / "console.log.1").exists()


def test_follower_sees_a_file_created_after_it_started(tmp_path):
    path = tmp_path / "console.log"
    follower = LogFollower(path)
    assert follower.backlog() == b"" and follower.read() == b""
    ConsoleLog(path, True).write(b"late\n")
    assert follower.read() == b"late\n"


def test_backlog_is_the_rotated_file_then_the_current_one(tmp_path):
    (tmp_path / "console.log.1").write_bytes(b"old\n")
    (tmp_path / "console.log").write_bytes(b"new\n")
    follower = LogFollower(tmp_path / "console.log")
    assert follower.backlog() == b"old\nnew\n"
    assert follower.read() == b""


def vm(tmp_path, generation="g1", supervisor=None) -> VmDir:
    vm_dir = VmDir(tmp_path, "logs")
    vm_dir.ensure()
    pid = os.getpid() if supervisor is None else supervisor
    write_json(vm_dir.instance, {"generation": generation, "supervisor_pid": pid,
                                 "supervisor_start": start_ticks(pid)})
    return vm_dir


def test_an_instance_is_live_until_its_exit_record_or_a_newer_instance(tmp_path):
    vm_dir = vm(tmp_path)
    assert instance_live(vm_dir, "g1") and live_generation(vm_dir) == "g1"
    write_json(vm_dir.exit_record, {"generation": "g0"})       # an earlier instance's record
    assert instance_live(vm_dir, "g1")
    write_json(vm_dir.exit_record, {"generation": "g1"})
    assert not instance_live(vm_dir, "g1") and live_generation(vm_dir) is None
    vm(tmp_path, "g2")
    assert not instance_live(vm_dir, "g1") and instance_live(vm_dir, "g2")
    vm_dir.instance.unlink()                                     # stopped and being restarted
    assert not instance_live(vm_dir, "g2")


def test_an_instance_whose_supervisor_is_gone_has_ended(tmp_path):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    vm_dir = vm(tmp_path, supervisor=pid)
    assert not instance_live(vm_dir, "g1")


def test_follow_of_a_vm_that_is_not_running_prints_the_log_and_returns(tmp_path, capsysbinary):
    vm_dir = vm(tmp_path)
    write_json(vm_dir.exit_record, {"generation": "g1"})
    vm_dir.console_log.write_bytes(b"a\nb\nc\n")
    print_log(vm_dir, follow=True, tail=2)
    assert capsysbinary.readouterr().out == b"b\nc\n"
