/*
 * blk.c - the virtio-blk task (ring 3): write a pattern, read it back, verify.
 *
 * volt.blk=rw      write round 0 to sectors [0, N), read back, verify: "blk-ok N <sum>"
 * volt.blk=ro      write sector 0 (its own content) expecting IOERR: "blk-ro-ok",
 *                  then read [0, N): "blk-read <sum>"
 * volt.io=loop     rw with rounds 1, 2, 3...: "blk-round <r> ok <sum>" at most every 100 ms
 * volt.blk_sectors=<n>  N (default 128)
 *
 * Sector s of round r holds 64 little-endian words: word 0 = r << 32 | s
 * (readable in a hex dump), word i > 0 = ((r << 38 | s << 6 | i) * MUL) ^ XOR.
 * The checksum folds every word read, in order: sum = (rotl(sum, 7) ^ w) * MUL.
 * volt_spec/guest/protocol.py computes the same (blk_pattern, blk_checksum).
 * One request (at most CHUNK_SECTORS) is in flight at a time.
 */
#include "virtio.h"

#define SECTOR_SIZE         512
#define WORDS_PER_SECTOR    (SECTOR_SIZE / 8)
#define CHUNK_SECTORS       128                 /* 64 KiB per request */
#define DEFAULT_SECTORS     128
#define BLK_T_IN            0
#define BLK_T_OUT           1
#define BLK_S_OK            0
#define BLK_S_IOERR         1
#define BLK_S_INVALID       0xff                /* our marker: the device did not write status */
#define BLK_CFG_CAPACITY    0                   /* u64, in 512-byte sectors */
#define PATTERN_MUL         0x9e3779b97f4a7c15UL
#define PATTERN_XOR         0x5a17c0de0b5e55edUL
#define REQUEST_TIMEOUT_MS  5000
#define ROUND_REPORT_MS     100

enum blk_mode { MODE_RW, MODE_RO };
enum blk_phase { PH_WRITE, PH_READ, PH_RO_READ0, PH_RO_WRITE0, PH_DONE };

struct blk_req_hdr {
    u32 type, reserved;
    u64 sector;
};

static struct vq_rings blk_rings;
static u8 blk_data[CHUNK_SECTORS * SECTOR_SIZE] __attribute__((aligned(4096)));
static struct blk_req_hdr blk_hdr;
static volatile u8 blk_status;

static struct {
    struct vq q;
    enum blk_mode mode;
    enum blk_phase phase;
    int loop;
    u64 sectors, round, next, chunk, sum;
    u64 deadline, last_report;
    int reported;
} blk;

static inline u64 word_at(u64 round, u64 sector, u64 i)
{
    if (!i)
        return round << 32 | (sector & 0xffffffffUL);
    return ((round << 38 | sector << 6 | i) * PATTERN_MUL) ^ PATTERN_XOR;
}

/* rotl-xor alone is blind to whole-sector swaps (64 words x 7 bits = full turns): multiply too. */
static inline u64 fold(u64 sum, u64 w) { return (((sum << 7) | (sum >> 57)) ^ w) * PATTERN_MUL; }

static void say(const char *s)
{
    struct line l;
    l.len = 0;
    line_str(&l, s);
    user_emit(&l);
}

static void fail(const char *reason, u64 sector)
{
    struct line l;
    l.len = 0;
    line_str(&l, "blk-FAIL ");
    line_str(&l, reason);
    if (sector != ~0UL) {
        line_str(&l, " sector=");
        line_dec(&l, sector);
    }
    user_emit(&l);
    blk.phase = PH_DONE;
}

static void submit(u32 type, u64 sector, u64 count)
{
    struct virtq_desc *d = blk.q.rings->desc;
    blk_hdr.type = type;
    blk_hdr.reserved = 0;
    blk_hdr.sector = sector;
    blk_status = BLK_S_INVALID;
    d[0] = (struct virtq_desc){ (u64)&blk_hdr, sizeof(blk_hdr), VIRTQ_DESC_F_NEXT, 1 };
    d[1] = (struct virtq_desc){ (u64)blk_data, (u32)(count * SECTOR_SIZE),
                                (u16)(VIRTQ_DESC_F_NEXT | (type == BLK_T_IN ? VIRTQ_DESC_F_WRITE : 0)), 2 };
    d[2] = (struct virtq_desc){ (u64)&blk_status, 1, VIRTQ_DESC_F_WRITE, 0 };
    blk.chunk = count;
    blk.deadline = user_now() + user_ms_to_tsc(REQUEST_TIMEOUT_MS);
    vq_add(&blk.q, 0);
    vq_notify(&blk.q);
}

static void fill_chunk(u64 sector, u64 count)
{
    u64 *w = (u64 *)blk_data;
    for (u64 s = 0; s < count; s++)
        for (u64 i = 0; i < WORDS_PER_SECTOR; i++)
            w[s * WORDS_PER_SECTOR + i] = word_at(blk.round, sector + s, i);
}

/* Fold the chunk into the checksum; with verify, the first bad sector or ~0. */
static u64 fold_chunk(u64 sector, u64 count, int verify)
{
    const u64 *w = (const u64 *)blk_data;
    u64 sum = blk.sum, bad = ~0UL;
    for (u64 s = 0; s < count; s++)
        for (u64 i = 0; i < WORDS_PER_SECTOR; i++) {
            u64 v = w[s * WORDS_PER_SECTOR + i];
            if (verify && bad == ~0UL && v != word_at(blk.round, sector + s, i))
                bad = sector + s;
            sum = fold(sum, v);
        }
    blk.sum = sum;
    return bad;
}

static u64 chunk_from(u64 sector)
{
    u64 left = blk.sectors - sector;
    return left < CHUNK_SECTORS ? left : CHUNK_SECTORS;
}

static void start_write_pass(void)
{
    blk.phase = PH_WRITE;
    blk.next = 0;
    blk.sum = 0;
}

void blk_start(const struct user_args *a, const struct virtio_window *w, u32 n)
{
    u32 len;
    const char *mode = cmdline_value(a->cmdline, "volt.blk=", &len);
    const char *v;
    blk.phase = PH_DONE;
    blk.mode = len == 2 && mode[0] == 'r' && mode[1] == 'o' ? MODE_RO : MODE_RW;
    if (!(len == 2 && mode[0] == 'r' && (mode[1] == 'o' || mode[1] == 'w'))) {
        fail("bad-mode", ~0UL);
        return;
    }
    blk.sectors = DEFAULT_SECTORS;
    if ((v = cmdline_value(a->cmdline, "volt.blk_sectors=", &len)) != NULL) {
        u32 used;
        blk.sectors = parse_u64(v, len, &used);
    }
    v = cmdline_value(a->cmdline, "volt.io=", &len);
    blk.loop = v && len == 4 && v[0] == 'l' && v[1] == 'o' && v[2] == 'o' && v[3] == 'p';
    const struct virtio_window *dev = virtio_find(w, n, VIRTIO_ID_BLOCK);
    if (!dev) {
        fail("no-device", ~0UL);
        return;
    }
    u64 features;
    const char *err = virtio_init(dev->addr, 0, &features);
    if (!err)
        err = virtio_queue_setup(&blk.q, dev->addr, 0, &blk_rings);
    if (err) {
        fail(err, ~0UL);
        return;
    }
    virtio_driver_ok(dev->addr);
    u64 capacity = virtio_config32(dev->addr, BLK_CFG_CAPACITY) |
                   (u64)virtio_config32(dev->addr, BLK_CFG_CAPACITY + 4) << 32;
    if (!blk.sectors || blk.sectors > capacity) {
        struct line l;
        l.len = 0;
        line_str(&l, "blk-FAIL capacity ");
        line_dec(&l, capacity);
        line_str(&l, " < ");
        line_dec(&l, blk.sectors);
        user_emit(&l);
        return;
    }
    blk.round = blk.loop ? 1 : 0;
    if (blk.mode == MODE_RO) {
        blk.phase = PH_RO_READ0;
        submit(BLK_T_IN, 0, 1);
        return;
    }
    start_write_pass();
    fill_chunk(0, chunk_from(0));
    submit(BLK_T_OUT, 0, chunk_from(0));
}

/* One request finished with status OK: account for it and submit the next. */
static void advance(void)
{
    u64 sector = blk.next, count = blk.chunk;
    switch (blk.phase) {
    case PH_RO_READ0:                   /* write sector 0's own content back: harmless if accepted */
        blk.phase = PH_RO_WRITE0;
        submit(BLK_T_OUT, 0, 1);
        return;
    case PH_WRITE:
        blk.next += count;
        if (blk.next < blk.sectors) {
            fill_chunk(blk.next, chunk_from(blk.next));
            submit(BLK_T_OUT, blk.next, chunk_from(blk.next));
            return;
        }
        blk.phase = PH_READ;
        blk.next = 0;
        break;
    case PH_READ: {
        u64 bad = fold_chunk(sector, count, blk.mode == MODE_RW);
        if (bad != ~0UL) {
            fail("mismatch", bad);
            return;
        }
        blk.next += count;
        if (blk.next < blk.sectors)
            break;
        struct line l;
        l.len = 0;
        if (blk.mode == MODE_RO) {
            line_str(&l, "blk-read ");
            line_hex(&l, blk.sum, 16);
            user_emit(&l);
            blk.phase = PH_DONE;
            return;
        }
        if (!blk.loop) {
            line_str(&l, "blk-ok ");
            line_dec(&l, blk.sectors);
            line_str(&l, " ");
            line_hex(&l, blk.sum, 16);
            user_emit(&l);
            blk.phase = PH_DONE;
            return;
        }
        u64 now = user_now();
        if (!blk.reported || now - blk.last_report >= user_ms_to_tsc(ROUND_REPORT_MS)) {
            line_str(&l, "blk-round ");
            line_dec(&l, blk.round);
            line_str(&l, " ok ");
            line_hex(&l, blk.sum, 16);
            user_emit(&l);
            blk.last_report = now;
            blk.reported = 1;
        }
        blk.round++;
        start_write_pass();
        fill_chunk(0, chunk_from(0));
        submit(BLK_T_OUT, 0, chunk_from(0));
        return;
    }
    default:
        return;
    }
    submit(BLK_T_IN, blk.next, chunk_from(blk.next));
}

int blk_poll(void)
{
    if (blk.phase == PH_DONE)
        return 0;
    struct virtq_used_elem e;
    if (!vq_used(&blk.q, &e)) {
        if ((s64)(user_now() - blk.deadline) > 0)
            fail("timeout", blk.next);
        return blk.phase != PH_DONE;
    }
    u8 status = blk_status;
    if (blk.phase == PH_RO_WRITE0) {
        if (status == BLK_S_IOERR) {
            say("blk-ro-ok");
        } else if (status == BLK_S_OK) {
            say("blk-FAIL write-accepted");
        } else {
            struct line l;
            l.len = 0;
            line_str(&l, "blk-FAIL write-status=");
            line_dec(&l, status);           /* 2 UNSUPP; 255: the device wrote no status */
            user_emit(&l);
        }
        blk.phase = PH_READ;
        blk.next = 0;
        blk.sum = 0;
        submit(BLK_T_IN, 0, chunk_from(0));
        return 1;
    }
    if (status != BLK_S_OK) {
        fail(status == BLK_S_IOERR ? "ioerr" : status == BLK_S_INVALID ? "no-status" : "unsupported",
             blk.next);
        return 0;
    }
    advance();
    return blk.phase != PH_DONE;
}
