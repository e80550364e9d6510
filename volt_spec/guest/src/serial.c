/*
 * serial.c - polled COM1 output, serialised across CPUs by an xchg spinlock.
 *
 * Every port access is a VM exit, so lines are formatted first and written
 * in one locked pass, with the FIFO enabled: one LSR.THRE poll (THRE = FIFO
 * empty in 16550 FIFO mode) per 16 bytes instead of one per byte.
 */
#include "kernel.h"

#define COM1            0x3f8   /* layout.COM1_PORT */
#define UART_THR        0
#define UART_IER        1
#define UART_FCR        2
#define UART_LCR        3
#define UART_LSR        5
#define LCR_8N1         0x03
#define LSR_THRE        0x20
#define FCR_ENABLE_CLEAR 0x07   /* FIFO enable, clear RX and TX FIFOs */
#define FIFO_DEPTH      16
#define THRE_SPIN_MAX   100000  /* bounded: a missing UART must not hang the guest */

static volatile u32 serial_lock;

static void lock(void)
{
    u32 one = 1;
    for (;;) {
        __asm__ volatile("xchgl %0, %1" : "+r"(one), "+m"(serial_lock) :: "memory");
        if (!one)
            return;
        one = 1;
        while (serial_lock)
            cpu_relax();
    }
}

static void unlock(void)
{
    barrier();
    serial_lock = 0;
}

void serial_init(void)
{
    outb(COM1 + UART_IER, 0);
    outb(COM1 + UART_LCR, LCR_8N1);
    outb(COM1 + UART_FCR, FCR_ENABLE_CLEAR);
}

static void wait_thre(void)
{
    for (u32 i = 0; i < THRE_SPIN_MAX && !(inb(COM1 + UART_LSR) & LSR_THRE); i++)
        cpu_relax();
}

void serial_write(const char *s, u32 len)
{
    u64 flags = irq_save();
    lock();
    for (u32 i = 0; i < len; i++) {
        if (i % FIFO_DEPTH == 0)
            wait_thre();
        outb(COM1 + UART_THR, (u8)s[i]);
    }
    unlock();
    irq_restore(flags);
}

void line_str(struct line *l, const char *s)
{
    while (*s && l->len < sizeof(l->buf) - 1)
        l->buf[l->len++] = *s++;
}

void line_dec(struct line *l, u64 v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n && l->len < sizeof(l->buf) - 1)
        l->buf[l->len++] = tmp[--n];
}

void line_hex(struct line *l, u64 v, int digits)
{
    if (!digits) {   /* minimal digits */
        digits = 1;
        for (u64 t = v >> 4; t; t >>= 4)
            digits++;
    }
    while (digits-- && l->len < sizeof(l->buf) - 1)
        l->buf[l->len++] = "0123456789abcdef"[(v >> (4 * digits)) & 0xf];
}

void line_emit(struct line *l)
{
    l->buf[l->len++] = '\n';
    serial_write(l->buf, l->len);
    l->len = 0;
}

void print(const char *s)
{
    struct line l;
    l.len = 0;
    line_str(&l, s);
    line_emit(&l);
}

/* gcc may emit calls to these for struct initialisation; keep them plain loops. */
void *memset(void *d, int c, size_t n)
{
    u8 *p = d;
    for (size_t i = 0; i < n; i++)
        p[i] = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    u8 *p = d;
    const u8 *q = s;
    for (size_t i = 0; i < n; i++)
        p[i] = q[i];
    return d;
}
