"""Just enough ELF to load a kernel: PT_LOAD segments, the entry, and the notes (PVH's among them).

One parser for both boot paths: the PVH loader (vmm/loader.py, on volt-vmm's lean boot path, so
only `struct` here) and the Linux 64-bit protocol's vmlinux (boot/linux.py). Field layouts are
from the System V gABI (`Elf32/64_Ehdr`, `_Phdr`, `_Nhdr`); the PVH entry note is Xen's
`XEN_ELFNOTE_PHYS32_ENTRY` (include/xen/interface/elfnote.h).
"""

from __future__ import annotations

import struct

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
EM_386, EM_X86_64 = 3, 62
PT_LOAD = 1
PT_NOTE = 4
XEN_NOTE_NAME = b"Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18                  # PVH: 32-bit physical entry point
# x86-64 kernels link at __START_KERNEL_map; an e_entry above it is virtual.
KERNEL_VIRT_BASE = 0xFFFF_FFFF_8000_0000

# Per class: (ehdr size, e_entry/e_phoff format and offset, e_phentsize/e_phnum offset, phdr format).
_CLASS = {
    ELFCLASS32: (52, "<II", 24, 42, struct.Struct("<IIIIII")),    # type offset vaddr paddr filesz memsz
    ELFCLASS64: (64, "<QQ", 24, 54, struct.Struct("<IIQQQQQ")),   # type flags offset vaddr paddr filesz memsz
}


class ElfError(ValueError):
    """Not a loadable ELF kernel."""


class Segment:
    """One PT_LOAD program header with a memory size: where its file bytes go."""

    __slots__ = ("paddr", "vaddr", "offset", "filesz", "memsz")

    def __init__(self, paddr: int, vaddr: int, offset: int, filesz: int, memsz: int) -> None:
        self.paddr, self.vaddr, self.offset, self.filesz, self.memsz = paddr, vaddr, offset, filesz, memsz


def _program_headers(data: bytes, is64: bool):
    """(index, type, offset, vaddr, paddr, filesz, memsz) of every program header."""
    ehdr_size, head_fmt, head_off, count_off, phdr = _CLASS[ELFCLASS64 if is64 else ELFCLASS32]
    if len(data) < ehdr_size:
        raise ElfError("truncated ELF: the file header is cut short")
    _entry, phoff = struct.unpack_from(head_fmt, data, head_off)
    phentsize, phnum = struct.unpack_from("<HH", data, count_off)
    if phnum == 0 or phentsize < phdr.size or phoff + phentsize * phnum > len(data):
        raise ElfError("truncated ELF: program headers run past the end of the file or are missing")
    for i in range(phnum):
        fields = phdr.unpack_from(data, phoff + i * phentsize)
        if is64:
            p_type, _flags, p_offset, vaddr, paddr, filesz, memsz = fields
        else:
            p_type, p_offset, vaddr, paddr, filesz, memsz = fields
        yield i, p_type, p_offset, vaddr, paddr, filesz, memsz


class ElfImage:
    """A parsed little-endian ELF32/ELF64 x86 executable."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != ELF_MAGIC:
            raise ElfError("not an ELF file")
        if len(data) < 20 or data[4] not in (ELFCLASS32, ELFCLASS64) or data[5] != ELFDATA2LSB:
            raise ElfError("not a little-endian ELF32/ELF64 file")
        self.data = data
        self.is64 = data[4] == ELFCLASS64
        self.machine = struct.unpack_from("<H", data, 18)[0]
        if self.machine not in (EM_386, EM_X86_64):
            raise ElfError(f"ELF machine {self.machine} is not x86")
        self.segments: list[Segment] = []
        self.notes: list[tuple[int, int]] = []          # (offset, size) of PT_NOTE segments
        for i, p_type, p_offset, vaddr, paddr, filesz, memsz in _program_headers(data, self.is64):
            if p_offset + filesz > len(data):
                raise ElfError(f"truncated ELF: segment {i} runs past the end of the file")
            if p_type == PT_LOAD and memsz:
                if filesz > memsz:
                    raise ElfError(f"ELF segment {i} has filesz > memsz")
                self.segments.append(Segment(paddr, vaddr, p_offset, filesz, memsz))
            elif p_type == PT_NOTE:
                self.notes.append((p_offset, filesz))
        if not self.segments:
            raise ElfError("ELF file has no loadable segments")
        self.entry = struct.unpack_from(_CLASS[data[4]][1], data, 24)[0]

    def iter_notes(self):
        """(name, type, desc) for every note in every PT_NOTE segment."""
        for start, size in self.notes:
            pos, end = start, start + size
            while pos + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", self.data, pos)
                pos += 12
                name = self.data[pos:pos + namesz].rstrip(b"\0")
                pos += (namesz + 3) & ~3
                desc = self.data[pos:pos + descsz]
                pos += (descsz + 3) & ~3
                yield name, ntype, desc

    def note(self, name: bytes, note_type: int) -> bytes | None:
        """The first note's desc with this name and type, or None."""
        for n_name, n_type, desc in self.iter_notes():
            if n_name == name and n_type == note_type:
                return desc
        return None

    def pvh_entry(self) -> int | None:
        """The XEN_ELFNOTE_PHYS32_ENTRY address, or None when the kernel has no PVH note."""
        desc = self.note(XEN_NOTE_NAME, XEN_ELFNOTE_PHYS32_ENTRY)
        if desc is None or len(desc) < 4:
            return None
        return int.from_bytes(desc[:8], "little") & 0xFFFFFFFF

    def phys_entry(self) -> int:
        """e_entry as a guest-physical address (through its segment when it is a kernel-virtual one)."""
        if self.entry < KERNEL_VIRT_BASE:
            return self.entry
        for seg in self.segments:
            if seg.vaddr <= self.entry < seg.vaddr + seg.memsz:
                return self.entry - seg.vaddr + seg.paddr
        raise ElfError(f"ELF entry {self.entry:#x} lies in no PT_LOAD segment")

    def load_writes(self) -> list[tuple[int, bytes]]:
        """(guest-physical address, bytes) for every loadable segment's file part.

        The bss (memsz beyond filesz) is not written: a new VM's RAM is fresh anonymous
        memory and already zero, and writing zeros would only fault its pages in."""
        return [(seg.paddr, self.data[seg.offset:seg.offset + seg.filesz]) for seg in self.segments
                if seg.filesz]

    def phys_span(self) -> tuple[int, int]:
        """[lowest, highest) guest-physical byte the segments occupy, bss included."""
        lo = min(s.paddr for s in self.segments)
        hi = max(s.paddr + s.memsz for s in self.segments)
        return lo, hi
