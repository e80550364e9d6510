"""Acceptance: a real Linux kernel nobody here wrote (Debian's cloud kernel) boots on volt-vmm.

On PVM (software KVM: a full Linux boot is out of reach) the kernel's own early log proves
the boot path: our command line, memory map, ACPI tables and CPU count as Linux saw them.
On hardware KVM it boots to a busybox /init that prints a marker and powers off.
Never skipped: the mode that ran is printed.
"""

from __future__ import annotations

import re

import pytest

from volt_spec import layout
from volt_spec.kvm.flavour import kvm_flavour

from volt_spec.boot.initramfs import (DISK_MARKER, HOST_IP, INIT_MARKER, VIRTIO_MODULES, build_initramfs, cpio_names,
                        make_ext4_disk)
from .kvm_required import require_kvm
from .netns import tap_namespace
from .test_virtio_e2e import NsVmm
from .vmm_process import VmmProcess

pytestmark = [pytest.mark.linux, pytest.mark.hwlane]


@pytest.fixture(scope="module")
def kernel():
    require_kvm()
    from volt_spec.boot.kernel_fetch import fetch_debian_kernel, vmlinux_path
    bz = fetch_debian_kernel()
    return {"bzimage": str(bz), "vmlinux": str(vmlinux_path())}


@pytest.fixture(scope="module")
def flavour() -> str:
    f = kvm_flavour()
    print(f"\nLinux acceptance mode: KVM flavour is {f!r}: "
          + ("early-boot log checks (a full boot is out of reach on PVM)" if f == "pvm"
             else "full boot to busybox /init"))
    return f


def e820_lines(mem_size: int) -> list[str]:
    kinds = {layout.E820_RAM: "usable", layout.E820_RESERVED: "reserved"}
    return [f"BIOS-e820: [mem {a:#018x}-{a + s - 1:#018x}] {kinds[t]}" for a, s, t in layout.memory_map(mem_size)]


def test_vmlinux_by_pvh_shows_our_machine(kernel, flavour, tmp_path):
    """Booted with a virtio disk and NIC attached (a tap in a network namespace of our own)."""
    cmdline = "console=ttyS0 earlyprintk=ttyS0 noxsave nokaslr panic=-1 volt.accept=pvh"
    disk = make_ext4_disk(tmp_path / "disk.img")
    args = ["--kernel", kernel["vmlinux"], "--vcpus", "2", "--memory", "512", "--cmdline", cmdline,
            "--disk", f"{disk},name=data", "--net", "tap=vt0,name=eth0"]
    initrd = full_initramfs(tmp_path)
    if flavour != "pvm":
        args += ["--initrd", str(initrd)]
    with tap_namespace("vt0") as (ns, _tap), NsVmm(ns, *args) as vmm:
        vmm.wait_for(r"Linux version 6\.", timeout=60)
        assert vmm.wait_for(r"Command line: (.*)$", timeout=30).group(1).strip() == cmdline
        for line in e820_lines(512 * layout.MiB):
            vmm.wait_for(re.escape(line), timeout=30)
        for table in ("RSDP", "XSDT", "FACP", "DSDT", "APIC"):
            vmm.wait_for(rf"ACPI: {table} 0x", timeout=60)
        # the DSDT grew by the two LNRO0005 devices (disk and NIC) and Linux accepted it
        dsdt_len = int(vmm.wait_for(r"ACPI: DSDT 0x[0-9A-F]+ ([0-9A-F]{6})").group(1), 16)
        from volt_spec.boot.acpi import VirtioMmioDesc, build_dsdt
        assert dsdt_len == len(build_dsdt([VirtioMmioDesc(layout.VIRTIO_MMIO_BASE + i * 0x1000, 0x1000,
                                                          layout.VIRTIO_IRQ_BASE + i) for i in range(2)]))
        vmm.wait_for(r"smpboot: Allowing 2 CPUs", timeout=120)
        if flavour != "pvm":
            vmm.wait_for(rf"{INIT_MARKER} 2 cpus", timeout=60)
            vmm.wait_for(rf"modules-loaded {len(VIRTIO_MODULES)}", timeout=30)
            vmm.wait_for(rf"disk-ok {DISK_MARKER}", timeout=30)
            vmm.wait_for(rf"ping-ok {HOST_IP}", timeout=30)
            code, err = vmm.finish(timeout=30)
            assert code == 0, err


def full_initramfs(tmp_path):
    """busybox + the kernel's own virtio modules + /init (used for the full boot on hardware KVM)."""
    from volt_spec.boot.kernel_fetch import fetch_busybox, fetch_kernel_modules
    initrd = build_initramfs(fetch_busybox(), tmp_path / "initrd.gz", fetch_kernel_modules(VIRTIO_MODULES))
    names = cpio_names(initrd.read_bytes())
    assert "init" in names and "bin/busybox" in names
    assert all(f"lib/modules/{m}.ko" in names for m in VIRTIO_MODULES)
    return initrd


def test_bzimage_by_linux64_protocol_runs_the_decompressor(kernel, flavour, tmp_path):
    args = ["--kernel", kernel["bzimage"], "--memory", "512",
            "--cmdline", "console=uart8250,io,0x3f8 nokaslr panic=-1"]
    if flavour != "pvm":
        busybox = __import__("volt_spec.boot.kernel_fetch", fromlist=["x"]).fetch_busybox()
        args += ["--initrd", str(build_initramfs(busybox, tmp_path / "initrd.gz"))]
    with VmmProcess(*args) as vmm:
        vmm.wait_for(r"KASLR disabled: 'nokaslr' on cmdline\.", timeout=120)
        if flavour != "pvm":
            vmm.wait_for(rf"{INIT_MARKER} 1 cpus", timeout=60)
            code, err = vmm.finish(timeout=30)
            assert code == 0, err
