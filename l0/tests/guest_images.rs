//! The built guest images are static ELFs at their fixed addresses, and contain no
//! instruction the development hosts' KVM cannot emulate at CPL 0 (shared/HOST-NOTES.md: no
//! SSE arithmetic, POPCNT, RDTSCP, CMPXCHG16B, XGETBV, BMI, INT3, INT n; VMCALL hangs the
//! vCPU). Every executable byte is disassembled with iced-x86.

use iced_x86::{CpuidFeature, Decoder, DecoderOptions, Instruction, Mnemonic};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind};

/// Why an instruction is refused, or `None` if it is fine.
fn refused(insn: &Instruction) -> Option<&'static str> {
    use Mnemonic::*;
    match insn.mnemonic() {
        Popcnt => return Some("POPCNT is not emulated"),
        Rdtscp => return Some("RDTSCP is not emulated"),
        Cmpxchg16b => return Some("CMPXCHG16B is not emulated"),
        Xgetbv => return Some("XGETBV is not emulated"),
        Int3 | Int | Int1 | Into => return Some("INT3/INT n are not emulated"),
        Vmcall => return Some("VMCALL hangs the vCPU (only a payload that means it may contain one)"),
        _ => {}
    }
    // SSE moves are emulated (with CR0.MP/CR4.OSFXSR); SSE arithmetic and anything newer is not.
    let sse_move = matches!(insn.mnemonic(), Movups | Movaps | Movdqu | Movdqa | Movd | Movq);
    for f in insn.cpuid_features() {
        use CpuidFeature::*;
        match f {
            BMI1 | BMI2 => return Some("BMI is not emulated"),
            SSE | SSE2 | SSE3 | SSSE3 | SSE4_1 | SSE4_2 | SSE4A if !sse_move => {
                return Some("SSE arithmetic is not emulated");
            }
            AVX | AVX2 | FMA | F16C | AVX512F => return Some("AVX is not emulated"),
            _ => {}
        }
    }
    None
}

/// Every refused or undecodable instruction in `code` at `ip`, as "address: text (reason)".
fn scan(code: &[u8], ip: u64, symbol_at: impl Fn(u64) -> String) -> Vec<String> {
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut bad = Vec::new();
    for insn in &mut d {
        let why = if insn.is_invalid() { Some("does not decode") } else { refused(&insn) };
        if let Some(why) = why {
            bad.push(format!("{:#x} in {}: {insn} ({why})", insn.ip(), symbol_at(insn.ip())));
        }
    }
    bad
}

fn check_image(path: &std::path::Path, base: u64) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e} (l0's build script builds it)", path.display()));
    let elf = object::File::parse(&*data).expect("an ELF");
    assert_eq!(elf.kind(), object::ObjectKind::Executable, "{} must be a static EXEC, not PIE", path.display());
    assert_eq!(elf.entry(), base, "entry point");
    let symbols: Vec<(u64, String)> =
        elf.symbols().filter(|s| s.size() > 0).map(|s| (s.address(), s.name().unwrap_or("?").to_owned())).collect();
    let symbol_at = |a: u64| {
        symbols
            .iter()
            .filter(|(s, _)| *s <= a)
            .max_by_key(|(s, _)| *s)
            .map_or_else(|| "?".to_owned(), |(_, n)| n.clone())
    };
    let mut scanned = 0;
    let mut bad = Vec::new();
    for s in elf.sections().filter(|s| s.kind() == SectionKind::Text) {
        let code = s.data().unwrap();
        assert!(s.address() >= base, "section {} below the image base", s.name().unwrap_or("?"));
        scanned += code.len();
        bad.extend(scan(code, s.address(), symbol_at));
    }
    assert!(scanned > 0, "{} has no code", path.display());
    assert!(
        bad.is_empty(),
        "{} has instructions this host cannot emulate at CPL 0:\n{}",
        path.display(),
        bad.join("\n")
    );
    println!("{}: {scanned} bytes of code, all emulatable", path.display());
}

#[test]
fn l1_image_is_static_and_emulatable() {
    check_image(&l0::images::l1_elf(), nestbench_abi::layout::L1_IMAGE_BASE);
}

#[test]
fn the_checker_catches_each_forbidden_instruction() {
    let cases: [(&[u8], &str); 8] = [
        (&[0xF3, 0x48, 0x0F, 0xB8, 0xC3], "POPCNT"),
        (&[0x0F, 0x01, 0xF9], "RDTSCP"),
        (&[0x48, 0x0F, 0xC7, 0x0F], "CMPXCHG16B"),
        (&[0x0F, 0x01, 0xD0], "XGETBV"),
        (&[0xCC], "INT3"),
        (&[0x0F, 0x01, 0xC1], "VMCALL"),
        (&[0x0F, 0x58, 0xC1], "SSE arithmetic"),  // addps xmm0, xmm1
        (&[0xC4, 0xE2, 0x78, 0xF2, 0xC1], "BMI"), // andn eax, eax, ecx
    ];
    for (bytes, what) in cases {
        let bad = scan(bytes, 0, |_| "test".into());
        assert_eq!(bad.len(), 1, "{what}: {bad:?}");
        assert!(bad[0].contains(what), "{what}: {}", bad[0]);
    }
    // Allowed: an SSE move, plain integer code.
    assert!(scan(&[0x0F, 0x10, 0xC1, 0x48, 0x01, 0xD8, 0xC3], 0, |_| String::new()).is_empty());
}
