"""A full disk under $VOLT_HOME: clear one-line errors, a truthful status, nothing orphaned,
and logging that resumes when space is back.

$VOLT_HOME is a small tmpfs of its own (mounted by the test, as root) that the test fills with a
filler file; the guest and the VMM never notice.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time

import pytest

from volt_spec.api.client import ApiClient

from .kvm_required import require_kvm
from .timing import scaled
from .voltcli import Volt, spec_text, write


@pytest.fixture
def small(tmp_path):
    """(Volt on a 64 MiB tmpfs $VOLT_HOME, fill(), unfill())."""
    require_kvm()
    home = tmp_path / "home"
    home.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(home)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk tests (they need root): {mounted.stderr.strip()}")
    volt = Volt(home)
    filler = home / "filler"

    def fill() -> None:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 4096, 1):          # to the last byte tmpfs will give
                try:
                    while True:
                        os.write(fd, b"\xff" * chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def unfill() -> None:
        filler.unlink(missing_ok=True)

    try:
        yield volt, fill, unfill
    finally:
        unfill()
        volt("delete", "--all", check=None)
        subprocess.run(["umount", "-l", str(home)], check=False)


def wait_until(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + scaled(timeout)
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)          # polling another process's progress
    return value


def test_apply_on_a_full_disk_says_so_and_leaves_nothing(small, tmp_path):
    volt, fill, unfill = small
    spec = write(tmp_path / "d.yaml", spec_text("d"))
    fill()
    r = volt("apply", spec, check=1)
    assert "No space left on device" in r.stdout + r.stderr, (r.stdout, r.stderr)
    assert len((r.stdout + r.stderr).strip().splitlines()) == 1
    assert subprocess.run(["pgrep", "-f", str(volt.home)], capture_output=True).stdout == b"", "orphaned processes"
    unfill()
    assert volt("apply", spec).stdout.startswith("vm/d created")
    assert volt.state("d")["state"] == "running"


def test_a_full_disk_loses_console_output_not_the_vm_and_logging_resumes(small, tmp_path):
    volt, fill, unfill = small
    volt("apply", write(tmp_path / "c.yaml", spec_text("c", cmdline="volt.ticks=0 volt.tick_ms=20")))
    volt.wait_log("c", "tick 3 ")
    row = volt.state("c")
    log = volt.home / "vms" / "c" / "console.log"
    api = ApiClient(str(volt.home / "vms" / "c" / "run" / "api.sock"))
    fill()
    size = log.stat().st_size
    # the guest goes on printing while nothing more reaches the log (it may fill its last page)
    wait_until(lambda: api.get("/vm")["counters"]["serial_bytes_out"] > log.stat().st_size + 4096,
               "output lost to the full disk")
    assert log.stat().st_size <= size + 4096
    row2 = volt.state("c")
    assert row2["state"] == "running" and row2["pid"] == row["pid"], row2
    unfill()
    text = wait_until(lambda: "bytes of console output lost: No space left on device" in log.read_text()
                      and log.read_text(), "logging to resume")
    lost_at = text.index("console output lost")
    wait_until(lambda: "tick " in log.read_text()[lost_at:], "ticks logged after the gap")


def test_the_exit_record_is_written_on_a_full_disk(small, tmp_path):
    volt, fill, unfill = small
    volt("apply", write(tmp_path / "k.yaml", spec_text("k")))
    pid = volt.wait_state("k", "running")["pid"]
    fill()
    os.kill(pid, signal.SIGKILL)
    row = volt.wait_state("k", "failed")
    assert row["reason"].startswith("killed by signal 9"), row


def test_a_snapshot_on_a_full_disk_fails_clearly_and_keeps_the_rest(small, tmp_path):
    volt, fill, unfill = small
    volt("apply", write(tmp_path / "s.yaml", spec_text("s")))
    volt.wait_log("s", "tick 1 ")
    volt("snapshot", "s", "--name", "before")
    fill()
    r = volt("snapshot", "s", "--name", "during", check=1)
    assert "No space left on device" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert volt.state("s")["state"] == "running"
    unfill()
    rows = {row["id"]: row["valid"] for row in json.loads(volt("snapshots", "list", "s", "-o", "json").stdout)}
    assert rows == {"before": True}, rows
    volt("snapshot", "s", "--name", "after")
