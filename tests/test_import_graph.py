"""Layering and a lean VMM: what volt-vmm imports before the first KVM_RUN is part of its speed."""

from __future__ import annotations

import subprocess
import sys

BOOT_AND_RESTORE_PATH = [
    "volt_spec.vmm.main", "volt_spec.vmm.machine", "volt_spec.vmm.loader", "volt_spec.vmm.config",
    "volt_spec.boot.acpi", "volt_spec.boot.cpuid", "volt_spec.boot.pvh", "volt_spec.boot.elf",
    "volt_spec.devices.serial", "volt_spec.devices.i8042", "volt_spec.devices.bus", "volt_spec.devices.rtc",
    "volt_spec.devices.acpi_pm", "volt_spec.kvm.system", "volt_spec.kvm.vm", "volt_spec.kvm.vcpu",
    "volt_spec.kvm.memory", "volt_spec.snapshot.restore", "volt_spec.snapshot.format",
    "volt_spec.snapshot.memory_file", "volt_spec.snapshot.vcpu_state", "volt_spec.snapshot.vm_state",
    "volt_spec.snapshot.device_state",
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


def test_devices_do_not_import_the_kvm_layer():
    new = loaded_after(["volt_spec.devices.serial", "volt_spec.devices.i8042", "volt_spec.devices.bus",
                        "volt_spec.devices.virtio.mmio", "volt_spec.devices.virtio.blk",
                        "volt_spec.devices.virtio.net"])
    assert not any(m.startswith("volt_spec.kvm") for m in new), sorted(new)
