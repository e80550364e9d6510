/*
 * acpi.c - the few ACPI facts the guest needs: CPUs (MADT), power-off (FADT, \_S5) and where
 * the VM generation ID lives (the DSDT's VGEN device's ADDR package).
 *
 * Table checksums are not verified: each byte read in ring 0 costs
 * microseconds on PVM, and the VMM/firmware that wrote them is trusted.
 */
#include "kernel.h"

struct sdt_header {
    char sig[4];
    u32 length;
    u8 revision, checksum;
    char oem_id[6], oem_table_id[8];
    u32 oem_revision, creator_id, creator_revision;
} __attribute__((packed));

struct rsdp {
    char sig[8];
    u8 checksum;
    char oem_id[6];
    u8 revision;
    u32 rsdt;
    u32 length;
    u64 xsdt;
} __attribute__((packed));

/* Generic Address Structure. */
struct gas {
    u8 space_id, bit_width, bit_offset, access_size;
    u64 address;
} __attribute__((packed));

#define MADT_ENTRIES_OFFSET     44
#define MADT_LAPIC              0
#define MADT_X2APIC             9
#define MADT_ENABLED            1
#define FADT_DSDT               40
#define FADT_PM1A_CNT           64
#define FADT_PM1B_CNT           68
#define FADT_FLAGS              112
#define FADT_X_DSDT             140
#define FADT_SLEEP_CONTROL      244
#define FADT_HW_REDUCED_ACPI    (1u << 20)
#define GAS_SYSTEM_MEMORY       0
#define GAS_SYSTEM_IO           1
#define SLP_EN_HW_REDUCED       (1u << 5)   /* SLEEP_CONTROL_REG: SLP_TYP at bits 4:2 */
#define SLP_TYP_SHIFT_HW_REDUCED 2
#define SLP_EN_PM1              (1u << 13)  /* PM1x_CNT: SLP_TYP at bits 12:10 */
#define SLP_TYP_SHIFT_PM1       10
#define DEFAULT_S5_SLP_TYP      5           /* layout.ACPI_S5_SLP_TYP */
#define AML_PACKAGE_OP          0x12
#define AML_BYTE_PREFIX         0x0a
#define AML_ONES_OP             0xff
#define BIOS_AREA_START         0xe0000
#define BIOS_AREA_END           0x100000

struct platform platform;
static const u8 *fadt;

static u64 find_dsdt(void);

static int sig_is(const void *p, const char *sig)
{
    return *(const u32 *)p == *(const u32 *)sig;
}

static u64 find_rsdp(u64 hint)
{
    if (hint)
        return hint;
    /* Legacy scan: only when the loader gave no rsdp_paddr (costly in ring 0). */
    for (u64 a = BIOS_AREA_START; a < BIOS_AREA_END; a += 16)
        if (sig_is((void *)a, "RSD ") && sig_is((void *)(a + 4), "PTR "))
            return a;
    return 0;
}

static void parse_madt(const u8 *madt)
{
    u32 len = ((const struct sdt_header *)madt)->length;
    for (u32 off = MADT_ENTRIES_OFFSET; off + 2 <= len && madt[off + 1]; off += madt[off + 1]) {
        const u8 *e = madt + off;
        u32 id, flags;
        switch (e[0]) {
        case MADT_LAPIC:
            id = e[3];
            flags = *(const u32 *)(e + 4);
            break;
        case MADT_X2APIC:
            id = *(const u32 *)(e + 4);
            flags = *(const u32 *)(e + 8);
            break;
        default:
            continue;
        }
        if (!(flags & MADT_ENABLED))
            continue;
        int seen = 0;
        for (u32 i = 0; i < platform.cpu_count; i++)
            seen |= platform.apic_ids[i] == id;
        if (!seen && platform.cpu_count < MAX_CPUS)
            platform.apic_ids[platform.cpu_count++] = id;
    }
}

void acpi_init(u64 rsdp_paddr)
{
    platform.cpu_count = 0;
    platform.rsdp = find_rsdp(rsdp_paddr);
    if (!platform.rsdp)
        return;
    const struct rsdp *r = (const struct rsdp *)platform.rsdp;
    int wide = r->revision >= 2 && r->xsdt;
    const struct sdt_header *root = (const void *)(wide ? r->xsdt : (u64)r->rsdt);
    u32 n = (root->length - sizeof(*root)) / (wide ? 8 : 4);
    const u8 *entries = (const u8 *)(root + 1);
    for (u32 i = 0; i < n; i++) {
        u64 addr = wide ? *(const u64 *)(entries + 8 * i) : *(const u32 *)(entries + 4 * i);
        const u8 *t = (const u8 *)addr;
        if (sig_is(t, "APIC"))
            parse_madt(t);
        else if (sig_is(t, "FACP"))
            fadt = t;
    }
    if (fadt)
        platform.dsdt = find_dsdt();
}

static u64 find_dsdt(void)
{
    u32 fadt_len = ((const struct sdt_header *)fadt)->length;
    u64 dsdt = 0;
    if (fadt_len >= FADT_X_DSDT + 8)
        dsdt = *(const u64 *)(fadt + FADT_X_DSDT);
    if (!dsdt)
        dsdt = *(const u32 *)(fadt + FADT_DSDT);
    return dsdt;
}

/* SLP_TYP of \_S5: find "_S5_" PackageOp in the DSDT and decode element 0. */
static u32 s5_slp_typ(void)
{
    u64 dsdt = platform.dsdt;
    if (!dsdt)
        return DEFAULT_S5_SLP_TYP;
    const u8 *aml = (const u8 *)dsdt;
    u32 len = ((const struct sdt_header *)aml)->length;
    for (u32 i = sizeof(struct sdt_header); i + 8 < len; i++) {
        if (!sig_is(aml + i, "_S5_") || aml[i + 4] != AML_PACKAGE_OP)
            continue;
        const u8 *p = aml + i + 5;
        p += 1 + (p[0] >> 6);       /* PkgLength: lead byte + (bits 7:6) more bytes */
        p += 1;                     /* NumElements */
        if (p[0] == AML_BYTE_PREFIX)
            return p[1];
        if (p[0] == AML_ONES_OP)
            return DEFAULT_S5_SLP_TYP;
        return p[0];                /* ZeroOp (0) / OneOp (1) */
    }
    return DEFAULT_S5_SLP_TYP;
}

/* An AML integer at p (ZeroOp, OneOp, Byte/Word/DWord/QWord constant); *len gets its size. */
static u64 aml_integer(const u8 *p, u32 *len)
{
    u32 size = p[0] == 0x0a ? 1 : p[0] == 0x0b ? 2 : p[0] == 0x0c ? 4 : p[0] == 0x0e ? 8 : 0;
    u64 v = size ? 0 : (p[0] == 0x01);
    for (u32 i = 0; i < size; i++)
        v |= (u64)p[1 + i] << (8 * i);
    *len = 1 + size;
    return v;
}

/* The guest-physical address of the 16-byte VM generation ID: the DSDT's "ADDR" package of two
 * integers (low, high dword) when a "VMGENCTR" device is there, else 0. */
u64 acpi_vmgenid_addr(void)
{
    const u8 *aml = (const u8 *)platform.dsdt;
    if (!aml)
        return 0;
    u32 len = ((const struct sdt_header *)aml)->length;
    int found = 0;
    for (u32 i = sizeof(struct sdt_header); i + 8 < len && !found; i++)
        found = sig_is(aml + i, "VMGE") && sig_is(aml + i + 4, "NCTR");
    for (u32 i = sizeof(struct sdt_header); found && i + 24 < len; i++) {
        if (!sig_is(aml + i, "ADDR") || aml[i + 4] != AML_PACKAGE_OP)
            continue;
        const u8 *p = aml + i + 5;
        p += 1 + (p[0] >> 6);       /* PkgLength */
        if (*p++ != 2)              /* NumElements */
            return 0;
        u32 n;
        u64 low = aml_integer(p, &n);
        u64 high = aml_integer(p + n, &n);
        return (low & 0xffffffffu) | (high << 32);
    }
    return 0;
}

static int poweroff_started;

void acpi_poweroff(void)
{
    print("VOLT-POWEROFF");
    if (fadt && !__atomic_exchange_n(&poweroff_started, 1, __ATOMIC_SEQ_CST)) {
        u32 fadt_len = ((const struct sdt_header *)fadt)->length;
        u32 flags = *(const u32 *)(fadt + FADT_FLAGS);
        u32 typ = s5_slp_typ();
        if ((flags & FADT_HW_REDUCED_ACPI) && fadt_len >= FADT_SLEEP_CONTROL + sizeof(struct gas)) {
            const struct gas *g = (const struct gas *)(fadt + FADT_SLEEP_CONTROL);
            u8 v = (u8)((typ << SLP_TYP_SHIFT_HW_REDUCED) | SLP_EN_HW_REDUCED);
            if (g->space_id == GAS_SYSTEM_IO)
                outb((u16)g->address, v);
            else if (g->space_id == GAS_SYSTEM_MEMORY)
                *(volatile u8 *)g->address = v;
        } else {
            u16 v = (u16)((typ << SLP_TYP_SHIFT_PM1) | SLP_EN_PM1);
            u32 pm1a = *(const u32 *)(fadt + FADT_PM1A_CNT);
            u32 pm1b = *(const u32 *)(fadt + FADT_PM1B_CNT);
            if (pm1a)
                outw((u16)pm1a, v);
            if (pm1b)
                outw((u16)pm1b, v);
        }
    }
    halt_forever();
}
