"""ACPI tables: the AML encoder byte by byte, the table layout, and ACPICA's iasl as a judge.

The iasl tests need `iasl` (Debian package acpica-tools); they fail, not skip,
when it is missing, because CI installs it.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from volt_spec import layout
from volt_spec.boot import acpi, aml
from volt_spec.boot.acpi import AcpiTables, VirtioMmioDesc, build_acpi_tables

CPU_COUNTS = (1, 4, 64)
VIRTIO_SETS = {
    0: (),
    3: tuple(
        VirtioMmioDesc(
            layout.VIRTIO_MMIO_BASE + n * layout.VIRTIO_MMIO_SIZE,
            layout.VIRTIO_MMIO_SIZE,
            layout.VIRTIO_IRQ_BASE + n,
        )
        for n in range(3)
    ),
}
CONFIGS = [(c, v) for c in CPU_COUNTS for v in VIRTIO_SETS]


def _table(t: AcpiTables, sig: str) -> bytes:
    addr, length = t.tables[sig]
    return t.blob[addr - t.base:addr - t.base + length]


@pytest.fixture(params=CONFIGS, ids=[f"{c}cpu-{v}virtio" for c, v in CONFIGS])
def config(request: pytest.FixtureRequest) -> tuple[int, int, AcpiTables]:
    cpus, nvirtio = request.param
    return cpus, nvirtio, build_acpi_tables(cpus, VIRTIO_SETS[nvirtio])


# --- AML encoder -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (63, b"\x3f"),
        (64, b"\x40\x04"),
        (0x123, b"\x43\x12"),
        (4095, b"\x4f\xff"),
        (4096, b"\x80\x00\x01"),
        ((1 << 20) - 1, b"\x8f\xff\xff"),
        (1 << 20, b"\xc0\x00\x00\x01"),
        ((1 << 28) - 1, b"\xcf\xff\xff\xff"),
    ],
)
def test_pkg_length_boundaries(value: int, encoded: bytes) -> None:
    assert aml.pkg_length(value) == encoded


def _decode_pkg_length(data: bytes) -> tuple[int, int]:
    """(value, encoded size), decoded the way an AML interpreter reads it."""
    follow = data[0] >> 6
    if follow == 0:
        return data[0] & 0x3F, 1
    assert data[0] & 0x30 == 0, "bits 5:4 of a multi-byte lead must be zero"
    return (data[0] & 0x0F) | int.from_bytes(data[1:1 + follow], "little") << 4, 1 + follow


@given(st.integers(min_value=0, max_value=(1 << 28) - 1))
def test_pkg_length_round_trips(value: int) -> None:
    encoded = aml.pkg_length(value)
    assert _decode_pkg_length(encoded) == (value, len(encoded))


@given(st.binary(max_size=5000))
def test_pkg_length_counts_itself(payload: bytes) -> None:
    wrapped = aml.pkg(payload)
    value, size = _decode_pkg_length(wrapped)
    assert value == len(wrapped) and wrapped[size:] == payload


@pytest.mark.parametrize("value", [-1, 1 << 28])
def test_pkg_length_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        aml.pkg_length(value)


@pytest.mark.parametrize(
    ("payload_len", "prefix"),
    [
        (0, b"\x01"),
        (62, b"\x3f"),                    # 62 + 1 = 63: still one byte
        (63, b"\x41\x04"),                # 63 + 1 = 64 needs two bytes: 63 + 2 = 65
        (4093, b"\x4f\xff"),              # 4093 + 2 = 4095
        (4094, b"\x81\x00\x01"),          # 4094 + 2 = 4096 needs three: 4097
        ((1 << 20) - 4, b"\x8f\xff\xff"),
        ((1 << 20) - 3, b"\xc1\x00\x00\x01"),
    ],
)
def test_pkg_wraps_payload_counting_itself(payload_len: int, prefix: bytes) -> None:
    payload = b"\xaa" * payload_len
    assert aml.pkg(payload) == prefix + payload


def test_pkg_rejects_too_long_payload() -> None:
    with pytest.raises(ValueError):
        aml.pkg(b"\x00" * ((1 << 28) - 4))


def test_name_seg_pads_and_validates() -> None:
    assert aml.name_seg("_SB") == b"_SB_"
    assert aml.name_seg("COM1") == b"COM1"
    for bad in ("", "TOOLONG", "1ABC", "ab", "A-B"):
        with pytest.raises(ValueError):
            aml.name_seg(bad)


@pytest.mark.parametrize(
    ("path", "encoded"),
    [
        ("_HID", b"_HID"),
        ("\\", b"\x5c\x00"),
        ("\\_S5", b"\x5c_S5_"),
        ("\\_SB_.COM1", b"\x5c\x2e_SB_COM1"),
        ("_SB.PCI0.ISA", b"\x2f\x03_SB_PCI0ISA_"),
        ("^^FOO", b"\x5e\x5eFOO_"),
        ("^A.B", b"\x5e\x2eA___B___"),
    ],
)
def test_name_string(path: str, encoded: bytes) -> None:
    assert aml.name_string(path) == encoded


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (2, b"\x0a\x02"),
        (0xFF, b"\x0a\xff"),
        (0x100, b"\x0b\x00\x01"),
        (0xFFFF, b"\x0b\xff\xff"),
        (0x10000, b"\x0c\x00\x00\x01\x00"),
        (0xFFFF_FFFF, b"\x0c\xff\xff\xff\xff"),
        (1 << 32, b"\x0e\x00\x00\x00\x00\x01\x00\x00\x00"),
        ((1 << 64) - 2, b"\x0e\xfe" + b"\xff" * 7),
        ((1 << 64) - 1, b"\xff"),
    ],
)
def test_integer_picks_shortest_encoding(value: int, encoded: bytes) -> None:
    assert aml.integer(value) == encoded


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_integer_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        aml.integer(value)


def test_string() -> None:
    assert aml.string("LNRO0005") == b"\x0dLNRO0005\x00"
    assert aml.string("") == b"\x0d\x00"
    with pytest.raises(ValueError):
        aml.string("a\0b")
    with pytest.raises(UnicodeEncodeError):
        aml.string("é")


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("PNP0501", b"\x0c\x41\xd0\x05\x01"),
        ("PNP0303", b"\x0c\x41\xd0\x03\x03"),
        ("PNP0A03", b"\x0c\x41\xd0\x0a\x03"),
    ],
)
def test_eisa_id(text: str, encoded: bytes) -> None:
    assert aml.eisa_id(text) == encoded


def test_eisa_id_rejects_malformed() -> None:
    for bad in ("PNP050", "pnp0501", "PN10501", "PNP05G1"):
        with pytest.raises(ValueError):
            aml.eisa_id(bad)


def test_name_package_buffer() -> None:
    assert aml.name("_UID", aml.integer(0)) == b"\x08_UID\x00"
    assert aml.package([aml.integer(5), aml.integer(0)]) == b"\x12\x05\x02\x0a\x05\x00"
    assert aml.package([]) == b"\x12\x02\x00"
    assert aml.buffer(b"\x79\x00") == b"\x11\x05\x0a\x02\x79\x00"
    assert aml.buffer(b"") == b"\x11\x02\x00"
    with pytest.raises(ValueError):
        aml.package([aml.integer(0)] * 256)


def test_buffer_with_long_payload_uses_word_size_and_two_byte_pkg_length() -> None:
    data = bytes(300)
    # PkgLength covers itself (2) + WordConst size (3) + 300 bytes = 305 = 0x131.
    assert aml.buffer(data) == b"\x11\x41\x13\x0b\x2c\x01" + data


def test_scope_and_device() -> None:
    assert aml.scope("\\_SB_", []) == b"\x10\x06\x5c_SB_"
    body = aml.name("_STA", aml.integer(0x0F))
    assert aml.device("COM1", [body]) == b"\x5b\x82\x0c" + b"COM1" + b"\x08_STA\x0a\x0f"


def test_io_descriptor() -> None:
    assert aml.io(0x3F8, 0x3F8, 0, 8) == b"\x47\x01\xf8\x03\xf8\x03\x00\x08"
    with pytest.raises(ValueError):
        aml.io(0x10, 0x0F, 0, 1)


def test_irq_no_flags_descriptor() -> None:
    assert aml.irq_no_flags([4]) == b"\x22\x10\x00"
    assert aml.irq_no_flags([1, 12]) == b"\x22\x02\x10"
    with pytest.raises(ValueError):
        aml.irq_no_flags([16])


def test_memory32_fixed_descriptor() -> None:
    assert aml.memory32_fixed(0xD000_0000, 0x1000) == (
        b"\x86\x09\x00\x01" + b"\x00\x00\x00\xd0" + b"\x00\x10\x00\x00"
    )
    assert aml.memory32_fixed(0x1000, 0x10, writeable=False)[3] == 0
    with pytest.raises(ValueError):
        aml.memory32_fixed(1 << 32, 1)


def test_extended_interrupt_descriptor() -> None:
    # Consumer | Edge, active-high, exclusive = 0x03; one interrupt.
    assert aml.extended_interrupt([5]) == b"\x89\x06\x00\x03\x01\x05\x00\x00\x00"
    level_low_shared = aml.extended_interrupt([40, 41], edge=False, active_low=True, shared=True)
    assert level_low_shared == b"\x89\x0a\x00\x0d\x02" + struct.pack("<II", 40, 41)
    with pytest.raises(ValueError):
        aml.extended_interrupt([])


def test_resource_template_ends_with_zero_checksum_end_tag() -> None:
    template = aml.resource_template([aml.irq_no_flags([4])])
    assert template == b"\x11\x08\x0a\x05\x22\x10\x00\x79\x00"


# --- Table layout, byte level ------------------------------------------------


def test_every_table_checksums_to_zero(config: tuple[int, int, AcpiTables]) -> None:
    _, _, t = config
    assert set(t.tables) == {"RSDP", "XSDT", "FACP", "APIC", "DSDT"}
    for sig, (addr, length) in t.tables.items():
        data = _table(t, sig)
        assert sum(data) % 256 == 0, sig
        if sig == "RSDP":
            assert data[:8] == b"RSD PTR "
            continue
        assert data[:4] == sig.encode()
        assert struct.unpack_from("<I", data, 4)[0] == length
        assert data[10:16] == b"VOLT  " and data[16:24] == b"VOLTVMM " and data[28:32] == b"VOLT"


def test_layout_alignment_and_bounds(config: tuple[int, int, AcpiTables]) -> None:
    _, _, t = config
    assert t.base == layout.ACPI_START == t.rsdp_addr
    assert t.tables["RSDP"] == (t.base, 36)
    assert t.rsdp_addr % 16 == 0
    assert layout.ACPI_START + len(t.blob) <= layout.ACPI_END
    spans = sorted(t.tables.values())
    for (a, la), (b, _) in zip(spans, spans[1:]):
        assert a + la <= b, "tables overlap"
    for sig, (addr, _) in t.tables.items():
        assert addr % 8 == 0, sig


def test_rsdp_points_at_xsdt_with_both_checksums(config: tuple[int, int, AcpiTables]) -> None:
    _, _, t = config
    rsdp = _table(t, "RSDP")
    assert sum(rsdp[:20]) % 256 == 0
    assert sum(rsdp) % 256 == 0
    assert rsdp[15] == 2                                   # revision
    assert struct.unpack_from("<I", rsdp, 20)[0] == 36     # length
    assert struct.unpack_from("<Q", rsdp, 24)[0] == t.tables["XSDT"][0]


def test_xsdt_lists_fadt_and_madt(config: tuple[int, int, AcpiTables]) -> None:
    _, _, t = config
    xsdt = _table(t, "XSDT")
    entries = struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    assert sorted(entries) == sorted([t.tables["FACP"][0], t.tables["APIC"][0]])
    assert {_table(t, s)[:4] for s in ("FACP", "APIC")} == {b"FACP", b"APIC"}


def test_fadt_fields(config: tuple[int, int, AcpiTables]) -> None:
    _, _, t = config
    fadt = _table(t, "FACP")
    assert len(fadt) == 276 and fadt[8] == 6 and fadt[131] & 0x0F == 5
    assert struct.unpack_from("<Q", fadt, 140)[0] == t.tables["DSDT"][0]
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & (1 << 20), "HW_REDUCED_ACPI"
    assert struct.unpack_from("<H", fadt, 46)[0] == 0, "no SCI"
    assert fadt[56:96] == bytes(40), "no PM1/PM2/PM timer/GPE blocks"
    assert struct.unpack_from("<BBBBQ", fadt, 244) == (1, 8, 0, 1, layout.ACPI_SLEEP_CONTROL_PORT)
    assert struct.unpack_from("<BBBBQ", fadt, 256) == (1, 8, 0, 1, layout.ACPI_SLEEP_STATUS_PORT)
    boot_arch = struct.unpack_from("<H", fadt, 109)[0]
    assert boot_arch & acpi.IAPC_BOOT_ARCH_VGA_NOT_PRESENT
    assert boot_arch & acpi.IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED
    assert boot_arch & acpi.IAPC_BOOT_ARCH_8042
    assert not boot_arch & acpi.IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT, "devices/rtc.py exists"
    assert fadt[108] == 0x32, "RTC century register index"
    assert fadt[268:276] == acpi.HYPERVISOR_VENDOR_ID


def _madt_entries(madt: bytes) -> list[bytes]:
    entries, off = [], 44
    while off < len(madt):
        length = madt[off + 1]
        assert length >= 2
        entries.append(madt[off:off + length])
        off += length
    assert off == len(madt)
    return entries


def test_madt_entries(config: tuple[int, int, AcpiTables]) -> None:
    cpus, _, t = config
    madt = _table(t, "APIC")
    assert struct.unpack_from("<II", madt, 36) == (layout.LAPIC_ADDR, acpi.MADT_FLAGS)
    entries = _madt_entries(madt)
    assert len(entries) == cpus + 1 + len(acpi.INTERRUPT_OVERRIDES)
    lapics = [e for e in entries if e[0] == 0]
    assert [struct.unpack("<BBBBI", e) for e in lapics] == [
        (0, 8, i, i, 1) for i in range(cpus)
    ]
    ioapics = [e for e in entries if e[0] == 1]
    assert [struct.unpack("<BBBBII", e) for e in ioapics] == [
        (1, 12, acpi.IOAPIC_ID, 0, layout.IOAPIC_ADDR, 0)
    ]


@pytest.mark.parametrize("cpus", [0, 255, 1000, -1])
def test_absurd_cpu_counts_rejected(cpus: int) -> None:
    with pytest.raises(ValueError):
        build_acpi_tables(cpus)


def test_max_cpus_still_fit() -> None:
    t = build_acpi_tables(acpi.MAX_CPUS, VIRTIO_SETS[3])
    assert len(_madt_entries(_table(t, "APIC"))) == acpi.MAX_CPUS + 1
    assert layout.ACPI_START + len(t.blob) <= layout.ACPI_END


def test_dsdt_contains_devices(config: tuple[int, int, AcpiTables]) -> None:
    _, nvirtio, t = config
    dsdt = _table(t, "DSDT")
    assert aml.eisa_id("PNP0501") in dsdt and aml.eisa_id("PNP0303") in dsdt
    assert dsdt.count(b"\x0dLNRO0005\x00") == nvirtio
    s5 = aml.name("\\_S5_", aml.package(aml.integer(v) for v in (layout.ACPI_S5_SLP_TYP, 0, 0, 0)))
    assert s5 in dsdt
    for n, dev in enumerate(VIRTIO_SETS[nvirtio]):
        assert aml.memory32_fixed(dev.addr, dev.size) + aml.extended_interrupt([dev.irq]) in dsdt
        assert f"V{n:03X}".encode() in dsdt


# --- ACPICA iasl as an independent judge ------------------------------------

IASL_PROBLEM = re.compile(r"error|warning|incorrect|invalid|unknown", re.IGNORECASE)
DSL_PROBLEM = re.compile(r"incorrect|invalid|unknown|\*\*\*\*", re.IGNORECASE)
# Header bytes iasl rewrites when it recompiles a table: checksum, creator id/revision.
RECOMPILED_HEADER_BYTES = {9, *range(28, 36)}


def _iasl(*args: str, cwd: Path) -> str:
    exe = shutil.which("iasl")
    if exe is None:
        pytest.fail("iasl not found: install it with `apt-get install -y acpica-tools`")
    proc = subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"iasl {' '.join(args)} failed:\n{out}"
    return out


def _disassemble(tmp_path: Path, name: str, data: bytes) -> str:
    (tmp_path / f"{name}.dat").write_bytes(data)
    out = _iasl("-d", f"{name}.dat", cwd=tmp_path)
    assert not IASL_PROBLEM.search(out), out
    dsl = (tmp_path / f"{name}.dsl").read_text()
    assert not DSL_PROBLEM.search(dsl), dsl
    return dsl


def _recompile(tmp_path: Path, name: str, dsl: str) -> bytes:
    # iasl wants an 8-character _HID to be an ACPI ID (4 letters, 4 hex digits); Linux's vmgenid
    # driver matches Firecracker's "VMGENCTR" as it is, so iasl judges the rest with a same-length
    # stand-in.
    dsl = dsl.replace('"VMGENCTR"', '"VMGE0000"')
    work = tmp_path / f"re_{name}"
    work.mkdir()
    (work / f"{name}.dsl").write_text(dsl)
    out = _iasl(f"{name}.dsl", cwd=work)
    assert re.search(r"\b0 Errors, 0 Warnings\b", out), out
    return (work / f"{name}.aml").read_bytes()


def _mask_header(data: bytes) -> bytes:
    return bytes(0 if i in RECOMPILED_HEADER_BYTES else b for i, b in enumerate(data))


@pytest.mark.parametrize("sig", ["FACP", "APIC", "XSDT"])
def test_iasl_disassembles_and_reassembles_data_tables(
    tmp_path: Path, config: tuple[int, int, AcpiTables], sig: str
) -> None:
    _, _, t = config
    data = _table(t, sig)
    dsl = _disassemble(tmp_path, sig.lower(), data)
    assert f'Signature : "{sig}"' in dsl
    recompiled = _recompile(tmp_path, sig.lower(), dsl)
    assert _mask_header(recompiled) == _mask_header(data)


def test_iasl_madt_lists_every_cpu(tmp_path: Path, config: tuple[int, int, AcpiTables]) -> None:
    cpus, _, t = config
    dsl = _disassemble(tmp_path, "apic", _table(t, "APIC"))
    assert dsl.count("Processor Local APIC") == cpus
    assert dsl.count("I/O APIC") == 1


def test_iasl_dsdt(tmp_path: Path, config: tuple[int, int, AcpiTables]) -> None:
    _, nvirtio, t = config
    dsl = _disassemble(tmp_path, "dsdt", _table(t, "DSDT"))
    assert 'EisaId ("PNP0501")' in dsl and 'EisaId ("PNP0303")' in dsl
    assert "Device (COM1)" in dsl and "Device (PS2K)" in dsl
    assert "IO (Decode16,\n                    0x03F8," in dsl
    assert "Name (\\_S5, Package (0x04)" in dsl
    assert dsl.count('"LNRO0005"') == nvirtio
    if nvirtio:
        assert "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive" in dsl
        assert "Memory32Fixed (ReadWrite,\n                    0xD0002000," in dsl
    assert 'Name (_HID, "VMGENCTR")' in dsl and 'Name (_CID, "VM_Gen_Counter")' in dsl
    assert "Name (ADDR, Package (0x02)\n            {\n                0x000FF000, \n                Zero" in dsl
    assert 'Name (_HID, "ACPI0013"' in dsl and "Notify (\\_SB.VGEN, 0x80)" in dsl
    assert f"0x{layout.GED_GSI:08X}," in dsl
    _recompile(tmp_path, "dsdt", dsl)


def test_interrupt_overrides_are_encoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """None are emitted today; a VMM that reroutes GSIs adds them, so the path must work."""
    monkeypatch.setattr(acpi, "INTERRUPT_OVERRIDES", ((0, 2, 0), (9, 9, 0x000D)))
    madt = _table(build_acpi_tables(2), "APIC")
    entries = _madt_entries(madt)
    assert len(entries) == 2 + 1 + 2
    assert entries[-2:] == [
        struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0),
        struct.pack("<BBBBIH", 2, 10, 0, 9, 9, 0x000D),
    ]
    dsl = _disassemble(tmp_path, "apic", madt)
    assert dsl.count("Interrupt Source Override") == 2


def test_iasl_compiles_same_rsdp(tmp_path: Path, config: tuple[int, int, AcpiTables]) -> None:
    """This iasl cannot disassemble an RSDP, so compile one from the same fields and compare:
    iasl computes both checksums itself."""
    _, _, t = config
    rsdp = _table(t, "RSDP")
    xsdt_addr = t.tables["XSDT"][0]
    asl = "\n".join([
        '[0008] Signature : "RSD PTR "',
        "[0001] Checksum : 00",
        f'[0006] Oem ID : "{acpi.OEM_ID.decode()}"',
        "[0001] Revision : 02",
        "[0004] RSDT Address : 00000000",
        "[0004] Length : 00000024",
        f"[0008] XSDT Address : {xsdt_addr:016X}",
        "[0001] Extended Checksum : 00",
        "[0003] Reserved : 000000",
        "",
    ])
    assert _recompile(tmp_path, "rsdp", asl) == rsdp


def test_iasl_accepts_large_dsdt_with_three_byte_pkg_lengths(tmp_path: Path) -> None:
    virtio = [
        VirtioMmioDesc(layout.VIRTIO_MMIO_BASE + n * layout.VIRTIO_MMIO_SIZE, 0x1000, 5 + n)
        for n in range(100)
    ]
    t = build_acpi_tables(acpi.MAX_CPUS, virtio)
    dsdt = _table(t, "DSDT")
    scope_at = 36
    assert dsdt[scope_at] == aml.SCOPE_OP and dsdt[scope_at + 1] >> 6 == 2, "3-byte PkgLength"
    dsl = _disassemble(tmp_path, "dsdt", dsdt)
    assert dsl.count('"LNRO0005"') == 100 and "Device (V063)" in dsl
    _recompile(tmp_path, "dsdt", dsl)
