"""Shared guard for tests that need /dev/kvm: they fail (never skip) with a clear message."""

from __future__ import annotations

import os

import pytest


def require_kvm() -> None:
    if not os.path.exists("/dev/kvm"):
        pytest.fail("/dev/kvm is missing: volt-spec's KVM tests need a host with KVM "
                    "(hardware VT-x/AMD-V or PVM); they do not skip", pytrace=False)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.fail("/dev/kvm is not accessible: run the tests as root or in the kvm group",
                    pytrace=False)
