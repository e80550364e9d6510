/*
 * virtio.h - the ring-3 I/O side: virtio-mmio transport, split virtqueues,
 * the blk and net tasks, and the few user-mode helpers they share.
 *
 * Everything declared here runs in ring 3 (natively on PVM): the queues and
 * buffers are static kernel-image memory, which the identity map marks USER,
 * and the devices' register windows are reachable from ring 3 too, so a
 * QueueNotify write is an ordinary MMIO exit and no syscall is needed.
 * Completion is found by polling the used ring; interrupts stay off.
 */
#ifndef VOLT_VIRTIO_H
#define VOLT_VIRTIO_H

#include "kernel.h"

/* virtio-mmio register offsets (virtio 1.2, section 4.2.2; version 2 layout). */
#define VIRTIO_MMIO_MAGIC           0x000
#define VIRTIO_MMIO_VERSION         0x004
#define VIRTIO_MMIO_DEVICE_ID       0x008
#define VIRTIO_MMIO_DEV_FEATURES    0x010
#define VIRTIO_MMIO_DEV_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRV_FEATURES    0x020
#define VIRTIO_MMIO_DRV_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL       0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX   0x034
#define VIRTIO_MMIO_QUEUE_NUM       0x038
#define VIRTIO_MMIO_QUEUE_READY     0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY    0x050
#define VIRTIO_MMIO_STATUS          0x070
#define VIRTIO_MMIO_QUEUE_DESC_LO   0x080
#define VIRTIO_MMIO_QUEUE_DESC_HI   0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LO 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HI 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LO 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HI 0x0a4
#define VIRTIO_MMIO_CONFIG          0x100

#define VIRTIO_MMIO_MAGIC_VALUE     0x74726976  /* "virt" */
#define VIRTIO_MMIO_MODERN          2

/* Device status bits (section 2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE   1
#define VIRTIO_STATUS_DRIVER        2
#define VIRTIO_STATUS_DRIVER_OK     4
#define VIRTIO_STATUS_FEATURES_OK   8
#define VIRTIO_STATUS_FAILED        128

#define VIRTIO_ID_NET               1
#define VIRTIO_ID_BLOCK             2
#define VIRTIO_F_VERSION_1          32          /* feature bit number */

/* Split virtqueue (section 2.7). */
#define VIRTQ_DESC_F_NEXT           1
#define VIRTQ_DESC_F_WRITE          2
#define VIRTQ_AVAIL_F_NO_INTERRUPT  1
#define VQ_MAX_SIZE                 16          /* power of two; capped by QueueNumMax */

struct virtq_desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};

struct virtq_avail {
    u16 flags, idx;
    u16 ring[VQ_MAX_SIZE];
    u16 used_event;
};

struct virtq_used_elem {
    u32 id, len;
};

struct virtq_used {
    u16 flags;
    volatile u16 idx;
    struct virtq_used_elem ring[VQ_MAX_SIZE];
    u16 avail_event;
};

/* One queue's rings, in one page (descriptor table 16-, avail 2-, used 4-aligned). */
struct vq_rings {
    struct virtq_desc desc[VQ_MAX_SIZE];
    struct virtq_avail avail __attribute__((aligned(64)));
    struct virtq_used used __attribute__((aligned(64)));
} __attribute__((aligned(4096)));

struct vq {
    u64 mmio;                   /* the device's register window */
    u32 index, size;
    u16 avail_idx;              /* next avail slot we publish */
    u16 used_seen;              /* used entries consumed so far */
    struct vq_rings *rings;
};

/* Up to this many windows are probed (DSDT + command line). */
#define VIRTIO_MAX_WINDOWS          16

struct virtio_window {
    u64 addr, size;
    u32 irq, device_id;
};

/* What the kernel hands to ring 3 (enter_user's first argument). */
struct user_args {
    u64 mem_base, mem_bytes;    /* volt.mem workload region; bytes 0: none */
    u64 report_tsc;             /* mem-ok rate limit, TSC ticks */
    u64 tsc_khz;
    const char *cmdline;        /* the whole command line (ring 3 parses its own words) */
    u64 dsdt;                   /* DSDT address or 0 */
    u64 dirty_base, dirty_bytes; /* volt.dirty region (after volt.mem's); bytes 0: none */
    u64 dirty_period_tsc;       /* one dirty pass per volt.tick_ms */
};

/* ---- user-mode helpers (user.c) ---- */
#define SYS_WRITE   0           /* rdi = string, rsi = length */
#define SYS_IDLE    1           /* nothing left to do: halt (or power off); never returns */

u64 user_rdtsc(void);
u64 user_now(void);
u64 user_ms_to_tsc(u64 ms);
u64 user_tsc_to_ns(u64 ticks);                  /* TSC ticks at the kvmclock-derived rate */
void user_emit(struct line *l);
__attribute__((noreturn)) void user_idle(void);

/* Command-line words, parsed in ring 3. */
const char *cmdline_value(const char *cmdline, const char *key, u32 *len);
u64 parse_u64(const char *s, u32 len, u32 *used);
int parse_ipv4(const char *s, u32 len, u32 *out);

/* ---- transport (virtio.c) ---- */
u32 virtio_discover(const struct user_args *a, struct virtio_window *out, u32 max);
const struct virtio_window *virtio_find(const struct virtio_window *w, u32 n, u32 device_id);
const char *virtio_init(u64 mmio, u64 driver_features, u64 *device_features);
const char *virtio_queue_setup(struct vq *q, u64 mmio, u32 index, struct vq_rings *rings);
void virtio_driver_ok(u64 mmio);
u8 virtio_config8(u64 mmio, u32 offset);
u32 virtio_config32(u64 mmio, u32 offset);
u16 vq_add(struct vq *q, u16 head);             /* publish a chain; returns the avail slot */
void vq_notify(struct vq *q);
int vq_used(struct vq *q, struct virtq_used_elem *out);   /* 1 if one completion was taken */
u16 vq_in_flight(const struct vq *q);

/* ---- tasks: each poll makes progress without blocking; returns 0 once finished ---- */
void blk_start(const struct user_args *a, const struct virtio_window *w, u32 n);
int blk_poll(void);
void net_start(const struct user_args *a, const struct virtio_window *w, u32 n);
int net_poll(void);
void blkbench_start(const struct user_args *a, const struct virtio_window *w, u32 n);   /* volt.blk=bench */
int blkbench_poll(void);

#endif
