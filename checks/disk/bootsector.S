/*
 * BIOS boot code of the bty marker disk: fits in the 440 bytes of MBR boot code in front of
 * the partition table (here: GPT's protective MBR). Prints the marker line on COM1, then asks
 * QEMU's isa-debug-exit device (port 0xf4) to end the VM, then halts.
 * Assembled by build.sh: as --32 -I DIR_WITH_marker.inc; ld -m elf_i386 -Ttext 0x7c00 --oformat binary
 */
        .code16
        .text
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %sp
        ljmp    $0, $init               /* some BIOSes enter at 07c0:0000 */
init:
        cld
        /* COM1 (0x3f8): 115200 baud, 8N1, FIFOs on. */
        mov     $0x3f9, %dx             /* IER: no interrupts */
        xor     %al, %al
        out     %al, %dx
        mov     $0x3fb, %dx             /* LCR: DLAB */
        mov     $0x80, %al
        out     %al, %dx
        mov     $0x3f8, %dx             /* divisor 1 (115200) */
        mov     $0x01, %al
        out     %al, %dx
        mov     $0x3f9, %dx
        xor     %al, %al
        out     %al, %dx
        mov     $0x3fb, %dx             /* LCR: 8N1 */
        mov     $0x03, %al
        out     %al, %dx
        mov     $0x3fa, %dx             /* FCR: enable + clear FIFOs */
        mov     $0xc7, %al
        out     %al, %dx
        mov     $0x3fc, %dx             /* MCR: DTR + RTS */
        mov     $0x03, %al
        out     %al, %dx

        mov     $message, %si
next:
        lodsb
        test    %al, %al
        jz      done
        mov     %al, %bl
        mov     $0x3fd, %dx             /* LSR: wait for transmit holding register empty */
wait:
        in      %dx, %al
        test    $0x20, %al
        jz      wait
        mov     $0x3f8, %dx
        mov     %bl, %al
        out     %al, %dx
        /* The same on the screen, through the BIOS. */
        mov     $0x0e, %ah
        xor     %bh, %bh
        int     $0x10
        jmp     next
done:
        /* Let the UART drain before QEMU goes away (LSR bit 6: transmitter empty). */
        mov     $0x3fd, %dx
drain:
        in      %dx, %al
        test    $0x40, %al
        jz      drain
        mov     $0xf4, %dx              /* isa-debug-exit: QEMU exits with (0x10 << 1) | 1 = 33 */
        mov     $0x10, %al
        out     %al, %dx
halt:
        cli
        hlt
        jmp     halt

message:
        .ascii  "\r\n"
        .include "marker.inc"           /* .ascii "BTY-MARKER-DISK-BOOTED ...", made by build.sh */
        .asciz  "\r\n"
