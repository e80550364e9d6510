"""The PVH boot protocol: `hvm_start_info`, its memory map, and the 32-bit entry state.

Layouts from Xen's public `arch-x86/hvm/start_info.h` (version 1). The guest is
entered in 32-bit protected mode, paging off, flat segments, with %ebx holding
the guest-physical address of hvm_start_info.
"""

from __future__ import annotations

import struct

from .. import layout

HVM_START_MAGIC = 0x336EC578
HVM_START_INFO = struct.Struct("<IIIIQQQQII")          # 56 bytes, version 1
HVM_MEMMAP_ENTRY = struct.Struct("<QQII")              # addr, size, type, reserved
HVM_MODLIST_ENTRY = struct.Struct("<QQQQ")             # paddr, size, cmdline_paddr, reserved
MODLIST_ADDR = layout.PVH_MEMMAP_ADDR + layout.PVH_MEMMAP_MAX * HVM_MEMMAP_ENTRY.size

# Flat 32-bit GDT written at BOOT_GDT_ADDR: null, null, code (0x10), data (0x18), TSS (0x20).
CODE_SELECTOR = 0x10
DATA_SELECTOR = 0x18
TSS_SELECTOR = 0x20
GDT_ENTRIES = (0, 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF, 0x00008B0000000067)


def start_info_writes(mem_size: int, cmdline_addr: int, rsdp_addr: int,
                      initrd: tuple[int, int] | None = None) -> list[tuple[int, bytes]]:
    """Guest writes for hvm_start_info, the memory map and (with an initrd) the module list."""
    memmap = layout.memory_map(mem_size)
    if len(memmap) > layout.PVH_MEMMAP_MAX:
        raise ValueError("memory map too large for the PVH table")
    table = b"".join(HVM_MEMMAP_ENTRY.pack(a, s, t, 0) for a, s, t in memmap)
    writes = [(layout.PVH_MEMMAP_ADDR, table)]
    nr_modules, modlist = 0, 0
    if initrd is not None:
        writes.append((MODLIST_ADDR, HVM_MODLIST_ENTRY.pack(initrd[0], initrd[1], 0, 0)))
        nr_modules, modlist = 1, MODLIST_ADDR
    info = HVM_START_INFO.pack(HVM_START_MAGIC, 1, 0, nr_modules, modlist, cmdline_addr, rsdp_addr,
                               layout.PVH_MEMMAP_ADDR, len(memmap), 0)
    writes.append((layout.PVH_INFO_ADDR, info))
    writes.append((layout.BOOT_GDT_ADDR, b"".join(struct.pack("<Q", e) for e in GDT_ENTRIES)))
    return writes


def segment(selector: int, code: bool) -> dict[str, int]:
    """kvm_segment fields for a flat 4 GiB 32-bit segment."""
    return dict(base=0, limit=0xFFFFFFFF, selector=selector, type=0xB if code else 0x3, present=1,
                dpl=0, db=1, s=1, l=0, g=1, avl=0, unusable=0)


def entry_sregs() -> dict[str, object]:
    """Special-register values at the PVH entry (protected mode, paging off)."""
    data = segment(DATA_SELECTOR, code=False)
    return {
        "cs": segment(CODE_SELECTOR, code=True),
        "ds": data, "es": data, "fs": data, "gs": data, "ss": data,
        "tr": dict(base=0, limit=0x67, selector=TSS_SELECTOR, type=0xB, present=1, dpl=0, db=0, s=0,
                   l=0, g=0, avl=0, unusable=0),
        "gdt": (layout.BOOT_GDT_ADDR, len(GDT_ENTRIES) * 8 - 1),
        "idt": (0, 0),
        "cr0": 0x11,       # PE | ET
        "cr3": 0, "cr4": 0, "efer": 0,
    }
