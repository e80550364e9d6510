"""The result both boot protocols' planners return (loader.py: PVH; linux_plan.py: Linux 64-bit).

A module of its own so that neither planner imports the other: loader.py picks the protocol
and imports linux_plan.py only for a Linux kernel, which in turn needs only this.
"""

from __future__ import annotations


class BootPlan:
    """Everything the VMM writes before the first KVM_RUN, and the BSP's entry registers."""

    __slots__ = ("protocol", "writes", "regs", "sregs")

    def __init__(self, protocol: str, writes: list[tuple[int, bytes]], regs: dict[str, int],
                 sregs: dict[str, object]) -> None:
        self.protocol, self.writes, self.regs, self.sregs = protocol, writes, regs, sregs
