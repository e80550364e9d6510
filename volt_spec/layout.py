"""Guest-physical memory layout and fixed platform resources, in one place.

Every address the VMM writes into guest memory, and every port/IRQ a device
answers on, is named here so the loaders, ACPI tables and devices agree.

    0x0000_0500  GDT used for the 64-bit Linux entry
    0x0000_6000  PVH hvm_start_info, followed by its memory map
    0x0000_7000  Linux zero page (struct boot_params)
    0x0000_8000  free for the guest (the test guest's AP trampoline lives here)
    0x0000_9000  identity page tables for the 64-bit Linux entry (PML4, PDPT, PDs)
    0x0002_0000  kernel command line
    0x0009_fc00  end of low RAM (EBDA and BIOS area reserved above)
    0x000e_0000  ACPI tables (RSDP first, so a legacy scan finds it too)
    0x000f_f000  the VM generation ID (16 bytes; the DSDT's VGEN device names it)
    0x0010_0000  kernel (bzImage protected-mode part; ELF files use their own paddrs)
    0xc000_0000  start of the 32-bit MMIO hole: RAM beyond 3 GiB moves above 4 GiB
    0xd000_0000  virtio-mmio device windows, 4 KiB each
    0xfec0_0000  IOAPIC
    0xfee0_0000  local APICs
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
PAGE_SIZE = 4096

BOOT_GDT_ADDR = 0x500
BOOT_IDT_ADDR = 0x520
PVH_INFO_ADDR = 0x6000
PVH_MEMMAP_ADDR = 0x6040          # hvm_memmap_table_entry[] right after hvm_start_info
PVH_MEMMAP_MAX = 64
ZERO_PAGE_ADDR = 0x7000
GUEST_FREE_LOW = 0x8000           # one page left to the guest (AP trampoline)
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000                  # 4 PDs of 2 MiB pages: identity-maps 4 GiB
PD_COUNT = 4
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000
EBDA_START = 0x9FC00
ACPI_START = 0xE0000
ACPI_END = 0xFF000                # the tables end below the generation ID's page
VMGENID_ADDR = 0xFF000            # 16 bytes in E820-reserved low memory (Microsoft's VM Generation ID)
VMGENID_SIZE = 16
HIMEM_START = 0x100000            # 1 MiB: where a bzImage's kernel goes
BOOT_STACK_TOP = 0x8FF0           # rsp for the 64-bit Linux entry (unused by the kernel)

MMIO_HOLE_START = 3 * GiB
MMIO_HOLE_END = 4 * GiB
HIGH_RAM_START = 4 * GiB

VIRTIO_MMIO_BASE = 0xD000_0000
VIRTIO_MMIO_SIZE = 0x1000
VIRTIO_IRQ_BASE = 5               # first virtio device's IOAPIC pin
GED_GSI = 23                      # the Generic Event Device's pin (the last IOAPIC pin): VGEN's notify
IOAPIC_ADDR = 0xFEC0_0000
LAPIC_ADDR = 0xFEE0_0000
KVM_TSS_ADDR = 0xFFFB_D000
KVM_IDENTITY_MAP_ADDR = 0xFFFB_C000

# Legacy I/O ports and IRQs.
COM1_PORT = 0x3F8
COM1_IRQ = 4
I8042_DATA_PORT = 0x60
I8042_CMD_PORT = 0x64
I8042_IRQ = 1
# ACPI hardware-reduced sleep registers (FADT SLEEP_CONTROL_REG / SLEEP_STATUS_REG).
ACPI_SLEEP_CONTROL_PORT = 0x600
ACPI_SLEEP_STATUS_PORT = 0x601
ACPI_S5_SLP_TYP = 5               # the value the DSDT's \_S5 package names
# MC146818 CMOS/RTC index and data ports (no IRQ 8: the RTC raises no interrupts).
RTC_INDEX_PORT = 0x70
RTC_DATA_PORT = 0x71
# Ports Linux and firmware poke that need no device: POST codes, I/O delay,
# PC speaker/NMI status, DMA page register. Answered by a bus Sink, not logged.
NOISE_PORTS = (0x61, 0x80, 0x87, 0xED)

# x86 e820 / PVH memory map types.
E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3


def ram_ranges(mem_size: int) -> list[tuple[int, int]]:
    """Guest RAM as (guest-physical start, size): below the MMIO hole, then above 4 GiB."""
    if mem_size <= MMIO_HOLE_START:
        return [(0, mem_size)]
    return [(0, MMIO_HOLE_START), (HIGH_RAM_START, mem_size - MMIO_HOLE_START)]


def memory_map(mem_size: int) -> list[tuple[int, int, int]]:
    """The e820-style map the guest is told about: (start, size, type), sorted."""
    ranges = ram_ranges(mem_size)
    low_size = ranges[0][1]
    entries = [
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ]
    if low_size > HIMEM_START:
        entries.append((HIMEM_START, low_size - HIMEM_START, E820_RAM))
    for start, size in ranges[1:]:
        entries.append((start, size, E820_RAM))
    return entries
