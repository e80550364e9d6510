"""A real Linux guest end to end through `volt`, on hardware KVM (the lane: make test-hw).

Debian's cloud kernel boots from an ext4 root disk (`disks[].root`) with a writable data disk
and a NIC; its init writes a payload to the data disk, prints VOLT-LINUX-READY and then a
counter with its uptime every 200 ms, re-reading the payload with the page cache dropped and
pinging the host every 25 counts. volt snapshots it (ready trigger, `volt snapshot`, stop
trigger), deletes it and restores it; two clones of one snapshot run side by side. Each time
the counter continues from the next value, the uptime continues, the console stays clean.
A stock Linux cannot finish booting on PVM, so these run only on hardware KVM.
"""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from volt_spec.boot.initramfs import HOST_IP, READY_MARKER

from .kvm_required import require_kvm
from .netns import in_netns, tap_namespace
from .test_virtio_e2e import NsVmm
from .timing import scaled
from .voltcli import Volt, whole_lines

pytestmark = [pytest.mark.linux, pytest.mark.hwlane, pytest.mark.hw_only]

COUNTER = re.compile(r"^counter (\d+) uptime=([\d.]+)", re.M)
BAD = re.compile(r"Oops|BUG[: ]|self-detected stall|clocksource.*unstable|hung_task|blocked for more than \d+ seconds"
                 r"|data-FAIL|root-FAIL|net-FAIL|ping-FAIL")
WATCH_S = 30.0                      # guest seconds watched after each restore
BOOT_S = 30.0                       # a Linux boot to READY on hardware KVM (scaled in the lane: 300 s,
#                                     under pytest-timeout's 900, so a stalled boot shows its console)
# The host side of every tap: a restored guest (and each clone) still has this peer in its ARP
# cache, as it would on a host that recreates the same tap for it.
PEER_MAC = "02:00:00:00:0a:01"

SPEC = """apiVersion: volt/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  kernel: {{path: {files}/vmlinuz, initrd: {files}/initrd.gz, cmdline: "console=ttyS0 panic=-1", boot: linux64}}
  vcpus: 2
  memory: 512Mi
  devices:
    disks:
      - {{name: root, path: {files}/root.img, readOnly: true, root: true}}
      - {{name: data, path: {data}}}
    network:
      - {{name: eth0, tap: {tap}}}
  snapshots:
    restore: latest
    triggers: [{{trigger: ready, marker: {marker}}}{stop}]
    retain: {{count: 5}}
"""


def generation_ids(text: str) -> set[str]:
    """The VM generation IDs the guest printed (read through /dev/mem at VGEN's ADDR)."""
    return set(re.findall(r"^vmgenid ([0-9a-f]{32})$", text, re.M))


def counters(text: str) -> list[tuple[int, float]]:
    """(count, uptime) of each whole counter line: the guest writes as the test reads, and a torn
    last line (`uptime=6` of `uptime=65.31`, seen in the lane) would read as time going back."""
    return [(int(m.group(1)), float(m.group(2))) for m in COUNTER.finditer(whole_lines(text))]


def sums(text: str, word: str) -> set[str]:
    return set(re.findall(rf"^{word} ([0-9a-f]{{64}})", text, re.M))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    require_kvm()
    from volt_spec.boot.kernel_fetch import lay_out_linux_example
    return lay_out_linux_example(tmp_path_factory.mktemp("linux") / "linux-files")


@pytest.fixture(scope="module")
def lab(files, tmp_path_factory):
    """One VM `lx` in a netns of its own, booted to READY and snapshotted while its counter ran
    (`volt snapshot`), then deleted: what the restore tests start from."""
    work = tmp_path_factory.mktemp("lx")
    with tap_namespace("vtl0", PEER_MAC) as (ns, tap):
        volt = Volt(work / "home", prefix=in_netns(ns, []))
        data = work / "data.img"
        shutil.copy(files / "data.img", data)
        spec = work / "lx.yaml"
        spec_text = SPEC.format(name="lx", files=files, data=data, tap=tap, marker=READY_MARKER, stop="@STOP@")
        spec.write_text(spec_text.replace("@STOP@", ""))
        try:
            assert volt("apply", str(spec)).stdout.startswith("vm/lx created")
            log = volt.wait_log("lx", READY_MARKER, timeout=BOOT_S)
            assert f"net-ok {HOST_IP}" in log and "root-ok /dev/vda ro" in log, log
            assert generation_ids(log), log           # the ID at VGEN's ADDR, read through /dev/mem
            (payload,) = sums(log, "data-sum")
            wait_snapshots(volt, lambda rows: any(r["trigger"] == "ready" for r in rows), "the ready snapshot")
            wait_counter(volt, "lx", 10)
            snap = json.loads(volt("snapshot", "lx", "--name", "running-1", "-o", "json").stdout)
            before = volt.log("lx")
            volt("delete", "lx")
            yield {"volt": volt, "ns": ns, "tap": tap, "spec": spec, "spec_text": spec_text, "payload": payload,
                   "before": before, "snapshot": snap, "files": files, "work": work}
        finally:
            volt("delete", "--all", check=None)


def wait_snapshots(volt: Volt, accept, what: str, timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + scaled(timeout)
    while True:
        rows = json.loads(volt("snapshots", "list", "-o", "json").stdout)
        if accept(rows):
            return rows
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {rows}"
        time.sleep(0.2)             # the VMM writes the snapshot: poll the catalogue


def wait_counter(volt: Volt, name: str, at_least: int, timeout: float = 60.0, since: int = 0) -> str:
    """The console log from offset `since` once it shows a counter >= at_least."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        log = volt.log(name)[since:]
        if any(n >= at_least for n, _ in counters(log)):
            return log
        assert time.monotonic() < deadline, f"counter {at_least} not reached:\n{log[-2000:]}"
        assert volt.ended(name) is None, f"the VM ended: {volt.ended(name)}\n{log[-2000:]}"
        time.sleep(0.2)             # the guest prints into the supervisor's log: poll it


def assert_continues(volt: Volt, name: str, before: str, payload: str, since: int = 0) -> list[tuple[int, float]]:
    """The restored guest's counter (its console log from offset `since`) goes on from a value
    the original printed, its uptime from where that value left it; then WATCH_S guest seconds
    with no bad line, the payload read back from disk intact and the host answering pings."""
    restored = wait_counter(volt, name, 2, since=since)
    first, up = counters(restored)[0]
    seen = dict(counters(before))
    assert first - 1 in seen and first > 1, (first, sorted(seen)[-3:])
    # The clock goes on from the snapshot, not from the wall clock: the gap is at most what the
    # guest itself took between two counters (under TCG, in the lane, a cache drop and re-read
    # every 25 counts has taken over 5 s), never the seconds the VM was down.
    ups = [u for _, u in counters(before)]
    slowest = max((b - a for a, b in zip(ups, ups[1:])), default=0.0)
    assert 0 <= up - seen[first - 1] < max(5.0, 2 * slowest + 1.0), ("uptime jumped", seen[first - 1], up, slowest)
    target = up + WATCH_S
    deadline = time.monotonic() + scaled(WATCH_S * 4)
    while not any(u >= target for _, u in counters(restored)):
        assert time.monotonic() < deadline, f"uptime {target} not reached:\n{restored[-2000:]}"
        assert volt.ended(name) is None, f"the VM ended: {volt.ended(name)}\n{restored[-2000:]}"
        time.sleep(0.5)             # polling the console log
        restored = volt.log(name)[since:]
    got = counters(restored)
    assert [n for n, _ in got] == list(range(first, first + len(got))), ("counter skipped or repeated", got[-5:])
    backwards = [(a, b) for a, b in zip(got, got[1:]) if b[1] < a[1]]
    assert not backwards, ("uptime went backwards", backwards[:3])
    assert not BAD.search(restored), BAD.search(restored).group(0) + "\n" + restored[-3000:]
    assert sums(restored, "disk-sum") == {payload}, restored[-3000:]
    assert "ping-ok" in restored
    return got


def test_volt_restores_a_running_linux_snapshot_and_it_continues(lab):
    volt = lab["volt"]
    since = len(volt.log("lx"))     # a run again (the lane's triple-fault rerun) appends to the log
    applied = volt("apply", str(lab["spec"]))
    assert applied.stdout.startswith(f"vm/lx restored from {lab['snapshot']['id']}"), (applied.stdout, applied.stderr)
    assert_continues(volt, "lx", lab["before"], lab["payload"], since=since)
    assert volt.state("lx")["state"] == "running"
    restored = volt.log("lx")[since:]
    before, after = generation_ids(lab["before"]), generation_ids(restored)
    assert before and after and not before & after, (before, after)


def test_stop_trigger_snapshot_restores_and_continues(lab):
    """A stop trigger added to the running VM's spec (applied live), then `volt stop`: the
    snapshot taken before Ctrl-Alt-Del is what the next apply restores."""
    volt = lab["volt"]
    lab["spec"].write_text(lab["spec_text"].replace("@STOP@", ", {trigger: stop}"))
    out = volt("apply", str(lab["spec"])).stdout
    assert out.startswith(("vm/lx configured", "vm/lx created", "vm/lx restored")), out
    wait_counter(volt, "lx", 5)
    volt("stop", "lx")
    before = volt.log("lx")
    rows = wait_snapshots(volt, lambda rows: any(r["trigger"] == "stop" for r in rows), "the stop snapshot")
    stop_id = max((r for r in rows if r["trigger"] == "stop"), key=lambda r: r["created"])["id"]
    applied = volt("apply", str(lab["spec"]))
    assert applied.stdout.startswith(f"vm/lx restored from {stop_id}"), (applied.stdout, applied.stderr)
    assert_continues(volt, "lx", before, lab["payload"], since=len(before))


def test_two_clones_of_one_snapshot_run_side_by_side(lab, tmp_path):
    """volt-vmm --restore twice from one snapshot, each with its own disk copy and its own tap
    (in a netns of its own): both continue, both read the payload back, both ping."""
    snap = lab["snapshot"]["path"]
    before = lab["before"]
    with tap_namespace("vtc0", PEER_MAC) as (ns_a, tap_a), tap_namespace("vtc1", PEER_MAC) as (ns_b, tap_b):
        disk_a, disk_b = tmp_path / "a.img", tmp_path / "b.img"
        with NsVmm(ns_a, "--restore", snap, "--disk-override", f"data={disk_a}", "--tap-override",
                   f"eth0={tap_a}") as a, \
             NsVmm(ns_b, "--restore", snap, "--disk-override", f"data={disk_b}", "--tap-override",
                   f"eth0={tap_b}") as b:
            for clone in (a, b):
                first = int(clone.wait_for(r"^counter (\d+) ", timeout=60).group(1))
                assert first - 1 in dict(counters(before)), first
                clone.wait_for(rf"^disk-sum {lab['payload']}$", timeout=60)
                clone.wait_for(r"^ping-ok", timeout=60)
                clone.wait_for_value(r"^counter (\d+) ", first + 2 * 25, timeout=60)
            ids = [generation_ids("\n".join(clone.lines)) for clone in (a, b)]
            assert all(ids) and not ids[0] & ids[1] and not (ids[0] | ids[1]) & generation_ids(before), ids
            for clone in (a, b):
                text = "\n".join(clone.lines)
                assert not BAD.search(text), BAD.search(text).group(0)
    assert disk_a.stat().st_ino != disk_b.stat().st_ino and disk_a.stat().st_size == disk_b.stat().st_size
