/*
 * net.c - the virtio-net task (ring 3): ARP for the peer, then ICMP echo requests.
 *
 * volt.net=echo         resolve the peer, ping it N times: "net-ok <sent> <received>",
 *                       or "net-FAIL <reason>" (ARP unanswered after ARP_TRIES x 2 s)
 * volt.io=loop          ping forever: "net-round <n> <sent> <received>" at most every 100 ms
 * volt.ip / volt.peer   a.b.c.d (defaults 10.0.2.15 / 10.0.2.1)
 * volt.net_count=<n>    N (default 8)
 * volt.net=flood        resolve the peer, then send N echo requests as fast as the
 *                       window allows (volt.net_window=<w> unanswered, default 8,
 *                       at most the TX ring; volt.net_count default 20000; stop
 *                       sending after volt.net_ms=<ms>, default 2000) and count the
 *                       replies: "net-bench pps sent=<n> received=<n> ns=<n>", ns
 *                       from the first request to the last reply (TSC at the
 *                       kvmclock-derived rate).  Requests go out in batches, one
 *                       QueueNotify per batch.  When nothing arrives for
 *                       FLOOD_STALL_MS the unanswered ones count as lost.
 *
 * One echo request is outstanding at a time; each waits at most
 * PING_TIMEOUT_MS for its reply.  ARP requests for our address are answered
 * at any time.  Receive buffers are recycled as soon as they are parsed.
 * In loop mode nothing is fatal: after REARP_AFTER_LOSSES lost pings in a row
 * (a restored clone may sit on a new TAP) the peer is resolved again, for as
 * long as it takes.
 */
#include "virtio.h"

#define NET_F_MAC           5                   /* feature bit: config holds the MAC */
#define NET_CFG_MAC         0
#define NET_HDR_LEN         12                  /* struct virtio_net_hdr_v1 (VERSION_1) */
#define RXQ                 0
#define TXQ                 1
#define BUF_SIZE            2048
#define ETH_HLEN            14
#define ETH_MIN_FRAME       60
#define ETH_P_IP            0x0800
#define ETH_P_ARP           0x0806
#define ARP_REQUEST         1
#define ARP_REPLY           2
#define ARP_LEN             28
#define IP_HLEN             20
#define IP_PROTO_ICMP       1
#define IP_TTL              64
#define ICMP_ECHO_REPLY     0
#define ICMP_ECHO_REQUEST   8
#define ICMP_HLEN           8
#define PING_PAYLOAD        32
#define PING_ID             0x564f              /* "VO" */
#define DEFAULT_IP          0x0a00020fu         /* 10.0.2.15 */
#define DEFAULT_PEER        0x0a000201u         /* 10.0.2.1 */
#define DEFAULT_COUNT       8
#define PING_TIMEOUT_MS     2000
#define ARP_TIMEOUT_MS      2000
#define ARP_TRIES           3
#define REARP_AFTER_LOSSES  3
#define ROUND_REPORT_MS     100
#define FLOOD_COUNT         20000
#define FLOOD_WINDOW        8
#define FLOOD_MS            2000
#define FLOOD_STALL_MS      200

enum net_phase { NP_ARP, NP_PING, NP_DONE };

static struct vq_rings rx_rings, tx_rings;
static u8 rx_bufs[VQ_MAX_SIZE][BUF_SIZE] __attribute__((aligned(4096)));
static u8 tx_bufs[VQ_MAX_SIZE][BUF_SIZE] __attribute__((aligned(4096)));
static const u8 fallback_mac[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };

static struct {
    struct vq rx, tx;
    enum net_phase phase;
    u8 mac[6], peer_mac[6];
    u32 ip, peer;
    int loop, waiting, reported;
    u64 count, sent, received, tries, rounds, losses;
    u16 seq;
    u64 deadline, last_report;
    int flood;                                  /* volt.net=flood */
    u64 window, lost, limit_tsc, flood_start, last_rx, last_progress;
} net;

static void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void put32(u8 *p, u32 v) { p[0] = (u8)(v >> 24); p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v; }
static u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static u32 get32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }

static void copy(u8 *d, const u8 *s, u32 n)
{
    for (u32 i = 0; i < n; i++)
        d[i] = s[i];
}

static int same(const u8 *a, const u8 *b, u32 n)
{
    for (u32 i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* RFC 1071 Internet checksum, big-endian 16-bit words. */
static u16 inet_checksum(const u8 *p, u32 n)
{
    u32 sum = 0;
    for (u32 i = 0; i + 1 < n; i += 2)
        sum += get16(p + i);
    if (n & 1)
        sum += (u32)p[n - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (u16)~sum;
}

static void say(const char *word, u64 a, u64 b, int two)
{
    struct line l;
    l.len = 0;
    line_str(&l, word);
    line_dec(&l, a);
    if (two) {
        line_str(&l, " ");
        line_dec(&l, b);
    }
    user_emit(&l);
}

static void fail(const char *reason)
{
    struct line l;
    l.len = 0;
    line_str(&l, "net-FAIL ");
    line_str(&l, reason);
    user_emit(&l);
    net.phase = NP_DONE;
}

/* A free transmit buffer (zeroed virtio-net header in front), or NULL when the ring is full. */
static u8 *tx_frame(void)
{
    struct virtq_used_elem e;
    while (vq_used(&net.tx, &e))
        ;                                       /* reclaim: buffers are reused in avail order */
    if (vq_in_flight(&net.tx) >= net.tx.size)
        return NULL;
    u8 *buf = tx_bufs[net.tx.avail_idx & (net.tx.size - 1)];
    for (u32 i = 0; i < NET_HDR_LEN + ETH_MIN_FRAME; i++)
        buf[i] = 0;
    return buf + NET_HDR_LEN;
}

/* Publish a frame without notifying (flood batches); tx_send notifies at once. */
static void tx_post(u8 *frame, u32 len)
{
    u16 slot = (u16)(net.tx.avail_idx & (net.tx.size - 1));
    if (len < ETH_MIN_FRAME)
        len = ETH_MIN_FRAME;
    net.tx.rings->desc[slot] = (struct virtq_desc){ (u64)(frame - NET_HDR_LEN), NET_HDR_LEN + len, 0, 0 };
    vq_add(&net.tx, slot);
}

static void tx_send(u8 *frame, u32 len)
{
    tx_post(frame, len);
    vq_notify(&net.tx);
}

static void eth_header(u8 *f, const u8 *dst, u16 type)
{
    copy(f, dst, 6);
    copy(f + 6, net.mac, 6);
    put16(f + 12, type);
}

static void send_arp(u16 op, const u8 *dst_mac, u32 dst_ip)
{
    static const u8 broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    u8 *f = tx_frame();
    if (!f)
        return;
    eth_header(f, op == ARP_REQUEST ? broadcast : dst_mac, ETH_P_ARP);
    u8 *a = f + ETH_HLEN;
    put16(a, 1);                                /* hardware: Ethernet */
    put16(a + 2, ETH_P_IP);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, op);
    copy(a + 8, net.mac, 6);
    put32(a + 14, net.ip);
    if (op == ARP_REPLY)
        copy(a + 18, dst_mac, 6);               /* a request leaves the target MAC zero */
    put32(a + 24, dst_ip);
    tx_send(f, ETH_HLEN + ARP_LEN);
}

/* An echo request with sequence net.seq; notify = 0 leaves the QueueNotify to the caller. */
static int post_ping(int notify)
{
    u8 *f = tx_frame();
    if (!f)
        return 0;
    eth_header(f, net.peer_mac, ETH_P_IP);
    u8 *ip = f + ETH_HLEN;
    u16 total = IP_HLEN + ICMP_HLEN + PING_PAYLOAD;
    ip[0] = 0x45;                               /* IPv4, 5-word header */
    put16(ip + 2, total);
    put16(ip + 4, net.seq);                     /* identification */
    ip[8] = IP_TTL;
    ip[9] = IP_PROTO_ICMP;
    put32(ip + 12, net.ip);
    put32(ip + 16, net.peer);
    put16(ip + 10, inet_checksum(ip, IP_HLEN));
    u8 *icmp = ip + IP_HLEN;
    icmp[0] = ICMP_ECHO_REQUEST;
    put16(icmp + 4, PING_ID);
    put16(icmp + 6, net.seq);
    for (u32 i = 0; i < PING_PAYLOAD; i++)
        icmp[ICMP_HLEN + i] = (u8)(i + net.seq);
    put16(icmp + 2, inet_checksum(icmp, ICMP_HLEN + PING_PAYLOAD));
    if (notify)
        tx_send(f, ETH_HLEN + total);
    else
        tx_post(f, ETH_HLEN + total);
    return 1;
}

static int send_ping(void) { return post_ping(1); }

static void on_arp(const u8 *a, u32 len)
{
    if (len < ARP_LEN || get16(a) != 1 || get16(a + 2) != ETH_P_IP)
        return;
    u16 op = get16(a + 6);
    u32 sender = get32(a + 14), target = get32(a + 24);
    if (op == ARP_REQUEST && target == net.ip)
        send_arp(ARP_REPLY, a + 8, sender);
    if (sender == net.peer && net.phase == NP_ARP && (op == ARP_REPLY || target == net.ip)) {
        copy(net.peer_mac, a + 8, 6);
        net.phase = NP_PING;
        net.waiting = 0;
    }
}

static void on_ip(const u8 *ip, u32 len)
{
    if (len < IP_HLEN || ip[0] >> 4 != 4 || ip[9] != IP_PROTO_ICMP)
        return;
    u32 hl = (u32)(ip[0] & 0xf) * 4;
    if (hl < IP_HLEN || len < hl + ICMP_HLEN || get32(ip + 12) != net.peer || get32(ip + 16) != net.ip)
        return;
    const u8 *icmp = ip + hl;
    if (net.flood) {
        if (icmp[0] == ICMP_ECHO_REPLY && get16(icmp + 4) == PING_ID && net.phase == NP_PING &&
            net.received < net.sent) {
            net.received++;
            net.last_rx = net.last_progress = user_rdtsc();
        }
        return;
    }
    if (icmp[0] == ICMP_ECHO_REPLY && get16(icmp + 4) == PING_ID && net.phase == NP_PING &&
        net.waiting && get16(icmp + 6) == net.seq) {
        net.received++;
        net.waiting = 0;
        net.losses = 0;
    }
}

static void rx_give(u16 id)
{
    net.rx.rings->desc[id] = (struct virtq_desc){ (u64)rx_bufs[id], BUF_SIZE, VIRTQ_DESC_F_WRITE, 0 };
    vq_add(&net.rx, id);
}

/* Parse every received frame and hand its buffer straight back. */
static void rx_drain(void)
{
    struct virtq_used_elem e;
    int recycled = 0;
    while (vq_used(&net.rx, &e)) {
        u16 id = (u16)e.id;
        if (id < net.rx.size && e.len > NET_HDR_LEN + ETH_HLEN) {
            const u8 *f = rx_bufs[id] + NET_HDR_LEN;
            u32 len = e.len - NET_HDR_LEN;
            if (len > BUF_SIZE - NET_HDR_LEN)
                len = BUF_SIZE - NET_HDR_LEN;
            u16 type = get16(f + 12);
            if (type == ETH_P_ARP)
                on_arp(f + ETH_HLEN, len - ETH_HLEN);
            else if (type == ETH_P_IP && (same(f, net.mac, 6) || f[0] == 0xff))
                on_ip(f + ETH_HLEN, len - ETH_HLEN);
        }
        if (id < net.rx.size) {
            rx_give(id);
            recycled = 1;
        }
    }
    if (recycled)
        vq_notify(&net.rx);
}

static int parse_ip_word(const struct user_args *a, const char *key, u32 *out)
{
    u32 len;
    const char *v = cmdline_value(a->cmdline, key, &len);
    return !v || parse_ipv4(v, len, out);
}

void net_start(const struct user_args *a, const struct virtio_window *w, u32 n)
{
    u32 len;
    const char *v = cmdline_value(a->cmdline, "volt.net=", &len);
    net.phase = NP_DONE;
    net.flood = v && len == 5 && v[0] == 'f' && v[1] == 'l' && v[2] == 'o' && v[3] == 'o' && v[4] == 'd';
    if (!net.flood && !(len == 4 && v[0] == 'e' && v[1] == 'c' && v[2] == 'h' && v[3] == 'o')) {
        fail("bad-mode");
        return;
    }
    net.ip = DEFAULT_IP;
    net.peer = DEFAULT_PEER;
    if (!parse_ip_word(a, "volt.ip=", &net.ip) || !parse_ip_word(a, "volt.peer=", &net.peer)) {
        fail("bad-address");
        return;
    }
    net.count = net.flood ? FLOOD_COUNT : DEFAULT_COUNT;
    if ((v = cmdline_value(a->cmdline, "volt.net_count=", &len)) != NULL) {
        u32 used;
        net.count = parse_u64(v, len, &used);
    }
    net.window = FLOOD_WINDOW;
    if ((v = cmdline_value(a->cmdline, "volt.net_window=", &len)) != NULL) {
        u32 used;
        net.window = parse_u64(v, len, &used);
    }
    net.limit_tsc = user_ms_to_tsc(FLOOD_MS);
    if ((v = cmdline_value(a->cmdline, "volt.net_ms=", &len)) != NULL) {
        u32 used;
        net.limit_tsc = user_ms_to_tsc(parse_u64(v, len, &used));
    }
    v = cmdline_value(a->cmdline, "volt.io=", &len);
    net.loop = !net.flood && v && len == 4 && v[0] == 'l' && v[1] == 'o' && v[2] == 'o' && v[3] == 'p';
    const struct virtio_window *dev = virtio_find(w, n, VIRTIO_ID_NET);
    if (!dev) {
        fail("no-device");
        return;
    }
    u64 features;
    const char *err = virtio_init(dev->addr, 1UL << NET_F_MAC, &features);
    if (!err)
        err = virtio_queue_setup(&net.rx, dev->addr, RXQ, &rx_rings);
    if (!err)
        err = virtio_queue_setup(&net.tx, dev->addr, TXQ, &tx_rings);
    if (err) {
        fail(err);
        return;
    }
    if (!net.window || net.window > net.tx.size)
        net.window = net.tx.size;
    for (u32 i = 0; i < 6; i++)
        net.mac[i] = features & (1UL << NET_F_MAC) ? virtio_config8(dev->addr, NET_CFG_MAC + i) : fallback_mac[i];
    for (u16 i = 0; i < net.rx.size; i++)
        rx_give(i);
    virtio_driver_ok(dev->addr);
    vq_notify(&net.rx);
    net.phase = NP_ARP;
}

static void report_round(u64 now)
{
    if (net.reported && now - net.last_report < user_ms_to_tsc(ROUND_REPORT_MS))
        return;
    net.rounds++;
    struct line l;
    l.len = 0;
    line_str(&l, "net-round ");
    line_dec(&l, net.rounds);
    line_str(&l, " ");
    line_dec(&l, net.sent);
    line_str(&l, " ");
    line_dec(&l, net.received);
    user_emit(&l);
    net.last_report = now;
    net.reported = 1;
}

static void flood_report(void)
{
    struct line l;
    l.len = 0;
    line_str(&l, "net-bench pps sent=");
    line_dec(&l, net.sent);
    line_str(&l, " received=");
    line_dec(&l, net.received);
    line_str(&l, " ns=");
    line_dec(&l, user_tsc_to_ns((net.received ? net.last_rx : user_rdtsc()) - net.flood_start));
    user_emit(&l);
    net.phase = NP_DONE;
}

/* Keep `window` requests unanswered while there are some left to send; finish when all are answered. */
static void flood_step(void)
{
    u64 now = user_rdtsc();
    if (!net.flood_start)
        net.flood_start = net.last_progress = now;
    if (net.received + net.lost > net.sent)
        net.lost = net.sent - net.received;     /* late replies to requests written off */
    u64 unanswered = net.sent - net.received - net.lost;
    int sending = net.sent < net.count && (s64)(now - net.flood_start - net.limit_tsc) < 0;
    if (!sending && !unanswered) {
        flood_report();
        return;
    }
    if (unanswered && now - net.last_progress > user_ms_to_tsc(FLOOD_STALL_MS)) {
        net.lost += unanswered;                 /* dropped somewhere: stop waiting for them */
        net.last_progress = now;
        return;
    }
    int posted = 0;
    while (sending && net.sent - net.received - net.lost < net.window && net.sent < net.count) {
        net.seq++;
        if (!post_ping(0))
            break;                              /* TX ring full: reclaim on the next poll */
        net.sent++;
        posted = 1;
    }
    if (posted) {
        vq_notify(&net.tx);
        if (!unanswered)
            net.last_progress = now;
    }
}

int net_poll(void)
{
    if (net.phase == NP_DONE)
        return 0;
    rx_drain();
    u64 now = user_now();
    int expired = net.waiting && (s64)(now - net.deadline) > 0;
    switch (net.phase) {
    case NP_ARP:
        if (net.waiting && !expired)
            break;
        if (net.tries >= ARP_TRIES && !net.loop) {
            fail("arp-timeout");
            break;
        }
        if (net.loop && net.sent)
            report_round(now);
        net.tries++;
        send_arp(ARP_REQUEST, NULL, net.peer);
        net.waiting = 1;
        net.deadline = now + user_ms_to_tsc(ARP_TIMEOUT_MS);
        break;
    case NP_PING:
        if (net.flood) {
            flood_step();
            break;
        }
        if (net.waiting && !expired)
            break;
        if (expired && net.loop && ++net.losses >= REARP_AFTER_LOSSES) {
            net.phase = NP_ARP;
            net.waiting = 0;
            net.tries = 0;
            net.losses = 0;
            break;
        }
        net.waiting = 0;
        if (net.loop && net.sent)
            report_round(now);
        if (!net.loop && net.sent >= net.count) {
            say("net-ok ", net.sent, net.received, 1);
            net.phase = NP_DONE;
            break;
        }
        net.seq++;
        if (send_ping()) {
            net.sent++;
            net.waiting = 1;
            net.deadline = now + user_ms_to_tsc(PING_TIMEOUT_MS);
        }
        break;
    case NP_DONE:
        break;
    }
    return net.phase != NP_DONE;
}
