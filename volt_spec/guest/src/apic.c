/*
 * apic.c - x2APIC (MSR interface), TSC-deadline timer, INIT/SIPI, IOAPIC pin 1.
 *
 * x2APIC IDs come from MSR 0x802, never CPUID: on PVM, CPUID is the host's.
 */
#include "kernel.h"

#define SVR_APIC_ENABLE         (1u << 8)
#define LVT_MASKED              (1u << 16)
#define LVT_TSC_DEADLINE        (2u << 17)
#define ICR_INIT                (5u << 8)
#define ICR_STARTUP             (6u << 8)
#define ICR_LEVEL_ASSERT        (1u << 14)
#define ICR_FIXED               0
#define SIPI_VECTOR             (AP_TRAMPOLINE_ADDR >> 12)
#define INIT_SIPI_GAP_US        10
#define PIC_MASTER_DATA         0x21
#define PIC_SLAVE_DATA          0xa1

#define IOAPIC_BASE             0xfec00000    /* layout.IOAPIC_ADDR */
#define IOAPIC_REGSEL           0x00
#define IOAPIC_WIN              0x10
#define IOAPIC_REDTBL(pin)      (0x10 + 2 * (pin))
#define KBD_PIN                 1               /* layout.I8042_IRQ */

void apic_init_bsp(void)
{
    /* Legacy 8259s may still be programmed by firmware (SeaBIOS): mask them. */
    outb(PIC_MASTER_DATA, 0xff);
    outb(PIC_SLAVE_DATA, 0xff);
    wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | APIC_BASE_EN | APIC_BASE_EXTD);
    wrmsr(MSR_X2APIC_SVR, SVR_APIC_ENABLE | SPURIOUS_VECTOR);
    wrmsr(MSR_X2APIC_LVT_LINT0, LVT_MASKED);
    wrmsr(MSR_X2APIC_LVT_TIMER, TIMER_VECTOR | LVT_TSC_DEADLINE);
}

void apic_init_ap(void)
{
    wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | APIC_BASE_EN | APIC_BASE_EXTD);
    wrmsr(MSR_X2APIC_SVR, SVR_APIC_ENABLE | SPURIOUS_VECTOR);   /* INIT left it software-disabled */
}

u32 apic_id(void) { return (u32)rdmsr(MSR_X2APIC_ID); }

void apic_eoi(void) { wrmsr(MSR_X2APIC_EOI, 0); }

void apic_arm_deadline(u64 tsc) { wrmsr(MSR_TSC_DEADLINE, tsc); }

void apic_send_ipi(u32 dest, u32 icr_low) { wrmsr(MSR_X2APIC_ICR, ((u64)dest << 32) | icr_low); }

void apic_start_aps(u32 bsp_id)
{
    /* The real-mode trampoline must sit in the SIPI page: copy it (a few qwords). */
    u64 *dst = (u64 *)AP_TRAMPOLINE_ADDR;
    const u64 *src = (const u64 *)ap_trampoline;
    u64 words = ((u64)(ap_trampoline_end - ap_trampoline) + 7) / 8;
    for (u64 i = 0; i < words; i++)
        ((volatile u64 *)dst)[i] = src[i];
    for (u32 i = 0; i < platform.cpu_count; i++) {
        u32 id = platform.apic_ids[i];
        if (id == bsp_id)
            continue;
        apic_send_ipi(id, ICR_INIT | ICR_LEVEL_ASSERT);
        delay_us(INIT_SIPI_GAP_US);
        apic_send_ipi(id, ICR_STARTUP | SIPI_VECTOR);
        delay_us(INIT_SIPI_GAP_US);
        apic_send_ipi(id, ICR_STARTUP | SIPI_VECTOR);
    }
}

static void ioapic_write(u32 reg, u32 v)
{
    *(volatile u32 *)(IOAPIC_BASE + IOAPIC_REGSEL) = reg;
    *(volatile u32 *)(IOAPIC_BASE + IOAPIC_WIN) = v;
}

void ioapic_route_keyboard(u32 dest)
{
    /* Fixed delivery, physical destination, edge, active high, unmasked. */
    ioapic_write(IOAPIC_REDTBL(KBD_PIN) + 1, dest << 24);
    ioapic_write(IOAPIC_REDTBL(KBD_PIN), KBD_VECTOR);
}
