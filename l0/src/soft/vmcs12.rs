//! L0's view of a VMCS12 page in L1 memory (layout: `nestbench_abi::vmcs12`).
//!
//! L1 owns the page and may write anything into it: every access goes through the
//! bounds-checked [`GuestMem`], only encodings of `nestbench_abi::vmcs::ALL` are accepted,
//! and values are masked to the field's width on the way in and out.

use nestbench_abi::vmcs::{self, FieldWidth};
use nestbench_abi::vmcs12;

use crate::memory::{GuestMem, MemoryError};

/// The mask of a field width.
#[must_use]
pub const fn width_mask(w: FieldWidth) -> u64 {
    match w {
        FieldWidth::Bits16 => 0xFFFF,
        FieldWidth::Bits32 => 0xFFFF_FFFF,
        FieldWidth::Bits64 | FieldWidth::Natural => u64::MAX,
    }
}

/// A VMCS12 page at an L1-physical address.
#[derive(Clone, Copy, Debug)]
pub struct Vmcs12<'a> {
    mem: &'a GuestMem,
    pa: u64,
}

impl<'a> Vmcs12<'a> {
    /// The page at `pa`, if the whole page lies in L1 memory.
    pub fn new(mem: &'a GuestMem, pa: u64) -> Result<Self, MemoryError> {
        mem.check(pa, vmcs12::SIZE as u64)?;
        Ok(Self { mem, pa })
    }

    /// The revision identifier (bytes 0-3).
    #[must_use]
    pub fn revision(&self) -> u32 {
        let mut b = [0; 4];
        // In range: checked in `new`.
        let _ = self.mem.read(self.pa + vmcs12::REVISION_OFFSET as u64, &mut b);
        u32::from_le_bytes(b)
    }

    /// VMREAD semantics: `None` for an encoding that is not a supported field (error 12).
    /// The high half of a 64-bit field reads its upper 32 bits.
    #[must_use]
    pub fn get(&self, encoding: u32) -> Option<u64> {
        let info = vmcs::lookup(encoding)?;
        let off = vmcs12::slot_offset(info.encoding) as u64;
        let raw = self.mem.read_u64(self.pa + off).ok()?;
        Some(if vmcs::is_high(encoding) { raw >> 32 } else { raw & width_mask(info.width) })
    }

    /// Read a field known to exist (from the typed enums); 0 if it does not.
    #[must_use]
    pub fn read(&self, encoding: u32) -> u64 {
        self.get(encoding).unwrap_or(0)
    }

    /// VMWRITE semantics (without the read-only check, which is the caller's): `false` for
    /// an unsupported encoding. Writing the high half of a 64-bit field replaces its upper
    /// 32 bits.
    pub fn set(&self, encoding: u32, value: u64) -> bool {
        let Some(info) = vmcs::lookup(encoding) else { return false };
        let at = self.pa + vmcs12::slot_offset(info.encoding) as u64;
        let new = if vmcs::is_high(encoding) {
            let old = self.mem.read_u64(at).unwrap_or(0);
            (old & 0xFFFF_FFFF) | (value << 32)
        } else {
            value & width_mask(info.width)
        };
        self.mem.write_u64(at, new).is_ok()
    }
}

impl super::entry_checks::Vmcs12Read for Vmcs12<'_> {
    fn read(&self, field: u32) -> u64 {
        Vmcs12::read(self, field)
    }
}

#[cfg(test)]
mod tests {
    use nestbench_abi::vmcs::{Field16, Field32, Field64, FieldNatural};

    use super::*;

    #[test]
    fn fields_are_masked_to_their_width_and_high_halves_work() {
        let mem = GuestMem::new(0x4000).unwrap();
        let v = Vmcs12::new(&mem, 0x1000).unwrap();
        assert!(v.set(Field16::GuestCsSelector.encoding(), 0x1234_5678));
        assert_eq!(v.get(Field16::GuestCsSelector.encoding()), Some(0x5678));
        assert!(v.set(Field32::PinBasedVmExecControl.encoding(), u64::MAX));
        assert_eq!(v.read(Field32::PinBasedVmExecControl.encoding()), 0xFFFF_FFFF);
        let ept = Field64::EptPointer.encoding();
        assert!(v.set(ept, 0x1111_2222_3333_4444));
        assert!(v.set(ept | 1, 0xAAAA));
        assert_eq!(v.read(ept), 0x0000_AAAA_3333_4444);
        assert_eq!(v.get(ept | 1), Some(0xAAAA));
        assert!(v.set(FieldNatural::GuestRip.encoding(), u64::MAX));
        assert_eq!(v.read(FieldNatural::GuestRip.encoding()), u64::MAX);
        assert!(!v.set(0x7FFF, 1));
        assert_eq!(v.get(0x7FFF), None);
    }

    #[test]
    fn pages_outside_memory_are_refused() {
        let mem = GuestMem::new(0x4000).unwrap();
        assert!(Vmcs12::new(&mem, 0x3001).is_err());
        assert!(Vmcs12::new(&mem, u64::MAX - 10).is_err());
        assert!(Vmcs12::new(&mem, 0x3000).is_ok());
    }
}
