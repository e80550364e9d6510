"""bzImage parsing and payload decompression, on synthetic images and on Debian's kernel."""

from __future__ import annotations

import gzip
import lzma
import struct

import pytest

from volt_spec.boot.bzimage import (
    HEADER_FIELDS,
    LZ4_LEGACY_MAGIC,
    SETUP_HEADER_OFFSET,
    XLF_KERNEL_64,
    KernelFormatError,
    compression_of,
    decompress_payload,
    extract_vmlinux,
    parse_bzimage,
)

FAKE_ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64
HEADER_LEN_2_15 = 0x6A            # jump offset byte: header ends at 0x26c


def _put(image: bytearray, name: str, value: int) -> None:
    offset, fmt = HEADER_FIELDS[name]
    struct.pack_into("<" + fmt, image, offset, value)


def make_bzimage(
    payload: bytes = b"",
    *,
    version: int = 0x020F,
    setup_sects: int = 3,
    loadflags: int = 0x01,
    xloadflags: int = XLF_KERNEL_64 | 0x02,
    header_len: int = HEADER_LEN_2_15,
    payload_offset: int = 0x140,
    init_size: int = 0x80_0000,
    pref_address: int = 0x100_0000,
    relocatable: int = 1,
    cmdline_size: int = 2047,
    initrd_addr_max: int = 0x7FFF_FFFF,
    **fields: int,
) -> bytes:
    """A minimal bzImage: boot sector + setup sectors with a header, then a protected-mode part."""
    sectors = setup_sects or 4
    image = bytearray((sectors + 1) * 512)
    image[0x201] = header_len
    image[0x200] = 0xEB
    image[0x202:0x206] = b"HdrS"
    _put(image, "setup_sects", setup_sects)
    _put(image, "boot_flag", 0xAA55)
    _put(image, "version", version)
    _put(image, "loadflags", loadflags)
    _put(image, "xloadflags", xloadflags)
    _put(image, "kernel_alignment", 0x20_0000)
    _put(image, "relocatable_kernel", relocatable)
    _put(image, "cmdline_size", cmdline_size)
    _put(image, "initrd_addr_max", initrd_addr_max)
    _put(image, "pref_address", pref_address)
    _put(image, "init_size", init_size)
    trailer = struct.pack("<I", len(FAKE_ELF))   # mkpiggy's uncompressed-size trailer
    protected = bytearray(b"\x90" * payload_offset) + payload + trailer + b"\xcc" * 32
    _put(image, "payload_offset", payload_offset)
    _put(image, "payload_length", len(payload) + len(trailer))
    _put(image, "syssize", (len(protected) + 15) // 16)
    protected += bytes(-len(protected) % 16)
    for name, value in fields.items():
        _put(image, name, value)
    return bytes(image + protected)


def lz4_legacy(data: bytes, block: int = 8 << 20) -> bytes:
    import lz4.block
    out = bytearray(LZ4_LEGACY_MAGIC)
    for i in range(0, len(data), block):
        chunk = lz4.block.compress(data[i:i + block], store_size=False)
        out += struct.pack("<I", len(chunk)) + chunk
    return bytes(out)


def test_header_fields_are_parsed_at_their_offsets():
    img = parse_bzimage(make_bzimage(gzip.compress(FAKE_ELF), cmdline_size=1234, init_size=0x123000))
    hdr = img.header
    assert hdr.version == 0x020F and hdr.version_str == "2.15"
    assert hdr.boot_flag == 0xAA55 and hdr.header == 0x53726448
    assert hdr.cmdline_size == 1234
    assert hdr.init_size == 0x123000
    assert hdr.pref_address == 0x100_0000
    assert hdr.kernel_alignment == 0x20_0000
    assert hdr.relocatable_kernel == 1
    assert hdr.initrd_addr_max == 0x7FFF_FFFF
    assert hdr.xloadflags & XLF_KERNEL_64


def test_offsets_match_bootparam_h():
    assert HEADER_FIELDS["setup_sects"][0] == 0x1F1
    assert HEADER_FIELDS["boot_flag"][0] == 0x1FE
    assert HEADER_FIELDS["header"][0] == 0x202
    assert HEADER_FIELDS["type_of_loader"][0] == 0x210
    assert HEADER_FIELDS["loadflags"][0] == 0x211
    assert HEADER_FIELDS["ramdisk_image"][0] == 0x218
    assert HEADER_FIELDS["ramdisk_size"][0] == 0x21C
    assert HEADER_FIELDS["heap_end_ptr"][0] == 0x224
    assert HEADER_FIELDS["cmd_line_ptr"][0] == 0x228
    assert HEADER_FIELDS["xloadflags"][0] == 0x236
    assert HEADER_FIELDS["cmdline_size"][0] == 0x238
    assert HEADER_FIELDS["payload_offset"][0] == 0x248
    assert HEADER_FIELDS["pref_address"][0] == 0x258
    assert HEADER_FIELDS["init_size"][0] == 0x260
    assert HEADER_FIELDS["kernel_info_offset"][0] == 0x268


def test_setup_header_bytes_end_at_jump_length():
    data = make_bzimage(gzip.compress(FAKE_ELF), header_len=0x5E)
    img = parse_bzimage(data)
    assert img.setup_header_bytes == data[SETUP_HEADER_OFFSET:0x202 + 0x5E]
    assert img.header.init_size == 0      # past the header's end: read as zero


@pytest.mark.parametrize("setup_sects, sectors", [(3, 3), (0, 4), (30, 30)])
def test_protected_mode_starts_after_setup(setup_sects, sectors):
    data = make_bzimage(gzip.compress(FAKE_ELF), setup_sects=setup_sects)
    img = parse_bzimage(data)
    assert img.header.setup_sectors == sectors
    assert img.protected_mode == data[(sectors + 1) * 512:]
    assert img.protected_mode.startswith(b"\x90" * 0x140)


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress, lz4_legacy], ids=["gzip", "xz", "lz4"])
def test_extract_vmlinux_tolerates_the_size_trailer(compress):
    assert extract_vmlinux(make_bzimage(compress(FAKE_ELF))) == FAKE_ELF


def test_lz4_legacy_multiple_blocks():
    data = FAKE_ELF * 40
    payload = lz4_legacy(data, block=len(FAKE_ELF) * 7)
    assert payload.count(LZ4_LEGACY_MAGIC) == 1
    assert extract_vmlinux(make_bzimage(payload)) == data


def test_zstd_payload_or_a_clear_error():
    try:
        import zstandard
    except ImportError:
        with pytest.raises(KernelFormatError, match="zstandard"):
            decompress_payload(b"\x28\xb5\x2f\xfd" + bytes(16))
        return
    payload = zstandard.ZstdCompressor().compress(FAKE_ELF) + b"\x00\x10\x00\x00"
    assert decompress_payload(payload) == FAKE_ELF


def test_compression_names():
    assert compression_of(gzip.compress(b"x")) == "gzip"
    assert compression_of(lzma.compress(b"x")) == "xz"
    assert compression_of(LZ4_LEGACY_MAGIC + bytes(8)) == "lz4"
    with pytest.raises(KernelFormatError, match="unsupported kernel payload compression"):
        compression_of(b"BZh91AY&SY")


def test_corrupt_payload_is_a_format_error():
    with pytest.raises(KernelFormatError, match="gzip"):
        extract_vmlinux(make_bzimage(gzip.compress(FAKE_ELF)[:200]))
    with pytest.raises(KernelFormatError, match="not an ELF"):
        extract_vmlinux(make_bzimage(gzip.compress(b"not an elf")))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not a bzImage: only 0 bytes"),
        (bytes(4096), 'no "HdrS"'),
        (b"\x7fELF" + bytes(4096), "ELF file"),
        (make_bzimage(b"x", boot_flag=0x1234), "boot sector flag 0x1234"),
        (make_bzimage(b"x", version=0x020A), r"boot protocol 2.10 is too old"),
        (make_bzimage(b"x", loadflags=0), "LOADED_HIGH"),
        (make_bzimage(b"x", xloadflags=0), "XLF_KERNEL_64"),
        (make_bzimage(gzip.compress(FAKE_ELF))[:-100], "truncated bzImage"),
        (make_bzimage(b"x")[:0x220], "truncated bzImage: setup header ends at 0x26c"),
        (make_bzimage(b"x", payload_length=1 << 20), "payload runs past the end"),
    ],
    ids=["empty", "zeros", "elf", "boot-flag", "old", "zimage", "32bit", "truncated", "short-header", "payload"],
)
def test_bad_images_are_rejected_in_one_line(data, message):
    with pytest.raises(KernelFormatError, match=message) as err:
        parse_bzimage(data)
    assert "\n" not in str(err.value)


def debian_kernel_or_fail():
    """The cached Debian kernel; a failed download fails the test (it must not skip)."""
    from volt_spec.boot.kernel_fetch import KernelFetchError, fetch_debian_kernel
    try:
        return fetch_debian_kernel()
    except KernelFetchError as e:
        pytest.fail(f"cannot fetch Debian's linux-image-cloud-amd64 (needs apt and network): {e}")


@pytest.mark.linux
def test_debian_cloud_kernel():
    from volt_spec.boot.elf import ElfImage
    data = debian_kernel_or_fail().read_bytes()
    img = parse_bzimage(data)
    assert img.header.version >= 0x020C
    assert img.header.relocatable_kernel == 1
    assert img.header.init_size > len(img.protected_mode)
    assert compression_of(img.payload) in {"lz4", "gzip", "xz", "zstd"}
    # mkpiggy's trailer: the last 4 payload bytes are the uncompressed size.
    elf = extract_vmlinux(data)
    assert struct.unpack("<I", img.payload[-4:])[0] == len(elf)
    kernel = ElfImage(elf)
    assert kernel.is64 and kernel.entry == kernel.phys_entry() == img.header.pref_address
    lo, hi = kernel.phys_span()
    assert kernel.pvh_entry() is not None and lo <= kernel.pvh_entry() < hi


def test_fetch_reuses_the_cache_without_apt(tmp_path, monkeypatch):
    from volt_spec.boot.kernel_fetch import fetch_busybox, fetch_debian_kernel
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    kernel = tmp_path / "vmlinuz-6.1.0-99-cloud-amd64"
    kernel.write_bytes(b"k")
    busybox = tmp_path / "busybox-1.35.0-4"
    busybox.write_bytes(b"b")
    assert fetch_debian_kernel(tmp_path) == kernel
    assert fetch_busybox(tmp_path) == busybox


def test_fetch_without_apt_fails_clearly(tmp_path, monkeypatch):
    from volt_spec.boot.kernel_fetch import KernelFetchError, fetch_debian_kernel
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(KernelFetchError, match="apt-cache not found"):
        fetch_debian_kernel(tmp_path / "cache")
    monkeypatch.setenv("VOLT_CACHE", str(tmp_path / "env-cache"))
    from volt_spec.boot.kernel_fetch import default_cache_dir
    assert default_cache_dir() == tmp_path / "env-cache"
