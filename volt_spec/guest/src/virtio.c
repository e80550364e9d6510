/*
 * virtio.c - virtio-mmio discovery, device initialisation and split virtqueues (ring 3).
 *
 * Windows come from the DSDT (Devices with _HID "LNRO0005", their _CRS
 * Memory32Fixed + Extended Interrupt descriptors) and from Linux-style
 * "virtio_mmio.device=<size>@<addr>:<irq>" command-line words.  Only
 * modern (version 2) transports are driven.
 */
#include "virtio.h"

#define SDT_HEADER_LEN      36
#define SDT_LENGTH_OFFSET   4
#define AML_STRING_PREFIX   0x0d
#define RES_MEMORY32_FIXED  0x86        /* large item, length 9: flags, base u32, size u32 */
#define RES_MEMORY32_LEN    9
#define RES_EXT_INTERRUPT   0x89        /* large item: flags, count, irq u32... */
#define RES_SCAN_WINDOW     160         /* bytes after the _HID searched for the _CRS items */

static const char virtio_hid[] = "LNRO0005";
static const char key_virtio_mmio[] = "virtio_mmio.device=";

static inline u32 mmio_read(u64 base, u32 reg) { return *(volatile u32 *)(base + reg); }

static inline void mmio_write(u64 base, u32 reg, u32 v) { *(volatile u32 *)(base + reg) = v; }

static inline u16 rd16(const u8 *p) { return (u16)(p[0] | p[1] << 8); }

static inline u32 rd32(const u8 *p) { return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }

static int add_window(struct virtio_window *out, u32 n, u32 max, u64 addr, u64 size, u32 irq)
{
    for (u32 i = 0; i < n; i++)
        if (out[i].addr == addr)
            return (int)n;
    if (n >= max || !addr)
        return (int)n;
    out[n].addr = addr;
    out[n].size = size;
    out[n].irq = irq;
    out[n].device_id = 0;
    return (int)n + 1;
}

static int is_hid_at(const u8 *p)
{
    if (p[0] != AML_STRING_PREFIX)
        return 0;
    for (u32 i = 0; i < sizeof(virtio_hid) - 1; i++)
        if (p[1 + i] != (u8)virtio_hid[i])
            return 0;
    return p[sizeof(virtio_hid)] == 0;
}

/* Scan the DSDT bytes for the HID string, then its Memory32Fixed and Extended Interrupt items. */
static u32 scan_dsdt(u64 dsdt, struct virtio_window *out, u32 n, u32 max)
{
    if (!dsdt)
        return n;
    const u8 *aml = (const u8 *)dsdt;
    u32 len = rd32(aml + SDT_LENGTH_OFFSET);
    for (u32 i = SDT_HEADER_LEN; i + sizeof(virtio_hid) + 1 < len; i++) {
        if (!is_hid_at(aml + i))
            continue;
        u64 addr = 0, size = 0;
        u32 irq = 0;
        u32 end = i + RES_SCAN_WINDOW < len ? i + RES_SCAN_WINDOW : len;
        for (u32 j = i + sizeof(virtio_hid) + 1; j + 9 <= end; j++) {
            if (is_hid_at(aml + j))
                break;                          /* the next device: this one had no _CRS */
            if (!addr && aml[j] == RES_MEMORY32_FIXED && rd16(aml + j + 1) == RES_MEMORY32_LEN) {
                addr = rd32(aml + j + 4);
                size = rd32(aml + j + 8);
                j += 2 + RES_MEMORY32_LEN;
            } else if (addr && aml[j] == RES_EXT_INTERRUPT && rd16(aml + j + 1) >= 6) {
                irq = rd32(aml + j + 5);
                break;
            }
        }
        n = (u32)add_window(out, n, max, addr, size, irq);
    }
    return n;
}

/* "<size>@<addr>:<irq>", size with an optional K/M/G suffix, numbers in C syntax. */
static u32 parse_mmio_word(const char *s, u32 len, struct virtio_window *out, u32 n, u32 max)
{
    u32 used;
    u64 size = parse_u64(s, len, &used);
    if (used < len && (s[used] == 'K' || s[used] == 'k'))
        size <<= 10, used++;
    else if (used < len && (s[used] == 'M' || s[used] == 'm'))
        size <<= 20, used++;
    else if (used < len && (s[used] == 'G' || s[used] == 'g'))
        size <<= 30, used++;
    if (used >= len || s[used] != '@')
        return n;
    s += used + 1;
    len -= used + 1;
    u64 addr = parse_u64(s, len, &used);
    u32 irq = 0;
    if (used < len && s[used] == ':')
        irq = (u32)parse_u64(s + used + 1, len - used - 1, &used);
    return (u32)add_window(out, n, max, addr, size, irq);
}

u32 virtio_discover(const struct user_args *a, struct virtio_window *out, u32 max)
{
    u32 n = scan_dsdt(a->dsdt, out, 0, max);
    const char *s = a->cmdline;
    u32 len;
    while (s && (s = cmdline_value(s, key_virtio_mmio, &len)) != NULL) {
        n = parse_mmio_word(s, len, out, n, max);
        s += len;
    }
    for (u32 i = 0; i < n; i++) {
        u64 m = out[i].addr;
        if (mmio_read(m, VIRTIO_MMIO_MAGIC) == VIRTIO_MMIO_MAGIC_VALUE)
            out[i].device_id = mmio_read(m, VIRTIO_MMIO_DEVICE_ID);
    }
    return n;
}

const struct virtio_window *virtio_find(const struct virtio_window *w, u32 n, u32 device_id)
{
    for (u32 i = 0; i < n; i++)
        if (w[i].device_id == device_id)
            return &w[i];
    return NULL;
}

static void set_status(u64 mmio, u32 bits)
{
    mmio_write(mmio, VIRTIO_MMIO_STATUS, mmio_read(mmio, VIRTIO_MMIO_STATUS) | bits);
}

/* Reset, ACKNOWLEDGE, DRIVER, negotiate, FEATURES_OK; NULL or a failure reason. */
const char *virtio_init(u64 mmio, u64 driver_features, u64 *device_features)
{
    if (mmio_read(mmio, VIRTIO_MMIO_VERSION) != VIRTIO_MMIO_MODERN)
        return "legacy-transport";
    mmio_write(mmio, VIRTIO_MMIO_STATUS, 0);
    set_status(mmio, VIRTIO_STATUS_ACKNOWLEDGE);
    set_status(mmio, VIRTIO_STATUS_DRIVER);
    mmio_write(mmio, VIRTIO_MMIO_DEV_FEATURES_SEL, 0);
    u64 features = mmio_read(mmio, VIRTIO_MMIO_DEV_FEATURES);
    mmio_write(mmio, VIRTIO_MMIO_DEV_FEATURES_SEL, 1);
    features |= (u64)mmio_read(mmio, VIRTIO_MMIO_DEV_FEATURES) << 32;
    *device_features = features;
    if (!(features & (1UL << VIRTIO_F_VERSION_1))) {
        set_status(mmio, VIRTIO_STATUS_FAILED);
        return "no-version-1";
    }
    u64 accept = features & (driver_features | 1UL << VIRTIO_F_VERSION_1);
    mmio_write(mmio, VIRTIO_MMIO_DRV_FEATURES_SEL, 0);
    mmio_write(mmio, VIRTIO_MMIO_DRV_FEATURES, (u32)accept);
    mmio_write(mmio, VIRTIO_MMIO_DRV_FEATURES_SEL, 1);
    mmio_write(mmio, VIRTIO_MMIO_DRV_FEATURES, (u32)(accept >> 32));
    set_status(mmio, VIRTIO_STATUS_FEATURES_OK);
    if (!(mmio_read(mmio, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
        set_status(mmio, VIRTIO_STATUS_FAILED);
        return "features-refused";
    }
    return NULL;
}

const char *virtio_queue_setup(struct vq *q, u64 mmio, u32 index, struct vq_rings *rings)
{
    mmio_write(mmio, VIRTIO_MMIO_QUEUE_SEL, index);
    if (mmio_read(mmio, VIRTIO_MMIO_QUEUE_READY))
        return "queue-busy";
    u32 max = mmio_read(mmio, VIRTIO_MMIO_QUEUE_NUM_MAX);
    if (!max)
        return "no-queue";
    u32 size = VQ_MAX_SIZE;
    while (size > max)
        size >>= 1;                             /* split queues: a power of two */
    q->mmio = mmio;
    q->index = index;
    q->size = size;
    q->avail_idx = 0;
    q->used_seen = 0;
    q->rings = rings;
    rings->avail.flags = VIRTQ_AVAIL_F_NO_INTERRUPT;   /* we poll */
    rings->avail.idx = 0;
    rings->used.idx = 0;
    u64 desc = (u64)rings->desc, avail = (u64)&rings->avail, used = (u64)&rings->used;
    mmio_write(mmio, VIRTIO_MMIO_QUEUE_NUM, size);
    mmio_write(mmio, VIRTIO_MMIO_QUEUE_DESC_LO, (u32)desc);
    mmio_write(mmio, VIRTIO_MMIO_QUEUE_DESC_HI, (u32)(desc >> 32));
    mmio_write(mmio, VIRTIO_MMIO_QUEUE_DRIVER_LO, (u32)avail);
    mmio_write(mmio, VIRTIO_MMIO_QUEUE_DRIVER_HI, (u32)(avail >> 32));
    mmio_write(mmio, VIRTIO_MMIO_QUEUE_DEVICE_LO, (u32)used);
    mmio_write(mmio, VIRTIO_MMIO_QUEUE_DEVICE_HI, (u32)(used >> 32));
    mmio_write(mmio, VIRTIO_MMIO_QUEUE_READY, 1);
    return NULL;
}

void virtio_driver_ok(u64 mmio) { set_status(mmio, VIRTIO_STATUS_DRIVER_OK); }

u8 virtio_config8(u64 mmio, u32 offset) { return *(volatile u8 *)(mmio + VIRTIO_MMIO_CONFIG + offset); }

u32 virtio_config32(u64 mmio, u32 offset) { return mmio_read(mmio, VIRTIO_MMIO_CONFIG + offset); }

u16 vq_add(struct vq *q, u16 head)
{
    u16 slot = q->avail_idx;
    q->rings->avail.ring[slot & (q->size - 1)] = head;
    barrier();                                  /* x86: stores stay ordered; keep the compiler honest */
    q->avail_idx = (u16)(slot + 1);
    *(volatile u16 *)&q->rings->avail.idx = q->avail_idx;
    return slot;
}

void vq_notify(struct vq *q)
{
    __asm__ volatile("mfence" ::: "memory");    /* ring stores visible before the exit */
    mmio_write(q->mmio, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

int vq_used(struct vq *q, struct virtq_used_elem *out)
{
    if (q->rings->used.idx == q->used_seen)
        return 0;
    barrier();
    *out = *(volatile struct virtq_used_elem *)&q->rings->used.ring[q->used_seen & (q->size - 1)];
    q->used_seen++;
    return 1;
}

u16 vq_in_flight(const struct vq *q) { return (u16)(q->avail_idx - q->used_seen); }
