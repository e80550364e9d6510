/*
 * blkbench.c - volt.blk=bench: virtio-blk throughput and IOPS, measured in ring 3.
 *
 * Four phases over sectors [0, N), each reported by one line when it ends:
 *   blk-bench seqwrite bytes=<n> ns=<n>     N sectors in CHUNK-sized requests
 *   blk-bench seqread bytes=<n> ns=<n>      the same sectors read back (and checked)
 *   blk-bench randread4k ops=<n> ns=<n>     4 KiB requests at 4 KiB-aligned random sectors
 *   blk-bench randwrite4k ops=<n> ns=<n>
 * then "blk-bench done" (or "blk-FAIL <reason>"), and the task ends.
 *
 * volt.blk_sectors=<n>  N (default 64 MiB worth, capped by the disk's capacity)
 * volt.blk_chunk=<n>    sequential request size in sectors (default and max 256: 128 KiB)
 * volt.blk_qd=<n>       requests in flight (default and max BENCH_SLOTS)
 * volt.blk_ops=<n>      random requests per phase (default 50000) ...
 * volt.blk_ms=<n>       ... or fewer, once this many ms have passed (default 1000)
 *
 * Each in-flight slot owns three descriptors (header, data, status) and a data
 * buffer.  Requests are published in batches with one QueueNotify per batch;
 * completions are found by polling the used ring.  Word 0 of every sector
 * written carries a tag (sector number and a marker), and every sector read
 * is checked against it, so the numbers come from I/O that really happened.
 * Times are raw TSC deltas scaled by the kvmclock-derived TSC rate
 * (user_tsc_to_ns); unlike user_now(), nothing is discounted as a pause.
 */
#include "virtio.h"

#define SECTOR_SIZE         512
#define SECTOR_WORDS        (SECTOR_SIZE / 8)
#define SECTORS_4K          8
#define CHUNK_MAX           256                 /* 128 KiB per sequential request */
#define DESCS_PER_REQ       3
#define BENCH_SLOTS         (VQ_MAX_SIZE / DESCS_PER_REQ)
#define DEFAULT_SECTORS     (64UL << 11)        /* 64 MiB */
#define DEFAULT_OPS         50000
#define DEFAULT_MS          1000
#define REQUEST_TIMEOUT_MS  10000
#define BLK_T_IN            0
#define BLK_T_OUT           1
#define BLK_S_OK            0
#define BLK_S_INVALID       0xff
#define BLK_CFG_CAPACITY    0
#define TAG_MARK            0x564f4c5400000000UL     /* "VOLT" in the top half */
#define RNG_SEED            0x2545f4914f6cdd1dUL

enum bench_phase { BP_SEQWRITE, BP_SEQREAD, BP_RANDREAD, BP_RANDWRITE, BP_DONE };

static const char *const phase_name[] = { "seqwrite", "seqread", "randread4k", "randwrite4k" };

struct blk_req_hdr {
    u32 type, reserved;
    u64 sector;
};

struct slot {
    struct blk_req_hdr hdr;
    volatile u8 status;
    u32 type;
    u64 sector, count;
};

static struct vq_rings bench_rings;
static u8 bench_data[BENCH_SLOTS][CHUNK_MAX * SECTOR_SIZE] __attribute__((aligned(4096)));
static struct slot slots[BENCH_SLOTS];

static struct {
    struct vq q;
    enum bench_phase phase;
    u64 sectors, chunk, qd, ops, limit_tsc;
    u64 next, issued, completed, bytes, in_flight;
    u64 start, last_done, deadline, rng;
    u32 free_mask;                              /* bit i: slot i idle */
} b;

static inline u64 tag(u64 sector) { return TAG_MARK | (sector & 0xffffffffUL); }

static u64 next_random(void)
{
    u64 x = b.rng;                              /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b.rng = x;
    return x;
}

static void fail(const char *reason, u64 value)
{
    struct line l;
    l.len = 0;
    line_str(&l, "blk-FAIL bench-");
    line_str(&l, reason);
    line_str(&l, " ");
    line_dec(&l, value);
    user_emit(&l);
    b.phase = BP_DONE;
}

static u64 word_value(const char *cmdline, const char *key, u64 fallback)
{
    u32 len, used;
    const char *v = cmdline_value(cmdline, key, &len);
    if (!v)
        return fallback;
    u64 n = parse_u64(v, len, &used);
    return used ? n : fallback;
}

static void submit(u32 i, u32 type, u64 sector, u64 count)
{
    struct slot *s = &slots[i];
    u64 *w = (u64 *)bench_data[i];
    for (u64 k = 0; k < count; k++)             /* one store per sector: stamp or clear the tag */
        w[k * SECTOR_WORDS] = type == BLK_T_OUT ? tag(sector + k) : 0;
    s->hdr = (struct blk_req_hdr){ type, 0, sector };
    s->status = BLK_S_INVALID;
    s->type = type;
    s->sector = sector;
    s->count = count;
    struct virtq_desc *d = b.q.rings->desc + i * DESCS_PER_REQ;
    u16 first = (u16)(i * DESCS_PER_REQ);
    d[0] = (struct virtq_desc){ (u64)&s->hdr, sizeof(s->hdr), VIRTQ_DESC_F_NEXT, (u16)(first + 1) };
    d[1] = (struct virtq_desc){ (u64)bench_data[i], (u32)(count * SECTOR_SIZE),
                                (u16)(VIRTQ_DESC_F_NEXT | (type == BLK_T_IN ? VIRTQ_DESC_F_WRITE : 0)),
                                (u16)(first + 2) };
    d[2] = (struct virtq_desc){ (u64)&s->status, 1, VIRTQ_DESC_F_WRITE, 0 };
    b.free_mask &= ~(1u << i);
    b.in_flight++;
    b.issued++;
    vq_add(&b.q, first);
}

static int phase_is_random(void) { return b.phase == BP_RANDREAD || b.phase == BP_RANDWRITE; }

static int wants_more(u64 now)
{
    if (phase_is_random())
        return b.issued < b.ops && (s64)(now - b.start - b.limit_tsc) < 0;
    return b.next < b.sectors;
}

/* Fill idle slots with the phase's next requests; one notify for the batch. */
static void issue(u64 now)
{
    int any = 0;
    while (b.in_flight < b.qd && wants_more(now)) {
        u32 i = (u32)__builtin_ctz(b.free_mask);
        switch (b.phase) {
        case BP_SEQWRITE:
        case BP_SEQREAD: {
            u64 left = b.sectors - b.next;
            u64 count = left < b.chunk ? left : b.chunk;
            submit(i, b.phase == BP_SEQWRITE ? BLK_T_OUT : BLK_T_IN, b.next, count);
            b.next += count;
            break;
        }
        default:
            submit(i, b.phase == BP_RANDWRITE ? BLK_T_OUT : BLK_T_IN,
                   next_random() % (b.sectors / SECTORS_4K) * SECTORS_4K, SECTORS_4K);
            break;
        }
        any = 1;
    }
    if (any) {
        vq_notify(&b.q);
        b.deadline = now + user_ms_to_tsc(REQUEST_TIMEOUT_MS);
    }
}

static void start_phase(enum bench_phase p)
{
    b.phase = p;
    b.next = b.issued = b.completed = b.bytes = 0;
    b.start = b.last_done = user_rdtsc();
    if (p != BP_DONE)
        issue(b.start);
}

static void report_phase(void)
{
    struct line l;
    l.len = 0;
    line_str(&l, "blk-bench ");
    line_str(&l, phase_name[b.phase]);
    line_str(&l, phase_is_random() ? " ops=" : " bytes=");
    line_dec(&l, phase_is_random() ? b.completed : b.bytes);
    line_str(&l, " ns=");
    line_dec(&l, user_tsc_to_ns(b.last_done - b.start));
    user_emit(&l);
}

/* A read's sectors must carry the tags the writes left (random writes rewrite the same tags). */
static int check_read(u32 i)
{
    const u64 *w = (const u64 *)bench_data[i];
    for (u64 k = 0; k < slots[i].count; k++)
        if (w[k * SECTOR_WORDS] != tag(slots[i].sector + k)) {
            fail("mismatch sector", slots[i].sector + k);
            return 0;
        }
    return 1;
}

void blkbench_start(const struct user_args *a, const struct virtio_window *w, u32 n)
{
    b.phase = BP_DONE;
    const struct virtio_window *dev = virtio_find(w, n, VIRTIO_ID_BLOCK);
    if (!dev) {
        fail("no-device", 0);
        return;
    }
    u64 features;
    const char *err = virtio_init(dev->addr, 0, &features);
    if (!err)
        err = virtio_queue_setup(&b.q, dev->addr, 0, &bench_rings);
    if (err) {
        struct line l;
        l.len = 0;
        line_str(&l, "blk-FAIL ");
        line_str(&l, err);
        user_emit(&l);
        return;
    }
    virtio_driver_ok(dev->addr);
    u64 capacity = virtio_config32(dev->addr, BLK_CFG_CAPACITY) |
                   (u64)virtio_config32(dev->addr, BLK_CFG_CAPACITY + 4) << 32;
    u64 want = word_value(a->cmdline, "volt.blk_sectors=", DEFAULT_SECTORS);
    b.sectors = (want < capacity ? want : capacity) / SECTORS_4K * SECTORS_4K;
    b.chunk = word_value(a->cmdline, "volt.blk_chunk=", CHUNK_MAX);
    b.chunk = b.chunk && b.chunk <= CHUNK_MAX ? b.chunk : CHUNK_MAX;
    u64 slots_fit = b.q.size / DESCS_PER_REQ;
    b.qd = word_value(a->cmdline, "volt.blk_qd=", BENCH_SLOTS);
    b.qd = b.qd && b.qd <= slots_fit ? b.qd : slots_fit;
    b.ops = word_value(a->cmdline, "volt.blk_ops=", DEFAULT_OPS);
    b.limit_tsc = user_ms_to_tsc(word_value(a->cmdline, "volt.blk_ms=", DEFAULT_MS));
    b.rng = RNG_SEED;
    b.free_mask = (1u << BENCH_SLOTS) - 1;
    if (!b.sectors) {
        fail("capacity", capacity);
        return;
    }
    struct line l;
    l.len = 0;
    line_str(&l, "blk-bench start sectors=");
    line_dec(&l, b.sectors);
    line_str(&l, " chunk=");
    line_dec(&l, b.chunk);
    line_str(&l, " qd=");
    line_dec(&l, b.qd);
    user_emit(&l);
    start_phase(BP_SEQWRITE);
}

int blkbench_poll(void)
{
    if (b.phase == BP_DONE)
        return 0;
    struct virtq_used_elem e;
    int took = 0;
    while (vq_used(&b.q, &e)) {
        u32 i = e.id / DESCS_PER_REQ;
        if (e.id % DESCS_PER_REQ || i >= BENCH_SLOTS || (b.free_mask & (1u << i))) {
            fail("bad-used-id", e.id);
            return 0;
        }
        if (slots[i].status != BLK_S_OK) {
            fail("status", slots[i].status);
            return 0;
        }
        if (slots[i].type == BLK_T_IN && !check_read(i))
            return 0;
        b.free_mask |= 1u << i;
        b.in_flight--;
        b.completed++;
        b.bytes += slots[i].count * SECTOR_SIZE;
        took = 1;
    }
    u64 now = user_rdtsc();
    if (took)
        b.last_done = now;
    else if (b.in_flight && (s64)(now - b.deadline) > 0) {
        fail("timeout", b.issued);
        return 0;
    }
    issue(now);
    if (b.in_flight)
        return 1;
    report_phase();
    start_phase(b.phase + 1);
    if (b.phase == BP_DONE) {
        struct line l;
        l.len = 0;
        line_str(&l, "blk-bench done");
        user_emit(&l);
        return 0;
    }
    return 1;
}
