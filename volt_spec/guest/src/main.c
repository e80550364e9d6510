/*
 * main.c - BSP boot sequence, command line, interrupt dispatch, AP entry.
 *
 * Boot: PVH info -> kvmclock -> ACPI (CPUs) -> x2APIC -> start APs and wait
 * (halted, woken by their IPIs) -> VOLT-READY -> ticks / ring-3 workload
 * (volt.mem, volt.dirty, and the virtio tasks volt.blk / volt.net, all in user.c).
 */
#include "virtio.h"

#define HVM_START_MAGIC     0x336ec578
#define E820_RAM            1
#define FOUR_GIB            (4UL << 30)
#define MIB                 (1UL << 20)
#define AP_WAIT_MS          2000
#define MEM_REGION_BASE     (16 * MIB)  /* workload region: above the kernel image */
#define MEM_REPORT_MS       1000        /* at most one mem-ok line per this, after the first */
#define UD_VECTOR           6
#define INT_OPCODE          0xcd
#define SCANCODE_EXTENDED   0xe0
#define SCANCODE_DELETE     0x53        /* set 1 (translated) Delete, after 0xe0 */
#define SCANCODE2_DELETE    0x71        /* set 2 Delete, after 0xe0 */
#define I8042_DATA          0x60        /* layout.I8042_DATA_PORT */
#define I8042_STATUS        0x64        /* layout.I8042_CMD_PORT */
#define I8042_OBF           0x01
#define I8042_DRAIN_MAX     16

struct hvm_start_info {
    u32 magic, version, flags, nr_modules;
    u64 modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    u32 memmap_entries, reserved;
};

struct hvm_memmap_entry {
    u64 addr, size;
    u32 type, reserved;
};

struct config {
    int ticks_given;
    u64 ticks;          /* 0 with ticks_given: tick forever */
    u64 tick_ms;
    u64 mem_mib;
    u64 dirty_mib;
    int poweroff;
    int io;             /* volt.blk= or volt.net= given: ring 3 drives virtio devices */
    int vmgenid;        /* volt.vmgenid: print the VM generation ID at boot and whenever it changes */
};

static struct config cfg = { .tick_ms = 1000 };
static u64 tick_count;
static int ticking;
static u64 tick_period_tsc;
static int kbd_extended;
volatile u32 ap_up_count;
u32 bsp_apic_id;
static u64 ram_ranges[8][2];
static u32 ram_range_count;
static u8 user_stack[USER_STACK_SIZE] __attribute__((aligned(16)));
static struct user_args user_args;
static const char *cmdline_text = "";

/* ---- command line ---- */

/*
 * Ring 0 pays microseconds per instruction, so the scan works 8 bytes at a
 * time: SWAR search for the next space/NUL, 8-byte key compares.
 */
#define ONES        0x0101010101010101UL
#define HIGHS       0x8080808080808080UL
#define SPACES      (ONES * ' ')

static inline u64 load8(const char *p) { return *(const u64 *)p; }

static inline u64 zero_bytes(u64 v) { return (v - ONES) & ~v & HIGHS; }

/* Length of the word at s (up to the next ' ' or NUL). */
static u32 word_len(const char *s)
{
    for (u32 n = 0;; n += 8) {
        u64 v = load8(s + n);
        u64 hit = zero_bytes(v) | zero_bytes(v ^ SPACES);
        if (hit)
            return n + (u32)(__builtin_ctzl(hit) >> 3);
    }
}

/* Does the word (length n) start with key (length k)? */
static int has_prefix(const char *w, u32 n, const char *key, u32 k)
{
    if (n < k)
        return 0;
    for (u32 i = 0; i < k; i += 8) {
        u32 left = k - i;
        u64 mask = left >= 8 ? ~0UL : (1UL << (8 * left)) - 1;
        if ((load8(w + i) ^ load8(key + i)) & mask)
            return 0;
    }
    return 1;
}

static u64 parse_dec(const char *p, const char *end)
{
    u64 v = 0;
    for (; p < end && *p >= '0' && *p <= '9'; p++)
        v = v * 10 + (u64)(*p - '0');
    return v;
}

/* Keys padded to 16 bytes so the 8-byte loads stay inside the literal. */
static const char key_ticks[16] = "volt.ticks=";
static const char key_tick_ms[16] = "volt.tick_ms=";
static const char key_mem[16] = "volt.mem=";
static const char key_dirty[16] = "volt.dirty=";
static const char key_poweroff[16] = "volt.poweroff";
static const char key_blk[16] = "volt.blk=";
static const char key_net[16] = "volt.net=";
static const char key_cpuid[16] = "volt.cpuid";
static const char key_vmgenid[16] = "volt.vmgenid";

static void parse_cmdline(const char *s)
{
    while (*s) {
        if (*s == ' ') {
            s++;
            continue;
        }
        u32 n = word_len(s);
        const char *end = s + n;
        if (has_prefix(s, n, key_ticks, 11)) {
            cfg.ticks = parse_dec(s + 11, end);
            cfg.ticks_given = 1;
        } else if (has_prefix(s, n, key_tick_ms, 13)) {
            u64 v = parse_dec(s + 13, end);
            cfg.tick_ms = v ? v : 1;
        } else if (has_prefix(s, n, key_mem, 9)) {
            cfg.mem_mib = parse_dec(s + 9, end);
        } else if (has_prefix(s, n, key_dirty, 11)) {
            cfg.dirty_mib = parse_dec(s + 11, end);
        } else if (n == 13 && has_prefix(s, n, key_poweroff, 13)) {
            cfg.poweroff = 1;
        } else if (n == 12 && has_prefix(s, n, key_vmgenid, 12)) {
            cfg.vmgenid = 1;
        } else if (has_prefix(s, n, key_blk, 9) || has_prefix(s, n, key_net, 9) ||
                   (n == 10 && has_prefix(s, n, key_cpuid, 10))) {
            cfg.io = 1;     /* ring 3 has work: the rest of these words are parsed there */
        }
        s = end;
    }
}

/* ---- memory map: report highest RAM end below 4 GiB + RAM above 4 GiB ---- */

static void read_memmap(const struct hvm_start_info *si)
{
    u64 low_top = 0, high = 0;
    if (si->version >= 1 && si->memmap_paddr) {
        const struct hvm_memmap_entry *e = (const void *)si->memmap_paddr;
        for (u32 i = 0; i < si->memmap_entries; i++) {
            if (e[i].type != E820_RAM)
                continue;
            u64 end = e[i].addr + e[i].size;
            if (end <= FOUR_GIB)
                low_top = end > low_top ? end : low_top;
            else
                high += end - (e[i].addr > FOUR_GIB ? e[i].addr : FOUR_GIB);
            if (ram_range_count < 8) {
                ram_ranges[ram_range_count][0] = e[i].addr;
                ram_ranges[ram_range_count++][1] = end;
            }
        }
    }
    platform.mem_mib = (low_top + high + MIB / 2) / MIB;
}

static int ram_contains(u64 start, u64 end)
{
    for (u32 i = 0; i < ram_range_count; i++)
        if (ram_ranges[i][0] <= start && end <= ram_ranges[i][1])
            return 1;
    return 0;
}

/* ---- interrupts ---- */

static void arm_next_tick(void)
{
    /* From the current TSC: after a restore the TSC has jumped, and no catch-up burst follows. */
    apic_arm_deadline(rdtsc() + tick_period_tsc);
}

static u64 vmgenid_addr;
static u64 vmgenid_seen[2];
static int vmgenid_printed;

/* "vmgenid <32 hex digits>" (the ID's bytes in order) when it differs from the one last printed:
 * a restore gives every clone a new one (the VMM writes it before the guest runs again). */
static void report_vmgenid(void)
{
    if (!vmgenid_addr)
        return;
    const volatile u64 *id = (const volatile u64 *)vmgenid_addr;
    u64 a = id[0], b = id[1];
    if (vmgenid_printed && a == vmgenid_seen[0] && b == vmgenid_seen[1])
        return;
    vmgenid_printed = 1;
    vmgenid_seen[0] = a;
    vmgenid_seen[1] = b;
    struct line l;
    l.len = 0;
    line_str(&l, "vmgenid ");
    for (int i = 0; i < 16; i++)
        line_hex(&l, ((i < 8 ? a : b) >> (8 * (i % 8))) & 0xff, 2);
    line_emit(&l);
}

static void on_timer(void)
{
    if (!ticking)
        return;
    if (cfg.vmgenid)
        report_vmgenid();
    tick_count++;
    struct line l;
    l.len = 0;
    line_str(&l, "tick ");
    line_dec(&l, tick_count);
    line_str(&l, " clock_ms=");
    line_dec(&l, clock_ms());
    line_str(&l, " tsc_ms=");           /* the guest TSC: what restores must keep going */
    line_dec(&l, rdtsc() / tsc_per_ms());
    line_emit(&l);
    if (cfg.ticks && tick_count >= cfg.ticks) {
        ticking = 0;
        if (cfg.poweroff) {
            apic_eoi();
            acpi_poweroff();
        }
        return;
    }
    arm_next_tick();
}

static void on_keyboard(void)
{
    for (int i = 0; i < I8042_DRAIN_MAX && (inb(I8042_STATUS) & I8042_OBF); i++) {
        u8 code = inb(I8042_DATA);
        if (code == SCANCODE_EXTENDED) {
            kbd_extended = 1;
            continue;
        }
        if (kbd_extended && (code == SCANCODE_DELETE || code == SCANCODE2_DELETE)) {
            print("VOLT-CTRL-ALT-DEL");
            apic_eoi();
            acpi_poweroff();
        }
        kbd_extended = 0;
    }
}

/* Power off now unless a finite tick count will do it later. */
static int poweroff_when_idle(void) { return cfg.poweroff && !(cfg.ticks_given && cfg.ticks); }

/*
 * Ring 3 system calls (rax): SYS_WRITE prints one line (rdi = string, rsi =
 * length, newline included); SYS_IDLE means ring 3 has nothing left to do:
 * power off (volt.poweroff) or halt here, with interrupts on, for good.
 */
static void on_syscall(struct trap_frame *f)
{
    switch (f->rax) {
    case SYS_WRITE:
        serial_write((const char *)f->rdi, (u32)(f->rsi < 256 ? f->rsi : 256));
        break;
    case SYS_IDLE:
        if (poweroff_when_idle())
            acpi_poweroff();
        for (;;)
            __asm__ volatile("sti; hlt; cli" ::: "memory");
    default:
        break;
    }
}

/*
 * PVM delivers a ring-3 "int 0x80" as #UD with rip at the instruction (and
 * ring-3 syscall lands in the kernel still at CPL 3), so #UD on "cd 80" from
 * ring 3 is the same system call; hardware KVM and QEMU use the DPL-3 gate.
 */
static int emulate_int80(struct trap_frame *f)
{
    const u8 *ip = (const u8 *)f->rip;
    if ((f->cs & 3) != 3 || ip[0] != INT_OPCODE || ip[1] != SYSCALL_VECTOR)
        return 0;
    on_syscall(f);
    f->rip += 2;
    return 1;
}

static __attribute__((noreturn)) void panic(struct trap_frame *f)
{
    struct line l;
    l.len = 0;
    line_str(&l, "VOLT-PANIC vector=");
    line_dec(&l, f->vector);
    line_str(&l, " rip=");
    line_hex(&l, f->rip, 0);
    line_str(&l, " err=");
    line_hex(&l, f->error, 0);
    line_emit(&l);
    acpi_poweroff();
}

void trap(struct trap_frame *f)
{
    switch (f->vector) {
    case TIMER_VECTOR:
        on_timer();
        apic_eoi();
        break;
    case KBD_VECTOR:
        on_keyboard();
        apic_eoi();
        break;
    case WAKE_VECTOR:
        apic_eoi();
        break;
    case SYSCALL_VECTOR:
        on_syscall(f);
        break;
    case SPURIOUS_VECTOR:
        break;                       /* no EOI for spurious interrupts */
    case UD_VECTOR:
        if (!emulate_int80(f))
            panic(f);
        break;
    default:
        if (f->vector < 32)
            panic(f);
        apic_eoi();
        break;
    }
}

/* ---- APs ---- */

void ap_main(void)
{
    apic_init_ap();
    struct line l;
    l.len = 0;
    u32 a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    line_str(&l, "cpu ");
    line_dec(&l, apic_id());
    line_str(&l, " up cpuid_apic=");    /* what CPUID says (the VMM sets it per vCPU) */
    line_dec(&l, b >> 24);
    line_emit(&l);
    __atomic_add_fetch(&ap_up_count, 1, __ATOMIC_SEQ_CST);
    apic_send_ipi(bsp_apic_id, WAKE_VECTOR | (0u << 8));
    halt_forever();
}

/* Halt until every AP reported (each sends WAKE_VECTOR) or AP_WAIT_MS passed. */
static void wait_for_aps(u32 expected)
{
    u64 deadline = rdtsc() + AP_WAIT_MS * tsc_per_ms();
    apic_arm_deadline(deadline);
    while (ap_up_count < expected && (s64)(rdtsc() - deadline) < 0)
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    apic_arm_deadline(0);
}

/* ---- BSP ---- */

/* A workload region [base, base + mib MiB) in RAM, else 0 after a `<prefix>-ERROR` line. */
static u64 region_bytes(const char *name, u64 base, u64 mib)
{
    u64 bytes = mib * MIB;
    if (bytes && !ram_contains(base, base + bytes)) {
        struct line l;
        l.len = 0;
        line_str(&l, name);
        line_str(&l, "-ERROR volt.");
        line_str(&l, name);
        line_str(&l, "=");
        line_dec(&l, mib);
        line_str(&l, " does not fit in RAM above 16 MiB");
        line_emit(&l);
        return 0;
    }
    return bytes;
}

/* Enter ring 3 for the memory workloads and/or the virtio tasks; returns only if none runs. */
static void start_user_workload(void)
{
    u64 bytes = region_bytes("mem", MEM_REGION_BASE, cfg.mem_mib);
    u64 dirty_base = MEM_REGION_BASE + cfg.mem_mib * MIB;      /* after volt.mem's, fitted or not */
    u64 dirty = region_bytes("dirty", dirty_base, cfg.dirty_mib);
    if (!bytes && !dirty && !cfg.io)
        return;
    user_args.mem_base = MEM_REGION_BASE;
    user_args.mem_bytes = bytes;
    user_args.dirty_base = dirty_base;
    user_args.dirty_bytes = dirty;
    user_args.dirty_period_tsc = cfg.tick_ms * tsc_per_ms();
    user_args.report_tsc = MEM_REPORT_MS * tsc_per_ms();
    user_args.tsc_khz = tsc_per_ms();
    user_args.cmdline = cmdline_text;
    user_args.dsdt = platform.dsdt;
    enter_user((void *)user_main, user_stack + USER_STACK_SIZE, (u64)&user_args, 0, 0);
}

void kmain(u32 start_info_paddr)
{
    u64 entry_tsc = rdtsc();
    const struct hvm_start_info *si = (const void *)(u64)start_info_paddr;
    serial_init();
    clock_init(entry_tsc);
    if (si->magic != HVM_START_MAGIC) {
        print("VOLT-PANIC bad hvm_start_info magic");
        halt_forever();
    }
    if (si->cmdline_paddr) {
        cmdline_text = (const char *)si->cmdline_paddr;
        parse_cmdline(cmdline_text);
    }
    read_memmap(si);
    acpi_init(si->rsdp_paddr);
    apic_init_bsp();
    bsp_apic_id = apic_id();
    ioapic_route_keyboard(bsp_apic_id);

    u32 cpus = platform.cpu_count ? platform.cpu_count : 1;
    if (cpus > 1) {
        apic_start_aps(bsp_apic_id);
        wait_for_aps(cpus - 1);
    }

    struct line l;
    l.len = 0;
    line_str(&l, "VOLT-READY uptime_ms=");
    line_dec(&l, clock_ms());
    line_str(&l, " cpus=");
    line_dec(&l, cpus);
    line_str(&l, " mem_mib=");
    line_dec(&l, platform.mem_mib);
    line_emit(&l);

    if (cfg.vmgenid) {
        vmgenid_addr = acpi_vmgenid_addr();
        if (vmgenid_addr)
            report_vmgenid();
        else
            print("vmgenid none");
    }
    if (poweroff_when_idle() && !cfg.io)
        acpi_poweroff();
    if (cfg.ticks_given) {
        tick_period_tsc = cfg.tick_ms * tsc_per_ms();
        ticking = 1;
        arm_next_tick();
    }
    if (cfg.mem_mib || cfg.dirty_mib || cfg.io)
        start_user_workload();
    for (;;)
        __asm__ volatile("sti; hlt" ::: "memory");
}
