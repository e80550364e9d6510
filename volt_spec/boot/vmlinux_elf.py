"""Read the parts of an x86-64 ELF kernel a loader needs: PT_LOAD segments, entry, notes.

Only ELF64 little-endian x86-64 executables are accepted. Field layouts are
from the System V gABI (`Elf64_Ehdr`, `Elf64_Phdr`, `Elf64_Nhdr`); the PVH
entry note is Xen's `XEN_ELFNOTE_PHYS32_ENTRY` (include/xen/interface/elfnote.h).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from volt_spec.boot.bzimage import ELF_MAGIC, KernelFormatError

ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")     # Elf64_Ehdr
_PHDR = struct.Struct("<IIQQQQQQ")             # Elf64_Phdr
_NHDR = struct.Struct("<III")                  # Elf64_Nhdr: namesz, descsz, type

XEN_NOTE_NAME = b"Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18                  # PVH: 32-bit physical entry point
# x86-64 kernels link at __START_KERNEL_map; e_entry / vaddrs above it are virtual.
KERNEL_VIRT_BASE = 0xFFFF_FFFF_8000_0000


@dataclass(frozen=True)
class LoadSegment:
    """One PT_LOAD program header, with the bytes it copies from the file."""

    paddr: int
    vaddr: int
    memsz: int
    data: bytes                                # p_filesz bytes; the rest up to memsz is zero


@dataclass(frozen=True)
class ElfKernel:
    """An ELF kernel reduced to what a loader places and jumps to."""

    entry: int                                 # e_entry as linked (physical for x86 vmlinux)
    segments: tuple[LoadSegment, ...]
    notes: tuple[tuple[bytes, int, bytes], ...]   # (name without NUL, type, desc)

    @property
    def phys_entry(self) -> int:
        """e_entry as a guest-physical address (translated through its segment if virtual)."""
        if self.entry < KERNEL_VIRT_BASE:
            return self.entry
        for seg in self.segments:
            if seg.vaddr <= self.entry < seg.vaddr + seg.memsz:
                return self.entry - seg.vaddr + seg.paddr
        raise KernelFormatError(f"ELF entry {self.entry:#x} lies in no PT_LOAD segment")

    @property
    def phys_end(self) -> int:
        """First byte after the highest loaded segment (including its .bss)."""
        return max(seg.paddr + seg.memsz for seg in self.segments)

    def note(self, name: bytes, note_type: int) -> bytes | None:
        for n_name, n_type, desc in self.notes:
            if n_name == name and n_type == note_type:
                return desc
        return None

    @property
    def pvh_entry(self) -> int | None:
        """The PVH 32-bit entry (Xen note type 18), if the kernel has one."""
        desc = self.note(XEN_NOTE_NAME, XEN_ELFNOTE_PHYS32_ENTRY)
        if desc is None:
            return None
        return int.from_bytes(desc[:8], "little")


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _parse_notes(blob: bytes) -> list[tuple[bytes, int, bytes]]:
    notes = []
    pos = 0
    while pos + _NHDR.size <= len(blob):
        namesz, descsz, n_type = _NHDR.unpack_from(blob, pos)
        pos += _NHDR.size
        name = blob[pos:pos + namesz].rstrip(b"\0")
        pos += _align4(namesz)
        desc = blob[pos:pos + descsz]
        pos += _align4(descsz)
        notes.append((name, n_type, desc))
    return notes


def parse_elf_kernel(data: bytes) -> ElfKernel:
    """Validate an ELF64 x86-64 kernel and list its loadable segments and notes."""
    if len(data) < _EHDR.size or not data.startswith(ELF_MAGIC):
        raise KernelFormatError("not an ELF file")
    ident, _type, machine, _ver, entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum, *_ = \
        _EHDR.unpack_from(data)
    if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB or machine != EM_X86_64:
        raise KernelFormatError("not an x86-64 ELF64 little-endian kernel")
    if phentsize != _PHDR.size or phoff + phnum * phentsize > len(data):
        raise KernelFormatError("truncated ELF: program headers run past the end of the file")
    segments: list[LoadSegment] = []
    notes: list[tuple[bytes, int, bytes]] = []
    for i in range(phnum):
        p_type, _pflags, offset, vaddr, paddr, filesz, memsz, _align = \
            _PHDR.unpack_from(data, phoff + i * phentsize)
        if offset + filesz > len(data):
            raise KernelFormatError(f"truncated ELF: segment {i} runs past the end of the file")
        if p_type == PT_LOAD:
            segments.append(LoadSegment(paddr, vaddr, memsz, data[offset:offset + filesz]))
        elif p_type == PT_NOTE:
            notes.extend(_parse_notes(data[offset:offset + filesz]))
    if not segments:
        raise KernelFormatError("ELF has no PT_LOAD segments")
    return ElfKernel(entry, tuple(segments), tuple(notes))
