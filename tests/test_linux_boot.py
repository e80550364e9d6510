"""The Linux 64-bit boot: zero page bytes, e820, placement of kernel/cmdline/initrd, errors."""

from __future__ import annotations

import gzip
import struct

import pytest

from tests.test_bzimage import FAKE_ELF, debian_kernel_or_fail, make_bzimage
from volt_spec import layout
from volt_spec.boot.bzimage import CAN_USE_HEAP, LOADED_HIGH, KernelFormatError
from volt_spec.boot.linux import (
    LinuxBoot,
    build_zero_page,
    e820_map,
    elf_setup_header,
    load_bzimage,
    load_vmlinux_elf,
)
from volt_spec.boot.pagetables import BOOT_CS, BOOT_DS
from volt_spec.boot.elf import ElfImage

MiB = layout.MiB
GiB = layout.GiB
RSDP = 0xE0000


def u8(page: bytes, off: int) -> int:
    return page[off]


def u16(page: bytes, off: int) -> int:
    return struct.unpack_from("<H", page, off)[0]


def u32(page: bytes, off: int) -> int:
    return struct.unpack_from("<I", page, off)[0]


def u64(page: bytes, off: int) -> int:
    return struct.unpack_from("<Q", page, off)[0]


def e820_of(page: bytes) -> list[tuple[int, int, int]]:
    return [struct.unpack_from("<QQI", page, 0x2D0 + 20 * i) for i in range(page[0x1E8])]


def written(boot: LinuxBoot, addr: int) -> bytes:
    return dict(boot.writes)[addr]


def zero_page(boot: LinuxBoot) -> bytes:
    return written(boot, layout.ZERO_PAGE_ADDR)


@pytest.fixture
def bzimage() -> bytes:
    return make_bzimage(gzip.compress(FAKE_ELF), init_size=8 * MiB, pref_address=16 * MiB)


def test_zero_page_fields(bzimage):
    boot = load_bzimage(bzimage, 256 * MiB, "console=ttyS0 quiet", initrd=b"\xAB" * 10_000, rsdp_addr=RSDP)
    page = zero_page(boot)
    assert len(page) == 4096
    assert page[0x1F1:0x26C] != bytes(0x7B)
    assert u16(page, 0x1FE) == 0xAA55 and page[0x202:0x206] == b"HdrS"
    assert u16(page, 0x206) == 0x020F
    assert u8(page, 0x210) == 0xFF                                   # type_of_loader
    assert u8(page, 0x211) & (LOADED_HIGH | CAN_USE_HEAP) == LOADED_HIGH | CAN_USE_HEAP
    assert u16(page, 0x224) != 0                                     # heap_end_ptr
    assert u16(page, 0x1FA) == 0xFFFF                                # vid_mode "normal"
    assert u32(page, 0x228) == layout.CMDLINE_ADDR                   # cmd_line_ptr
    assert u32(page, 0x0C8) == 0                                     # ext_cmd_line_ptr
    assert u32(page, 0x218) == boot.initrd_range[0]                  # ramdisk_image
    assert u32(page, 0x21C) == 10_000                                # ramdisk_size
    assert u32(page, 0x0C0) == 0 and u32(page, 0x0C4) == 0           # ext_ramdisk_*
    assert u64(page, 0x070) == RSDP                                  # acpi_rsdp_addr
    assert u8(page, 0x1EF) == 0                                      # sentinel
    assert u64(page, 0x250) == 0                                     # setup_data
    assert e820_of(page) == layout.memory_map(256 * MiB)


def test_header_fields_the_kernel_owns_are_copied_unchanged(bzimage):
    page = zero_page(load_bzimage(bzimage, 256 * MiB, ""))
    assert u32(page, 0x230) == 0x20_0000                             # kernel_alignment
    assert u32(page, 0x238) == 2047                                  # cmdline_size
    assert u64(page, 0x258) == 16 * MiB                              # pref_address
    assert u32(page, 0x260) == 8 * MiB                               # init_size


def test_no_initrd_no_rsdp(bzimage):
    page = zero_page(load_bzimage(bzimage, 256 * MiB, "x"))
    assert u32(page, 0x218) == u32(page, 0x21C) == 0
    assert u64(page, 0x070) == 0


def test_writes_and_entry_state(bzimage):
    boot = load_bzimage(bzimage, 256 * MiB, "console=ttyS0")
    protected = bzimage[4 * 512:]
    assert written(boot, layout.HIMEM_START) == protected
    assert boot.entry == layout.HIMEM_START + 0x200
    assert boot.zero_page == layout.ZERO_PAGE_ADDR
    assert written(boot, layout.CMDLINE_ADDR) == b"console=ttyS0\0"
    assert boot.cr3 == layout.PML4_ADDR
    assert boot.gdt_addr == layout.BOOT_GDT_ADDR and boot.gdt_limit == 31
    assert len(written(boot, layout.BOOT_GDT_ADDR)) == boot.gdt_limit + 1
    assert layout.PML4_ADDR in dict(boot.writes) and layout.PD_ADDR in dict(boot.writes)
    assert boot.segments["cs"]["selector"] == BOOT_CS and boot.segments["ss"]["selector"] == BOOT_DS
    assert boot.rflags & (1 << 9) == 0                               # interrupts disabled
    assert boot.cr0 & (1 << 31) and boot.cr4 & (1 << 5) and boot.efer & (1 << 10)
    # The decompressor runs at pref_address (16 MiB) and needs init_size there.
    assert boot.kernel_range == (layout.HIMEM_START, 24 * MiB)


def test_writes_do_not_overlap(bzimage):
    boot = load_bzimage(bzimage, 256 * MiB, "a" * 100, initrd=b"i" * 3 * MiB)
    spans = sorted((a, a + len(d)) for a, d in boot.writes)
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))


def test_e820_above_3gib_puts_the_rest_at_4gib(bzimage):
    boot = load_bzimage(bzimage, 6 * GiB, "")
    entries = e820_of(zero_page(boot))
    assert entries == [
        (0, 0x9FC00, layout.E820_RAM),
        (0x9FC00, 0x100000 - 0x9FC00, layout.E820_RESERVED),
        (0x100000, 3 * GiB - 0x100000, layout.E820_RAM),
        (4 * GiB, 3 * GiB, layout.E820_RAM),
    ]
    legacy_hole = 0x100000 - 0x9FC00
    assert sum(size for _, size, kind in entries if kind == layout.E820_RAM) == 6 * GiB - legacy_hole


def test_extra_reserved_ranges_are_sorted_in(bzimage):
    extra = [(0xC000_0000 - 16 * MiB, 16 * MiB, layout.E820_ACPI)]
    boot = load_bzimage(bzimage, 3 * GiB, "", reserved=extra)
    entries = e820_of(zero_page(boot))
    assert entries[-1] == extra[0] and len(entries) == 4
    with pytest.raises(ValueError, match="at most 128"):
        e820_map(256 * MiB, [(i * 4096, 4096, 2) for i in range(130)])


def test_zero_page_writes_64bit_addresses_split():
    page = build_zero_page(b"", cmdline_addr=0x1_2345_6000, e820=[(0, 4096, 1)],
                           initrd=(0x2_0000_1000, 0x3_0000_0010))
    assert u32(page, 0x228) == 0x2345_6000 and u32(page, 0x0C8) == 1
    assert u32(page, 0x218) == 0x1000 and u32(page, 0x0C0) == 2
    assert u32(page, 0x21C) == 0x10 and u32(page, 0x0C4) == 3


def test_initrd_goes_page_aligned_to_the_top_of_low_ram(bzimage):
    initrd = b"r" * 5000
    boot = load_bzimage(bzimage, 128 * MiB, "", initrd=initrd)
    start, end = boot.initrd_range
    assert start % 4096 == 0 and end == start + 5000
    assert 128 * MiB - 4096 < end <= 128 * MiB
    assert written(boot, start) == initrd


def test_initrd_respects_initrd_addr_max_and_3gib():
    limited = make_bzimage(gzip.compress(FAKE_ELF), initrd_addr_max=0x37FF_FFFF)
    start, end = load_bzimage(limited, 2 * GiB, "", initrd=b"r" * 8192).initrd_range
    assert end <= 0x3800_0000 and start == 0x3800_0000 - 8192
    big = make_bzimage(gzip.compress(FAKE_ELF), initrd_addr_max=0xFFFF_FFFF)
    start, end = load_bzimage(big, 8 * GiB, "", initrd=b"r" * 8192).initrd_range
    assert end <= layout.MMIO_HOLE_START and start == layout.MMIO_HOLE_START - 8192


def test_initrd_that_does_not_fit_is_refused(bzimage):
    with pytest.raises(ValueError, match="initrd of .* MiB does not fit"):
        load_bzimage(bzimage, 32 * MiB, "", initrd=b"r" * (9 * MiB))


def test_cmdline_longer_than_cmdline_size_is_refused():
    image = make_bzimage(gzip.compress(FAKE_ELF), cmdline_size=64)
    assert written(load_bzimage(image, 256 * MiB, "c" * 64), layout.CMDLINE_ADDR) == b"c" * 64 + b"\0"
    with pytest.raises(ValueError, match="65 bytes; this kernel accepts at most 64"):
        load_bzimage(image, 256 * MiB, "c" * 65)
    with pytest.raises(ValueError, match="NUL"):
        load_bzimage(image, 256 * MiB, "a\0b")


def test_memory_too_small_is_refused(bzimage):
    with pytest.raises(ValueError, match="guest memory too small: .* 24 MiB, the VM has 16 MiB"):
        load_bzimage(bzimage, 16 * MiB, "")


def test_not_a_bzimage_is_refused():
    with pytest.raises(KernelFormatError, match="not a bzImage"):
        load_bzimage(b"\0" * 8192, 256 * MiB, "")


# ---- ELF vmlinux ----------------------------------------------------------------------------

KVIRT = 0xFFFF_FFFF_8000_0000


def make_elf(segments: list[tuple[int, int, bytes, int]], entry: int, pvh: int | None = None) -> bytes:
    """ELF64 x86-64 with PT_LOAD (paddr, vaddr, data, memsz) segments and an optional PVH note."""
    notes = b""
    if pvh is not None:
        notes = struct.pack("<III", 4, 8, 18) + b"Xen\0" + struct.pack("<Q", pvh)
    phnum = len(segments) + (1 if notes else 0)
    offset = 64 + 56 * phnum
    phdrs, body = b"", b""
    for paddr, vaddr, data, memsz in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 5, offset + len(body), vaddr, paddr, len(data), memsz, 0x1000)
        body += data
    if notes:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, offset + len(body), 0, 0, len(notes), len(notes), 4)
        body += notes
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, entry, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    return ehdr + phdrs + body


def test_elf_loads_by_physical_address():
    text, data = b"T" * 5000, b"D" * 300
    elf = make_elf([(16 * MiB, KVIRT + 16 * MiB, text, 8192),
                    (20 * MiB, KVIRT + 20 * MiB, data, 2 * MiB)], entry=16 * MiB, pvh=16 * MiB + 0x850)
    boot = load_vmlinux_elf(elf, 256 * MiB, "console=ttyS0", initrd=b"x" * 100, rsdp_addr=RSDP)
    assert written(boot, 16 * MiB) == text and written(boot, 20 * MiB) == data
    assert boot.entry == 16 * MiB
    assert boot.kernel_range == (16 * MiB, 22 * MiB)
    page = zero_page(boot)
    assert u16(page, 0x1FE) == 0xAA55 and page[0x202:0x206] == b"HdrS"
    assert u16(page, 0x206) == 0x020F and u8(page, 0x201) == 0x6A
    assert u8(page, 0x210) == 0xFF and u8(page, 0x211) & LOADED_HIGH
    assert u32(page, 0x228) == layout.CMDLINE_ADDR and u64(page, 0x070) == RSDP
    assert u32(page, 0x21C) == 100 and u32(page, 0x218) == boot.initrd_range[0]
    assert u32(page, 0x238) == 2047 and u16(page, 0x236) & 1
    assert e820_of(page) == layout.memory_map(256 * MiB)
    assert ElfImage(elf).pvh_entry() == 16 * MiB + 0x850


def test_elf_virtual_entry_is_translated():
    elf = make_elf([(16 * MiB, KVIRT + 16 * MiB, b"T" * 64, 4096)], entry=KVIRT + 16 * MiB + 0x40)
    assert load_vmlinux_elf(elf, 64 * MiB, "").entry == 16 * MiB + 0x40
    assert ElfImage(elf).pvh_entry() is None


def test_elf_errors():
    with pytest.raises(KernelFormatError, match="not an ELF"):
        load_vmlinux_elf(b"MZ" + bytes(100), 64 * MiB, "")
    with pytest.raises(KernelFormatError, match="below 1 MiB"):
        load_vmlinux_elf(make_elf([(0x8000, 0x8000, b"x", 1)], 0x8000), 64 * MiB, "")
    with pytest.raises(ValueError, match="guest memory too small"):
        load_vmlinux_elf(make_elf([(16 * MiB, KVIRT, b"x", 64 * MiB)], 16 * MiB), 64 * MiB, "")
    truncated = make_elf([(16 * MiB, KVIRT, b"x" * 4096, 4096)], 16 * MiB)[:-10]
    with pytest.raises(KernelFormatError, match="truncated ELF"):
        load_vmlinux_elf(truncated, 64 * MiB, "")
    with pytest.raises(KernelFormatError, match="truncated ELF"):      # the file header itself
        load_vmlinux_elf(truncated[:40], 64 * MiB, "")
    with pytest.raises(ValueError, match="accepts at most 2047"):
        load_vmlinux_elf(make_elf([(16 * MiB, KVIRT, b"x", 1)], 16 * MiB), 64 * MiB, "c" * 2048)


def test_elf_setup_header_size():
    hdr = elf_setup_header(16 * MiB, 20 * MiB)
    assert len(hdr) == 0x26C - 0x1F1
    assert u32(hdr, 0x260 - 0x1F1) == 4 * MiB and u64(hdr, 0x258 - 0x1F1) == 16 * MiB


@pytest.mark.linux
def test_debian_kernel_loads_both_ways():
    from volt_spec.boot.kernel_fetch import vmlinux_path
    vmlinuz = debian_kernel_or_fail()
    boot = load_bzimage(vmlinuz.read_bytes(), 512 * MiB, "console=ttyS0", initrd=b"x" * MiB, rsdp_addr=RSDP)
    assert boot.entry == 0x100200 and boot.kernel_range[1] <= boot.initrd_range[0]
    assert u32(zero_page(boot), 0x238) >= 2047
    with pytest.raises(ValueError, match="guest memory too small"):
        load_bzimage(vmlinuz.read_bytes(), 32 * MiB, "")
    elf = load_vmlinux_elf(vmlinux_path().read_bytes(), 512 * MiB, "console=ttyS0")
    assert elf.entry == 0x100_0000
    assert all(addr >= layout.HIMEM_START for addr, _ in elf.writes if len(_) > MiB)
