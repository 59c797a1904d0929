//! Extended page tables: the entry format (Intel SDM Vol. 3C, 29.3.2 "EPT Translation
//! Mechanism", Tables 29-1 to 29-6) and a 4-level walk that reports what hardware would:
//! a translation, an EPT violation with the permissions of the path, or an EPT
//! misconfiguration (29.3.3.1).
//!
//! L1 builds its EPT12 with these encodings; L0's soft engine walks EPT12 with [`walk`],
//! reading L1 memory only through a [`PhysRead`] that bounds-checks every access. The
//! walk advertises what nestbench's L0 honours: 4 levels, write-back, 2 MiB and 1 GiB
//! leaves, no execute-only, no accessed/dirty flags.

/// Read access (bit 0).
pub const READ: u64 = 1 << 0;
/// Write access (bit 1).
pub const WRITE: u64 = 1 << 1;
/// Execute access (bit 2; supervisor-mode execute with mode-based control).
pub const EXECUTE: u64 = 1 << 2;
/// R, W and X together.
pub const RWX: u64 = READ | WRITE | EXECUTE;
/// Memory-type field of a leaf (bits 5:3).
pub const MEMTYPE_SHIFT: u32 = 3;
/// Memory type write-back.
pub const MEMTYPE_WB: u64 = 6;
/// Memory type uncacheable.
pub const MEMTYPE_UC: u64 = 0;
/// Ignore PAT (bit 6 of a leaf).
pub const IGNORE_PAT: u64 = 1 << 6;
/// Bit 7: the entry maps a 1 GiB (PDPTE) or 2 MiB (PDE) page.
pub const LARGE_PAGE: u64 = 1 << 7;
/// Physical-address bits 51:12.
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// The exit qualification of an EPT violation (SDM Vol. 3C, 28.2.1, Table 28-7): what L0's
/// soft engine writes when it reflects one and what L1's handler decodes.
pub mod violation {
    use super::{EXECUTE, READ, RWX, WRITE};

    /// Bit 0: the access was a data read.
    pub const READ_ACCESS: u64 = 1 << 0;
    /// Bit 1: a data write.
    pub const WRITE_ACCESS: u64 = 1 << 1;
    /// Bit 2: an instruction fetch.
    pub const FETCH_ACCESS: u64 = 1 << 2;
    /// Bits 5:3: the EPT permissions (R, W, X) of the translation, the AND over the entries
    /// used; 0 when one of them is not present.
    pub const PERMS_SHIFT: u32 = 3;
    /// Bit 7: the guest-linear-address field is valid.
    pub const LINEAR_VALID: u64 = 1 << 7;
    /// Bit 8 (with bit 7): the access was to the final translation of the linear address,
    /// not to a paging-structure entry during the walk.
    pub const FINAL_TRANSLATION: u64 = 1 << 8;

    /// The qualification for an `access` (R/W/X bits as in EPT entries) under a translation
    /// allowing `perms`, with the linear-address bits.
    #[must_use]
    pub const fn qualification(access: u64, perms: u64, linear_valid: bool, final_translation: bool) -> u64 {
        let kind = (if access & WRITE != 0 { WRITE_ACCESS } else { 0 })
            | (if access & EXECUTE != 0 { FETCH_ACCESS } else { 0 })
            | (if access & READ != 0 { READ_ACCESS } else { 0 });
        let linear =
            if linear_valid { LINEAR_VALID | if final_translation { FINAL_TRANSLATION } else { 0 } } else { 0 };
        kind | (perms & RWX) << PERMS_SHIFT | linear
    }

    /// The permissions of the translation (bits 5:3) as R/W/X bits.
    #[must_use]
    pub const fn perms(qualification: u64) -> u64 {
        (qualification >> PERMS_SHIFT) & RWX
    }
}

/// An EPT pointer for the PML4 table at `pml4`: write-back paging structures, a 4-level
/// walk, accessed/dirty flags off (SDM 25.6.11, Table 25-9).
#[must_use]
pub const fn eptp(pml4: u64) -> u64 {
    (pml4 & ADDR_MASK) | MEMTYPE_WB | (3 << 3)
}

/// A leaf entry mapping `pa` with `perms` (R/W/X bits) as write-back memory.
#[must_use]
pub const fn leaf(pa: u64, perms: u64, large: bool) -> u64 {
    (pa & ADDR_MASK) | (perms & RWX) | (MEMTYPE_WB << MEMTYPE_SHIFT) | if large { LARGE_PAGE } else { 0 }
}

/// A non-leaf entry pointing at the table at `pa`, allowing everything below.
#[must_use]
pub const fn table(pa: u64) -> u64 {
    (pa & ADDR_MASK) | RWX
}

/// Physical memory an EPT walk reads: `None` for an address that is not memory (the walk
/// then reports [`Walk::BadTableAddress`]).
pub trait PhysRead {
    /// The little-endian u64 at `pa`.
    fn read_u64(&self, pa: u64) -> Option<u64>;
}

/// What an EPT walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// The address translates.
    Mapped {
        /// The host-side (L1-physical) address.
        pa: u64,
        /// R/W/X allowed: the AND of every entry on the path.
        perms: u64,
        /// Size of the leaf page (4 KiB, 2 MiB or 1 GiB).
        page_size: u64,
    },
    /// An entry on the path is not present (R=W=X=0): an EPT violation.
    NotPresent {
        /// 4 = PML4E ... 1 = PTE.
        level: u8,
        /// R/W/X of the path down to (not including) the missing entry: 0 here,
        /// because the not-present entry contributes nothing (SDM 28.2.1, Table 28-7 bits
        /// 3-5 are the AND over the entries used).
        perms: u64,
    },
    /// A present entry is malformed: an EPT misconfiguration.
    Misconfigured {
        /// The level of the bad entry.
        level: u8,
        /// The entry.
        entry: u64,
        /// Which rule it breaks.
        why: Misconfig,
    },
    /// A paging structure lies outside physical memory. Hardware would read whatever is
    /// there; L0 treats this as L1 handing it a bad EPT and reports it as an error.
    BadTableAddress {
        /// The level whose table could not be read.
        level: u8,
        /// The address of the entry.
        pa: u64,
    },
}

/// The EPT-misconfiguration rules (SDM 29.3.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misconfig {
    /// Write allowed without read (bit 1 set, bit 0 clear).
    WriteWithoutRead,
    /// Execute-only (not advertised in IA32_VMX_EPT_VPID_CAP bit 0).
    ExecuteOnly,
    /// A reserved bit is set: bits 51:MAXPHYADDR, bits 7:3 of a non-leaf, bit 7 of a
    /// PML4E, or the low address bits of a large page.
    ReservedBit,
    /// A leaf with memory type 2, 3 or 7.
    BadMemoryType,
}

/// Whether a present entry at `level` (4 = PML4E .. 1 = PTE) is malformed, and how
/// (SDM 29.3.3.1). Not-present entries (R=W=X=0) are never misconfigured.
#[must_use]
pub fn misconfig(entry: u64, level: u8, maxphyaddr: u32) -> Option<Misconfig> {
    if entry & RWX == 0 {
        return None;
    }
    let perms = entry & RWX;
    if perms & WRITE != 0 && perms & READ == 0 {
        return Some(Misconfig::WriteWithoutRead);
    }
    if perms == EXECUTE {
        return Some(Misconfig::ExecuteOnly);
    }
    let phys_reserved = ADDR_MASK & !((1u64 << maxphyaddr) - 1);
    if entry & phys_reserved != 0 {
        return Some(Misconfig::ReservedBit);
    }
    let large = entry & LARGE_PAGE != 0;
    let is_leaf = level == 1 || (large && (level == 2 || level == 3));
    if level == 4 && large {
        return Some(Misconfig::ReservedBit);
    }
    if !is_leaf {
        // Bits 7:3 are reserved in a non-leaf entry.
        return (entry & 0xF8 != 0).then_some(Misconfig::ReservedBit);
    }
    if large {
        let page_size = if level == 3 { 1u64 << 30 } else { 1u64 << 21 };
        if entry & ADDR_MASK & (page_size - 1) != 0 {
            return Some(Misconfig::ReservedBit);
        }
    }
    match (entry >> MEMTYPE_SHIFT) & 7 {
        2 | 3 | 7 => Some(Misconfig::BadMemoryType),
        _ => None,
    }
}

/// Walk the EPT rooted at `eptp` for guest-physical address `gpa`, with physical
/// addresses of `maxphyaddr` bits.
pub fn walk(mem: &impl PhysRead, eptp: u64, gpa: u64, maxphyaddr: u32) -> Walk {
    let mut table = eptp & ADDR_MASK;
    let mut perms = RWX;
    for level in (1..=4u8).rev() {
        let shift = 12 + 9 * u32::from(level - 1);
        let pa = table + ((gpa >> shift) & 0x1FF) * 8;
        let Some(entry) = mem.read_u64(pa) else {
            return Walk::BadTableAddress { level, pa };
        };
        if entry & RWX == 0 {
            return Walk::NotPresent { level, perms: 0 };
        }
        if let Some(why) = misconfig(entry, level, maxphyaddr) {
            return Walk::Misconfigured { level, entry, why };
        }
        perms &= entry & RWX;
        let leaf = level == 1 || entry & LARGE_PAGE != 0;
        if leaf {
            let page_size = 1u64 << shift;
            return Walk::Mapped {
                pa: (entry & ADDR_MASK & !(page_size - 1)) | (gpa & (page_size - 1)),
                perms,
                page_size,
            };
        }
        table = entry & ADDR_MASK;
    }
    unreachable!("level 1 entries are always leaves")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct Mem(HashMap<u64, u64>);
    impl PhysRead for Mem {
        fn read_u64(&self, pa: u64) -> Option<u64> {
            if pa >= 1 << 30 { None } else { Some(self.0.get(&pa).copied().unwrap_or(0)) }
        }
    }

    const PML4: u64 = 0x1000;

    fn tables() -> Mem {
        let mut m = Mem::default();
        m.0.insert(PML4, table(0x2000));
        m.0.insert(0x2000, table(0x3000)); // PDPT[0]
        m.0.insert(0x3000, table(0x4000)); // PD[0] -> PT
        m.0.insert(0x4000 + 8 * 5, leaf(0x9_5000, READ | EXECUTE, false)); // 0x5000 -> 0x95000 r-x
        m.0.insert(0x3000 + 8, leaf(0x40_0000, RWX, true)); // PD[1]: 2 MiB at 0x200000 -> 0x400000
        m.0.insert(0x2000 + 8, leaf(0x4000_0000, READ, true)); // PDPT[1]: 1 GiB read-only
        m
    }

    #[test]
    fn translations_at_every_page_size_with_path_permissions() {
        let m = tables();
        let e = eptp(PML4);
        assert_eq!(e & 7, MEMTYPE_WB);
        assert_eq!((e >> 3) & 7, 3, "4-level walk");
        assert_eq!(walk(&m, e, 0x5123, 46), Walk::Mapped { pa: 0x9_5123, perms: READ | EXECUTE, page_size: 4096 });
        assert_eq!(walk(&m, e, 0x23_4567, 46), Walk::Mapped { pa: 0x43_4567, perms: RWX, page_size: 2 << 20 });
        assert_eq!(walk(&m, e, 0x4123_4567, 46), Walk::Mapped { pa: 0x4123_4567, perms: READ, page_size: 1 << 30 });
    }

    #[test]
    fn not_present_is_a_violation_with_no_permissions() {
        let m = tables();
        assert_eq!(walk(&m, eptp(PML4), 0x6000, 46), Walk::NotPresent { level: 1, perms: 0 });
        assert_eq!(walk(&m, eptp(PML4), 0x80_0000_0000, 46), Walk::NotPresent { level: 4, perms: 0 });
    }

    #[test]
    fn each_misconfiguration_rule() {
        let cases: [(u64, Misconfig); 6] = [
            (leaf(0x9_5000, WRITE, false), Misconfig::WriteWithoutRead),
            (leaf(0x9_5000, EXECUTE, false), Misconfig::ExecuteOnly),
            (leaf(0x9_5000, RWX, false) | 1 << 47, Misconfig::ReservedBit),
            (leaf(0x9_5000, RWX, false) & !(7 << MEMTYPE_SHIFT) | 2 << MEMTYPE_SHIFT, Misconfig::BadMemoryType),
            (leaf(0x9_5000, RWX, false) & !(7 << MEMTYPE_SHIFT) | 7 << MEMTYPE_SHIFT, Misconfig::BadMemoryType),
            (leaf(0x9_5000, RWX, false) & !(7 << MEMTYPE_SHIFT) | 3 << MEMTYPE_SHIFT, Misconfig::BadMemoryType),
        ];
        for (entry, why) in cases {
            let mut m = tables();
            m.0.insert(0x4000 + 8 * 5, entry);
            assert_eq!(walk(&m, eptp(PML4), 0x5000, 46), Walk::Misconfigured { level: 1, entry, why }, "{entry:#x}");
        }
        // Non-leaf with bits 7:3 set; a PML4E with bit 7; a 2 MiB leaf with low address bits.
        let mut m = tables();
        m.0.insert(0x3000, table(0x4000) | 1 << 4);
        assert!(matches!(
            walk(&m, eptp(PML4), 0x5000, 46),
            Walk::Misconfigured { level: 2, why: Misconfig::ReservedBit, .. }
        ));
        let mut m = tables();
        m.0.insert(PML4, table(0x2000) | LARGE_PAGE);
        assert!(matches!(
            walk(&m, eptp(PML4), 0x5000, 46),
            Walk::Misconfigured { level: 4, why: Misconfig::ReservedBit, .. }
        ));
        let mut m = tables();
        m.0.insert(0x3000 + 8, leaf(0x40_1000, RWX, true));
        assert!(matches!(
            walk(&m, eptp(PML4), 0x20_0000, 46),
            Walk::Misconfigured { level: 2, why: Misconfig::ReservedBit, .. }
        ));
    }

    #[test]
    fn tables_outside_memory_are_reported_not_read() {
        let mut m = tables();
        m.0.insert(0x3000, table(0x10_0000_0000)); // 64 GiB: below MAXPHYADDR, not memory
        assert_eq!(walk(&m, eptp(PML4), 0x5000, 46), Walk::BadTableAddress { level: 1, pa: 0x10_0000_0000 + 8 * 5 });
        assert_eq!(walk(&m, eptp(0xFFFF_0000_0000), 0, 46), Walk::BadTableAddress { level: 4, pa: 0xFFFF_0000_0000 });
    }
}
