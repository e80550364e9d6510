"""The test guest builds with the machine's gcc into a content-addressed cache, as a PVH ELF."""

from __future__ import annotations

import ipaddress
import os
import pathlib
import shutil
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volt_spec import layout
from volt_spec.guest import build, protocol

PT_LOAD = 1
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18

@pytest.fixture(autouse=True)
def _gcc_present() -> None:
    """The guest is part of the product: without gcc these tests fail, they do not skip."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is not installed: the test guest cannot be built (apt-get install gcc binutils)",
                    pytrace=False)


@pytest.fixture()
def cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("VOLT_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def elf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    os.environ["VOLT_CACHE"] = str(tmp_path_factory.mktemp("guest-cache"))
    try:
        return build.build_guest().read_bytes()
    finally:
        del os.environ["VOLT_CACHE"]


def program_headers(elf: bytes) -> list[tuple[int, int, int, int, int, int]]:
    """(type, offset, paddr, filesz, memsz, align) of every ELF64 program header."""
    assert elf[:4] == b"\x7fELF" and elf[4] == 2, "not an ELF64 file"
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    out = []
    for i in range(phnum):
        p_type, _flags, off, _vaddr, paddr, filesz, memsz, align = struct.unpack_from(
            "<IIQQQQQQ", elf, phoff + i * phentsize
        )
        out.append((p_type, off, paddr, filesz, memsz, align))
    return out


def xen_notes(elf: bytes) -> dict[int, bytes]:
    """Descriptors of the "Xen" notes in PT_NOTE segments, by note type."""
    notes = {}
    for p_type, off, _paddr, filesz, _memsz, _align in program_headers(elf):
        if p_type != PT_NOTE:
            continue
        pos = off
        while pos + 12 <= off + filesz:
            namesz, descsz, n_type = struct.unpack_from("<III", elf, pos)
            name_at = pos + 12
            desc_at = name_at + (namesz + 3) // 4 * 4
            if elf[name_at:name_at + namesz] == b"Xen\0":
                notes[n_type] = elf[desc_at:desc_at + descsz]
            pos = desc_at + (descsz + 3) // 4 * 4
    return notes


def test_build_is_cached_under_content_hash(cache: pathlib.Path) -> None:
    first = build.build_guest()
    mtime = first.stat().st_mtime_ns
    again = build.build_guest()
    assert again == first
    assert again.stat().st_mtime_ns == mtime, "a cached build must not be recompiled"
    assert first.parent.name == f"guest-{build.source_digest()}"
    assert first.parent.parent == cache
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "temporary dirs left behind"


def test_force_rebuilds(cache: pathlib.Path) -> None:
    first = build.build_guest()
    inode = first.stat().st_ino
    rebuilt = build.build_guest(force=True)
    assert rebuilt == first
    assert rebuilt.stat().st_ino != inode


def test_pvh_note_names_the_32bit_entry(elf_bytes: bytes) -> None:
    desc = xen_notes(elf_bytes).get(XEN_ELFNOTE_PHYS32_ENTRY)
    assert desc is not None, "no XEN_ELFNOTE_PHYS32_ENTRY note"
    entry = int.from_bytes(desc[:4], "little")
    e_entry, = struct.unpack_from("<Q", elf_bytes, 0x18)
    assert entry == e_entry
    # QEMU reads the descriptor as 8 bytes after a name padded to the segment's p_align.
    assert len(desc) == 8 and int.from_bytes(desc, "little") == entry
    note_aligns = [align for p_type, *_rest, align in program_headers(elf_bytes) if p_type == PT_NOTE]
    assert note_aligns == [4]


def test_entry_is_inside_a_load_segment_above_1mib(elf_bytes: bytes) -> None:
    e_entry, = struct.unpack_from("<Q", elf_bytes, 0x18)
    loads = [(paddr, memsz) for p_type, _off, paddr, _fs, memsz, _al in program_headers(elf_bytes) if p_type == PT_LOAD]
    assert loads and all(paddr >= layout.HIMEM_START for paddr, _ in loads)
    assert any(paddr <= e_entry < paddr + memsz for paddr, memsz in loads)
    assert e_entry < 1 << 32, "the PVH entry is 32-bit"
    # The whole image (with .bss) stays below the ring-3 workload region at 16 MiB.
    assert max(paddr + memsz for paddr, memsz in loads) <= 16 * layout.MiB


def test_missing_gcc_is_a_one_line_install_hint(
    cache: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(build.GuestBuildError) as err:
        build.build_guest(force=True)
    message = str(err.value)
    assert "\n" not in message
    assert "install gcc" in message and "binutils" in message


def test_cli_prints_the_path(cache: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build.main([]) == 0
    printed = pathlib.Path(capsys.readouterr().out.strip())
    assert printed == build.build_guest() and printed.is_file()


def _c_define(text: str, name: str) -> int:
    for line in text.splitlines():
        parts = line.split()
        if parts[:2] == ["#define", name]:
            return int(parts[2], 0)
    raise AssertionError(f"{name} not defined")


def test_guest_constants_match_the_shared_layout() -> None:
    src = build.SRC_DIR
    assert _c_define((src / "defs.h").read_text(), "AP_TRAMPOLINE_ADDR") == layout.GUEST_FREE_LOW
    assert _c_define((src / "serial.c").read_text(), "COM1") == layout.COM1_PORT
    apic = (src / "apic.c").read_text()
    assert _c_define(apic, "IOAPIC_BASE") == layout.IOAPIC_ADDR
    assert _c_define(apic, "KBD_PIN") == layout.I8042_IRQ
    main = (src / "main.c").read_text()
    assert _c_define(main, "I8042_DATA") == layout.I8042_DATA_PORT
    assert _c_define(main, "I8042_STATUS") == layout.I8042_CMD_PORT
    assert _c_define((src / "acpi.c").read_text(), "DEFAULT_S5_SLP_TYP") == layout.ACPI_S5_SLP_TYP


def _c_define_u64(text: str, name: str) -> int:
    """A #define'd integer with C suffixes (0x...UL, 0x...u)."""
    return int(_c_define_raw(text, name).rstrip("uUlL"), 0)


def _c_define_raw(text: str, name: str) -> str:
    for line in text.splitlines():
        parts = line.split()
        if parts[:2] == ["#define", name]:
            return parts[2]
    raise AssertionError(f"{name} not defined")


def test_guest_io_constants_match_the_protocol() -> None:
    blk = (build.SRC_DIR / "blk.c").read_text()
    net = (build.SRC_DIR / "net.c").read_text()
    assert _c_define_u64(blk, "PATTERN_MUL") == protocol.PATTERN_MUL
    assert _c_define_u64(blk, "PATTERN_XOR") == protocol.PATTERN_XOR
    assert _c_define(blk, "SECTOR_SIZE") == protocol.SECTOR_SIZE
    assert _c_define(blk, "DEFAULT_SECTORS") == protocol.BLK_DEFAULT_SECTORS
    assert _c_define(blk, "ROUND_REPORT_MS") == protocol.IO_REPORT_MS
    assert _c_define(net, "ROUND_REPORT_MS") == protocol.IO_REPORT_MS
    assert _c_define(net, "DEFAULT_COUNT") == protocol.NET_DEFAULT_COUNT
    assert _c_define_u64(net, "DEFAULT_IP") == int(ipaddress.IPv4Address(protocol.NET_DEFAULT_IP))
    assert _c_define_u64(net, "DEFAULT_PEER") == int(ipaddress.IPv4Address(protocol.NET_DEFAULT_PEER))


def test_blk_sector_layout() -> None:
    sector = protocol.blk_sector(5, 3)
    assert len(sector) == protocol.SECTOR_SIZE
    word0, word1 = struct.unpack_from("<QQ", sector)
    assert word0 == 3 << 32 | 5                     # readable in a hex dump of the disk
    assert word1 == (((3 << 38 | 5 << 6 | 1) * protocol.PATTERN_MUL) & (2**64 - 1)) ^ protocol.PATTERN_XOR
    assert protocol.blk_sector(5, 3) != protocol.blk_sector(5, 4) != protocol.blk_sector(6, 4)
    assert protocol.blk_image(3, 2) == b"".join(protocol.blk_sector(s, 2) for s in range(3))


@given(sector=st.integers(0, 2**32 - 1), round_=st.integers(0, 2**26), flip=st.integers(0, 511))
@settings(max_examples=60, deadline=None)
def test_blk_sector_round_decodes_and_rejects_damage(sector: int, round_: int, flip: int) -> None:
    data = protocol.blk_sector(sector, round_)
    assert protocol.blk_sector_round(data, sector) == round_
    assert protocol.blk_sector_round(data, sector + 1) is None
    damaged = bytearray(data)
    damaged[flip] ^= 0x01
    assert protocol.blk_sector_round(bytes(damaged), sector) is None


def test_blk_checksum_folds_every_word_in_order() -> None:
    image = protocol.blk_image(4, 1)
    assert protocol.blk_checksum(4, 1) == protocol.blk_checksum_of(image)
    assert protocol.blk_checksum_of(bytes(512)) == "0" * 16
    swapped = image[512:1024] + image[:512] + image[1024:]
    assert protocol.blk_checksum_of(swapped) != protocol.blk_checksum(4, 1)
    with pytest.raises(ValueError):
        protocol.blk_checksum_of(bytes(100))


def test_io_command_line_words() -> None:
    words = protocol.cmdline(blk="ro", blk_sectors=16, net=True, net_count=3, ip="10.1.1.2",
                             peer="10.1.1.1", io_loop=True).split()
    assert words == ["volt.blk=ro", "volt.blk_sectors=16", "volt.net=echo", "volt.net_count=3",
                     "volt.ip=10.1.1.2", "volt.peer=10.1.1.1", "volt.io=loop"]
    with pytest.raises(ValueError):
        protocol.cmdline(blk="wo")
