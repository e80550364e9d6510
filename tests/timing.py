"""Test deadlines, scaled by the lane they run in.

The hardware-KVM lane runs the suite under QEMU's TCG, 10-50x slower than a host, and sets
VOLT_TIMEOUT_SCALE; every helper that waits for a marker multiplies its deadline by it, so no
test loosens its own numbers and a host run keeps its short deadlines.
"""

from __future__ import annotations

import os

SCALE = max(1.0, float(os.environ.get("VOLT_TIMEOUT_SCALE") or 1))


def scaled(seconds: float) -> float:
    """`seconds` as a deadline in this lane."""
    return seconds * SCALE
