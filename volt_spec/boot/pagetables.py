"""Identity page tables and boot GDTs for entering a kernel in 64-bit or 32-bit mode.

The Linux 64-bit boot protocol (boot.rst, "64-bit Boot Protocol") wants paging
on with the kernel, zero page and command line identity-mapped, and a GDT with
flat __BOOT_CS (0x10, execute/read) and __BOOT_DS (0x18, read/write). PVH enters
in 32-bit protected mode with paging off and the same selectors, 32-bit flavour.
Descriptor bit layout: Intel SDM vol. 3A, 3.4.5 "Segment Descriptors".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from volt_spec.layout import (
    BOOT_GDT_ADDR,
    BOOT_IDT_ADDR,
    GiB,
    MiB,
    PAGE_SIZE,
    PD_ADDR,
    PD_COUNT,
    PDPT_ADDR,
    PML4_ADDR,
)

# Page-table entry bits (SDM vol. 3A, 4.5).
PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_PAGE_SIZE = 1 << 7            # in a PD entry: maps a 2 MiB page
ENTRIES_PER_TABLE = 512
LARGE_PAGE_SIZE = 2 * MiB
IDENTITY_MAP_SIZE = PD_COUNT * GiB  # one PD maps 1 GiB

# Control-register bits the lead sets for the 64-bit entry.
CR0_PE = 1 << 0
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

# Selectors fixed by the Linux boot protocol (__BOOT_CS / __BOOT_DS), plus a TSS.
BOOT_CS = 0x10
BOOT_DS = 0x18
BOOT_TSS = 0x20
DESCRIPTOR_SIZE = 8

# Descriptor types (S=1: code/data; S=0: system).
TYPE_CODE_EXEC_READ_ACCESSED = 0xB
TYPE_DATA_READ_WRITE_ACCESSED = 0x3
TYPE_TSS_BUSY = 0xB


@dataclass(frozen=True)
class Descriptor:
    """A segment descriptor's fields, as in the SDM and `struct kvm_segment`."""

    base: int = 0
    limit: int = 0                 # raw 20-bit limit (in 4 KiB units when g=1)
    type: int = 0
    s: int = 0                     # 1 = code/data, 0 = system
    dpl: int = 0
    present: int = 0
    avl: int = 0
    l: int = 0                     # 64-bit code segment  # noqa: E741 (SDM name)
    db: int = 0                    # default operand size 32-bit
    g: int = 0                     # limit granularity 4 KiB

    def encode(self) -> int:
        """The 8-byte descriptor as an integer."""
        access = self.type | self.s << 4 | self.dpl << 5 | self.present << 7
        flags = self.avl | self.l << 1 | self.db << 2 | self.g << 3
        return ((self.limit & 0xFFFF) | (self.base & 0xFF_FFFF) << 16 | access << 40
                | ((self.limit >> 16) & 0xF) << 48 | flags << 52 | ((self.base >> 24) & 0xFF) << 56)

    @classmethod
    def decode(cls, raw: int) -> Descriptor:
        access = (raw >> 40) & 0xFF
        flags = (raw >> 52) & 0xF
        return cls(
            base=((raw >> 16) & 0xFF_FFFF) | ((raw >> 56) & 0xFF) << 24,
            limit=(raw & 0xFFFF) | ((raw >> 48) & 0xF) << 16,
            type=access & 0xF, s=(access >> 4) & 1, dpl=(access >> 5) & 3, present=access >> 7,
            avl=flags & 1, l=(flags >> 1) & 1, db=(flags >> 2) & 1, g=flags >> 3,
        )


_FLAT = dict(base=0, limit=0xFFFFF, present=1, g=1)
NULL = Descriptor()
CODE64 = Descriptor(type=TYPE_CODE_EXEC_READ_ACCESSED, s=1, l=1, **_FLAT)      # 0x00af9b000000ffff
CODE32 = Descriptor(type=TYPE_CODE_EXEC_READ_ACCESSED, s=1, db=1, **_FLAT)     # 0x00cf9b000000ffff
DATA = Descriptor(type=TYPE_DATA_READ_WRITE_ACCESSED, s=1, db=1, **_FLAT)      # 0x00cf93000000ffff
# VM entry needs a usable busy TSS in TR. KVM takes TR from kvm_segment, never
# from memory, and the kernel loads its own TR, so this descriptor is not in the
# in-memory GDT (which must end before layout.BOOT_IDT_ADDR).
TSS = Descriptor(type=TYPE_TSS_BUSY, base=0, limit=0xFFFFF, present=1, g=1)    # 0x008f8b000000ffff

# Index = selector >> 3: [null, unused, __BOOT_CS, __BOOT_DS].
BOOT_GDT_64: tuple[Descriptor, ...] = (NULL, NULL, CODE64, DATA)
BOOT_GDT_32: tuple[Descriptor, ...] = (NULL, NULL, CODE32, DATA)   # PVH entry


def gdt_bytes(entries: tuple[Descriptor, ...]) -> bytes:
    """The GDT as it sits in guest memory."""
    return b"".join(struct.pack("<Q", d.encode()) for d in entries)


def gdt_limit(entries: tuple[Descriptor, ...]) -> int:
    """GDTR.limit: size in bytes minus one."""
    return len(entries) * DESCRIPTOR_SIZE - 1


def gdt_entry_to_segment(selector: int, entry: Descriptor | int) -> dict[str, int]:
    """Fields of a `struct kvm_segment` for `selector`, loaded from `entry`.

    kvm_segment.limit is in bytes, so a page-granular limit is scaled the way
    the CPU does on a segment load.
    """
    d = entry if isinstance(entry, Descriptor) else Descriptor.decode(entry)
    limit = (d.limit << 12) | 0xFFF if d.g else d.limit
    return dict(base=d.base, limit=limit, selector=selector, type=d.type, present=d.present,
                dpl=d.dpl, db=d.db, s=d.s, l=d.l, g=d.g, avl=d.avl, unusable=0 if d.present else 1)


def boot_segments(entries: tuple[Descriptor, ...] = BOOT_GDT_64) -> dict[str, dict[str, int]]:
    """kvm_segment fields for cs, ds/es/fs/gs/ss and tr, per the boot protocol.

    TR's selector (0x20) is nominal: the TSS descriptor is not in the in-memory GDT.
    """
    data = gdt_entry_to_segment(BOOT_DS, entries[BOOT_DS >> 3])
    segs = {name: dict(data) for name in ("ds", "es", "fs", "gs", "ss")}
    segs["cs"] = gdt_entry_to_segment(BOOT_CS, entries[BOOT_CS >> 3])
    segs["tr"] = gdt_entry_to_segment(BOOT_TSS, TSS)
    return segs


def identity_map_writes() -> list[tuple[int, bytes]]:
    """PML4 -> PDPT -> PD_COUNT PDs of 2 MiB pages identity-mapping the first 4 GiB.

    The 3-4 GiB PD maps the MMIO hole too, so the kernel can reach the IOAPIC
    and LAPIC before it installs its own tables.
    """
    table_flags = PTE_PRESENT | PTE_WRITABLE
    pml4 = struct.pack("<Q", PDPT_ADDR | table_flags).ljust(PAGE_SIZE, b"\0")
    pdpt = b"".join(struct.pack("<Q", (PD_ADDR + i * PAGE_SIZE) | table_flags)
                    for i in range(PD_COUNT)).ljust(PAGE_SIZE, b"\0")
    pds = b"".join(struct.pack("<Q", (i * LARGE_PAGE_SIZE) | table_flags | PTE_PAGE_SIZE)
                   for i in range(PD_COUNT * ENTRIES_PER_TABLE))
    return [(PML4_ADDR, pml4), (PDPT_ADDR, pdpt), (PD_ADDR, pds)]


def boot_gdt_write(entries: tuple[Descriptor, ...] = BOOT_GDT_64) -> tuple[int, bytes]:
    """The GDT placed at layout.BOOT_GDT_ADDR."""
    table = gdt_bytes(entries)
    if BOOT_GDT_ADDR + len(table) > BOOT_IDT_ADDR:
        raise ValueError(
            f"boot GDT of {len(entries)} entries overlaps the IDT at {BOOT_IDT_ADDR:#x}")
    return (BOOT_GDT_ADDR, table)
