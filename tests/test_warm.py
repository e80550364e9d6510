"""Warm VMMs (volt-vmm --warm): a VM of one shape made ahead, then a snapshot loaded into it by fds.

The memory file is mapped MAP_FIXED over RAM KVM already has in its memory slots: the guest
continuing its tick counter and its memory checksum proves KVM sees the snapshot's pages (its
MMU notifier dropped the old translations) on this host's KVM and, in the lane, on hardware KVM.
"""

from __future__ import annotations

import os

import pytest

from volt_spec.api.errors import ApiError
from volt_spec.runner.warmload import load_snapshot

from .kvm_required import require_kvm
from .test_snapshot_restore import assert_continues, take_snapshot
from .vmm_process import VmmProcess

pytestmark = pytest.mark.hwlane


@pytest.fixture(scope="module")
def guest() -> str:
    require_kvm()
    from volt_spec.guest.build import build_guest
    return str(build_guest())


def warm(tmp_path, vcpus: int, memory: int, *extra: str) -> tuple[VmmProcess, str]:
    sock = str(tmp_path / f"warm-{vcpus}-{memory}.sock")
    vmm = VmmProcess("--warm", "--vcpus", str(vcpus), "--memory", str(memory), "--api-sock", sock, *extra)
    return vmm, sock


@pytest.mark.parametrize("vcpus,memory", [(1, 128), (4, 128), (1, 4096)])
def test_a_warm_vmm_restores_a_snapshot_passed_by_fds_and_the_guest_continues(tmp_path, guest, vcpus, memory):
    facts = take_snapshot(tmp_path, guest, vcpus=vcpus, memory=memory)
    vmm, sock = warm(tmp_path, vcpus, memory)
    with vmm:
        api = vmm.wait_api(sock)
        assert api.get("/vm") == {"name": "vm", "state": "Warm", "pid": vmm.proc.pid,
                                  "shape": {"vcpus": vcpus, "memory_mib": memory}}
        assert not vmm.lines, "a warm VMM prints nothing before its load"
        load_snapshot(sock, facts["dir"])
        assert_continues(vmm, facts)
        vm = api.get("/vm")
        assert vm["state"] == "Running" and vm["boot"]["booted_from"] == "snapshot snap"
        timing = vm["timing"]
        # launched_ns is stamped once launch() returns: a vCPU thread may be in KVM_RUN before it
        assert 0 < timing["load_arrived_ns"] < timing["restored_ns"] <= min(timing["run_entered_ns"])
        assert timing["first_serial_ns"] > timing["load_arrived_ns"]


def test_a_warm_vmm_refuses_a_snapshot_of_another_shape_and_stays_warm(tmp_path, guest):
    four = take_snapshot(tmp_path, guest, name="four", vcpus=4)
    big = take_snapshot(tmp_path, guest, name="big", memory=256)
    one = take_snapshot(tmp_path, guest, name="one")
    vmm, sock = warm(tmp_path, 1, 128)
    with vmm:
        api = vmm.wait_api(sock)
        for facts, shape in ((four, "4 vCPU(s) and 128 MiB"), (big, "1 vCPU(s) and 256 MiB")):
            with pytest.raises(ApiError) as refused:
                load_snapshot(sock, facts["dir"])
            assert refused.value.status == 400
            assert f"a VM of {shape}; this warm VMM is shaped for 1 vCPU(s) and 128 MiB" in str(refused.value)
            assert api.get("/vm")["state"] == "Warm"
        load_snapshot(sock, one["dir"])
        assert_continues(vmm, one)


def test_a_warm_vmm_checks_the_memory_it_is_passed(tmp_path, guest):
    """Without the fingerprint the memory file is read in full; a changed one is refused, and
    the VMM (its RAM now mapped from the bad file) is spent: it exits rather than stay warm."""
    facts = take_snapshot(tmp_path, guest)
    mem = os.path.join(facts["dir"], "memory.snap")
    with open(mem, "r+b") as f:
        f.seek(1 << 20)
        f.write(b"\xffcorrupt")
    vmm, sock = warm(tmp_path, 1, 128)
    with vmm:
        vmm.wait_api(sock)
        with pytest.raises(ApiError, match="does not match the checksum") as refused:
            load_snapshot(sock, facts["dir"])
        assert "spent" in str(refused.value)
        code, err = vmm.finish()
        assert code == 1 and "warm VMM spent" in err and "Traceback" not in err


def test_a_warm_vmm_takes_one_load_and_names_its_fields(tmp_path, guest):
    facts = take_snapshot(tmp_path, guest)
    vmm, sock = warm(tmp_path, 1, 128)
    with vmm:
        api = vmm.wait_api(sock)
        with pytest.raises(ApiError, match="warm VMM loads by fds"):
            api.put("/snapshot/load", {"snapshot_path": facts["dir"]})
        with pytest.raises(ApiError, match="fds named but none were passed"):
            api.put("/snapshot/load", {"fds": {"state": 0, "memory": 1}})
        with open(os.path.join(facts["dir"], "state.json"), "rb") as st:
            with pytest.raises(ApiError, match="fds must name the passed fds"):
                api.put("/snapshot/load", {"fds": {"state": 0}}, fds=[st.fileno()])
            with pytest.raises(ApiError, match="not the index of one of the 1 fds"):
                api.put("/snapshot/load", {"fds": {"state": 0, "memory": 1}}, fds=[st.fileno()])
            r, w = os.pipe()                # a FIFO where the memory file should be: refused, never read
            try:
                with pytest.raises(ApiError, match="the memory file passed is not a regular file"):
                    api.put("/snapshot/load", {"fds": {"state": 0, "memory": 1}}, fds=[st.fileno(), r])
            finally:
                os.close(r)
                os.close(w)
        assert api.get("/vm")["state"] == "Warm"
        load_snapshot(sock, facts["dir"])
        assert_continues(vmm, facts)
        with pytest.raises(ApiError, match="only valid before boot|already loaded"):
            load_snapshot(sock, facts["dir"])


def test_warm_needs_a_shape_and_a_socket_only():
    from .vmm_process import run_vmm
    code, _, err = run_vmm("--warm", "--kernel", "/nonexistent", "--api-sock", "/tmp/x.sock")
    assert code == 1 and "configured by its shape" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_vmm("--warm", "--vcpus", "2")
    assert code == 1 and "configured by its shape" in err


def test_a_jailed_warm_vmm_restores_from_fds(tmp_path, guest):
    """Jailed (its own uid, a root holding only its socket's directory): it opens no snapshot
    file and still becomes the VM."""
    facts = take_snapshot(tmp_path, guest)
    state_dir = tmp_path / "jailed"
    state_dir.mkdir()
    sock = str(state_dir / "api.sock")
    with VmmProcess("--warm", "--jail", "--vcpus", "1", "--memory", "128", "--api-sock", sock) as vmm:
        vmm.wait_api(sock)
        load_snapshot(sock, facts["dir"])
        assert_continues(vmm, facts)
        vmm.signal()                        # SIGTERM, passed on by the jail's parent: the guest powers off
        assert vmm.finish()[0] == 0


def test_a_prepared_warm_vmm_loads_the_same_files_from_where_it_stopped(tmp_path, guest):
    """A load with prepare: true maps and checks and leaves the VMM warm; a load of the same files
    then skips that part; a load of other files maps them afresh."""
    facts = take_snapshot(tmp_path, guest)
    other = take_snapshot(tmp_path, guest, name="other")
    for prepared, loaded, primed in ((facts, facts, True), (other, facts, False)):
        vmm, sock = warm(tmp_path, 1, 128)
        with vmm:
            api = vmm.wait_api(sock)
            load_snapshot(sock, prepared["dir"], prepare=True)
            assert api.get("/vm")["state"] == "Warm" and not vmm.lines
            load_snapshot(sock, loaded["dir"])
            assert_continues(vmm, loaded)
            assert api.get("/vm")["timing"].get("primed", False) is primed
