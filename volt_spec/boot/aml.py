"""A small ACPI Machine Language (AML) encoder for the DSDT we hand the guest.

Only the encodings a microVM's DSDT needs: names, integers, strings, EISA ids,
Name/Package/Buffer/Scope/Device, and the resource descriptors a `_CRS`
ResourceTemplate is made of. Every builder returns `bytes`, so terms compose
by concatenation. References are to the ACPI 6.5 specification, chapter 20
("ACPI Machine Language Specification") and section 6.4 ("Resource Data Types").
"""

from __future__ import annotations

import struct

# Boot path: `collections.abc` only for type checkers (no `typing` import either).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# Data object and namespace opcodes (ACPI 6.5, 20.2.3 / 20.2.5).
ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
NOTIFY_OP = 0x86
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82                  # follows EXT_OP_PREFIX

# Name string prefixes (20.2.2).
ROOT_CHAR = 0x5C                  # '\'
PARENT_PREFIX_CHAR = 0x5E         # '^'
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
NULL_NAME = 0x00
NAME_SEG_LEN = 4

# PkgLength (20.2.4): one lead byte holds 6 bits; with 1-3 follow bytes the lead
# byte keeps 4 bits and each follow byte adds 8.
PKG_LENGTH_1BYTE_MAX = 0x3F
PKG_LENGTH_MAX = (1 << 28) - 1

MAX_UINT64 = (1 << 64) - 1

# Small resource items: tag byte = type << 3 | length (6.4.2).
SMALL_IRQ_NO_FLAGS_TAG = 0x22     # IRQ descriptor, 2 bytes: mask only
SMALL_IO_TAG = 0x47               # I/O port descriptor, 7 bytes
SMALL_END_TAG = 0x79              # End tag, 1 byte: checksum
IO_DECODE16 = 0x01                # info bit 0: full 16-bit decode
# Large resource items: tag byte, then a 16-bit length (6.4.3).
LARGE_MEMORY32_FIXED_TAG = 0x86
LARGE_EXTENDED_IRQ_TAG = 0x89
MEMORY32_READ_WRITE = 0x01
# Extended interrupt descriptor flag bits (6.4.3.6).
EXT_IRQ_CONSUMER = 1 << 0
EXT_IRQ_EDGE = 1 << 1
EXT_IRQ_ACTIVE_LOW = 1 << 2
EXT_IRQ_SHARED = 1 << 3
EXT_IRQ_WAKE = 1 << 4
ISA_IRQ_COUNT = 16


def pkg_length(value: int) -> bytes:
    """Encode a PkgLength whose value already counts the encoding's own bytes."""
    if not 0 <= value <= PKG_LENGTH_MAX:
        raise ValueError(f"PkgLength {value} out of range")
    if value <= PKG_LENGTH_1BYTE_MAX:
        return bytes([value])
    follow = 1 if value < 1 << 12 else 2 if value < 1 << 20 else 3
    lead = (follow << 6) | (value & 0x0F)
    return bytes([lead]) + (value >> 4).to_bytes(follow, "little")


def pkg(payload: bytes) -> bytes:
    """Prefix `payload` with the PkgLength that covers it and itself."""
    for size in range(1, 5):
        total = len(payload) + size
        encoded = pkg_length(total)
        if len(encoded) == size:
            return encoded + payload
    raise ValueError(f"payload of {len(payload)} bytes is too long for a PkgLength")


def name_seg(seg: str) -> bytes:
    """One 4-character NameSeg; shorter names are padded with '_' as ASL does."""
    if not 1 <= len(seg) <= NAME_SEG_LEN:
        raise ValueError(f"bad NameSeg {seg!r}")
    seg = seg.ljust(NAME_SEG_LEN, "_")
    if not (seg[0].isupper() or seg[0] == "_") or not all(
        c.isascii() and (c.isupper() or c.isdigit() or c == "_") for c in seg
    ):
        raise ValueError(f"bad NameSeg {seg!r}")
    return seg.encode("ascii")


def name_string(path: str) -> bytes:
    """Encode an ASL name path such as `\\_SB_.COM1`, `^PCI0` or `_HID`."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = bytes([ROOT_CHAR]), path[1:]
    else:
        while path.startswith("^"):
            prefix, path = prefix + bytes([PARENT_PREFIX_CHAR]), path[1:]
    segs = [name_seg(s) for s in path.split(".")] if path else []
    match len(segs):
        case 0:
            return prefix + bytes([NULL_NAME])
        case 1:
            return prefix + segs[0]
        case 2:
            return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segs)
        case n if n <= 0xFF:
            return prefix + bytes([MULTI_NAME_PREFIX, n]) + b"".join(segs)
    raise ValueError(f"name path {path!r} has too many segments")


def integer(value: int) -> bytes:
    """The shortest integer encoding: Zero/One/Ones or a Byte/Word/DWord/QWord constant."""
    if not 0 <= value <= MAX_UINT64:
        raise ValueError(f"integer {value} does not fit in 64 bits")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value == MAX_UINT64:
        return bytes([ONES_OP])   # 64-bit Ones: the DSDT is revision 2
    for prefix, fmt, limit in (
        (BYTE_PREFIX, "<B", 0xFF),
        (WORD_PREFIX, "<H", 0xFFFF),
        (DWORD_PREFIX, "<I", 0xFFFF_FFFF),
    ):
        if value <= limit:
            return bytes([prefix]) + struct.pack(fmt, value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def string(text: str) -> bytes:
    """A String constant: ASCII 0x01-0x7F, NUL-terminated."""
    raw = text.encode("ascii")
    if 0 in raw:
        raise ValueError("AML strings cannot contain NUL")
    return bytes([STRING_PREFIX]) + raw + b"\x00"


def eisa_id_value(eisa_id: str) -> int:
    """The 32-bit compressed EISA id of e.g. "PNP0501" (as ASL's EISAID() computes it)."""
    if len(eisa_id) != 7 or not all("A" <= c <= "Z" for c in eisa_id[:3]):
        raise ValueError(f"bad EISA id {eisa_id!r}")
    product = int(eisa_id[3:], 16)
    vendor = 0
    for c in eisa_id[:3]:
        vendor = (vendor << 5) | (ord(c) - 0x40)
    # Stored big-endian within the dword: vendor word, then the product digits.
    return int.from_bytes(vendor.to_bytes(2, "big") + product.to_bytes(2, "big"), "little")


def eisa_id(text: str) -> bytes:
    """EISAID("PNP0501") as a DWord constant."""
    return bytes([DWORD_PREFIX]) + struct.pack("<I", eisa_id_value(text))


def name(path: str, value: bytes) -> bytes:
    """Name(path, value): `value` is an already encoded data object."""
    return bytes([NAME_OP]) + name_string(path) + value


def package(elements: Iterable[bytes]) -> bytes:
    """Package() {elements}: each element an encoded data object or name."""
    items = list(elements)
    if len(items) > 0xFF:
        raise ValueError("Package has more than 255 elements")
    return bytes([PACKAGE_OP]) + pkg(bytes([len(items)]) + b"".join(items))


def buffer(data: bytes) -> bytes:
    """Buffer() {data}, its size given as an integer term."""
    return bytes([BUFFER_OP]) + pkg(integer(len(data)) + data)


def scope(path: str, body: Iterable[bytes]) -> bytes:
    """Scope(path) {body}."""
    return bytes([SCOPE_OP]) + pkg(name_string(path) + b"".join(body))


def device(path: str, body: Iterable[bytes]) -> bytes:
    """Device(path) {body}."""
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg(name_string(path) + b"".join(body))


# --- Resource descriptors (the contents of a ResourceTemplate) ---------------


def io(minimum: int, maximum: int, alignment: int, length: int) -> bytes:
    """IO(Decode16, minimum, maximum, alignment, length)."""
    if not (0 <= minimum <= maximum <= 0xFFFF and 0 <= alignment <= 0xFF and 0 <= length <= 0xFF):
        raise ValueError("IO descriptor field out of range")
    return struct.pack("<BBHHBB", SMALL_IO_TAG, IO_DECODE16, minimum, maximum, alignment, length)


def irq_no_flags(irqs: Iterable[int]) -> bytes:
    """IRQNoFlags() {irqs}: ISA IRQs, edge-triggered, active-high, exclusive."""
    mask = 0
    for irq in irqs:
        if not 0 <= irq < ISA_IRQ_COUNT:
            raise ValueError(f"ISA IRQ {irq} out of range")
        mask |= 1 << irq
    return struct.pack("<BH", SMALL_IRQ_NO_FLAGS_TAG, mask)


def memory32_fixed(base: int, size: int, writeable: bool = True) -> bytes:
    """Memory32Fixed(ReadWrite|ReadOnly, base, size)."""
    if not (0 <= base <= 0xFFFF_FFFF and 0 <= size <= 0xFFFF_FFFF):
        raise ValueError("Memory32Fixed field out of range")
    info = MEMORY32_READ_WRITE if writeable else 0
    return struct.pack("<BHBII", LARGE_MEMORY32_FIXED_TAG, 9, info, base, size)


def extended_interrupt(
    irqs: Iterable[int],
    *,
    consumer: bool = True,
    edge: bool = True,
    active_low: bool = False,
    shared: bool = False,
) -> bytes:
    """Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) {irqs}, no resource source."""
    gsis = list(irqs)
    if not 1 <= len(gsis) <= 0xFF or not all(0 <= g <= 0xFFFF_FFFF for g in gsis):
        raise ValueError("bad Interrupt descriptor list")
    flags = (
        (EXT_IRQ_CONSUMER if consumer else 0)
        | (EXT_IRQ_EDGE if edge else 0)
        | (EXT_IRQ_ACTIVE_LOW if active_low else 0)
        | (EXT_IRQ_SHARED if shared else 0)
    )
    body = struct.pack("<BB", flags, len(gsis)) + b"".join(struct.pack("<I", g) for g in gsis)
    return struct.pack("<BH", LARGE_EXTENDED_IRQ_TAG, len(body)) + body


def end_tag() -> bytes:
    """End tag with checksum 0 ("treat as if the checksum is valid")."""
    return bytes([SMALL_END_TAG, 0])


def method(path: str, args: int, body: Iterable[bytes]) -> bytes:
    """Method(path, args, NotSerialized) {body} (20.2.5.2: MethodFlags bits 0-2 = ArgCount)."""
    if not 0 <= args <= 7:
        raise ValueError(f"a method takes 0..7 arguments, not {args}")
    return bytes([METHOD_OP]) + pkg(name_string(path) + bytes([args]) + b"".join(body))


def notify(path: str, value: int) -> bytes:
    """Notify(path, value) (20.2.5.3)."""
    return bytes([NOTIFY_OP]) + name_string(path) + integer(value)


def resource_template(descriptors: Iterable[bytes]) -> bytes:
    """ResourceTemplate() {descriptors}: a Buffer closed by an End tag."""
    return buffer(b"".join(descriptors) + end_tag())
