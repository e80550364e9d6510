/*
 * defs.h - constants shared by the assembler entry code and the C kernel.
 *
 * Preprocessor-only (no C types) so boot.S can include it.  Addresses that
 * the VMM also knows (AP trampoline page, COM1, IOAPIC) mirror
 * volt_spec/layout.py.
 */
#ifndef VOLT_DEFS_H
#define VOLT_DEFS_H

/* Image layout (the linker script asserts these). */
#define KERNEL_BASE         0x100000    /* physical 1 MiB */
#define FIXED_BASE          0x100000    /* .fixed: interrupt stubs, then the TSS */
#define TSS_ADDR            (FIXED_BASE + 16 * 256)
#define AP_TRAMPOLINE_ADDR  0x8000      /* layout.GUEST_FREE_LOW; SIPI vector 0x08 */
#define IDENTITY_GIB        8           /* static identity map: 0..8 GiB */
#define MAX_CPUS            64
#define BSP_STACK_SIZE      16384
#define AP_STACK_SHIFT      12
#define AP_STACK_SIZE       (1 << AP_STACK_SHIFT)
#define USER_STACK_SIZE     16384

/* Xen ELF note type for the PVH 32-bit entry point. */
#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* GDT selectors. */
#define SEL_KCODE32         0x08
#define SEL_KCODE64         0x10
#define SEL_KDATA           0x18
#define SEL_UDATA           0x20
#define SEL_UCODE64         0x28
#define SEL_TSS             0x30

/* Control registers and EFER. */
#define CR0_PE              (1 << 0)
#define CR0_ET              (1 << 4)
#define CR0_NE              (1 << 5)
#define CR0_WP              (1 << 16)
#define CR0_PG              (1 << 31)
#define CR4_PAE             (1 << 5)
#define MSR_EFER            0xc0000080
#define EFER_LME            (1 << 8)
#define RFLAGS_IF           (1 << 9)
#define RFLAGS_USER         (RFLAGS_IF | 2)

/* Page-table entry bits. */
#define PTE_PRESENT         0x1
#define PTE_WRITE           0x2
#define PTE_USER            0x4
#define PTE_PS              0x80
#define PTE_TABLE           (PTE_PRESENT | PTE_WRITE | PTE_USER)
#define PTE_LARGE           (PTE_TABLE | PTE_PS)

/* Interrupt vectors. */
#define TIMER_VECTOR        0x40
#define KBD_VECTOR          0x41
#define WAKE_VECTOR         0x42        /* AP -> BSP "I reported" IPI */
#define SYSCALL_VECTOR      0x80        /* DPL-3 gate; on PVM ring-3 int n arrives as #UD */
#define SPURIOUS_VECTOR     0xff

#endif
