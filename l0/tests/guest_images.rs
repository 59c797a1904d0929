//! The built guest images are static ELFs at their fixed addresses, and contain no
//! instruction the development hosts' KVM cannot emulate at CPL 0 (docs/kvm-exits.md: no
//! SSE arithmetic, POPCNT, RDTSCP, CMPXCHG16B, XGETBV, BMI, INT3, INT n; VMCALL hangs the
//! vCPU, so only the `vmcall` payload, which the soft engine never runs, may contain one).
//! Every executable byte is disassembled with iced-x86. The L2 payload images are checked
//! the same way (those at CPL 3 run natively, but are kept clean anyway), and must
//! be flat: one run of loadable bytes from `L2_IMAGE_BASE`, no bss, within `L2_IMAGE_MAX`.

use iced_x86::{CpuidFeature, Decoder, DecoderOptions, Instruction, Mnemonic};
use nestbench_abi::payload::{IO_ENCODINGS, L2_IMAGE_BASE, L2_IMAGE_MAX};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SectionKind};

/// The one payload image that means its VMCALL (l2_payloads' `vmcall`, never run on the
/// development hosts' KVM).
const VMCALL_IMAGE: &str = "vmcall";

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
    // The fences are SSE/SSE2 instructions to iced-x86 but emulated (HOST-NOTES: LFENCE,
    // MFENCE, SFENCE at CPL 0 work); the payloads' timing needs LFENCE.
    let sse_move =
        matches!(insn.mnemonic(), Movups | Movaps | Movdqu | Movdqa | Movd | Movq | Lfence | Mfence | Sfence);
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

/// Every refused or undecodable instruction in `code` at `ip`, as "address: text (reason)";
/// VMCALL is let through when `vmcall_ok`.
fn scan(code: &[u8], ip: u64, vmcall_ok: bool, symbol_at: impl Fn(u64) -> String) -> Vec<String> {
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut bad = Vec::new();
    for insn in &mut d {
        let why = if insn.is_invalid() {
            Some("does not decode")
        } else if vmcall_ok && insn.mnemonic() == Mnemonic::Vmcall {
            None
        } else {
            refused(&insn)
        };
        if let Some(why) = why {
            bad.push(format!("{:#x} in {}: {insn} ({why})", insn.ip(), symbol_at(insn.ip())));
        }
    }
    bad
}

/// Check an image; `vmcall_ok` lets VMCALL through (only the `vmcall` payload's).
fn check_image(path: &std::path::Path, base: u64, vmcall_ok: bool) {
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
        bad.extend(scan(code, s.address(), vmcall_ok, symbol_at));
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
    check_image(&l0::images::l1_elf(), nestbench_abi::layout::L1_IMAGE_BASE, false);
}

/// The payload names: the `[[bin]]`s of l2_payloads (one image per manifest, named like it;
/// l2_payloads' own tests tie bins and manifests together).
fn payload_names() -> Vec<String> {
    let toml = concat!(env!("CARGO_MANIFEST_DIR"), "/../l2_payloads/Cargo.toml");
    let toml = std::fs::read_to_string(toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
    let names: Vec<String> = toml
        .split("[[bin]]")
        .skip(1)
        .filter_map(|block| {
            block.lines().find_map(|l| {
                let (key, value) = l.split_once('=')?;
                (key.trim() == "name").then(|| value.trim().trim_matches('"').to_owned())
            })
        })
        .collect();
    assert!(names.len() >= 5, "l2_payloads lists too few images: {names:?}");
    names
}

/// A payload image is flat: its loadable segments run contiguously from `L2_IMAGE_BASE`
/// (L0 stages the bytes flat from there), each fully backed by the file (no bss for L0 to
/// zero), and the whole fits in `L2_IMAGE_MAX`.
fn check_payload_layout(path: &std::path::Path) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e} (l0's build script builds it)", path.display()));
    let elf = object::File::parse(&*data).expect("an ELF");
    let mut end = L2_IMAGE_BASE;
    for seg in elf.segments() {
        let (addr, mem) = (seg.address(), seg.size());
        let (_, file) = seg.file_range();
        assert_eq!(addr, end, "{}: segment at {addr:#x} does not continue the image at {end:#x}", path.display());
        assert_eq!(file, mem, "{}: segment at {addr:#x} has {} bytes of bss", path.display(), mem - file);
        end = addr + mem;
    }
    assert!(end > L2_IMAGE_BASE, "{}: nothing to load", path.display());
    assert!(end - L2_IMAGE_BASE <= L2_IMAGE_MAX, "{}: {:#x} bytes", path.display(), end - L2_IMAGE_BASE);
    println!("{}: {} bytes flat from {L2_IMAGE_BASE:#x}", path.display(), end - L2_IMAGE_BASE);
}

#[test]
fn payload_images_are_static_flat_and_emulatable() {
    for name in payload_names() {
        let path = l0::images::payload_elf(&name);
        check_image(&path, L2_IMAGE_BASE, name == VMCALL_IMAGE);
        check_payload_layout(&path);
    }
}

/// The mnemonics of an image's code.
fn mnemonics(path: &std::path::Path) -> Vec<Mnemonic> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let elf = object::File::parse(&*data).expect("an ELF");
    let mut out = Vec::new();
    for s in elf.sections().filter(|s| s.kind() == SectionKind::Text) {
        out.extend(
            Decoder::with_ip(64, s.data().unwrap(), s.address(), DecoderOptions::NONE)
                .into_iter()
                .map(|i| i.mnemonic()),
        );
    }
    out
}

#[test]
fn the_vmcall_payload_does_execute_vmcall() {
    let m = mnemonics(&l0::images::payload_elf(VMCALL_IMAGE));
    assert!(m.contains(&Mnemonic::Vmcall), "the vmcall payload image has no VMCALL");
}

/// The I/O instructions of an image's code, in address order, as their bytes.
fn io_instructions(path: &std::path::Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let elf = object::File::parse(&*data).expect("an ELF");
    let mut io = Vec::new();
    for s in elf.sections().filter(|s| s.kind() == SectionKind::Text) {
        let code = s.data().unwrap();
        for insn in Decoder::with_ip(64, code, s.address(), DecoderOptions::NONE) {
            use Mnemonic::*;
            if matches!(insn.mnemonic(), In | Out | Insb | Insw | Insd | Outsb | Outsw | Outsd) {
                let at = (insn.ip() - s.address()) as usize;
                io.push(code[at..at + insn.len()].to_vec());
            }
        }
    }
    io
}

#[test]
fn io_encodings_image_executes_the_table_in_order() {
    let io = io_instructions(&l0::images::payload_elf("io_encodings"));
    let table: Vec<&[u8]> = IO_ENCODINGS.iter().map(|c| c.bytes).collect();
    // The table's encodings, byte for byte, as one run of consecutive I/O instructions (the
    // only other one is the final `out DONE_PORT, eax`).
    let found = io.windows(table.len()).any(|w| w.iter().zip(&table).all(|(a, b)| a.as_slice() == *b));
    assert!(found, "IO_ENCODINGS not found in order; the image's I/O instructions: {io:02x?}");
    assert_eq!(io.len(), table.len() + 1, "{io:02x?}");
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
        let bad = scan(bytes, 0, false, |_| "test".into());
        assert_eq!(bad.len(), 1, "{what}: {bad:?}");
        assert!(bad[0].contains(what), "{what}: {}", bad[0]);
    }
    // Allowed: an SSE move, plain integer code.
    assert!(scan(&[0x0F, 0x10, 0xC1, 0x48, 0x01, 0xD8, 0xC3], 0, false, |_| String::new()).is_empty());
    // Allowed: the fences and RDTSC (payload timing: lfence; rdtsc; mfence; sfence).
    assert!(
        scan(&[0x0F, 0xAE, 0xE8, 0x0F, 0x31, 0x0F, 0xAE, 0xF0, 0x0F, 0xAE, 0xF8], 0, false, |_| String::new())
            .is_empty()
    );
    // VMCALL only where the image means it; nothing else is let through with it.
    assert!(scan(&[0x0F, 0x01, 0xC1], 0, true, |_| String::new()).is_empty());
    assert_eq!(scan(&[0x0F, 0x01, 0xC1, 0xCC], 0, true, |_| String::new()).len(), 1, "INT3 still refused");
}
