"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import pytest

from .kvm_required import require_kvm
from .voltcli import Volt


@pytest.fixture
def volt_ns(volt):
    """`volt` run inside a network namespace of its own (`.ns`), where the VMMs create their taps."""
    from .netns import empty_namespace, in_netns
    with empty_namespace("volt") as ns:
        v = Volt(volt.home, prefix=in_netns(ns, []))
        v.ns = ns
        yield v
        v("delete", "--all", check=None)


@pytest.fixture
def volt(tmp_path):
    """The `volt` CLI with a $VOLT_HOME of its own; every VM it made is deleted afterwards."""
    require_kvm()
    v = Volt(tmp_path / "home")
    yield v
    v("delete", "--all", check=None)


@pytest.fixture
def memory():
    """16 MiB of fresh guest RAM for device-model tests (no KVM)."""
    from volt_spec.kvm.memory import GuestMemory
    mem = GuestMemory.anonymous([(0, 16 << 20)])
    yield mem
    mem.close()


def pytest_collection_modifyitems(config, items):
    """Tests marked for one KVM kind run only in that kind's lane: deselected here, with a note."""
    from volt_spec.kvm.flavour import PVM, kvm_flavour
    flavour = kvm_flavour()
    other = "hw_only" if flavour == PVM else "pvm_only"
    away = [item for item in items if item.get_closest_marker(other)]
    if away:
        config.hook.pytest_deselected(items=away)
        items[:] = [item for item in items if not item.get_closest_marker(other)]
        lane = "the hardware-KVM lane (make test-hw)" if other == "hw_only" else "make test on a PVM host"
        config._volt_lane_note = (f"{len(away)} {other} tests deselected on this {flavour} KVM host; "
                                  f"they run in {lane}: " + ", ".join(i.nodeid for i in away))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    note = getattr(config, "_volt_lane_note", None)
    if note:
        terminalreporter.write_line(note)
