//! `io_encodings`: every I/O instruction encoding once, in the order of
//! [`IO_ENCODINGS`], for L1 to check the exit information of each (qualification: size,
//! direction, string, REP, operand encoding, port; instruction length; INS/OUTS
//! instruction information and guest-linear address; SDM 28.2.1 Table 28-5, 28.2.4,
//! 28.2.5). Its timing is one figure for the whole pass and matters little: this payload is
//! for conformance (`soft` against `bochs`), not for cost.
//!
//! The instructions are emitted with `.byte` directives, exactly the table's bytes, by one
//! assembly routine (`nb_io_encodings_run`); a host test disassembles that routine and
//! compares its I/O instructions with the table, and `l0/tests/guest_images.rs` does the
//! same on the built image. Before each one the routine sets DX = [`PAYLOAD_PORT`], RSI =
//! the buffer (OUTS reads it), RDI = the buffer + 32 (INS writes there), RCX =
//! [`IO_REP_COUNT`] and EAX = [`OUT_VALUE`]. The buffer is on L2's stack. Values that IN
//! forms read are not checked here. The requested iterations are ignored: one pass.

use nestbench_abi::payload::{Cpl, IO_ENCODINGS, IO_REP_COUNT, PAYLOAD_PORT};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::{Setup, setup};

/// I/O-instruction exits of one pass: one per instruction, RCX per REP form.
pub const EXITS: u32 = {
    let mut n = 0;
    let mut i = 0;
    while i < IO_ENCODINGS.len() {
        n += IO_ENCODINGS[i].exits as u32;
        i += 1;
    }
    n
};

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "io_encodings",
    description: "every I/O instruction encoding once at CPL 3, for L1's exit-information checks",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::IoInstruction, EXITS)],
    default_iterations: 1,
    fixed_iterations: Some(1),
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::Same,
    setup: Setup::flags(setup::IO_CHECK),
};

/// EAX for the OUT forms ("OUT!").
pub const OUT_VALUE: u32 = u32::from_le_bytes(*b"OUT!");
/// Bytes of the string-I/O buffer: OUTS reads from its start, INS writes from
/// [`INS_OFFSET`].
pub const BUFFER_LEN: usize = 64;
/// Where INS writes in the buffer.
pub const INS_OFFSET: usize = 32;

// The most any string form moves (a REP form of dwords) stays inside each half.
const _: () = assert!(4 * IO_REP_COUNT as usize <= INS_OFFSET && INS_OFFSET * 2 == BUFFER_LEN);

/// The routine: RDI = the buffer; every I/O encoding, each after the same register setup.
/// Clobbers RAX, RCX, RDX, RSI, RDI and R9 (and nothing else: it is called from `asm!`, not
/// as a C function). One `.byte` line per table entry.
macro_rules! io_routine {
    ($($bytes:literal,)*) => {
        /// The routine's `.byte` lines (their count is the table's; the tests check the bytes).
        #[cfg_attr(not(test), allow(dead_code, reason = "read by the tests"))]
        const ROUTINE_BYTES: [&str; IO_ENCODINGS.len()] = [$($bytes),*];
        core::arch::global_asm!(
            ".pushsection .text.nb_io_encodings, \"ax\"",
            ".global nb_io_encodings_run",
            ".global nb_io_encodings_end",
            ".type nb_io_encodings_run, @function",
            ".p2align 4",
            "nb_io_encodings_run:",
            "mov r9, rdi",
            $(
                "mov edx, {port}",
                "mov rsi, r9",
                "lea rdi, [r9 + {ins}]",
                "mov ecx, {rep}",
                "mov eax, {value}",
                concat!(".byte ", $bytes),
            )*
            "ret",
            "nb_io_encodings_end:",
            ".size nb_io_encodings_run, . - nb_io_encodings_run",
            ".popsection",
            port = const PAYLOAD_PORT,
            ins = const INS_OFFSET,
            rep = const IO_REP_COUNT,
            value = const OUT_VALUE,
        );
    };
}

#[cfg(target_arch = "x86_64")]
io_routine! {
    "0xE6, 0xE0",       // out 0xE0, al
    "0x66, 0xE7, 0xE0", // out 0xE0, ax
    "0xE7, 0xE0",       // out 0xE0, eax
    "0xEE",             // out dx, al
    "0x66, 0xEF",       // out dx, ax
    "0xEF",             // out dx, eax
    "0xE4, 0xE0",       // in al, 0xE0
    "0x66, 0xE5, 0xE0", // in ax, 0xE0
    "0xE5, 0xE0",       // in eax, 0xE0
    "0xEC",             // in al, dx
    "0x66, 0xED",       // in ax, dx
    "0xED",             // in eax, dx
    "0x6E",             // outsb
    "0x66, 0x6F",       // outsw
    "0x6F",             // outsd
    "0xF3, 0x6E",       // rep outsb
    "0x6C",             // insb
    "0xF3, 0x6C",       // rep insb
}

#[cfg(target_arch = "x86_64")]
unsafe extern "C" {
    /// The routine (see `io_routine!`). Not a Rust function: call it only from `asm!`.
    fn nb_io_encodings_run();
    /// The end of the routine (a label, not code to call).
    fn nb_io_encodings_end();
}

/// The routine's machine code, for the tests: `[start, end)`.
#[cfg(target_arch = "x86_64")]
#[must_use]
pub fn routine_code() -> &'static [u8] {
    let start = nb_io_encodings_run as *const u8;
    let end = nb_io_encodings_end as *const u8;
    // SAFETY: both are labels of one assembled routine in a loaded, readable, never-written
    // code section, `end` after `start`.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// One timed pass over the table; `iterations` and `arg` are unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, _iterations: u64, _arg: u64) {
    let mut buffer = [0u8; BUFFER_LEN];
    for (i, b) in buffer.iter_mut().enumerate() {
        *b = 0x10 + i as u8;
    }
    // SAFETY: the routine only does port I/O that L1 intercepts (IOPL 3) and string I/O
    // within `buffer` (asserted above), which lives across the call; it clobbers exactly the
    // registers declared here (RAX and RDX are `timed!`'s), uses the stack only for the
    // return address, and leaves DF clear (it is clear at any Rust call site).
    let (before, after) = unsafe {
        crate::timed!(
            "call {routine}";
            routine = sym nb_io_encodings_run,
            inout("rdi") buffer.as_mut_ptr() => _,
            out("rcx") _,
            out("rsi") _,
            out("r9") _,
        )
    };
    recorder.record(before, after);
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    #[test]
    fn the_routine_lists_the_table() {
        assert_eq!(ROUTINE_BYTES.len(), IO_ENCODINGS.len());
        for (text, case) in ROUTINE_BYTES.iter().zip(&IO_ENCODINGS) {
            let bytes: Vec<u8> =
                text.split(',').map(|b| u8::from_str_radix(b.trim().trim_start_matches("0x"), 16).unwrap()).collect();
            assert_eq!(bytes, case.bytes);
        }
    }

    #[test]
    fn the_routine_executes_exactly_the_table_in_order() {
        let code = routine_code();
        let ip = code.as_ptr() as u64;
        let mut io = Vec::new();
        let mut last = None;
        for insn in Decoder::with_ip(64, code, ip, DecoderOptions::NONE) {
            assert!(!insn.is_invalid(), "undecodable byte at +{}", insn.ip() - ip);
            use Mnemonic::*;
            if matches!(insn.mnemonic(), In | Out | Insb | Insw | Insd | Outsb | Outsw | Outsd) {
                let at = (insn.ip() - ip) as usize;
                io.push(code[at..at + insn.len()].to_vec());
            }
            last = Some(insn.mnemonic());
        }
        assert_eq!(last, Some(Mnemonic::Ret), "the routine ends with its ret");
        let table: Vec<Vec<u8>> = IO_ENCODINGS.iter().map(|c| c.bytes.to_vec()).collect();
        assert_eq!(io, table);
    }

    #[test]
    fn one_pass_whatever_is_asked() {
        assert_eq!(MANIFEST.iterations(1_000_000), 1);
        assert_eq!(EXITS, 20);
    }
}
