"""BootPlan for the 64-bit Linux boot protocol (bzImage or uncompressed ELF vmlinux)."""

from __future__ import annotations

from .config import VmmConfigError
from .boot_plan import BootPlan


def plan_linux64(kernel: bytes, kind: str, initrd: bytes | None, cmdline: str, mem_size: int,
                 rsdp_addr: int) -> BootPlan:
    from ..boot import linux
    from ..boot.bzimage import KernelFormatError
    try:
        if kind == "bzimage":
            lb = linux.load_bzimage(kernel, mem_size, cmdline, initrd, rsdp_addr)
        else:
            lb = linux.load_vmlinux_elf(kernel, mem_size, cmdline, initrd, rsdp_addr)
    except (KernelFormatError, ValueError) as e:
        raise VmmConfigError(f"kernel: {e}") from None
    sregs: dict[str, object] = dict(lb.segments)
    sregs.update(gdt=(lb.gdt_addr, lb.gdt_limit), idt=(0, 0), cr0=lb.cr0 | 0x10, cr3=lb.cr3,
                 cr4=lb.cr4, efer=lb.efer)
    regs = {"rip": lb.entry, "rsi": lb.zero_page, "rsp": lb.rsp, "rflags": lb.rflags}
    return BootPlan("linux64", lb.writes, regs, sregs)
