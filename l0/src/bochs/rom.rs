//! The 64 KiB reset ROM the Bochs engine boots L1 with (`romimage:` in the bochsrc), in
//! place of a BIOS.
//!
//! It brings the CPU from reset to the state the soft engine gives L1 on KVM
//! ([`crate::x86_setup::long_mode_sregs`]), following Intel SDM Vol. 3A, 10.9 "Mode
//! switching" and 10.8.5 "Initializing IA-32e Mode":
//!
//! ```text
//! 0xFFFF_FFF0  reset vector (F000:FFF0): jmp near 0xFE00
//! 0xFFFF_FE00  16-bit: cli; o32 lgdt cs:[ROM GDTR]; CR0.PE; jmp far 0x08:0x000F_0100
//! 0x000F_0100  32-bit: data segments; IA32_MTRR_DEF_TYPE = WB; CR4.PAE; CR3 = BOOT_PML4;
//!              EFER.LME; CR0 = PE|MP|ET|NE|WP|PG; jmp far 0x18:0x000F_0200
//! 0x000F_0200  64-bit: RSP = BOOT_STACK_TOP; lgdt the RAM boot GDT (layout::BOOT_GDT);
//!              CS = 0x08 by far return; data segments 0x10; RDI = BOOT_INFO; jmp L1's entry
//! ```
//!
//! Bochs maps the last 64 KiB of the ROM both below 4 GiB and at 0xF_0000 (the BIOS
//! shadow). Until CR0.PE the code runs through the reset CS base 0xFFFF_0000; from then
//! on it runs through the low alias, which the boot identity map (the first
//! [`IDENTITY_MAP_SIZE`](nestbench_abi::layout::IDENTITY_MAP_SIZE) bytes) covers, so the
//! instruction after the CR0.PG write is still mapped. The ROM's GDT only has to live until
//! the 64-bit code switches to the same boot GDT in RAM that the soft engine uses; L1 loads
//! its own GDT, IDT and TSS at once.

use iced_x86::code_asm::{CodeAssembler, cr0, cr3, cr4, ds, eax, ecx, edx, es, fs, gs, ptr, rax, rdi, rsp, ss};
use iced_x86::{Code, IcedError, Instruction, MemoryOperand, Register};
use nestbench_abi::cr;
use nestbench_abi::layout::{BOOT_GDT, BOOT_INFO, BOOT_PML4, BOOT_STACK_TOP};

/// Size of the ROM image (`romimage: address=0xffff0000`).
pub const ROM_SIZE: usize = 0x1_0000;
/// Where Bochs maps the ROM below 4 GiB.
pub const ROM_BASE: u64 = 0xFFFF_0000;
/// Where the same bytes appear in the first megabyte (the BIOS shadow at 0xF_0000).
pub const ROM_LOW_ALIAS: u64 = 0x000F_0000;
/// Offset of the reset vector (F000:FFF0, physical 0xFFFF_FFF0; SDM Vol. 3A, 10.1.4).
pub const RESET_VECTOR: usize = 0xFFF0;

/// Offset of the ROM GDT: null, 0x08 flat 32-bit code, 0x10 flat data, 0x18 64-bit code.
pub const GDT_OFFSET: usize = 0x0000;
/// Offset of the 6-byte pseudo-descriptor of the ROM GDT (base = its low-alias address).
pub const GDTR_OFFSET: usize = 0x0020;
/// Offset of the 10-byte pseudo-descriptor of the RAM boot GDT.
pub const BOOT_GDTR_OFFSET: usize = 0x0028;
/// Offset of the 32-bit protected-mode code.
pub const CODE32_OFFSET: usize = 0x0100;
/// Offset of the 64-bit code.
pub const CODE64_OFFSET: usize = 0x0200;
/// Offset of the 16-bit real-mode code (IP in segment F000).
pub const CODE16_OFFSET: usize = 0xFE00;

/// ROM GDT selectors.
const SEL_CODE32: u16 = 0x08;
const SEL_DATA: u16 = 0x10;
const SEL_CODE64: u16 = 0x18;
/// Descriptors (SDM Vol. 3A, 3.4.5): base 0, limit 4 GiB, present, DPL 0.
const ROM_GDT: [u64; 4] = [
    0,
    0x00CF_9A00_0000_FFFF, // 0x08: 32-bit code, execute/read
    0x00CF_9200_0000_FFFF, // 0x10: data, read/write
    0x00AF_9A00_0000_FFFF, // 0x18: 64-bit code (L = 1)
];
/// The RAM boot GDT that [`crate::x86_setup::write_boot_tables`] writes: five descriptors.
const BOOT_GDT_LIMIT: u16 = 5 * 8 - 1;
/// The soft engine's selectors in that GDT (`layout::SEL_CODE64`, `layout::SEL_DATA`).
const BOOT_SEL_CODE: u16 = nestbench_abi::layout::SEL_CODE64;
const BOOT_SEL_DATA: u16 = nestbench_abi::layout::SEL_DATA;

/// CR0 as the soft engine sets it: PE | MP | ET | NE | WP | PG (SDM Vol. 3A, 2.5).
pub const CR0_LONG_MODE: u32 = (cr::CR0_PE | cr::CR0_MP | cr::CR0_ET | cr::CR0_NE | cr::CR0_WP | cr::CR0_PG) as u32;
const CR4_PAE: u32 = cr::CR4_PAE as u32;
const MSR_EFER: u32 = 0xC000_0080;
const EFER_LME: u32 = cr::EFER_LME as u32;
/// IA32_MTRR_DEF_TYPE, set as L0 sets it on KVM (`x86_setup::MTRR_DEF_TYPE_WB`): MTRRs
/// enabled, default type write-back (SDM Vol. 3A, 13.11.2.1). Bochs resets it to 0.
const MSR_MTRR_DEF_TYPE: u32 = crate::x86_setup::MSR_MTRR_DEF_TYPE;
const MTRR_DEF_TYPE_WB: u64 = crate::x86_setup::MTRR_DEF_TYPE_WB;

/// Errors of building the ROM.
#[derive(Debug, thiserror::Error)]
pub enum RomError {
    /// iced-x86 refused an instruction (a bug in this module).
    #[error("assembling the reset ROM: {0}")]
    Assemble(#[from] IcedError),
    /// A part outgrew its slot (a bug in this module).
    #[error("the reset ROM's {part} code is {len} bytes, more than its {room}-byte slot")]
    TooBig {
        /// Which part.
        part: &'static str,
        /// Its length.
        len: usize,
        /// Room in its slot.
        room: usize,
    },
    /// L1's entry point is outside the boot identity map, so the ROM cannot jump there.
    #[error("L1 entry point {0:#x} is outside the boot identity map")]
    Entry(u64),
}

/// An absolute `[disp]` memory operand with a segment override, for 16-bit code.
fn abs16(disp: u16, segment: Register) -> MemoryOperand {
    MemoryOperand::new(Register::None, Register::None, 1, i64::from(disp), 2, false, segment)
}

/// The 16-bit code at F000:[`CODE16_OFFSET`]: to protected mode.
fn code16() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    a.cli()?;
    a.cld()?;
    // `o32 lgdt cs:[GDTR]`: with a 16-bit operand size LGDT would load only 24 bits of the
    // base (SDM Vol. 2A, LGDT), and the reset CS base is 0xFFFF_0000 (SDM Vol. 3A, 10.1.4).
    a.add_instruction(Instruction::with1(Code::Lgdt_m1632, abs16(GDTR_OFFSET as u16, Register::CS))?)?;
    a.mov(eax, cr0)?;
    a.or(eax, 1)?;
    a.mov(cr0, eax)?;
    // A far jump right after the CR0 write loads CS from the GDT (SDM Vol. 3A, 10.9.1 step 4).
    a.add_instruction(Instruction::with_far_branch(
        Code::Jmp_ptr1632,
        SEL_CODE32,
        (ROM_LOW_ALIAS + CODE32_OFFSET as u64) as u32,
    )?)?;
    a.assemble(CODE16_OFFSET as u64)
}

/// The 32-bit code: paging structures, EFER.LME, CR0.PG (SDM Vol. 3A, 10.8.5).
fn code32() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    a.mov(eax, u32::from(SEL_DATA))?;
    for s in [ds, es, fs, gs, ss] {
        a.mov(s, iced_x86::code_asm::ax)?;
    }
    a.mov(ecx, MSR_MTRR_DEF_TYPE)?;
    a.mov(eax, MTRR_DEF_TYPE_WB as u32)?;
    a.mov(edx, (MTRR_DEF_TYPE_WB >> 32) as u32)?;
    a.wrmsr()?;
    a.mov(eax, cr4)?;
    a.or(eax, CR4_PAE as i32)?;
    a.mov(cr4, eax)?;
    a.mov(eax, BOOT_PML4 as u32)?;
    a.mov(cr3, eax)?;
    a.mov(ecx, MSR_EFER)?;
    a.rdmsr()?;
    a.or(eax, EFER_LME as i32)?;
    a.wrmsr()?;
    a.mov(eax, CR0_LONG_MODE)?;
    a.mov(cr0, eax)?;
    // IA-32e mode is active (EFER.LMA) once CR0.PG is set; the far jump enters 64-bit code.
    a.add_instruction(Instruction::with_far_branch(
        Code::Jmp_ptr1632,
        SEL_CODE64,
        (ROM_LOW_ALIAS + CODE64_OFFSET as u64) as u32,
    )?)?;
    a.assemble(ROM_LOW_ALIAS + CODE32_OFFSET as u64)
}

/// The 64-bit code: the soft engine's boot GDT and selectors, stack, boot info, L1.
fn code64(entry: u64) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut reload_cs = a.create_label();
    // The stack first: the far return below uses it (and leaves RSP where it was).
    a.mov(rsp, BOOT_STACK_TOP)?;
    a.mov(rax, ROM_LOW_ALIAS + BOOT_GDTR_OFFSET as u64)?;
    a.lgdt(ptr(rax))?;
    // CS = the boot GDT's 64-bit code selector by a far return (SDM Vol. 2B, RET far).
    a.push(i32::from(BOOT_SEL_CODE))?;
    a.lea(rax, ptr(reload_cs))?;
    a.push(rax)?;
    a.retf()?; // RETFQ in 64-bit code
    a.set_label(&mut reload_cs)?;
    a.mov(eax, u32::from(BOOT_SEL_DATA))?;
    for s in [ds, es, fs, gs, ss] {
        a.mov(s, iced_x86::code_asm::ax)?;
    }
    a.mov(rdi, BOOT_INFO)?;
    a.mov(rax, entry)?;
    a.jmp(rax)?;
    a.assemble(ROM_LOW_ALIAS + CODE64_OFFSET as u64)
}

/// The reset vector: a near jump back to [`CODE16_OFFSET`] in segment F000.
fn reset_vector() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    a.jmp(CODE16_OFFSET as u64)?;
    a.hlt()?;
    a.assemble(RESET_VECTOR as u64)
}

fn place(rom: &mut [u8], part: &'static str, at: usize, room: usize, bytes: &[u8]) -> Result<(), RomError> {
    if bytes.len() > room {
        return Err(RomError::TooBig { part, len: bytes.len(), room });
    }
    rom[at..at + bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// Build the ROM for an L1 whose ELF entry point is `entry`. Unused bytes are HLT (0xF4).
pub fn build(entry: u64) -> Result<Vec<u8>, RomError> {
    if entry >= nestbench_abi::layout::IDENTITY_MAP_SIZE {
        return Err(RomError::Entry(entry));
    }
    let mut rom = vec![0xF4u8; ROM_SIZE];
    let gdt: Vec<u8> = ROM_GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    place(&mut rom, "GDT", GDT_OFFSET, GDTR_OFFSET - GDT_OFFSET, &gdt)?;
    let mut gdtr = ((ROM_GDT.len() * 8 - 1) as u16).to_le_bytes().to_vec();
    gdtr.extend_from_slice(&((ROM_LOW_ALIAS + GDT_OFFSET as u64) as u32).to_le_bytes());
    place(&mut rom, "GDTR", GDTR_OFFSET, BOOT_GDTR_OFFSET - GDTR_OFFSET, &gdtr)?;
    let mut boot_gdtr = BOOT_GDT_LIMIT.to_le_bytes().to_vec();
    boot_gdtr.extend_from_slice(&BOOT_GDT.to_le_bytes());
    place(&mut rom, "boot GDTR", BOOT_GDTR_OFFSET, CODE32_OFFSET - BOOT_GDTR_OFFSET, &boot_gdtr)?;
    place(&mut rom, "32-bit", CODE32_OFFSET, CODE64_OFFSET - CODE32_OFFSET, &code32()?)?;
    place(&mut rom, "64-bit", CODE64_OFFSET, 0x100, &code64(entry)?)?;
    place(&mut rom, "16-bit", CODE16_OFFSET, RESET_VECTOR - CODE16_OFFSET, &code16()?)?;
    place(&mut rom, "reset vector", RESET_VECTOR, ROM_SIZE - RESET_VECTOR, &reset_vector()?)?;
    Ok(rom)
}

#[cfg(test)]
mod tests {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

    use super::*;

    /// Disassemble `n` instructions of `rom` at `offset`, as code of `bitness` at `ip`.
    fn disasm(rom: &[u8], offset: usize, bitness: u32, ip: u64, n: usize) -> Vec<String> {
        let mut d = Decoder::with_ip(bitness, &rom[offset..], ip, DecoderOptions::NONE);
        let mut f = IntelFormatter::new();
        f.options_mut().set_hex_prefix("0x");
        f.options_mut().set_hex_suffix("");
        f.options_mut().set_uppercase_hex(false);
        f.options_mut().set_space_after_operand_separator(true);
        f.options_mut().set_branch_leading_zeros(false);
        f.options_mut().set_leading_zeros(false);
        (0..n)
            .map(|_| {
                let mut s = String::new();
                f.format(&d.decode(), &mut s);
                s
            })
            .collect()
    }

    #[test]
    fn reset_vector_jumps_to_the_16_bit_code() {
        let rom = build(0x10_1234).unwrap();
        assert_eq!(rom.len(), ROM_SIZE);
        assert_eq!(disasm(&rom, RESET_VECTOR, 16, RESET_VECTOR as u64, 1), ["jmp 0xfe00"]);
    }

    #[test]
    fn sixteen_bit_code_enters_protected_mode() {
        let rom = build(0x10_1234).unwrap();
        assert_eq!(
            disasm(&rom, CODE16_OFFSET, 16, CODE16_OFFSET as u64, 7),
            [
                "cli",
                "cld",
                "lgdt cs:[0x20]",
                "mov eax, cr0",
                "or eax, 1",
                "mov cr0, eax",
                // iced prints far pointers as offset, selector
                "data32 jmp far 0xf0100, 8",
            ]
        );
        let lgdt = Decoder::with_ip(16, &rom[CODE16_OFFSET + 2..], 0, DecoderOptions::NONE).decode();
        assert_eq!(lgdt.code(), Code::Lgdt_m1632, "o32 LGDT: a 32-bit base");
        let gdtr = &rom[GDTR_OFFSET..GDTR_OFFSET + 6];
        assert_eq!(gdtr, [31, 0, 0, 0, 0x0F, 0], "limit 31, base 0xF_0000");
        assert_eq!(&rom[8..16], 0x00CF_9A00_0000_FFFFu64.to_le_bytes());
    }

    #[test]
    fn thirty_two_bit_code_enables_long_mode() {
        let rom = build(0x10_1234).unwrap();
        let got = disasm(&rom, CODE32_OFFSET, 32, ROM_LOW_ALIAS + CODE32_OFFSET as u64, 22);
        let want = [
            "mov eax, 0x10",
            "mov ds, ax",
            "mov es, ax",
            "mov fs, ax",
            "mov gs, ax",
            "mov ss, ax",
            "mov ecx, 0x2ff",
            "mov eax, 0x806",
            "mov edx, 0",
            "wrmsr",
            "mov eax, cr4",
            "or eax, 0x20",
            "mov cr4, eax",
            "mov eax, 0x1000",
            "mov cr3, eax",
            "mov ecx, 0xc0000080",
            "rdmsr",
            "or eax, 0x100",
            "wrmsr",
            "mov eax, 0x80010033",
            "mov cr0, eax",
            "jmp far 0xf0200, 0x18",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn sixty_four_bit_code_jumps_to_l1_with_the_boot_state() {
        let rom = build(0x10_1234).unwrap();
        let got = disasm(&rom, CODE64_OFFSET, 64, ROM_LOW_ALIAS + CODE64_OFFSET as u64, 16);
        assert_eq!(&got[..3], ["mov rsp, 0x80000", "mov rax, 0xf0028", "lgdt [rax]"]);
        assert_eq!(got[3], "push 8");
        assert!(got[4].starts_with("lea rax, [0xf02"), "{got:?}");
        assert_eq!(&got[5..7], ["push rax", "data64 ret far"], "RETFQ (REX.W)");
        assert_eq!(
            &got[7..13],
            ["mov eax, 0x10", "mov ds, ax", "mov es, ax", "mov fs, ax", "mov gs, ax", "mov ss, ax"]
        );
        assert_eq!(&got[13..16], ["mov rdi, 0x6000", "mov rax, 0x101234", "jmp rax"]);
        let boot_gdtr = &rom[BOOT_GDTR_OFFSET..BOOT_GDTR_OFFSET + 10];
        assert_eq!(boot_gdtr, [39, 0, 0, 5, 0, 0, 0, 0, 0, 0], "the RAM boot GDT at 0x500");
    }

    #[test]
    fn an_entry_outside_the_identity_map_is_refused() {
        assert!(matches!(build(1 << 40), Err(RomError::Entry(_))));
    }
}
