"""Parse an x86 bzImage and decompress the vmlinux inside it.

Layout facts come from Linux `Documentation/arch/x86/boot.rst` and
`arch/x86/include/uapi/asm/bootparam.h`: the real-mode setup code fills the
first (setup_sects + 1) sectors, its `struct setup_header` sits at 0x1f1, and
the protected-mode kernel (decompressor plus compressed payload) follows.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import dataclass

from volt_spec.boot.elf import ELF_MAGIC

SECTOR_SIZE = 512
DEFAULT_SETUP_SECTS = 4            # setup_sects == 0 means 4 (boot.rst, note 1)
SETUP_HEADER_OFFSET = 0x1F1
JUMP_LENGTH_OFFSET = 0x201         # second byte of the jump: header ends at 0x202 + this
HEADER_MAGIC_OFFSET = 0x202
BOOT_FLAG_MAGIC = 0xAA55
HDRS_MAGIC = b"HdrS"
MIN_PROTOCOL = 0x020C              # 2.12: xloadflags, 64-bit entry point

# loadflags
LOADED_HIGH = 1 << 0
KASLR_FLAG = 1 << 1
QUIET_FLAG = 1 << 5
KEEP_SEGMENTS = 1 << 6
CAN_USE_HEAP = 1 << 7
# xloadflags
XLF_KERNEL_64 = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1

# struct setup_header, packed, in order: (name, struct format). Offsets follow.
_HEADER_LAYOUT: tuple[tuple[str, str], ...] = (
    ("setup_sects", "B"), ("root_flags", "H"), ("syssize", "I"), ("ram_size", "H"),
    ("vid_mode", "H"), ("root_dev", "H"), ("boot_flag", "H"), ("jump", "H"),
    ("header", "I"), ("version", "H"), ("realmode_swtch", "I"), ("start_sys_seg", "H"),
    ("kernel_version", "H"), ("type_of_loader", "B"), ("loadflags", "B"),
    ("setup_move_size", "H"), ("code32_start", "I"), ("ramdisk_image", "I"),
    ("ramdisk_size", "I"), ("bootsect_kludge", "I"), ("heap_end_ptr", "H"),
    ("ext_loader_ver", "B"), ("ext_loader_type", "B"), ("cmd_line_ptr", "I"),
    ("initrd_addr_max", "I"), ("kernel_alignment", "I"), ("relocatable_kernel", "B"),
    ("min_alignment", "B"), ("xloadflags", "H"), ("cmdline_size", "I"),
    ("hardware_subarch", "I"), ("hardware_subarch_data", "Q"), ("payload_offset", "I"),
    ("payload_length", "I"), ("setup_data", "Q"), ("pref_address", "Q"),
    ("init_size", "I"), ("handover_offset", "I"), ("kernel_info_offset", "I"),
)


def _field_offsets() -> dict[str, tuple[int, str]]:
    offsets: dict[str, tuple[int, str]] = {}
    pos = SETUP_HEADER_OFFSET
    for name, fmt in _HEADER_LAYOUT:
        offsets[name] = (pos, fmt)
        pos += struct.calcsize("<" + fmt)
    return offsets


# Absolute offset (in the bzImage file and in struct boot_params) of each field.
HEADER_FIELDS: dict[str, tuple[int, str]] = _field_offsets()
_HEADER_FORMAT = "<" + "".join(fmt for _, fmt in _HEADER_LAYOUT)
SETUP_HEADER_SIZE = struct.calcsize(_HEADER_FORMAT)   # 0x7b: ends at 0x26c (protocol 2.15)

# Payload compression magics (the kernel's `mkpiggy` input).
GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"               # 0x184C2102 little-endian
LZ4_LEGACY_BLOCK_MAX = 8 << 20                        # lz4 -l: 8 MiB uncompressed per block
GZIP_WBITS = 16 + zlib.MAX_WBITS                   # zlib: expect a gzip header


class KernelFormatError(ValueError):
    """The kernel image is not something this loader can boot."""


@dataclass(frozen=True)
class SetupHeader:
    """`struct setup_header` as read from the image (bootparam.h field names)."""

    setup_sects: int
    root_flags: int
    syssize: int
    ram_size: int
    vid_mode: int
    root_dev: int
    boot_flag: int
    jump: int
    header: int
    version: int
    realmode_swtch: int
    start_sys_seg: int
    kernel_version: int
    type_of_loader: int
    loadflags: int
    setup_move_size: int
    code32_start: int
    ramdisk_image: int
    ramdisk_size: int
    bootsect_kludge: int
    heap_end_ptr: int
    ext_loader_ver: int
    ext_loader_type: int
    cmd_line_ptr: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable_kernel: int
    min_alignment: int
    xloadflags: int
    cmdline_size: int
    hardware_subarch: int
    hardware_subarch_data: int
    payload_offset: int
    payload_length: int
    setup_data: int
    pref_address: int
    init_size: int
    handover_offset: int
    kernel_info_offset: int

    @property
    def setup_sectors(self) -> int:
        """Real setup size in sectors (0 in the field means 4)."""
        return self.setup_sects or DEFAULT_SETUP_SECTS

    @property
    def version_str(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"

    @classmethod
    def unpack(cls, raw: bytes) -> SetupHeader:
        """Decode SETUP_HEADER_SIZE bytes taken from offset 0x1f1."""
        return cls(*struct.unpack(_HEADER_FORMAT, raw))


@dataclass(frozen=True)
class BzImage:
    """A parsed bzImage: its header, the header bytes to copy, and the kernel proper."""

    header: SetupHeader
    setup_header_bytes: bytes     # 0x1f1 .. 0x202 + byte[0x201], copied into the zero page
    protected_mode: bytes         # everything after (setup_sects + 1) * 512

    @property
    def payload(self) -> bytes:
        """The compressed vmlinux (payload_offset is relative to the protected-mode start)."""
        start = self.header.payload_offset
        return self.protected_mode[start:start + self.header.payload_length]


def parse_bzimage(data: bytes) -> BzImage:
    """Validate a bzImage and split it; raises KernelFormatError with a one-line reason."""
    if len(data) < HEADER_MAGIC_OFFSET + 4:
        raise KernelFormatError(f"not a bzImage: only {len(data)} bytes")
    if data[HEADER_MAGIC_OFFSET:HEADER_MAGIC_OFFSET + 4] != HDRS_MAGIC:
        if data[:4] == ELF_MAGIC:
            raise KernelFormatError("not a bzImage: this is an ELF file (load it as vmlinux)")
        raise KernelFormatError('not a bzImage: no "HdrS" signature at 0x202')
    (boot_flag,) = struct.unpack_from("<H", data, HEADER_FIELDS["boot_flag"][0])
    if boot_flag != BOOT_FLAG_MAGIC:
        raise KernelFormatError(f"not a bzImage: boot sector flag {boot_flag:#06x}, expected 0xaa55")
    header_end = HEADER_MAGIC_OFFSET + data[JUMP_LENGTH_OFFSET]
    if len(data) < header_end:
        raise KernelFormatError(
            f"truncated bzImage: setup header ends at {header_end:#x}, file has {len(data):#x} bytes")
    raw = data[SETUP_HEADER_OFFSET:header_end][:SETUP_HEADER_SIZE]
    header = SetupHeader.unpack(raw.ljust(SETUP_HEADER_SIZE, b"\0"))
    if header.version < MIN_PROTOCOL:
        raise KernelFormatError(
            f"boot protocol {header.version_str} is too old: need 2.12+ for the 64-bit entry")
    if not header.loadflags & LOADED_HIGH:
        raise KernelFormatError("not a bzImage: LOADED_HIGH is clear (zImage kernels are not supported)")
    if not header.xloadflags & XLF_KERNEL_64:
        raise KernelFormatError("kernel has no 64-bit entry point (XLF_KERNEL_64 clear): 32-bit kernel?")
    pm_start = (header.setup_sectors + 1) * SECTOR_SIZE
    pm_size = header.syssize * 16
    if len(data) < pm_start + pm_size:
        raise KernelFormatError(
            f"truncated bzImage: {len(data)} bytes, header promises {pm_start + pm_size}")
    protected_mode = data[pm_start:]
    if header.payload_offset + header.payload_length > len(protected_mode):
        raise KernelFormatError("truncated bzImage: compressed payload runs past the end of the file")
    return BzImage(header, data[SETUP_HEADER_OFFSET:header_end], protected_mode)


def _lz4_legacy(payload: bytes) -> bytes:
    """Decode the lz4 "legacy" frame the kernel uses: magic, then [u32 size][block]...

    The kernel appends a u32 uncompressed-size trailer to every payload (mkpiggy
    reads it), so a 4-byte tail that is not a whole block ends the stream, as in
    lib/decompress_unlz4.c. Repeated magics (concatenated frames) are skipped.
    """
    try:
        import lz4.block
    except ImportError as e:
        raise KernelFormatError("kernel payload is LZ4: install the `lz4` package") from e
    out = bytearray()
    pos = len(LZ4_LEGACY_MAGIC)
    while pos + 4 <= len(payload):
        chunk = payload[pos:pos + 4]
        if chunk == LZ4_LEGACY_MAGIC:
            pos += 4
            continue
        (size,) = struct.unpack("<I", chunk)
        if size == 0 or pos + 4 + size > len(payload):
            break                          # the size trailer (or padding): end of stream
        block = payload[pos + 4:pos + 4 + size]
        try:
            out += lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK_MAX)
        except lz4.block.LZ4BlockError as e:
            raise KernelFormatError(f"corrupt LZ4 block at payload offset {pos}: {e}") from e
        pos += 4 + size
    return bytes(out)


def _gzip_member(payload: bytes) -> bytes:
    """The first gzip member only: the size trailer must not be read as a second member."""
    inflater = zlib.decompressobj(wbits=GZIP_WBITS)
    out = inflater.decompress(payload)
    if not inflater.eof:
        raise KernelFormatError("truncated gzip kernel payload")
    return out


def _zstd(payload: bytes) -> bytes:
    try:
        import zstandard
    except ImportError as e:
        raise KernelFormatError("kernel payload is zstd: install the `zstandard` package") from e
    inflater = zstandard.ZstdDecompressor().decompressobj()
    return inflater.decompress(payload)    # stops at the frame end: the trailer is left unused


def compression_of(payload: bytes) -> str:
    """Name the payload's compression from its magic bytes."""
    for name, magic in (("gzip", GZIP_MAGIC), ("xz", XZ_MAGIC), ("zstd", ZSTD_MAGIC),
                        ("lz4", LZ4_LEGACY_MAGIC), ("elf", ELF_MAGIC)):
        if payload.startswith(magic):
            return name
    raise KernelFormatError(f"unsupported kernel payload compression (magic {payload[:6].hex()})")


def decompress_payload(payload: bytes) -> bytes:
    """Decompress a bzImage payload by magic; trailing bytes (the size trailer) are tolerated."""
    try:
        match compression_of(payload):
            case "gzip":
                return _gzip_member(payload)
            case "xz":
                return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
            case "zstd":
                return _zstd(payload)
            case "lz4":
                return _lz4_legacy(payload)
            case _:
                return payload             # CONFIG_KERNEL_UNCOMPRESSED: the ELF itself
    except (zlib.error, EOFError, lzma.LZMAError) as e:
        raise KernelFormatError(f"corrupt kernel payload: {e}") from e


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Decompress the ELF vmlinux embedded in a bzImage."""
    image = parse_bzimage(bzimage)
    elf = decompress_payload(image.payload)
    if not elf.startswith(ELF_MAGIC):
        raise KernelFormatError("decompressed payload is not an ELF file")
    return elf
