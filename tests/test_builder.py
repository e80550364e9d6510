"""The builder and persist, in-process on the real /dev/kvm: a VmmConfig boots, persist.save writes a
snapshot of the running guest, and build_from_snapshot restores it, also into a VM made ahead
(what a warm pool does), and the guest goes on from where it was."""

from __future__ import annotations

import re

import pytest

from .kvm_required import require_kvm
from .test_machine_hold import Console

pytestmark = pytest.mark.hwlane


def stop(machine) -> None:
    machine.request_exit(0, "test over")
    for t in machine.threads:
        t.join()
    machine.close()


def last_tick(console: Console) -> int:
    return int(re.findall(rb"tick (\d+) ", console.text)[-1])


@pytest.fixture
def kvm():
    require_kvm()
    from volt_spec.kvm.system import Kvm
    from volt_spec.vmm.machine import install_kick_handler
    install_kick_handler()
    kvm = Kvm()
    yield kvm
    kvm.close()


def boot_and_snapshot(kvm, tmp_path) -> tuple[str, int]:
    from volt_spec.guest.build import build_guest
    from volt_spec.vmm import persist
    from volt_spec.vmm.builder import build, launch
    from volt_spec.vmm.config import BootSourceConfig, VmmConfig
    machine = build(kvm, VmmConfig(boot_source=BootSourceConfig(str(build_guest()),
                                                                cmdline="volt.ticks=0 volt.tick_ms=20")))
    console = Console()
    machine.devices.add_console_tap(console)
    launch(machine)
    try:
        console.wait_for(rb"tick 3 ")
        summary = persist.save(machine, str(tmp_path / "snap"), {"by": "test"}, resume=False)
        assert machine.state == "Paused" and summary["id"] == "snap"
        return summary["path"], last_tick(console)
    finally:
        stop(machine)


@pytest.mark.parametrize("ahead", [False, True], ids=["new-vm", "vm-made-ahead"])
def test_build_from_snapshot_continues_the_guest(kvm, tmp_path, ahead):
    from volt_spec.vmm.builder import build_from_snapshot, launch
    from volt_spec.vmm.config import RestoreConfig, VmmConfig
    from volt_spec.vmm.machine import create_vm
    path, at = boot_and_snapshot(kvm, tmp_path)
    vm = create_vm(kvm) if ahead else None
    machine = build_from_snapshot(kvm, VmmConfig(restore=RestoreConfig(path)), into=vm)
    assert (machine.vm is vm) if ahead else machine.vm is not None
    assert machine.booted_from == "snapshot snap" and machine.state == "NotStarted"
    console = Console()
    machine.devices.add_console_tap(console)
    launch(machine, restored=True)
    try:
        console.wait_for(rb"tick \d+ ")
        first = int(re.search(rb"tick (\d+) ", console.text).group(1))
        # from where it was paused: the next tick (or the one after, when the pause fell mid-line)
        assert at + 1 <= first <= at + 2, (at, console.text)
        console.wait_for(rb"tick %d " % (first + 1))
    finally:
        stop(machine)
