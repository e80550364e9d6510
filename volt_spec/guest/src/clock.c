/*
 * clock.c - kvmclock (pvclock) time and TSC rate.
 *
 * kvmclock starts near 0 when the VM is created, so its reading at
 * VOLT-READY is "VM creation to ready".  Without kvmclock the guest falls
 * back to TSC time since its own entry, with the rate from CPUID.
 */
#include "kernel.h"

/* struct pvclock_vcpu_time_info (Linux arch/x86/include/asm/pvclock-abi.h). */
struct pvclock {
    volatile u32 version;
    u32 pad0;
    volatile u64 tsc_timestamp;
    volatile u64 system_time;
    volatile u32 tsc_to_system_mul;
    volatile s8 tsc_shift;
    volatile u8 flags;
    u8 pad[2];
} __attribute__((aligned(32)));

#define CPUID_TSC_CRYSTAL   0x15
#define CPUID_FREQ          0x16
#define CPUID_HV_TIMING     0x40000010  /* eax = TSC kHz (VMware/KVM timing leaf) */
#define FALLBACK_TSC_KHZ    1000000UL   /* 1 GHz guess when nothing says otherwise */

static struct pvclock bsp_pvclock;
static int have_kvmclock;
static u64 tsc_khz;
static u64 boot_tsc;

static u64 pvclock_scale(u64 delta, u32 mul, s8 shift)
{
    if (shift < 0)
        delta >>= -shift;
    else
        delta <<= shift;
    return (u64)(((unsigned __int128)delta * mul) >> 32);
}

static u64 tsc_khz_from_cpuid(void)
{
    u32 a, b, c, d;
    cpuid(0, &a, &b, &c, &d);
    u32 max_leaf = a;
    if (max_leaf >= CPUID_TSC_CRYSTAL) {
        cpuid(CPUID_TSC_CRYSTAL, &a, &b, &c, &d);
        if (a && b && c)
            return (u64)c * b / a / 1000;
    }
    if (max_leaf >= CPUID_FREQ) {
        cpuid(CPUID_FREQ, &a, &b, &c, &d);
        if (a & 0xffff)
            return (u64)(a & 0xffff) * 1000;
    }
    cpuid(0x40000000, &a, &b, &c, &d);
    if (a >= CPUID_HV_TIMING) {
        cpuid(CPUID_HV_TIMING, &a, &b, &c, &d);
        if (a)
            return a;
    }
    return FALLBACK_TSC_KHZ;
}

void clock_init(u64 entry_tsc)
{
    boot_tsc = entry_tsc;
    /* Enabling is one wrmsr; KVM fills the structure before the next guest entry. */
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (u64)&bsp_pvclock | 1);
    if (bsp_pvclock.version && bsp_pvclock.tsc_to_system_mul) {
        have_kvmclock = 1;
        /* tsc/ms = 1e6 * 2^32 / mul, corrected by 2^-shift. */
        u64 per_ms = (NS_PER_MS << 32) / bsp_pvclock.tsc_to_system_mul;
        s8 shift = bsp_pvclock.tsc_shift;
        tsc_khz = shift < 0 ? per_ms << -shift : per_ms >> shift;
    } else {
        tsc_khz = tsc_khz_from_cpuid();
    }
}

u64 clock_ns(void)
{
    if (!have_kvmclock) {
        u64 delta = rdtsc() - boot_tsc;
        return delta / tsc_khz * 1000000UL + delta % tsc_khz * 1000000UL / tsc_khz;
    }
    u32 v;
    u64 ns;
    do {
        v = bsp_pvclock.version;
        barrier();
        u64 delta = rdtsc() - bsp_pvclock.tsc_timestamp;
        ns = bsp_pvclock.system_time +
             pvclock_scale(delta, bsp_pvclock.tsc_to_system_mul, bsp_pvclock.tsc_shift);
        barrier();
    } while ((v & 1) || v != bsp_pvclock.version);
    return ns;
}

u64 clock_ms(void) { return clock_ns() / NS_PER_MS; }

u64 tsc_per_ms(void) { return tsc_khz; }

void delay_us(u64 us)
{
    u64 end = rdtsc() + us * tsc_khz / 1000;
    while ((s64)(rdtsc() - end) < 0)
        cpu_relax();
}
