"""Puts a kernel into guest memory: picks PVH or the 64-bit Linux protocol and returns the entry state.

Entry rule: an ELF with the PVH note boots by PVH; another ELF or a bzImage by the
64-bit Linux boot protocol; `--boot` forces one.
"""

from __future__ import annotations

from .. import layout
from ..boot import pvh
from ..boot.elf import ElfError, ElfImage
from .boot_plan import BootPlan
from .config import VmmConfigError

BZIMAGE_MAGIC_OFFSET = 0x202


def read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise VmmConfigError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise VmmConfigError(f"{what} {path}: is a directory") from None
    except OSError as e:
        raise VmmConfigError(f"{what} {path}: {e.strerror}") from None


def kernel_kind(data: bytes) -> str:
    """'elf-pvh', 'elf' or 'bzimage'; VmmConfigError for anything else."""
    if data[:4] == b"\x7fELF":
        try:
            image = ElfImage(data)
        except ElfError as e:
            raise VmmConfigError(f"kernel: {e}") from None
        return "elf-pvh" if image.pvh_entry() is not None else "elf"
    if data[BZIMAGE_MAGIC_OFFSET:BZIMAGE_MAGIC_OFFSET + 4] == b"HdrS":
        return "bzimage"
    raise VmmConfigError("kernel: not an ELF file or a bzImage")


def plan_boot(kernel: bytes, initrd: bytes | None, cmdline: str, mem_size: int, rsdp_addr: int,
              force: str | None) -> BootPlan:
    kind = kernel_kind(kernel)
    protocol = force or ("pvh" if kind == "elf-pvh" else "linux64")
    if protocol == "pvh":
        if kind != "elf-pvh":
            raise VmmConfigError("kernel: --boot pvh needs an ELF kernel with the PVH "
                                 "(XEN_ELFNOTE_PHYS32_ENTRY) note" +
                                 ("; for a bzImage use --boot linux64" if kind == "bzimage" else ""))
        return _plan_pvh(ElfImage(kernel), initrd, cmdline, mem_size, rsdp_addr)
    from . import linux_plan
    return linux_plan.plan_linux64(kernel, kind, initrd, cmdline, mem_size, rsdp_addr)


def _cmdline_bytes(cmdline: str) -> bytes:
    raw = cmdline.encode() + b"\0"
    if len(raw) > layout.CMDLINE_MAX:
        raise VmmConfigError(f"--cmdline is {len(raw)} bytes; the limit is {layout.CMDLINE_MAX}")
    return raw


def place_initrd(size: int, mem_size: int, kernel_end: int, limit: int = layout.MMIO_HOLE_START) -> int:
    """Page-aligned address for an initrd at the top of low RAM, above the kernel."""
    low_end = min(mem_size, layout.MMIO_HOLE_START, limit)
    addr = (low_end - size) & ~(layout.PAGE_SIZE - 1)
    if addr < kernel_end:
        raise VmmConfigError(f"initrd of {size >> 20} MiB does not fit in guest memory beside the "
                             f"kernel; give the VM more --memory")
    return addr


def _plan_pvh(image: ElfImage, initrd: bytes | None, cmdline: str, mem_size: int,
              rsdp_addr: int) -> BootPlan:
    _, hi = image.phys_span()
    low_end = min(mem_size, layout.MMIO_HOLE_START)
    for seg in image.segments:
        start, end = seg.paddr, seg.paddr + seg.memsz
        in_low = layout.GUEST_FREE_LOW <= start and end <= layout.PML4_ADDR
        in_high = layout.HIMEM_START <= start and end <= low_end
        if not (in_low or in_high):
            raise VmmConfigError(f"kernel: segment {start:#x}-{end:#x} does not fit in guest RAM "
                                 f"(usable: {layout.GUEST_FREE_LOW:#x}-{layout.PML4_ADDR:#x} and "
                                 f"{layout.HIMEM_START:#x}-{low_end:#x})")
    writes = image.load_writes()
    writes.append((layout.CMDLINE_ADDR, _cmdline_bytes(cmdline)))
    initrd_range = None
    if initrd:
        addr = place_initrd(len(initrd), mem_size, hi)
        writes.append((addr, initrd))
        initrd_range = (addr, len(initrd))
    writes += pvh.start_info_writes(mem_size, layout.CMDLINE_ADDR, rsdp_addr, initrd_range)
    regs = {"rip": image.pvh_entry(), "rbx": layout.PVH_INFO_ADDR, "rflags": 0x2}
    return BootPlan("pvh", writes, regs, pvh.entry_sregs())
