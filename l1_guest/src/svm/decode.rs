//! Host-testable decoding for the SVM backend: the #VMEXIT facts into the vendor-neutral
//! encodings L1's handlers use, and the length of an intercepted instruction where the CPU
//! saves no next RIP.
//!
//! * [`io`]: IOIO EXITINFO1 (APM Vol. 2, 15.10.2, Figure 15-2) into the I/O qualification
//!   of SDM Table 28-5. SVM does not say whether the port came from DX or an immediate, so
//!   the qualification's bit 6 is 0.
//! * [`npf`]: a nested page fault's error code (APM 15.25.6) into the EPT-violation
//!   qualification (SDM Table 28-7): the access (write if RW, fetch if ID, else read), the
//!   translation's permissions as NPT12 gives them (a present page is readable; L1 makes a
//!   page read-only by clearing R/W, so a write fault on a present page is "read only"), and
//!   "linear address valid" with "final translation" from EXITINFO1 bits 32 and 33.
//! * [`insn_len`]: the length of the instruction at RIP for the intercepts L1 sets, from its
//!   bytes (the CPU's next-RIP save, APM 15.7.1, is absent on QEMU TCG and on models before
//!   NRIP_SAVE; IOIO's EXITINFO2 carries the next RIP on every CPU, 15.10.2).

use nestbench_abi::ept::{self, violation};
use nestbench_abi::svm::{ioio, npf as pf};
use nestbench_abi::vmx::IoQualification;

/// IOIO EXITINFO1 as the I/O qualification; `None` when no operand size bit is set.
#[must_use]
pub const fn io(info1: u64) -> Option<IoQualification> {
    IoQualification::new(
        ioio::size(info1),
        info1 & ioio::TYPE_IN != 0,
        info1 & ioio::STR != 0,
        info1 & ioio::REP != 0,
        false,
        ioio::port(info1),
    )
}

/// A nested page fault's EXITINFO1 as the EPT-violation qualification.
#[must_use]
pub const fn npf(info1: u64) -> u64 {
    let access = if info1 & pf::RW != 0 {
        violation::WRITE_ACCESS
    } else if info1 & pf::ID != 0 {
        violation::FETCH_ACCESS
    } else {
        violation::READ_ACCESS
    };
    let perms = if info1 & pf::P != 0 { ept::READ } else { 0 };
    let linear = info1 & (pf::FINAL | pf::TABLE_WALK) != 0;
    violation::qualification(access, perms, linear, info1 & pf::FINAL != 0)
}

/// The length of the intercepted instruction that starts `bytes` (up to 15 bytes): legacy
/// prefixes and REX, then HLT, CPUID, RDMSR, WRMSR, VMMCALL, IN/OUT (immediate and DX
/// forms), INS/OUTS. `None` for anything else (L1 intercepts nothing else that needs a
/// next RIP).
#[must_use]
pub fn insn_len(bytes: &[u8]) -> Option<u32> {
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3 => i += 1,
            _ => break,
        }
    }
    if bytes.get(i).is_some_and(|b| b & 0xF0 == 0x40) {
        i += 1;
    }
    let len = match (bytes.get(i)?, bytes.get(i + 1), bytes.get(i + 2)) {
        (0xF4 | 0xEC..=0xEF | 0x6C..=0x6F, _, _) => 1,
        (0xE4..=0xE7, Some(_), _) => 2,
        (0x0F, Some(0xA2 | 0x30 | 0x32), _) => 2,
        (0x0F, Some(0x01), Some(0xD9)) => 3,
        _ => return None,
    };
    let total = i + len;
    (total <= 15 && total <= bytes.len()).then_some(total as u32)
}

/// Whether the legacy prefixes that start `bytes` include the address-size override (0x67).
#[must_use]
pub fn address_size_override(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .take_while(|b| matches!(b, 0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3))
        .any(|&b| b == 0x67)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_lengths_of_what_l1_intercepts() {
        for (bytes, len) in [
            (&[0xF4][..], 1),
            (&[0x0F, 0xA2], 2),
            (&[0x0F, 0x32], 2),
            (&[0x0F, 0x30], 2),
            (&[0x0F, 0x01, 0xD9], 3),
            (&[0xE7, 0x80], 2),
            (&[0xEF], 1),
            (&[0x66, 0xEF], 2),
            (&[0xF3, 0x6E], 2),
            (&[0xF3, 0x48, 0x6F], 3),
            (&[0x67, 0xE5, 0x80], 3),
        ] {
            assert_eq!(insn_len(bytes), Some(len), "{bytes:x?}");
        }
        assert_eq!(insn_len(&[0x90]), None, "NOP is not intercepted");
        assert_eq!(insn_len(&[0x0F, 0x01, 0xC1]), None, "VMCALL is Intel's");
        assert_eq!(insn_len(&[0xE7]), None, "truncated");
        assert_eq!(insn_len(&[0x66; 15]), None, "prefixes only");
        assert!(address_size_override(&[0xF3, 0x67, 0x6C]));
        assert!(!address_size_override(&[0xF3, 0x6C, 0x67]), "after the opcode it is not a prefix");
        assert!(!address_size_override(&[0x48, 0x67]), "REX ends the prefixes");
    }

    #[test]
    fn ioio_and_npf_translate_into_the_vmx_encodings() {
        // `out 0x80, eax` seen as IOIO: 4 bytes, OUT, port 0x80, 64-bit addresses.
        let q = io(0x80 << 16 | ioio::SZ32 | ioio::A64).unwrap();
        assert_eq!((q.port(), q.size_bytes(), q.is_in(), q.string()), (0x80, Some(4), false, false));
        let q = io(0xE9 << 16 | ioio::SZ8 | ioio::TYPE_IN | ioio::STR | ioio::REP | ioio::A64).unwrap();
        assert!(q.is_in() && q.string() && q.rep());
        assert_eq!(io(0x80 << 16), None);
        // A first touch: not present, a write, on the final translation.
        let q = npf(pf::RW | pf::US | pf::FINAL);
        assert_eq!(q & 7, violation::WRITE_ACCESS);
        assert_eq!(violation::perms(q), 0);
        assert_ne!(q & violation::FINAL_TRANSLATION, 0);
        // A write to a present read-only page.
        assert_eq!(violation::perms(npf(pf::P | pf::RW | pf::FINAL)), ept::READ);
        assert_eq!(npf(pf::ID | pf::FINAL) & 7, violation::FETCH_ACCESS);
    }
}
