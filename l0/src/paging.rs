//! A 4-level page walk (Intel SDM Vol. 3A, 4.5 "4-Level Paging") over guest memory, for
//! reading guest instructions and data at a linear address. Every table read goes through
//! the bounds-checked [`GuestMem`]; a malformed table is an error, never an L0 fault.

use crate::memory::{GuestMem, MemoryError};

/// Why a linear address does not translate.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A paging-structure entry on the way is not present.
    #[error("linear {linear:#x}: level-{level} entry not present")]
    NotPresent {
        /// The address being translated.
        linear: u64,
        /// 4 = PML4E ... 1 = PTE.
        level: u8,
    },
    /// A paging structure lies outside guest memory.
    #[error("linear {linear:#x}: paging structure outside guest memory: {source}")]
    Memory {
        /// The address being translated.
        linear: u64,
        /// The failed access.
        source: MemoryError,
    },
    /// Not a canonical 48-bit address.
    #[error("linear {0:#x} is not canonical")]
    NonCanonical(u64),
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The guest-physical address.
    pub gpa: u64,
    /// Size of the page that maps it (4 KiB, 2 MiB or 1 GiB).
    pub page_size: u64,
}

const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// Translate `linear` through the tables rooted at `cr3`.
pub fn translate(mem: &GuestMem, cr3: u64, linear: u64) -> Result<Translation, WalkError> {
    translate_with(|pa| mem.read_u64(pa), cr3, linear)
}

/// Translate `linear` with paging-structure reads done by `read_u64` (for a guest whose
/// physical memory is not one [`GuestMem`], such as L2's behind EPT12).
pub fn translate_with(
    read_u64: impl Fn(u64) -> Result<u64, MemoryError>,
    cr3: u64,
    linear: u64,
) -> Result<Translation, WalkError> {
    let sign = linear >> 47;
    if sign != 0 && sign != 0x1_FFFF {
        return Err(WalkError::NonCanonical(linear));
    }
    let mut table = cr3 & ADDR_MASK;
    for level in (1..=4u8).rev() {
        let shift = 12 + 9 * u32::from(level - 1);
        let index = (linear >> shift) & 0x1FF;
        let entry = read_u64(table + index * 8).map_err(|source| WalkError::Memory { linear, source })?;
        if entry & 1 == 0 {
            return Err(WalkError::NotPresent { linear, level });
        }
        let leaf = level == 1 || ((level == 2 || level == 3) && entry & (1 << 7) != 0);
        if leaf {
            let page_size = 1u64 << shift;
            let base = entry & ADDR_MASK & !(page_size - 1);
            return Ok(Translation { gpa: base | (linear & (page_size - 1)), page_size });
        }
        table = entry & ADDR_MASK;
    }
    unreachable!("level 1 is always a leaf")
}

/// Read up to `len` bytes at linear `linear`, stopping early at the first byte that does not
/// translate or lies outside guest memory (an instruction can straddle a page).
#[must_use]
pub fn read_linear(mem: &GuestMem, cr3: u64, linear: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for i in 0..len as u64 {
        let Ok(t) = translate(mem, cr3, linear.wrapping_add(i)) else { break };
        let mut b = [0u8];
        if mem.read(t.gpa, &mut b).is_err() {
            break;
        }
        out.push(b[0]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_kib_walk_and_hostile_tables() {
        let mem = GuestMem::new(0x10000).unwrap();
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000 -> page 0x8000.
        mem.write_u64(0x1000, 0x2003).unwrap();
        mem.write_u64(0x2000, 0x3003).unwrap();
        mem.write_u64(0x3000, 0x4003).unwrap();
        mem.write_u64(0x4000 + 5 * 8, 0x8003).unwrap();
        let t = translate(&mem, 0x1000, 0x5123).unwrap();
        assert_eq!(t, Translation { gpa: 0x8123, page_size: 4096 });
        assert!(matches!(translate(&mem, 0x1000, 0x6000), Err(WalkError::NotPresent { level: 1, .. })));
        // A PDE pointing far outside guest memory is an error, not an out-of-bounds read.
        mem.write_u64(0x3000 + 8, 0xFFFF_FFFF_F000 | 3).unwrap();
        assert!(matches!(translate(&mem, 0x1000, 0x20_0000), Err(WalkError::Memory { .. })));
        assert!(matches!(translate(&mem, 0x1000, 0x0000_8000_0000_0000), Err(WalkError::NonCanonical(_))));
        // CR3 itself outside memory.
        assert!(translate(&mem, 0xFFFF_0000, 0).is_err());
        assert_eq!(read_linear(&mem, 0x1000, 0x5FFE, 4).len(), 2, "stops at the unmapped page");
    }
}
