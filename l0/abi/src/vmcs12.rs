//! The layout of a VMCS12 page: the 4 KiB VMCS region in L1 memory that the soft engine
//! keeps L1's virtual VMCS in, and that L1 reads and writes directly for shadowed fields
//! (see docs/soft-engine.md).
//!
//! ```text
//! bytes 0-3   VMCS revision identifier (IA32_VMX_BASIC[30:0]; bit 31 = shadow-VMCS indicator)
//! bytes 4-7   VMX-abort indicator (SDM 25.2)
//! slot s      bytes 8*s .. 8*s+8: the field whose encoding gives s (below), little-endian;
//!             16- and 32-bit fields in the low bytes, the rest zero
//! ```
//!
//! The slot comes straight from the encoding (SDM 25.11.2): `1 + width * 128 + type * 32 +
//! index`, so an L1 that emulates at ~0.5 us per instruction finds a field in a few
//! instructions, with no table. Indexes of the fields in [`crate::vmcs::ALL`] stay below 32,
//! so slots stay below 512. The high half of a 64-bit field (encoding bit 0) is the upper
//! four bytes of the field's slot.

use crate::vmcs;

/// Offset of the revision identifier.
pub const REVISION_OFFSET: usize = 0;
/// Offset of the VMX-abort indicator.
pub const ABORT_OFFSET: usize = 4;
/// Size of a VMCS12 page.
pub const SIZE: usize = 4096;

const _: () = assert!(vmcs::MAX_INDEX < 32, "the slot formula needs field indexes below 32");

/// The slot offset of a full-width field encoding, by arithmetic only: for encodings taken
/// from the typed field enums. Use [`offset`] for encodings that come from elsewhere.
#[must_use]
pub const fn slot_offset(encoding: u32) -> usize {
    let width = ((encoding >> 13) & 3) as usize;
    let kind = ((encoding >> 10) & 3) as usize;
    let index = ((encoding >> 1) & 0x1F) as usize;
    8 * (1 + width * 128 + kind * 32 + index)
}

/// Where a field lives in the page, for any encoding (untrusted input): `None` unless it is
/// a field of [`crate::vmcs::ALL`] (or the high half of a 64-bit one, which lives 4 bytes
/// into the field's slot).
#[must_use]
pub const fn offset(encoding: u32) -> Option<usize> {
    match vmcs::lookup(encoding) {
        Some(info) => {
            let full = slot_offset(info.encoding);
            Some(if vmcs::is_high(encoding) { full + 4 } else { full })
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::vmcs::{ALL, Field16, Field64, FieldNatural};

    #[test]
    fn every_field_has_its_own_aligned_slot_inside_the_page_after_the_header() {
        let mut seen = HashSet::new();
        for f in ALL {
            let o = offset(f.encoding).unwrap();
            assert_eq!(o, slot_offset(f.encoding));
            assert!(o >= 8 && o + 8 <= SIZE && o % 8 == 0, "{} at {o}", f.name);
            assert!(seen.insert(o), "{} shares slot {o}", f.name);
        }
    }

    #[test]
    fn high_halves_and_unknown_encodings() {
        let ept = Field64::EptPointer.encoding();
        assert_eq!(offset(ept | 1), Some(slot_offset(ept) + 4));
        assert_eq!(offset(Field16::GuestEsSelector.encoding() | 1), None, "no high half of a 16-bit field");
        assert_eq!(offset(0x7FFF), None);
        assert_eq!(offset(u32::MAX), None);
        assert_eq!(slot_offset(FieldNatural::GuestRip.encoding()), 8 * (1 + 3 * 128 + 2 * 32 + 0xF));
    }
}
