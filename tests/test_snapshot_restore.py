"""Snapshot a running test guest, kill its VMM, restore in a new process: the guest continues."""

from __future__ import annotations

import json
import re
import time

import pytest

from volt_spec.api.client import ApiClient

from volt_spec.kvm.flavour import PVM, kvm_flavour

from .kvm_required import require_kvm
from .vmm_process import VmmProcess, run_vmm

pytestmark = pytest.mark.hwlane

TICK = re.compile(r"^tick (\d+) clock_ms=(\d+) tsc_ms=(\d+)")
MEM_OK = re.compile(r"^mem-ok ([0-9a-f]{16})")


@pytest.fixture(scope="module")
def guest() -> str:
    require_kvm()
    from volt_spec.guest.build import build_guest
    return str(build_guest())


def ticks(lines):
    """(tick, clock_ms, tsc_ms) of every tick line."""
    return [tuple(map(int, m.groups())) for ln in lines if (m := TICK.match(ln))]


def paused_and_drained(vmm, api) -> dict:
    """Pause the VM, then read all it printed: what the snapshot that follows holds. The next
    whole tick line after a restore is the one after the last seen, or the one after that
    when the guest was paused in the middle of printing a tick line: even after its first
    byte ("t"; under TCG each byte is a slow exit, so that window is wide)."""
    api.patch("/vm", {"state": "Paused"})
    partial = vmm.drain()
    seen = ticks(vmm.lines)
    mid_tick = bool(partial) and (partial.startswith("tick") or "tick".startswith(partial))
    return {"last": seen[-1], "next_tick": seen[-1][0] + (2 if mid_tick else 1), "before": seen}


def take_snapshot(tmp_path, guest, name="snap", vcpus=1, memory=128, cmdline=None):
    """Boot, let it tick and verify memory, pause, snapshot through the API, kill -9. Returns facts."""
    sock = str(tmp_path / f"{name}.sock")
    cmdline = cmdline or "volt.ticks=0 volt.tick_ms=50 volt.mem=8"
    with VmmProcess("--kernel", guest, "--vcpus", str(vcpus), "--memory", str(memory), "--cmdline", cmdline,
                    "--api-sock", sock) as vmm:
        vmm.wait_for(r"^tick 3 ")
        checksum = vmm.wait_for(MEM_OK.pattern).group(1)
        api = vmm.wait_api(sock)
        facts = paused_and_drained(vmm, api)
        facts["paused_at"] = time.monotonic()
        result = api.put("/snapshot/create", {"snapshot_path": str(tmp_path / name)})
        vmm.proc.kill()
        vmm.finish()
        return dict(facts, dir=str(tmp_path / name), checksum=checksum, last_tick=facts["last"][0], result=result,
                    lines=list(vmm.lines))


def assert_continues(vmm, facts, clock="continue"):
    """The first tick after the restore is the very next one; the memory workload's checksum
    holds; ticks go on. The guest TSC never runs backwards, and moves with kvmclock: in
    "continue" mode both skip the downtime (PVM cannot: there the guest TSC is the host's),
    in "realtime" mode both show it."""
    first = ticks([vmm.wait_for(r"^tick (\d+) ", timeout=30).string])[0]
    assert first[0] == facts["next_tick"], (first, facts["last"])
    last = facts["last"]
    d_clock, d_tsc = first[1] - last[1], first[2] - last[2]
    assert d_clock >= 0 and d_tsc >= 0, ("a clock went backwards", last, first)
    if clock == "realtime" or kvm_flavour() != PVM:
        assert abs(d_clock - d_tsc) < 100, ("guest TSC and kvmclock disagree", last, first)
    assert vmm.wait_for(MEM_OK.pattern, timeout=30).group(1) == facts["checksum"]
    n = int(vmm.wait_for(rf"^tick {first[0] + 3} ", timeout=30).group(0).split()[1])
    assert n == first[0] + 3
    assert not any("CORRUPT" in ln or "PANIC" in ln for ln in vmm.lines), vmm.lines
    return first


@pytest.mark.parametrize("vcpus,memory", [(1, 128), (4, 128), (1, 1024)])
def test_restore_continues_ticks_and_memory(tmp_path, guest, vcpus, memory):
    facts = take_snapshot(tmp_path, guest, vcpus=vcpus, memory=memory)
    assert facts["result"]["paused_ms"] > 0 and facts["result"]["logical_bytes"] == memory << 20
    with VmmProcess("--restore", facts["dir"]) as vmm:
        assert_continues(vmm, facts)


def test_two_clones_from_one_snapshot_run_at_once(tmp_path, guest):
    facts = take_snapshot(tmp_path, guest)
    with VmmProcess("--restore", facts["dir"]) as a, VmmProcess("--restore", facts["dir"]) as b:
        assert_continues(a, facts)
        assert_continues(b, facts)


def test_restored_vm_can_be_snapshotted_again(tmp_path, guest):
    facts = take_snapshot(tmp_path, guest)
    sock = str(tmp_path / "again.sock")
    with VmmProcess("--restore", facts["dir"], "--api-sock", sock) as vmm:
        vmm.wait_for(rf"^tick {facts['last_tick'] + 3} ")
        api = vmm.wait_api(sock)
        again = paused_and_drained(vmm, api)
        api.put("/snapshot/create", {"snapshot_path": str(tmp_path / "second")})
        vmm.proc.kill()
    with VmmProcess("--restore", str(tmp_path / "second")) as vmm:
        assert_continues(vmm, dict(facts, **again))


def test_clock_continue_hides_downtime_and_realtime_shows_it(tmp_path, guest):
    facts = take_snapshot(tmp_path, guest)
    wait_downtime(facts, 3.0)                          # the stimulus: wall time passes while it is down
    with VmmProcess("--restore", facts["dir"], "--clock", "continue") as vmm:
        cont = tick_after(vmm, assert_continues(vmm, facts))
    with VmmProcess("--restore", facts["dir"], "--clock", "realtime") as vmm:
        real = tick_after(vmm, assert_continues(vmm, facts, clock="realtime"))
    last_clock = facts["last"][1]
    # Shown, the 3 s of downtime would put the continue clock >= 3000 ms on; hidden, it moves by
    # the ticks since the pause, which under TCG (the lane) took up to 400 ms each after a restore.
    assert cont[1] - last_clock < 2500, (facts["last"], cont)
    assert real[1] - last_clock >= 2900, (facts["last"], real)


def wait_downtime(facts: dict, seconds: float) -> None:
    """Let `seconds` of wall time pass since the snapshot's pause."""
    time.sleep(max(0.0, seconds - (time.monotonic() - facts["paused_at"])))


def tick_after(vmm, tick: tuple[int, int, int]) -> tuple[int, int, int]:
    """The tick line after `tick`. The first whole tick after a restore can carry clocks the
    guest read before the pause (it reads them, then prints; under TCG that window is wide):
    the one after it was read after the restore."""
    return ticks([vmm.wait_for(rf"^tick {tick[0] + 1} ").string])[0]


def downtime_restore(facts: dict, seconds: float = 1.5) -> tuple[int, int, int]:
    """Restore (clock: continue) `seconds` after the pause; the second tick (n, clock_ms, tsc_ms)."""
    wait_downtime(facts, seconds)                      # the stimulus
    with VmmProcess("--restore", facts["dir"]) as vmm:
        return tick_after(vmm, ticks([vmm.wait_for(r"^tick (\d+) ").string])[0])


@pytest.mark.hw_only
def test_hardware_kvm_guest_tsc_skips_the_downtime(tmp_path, guest):
    """Hardware KVM: the guest TSC resumes where it stopped, like kvmclock, even for a snapshot
    from the guest's first second (KVM's one-second TSC "synchronisation" would restart it)."""
    facts = take_snapshot(tmp_path, guest)
    n, clock, tsc = downtime_restore(facts, seconds=3.0)
    last = facts["last"]
    # Shown, the 3 s of downtime would put both >= 3000 ms on; hidden, they move by the two ticks
    # since the pause, which under TCG (the lane) can take 500 ms each after a restore.
    assert tsc - last[2] < 2500 and clock - last[1] < 2500, (last, (n, clock, tsc))
    assert abs((tsc - last[2]) - (clock - last[1])) < 100, (last, (n, clock, tsc))


@pytest.mark.pvm_only
def test_pvm_guest_tsc_is_the_host_tsc(tmp_path, guest):
    """PVM: the guest TSC is always the host's (writes change nothing), so across a restore it
    shows the downtime that kvmclock ("continue") hides; TSC deadlines armed before fire at once."""
    facts = take_snapshot(tmp_path, guest)
    n, clock, tsc = downtime_restore(facts)
    last = facts["last"]
    assert clock - last[1] < 1000 and tsc - last[2] >= 1400, (last, (n, clock, tsc))


def test_api_configured_vmm_loads_a_snapshot(tmp_path, guest):
    facts = take_snapshot(tmp_path, guest)
    sock = str(tmp_path / "fc.sock")
    with VmmProcess("--api-sock", sock) as vmm:
        client = ApiClient(sock)
        deadline = time.monotonic() + 10
        while not client.ping():
            assert time.monotonic() < deadline, "API socket never answered"
            time.sleep(0.01)
        assert client.get("/vm")["state"] == "NotStarted"
        client.put("/snapshot/load", {"snapshot_path": facts["dir"], "resume_vm": True})
        assert_continues(vmm, facts)
        assert client.get("/vm")["boot"]["booted_from"] == "snapshot snap"
        with pytest.raises(Exception, match="only valid before boot"):
            client.put("/snapshot/load", {"snapshot_path": facts["dir"]})


def _refused(snapshot_dir: str, message: str) -> None:
    code, lines, err = run_vmm("--restore", snapshot_dir)
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert "Traceback" not in err and not lines


def test_corrupt_snapshots_are_refused_with_one_line(tmp_path, guest):
    facts = take_snapshot(tmp_path, guest)
    import shutil
    from pathlib import Path
    src = Path(facts["dir"])

    flipped = tmp_path / "flipped"
    shutil.copytree(src, flipped)
    raw = bytearray((flipped / "state.json").read_bytes())
    pos = raw.index(b'"regs":"') + 12
    raw[pos] = ord("A") if raw[pos] != ord("A") else ord("B")
    (flipped / "state.json").write_bytes(bytes(raw))
    _refused(str(flipped), "CRC-64 mismatch")

    truncated = tmp_path / "truncated"
    shutil.copytree(src, truncated)
    with open(truncated / "memory.snap", "r+b") as f:
        f.truncate(64 << 20)
    _refused(str(truncated), "truncated")

    missing = tmp_path / "missing"
    shutil.copytree(src, missing)
    (missing / "memory.snap").unlink()
    _refused(str(missing), "missing")

    future = tmp_path / "future"
    shutil.copytree(src, future)
    doc = json.loads((future / "state.json").read_bytes())
    doc["version"] = "9.0.0"
    (future / "state.json").write_text(json.dumps(doc))
    _refused(str(future), "version '9.0.0' is not supported")

    other_host = tmp_path / "otherhost"
    shutil.copytree(src, other_host)
    from volt_spec.snapshot import format as fmt
    state = fmt.read_state(str(other_host))
    state["meta"]["host"]["cpu_vendor"] = "CyrixInstead"
    (other_host / "state.json").write_bytes(fmt.encode(state))
    _refused(str(other_host), "CyrixInstead")

    _refused(str(tmp_path / "nothing-here"), "no state.json")
