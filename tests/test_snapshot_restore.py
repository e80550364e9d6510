"""Snapshot a running test guest, kill its VMM, restore in a new process: the guest continues."""

from __future__ import annotations

import json
import re
import time

import pytest

from volt_spec.api.client import ApiClient

from .kvm_required import require_kvm
from .vmm_process import VmmProcess, run_vmm

TICK = re.compile(r"^tick (\d+) clock_ms=(\d+)")
MEM_OK = re.compile(r"^mem-ok ([0-9a-f]{16})")


@pytest.fixture(scope="module")
def guest() -> str:
    require_kvm()
    from volt_spec.guest.build import build_guest
    return str(build_guest())


def ticks(lines):
    return [(int(m.group(1)), int(m.group(2))) for ln in lines if (m := TICK.match(ln))]


def take_snapshot(tmp_path, guest, name="snap", vcpus=1, memory=128, cmdline=None):
    """Boot, let it tick and verify memory, snapshot through the API, kill -9. Returns facts."""
    sock = str(tmp_path / f"{name}.sock")
    cmdline = cmdline or "volt.ticks=0 volt.tick_ms=50 volt.mem=8"
    with VmmProcess("--kernel", guest, "--vcpus", str(vcpus), "--memory", str(memory), "--cmdline", cmdline,
                    "--api-sock", sock) as vmm:
        vmm.wait_for(r"^tick 3 ")
        checksum = vmm.wait_for(MEM_OK.pattern).group(1)
        result = vmm.wait_api(sock).put("/snapshot/create", {"snapshot_path": str(tmp_path / name)})
        last_before = max(n for n, _ in ticks(vmm.lines))
        vmm.proc.kill()
        vmm.finish()
        return {"dir": str(tmp_path / name), "checksum": checksum, "last_tick": last_before, "result": result,
                "before": ticks(vmm.lines)}


def assert_continues(vmm, facts):
    first = int(vmm.wait_for(r"^tick (\d+) ", timeout=30).group(1))
    assert 1 < first <= facts["last_tick"] + 1, (first, facts["last_tick"])
    assert vmm.wait_for(MEM_OK.pattern, timeout=30).group(1) == facts["checksum"]
    n = int(vmm.wait_for(rf"^tick {first + 3} ", timeout=30).group(0).split()[1])
    assert n == first + 3
    assert not any("CORRUPT" in ln or "PANIC" in ln for ln in vmm.lines), vmm.lines


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
        vmm.wait_api(sock).put("/snapshot/create", {"snapshot_path": str(tmp_path / "second")})
        last = max(n for n, _ in ticks(vmm.lines))
        vmm.proc.kill()
    with VmmProcess("--restore", str(tmp_path / "second")) as vmm:
        first = int(vmm.wait_for(r"^tick (\d+) ").group(1))
        assert last - 1 <= first <= last + 1
        assert vmm.wait_for(MEM_OK.pattern).group(1) == facts["checksum"]


def test_clock_continue_hides_downtime_and_realtime_shows_it(tmp_path, guest):
    facts = take_snapshot(tmp_path, guest)
    last_clock = facts["before"][-1][1]
    downtime_start = time.monotonic()
    with VmmProcess("--restore", facts["dir"], "--clock", "continue") as vmm:
        n = int(vmm.wait_for(r"^tick (\d+) ").group(1))
    clock_continue = dict(ticks(vmm.lines))[n]
    time.sleep(max(0.0, 1.5 - (time.monotonic() - downtime_start)))   # let wall time pass (the stimulus)
    with VmmProcess("--restore", facts["dir"], "--clock", "realtime") as vmm:
        n = int(vmm.wait_for(r"^tick (\d+) ").group(1))
    clock_realtime = dict(ticks(vmm.lines))[n]
    assert clock_continue - last_clock < 1000, (last_clock, clock_continue)
    assert clock_realtime - last_clock >= 1400, (last_clock, clock_realtime)


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
