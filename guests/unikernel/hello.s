# hello-uk: the Nimbus test unikernel.
#
# Booted by QEMU's -kernel through the PVH entry (XEN_ELFNOTE_PHYS32_ENTRY):
# it starts in 32-bit protected mode, paging off, with %ebx pointing at the
# hvm_start_info structure. It prints a marker on COM1, prints its command
# line, parses "exit=N" from it (N in 0..127, default 0) and leaves through
# QEMU's isa-debug-exit device (-device isa-debug-exit,iobase=0xf4,iosize=4):
# writing N there makes QEMU exit with status (N << 1) | 1.

        .set COM1, 0x3f8
        .set DEBUG_EXIT_PORT, 0xf4
        .set PVH_START_MAGIC, 0x336ec578
        .set START_INFO_CMDLINE, 24         # hvm_start_info.cmdline_paddr
        .set EXIT_MAX, 127                  # (N << 1) | 1 must fit a process exit status
        .set XEN_ELFNOTE_PHYS32_ENTRY, 18

        # The PVH entry note QEMU looks for in the PT_NOTE segment.
        .section .note.Xen, "a", @note
        .p2align 2
        .long 4                             # name size ("Xen\0")
        .long 4                             # descriptor size
        .long XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .p2align 2
        .long _start
        .p2align 2

        .section .rodata
msg_hello:      .asciz "NIMBUS-UK: hello from the Nimbus unikernel\r\n"
msg_cmdline:    .asciz "NIMBUS-UK: cmdline: "
msg_no_pvh:     .asciz "NIMBUS-UK: no PVH start info (boot me with QEMU -kernel)\r\n"
msg_bad_exit:   .asciz "NIMBUS-UK: error: exit= wants a number from 0 to 127; exiting with 127\r\n"
msg_exit:       .asciz "NIMBUS-UK: exit "
msg_halt:       .asciz "NIMBUS-UK: no isa-debug-exit device at 0xf4; halting\r\n"
msg_crlf:       .asciz "\r\n"
exit_key:       .asciz "exit="

        .section .bss
        .p2align 4
stack:  .skip 8192
stack_top:

        .section .text
        .code32
        .global _start
_start:
        cli
        cld
        movl $stack_top, %esp
        movl %ebx, %ebp                     # keep the start_info pointer

        call serial_init
        movl $msg_hello, %esi
        call puts

        xorl %edi, %edi                     # exit code, default 0
        testl %ebp, %ebp
        jz .Lno_pvh
        cmpl $PVH_START_MAGIC, (%ebp)
        jne .Lno_pvh

        movl START_INFO_CMDLINE(%ebp), %ebx # below 4 GiB on every loader we use
        movl $msg_cmdline, %esi
        call puts
        testl %ebx, %ebx
        jz 1f
        movl %ebx, %esi
        call puts
1:      movl $msg_crlf, %esi
        call puts
        testl %ebx, %ebx
        jz .Lexit
        call parse_exit                     # %ebx = cmdline -> %edi = code
        jmp .Lexit

.Lno_pvh:
        movl $msg_no_pvh, %esi
        call puts

.Lexit:
        movl $msg_exit, %esi
        call puts
        movl %edi, %eax
        call put_decimal
        movl $msg_crlf, %esi
        call puts
        movl %edi, %eax
        outl %eax, $DEBUG_EXIT_PORT         # QEMU exits here when the device exists
        movl $msg_halt, %esi
        call puts
.Lhalt:
        hlt
        jmp .Lhalt

# parse_exit: finds "exit=" at the start of the command line or after a
# space in the string at %ebx; %edi = its value (0 when absent, 127 with an
# error message when it is not a number in 0..127).
parse_exit:
        movl %ebx, %esi
.Lscan:
        movb (%esi), %al
        testb %al, %al
        jz .Lparse_done                     # no exit= at all: keep 0
        cmpl %ebx, %esi
        je .Lcompare                        # start of the line
        cmpb $' ', -1(%esi)
        jne .Lnext
.Lcompare:
        movl $exit_key, %ecx
        movl %esi, %edx
1:      movb (%ecx), %al
        testb %al, %al
        jz .Lvalue                          # matched the whole key
        cmpb (%edx), %al
        jne .Lnext
        incl %ecx
        incl %edx
        jmp 1b
.Lnext:
        incl %esi
        jmp .Lscan
.Lvalue:                                    # %edx -> the digits
        xorl %eax, %eax
        xorl %ecx, %ecx                     # digit count
2:      movzbl (%edx), %esi
        testl %esi, %esi
        jz 3f
        cmpl $' ', %esi
        je 3f
        subl $'0', %esi
        cmpl $9, %esi
        ja .Lbad                            # not a digit
        imull $10, %eax
        addl %esi, %eax
        cmpl $EXIT_MAX, %eax
        ja .Lbad
        incl %ecx
        incl %edx
        jmp 2b
3:      testl %ecx, %ecx
        jz .Lbad                            # "exit=" with no digits
        movl %eax, %edi
.Lparse_done:
        ret
.Lbad:
        movl $msg_bad_exit, %esi
        call puts
        movl $EXIT_MAX, %edi
        ret

# serial_init: COM1 at 115200 8N1, FIFOs on, no interrupts.
serial_init:
        movw $COM1 + 1, %dx
        xorb %al, %al
        outb %al, %dx                       # IER: no interrupts
        movw $COM1 + 3, %dx
        movb $0x80, %al
        outb %al, %dx                       # LCR: DLAB on
        movw $COM1, %dx
        movb $1, %al
        outb %al, %dx                       # divisor low: 115200 baud
        movw $COM1 + 1, %dx
        xorb %al, %al
        outb %al, %dx                       # divisor high
        movw $COM1 + 3, %dx
        movb $0x03, %al
        outb %al, %dx                       # LCR: 8N1, DLAB off
        movw $COM1 + 2, %dx
        movb $0xc7, %al
        outb %al, %dx                       # FCR: FIFOs on and cleared
        movw $COM1 + 4, %dx
        movb $0x03, %al
        outb %al, %dx                       # MCR: DTR, RTS
        ret

# putc: writes %al to COM1 once the transmitter holding register is empty.
putc:
        pushl %eax
        movw $COM1 + 5, %dx
1:      inb %dx, %al
        testb $0x20, %al
        jz 1b
        popl %eax
        movw $COM1, %dx
        outb %al, %dx
        ret

# puts: writes the NUL-terminated string at %esi.
puts:
        pushl %esi
1:      movb (%esi), %al
        testb %al, %al
        jz 2f
        call putc
        incl %esi
        jmp 1b
2:      popl %esi
        ret

# put_decimal: writes %eax (unsigned) in decimal.
put_decimal:
        pushl %ebx
        movl $10, %ebx
        xorl %ecx, %ecx
1:      xorl %edx, %edx
        divl %ebx
        pushl %edx
        incl %ecx
        testl %eax, %eax
        jnz 1b
2:      popl %eax
        addb $'0', %al
        pushl %ecx
        call putc
        popl %ecx
        loop 2b
        popl %ebx
        ret
