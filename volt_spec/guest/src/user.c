/*
 * user.c - the ring-3 memory workload (runs natively on PVM).
 *
 * Fills the region with a pattern that is a pure function of the address,
 * then verifies it forever.  Only ring-3-safe code here: no kernel calls,
 * printing goes through int 0x80.
 */
#include "kernel.h"

#define PATTERN_MUL     0x9e3779b97f4a7c15UL
#define PATTERN_XOR     0x5a17c0de0b5e55edUL

static inline u64 pattern(u64 addr) { return (addr * PATTERN_MUL) ^ PATTERN_XOR; }

static inline u64 user_rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

/* int 0x80 (rdi = string, rsi = length); the kernel takes it via the gate or via #UD on PVM. */
static void user_write(const char *s, u64 len)
{
    __asm__ volatile("int $0x80" :: "D"(s), "S"(len) : "memory");
}

static void report(const char *prefix, u64 value)
{
    char buf[64];
    u64 n = 0;
    while (*prefix)
        buf[n++] = *prefix++;
    for (int shift = 60; shift >= 0; shift -= 4)
        buf[n++] = "0123456789abcdef"[(value >> shift) & 0xf];
    buf[n++] = '\n';
    user_write(buf, n);
}

void user_main(u64 base, u64 bytes, u64 report_tsc)
{
    volatile u64 *p = (volatile u64 *)base;
    u64 words = bytes / 8;
    for (u64 i = 0; i < words; i++)
        p[i] = pattern((u64)&p[i]);
    u64 last_report = 0;
    int first = 1;
    for (;;) {
        u64 sum = 0, bad = 0;
        int corrupt = 0;
        for (u64 i = 0; i < words; i++) {
            u64 w = p[i];
            if (w != pattern((u64)&p[i]) && !corrupt) {
                corrupt = 1;
                bad = (u64)&p[i];
            }
            sum = ((sum << 7) | (sum >> 57)) ^ w;
        }
        u64 now = user_rdtsc();
        if (corrupt) {
            report("mem-CORRUPT ", bad);
        } else if (first || now - last_report >= report_tsc) {
            report("mem-ok ", sum);
            last_report = now;
            first = 0;
        }
    }
}
