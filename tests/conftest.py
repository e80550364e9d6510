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
