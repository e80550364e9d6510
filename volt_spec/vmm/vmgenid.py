"""The VM generation ID: 16 bytes the guest finds through the DSDT's VGEN device (boot/acpi.py).

A cold boot writes a random one; every restore writes a new one before any vCPU runs and then
raises the GED's interrupt, whose _EVT notifies VGEN: Linux's vmgenid driver re-reads the ID and
reseeds the kernel's RNG, so clones of one snapshot never share random state (Microsoft's
"Virtual Machine Generation ID", as QEMU and Firecracker give it). The ID lives in E820-reserved
low memory (layout.VMGENID_ADDR); a guest from before this device simply never looks there.
"""

from __future__ import annotations

import os

from .. import layout


def write_new_id(machine) -> bytes:
    """A fresh random ID at VMGENID_ADDR in guest memory (a restored VM's page is copied on write)."""
    new = os.urandom(layout.VMGENID_SIZE)
    machine.memory.write(layout.VMGENID_ADDR, new)
    machine.generation_id = new
    return new


def notify(machine) -> None:
    """Raise the GED's edge interrupt (after the irqchip state is restored: the guest's IOAPIC
    routing for the pin is then in place; a guest that never set it up has the pin masked)."""
    machine.vm.irq_line(layout.GED_GSI, True)
    machine.vm.irq_line(layout.GED_GSI, False)
