/*
 * kernel.h - types, privileged-instruction helpers and cross-file prototypes.
 *
 * Guest ring 0 is emulated on PVM (a few microseconds per instruction), so
 * everything here is written to keep the kernel-mode instruction count low:
 * no loops over memory, no string instructions, no floating point.
 */
#ifndef VOLT_KERNEL_H
#define VOLT_KERNEL_H

#include "defs.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef signed char s8;
typedef long s64;
typedef unsigned long size_t;

#define NULL ((void *)0)
#define NS_PER_MS 1000000UL

/* MSRs. */
#define MSR_APIC_BASE           0x1b
#define APIC_BASE_EXTD          (1UL << 10)
#define APIC_BASE_EN            (1UL << 11)
#define MSR_TSC_DEADLINE        0x6e0
#define MSR_X2APIC_ID           0x802
#define MSR_X2APIC_EOI          0x80b
#define MSR_X2APIC_SVR          0x80f
#define MSR_X2APIC_ICR          0x830
#define MSR_X2APIC_LVT_TIMER    0x832
#define MSR_X2APIC_LVT_LINT0    0x835
#define MSR_X2APIC_LVT_LINT1    0x836
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01

/* The register frame isr_common builds on the stack. */
struct trap_frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8;
    u64 rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, error;
    u64 rip, cs, rflags, rsp, ss;
};

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}

static inline void wrmsr(u32 msr, u64 v)
{
    __asm__ volatile("wrmsr" :: "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

static inline void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

static inline __attribute__((noreturn)) void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt" ::: "memory");
}

static inline u64 irq_save(void)
{
    u64 flags;
    __asm__ volatile("pushfq; popq %0; cli" : "=r"(flags) :: "memory");
    return flags;
}

static inline void irq_restore(u64 flags)
{
    __asm__ volatile("pushq %0; popfq" :: "r"(flags) : "memory", "cc");
}

/* A line being formatted before it goes to the UART in one locked write. */
struct line {
    u32 len;
    char buf[160];
};

void line_str(struct line *l, const char *s);
void line_dec(struct line *l, u64 v);
void line_hex(struct line *l, u64 v, int digits);
void serial_init(void);
void serial_write(const char *s, u32 len);   /* whole line, under the spinlock */
void line_emit(struct line *l);              /* appends '\n', writes, resets */
void print(const char *s);

/* clock.c */
void clock_init(u64 entry_tsc);
u64 clock_ns(void);
u64 clock_ms(void);
u64 tsc_per_ms(void);
void delay_us(u64 us);

/* acpi.c */
struct platform {
    u32 cpu_count;                 /* enabled LAPIC/x2APIC entries in the MADT */
    u32 apic_ids[MAX_CPUS];
    u64 mem_mib;
    u64 rsdp;
    u64 dsdt;                      /* from the FADT; 0 if none */
};
extern struct platform platform;
void acpi_init(u64 rsdp_paddr);
u64 acpi_vmgenid_addr(void);
__attribute__((noreturn)) void acpi_poweroff(void);

/* apic.c */
void apic_init_bsp(void);
void apic_init_ap(void);
u32 apic_id(void);
void apic_eoi(void);
void apic_arm_deadline(u64 tsc);
void apic_send_ipi(u32 dest, u32 icr_low);
void apic_start_aps(u32 bsp_id);
void ioapic_route_keyboard(u32 dest);

/* main.c, user.c, boot.S */
void trap(struct trap_frame *f);
void ap_main(void);
struct user_args;
void user_main(const struct user_args *a);
__attribute__((noreturn)) void enter_user(void *rip, void *rsp, u64 a0, u64 a1, u64 a2);
extern char ap_trampoline[], ap_trampoline_end[];
extern volatile u32 ap_up_count;
extern u32 bsp_apic_id;

#endif
