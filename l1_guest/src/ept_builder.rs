//! L1's nested-paging builder: maps L2-physical pages onto L1-physical pages in 4-level
//! extended page tables (VMX: Intel SDM Vol. 3C, 29.3) or nested page tables (SVM: AMD APM
//! Vol. 2, 15.25, which are ordinary long-mode page tables), over a [`FrameMemory`] so the
//! same code runs in the guest (identity-mapped L1 memory) and in host tests (a map).
//!
//! One builder, two entry formats ([`Format`]): the walk, allocation and the errors are the
//! same; only the bits of an entry differ. Permissions are given as EPT R/W/X bits in both.
//! The EPT encodings are `nestbench_abi::ept`'s, so what L1 builds is exactly what L0's soft
//! engine walks.

use nestbench_abi::ept::{self, ADDR_MASK, LARGE_PAGE, RWX};

/// Physical memory the builder allocates tables in and writes entries to.
pub trait FrameMemory {
    /// A zeroed, 4 KiB-aligned page, or `None` when out of memory.
    fn alloc_zeroed_page(&mut self) -> Option<u64>;
    /// The u64 at `pa`.
    fn read_u64(&self, pa: u64) -> u64;
    /// Write the u64 at `pa`.
    fn write_u64(&mut self, pa: u64, value: u64);
    /// Write `bytes` at `pa` (any alignment). The default goes through
    /// [`FrameMemory::read_u64`]/[`FrameMemory::write_u64`]; memory that can do better
    /// overrides it.
    fn write_bytes(&mut self, pa: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let a = pa + i as u64;
            let word = a & !7;
            let shift = (a & 7) * 8;
            let old = self.read_u64(word);
            self.write_u64(word, old & !(0xFF << shift) | u64::from(b) << shift);
        }
    }
}

/// Why a mapping cannot be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptError {
    /// No page left for a paging structure.
    OutOfFrames,
    /// An address is not aligned to the page size.
    Misaligned {
        /// The L2-physical address.
        gpa: u64,
        /// The L1-physical address.
        pa: u64,
        /// The page size asked for.
        size: u64,
    },
    /// The range is already mapped (remap with [`EptBuilder::unmap`] first).
    AlreadyMapped {
        /// The L2-physical address.
        gpa: u64,
    },
    /// `perms` has no R, W or X bit, or is write-only / execute-only (an EPT
    /// misconfiguration, SDM 29.3.3.1).
    BadPermissions(u64),
}

/// Supported leaf sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB (a PTE).
    Size4K,
    /// 2 MiB (a PDE with bit 7).
    Size2M,
    /// 1 GiB (a PDPTE with bit 7).
    Size1G,
}

impl PageSize {
    /// Bytes.
    #[must_use]
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => 1 << 12,
            Self::Size2M => 1 << 21,
            Self::Size1G => 1 << 30,
        }
    }

    const fn level(self) -> u8 {
        match self {
            Self::Size4K => 1,
            Self::Size2M => 2,
            Self::Size1G => 3,
        }
    }
}

/// The entry format of a nested-paging hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// VMX extended page tables (SDM 29.3.2): R/W/X bits, memory type in a leaf.
    Ept,
    /// SVM nested page tables (APM 15.25.5): long-mode page-table entries (P, R/W, U/S; APM
    /// 15.25.5: "nested page table entries are treated as user-level accesses", so every
    /// entry has U/S set). Execute is always allowed: NX would need EFER.NXE.
    Npt,
}

/// A long-mode page-table entry's present bit.
const NPT_P: u64 = 1 << 0;
/// Read/write.
const NPT_RW: u64 = 1 << 1;
/// User/supervisor.
const NPT_US: u64 = 1 << 2;

impl Format {
    /// The format of the hierarchy a root pointer names, as L1 builds its pointers: an EPT
    /// pointer always has its memory type and walk length in bits 5:0
    /// ([`nestbench_abi::ept::eptp`]), an nCR3 from [`EptBuilder::root`] never does.
    #[must_use]
    pub const fn of_root(root: u64) -> Self {
        if root & 0x3F == 0 { Self::Npt } else { Self::Ept }
    }

    /// Whether `entry` is present (EPT: any of R/W/X, SDM 29.3.2; NPT: P).
    const fn present(self, entry: u64) -> bool {
        match self {
            Self::Ept => entry & RWX != 0,
            Self::Npt => entry & NPT_P != 0,
        }
    }

    /// A non-leaf entry pointing at the table at `pa`, allowing everything below.
    const fn table(self, pa: u64) -> u64 {
        match self {
            Self::Ept => ept::table(pa),
            Self::Npt => (pa & ADDR_MASK) | NPT_P | NPT_RW | NPT_US,
        }
    }

    /// A leaf mapping `pa` with `perms` (EPT R/W/X bits).
    const fn leaf(self, pa: u64, perms: u64, large: bool) -> u64 {
        match self {
            Self::Ept => ept::leaf(pa, perms, large),
            Self::Npt => {
                (pa & ADDR_MASK)
                    | NPT_P
                    | NPT_US
                    | if perms & ept::WRITE != 0 { NPT_RW } else { 0 }
                    | if large { LARGE_PAGE } else { 0 }
            }
        }
    }

    /// `entry` with `perms` (EPT R/W/X bits) instead of its own.
    const fn with_permissions(self, entry: u64, perms: u64) -> u64 {
        match self {
            Self::Ept => entry & !RWX | perms,
            Self::Npt => entry & !NPT_RW | if perms & ept::WRITE != 0 { NPT_RW } else { 0 },
        }
    }
}

/// A nested-paging hierarchy under construction.
#[derive(Debug)]
pub struct EptBuilder {
    pml4: u64,
    format: Format,
}

fn index(gpa: u64, level: u8) -> u64 {
    (gpa >> (12 + 9 * u32::from(level - 1))) & 0x1FF
}

/// `perms` if it is a valid leaf permission set: some of R/W/X, nothing else, and neither
/// write-only nor execute-only (both EPT misconfigurations, SDM 29.3.3.1).
fn valid_permissions(perms: u64) -> Result<u64, EptError> {
    let p = perms & RWX;
    if p == 0 || p != perms || p & (ept::READ | ept::WRITE) == ept::WRITE || p == ept::EXECUTE {
        return Err(EptError::BadPermissions(perms));
    }
    Ok(p)
}

impl EptBuilder {
    /// An empty EPT hierarchy (one zeroed PML4 table).
    pub fn new(mem: &mut impl FrameMemory) -> Result<Self, EptError> {
        Self::with_format(mem, Format::Ept)
    }

    /// An empty hierarchy of `format`.
    pub fn with_format(mem: &mut impl FrameMemory, format: Format) -> Result<Self, EptError> {
        Ok(Self { pml4: mem.alloc_zeroed_page().ok_or(EptError::OutOfFrames)?, format })
    }

    /// The hierarchy whose PML4 table the root pointer `root` (an EPTP or an nCR3, as
    /// [`EptBuilder::root`] gave it) points at: an exit handler editing the nested paging it
    /// built before the first entry.
    #[must_use]
    pub const fn from_eptp(root: u64) -> Self {
        Self { pml4: root & ADDR_MASK, format: Format::of_root(root) }
    }

    /// The root pointer for the VMCS (EPTP) or the VMCB (N_CR3, APM 15.25.3: the PML4's
    /// physical address, PWT and PCD clear).
    #[must_use]
    pub const fn root(&self) -> u64 {
        match self.format {
            Format::Ept => ept::eptp(self.pml4),
            Format::Npt => self.pml4,
        }
    }

    /// The EPT pointer to put in the VMCS ([`EptBuilder::root`]).
    #[must_use]
    pub const fn eptp(&self) -> u64 {
        self.root()
    }

    /// Map `[gpa, gpa + size)` to `[pa, pa + size)` with `perms` (R/W/X bits).
    pub fn map(
        &mut self,
        mem: &mut impl FrameMemory,
        gpa: u64,
        pa: u64,
        size: PageSize,
        perms: u64,
    ) -> Result<(), EptError> {
        let bytes = size.bytes();
        if gpa % bytes != 0 || pa % bytes != 0 {
            return Err(EptError::Misaligned { gpa, pa, size: bytes });
        }
        let p = valid_permissions(perms)?;
        let mut table = self.pml4;
        for level in (size.level() + 1..=4).rev() {
            let slot = table + index(gpa, level) * 8;
            let entry = mem.read_u64(slot);
            table = if !self.format.present(entry) {
                let t = mem.alloc_zeroed_page().ok_or(EptError::OutOfFrames)?;
                mem.write_u64(slot, self.format.table(t));
                t
            } else if entry & LARGE_PAGE != 0 {
                return Err(EptError::AlreadyMapped { gpa });
            } else {
                entry & ADDR_MASK
            };
        }
        let slot = table + index(gpa, size.level()) * 8;
        if self.format.present(mem.read_u64(slot)) {
            return Err(EptError::AlreadyMapped { gpa });
        }
        mem.write_u64(slot, self.format.leaf(pa, p, size != PageSize::Size4K));
        Ok(())
    }

    /// The address of the present leaf entry that maps `gpa`, if any.
    fn leaf_slot(&self, mem: &impl FrameMemory, gpa: u64) -> Option<u64> {
        let mut table = self.pml4;
        for level in (1..=4u8).rev() {
            let slot = table + index(gpa, level) * 8;
            let entry = mem.read_u64(slot);
            if !self.format.present(entry) {
                return None;
            }
            if level == 1 || entry & LARGE_PAGE != 0 {
                return Some(slot);
            }
            table = entry & ADDR_MASK;
        }
        None
    }

    /// Remove the leaf that maps `gpa` (any size). Returns whether one was there. The caller
    /// must INVEPT before relying on the change (SDM 29.4.3.1).
    pub fn unmap(&mut self, mem: &mut impl FrameMemory, gpa: u64) -> bool {
        let slot = self.leaf_slot(mem, gpa);
        if let Some(slot) = slot {
            mem.write_u64(slot, 0);
        }
        slot.is_some()
    }

    /// Change the permissions of the leaf that maps `gpa`. Returns whether one was there.
    pub fn set_permissions(&mut self, mem: &mut impl FrameMemory, gpa: u64, perms: u64) -> Result<bool, EptError> {
        let p = valid_permissions(perms)?;
        let slot = self.leaf_slot(mem, gpa);
        if let Some(slot) = slot {
            let entry = mem.read_u64(slot);
            mem.write_u64(slot, self.format.with_permissions(entry, p));
        }
        Ok(slot.is_some())
    }

    /// Write `memtype` (any value, reserved ones included: the `ept_misconfig` payload) into
    /// bits 5:3 of the leaf that maps `gpa`. Returns whether one was there. A repair of a
    /// misconfigured leaf needs no INVEPT: the walk that hit it ended in the VM exit and
    /// created no translation to cache (SDM 29.4, "Caching Translation Information").
    /// EPT only: an NPT leaf has no memory-type field (false).
    pub fn set_memory_type(&mut self, mem: &mut impl FrameMemory, gpa: u64, memtype: u64) -> bool {
        if self.format != Format::Ept {
            return false;
        }
        let slot = self.leaf_slot(mem, gpa);
        if let Some(slot) = slot {
            let entry = mem.read_u64(slot);
            mem.write_u64(slot, entry & !(7 << ept::MEMTYPE_SHIFT) | (memtype & 7) << ept::MEMTYPE_SHIFT);
        }
        slot.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use nestbench_abi::ept::{PhysRead, READ, WRITE, Walk, walk};

    use super::*;

    /// L1 memory as a map, with a bump allocator of page frames from 16 MiB up.
    struct Mem {
        words: HashMap<u64, u64>,
        next: u64,
        limit: u64,
    }
    impl Mem {
        fn new(frames: u64) -> Self {
            Self { words: HashMap::new(), next: 16 << 20, limit: (16 << 20) + frames * 4096 }
        }
    }
    impl FrameMemory for Mem {
        fn alloc_zeroed_page(&mut self) -> Option<u64> {
            (self.next < self.limit).then(|| {
                self.next += 4096;
                self.next - 4096
            })
        }
        fn read_u64(&self, pa: u64) -> u64 {
            self.words.get(&pa).copied().unwrap_or(0)
        }
        fn write_u64(&mut self, pa: u64, value: u64) {
            self.words.insert(pa, value);
        }
    }
    impl PhysRead for Mem {
        fn read_u64(&self, pa: u64) -> Option<u64> {
            Some(FrameMemory::read_u64(self, pa))
        }
    }

    #[test]
    fn scattered_pages_translate_where_they_were_mapped() {
        let mut m = Mem::new(64);
        let mut e = EptBuilder::new(&mut m).unwrap();
        // L2-physical 0x1000.. onto L1 pages in reverse, far apart: not an identity map.
        for i in 0..8u64 {
            e.map(&mut m, 0x1000 * (i + 1), 0x80_0000 - 0x3000 * i, PageSize::Size4K, RWX).unwrap();
        }
        for i in 0..8u64 {
            let w = walk(&m, e.eptp(), 0x1000 * (i + 1) + 0x123, 46);
            assert_eq!(w, Walk::Mapped { pa: 0x80_0000 - 0x3000 * i + 0x123, perms: RWX, page_size: 4096 });
        }
        assert_eq!(walk(&m, e.eptp(), 0x9000, 46), Walk::NotPresent { level: 1, perms: 0 });
        assert_eq!(walk(&m, e.eptp(), 0x4000_0000, 46), Walk::NotPresent { level: 3, perms: 0 });
    }

    #[test]
    fn large_pages_read_only_and_remapping() {
        let mut m = Mem::new(64);
        let mut e = EptBuilder::new(&mut m).unwrap();
        e.map(&mut m, 0x20_0000, 0x60_0000, PageSize::Size2M, READ).unwrap();
        e.map(&mut m, 0x4000_0000, 0x8000_0000, PageSize::Size1G, RWX).unwrap();
        assert_eq!(walk(&m, e.eptp(), 0x20_1234, 46), Walk::Mapped { pa: 0x60_1234, perms: READ, page_size: 2 << 20 });
        assert_eq!(
            walk(&m, e.eptp(), 0x4000_0010, 46),
            Walk::Mapped { pa: 0x8000_0010, perms: RWX, page_size: 1 << 30 }
        );
        assert_eq!(
            e.map(&mut m, 0x20_1000, 0x1000, PageSize::Size4K, RWX),
            Err(EptError::AlreadyMapped { gpa: 0x20_1000 })
        );
        assert!(e.set_permissions(&mut m, 0x20_0000, READ | WRITE).unwrap());
        assert_eq!(
            walk(&m, e.eptp(), 0x20_0000, 46),
            Walk::Mapped { pa: 0x60_0000, perms: READ | WRITE, page_size: 2 << 20 }
        );
        assert!(e.unmap(&mut m, 0x20_0000));
        assert!(!e.unmap(&mut m, 0x20_0000));
        assert_eq!(walk(&m, e.eptp(), 0x20_0000, 46), Walk::NotPresent { level: 2, perms: 0 });
        e.map(&mut m, 0x20_0000, 0x1000, PageSize::Size4K, RWX).unwrap();
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut m = Mem::new(2);
        let mut e = EptBuilder::new(&mut m).unwrap();
        assert_eq!(
            e.map(&mut m, 0x1001, 0, PageSize::Size4K, RWX),
            Err(EptError::Misaligned { gpa: 0x1001, pa: 0, size: 4096 })
        );
        assert_eq!(e.map(&mut m, 0x1000, 0, PageSize::Size4K, WRITE), Err(EptError::BadPermissions(WRITE)));
        assert_eq!(
            e.map(&mut m, 0x1000, 0, PageSize::Size4K, ept::EXECUTE),
            Err(EptError::BadPermissions(ept::EXECUTE))
        );
        assert_eq!(
            e.map(&mut m, 0x1000, 0, PageSize::Size4K, 1 << 7 | READ),
            Err(EptError::BadPermissions(1 << 7 | READ))
        );
        // One frame left after the PML4: the PDPT fits, the PD does not.
        assert_eq!(e.map(&mut m, 0x1000, 0, PageSize::Size4K, RWX), Err(EptError::OutOfFrames));
    }
}
