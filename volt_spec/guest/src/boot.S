/*
 * boot.S - PVH entry, static long-mode environment, interrupt stubs, AP trampoline.
 *
 * Everything a CPU needs to run 64-bit code (page tables, GDT, TSS, IDT) is
 * static data assembled here, so guest ring 0 (emulated ~2000x slower on PVM)
 * executes only a few dozen instructions between PVH entry and C.
 * The IDT and the TSS descriptor hold absolute addresses as assembler
 * constants: the linker script pins .fixed at FIXED_BASE and asserts it.
 */
#include "defs.h"

/* ---- Xen PVH ELF note: the 32-bit entry point (XEN_ELFNOTE_PHYS32_ENTRY). */
        .section .note.Xen, "a", @note
        .balign 4
        .long 4                         /* namesz: "Xen\0" */
        .long 8                         /* descsz: 64-bit address (QEMU reads 8 bytes) */
        .long XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .balign 4
        .quad pvh_entry32

/* ---- 32-bit protected mode -> long mode. Shared by the BSP and the APs. */
.macro ENTER_LONG_MODE target
        movl    $CR4_PAE, %eax
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $MSR_EFER, %ecx
        movl    $EFER_LME, %eax
        xorl    %edx, %edx
        wrmsr
        movl    $(CR0_PG | CR0_WP | CR0_NE | CR0_ET | CR0_PE), %eax
        movl    %eax, %cr0
        ljmp    $SEL_KCODE64, $\target
.endm

.macro LOAD_DATA_SEGMENTS
        movl    $SEL_KDATA, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        xorl    %eax, %eax
        movl    %eax, %fs
        movl    %eax, %gs
.endm

        .section .text.entry, "ax"
        .code32
        .globl  pvh_entry32
pvh_entry32:
        /* ebx = struct hvm_start_info; keep it in edi (survives into 64-bit rdi). */
        movl    %ebx, %edi
        lgdt    gdt_ptr
        ENTER_LONG_MODE bsp_entry64

        .code64
bsp_entry64:
        LOAD_DATA_SEGMENTS
        movq    $bsp_stack_top, %rsp
        movl    $SEL_TSS, %eax
        ltr     %ax
        lidt    idt_ptr
        call    kmain                   /* kmain(u32 start_info_paddr) never returns */
1:      cli
        hlt
        jmp     1b

/* ---- APs: the real-mode part is copied to AP_TRAMPOLINE_ADDR (SIPI vector). */
        .code16
        .globl  ap_trampoline, ap_trampoline_end
ap_trampoline:
        cli
        movw    %cs, %ax
        movw    %ax, %ds
        lgdtl   ap_gdt_ptr - ap_trampoline
        movl    $CR0_PE, %eax
        movl    %eax, %cr0
        ljmpl   $SEL_KCODE32, $ap_entry32
        .balign 4
ap_gdt_ptr:
        .word   gdt_end - gdt - 1
        .long   gdt
ap_trampoline_end:

        .code32
ap_entry32:
        LOAD_DATA_SEGMENTS
        ENTER_LONG_MODE ap_entry64

        .code64
ap_entry64:
        LOAD_DATA_SEGMENTS
        movl    $1, %eax
        lock xaddl %eax, ap_next_stack  /* eax = this AP's index */
        incl    %eax
        shlq    $AP_STACK_SHIFT, %rax
        leaq    ap_stacks(%rax), %rsp
        lidt    idt_ptr
        call    ap_main
1:      cli
        hlt
        jmp     1b

/* ---- Common interrupt path: the stubs push (error code, vector). */
        .text
isr_common:
        pushq   %rax
        pushq   %rbx
        pushq   %rcx
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        pushq   %rbp
        pushq   %r8
        pushq   %r9
        pushq   %r10
        pushq   %r11
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        movq    %rsp, %rdi
        call    trap
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %r11
        popq    %r10
        popq    %r9
        popq    %r8
        popq    %rbp
        popq    %rdi
        popq    %rsi
        popq    %rdx
        popq    %rcx
        popq    %rbx
        popq    %rax
        addq    $16, %rsp
        iretq

/* enter_user(rip, rsp, a0, a1, a2): iretq to ring 3 with IF=1; never returns. */
        .globl  enter_user
enter_user:
        pushq   $(SEL_UDATA | 3)
        pushq   %rsi
        pushq   $RFLAGS_USER
        pushq   $(SEL_UCODE64 | 3)
        pushq   %rdi
        movq    %rdx, %rdi
        movq    %rcx, %rsi
        movq    %r8, %rdx
        iretq

/* ---- Pinned at FIXED_BASE: 256 interrupt stubs of 16 bytes, then the TSS. */
        .section .fixed, "awx"
        .globl  isr_stubs, tss64
isr_stubs:
        .set    vec, 0
        .rept   256
        .org    isr_stubs + 16 * vec, 0xcc
        .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
        .else
        pushq   $0
        .endif
        pushq   $vec
        jmp     isr_common
        .set    vec, vec + 1
        .endr
        .org    isr_stubs + 16 * 256, 0xcc
tss64:                                  /* at TSS_ADDR */
        .long   0
        .quad   bsp_stack_top           /* rsp0: ring 3 -> ring 0 (BSP only) */
        .fill   92, 1, 0
        .word   104                     /* I/O bitmap offset: none */
tss64_end:

/* ---- Data: GDT, IDT, page tables. */
        .data
        .balign 16
gdt:
        .quad   0
        .quad   0x00cf9b000000ffff      /* 0x08 kernel code 32 */
        .quad   0x00af9b000000ffff      /* 0x10 kernel code 64 */
        .quad   0x00cf93000000ffff      /* 0x18 kernel data */
        .quad   0x00cff3000000ffff      /* 0x20 user data (DPL 3) */
        .quad   0x00affb000000ffff      /* 0x28 user code 64 (DPL 3) */
        .word   103                     /* 0x30 64-bit TSS, available */
        .word   TSS_ADDR & 0xffff
        .byte   (TSS_ADDR >> 16) & 0xff
        .byte   0x89
        .byte   0
        .byte   (TSS_ADDR >> 24) & 0xff
        .long   0
        .long   0
gdt_end:
        .balign 8
        .word   0, 0, 0
gdt_ptr:
        .word   gdt_end - gdt - 1
        .quad   gdt
        .balign 8
        .word   0, 0, 0
idt_ptr:
        .word   idt_end - idt - 1
        .quad   idt

        .balign 16
idt:
        .set    vec, 0
        .rept   256
        .word   (FIXED_BASE + 16 * vec) & 0xffff
        .word   SEL_KCODE64
        .byte   0
        .if vec == SYSCALL_VECTOR
        .byte   0xee                    /* present, DPL 3, 64-bit interrupt gate */
        .else
        .byte   0x8e                    /* present, DPL 0, 64-bit interrupt gate */
        .endif
        .word   ((FIXED_BASE + 16 * vec) >> 16) & 0xffff
        .long   0
        .long   0
        .set    vec, vec + 1
        .endr
idt_end:

        .globl  ap_next_stack
        .balign 4
ap_next_stack:
        .long   0

/* Identity map of 0..8 GiB with 2 MiB pages, present|writable|user everywhere. */
        .section .data.pagetables, "aw"
        .balign 4096
        .globl  pml4
pml4:
        .quad   pdpt + PTE_TABLE
        .fill   511, 8, 0
pdpt:
        .set    i, 0
        .rept   IDENTITY_GIB
        .quad   pds + 4096 * i + PTE_TABLE
        .set    i, i + 1
        .endr
        .fill   512 - IDENTITY_GIB, 8, 0
pds:
        .set    i, 0
        .rept   512 * IDENTITY_GIB
        .quad   (i << 21) + PTE_LARGE
        .set    i, i + 1
        .endr

        .bss
        .balign 4096
bsp_stack:
        .skip   BSP_STACK_SIZE
bsp_stack_top:
        .globl  ap_stacks
ap_stacks:                              /* AP i (0-based) uses [i*4K, (i+1)*4K) above this */
        .skip   AP_STACK_SIZE * MAX_CPUS

        .section .note.GNU-stack, "", @progbits
