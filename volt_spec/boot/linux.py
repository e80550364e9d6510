"""Load a Linux kernel for the x86 64-bit boot protocol: what to write where, and the entry state.

Follows Linux `Documentation/arch/x86/boot.rst` ("64-bit Boot Protocol") and
`zero-page.rst`: the loader builds `struct boot_params` (the "zero page"),
copies the kernel's setup header into it, fills in the loader fields
(command line, initrd, e820 map, RSDP), loads the kernel, and jumps to the
64-bit entry with paging on, flat __BOOT_CS/__BOOT_DS and %rsi = zero page.

Nothing here touches KVM: the result is a `LinuxBoot` the VMM copies into
guest RAM and turns into register state.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable

from volt_spec.boot.bzimage import (
    CAN_USE_HEAP,
    HDRS_MAGIC,
    HEADER_FIELDS,
    JUMP_LENGTH_OFFSET,
    LOADED_HIGH,
    SETUP_HEADER_OFFSET,
    SETUP_HEADER_SIZE,
    XLF_KERNEL_64,
    KernelFormatError,
    parse_bzimage,
)
from volt_spec.layout import (
    BOOT_GDT_ADDR,
    BOOT_STACK_TOP,
    CMDLINE_ADDR,
    CMDLINE_MAX,
    HIMEM_START,
    MiB,
    PAGE_SIZE,
    PML4_ADDR,
    ZERO_PAGE_ADDR,
    memory_map,
    ram_ranges,
)
from volt_spec.boot.pagetables import (
    BOOT_GDT_64,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    boot_gdt_write,
    boot_segments,
    gdt_limit,
    identity_map_writes,
)
from volt_spec.boot.elf import EM_X86_64, ElfError, ElfImage

ZERO_PAGE_SIZE = 4096
# struct boot_params offsets outside the setup header (bootparam.h).
BP_ACPI_RSDP_ADDR = 0x070
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_SENTINEL = 0x1EF            # must stay 0, or the kernel zeroes "unset" fields
BP_E820_TABLE = 0x2D0
E820_ENTRY = struct.Struct("<QQI")   # struct boot_e820_entry: addr, size, type
E820_MAX_ENTRIES_ZEROPAGE = 128

STARTUP_64_OFFSET = 0x200      # 64-bit entry: protected-mode load address + 0x200
LOADER_TYPE_UNDEFINED = 0xFF   # type_of_loader for a loader without an assigned id
VID_MODE_NORMAL = 0xFFFF       # vid_mode "normal" (obligatory field)
HEAP_END = 0xE000              # boot.rst sample: real-mode heap end; heap_end_ptr = it - 0x200
REAL_MODE_SETUP_START = 0x200

# The setup header synthesized for an ELF vmlinux (there is none in the file).
ELF_PROTOCOL_VERSION = 0x020F
ELF_CMDLINE_SIZE = 2048        # x86 COMMAND_LINE_SIZE: copy_bootdata() copies at most this
ELF_INITRD_ADDR_MAX = 0x7FFF_FFFF
ELF_KERNEL_ALIGNMENT = 2 * MiB  # CONFIG_PHYSICAL_ALIGN default
JUMP_OPCODE = 0xEB             # short jmp; its offset byte is the header length past 0x202


@dataclass(frozen=True)
class LinuxBoot:
    """Everything the VMM needs to start a loaded Linux kernel at its 64-bit entry."""

    writes: list[tuple[int, bytes]]        # (guest-physical address, bytes) to copy into RAM
    entry: int                             # rip
    zero_page: int                         # rsi
    cr3: int = PML4_ADDR
    gdt_addr: int = BOOT_GDT_ADDR
    gdt_limit: int = gdt_limit(BOOT_GDT_64)
    # kvm_segment fields for cs, ds, es, fs, gs, ss, tr (pagetables.gdt_entry_to_segment)
    segments: dict[str, dict[str, int]] = field(default_factory=boot_segments)
    rsp: int = BOOT_STACK_TOP
    rflags: int = 0x2              # bit 1 is reserved-set; IF clear: interrupts disabled
    cr0: int = CR0_PE | CR0_PG
    cr4: int = CR4_PAE
    efer: int = EFER_LME | EFER_LMA
    kernel_range: tuple[int, int] = (0, 0)            # [start, end) the kernel may use while booting
    initrd_range: tuple[int, int] | None = None       # [start, end)
    e820: tuple[tuple[int, int, int], ...] = ()


def e820_map(
    mem_size: int, reserved: Iterable[tuple[int, int, int]] = (),
) -> list[tuple[int, int, int]]:
    """layout.memory_map plus extra (start, size, type) ranges, sorted by start.

    Overlaps are left to the kernel: its e820 sanitizer lets the larger type
    number win, so a reserved range carved out of RAM stays reserved.
    """
    entries = sorted([*memory_map(mem_size), *reserved])
    if len(entries) > E820_MAX_ENTRIES_ZEROPAGE:
        raise ValueError(
            f"{len(entries)} e820 entries: the zero page holds at most {E820_MAX_ENTRIES_ZEROPAGE}")
    return entries


def _put(page: bytearray, name: str, value: int) -> None:
    offset, fmt = HEADER_FIELDS[name]
    struct.pack_into("<" + fmt, page, offset, value)


def _get(page: bytes, name: str) -> int:
    offset, fmt = HEADER_FIELDS[name]
    return struct.unpack_from("<" + fmt, page, offset)[0]


def _header_field(setup_header: bytes, name: str) -> int:
    """A field of setup-header bytes that start at 0x1f1."""
    offset, fmt = HEADER_FIELDS[name]
    return struct.unpack_from("<" + fmt, setup_header, offset - SETUP_HEADER_OFFSET)[0]


def build_zero_page(
    setup_header: bytes,
    *,
    cmdline_addr: int,
    e820: list[tuple[int, int, int]],
    initrd: tuple[int, int] | None = None,
    rsdp_addr: int | None = None,
) -> bytes:
    """A zeroed struct boot_params with the kernel's setup header and the loader's fields."""
    page = bytearray(ZERO_PAGE_SIZE)
    page[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + len(setup_header)] = setup_header
    _put(page, "vid_mode", VID_MODE_NORMAL)
    _put(page, "type_of_loader", LOADER_TYPE_UNDEFINED)
    _put(page, "loadflags", _get(page, "loadflags") | LOADED_HIGH | CAN_USE_HEAP)
    _put(page, "heap_end_ptr", HEAP_END - REAL_MODE_SETUP_START)
    _put(page, "cmd_line_ptr", cmdline_addr & 0xFFFF_FFFF)
    struct.pack_into("<I", page, BP_EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    if initrd is not None:
        addr, size = initrd
        _put(page, "ramdisk_image", addr & 0xFFFF_FFFF)
        _put(page, "ramdisk_size", size & 0xFFFF_FFFF)
        struct.pack_into("<I", page, BP_EXT_RAMDISK_IMAGE, addr >> 32)
        struct.pack_into("<I", page, BP_EXT_RAMDISK_SIZE, size >> 32)
    if rsdp_addr is not None:
        struct.pack_into("<Q", page, BP_ACPI_RSDP_ADDR, rsdp_addr)
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise ValueError(
            f"{len(e820)} e820 entries: the zero page holds at most {E820_MAX_ENTRIES_ZEROPAGE}")
    page[BP_E820_ENTRIES] = len(e820)
    for i, (start, size, kind) in enumerate(e820):
        E820_ENTRY.pack_into(page, BP_E820_TABLE + i * E820_ENTRY.size, start, size, kind)
    return bytes(page)


def elf_setup_header(kernel_start: int, kernel_end: int) -> bytes:
    """A protocol-2.15 setup header for an ELF vmlinux, which carries none.

    Entered at startup_64, Linux never runs its setup code; from hdr it reads
    (head64.c copy_bootdata, setup.c setup_arch, e820.c): cmd_line_ptr,
    type_of_loader (nonzero, or the initrd is ignored), ramdisk_image/size,
    loadflags (KASLR_FLAG), root_dev/root_flags, hardware_subarch and
    setup_data. The magic, version and size fields are there so tools that
    read boot_params (kexec, /sys/kernel/boot_params) see a coherent header.
    """
    page = bytearray(ZERO_PAGE_SIZE)
    header_len = HEADER_FIELDS["kernel_info_offset"][0] + 4 - (JUMP_LENGTH_OFFSET + 1)
    _put(page, "boot_flag", 0xAA55)
    _put(page, "jump", JUMP_OPCODE | header_len << 8)
    page[HEADER_FIELDS["header"][0]:HEADER_FIELDS["header"][0] + 4] = HDRS_MAGIC
    _put(page, "version", ELF_PROTOCOL_VERSION)
    _put(page, "loadflags", LOADED_HIGH)
    _put(page, "code32_start", kernel_start)
    _put(page, "initrd_addr_max", ELF_INITRD_ADDR_MAX)
    _put(page, "kernel_alignment", ELF_KERNEL_ALIGNMENT)
    _put(page, "xloadflags", XLF_KERNEL_64)
    _put(page, "cmdline_size", ELF_CMDLINE_SIZE - 1)
    _put(page, "pref_address", kernel_start)
    _put(page, "init_size", kernel_end - kernel_start)
    return bytes(page[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + SETUP_HEADER_SIZE])


def _low_ram_end(mem_size: int) -> int:
    start, size = ram_ranges(mem_size)[0]
    return start + size


def _cmdline_bytes(cmdline: str, cmdline_size: int) -> bytes:
    raw = cmdline.encode()
    if b"\0" in raw:
        raise ValueError("kernel command line contains a NUL byte")
    limit = min(cmdline_size, CMDLINE_MAX - 1)
    if len(raw) > limit:
        raise ValueError(f"kernel command line is {len(raw)} bytes; this kernel accepts at most {limit}")
    return raw + b"\0"


def _place_initrd(size: int, kernel_end: int, initrd_addr_max: int, low_end: int) -> int:
    """Highest page-aligned address for the initrd below min(initrd_addr_max, low RAM end)."""
    ceiling = min(initrd_addr_max + 1, low_end)
    addr = (ceiling - size) & ~(PAGE_SIZE - 1)
    if size > ceiling or addr < kernel_end:
        raise ValueError(
            f"initrd of {size / MiB:.1f} MiB does not fit between the kernel end {kernel_end:#x} "
            f"and {ceiling:#x}: give the VM more memory")
    return addr


def _finish(
    *,
    kernel_writes: list[tuple[int, bytes]],
    kernel_range: tuple[int, int],
    entry: int,
    header: bytes,
    mem_size: int,
    cmdline: str,
    initrd: bytes | None,
    rsdp_addr: int | None,
    reserved: Iterable[tuple[int, int, int]],
) -> LinuxBoot:
    """Common tail of both loaders: command line, initrd, e820, zero page, tables."""
    low_end = _low_ram_end(mem_size)
    if kernel_range[1] > low_end:
        raise ValueError(
            f"guest memory too small: the kernel needs RAM up to {kernel_range[1] / MiB:.0f} MiB, "
            f"the VM has {mem_size / MiB:.0f} MiB")
    cmd = _cmdline_bytes(cmdline, _header_field(header, "cmdline_size"))
    initrd_range = None
    writes = [*identity_map_writes(), boot_gdt_write(BOOT_GDT_64), (CMDLINE_ADDR, cmd), *kernel_writes]
    if initrd:
        addr_max = _header_field(header, "initrd_addr_max")
        addr = _place_initrd(len(initrd), kernel_range[1], addr_max, low_end)
        initrd_range = (addr, addr + len(initrd))
        writes.append((addr, initrd))
    e820 = e820_map(mem_size, reserved)
    zero_page = build_zero_page(
        header, cmdline_addr=CMDLINE_ADDR, e820=e820, rsdp_addr=rsdp_addr,
        initrd=None if initrd_range is None else (initrd_range[0], len(initrd or b"")))
    writes.append((ZERO_PAGE_ADDR, zero_page))
    return LinuxBoot(writes=writes, entry=entry, zero_page=ZERO_PAGE_ADDR,
                     kernel_range=kernel_range, initrd_range=initrd_range, e820=tuple(e820))


def bzimage_run_range(load_addr: int, pm_size: int, kernel_alignment: int, relocatable: bool,
                      pref_address: int, init_size: int) -> tuple[int, int]:
    """[start, end) of RAM a bzImage uses while it decompresses itself.

    arch/x86/boot/compressed/head_64.S: a relocatable kernel decompresses at
    its load address rounded up to kernel_alignment, but not below
    LOAD_PHYSICAL_ADDR (= pref_address); a fixed one at LOAD_PHYSICAL_ADDR.
    It needs init_size bytes from there.
    """
    run = pref_address
    if relocatable:
        aligned = (load_addr + kernel_alignment - 1) & ~(kernel_alignment - 1)
        run = max(aligned, pref_address)
    return (load_addr, max(load_addr + pm_size, run + init_size))


def load_bzimage(
    data: bytes,
    mem_size: int,
    cmdline: str,
    initrd: bytes | None = None,
    rsdp_addr: int | None = None,
    reserved: Iterable[tuple[int, int, int]] = (),
) -> LinuxBoot:
    """Place a bzImage's protected-mode kernel at 1 MiB and enter it at startup_64."""
    image = parse_bzimage(data)
    hdr = image.header
    kernel_range = bzimage_run_range(HIMEM_START, len(image.protected_mode), hdr.kernel_alignment,
                                     bool(hdr.relocatable_kernel), hdr.pref_address, hdr.init_size)
    return _finish(
        kernel_writes=[(HIMEM_START, image.protected_mode)], kernel_range=kernel_range,
        entry=HIMEM_START + STARTUP_64_OFFSET, header=image.setup_header_bytes,
        mem_size=mem_size, cmdline=cmdline, initrd=initrd, rsdp_addr=rsdp_addr, reserved=reserved)


def load_vmlinux_elf(
    elf_bytes: bytes,
    mem_size: int,
    cmdline: str,
    initrd: bytes | None = None,
    rsdp_addr: int | None = None,
    reserved: Iterable[tuple[int, int, int]] = (),
) -> LinuxBoot:
    """Load an uncompressed vmlinux by its PT_LOAD physical addresses; enter at startup_64.

    x86-64 vmlinux links with ENTRY(phys_startup_64), so e_entry is already
    the physical startup_64 (0x1000000 in Debian's kernel). Only p_filesz
    bytes are written: fresh guest RAM is zero, and Linux clears its own .bss.
    """
    kernel = _parse_vmlinux(elf_bytes)
    low_end = _low_ram_end(mem_size)
    start, end = kernel.phys_span()
    if start < HIMEM_START:
        raise KernelFormatError(
            f"ELF segment at {start:#x} would overwrite the boot structures below 1 MiB")
    if end > low_end:
        raise ValueError(
            f"guest memory too small: the kernel needs RAM up to {end / MiB:.0f} MiB, "
            f"the VM has {mem_size / MiB:.0f} MiB")
    return _finish(
        kernel_writes=kernel.load_writes(), kernel_range=(start, end), entry=_phys_entry(kernel),
        header=elf_setup_header(start, end), mem_size=mem_size, cmdline=cmdline,
        initrd=initrd, rsdp_addr=rsdp_addr, reserved=reserved)


def _parse_vmlinux(data: bytes) -> ElfImage:
    """An ELF64 x86-64 kernel; a bad one is a KernelFormatError, like a bad bzImage."""
    try:
        kernel = ElfImage(data)
    except ElfError as e:
        raise KernelFormatError(str(e)) from None
    if not kernel.is64 or kernel.machine != EM_X86_64:
        raise KernelFormatError("not an x86-64 ELF64 little-endian kernel")
    return kernel


def _phys_entry(kernel: ElfImage) -> int:
    try:
        return kernel.phys_entry()
    except ElfError as e:
        raise KernelFormatError(str(e)) from None
