"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import pytest

from .kvm_required import require_kvm
from .voltcli import Volt


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
