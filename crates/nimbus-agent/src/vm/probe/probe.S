/* Accelerator probe guest: a 64 KiB firmware image. From the reset vector it
 * enters protected mode, builds identity page tables, enables long mode
 * (EFER.LME through WRMSR, CR4.PAE, CR0.PG), runs 64-bit code that touches
 * CR3 and CPUID in a loop, and reports 42 on the isa-debug-exit port 0xf4.
 * An accelerator that cannot run an ordinary kernel's start-up path fails
 * somewhere on the way; QEMU then exits with another status or times out.
 *
 * Build: as --32 -o probe.o probe.S && ld -m elf_i386 -e 0 -Ttext=0 --oformat binary -o probe.bin probe.o
 * The bytes are embedded in ../probe.rs (code from offset 0, the jump at 0xfff0). */
    .code16
    .section .text
    .org 0
start16:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    /* lgdt from the image: offset of gdt_desc within the 64 KiB segment at 0xffff0000 */
    data32 lgdt %cs:(gdt_desc - start16)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    data32 ljmp $0x08, $(0xffff0000 + (start32 - start16))

    .code32
start32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    /* page tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD) */
    movl $0x1000, %edi
    xorl %eax, %eax
    movl $(3 * 1024), %ecx
    rep stosl
    movl $0x2003, 0x1000
    movl $0x3003, 0x2000
    movl $0x00000083, 0x3000
    /* everything from here runs from RAM at 0x5000, identity-mapped once paging is on */
    movl $(0xffff0000 + (low32 - start16)), %esi
    movl $0x5000, %edi
    movl $(low_end - low32), %ecx
    rep movsb
    ljmp $0x08, $0x5000

low32:
    lgdt (0x5000 + (gdt_desc_low - low32))
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0x1000, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmp $0x18, $(0x5000 + (start64 - low32))

    .code64
start64:
    movl $20000, %esi
1:  movq %cr3, %rax
    movq %rax, %cr3
    xorl %eax, %eax
    cpuid
    decl %esi
    jnz 1b
    movb $42, %al
    outb %al, $0xf4
2:  hlt
    jmp 2b

    .align 8
gdt_low:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
gdt_desc_low:
    .word gdt_desc_low - gdt_low - 1
    .long 0x5000 + (gdt_low - low32)
low_end:

    .align 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff   /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff   /* 0x10: data */
    .quad 0x00af9a000000ffff   /* 0x18: 64-bit code */
gdt_desc:
    .word gdt_desc - gdt - 1
    .long 0xffff0000 + (gdt - start16)

    .org 0xfff0
reset:
    .code16
    jmp start16
    .org 0x10000
