"""A lean VMM: what volt-vmm imports before the first KVM_RUN is part of its speed.

Which package may import which is .importlinter's (run by `make test`); import cycles and sizes
are tests/test_structure.py's. This file checks what a real import loads, stdlib included.
"""

from __future__ import annotations

import subprocess
import sys

BOOT_AND_RESTORE_PATH = [
    "volt_spec.vmm.main", "volt_spec.vmm.machine", "volt_spec.vmm.loader", "volt_spec.vmm.config",
    "volt_spec.vmm.config.args", "volt_spec.vmm.builder", "volt_spec.vmm.persist", "volt_spec.vmm.devices",
    "volt_spec.boot.acpi", "volt_spec.boot.cpuid", "volt_spec.boot.pvh", "volt_spec.boot.elf",
    "volt_spec.devices.serial", "volt_spec.devices.i8042", "volt_spec.devices.bus", "volt_spec.devices.rtc",
    "volt_spec.devices.acpi_pm", "volt_spec.kvm.system", "volt_spec.kvm.vm", "volt_spec.kvm.vcpu",
    "volt_spec.kvm.memory", "volt_spec.snapshot.restore", "volt_spec.snapshot.format",
    "volt_spec.snapshot.memory_file", "volt_spec.snapshot.vcpu_state", "volt_spec.snapshot.vm_state",
    "volt_spec.snapshot.codec",
]
HEAVY = ["typer", "click", "rich", "jsonschema", "ruamel", "tabulate", "pydantic", "dataclasses", "typing",
         "enum", "re", "json", "inspect", "threading", "argparse", "volt_spec.schema", "volt_spec.runner"]


def loaded_after(modules: list[str]) -> set[str]:
    code = ("import sys; before = set(sys.modules)\n"
            f"for m in {modules!r}: __import__(m)\n"
            "new = sorted(set(sys.modules) - before)\n"
            "print(' '.join(new))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": ":".join(p for p in sys.path if p)}).stdout
    return set(out.split())


def test_vmm_boot_and_restore_path_stays_lean():
    new = loaded_after(BOOT_AND_RESTORE_PATH)
    heavy = sorted(m for m in new if m.split(".")[0] in HEAVY or any(m.startswith(h + ".") or m == h
                                                                    for h in HEAVY))
    assert heavy == [], f"volt-vmm's boot/restore path imports {heavy}"


VIRTIO_DEVICES = ["volt_spec.devices.virtio.mmio", "volt_spec.devices.virtio.blk",
                  "volt_spec.devices.virtio.net", "volt_spec.devices.virtio.tap"]
# Beyond HEAVY: tap.py imports socket and hashlib only when used (a socketpair stand-in, a MAC).
VIRTIO_HEAVY = HEAVY + ["socket", "hashlib"]


def test_virtio_devices_stay_light():
    new = loaded_after(VIRTIO_DEVICES)
    heavy = sorted(m for m in new if any(m == h or m.startswith(h + ".") for h in VIRTIO_HEAVY))
    assert heavy == [], f"the virtio device models import {heavy}"
