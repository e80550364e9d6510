/*
 * user.c - ring 3 (runs natively on PVM): the memory workload, the I/O tasks'
 * scheduler, and the user-mode helpers (printing, command line, time).
 *
 * The memory region is filled with a pattern that is a pure function of the
 * address (with volt.memfill=text, each byte one of eight letters: it
 * compresses about as guest RAM does, where the plain pattern does not
 * compress at all), then verified forever, one MiB per step, so the blk/net tasks
 * get polled between steps.  The dirty region is rewritten once per
 * volt.tick_ms, each pass checking the previous generation's words and
 * writing the next's (so a snapshot that lost a page written since its
 * parent shows as dirty-CORRUPT), also a MiB per step.  Only ring-3-safe code here: the kernel is
 * reached through int 0x80 (rax = SYS_WRITE or SYS_IDLE).
 */
#include "virtio.h"

#define PATTERN_MUL     0x9e3779b97f4a7c15UL
#define PATTERN_XOR     0x5a17c0de0b5e55edUL
#define MEM_STEP_BYTES  (1UL << 20)
#define CLOCK_JUMP_MS   200     /* a longer gap between two readings: the VM was paused */

static u64 tsc_khz;
static u64 now_last, now_skipped;

static inline u64 pattern(u64 addr) { return (addr * PATTERN_MUL) ^ PATTERN_XOR; }

u64 user_rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

/*
 * TSC time that stands still while the VM is paused or snapshotted: the
 * guest TSC is the host's, so after a restore it has jumped and every
 * deadline would expire before a device could answer.  Ring 3 polls far
 * more often than CLOCK_JUMP_MS, so a longer gap is a pause, not work.
 */
u64 user_now(void)
{
    u64 now = user_rdtsc();
    if (now_last && now - now_last > CLOCK_JUMP_MS * tsc_khz)
        now_skipped += now - now_last;
    now_last = now;
    return now - now_skipped;
}

u64 user_ms_to_tsc(u64 ms) { return ms * tsc_khz; }

u64 user_tsc_to_ns(u64 ticks) { return ticks / tsc_khz * NS_PER_MS + ticks % tsc_khz * NS_PER_MS / tsc_khz; }

/* int 0x80; the kernel takes it via the DPL-3 gate, or via #UD on PVM. */
static void user_write(const char *s, u64 len)
{
    __asm__ volatile("int $0x80" :: "a"((u64)SYS_WRITE), "D"(s), "S"(len) : "memory");
}

void user_emit(struct line *l)
{
    l->buf[l->len++] = '\n';
    user_write(l->buf, l->len);
    l->len = 0;
}

void user_idle(void)
{
    for (;;)
        __asm__ volatile("int $0x80" :: "a"((u64)SYS_IDLE) : "memory");
}

/* ---- command line ---- */

static u32 word_end(const char *s)
{
    u32 n = 0;
    while (s[n] && s[n] != ' ')
        n++;
    return n;
}

/* The value of the first "key..." word at or after s (key includes '='), or NULL. */
const char *cmdline_value(const char *s, const char *key, u32 *len)
{
    while (*s) {
        if (*s == ' ') {
            s++;
            continue;
        }
        u32 n = word_end(s), k = 0;
        while (key[k] && k < n && s[k] == key[k])
            k++;
        if (!key[k]) {
            *len = n - k;
            return s + k;
        }
        s += n;
    }
    return NULL;
}

/* Decimal or 0x-hex; *used = characters consumed. */
u64 parse_u64(const char *s, u32 len, u32 *used)
{
    u64 v = 0;
    u32 i = 0;
    if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        for (i = 2; i < len; i++) {
            char c = s[i];
            u32 d = c >= '0' && c <= '9' ? (u32)(c - '0') : c >= 'a' && c <= 'f' ? (u32)(c - 'a' + 10)
                  : c >= 'A' && c <= 'F' ? (u32)(c - 'A' + 10) : 16;
            if (d == 16)
                break;
            v = v << 4 | d;
        }
    } else {
        for (; i < len && s[i] >= '0' && s[i] <= '9'; i++)
            v = v * 10 + (u64)(s[i] - '0');
    }
    *used = i;
    return v;
}

/* "a.b.c.d" into a host-order u32 (a in the top byte); 0 when malformed. */
int parse_ipv4(const char *s, u32 len, u32 *out)
{
    u32 ip = 0, used;
    for (int part = 0; part < 4; part++) {
        u64 v = parse_u64(s, len, &used);
        if (!used || v > 255)
            return 0;
        ip = ip << 8 | (u32)v;
        s += used;
        len -= used;
        if (part < 3) {
            if (!len || *s != '.')
                return 0;
            s++;
            len--;
        }
    }
    if (len)
        return 0;
    *out = ip;
    return 1;
}

/* ---- memory workload ---- */

struct mem_state {
    volatile u64 *base;
    u64 words, next, sum, last_report, report_tsc, bad;
    u64 keep, set;              /* word = (pattern & keep) | set: volt.memfill=text narrows it */
    int first, corrupt;
};

#define TEXT_KEEP   0x0707070707070707UL
#define TEXT_SET    0x6161616161616161UL     /* 'a'..'h' */

static struct mem_state mem;

static void report(const char *prefix, u64 value)
{
    struct line l;
    l.len = 0;
    line_str(&l, prefix);
    line_hex(&l, value, 16);
    user_emit(&l);
}

static void mem_start(const struct user_args *a)
{
    mem.base = (volatile u64 *)a->mem_base;
    mem.words = a->mem_bytes / 8;
    mem.report_tsc = a->report_tsc;
    mem.first = 1;
    u32 len;
    const char *fill = cmdline_value(a->cmdline, "volt.memfill=", &len);
    int text = fill && len == 4 && fill[0] == 't' && fill[1] == 'e' && fill[2] == 'x' && fill[3] == 't';
    mem.keep = text ? TEXT_KEEP : ~0UL;
    mem.set = text ? TEXT_SET : 0;
    for (u64 i = 0; i < mem.words; i++)
        mem.base[i] = (pattern((u64)&mem.base[i]) & mem.keep) | mem.set;
}

/* Verify the next MiB; at the end of a pass, report (rate-limited) and start over. */
static void mem_step(void)
{
    u64 end = mem.next + MEM_STEP_BYTES / 8;
    if (end > mem.words)
        end = mem.words;
    u64 sum = mem.sum;
    for (u64 i = mem.next; i < end; i++) {
        u64 w = mem.base[i];
        if (w != ((pattern((u64)&mem.base[i]) & mem.keep) | mem.set) && !mem.corrupt) {
            mem.corrupt = 1;
            mem.bad = (u64)&mem.base[i];
        }
        sum = ((sum << 7) | (sum >> 57)) ^ w;
    }
    mem.sum = sum;
    mem.next = end;
    if (end < mem.words)
        return;
    u64 now = user_rdtsc();
    if (mem.corrupt) {
        report("mem-CORRUPT ", mem.bad);
    } else if (mem.first || now - mem.last_report >= mem.report_tsc) {
        report("mem-ok ", sum);
        mem.last_report = now;
        mem.first = 0;
    }
    mem.next = mem.sum = 0;
    mem.corrupt = 0;
}

/* ---- dirty workload ---- */

#define DIRTY_GEN_MUL   0xd1b54a32d192ed03UL

struct dirty_state {
    volatile u64 *base;
    u64 words, next, gen, period_tsc, next_pass, bad;
    int active, corrupt;
};

static struct dirty_state dirty;

/* Generation g's word at address a; generation 0 is "never written" (all zeros). */
static inline u64 dirty_word(u64 addr, u64 gen) { return gen ? pattern(addr) ^ (gen * DIRTY_GEN_MUL) : 0; }

static void dirty_start(const struct user_args *a)
{
    dirty.base = (volatile u64 *)a->dirty_base;
    dirty.words = a->dirty_bytes / 8;
    dirty.period_tsc = a->dirty_period_tsc;
    dirty.next_pass = user_now();
}

static void dirty_report(void)
{
    struct line l;
    l.len = 0;
    if (dirty.corrupt) {
        line_str(&l, "dirty-CORRUPT ");
        line_hex(&l, dirty.bad, 16);
        line_str(&l, " gen=");
    } else {
        line_str(&l, "dirty-ok gen=");
    }
    line_dec(&l, dirty.gen);
    user_emit(&l);
}

/* One MiB of the current pass (one starts every period): check gen - 1, write gen. 1 if busy. */
static int dirty_step(void)
{
    if (!dirty.active) {
        u64 now = user_now();
        if (now < dirty.next_pass)
            return 0;
        dirty.next_pass = now + dirty.period_tsc;
        dirty.gen++;
        dirty.active = 1;
        dirty.next = 0;
        dirty.corrupt = 0;
    }
    u64 end = dirty.next + MEM_STEP_BYTES / 8;
    if (end > dirty.words)
        end = dirty.words;
    for (u64 i = dirty.next; i < end; i++) {
        u64 addr = (u64)&dirty.base[i];
        if (dirty.base[i] != dirty_word(addr, dirty.gen - 1) && !dirty.corrupt) {
            dirty.corrupt = 1;
            dirty.bad = addr;
        }
        dirty.base[i] = dirty_word(addr, dirty.gen);
    }
    dirty.next = end;
    if (end == dirty.words) {
        dirty_report();
        dirty.active = 0;
    }
    return 1;
}

/* ---- entry ---- */

static struct virtio_window windows[VIRTIO_MAX_WINDOWS];

/* volt.cpuid: CPUID leaf 1's initial APIC id as ring 3 sees it (the VMM sets it per vCPU). */
static void report_user_cpuid(void)
{
    u32 a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    struct line l;
    l.len = 0;
    line_str(&l, "user-cpuid apic=");
    line_dec(&l, b >> 24);
    user_emit(&l);
}

void user_main(const struct user_args *a)
{
    tsc_khz = a->tsc_khz;
    u32 len;
    if (cmdline_value(a->cmdline, "volt.cpuid", &len))
        report_user_cpuid();
    const char *blk_mode = cmdline_value(a->cmdline, "volt.blk=", &len);
    int want_blk = blk_mode != NULL;
    int blk_bench = want_blk && len == 5 && blk_mode[0] == 'b' && blk_mode[1] == 'e' && blk_mode[2] == 'n' &&
                    blk_mode[3] == 'c' && blk_mode[4] == 'h';
    int want_net = cmdline_value(a->cmdline, "volt.net=", &len) != NULL;
    u32 n = want_blk || want_net ? virtio_discover(a, windows, VIRTIO_MAX_WINDOWS) : 0;
    if (blk_bench)
        blkbench_start(a, windows, n);
    else if (want_blk)
        blk_start(a, windows, n);
    if (want_net)
        net_start(a, windows, n);
    if (a->mem_bytes)
        mem_start(a);
    if (a->dirty_bytes)
        dirty_start(a);
    int blk_busy = want_blk, net_busy = want_net;
    for (;;) {
        if (blk_busy)
            blk_busy = blk_bench ? blkbench_poll() : blk_poll();
        if (net_busy)
            net_busy = net_poll();
        int dirty_busy = a->dirty_bytes && dirty_step();
        if (a->mem_bytes)
            mem_step();
        else if (!blk_busy && !net_busy && !a->dirty_bytes)
            user_idle();
        else if (!dirty_busy)
            __asm__ volatile("pause");
    }
}
