"""ACPI tables for a hardware-reduced x86 microVM, built byte by byte.

The guest finds the RSDP at `layout.ACPI_START` (the legacy 0xE0000 scan area,
and the address the boot protocols pass), which points at the XSDT, which lists
the FADT and the MADT; the FADT points at the DSDT. Debian's cloud kernel has
no MP-table parser and no virtio-mmio command line devices, so the MADT is how
it finds the extra vCPUs and the DSDT is how it finds COM1, the i8042 and the
virtio-mmio windows. Layouts follow the ACPI 6.5 specification, section 5.2.
"""

from __future__ import annotations

import struct

from volt_spec import layout
from volt_spec.boot import aml

# Boot path: no `dataclasses` (it pulls in `inspect`), `typing` or `collections`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

# Table header identity (5.2.6).
OEM_ID = b"VOLT  "
OEM_TABLE_ID = b"VOLTVMM "
OEM_REVISION = 1
CREATOR_ID = b"VOLT"
CREATOR_REVISION = 1
HEADER_LEN = 36

# RSDP (5.2.5.3).
RSDP_SIGNATURE = b"RSD PTR "
RSDP_REVISION = 2                 # ACPI 2.0+: has the XSDT address and extended checksum
RSDP_LEN = 36
RSDP_V1_LEN = 20                  # the part the first checksum covers
RSDP_ALIGN = 16
TABLE_ALIGN = 8

# Revisions of the tables we write.
DSDT_REVISION = 2                 # >= 2: AML integers are 64-bit
XSDT_REVISION = 1
FADT_REVISION = 6
FADT_MINOR_REVISION = 5           # FADT 6.5
MADT_REVISION = 5

# FADT (5.2.9): field offsets in the 276-byte revision-6 layout.
FADT_LEN = 276
FADT_OFF_CENTURY = 108
FADT_OFF_IAPC_BOOT_ARCH = 109
FADT_OFF_FLAGS = 112
FADT_OFF_MINOR_REVISION = 131
FADT_OFF_X_DSDT = 140
FADT_OFF_SLEEP_CONTROL_REG = 244
FADT_OFF_SLEEP_STATUS_REG = 256
FADT_OFF_HYPERVISOR_VENDOR = 268
HYPERVISOR_VENDOR_ID = b"VOLTSPEC"
# FADT flags (5.2.9, Table 5.10).
FADT_F_PWR_BUTTON = 1 << 4        # no fixed-feature power button
FADT_F_SLP_BUTTON = 1 << 5        # no fixed-feature sleep button
FADT_F_HW_REDUCED_ACPI = 1 << 20  # no PM1/GPE blocks, no SCI, no legacy ACPI mode
# IA-PC boot architecture flags (5.2.9.3).
IAPC_BOOT_ARCH_8042 = 1 << 1           # our i8042 exists (PS2K in the DSDT)
IAPC_BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2
IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED = 1 << 3  # no PCI at all, so no MSI
IAPC_BOOT_ARCH_PCIE_ASPM_CONTROLS = 1 << 4  # the OS must not touch ASPM
IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT = 1 << 5  # left clear: devices/rtc.py is at 0x70
IAPC_BOOT_ARCH = (
    IAPC_BOOT_ARCH_8042
    | IAPC_BOOT_ARCH_VGA_NOT_PRESENT
    | IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED
    | IAPC_BOOT_ARCH_PCIE_ASPM_CONTROLS
)
# CMOS index of the RTC's century byte (the IBM PC location our RTC model answers);
# Linux's mc146818_get_time reads it when the FADT names it.
RTC_CENTURY_INDEX = 0x32

# Generic Address Structure (5.2.3.2).
GAS_SPACE_SYSTEM_IO = 1
GAS_ACCESS_BYTE = 1

# MADT (5.2.12).
MADT_FLAG_PCAT_COMPAT = 1 << 0
MADT_TYPE_LOCAL_APIC = 0
MADT_TYPE_IO_APIC = 1
MADT_TYPE_INTERRUPT_OVERRIDE = 2
MADT_LOCAL_APIC_LEN = 8
MADT_IO_APIC_LEN = 12
MADT_INTERRUPT_OVERRIDE_LEN = 10
MADT_LOCAL_APIC_ENABLED = 1 << 0
IOAPIC_ID = 0                     # KVM's in-kernel IOAPIC resets its ID register to 0
IOAPIC_GSI_BASE = 0
MAX_CPUS = 254                    # xAPIC ids 0..254; 0xFF is the broadcast id

# PCAT_COMPAT=1: KVM_CREATE_IRQCHIP really creates the dual 8259 next to the
# IOAPIC, so an OS that honours the flag masks it before using the IOAPIC.
# Linux ignores it here anyway: with HW_REDUCED_ACPI it installs null_legacy_pic.
MADT_FLAGS = MADT_FLAG_PCAT_COMPAT

# Interrupt source overrides: none. Without one, ACPI maps ISA IRQ n to GSI n,
# edge-triggered, active-high, and Linux sets up exactly that identity map for
# IRQs 0-15. That matches KVM's default GSI routing, where GSI n drives IOAPIC
# pin n (and PIC pin n for n < 16), so the in-kernel PIT's IRQ0 arrives at pin 0.
# QEMU needs "IRQ0 -> GSI 2" only because it installs its own routing that
# sends GSI 0 to pin 2; we never call KVM_SET_GSI_ROUTING. Firecracker's MADT
# likewise has no override; cloud-hypervisor adds only an identity one (ISA
# IRQ 4 -> GSI 4, flags 0), which says nothing the default does not. In
# hardware-reduced mode Linux does not use the PIT or an SCI, so no override
# for IRQ0 or IRQ9 is needed either. A VMM that reroutes GSIs must add entries
# here (`(isa_irq, gsi, mps_inti_flags)`).
INTERRUPT_OVERRIDES: tuple[tuple[int, int, int], ...] = ()

# DSDT device identities.
COM1_HID = "PNP0501"              # 16550A-compatible UART
PS2_KEYBOARD_HID = "PNP0303"      # IBM Enhanced (101/102-key) PS/2 keyboard
VIRTIO_MMIO_HID = "LNRO0005"      # what Linux's virtio_mmio driver matches over ACPI
VMGENID_HID = "VMGENCTR"          # Linux's vmgenid driver matches it (Firecracker's _HID)
VMGENID_CID = "VM_Gen_Counter"    # Microsoft's VM Generation ID spec (QEMU's _CID)
GED_HID = "ACPI0013"              # Generic Event Device: an interrupt that runs _EVT
NOTIFY_DEVICE_CHECK = 0x80        # the notify value Microsoft's spec gives for a new generation ID
COM1_PORT_COUNT = 8
STA_PRESENT_ENABLED_SHOWN_OK = 0x0F


class _Record:
    """A small immutable record: the frozen-dataclass behaviour we use, without the import.

    Subclasses list their fields in `__slots__`; the constructor takes them
    positionally or by keyword, and equality/repr/hash go by those fields.
    """

    __slots__ = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, field) for field in self.__slots__)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable (cannot delete {name!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({fields})"


class VirtioMmioDesc(_Record):
    """One virtio-mmio window and its interrupt, as the DSDT describes it."""

    __slots__ = ("addr", "size", "irq")

    addr: int
    size: int
    irq: int

    def __init__(self, addr: int, size: int, irq: int) -> None:
        object.__setattr__(self, "addr", addr)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "irq", irq)


class AcpiTables(_Record):
    """The tables as one blob to copy to guest memory at `base`."""

    __slots__ = ("base", "blob", "rsdp_addr", "tables")

    base: int
    blob: bytes
    rsdp_addr: int
    tables: dict[str, tuple[int, int]]

    def __init__(
        self, base: int, blob: bytes, rsdp_addr: int, tables: dict[str, tuple[int, int]]
    ) -> None:
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "blob", blob)
        object.__setattr__(self, "rsdp_addr", rsdp_addr)
        object.__setattr__(self, "tables", tables)


def checksum(data: bytes) -> int:
    """The byte that makes `data` plus it sum to 0 mod 256."""
    return -sum(data) & 0xFF


def _with_checksum(table: bytearray, offset: int) -> bytes:
    table[offset] = 0
    table[offset] = checksum(table)
    return bytes(table)


def _sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A complete table: standard header (length and checksum filled in) + body."""
    header = struct.pack(
        "<4sIBB6s8sI4sI",
        signature, HEADER_LEN + len(body), revision, 0,
        OEM_ID, OEM_TABLE_ID, OEM_REVISION, CREATOR_ID, CREATOR_REVISION,
    )
    return _with_checksum(bytearray(header + body), 9)


def _gas_io_byte(port: int) -> bytes:
    """A Generic Address Structure for one 8-bit register in System I/O space."""
    return struct.pack("<BBBBQ", GAS_SPACE_SYSTEM_IO, 8, 0, GAS_ACCESS_BYTE, port)


def build_dsdt(virtio: Sequence[VirtioMmioDesc] = ()) -> bytes:
    """The DSDT: COM1, the PS/2 keyboard, the virtio-mmio windows and \\_S5_."""
    com1 = aml.device("COM1", [
        aml.name("_HID", aml.eisa_id(COM1_HID)),
        aml.name("_UID", aml.integer(0)),
        aml.name("_STA", aml.integer(STA_PRESENT_ENABLED_SHOWN_OK)),
        aml.name("_CRS", aml.resource_template([
            aml.io(layout.COM1_PORT, layout.COM1_PORT, 0, COM1_PORT_COUNT),
            aml.irq_no_flags([layout.COM1_IRQ]),
        ])),
    ])
    ps2k = aml.device("PS2K", [
        aml.name("_HID", aml.eisa_id(PS2_KEYBOARD_HID)),
        aml.name("_STA", aml.integer(STA_PRESENT_ENABLED_SHOWN_OK)),
        aml.name("_CRS", aml.resource_template([
            aml.io(layout.I8042_DATA_PORT, layout.I8042_DATA_PORT, 1, 1),
            aml.io(layout.I8042_CMD_PORT, layout.I8042_CMD_PORT, 1, 1),
            aml.irq_no_flags([layout.I8042_IRQ]),
        ])),
    ])
    virtio_devices = [
        aml.device(f"V{n:03X}", [
            aml.name("_HID", aml.string(VIRTIO_MMIO_HID)),
            aml.name("_UID", aml.integer(n)),
            aml.name("_CRS", aml.resource_template([
                aml.memory32_fixed(dev.addr, dev.size),
                aml.extended_interrupt([dev.irq]),
            ])),
        ])
        for n, dev in enumerate(virtio)
    ]
    # \_S5_: SLP_TYPa, SLP_TYPb, reserved, reserved. Linux writes SLP_TYPa to
    # SLEEP_CONTROL_REG to power off a hardware-reduced machine.
    s5 = aml.name("\\_S5_", aml.package(
        aml.integer(v) for v in (layout.ACPI_S5_SLP_TYP, 0, 0, 0)
    ))
    body = aml.scope("\\_SB_", [com1, ps2k, *virtio_devices, *vmgenid_devices()]) + s5
    return _sdt(b"DSDT", DSDT_REVISION, body)


def vmgenid_devices() -> list[bytes]:
    """VGEN, whose ADDR names the 16-byte VM generation ID in guest memory, and a GED whose interrupt
    (layout.GED_GSI, raised by the VMM after a restore writes a new ID) makes Linux notify VGEN:
    its vmgenid driver then re-reads the ID and reseeds the kernel's RNG."""
    vgen = aml.device("VGEN", [
        aml.name("_HID", aml.string(VMGENID_HID)),
        aml.name("_CID", aml.string(VMGENID_CID)),
        aml.name("_DDN", aml.string(VMGENID_CID)),
        aml.name("ADDR", aml.package([aml.integer(layout.VMGENID_ADDR & 0xFFFF_FFFF),
                                      aml.integer(layout.VMGENID_ADDR >> 32)])),
    ])
    ged = aml.device("GED_", [
        aml.name("_HID", aml.string(GED_HID)),
        aml.name("_UID", aml.integer(0)),
        aml.name("_CRS", aml.resource_template([aml.extended_interrupt([layout.GED_GSI])])),
        aml.method("_EVT", 1, [aml.notify("\\_SB_.VGEN", NOTIFY_DEVICE_CHECK)]),
    ])
    return [vgen, ged]


def build_fadt(dsdt_addr: int) -> bytes:
    """A hardware-reduced revision-6 FADT: no FACS, SCI, PM or GPE blocks."""
    table = bytearray(FADT_LEN)
    table[FADT_OFF_CENTURY] = RTC_CENTURY_INDEX
    struct.pack_into("<H", table, FADT_OFF_IAPC_BOOT_ARCH, IAPC_BOOT_ARCH)
    struct.pack_into(
        "<I", table, FADT_OFF_FLAGS,
        FADT_F_HW_REDUCED_ACPI | FADT_F_PWR_BUTTON | FADT_F_SLP_BUTTON,
    )
    table[FADT_OFF_MINOR_REVISION] = FADT_MINOR_REVISION
    # Only X_DSDT: the spec says OSPM ignores the 32-bit DSDT field when X_DSDT is set.
    struct.pack_into("<Q", table, FADT_OFF_X_DSDT, dsdt_addr)
    table[FADT_OFF_SLEEP_CONTROL_REG:FADT_OFF_SLEEP_CONTROL_REG + 12] = _gas_io_byte(
        layout.ACPI_SLEEP_CONTROL_PORT
    )
    table[FADT_OFF_SLEEP_STATUS_REG:FADT_OFF_SLEEP_STATUS_REG + 12] = _gas_io_byte(
        layout.ACPI_SLEEP_STATUS_PORT
    )
    table[FADT_OFF_HYPERVISOR_VENDOR:FADT_LEN] = HYPERVISOR_VENDOR_ID
    return _sdt(b"FACP", FADT_REVISION, bytes(table[HEADER_LEN:]))


def build_madt(num_cpus: int) -> bytes:
    """The MADT: one enabled local APIC per vCPU (UID = APIC id = index), one IOAPIC."""
    body = bytearray(struct.pack("<II", layout.LAPIC_ADDR, MADT_FLAGS))
    for cpu in range(num_cpus):
        body += struct.pack(
            "<BBBBI", MADT_TYPE_LOCAL_APIC, MADT_LOCAL_APIC_LEN, cpu, cpu, MADT_LOCAL_APIC_ENABLED
        )
    body += struct.pack(
        "<BBBBII", MADT_TYPE_IO_APIC, MADT_IO_APIC_LEN, IOAPIC_ID, 0,
        layout.IOAPIC_ADDR, IOAPIC_GSI_BASE,
    )
    for isa_irq, gsi, flags in INTERRUPT_OVERRIDES:
        body += struct.pack(
            "<BBBBIH", MADT_TYPE_INTERRUPT_OVERRIDE, MADT_INTERRUPT_OVERRIDE_LEN, 0, isa_irq,
            gsi, flags,
        )
    return _sdt(b"APIC", MADT_REVISION, bytes(body))


def build_xsdt(table_addrs: Sequence[int]) -> bytes:
    """The XSDT: 64-bit pointers to every table but the DSDT (the FADT points at that)."""
    return _sdt(b"XSDT", XSDT_REVISION, b"".join(struct.pack("<Q", a) for a in table_addrs))


def build_rsdp(xsdt_addr: int) -> bytes:
    """A revision-2 RSDP with both checksums; no RSDT (every ACPI 2.0+ OS uses the XSDT)."""
    rsdp = bytearray(struct.pack(
        "<8sB6sBIIQB3s", RSDP_SIGNATURE, 0, OEM_ID, RSDP_REVISION, 0, RSDP_LEN, xsdt_addr, 0,
        b"\0\0\0",
    ))
    rsdp[8] = checksum(rsdp[:RSDP_V1_LEN])
    rsdp[32] = checksum(rsdp)
    return bytes(rsdp)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & -alignment


def build_acpi_tables(num_cpus: int, virtio: Sequence[VirtioMmioDesc] = ()) -> AcpiTables:
    """Lay out RSDP, DSDT, FADT, MADT and XSDT from `layout.ACPI_START` upwards."""
    if not 1 <= num_cpus <= MAX_CPUS:
        raise ValueError(f"num_cpus must be 1..{MAX_CPUS}, got {num_cpus}")
    base = layout.ACPI_START
    assert base % RSDP_ALIGN == 0
    tables: dict[str, tuple[int, int]] = {}
    cursor = base + _align(RSDP_LEN, TABLE_ALIGN)
    placed: list[tuple[int, bytes]] = []

    def place(signature: str, table: bytes) -> int:
        nonlocal cursor
        addr = cursor
        tables[signature] = (addr, len(table))
        placed.append((addr, table))
        cursor = _align(addr + len(table), TABLE_ALIGN)
        return addr

    dsdt_addr = place("DSDT", build_dsdt(virtio))
    fadt_addr = place("FACP", build_fadt(dsdt_addr))
    madt_addr = place("APIC", build_madt(num_cpus))
    xsdt_addr = place("XSDT", build_xsdt([fadt_addr, madt_addr]))
    rsdp = build_rsdp(xsdt_addr)
    tables["RSDP"] = (base, len(rsdp))
    placed.append((base, rsdp))

    blob = bytearray(cursor - base)
    for addr, table in placed:
        blob[addr - base:addr - base + len(table)] = table
    assert base + len(blob) <= layout.ACPI_END, "ACPI tables overflow the ACPI area"
    return AcpiTables(base=base, blob=bytes(blob), rsdp_addr=base, tables=tables)
