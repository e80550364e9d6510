"""Identity page tables and boot GDT descriptors, checked bit by bit."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from volt_spec import layout
from volt_spec.boot.pagetables import (
    BOOT_CS,
    BOOT_DS,
    BOOT_GDT_32,
    BOOT_GDT_64,
    TSS,
    Descriptor,
    boot_gdt_write,
    boot_segments,
    gdt_bytes,
    gdt_entry_to_segment,
    gdt_limit,
    identity_map_writes,
)


def _qwords(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 8}Q", data))


def _tables() -> dict[int, bytes]:
    return dict(identity_map_writes())


def test_tables_sit_at_the_layout_addresses():
    tables = _tables()
    assert set(tables) == {layout.PML4_ADDR, layout.PDPT_ADDR, layout.PD_ADDR}
    assert len(tables[layout.PML4_ADDR]) == 4096
    assert len(tables[layout.PDPT_ADDR]) == 4096
    assert len(tables[layout.PD_ADDR]) == layout.PD_COUNT * 4096
    assert layout.PD_ADDR + layout.PD_COUNT * 4096 <= layout.CMDLINE_ADDR


def test_pml4_points_to_pdpt():
    pml4 = _qwords(_tables()[layout.PML4_ADDR])
    assert pml4[0] == layout.PDPT_ADDR | 0b11          # present, writable
    assert pml4[1:] == [0] * 511


def test_pdpt_points_to_four_pds():
    pdpt = _qwords(_tables()[layout.PDPT_ADDR])
    assert pdpt[:4] == [layout.PD_ADDR + i * 4096 | 0b11 for i in range(4)]
    assert pdpt[4:] == [0] * 508


def test_pd_entries_identity_map_4gib_with_2mib_pages():
    pds = _qwords(_tables()[layout.PD_ADDR])
    assert len(pds) == 2048
    assert pds[0] == 0x83                                # 0 | PS | RW | P
    assert pds[1] == 0x20_0000 | 0x83
    assert pds[512] == 1 * layout.GiB | 0x83
    assert pds[-1] == 4 * layout.GiB - 2 * layout.MiB | 0x83
    assert all(e & 0xFFF == 0x83 and e >> 21 == i for i, e in enumerate(pds))


def test_boot_gdt_64_matches_linux_boot_selectors():
    addr, table = boot_gdt_write(BOOT_GDT_64)
    assert addr == layout.BOOT_GDT_ADDR
    entries = _qwords(table)
    assert entries[0] == 0 and entries[1] == 0
    assert entries[BOOT_CS >> 3] == 0x00AF_9B00_0000_FFFF    # 64-bit code, execute/read
    assert entries[BOOT_DS >> 3] == 0x00CF_9300_0000_FFFF    # flat data, read/write
    assert addr + len(table) <= layout.BOOT_IDT_ADDR
    assert gdt_limit(BOOT_GDT_64) == len(table) - 1 == 31


def test_boot_gdt_32_for_pvh():
    entries = _qwords(gdt_bytes(BOOT_GDT_32))
    assert entries[BOOT_CS >> 3] == 0x00CF_9B00_0000_FFFF    # 32-bit flat code
    assert entries[BOOT_DS >> 3] == 0x00CF_9300_0000_FFFF


def test_segments_for_kvm():
    cs = gdt_entry_to_segment(BOOT_CS, 0x00AF_9B00_0000_FFFF)
    assert cs == dict(base=0, limit=0xFFFF_FFFF, selector=0x10, type=0xB, present=1, dpl=0,
                      db=0, s=1, l=1, g=1, avl=0, unusable=0)
    ds = gdt_entry_to_segment(BOOT_DS, BOOT_GDT_64[3])
    assert (ds["type"], ds["db"], ds["l"], ds["s"], ds["selector"]) == (3, 1, 0, 1, 0x18)
    cs32 = gdt_entry_to_segment(BOOT_CS, BOOT_GDT_32[2])
    assert (cs32["db"], cs32["l"]) == (1, 0)
    null = gdt_entry_to_segment(0, 0)
    assert null["unusable"] == 1 and null["present"] == 0


def test_byte_granular_limit_is_not_scaled():
    seg = gdt_entry_to_segment(0x8, Descriptor(base=0x1234_5678, limit=0x67, type=0xB, present=1))
    assert seg["limit"] == 0x67 and seg["base"] == 0x1234_5678


def test_boot_segments_cover_every_register():
    segs = boot_segments()
    assert segs["cs"]["selector"] == BOOT_CS and segs["cs"]["l"] == 1
    for name in ("ds", "es", "fs", "gs", "ss"):
        assert segs[name]["selector"] == BOOT_DS and segs[name]["type"] == 3
    assert segs["tr"]["type"] == TSS.type == 0xB and segs["tr"]["s"] == 0 and segs["tr"]["present"] == 1


@given(
    base=st.integers(0, 2**32 - 1), limit=st.integers(0, 2**20 - 1), type_=st.integers(0, 15),
    s=st.integers(0, 1), dpl=st.integers(0, 3), present=st.integers(0, 1), avl=st.integers(0, 1),
    l=st.integers(0, 1), db=st.integers(0, 1), g=st.integers(0, 1),
)
def test_descriptor_encoding_round_trips(base, limit, type_, s, dpl, present, avl, l, db, g):  # noqa: E741
    d = Descriptor(base=base, limit=limit, type=type_, s=s, dpl=dpl, present=present,
                   avl=avl, l=l, db=db, g=g)
    raw = d.encode()
    assert 0 <= raw < 2**64
    assert Descriptor.decode(raw) == d
    assert (raw >> 47) & 1 == present and (raw >> 53) & 1 == l
