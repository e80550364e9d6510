"""Just enough ELF to load a kernel: PT_LOAD segments, the entry, and the PVH note."""

from __future__ import annotations

import struct

ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18


class ElfError(ValueError):
    """Not a loadable ELF kernel."""


class Segment:
    __slots__ = ("paddr", "offset", "filesz", "memsz")

    def __init__(self, paddr: int, offset: int, filesz: int, memsz: int) -> None:
        self.paddr, self.offset, self.filesz, self.memsz = paddr, offset, filesz, memsz


class ElfImage:
    """A parsed ELF32/ELF64 x86 executable."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != ELF_MAGIC:
            raise ElfError("not an ELF file")
        self.data = data
        self.is64 = data[4] == 2
        if data[4] not in (1, 2) or data[5] != 1:
            raise ElfError("not a little-endian ELF32/ELF64 file")
        machine = struct.unpack_from("<H", data, 18)[0]
        if machine not in (3, 62):
            raise ElfError(f"ELF machine {machine} is not x86")
        if self.is64:
            self.entry, phoff = struct.unpack_from("<QQ", data, 24)
            phentsize, phnum = struct.unpack_from("<HH", data, 54)
        else:
            self.entry, phoff = struct.unpack_from("<II", data, 24)
            phentsize, phnum = struct.unpack_from("<HH", data, 42)
        if phoff + phentsize * phnum > len(data) or phnum == 0:
            raise ElfError("ELF program headers are truncated or missing")
        self.segments: list[Segment] = []
        self.notes: list[tuple[int, int]] = []          # (offset, size) of PT_NOTE segments
        for i in range(phnum):
            off = phoff + i * phentsize
            if self.is64:
                p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
                    "<IIQQQQQ", data, off)
            else:
                p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
                    "<IIIIII", data, off)
            if p_offset + p_filesz > len(data):
                raise ElfError(f"ELF segment {i} extends past the end of the file")
            if p_type == PT_LOAD and p_memsz:
                if p_filesz > p_memsz:
                    raise ElfError(f"ELF segment {i} has filesz > memsz")
                self.segments.append(Segment(p_paddr, p_offset, p_filesz, p_memsz))
            elif p_type == PT_NOTE:
                self.notes.append((p_offset, p_filesz))
        if not self.segments:
            raise ElfError("ELF file has no loadable segments")

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

    def pvh_entry(self) -> int | None:
        """The XEN_ELFNOTE_PHYS32_ENTRY address, or None when the kernel has no PVH note."""
        for name, ntype, desc in self.iter_notes():
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and len(desc) >= 4:
                return int.from_bytes(desc[:8] if len(desc) >= 8 else desc[:4], "little") & 0xFFFFFFFF
        return None

    def load_writes(self) -> list[tuple[int, bytes]]:
        """(guest-physical address, bytes) for every loadable segment's file part.

        The bss (memsz beyond filesz) is not written: a new VM's RAM is fresh anonymous
        memory and already zero, and writing zeros would only fault its pages in."""
        return [(seg.paddr, self.data[seg.offset:seg.offset + seg.filesz]) for seg in self.segments
                if seg.filesz]

    def phys_span(self) -> tuple[int, int]:
        lo = min(s.paddr for s in self.segments)
        hi = max(s.paddr + s.memsz for s in self.segments)
        return lo, hi
