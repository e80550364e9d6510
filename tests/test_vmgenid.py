"""The VM generation ID: the test guest finds it through the DSDT (VGEN's ADDR) and prints it;
every restore of a snapshot, cold or into a warm VMM, gives the clone a new one."""

from __future__ import annotations

import pytest

from volt_spec.runner.warmload import load_snapshot

from .kvm_required import require_kvm
from .test_snapshot_restore import assert_continues, take_snapshot
from .vmm_process import VmmProcess

pytestmark = pytest.mark.hwlane

GEN = r"^vmgenid ([0-9a-f]{32})$"
CMDLINE = "volt.ticks=0 volt.tick_ms=50 volt.mem=8 volt.vmgenid"


@pytest.fixture(scope="module")
def guest() -> str:
    require_kvm()
    from volt_spec.guest.build import build_guest
    return str(build_guest())


def test_the_guest_reads_the_generation_id_the_vmm_wrote(tmp_path, guest):
    sock = str(tmp_path / "api.sock")
    with VmmProcess("--kernel", guest, "--cmdline", CMDLINE, "--api-sock", sock) as vmm:
        seen = vmm.wait_for(GEN).group(1)
        assert vmm.wait_api(sock).get("/vm")["vmgenid"] == seen != "0" * 32


def test_every_clone_of_a_snapshot_gets_a_new_generation_id(tmp_path, guest):
    facts = take_snapshot(tmp_path, guest, cmdline=CMDLINE)
    original = next(ln.split()[1] for ln in facts_lines(facts) if ln.startswith("vmgenid "))
    ids = []
    cold_sock, warm_sock = str(tmp_path / "cold.sock"), str(tmp_path / "warm.sock")
    with VmmProcess("--restore", facts["dir"], "--api-sock", cold_sock) as cold, \
            VmmProcess("--warm", "--vcpus", "1", "--memory", "128", "--api-sock", warm_sock) as warm:
        warm.wait_api(warm_sock)
        load_snapshot(warm_sock, facts["dir"])
        for clone, sock in ((cold, cold_sock), (warm, warm_sock)):
            assert_continues(clone, facts)
            new = clone.wait_for(GEN).group(1)
            assert clone.wait_api(sock).get("/vm")["vmgenid"] == new
            ids.append(new)
    assert original not in ids and ids[0] != ids[1], (original, ids)


def facts_lines(facts: dict) -> list[str]:
    """The console lines the snapshotted guest printed (take_snapshot keeps its ticks only)."""
    return facts["lines"]
