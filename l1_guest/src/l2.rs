//! L2's address space, built by L1 over a [`FrameMemory`] (nestbench_abi::payload, "L2's
//! address space"): the payload image copied page by page onto scattered L1 frames and
//! mapped with EPT12 at its L2 addresses, a stack, the results page, L2's own 4-level page
//! tables (an identity map of exactly the L2 pages used, user-accessible), a GDT and a TSS
//! whose I/O bitmap allows every port (docs/kvm-exits.md row 3d: CPL 3 port I/O on the
//! development hosts is checked against it).
//!
//! ```text
//! L2-physical = L2-linear
//! 0x0030_0000  PML4, PDPT, PD, PT (0x20_0000-0x3F_FFFF), PT (0x40_0000-0x5F_FFFF)
//! 0x0030_5000  GDT (null, code64 DPL0, data DPL0, data DPL3, code64 DPL3, TSS)
//! 0x0030_6000  TSS (104 bytes, I/O bitmap for all 65536 ports, 0xFF terminator)
//! 0x0030_9000  PT (0x60_0000-0x7F_FFFF: the EPT data region's first 2 MiB, 4 KiB pages)
//! 0x0030_A000  PD (0x4000_0000-0x7FFF_FFFF: the data region's last 6 MiB, 2 MiB pages;
//!              0x80_0000-0x3FFF_FFFF are 2 MiB pages of the first PD). The data region
//!              (1 GiB) is mapped in L2's paging only
//! 0x003E_C000  stack (16 KiB below L2_STACK_TOP)
//! 0x003F_F000  results page
//! 0x0040_0000  payload image (L2_IMAGE_BASE, up to L2_IMAGE_MAX)
//! ```

use nestbench_abi::ept::{self, PhysRead, RWX, Walk};
use nestbench_abi::layout::DEFAULT_MEM_SIZE;
use nestbench_abi::payload::{
    EPT_DATA_GPA, EPT_DATA_PAGES, L2_IMAGE_BASE, L2_IMAGE_MAX, L2_RESULTS_GPA, L2_STACK_TOP, STAGING_GPA,
};

use crate::ept_builder::{EptBuilder, EptError, Format, FrameMemory, PageSize};
use crate::vmx::setup::{ar, sel};

const PAGE: u64 = 4096;

/// L1 frames for L2 memory, EPT12 and VMX regions: from the end of the staging area to the
/// end of the default guest memory.
pub const FRAMES_START: u64 = STAGING_GPA + L2_IMAGE_MAX;
/// End of the frame region (exclusive).
pub const FRAMES_END: u64 = DEFAULT_MEM_SIZE;
const _: () = assert!(FRAMES_START % PAGE == 0 && FRAMES_END % PAGE == 0);
const _: () = assert!(FRAMES_START >= STAGING_GPA + L2_IMAGE_MAX, "frames must not overlap the staged image");
const _: () = assert!(FRAMES_END - FRAMES_START >= 4 << 20, "room for a full image, its tables and VMX regions");

/// L2's PML4 (its CR3).
pub const L2_PML4: u64 = 0x30_0000;
const L2_PDPT: u64 = L2_PML4 + PAGE;
const L2_PD: u64 = L2_PML4 + 2 * PAGE;
/// The page table for 0x20_0000-0x3F_FFFF (system pages, stack, results).
const L2_PT_LOW: u64 = L2_PML4 + 3 * PAGE;
/// The page table for 0x40_0000-0x5F_FFFF (the image).
const L2_PT_HIGH: u64 = L2_PML4 + 4 * PAGE;
/// L2's GDT.
pub const L2_GDT: u64 = L2_PML4 + 5 * PAGE;
/// L2's GDT entries: null, code64 DPL0, data DPL0, data DPL3, code64 DPL3, TSS (2 slots).
pub const L2_GDT_ENTRIES: usize = 7;
/// L2's TSS.
pub const L2_TSS: u64 = L2_PML4 + 6 * PAGE;
/// Where the I/O permission bitmap starts inside the TSS (right after the 104-byte TSS).
pub const TSS_IOMAP_BASE: u64 = 104;
/// TSS limit: header, 8192 bitmap bytes for ports 0-0xFFFF and the terminating 0xFF byte
/// (SDM 20.5.2 "I/O Permission Bit Map": the byte after the bitmap must be all ones and
/// inside the limit).
pub const L2_TSS_LIMIT: u32 = (TSS_IOMAP_BASE + 8192) as u32;
const L2_TSS_PAGES: u64 = (L2_TSS_LIMIT as u64 + 1).div_ceil(PAGE);
/// The page table for the EPT data region (`EPT_DATA_GPA`, 2 MiB): L2's paging maps every
/// page of it; EPT12 maps none of it unless an EPT payload asks (the `ept_*` payloads).
pub const L2_PT_DATA: u64 = L2_TSS + L2_TSS_PAGES * PAGE;
/// The page directory for 0x4000_0000-0x7FFF_FFFF (PDPT[1]): the end of the data region,
/// with 2 MiB pages.
pub const L2_PD_DATA_HIGH: u64 = L2_PT_DATA + PAGE;
/// End of the EPT data region (exclusive).
const EPT_DATA_END: u64 = EPT_DATA_GPA + EPT_DATA_PAGES * PAGE;
const _: () = assert!(EPT_DATA_GPA == 0x60_0000 && EPT_DATA_END % (2 << 20) == 0, "PT at PD[3], then 2 MiB pages");
const _: () = assert!(EPT_DATA_END <= 2 << 30, "PDPT[0] and PDPT[1]");
/// L2's stack: 16 KiB below the top.
pub const L2_STACK_BYTES: u64 = 16 << 10;

const _: () = assert!(L2_PML4 >= 0x20_0000 && L2_PD_DATA_HIGH + PAGE <= L2_STACK_TOP - L2_STACK_BYTES);
const _: () = assert!(L2_PD_DATA_HIGH == L2_PML4 + (7 + L2_TSS_PAGES) * PAGE, "the last of the 8 + TSS system pages");
const _: () = assert!(L2_RESULTS_GPA >= L2_STACK_TOP && L2_RESULTS_GPA + PAGE <= L2_IMAGE_BASE);
const _: () = assert!(L2_IMAGE_BASE == 0x40_0000 && L2_IMAGE_BASE + L2_IMAGE_MAX <= 0x60_0000, "two page tables");

/// A top-down bump allocator of 4 KiB frames: consecutive allocations go down in memory, so
/// L2 pages mapped in ascending order land on descending, non-identity L1 frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameAlloc {
    low: u64,
    next: u64,
}

impl FrameAlloc {
    /// Frames from `[low, high)`.
    #[must_use]
    pub const fn new(low: u64, high: u64) -> Self {
        Self { low, next: high }
    }

    /// The next frame (not zeroed), or `None` when the region is used up.
    pub const fn alloc(&mut self) -> Option<u64> {
        if self.next < self.low + PAGE {
            return None;
        }
        self.next -= PAGE;
        Some(self.next)
    }
}

/// Identity-mapped L1 memory as a [`FrameMemory`], allocating from [`FRAMES_START`]..
/// [`FRAMES_END`]. Only for the bare-metal L1 (it dereferences physical addresses).
#[derive(Debug)]
pub struct L1Frames {
    alloc: FrameAlloc,
}

impl L1Frames {
    /// The frame region. The caller must own `[FRAMES_START, FRAMES_END)` (nothing else in L1
    /// uses it) and run identity-mapped, and guest memory must reach [`FRAMES_END`].
    #[must_use]
    pub const fn new() -> Self {
        Self { alloc: FrameAlloc::new(FRAMES_START, FRAMES_END) }
    }
}

impl Default for L1Frames {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameMemory for L1Frames {
    fn alloc_zeroed_page(&mut self) -> Option<u64> {
        let pa = self.alloc.alloc()?;
        // SAFETY: `pa` is a fresh page of the frame region, which L1 owns and maps 1:1.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, PAGE as usize) };
        Some(pa)
    }
    fn read_u64(&self, pa: u64) -> u64 {
        // SAFETY: callers pass 8-aligned addresses of frames they allocated (identity-mapped).
        unsafe { (pa as *const u64).read_volatile() }
    }
    fn write_u64(&mut self, pa: u64, value: u64) {
        // SAFETY: as in `read_u64`.
        unsafe { (pa as *mut u64).write_volatile(value) }
    }
    fn write_bytes(&mut self, pa: u64, bytes: &[u8]) {
        // SAFETY: `pa..pa + len` lies in frames the caller allocated; the source is a slice
        // of other memory (the staging area or a stack buffer), so they do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), pa as *mut u8, bytes.len()) };
    }
}

/// [`FrameMemory`] as the shared EPT walker's [`PhysRead`].
pub struct Phys<'a, M: ?Sized>(pub &'a M);

impl<M: FrameMemory + ?Sized> PhysRead for Phys<'_, M> {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        Some(self.0.read_u64(pa))
    }
}

/// Why L2's address space could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// The image is empty, larger than `L2_IMAGE_MAX`, or its entry point is outside it.
    BadImage {
        /// Bytes.
        size: u64,
        /// Entry point.
        entry: u64,
    },
    /// EPT12 could not be built (out of frames, ...).
    Ept(EptError),
    /// Out of frames for an L2 page.
    OutOfFrames,
}

impl From<EptError> for SetupError {
    fn from(e: EptError) -> Self {
        Self::Ept(e)
    }
}

/// What L1 needs to know about the L2 it built.
#[derive(Debug)]
pub struct L2Space {
    /// EPT12.
    pub ept: EptBuilder,
    /// L2's CR3.
    pub cr3: u64,
    /// GDTR base and limit.
    pub gdt: (u64, u32),
    /// TR base and limit.
    pub tss: (u64, u32),
    /// Initial RSP.
    pub stack_top: u64,
    /// Entry point.
    pub entry: u64,
    /// The L1-physical address of the results page (L1 reads `PayloadResults` there).
    pub results_pa: u64,
}

/// The GDT descriptor (base 0, limit 0xFFFFF pages) whose attributes are the VMCS access
/// rights `ar` (SDM 3.4.5: descriptor bits 47:40 = access-rights bits 7:0, bits 55:52 =
/// bits 15:12).
#[must_use]
pub const fn flat_descriptor(ar: u32) -> u64 {
    0xFFFF | 0xF << 48 | ((ar & 0xFF) as u64) << 40 | (((ar >> 12) & 0xF) as u64) << 52
}

/// L2's GDT: null, code64 DPL0, data DPL0, data DPL3, code64 DPL3 (the selectors of
/// [`sel`]), and the busy 64-bit TSS at [`L2_TSS`] (busy, as TR is loaded with it).
#[must_use]
pub const fn gdt() -> [u64; L2_GDT_ENTRIES] {
    let tss = crate::descriptors::tss_descriptor(L2_TSS, L2_TSS_LIMIT);
    [
        0,
        flat_descriptor(ar::code64(0)),
        flat_descriptor(ar::data(0)),
        flat_descriptor(ar::data(3)),
        flat_descriptor(ar::code64(3)),
        tss[0] | 1 << 41, // type 0xB: busy
        tss[1],
    ]
}
const _: () =
    assert!(sel::TSS as usize == 5 * 8 && sel::CODE3 as usize == 4 * 8 + 3 && sel::DATA3 as usize == 3 * 8 + 3);

/// The 104-byte TSS header: RSP0 = the stack top (an interrupt from CPL 3 would use it), the
/// I/O map base right after the header (SDM 8.7, Figure 8-11).
#[must_use]
pub fn tss_header() -> [u8; TSS_IOMAP_BASE as usize] {
    let mut t = [0u8; TSS_IOMAP_BASE as usize];
    t[4..12].copy_from_slice(&L2_STACK_TOP.to_le_bytes());
    t[102..104].copy_from_slice(&(TSS_IOMAP_BASE as u16).to_le_bytes());
    t
}

/// L2 page-table entry flags: present, writable, user, accessed, dirty (A/D preset so the
/// CPU never writes L2's tables).
const PTE: u64 = 0x67;
/// Non-leaf entry flags: present, writable, user, accessed.
const PDE: u64 = 0x27;

/// Build L2's address space for `image` (linked at `L2_IMAGE_BASE`) with entry point `entry`,
/// its nested paging in `format` (EPT12 on VMX, NPT12 on SVM).
pub fn build<M: FrameMemory>(mem: &mut M, image: &[u8], entry: u64, format: Format) -> Result<L2Space, SetupError> {
    let size = image.len() as u64;
    if size == 0 || size > L2_IMAGE_MAX || entry < L2_IMAGE_BASE || entry >= L2_IMAGE_BASE + size {
        return Err(SetupError::BadImage { size, entry });
    }
    let mut ept = EptBuilder::with_format(mem, format)?;
    let mut map_new = |mem: &mut M, gpa: u64| -> Result<u64, SetupError> {
        let pa = mem.alloc_zeroed_page().ok_or(SetupError::OutOfFrames)?;
        ept.map(mem, gpa, pa, PageSize::Size4K, RWX)?;
        Ok(pa)
    };

    // The image, page by page (the allocator hands out descending frames, and EPT tables are
    // allocated in between: L2-physical pages are neither contiguous nor identity in L1).
    let image_pages = size.div_ceil(PAGE);
    for (i, chunk) in image.chunks(PAGE as usize).enumerate() {
        let pa = map_new(mem, L2_IMAGE_BASE + i as u64 * PAGE)?;
        mem.write_bytes(pa, chunk);
    }
    let stack_low = L2_STACK_TOP - L2_STACK_BYTES;
    for gpa in (stack_low..L2_STACK_TOP).step_by(PAGE as usize) {
        map_new(mem, gpa)?;
    }
    let results_pa = map_new(mem, L2_RESULTS_GPA)?;
    let mut sys = [0u64; 8 + L2_TSS_PAGES as usize];
    for (i, pa) in sys.iter_mut().enumerate() {
        *pa = map_new(mem, L2_PML4 + i as u64 * PAGE)?;
    }
    let l1 = |gpa: u64| sys[((gpa - L2_PML4) / PAGE) as usize];

    // L2's page tables: PML4[0] -> PDPT[0] -> PD[1] (0x20_0000) / PD[2] (0x40_0000) -> PTs.
    mem.write_u64(l1(L2_PML4), L2_PDPT | PDE);
    mem.write_u64(l1(L2_PDPT), L2_PD | PDE);
    mem.write_u64(l1(L2_PD) + 8, L2_PT_LOW | PDE);
    mem.write_u64(l1(L2_PD) + 16, L2_PT_HIGH | PDE);
    mem.write_u64(l1(L2_PD) + 24, L2_PT_DATA | PDE);
    for i in 0..512 {
        mem.write_u64(l1(L2_PT_DATA) + i * 8, (EPT_DATA_GPA + i * PAGE) | PTE);
    }
    // The rest of the data region: 2 MiB pages (PS), in PD (below 1 GiB) and PD_DATA_HIGH.
    mem.write_u64(l1(L2_PDPT) + 8, L2_PD_DATA_HIGH | PDE);
    for gpa in (EPT_DATA_GPA + (2 << 20)..EPT_DATA_END).step_by(2 << 20) {
        let pd = if gpa < 1 << 30 { L2_PD } else { L2_PD_DATA_HIGH };
        mem.write_u64(l1(pd) + ((gpa >> 21) & 0x1FF) * 8, gpa | PTE | 1 << 7);
    }
    let pte = |mem: &mut M, gpa: u64| {
        let pt = if gpa < L2_IMAGE_BASE { L2_PT_LOW } else { L2_PT_HIGH };
        mem.write_u64(l1(pt) + ((gpa >> 12) & 0x1FF) * 8, gpa | PTE);
    };
    let sys_end = L2_PML4 + sys.len() as u64 * PAGE;
    let low = (L2_PML4..sys_end).chain(stack_low..L2_STACK_TOP).chain(L2_RESULTS_GPA..L2_RESULTS_GPA + PAGE);
    for gpa in low.chain(L2_IMAGE_BASE..L2_IMAGE_BASE + image_pages * PAGE).step_by(PAGE as usize) {
        pte(mem, gpa);
    }

    // GDT and TSS (the bitmap pages are zeroed: every port allowed).
    let g = gdt();
    for (i, d) in g.iter().enumerate() {
        mem.write_u64(l1(L2_GDT) + i as u64 * 8, *d);
    }
    mem.write_bytes(l1(L2_TSS), &tss_header());
    let term = L2_TSS + u64::from(L2_TSS_LIMIT);
    mem.write_bytes(l1(term & !(PAGE - 1)) + (term & (PAGE - 1)), &[0xFF]);

    Ok(L2Space {
        ept,
        cr3: L2_PML4,
        gdt: (L2_GDT, (L2_GDT_ENTRIES * 8 - 1) as u32),
        tss: (L2_TSS, L2_TSS_LIMIT),
        stack_top: L2_STACK_TOP,
        entry,
        results_pa,
    })
}

/// Translate an L2-physical address to L1-physical through EPT12 or NPT12, whichever `root`
/// names ([`Format::of_root`]; `None` if not mapped).
pub fn l2_phys_to_l1(mem: &impl PhysRead, root: u64, gpa: u64) -> Option<u64> {
    match Format::of_root(root) {
        Format::Ept => match ept::walk(mem, root, gpa, 52) {
            Walk::Mapped { pa, .. } => Some(pa),
            _ => None,
        },
        Format::Npt => long_mode_walk(mem, root, gpa, Some),
    }
}

/// A 4-level long-mode page walk from `cr3` (SDM 4.5, APM 5.3: present bit, 2 MiB and 1 GiB
/// pages), each table's address passed through `table` first (the identity for NPT12, whose
/// tables are L1-physical; the nested translation for L2's own tables). `None` if not
/// present.
fn long_mode_walk(mem: &impl PhysRead, cr3: u64, linear: u64, table: impl Fn(u64) -> Option<u64>) -> Option<u64> {
    let mut base = cr3 & ept::ADDR_MASK;
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        let e = mem.read_u64(table(base + ((linear >> shift) & 0x1FF) * 8)?)?;
        if e & 1 == 0 {
            return None;
        }
        if level == 1 || (level <= 3 && e & 1 << 7 != 0) {
            let size = 1u64 << shift;
            return Some((e & ept::ADDR_MASK & !(size - 1)) | (linear & (size - 1)));
        }
        base = e & ept::ADDR_MASK;
    }
    None
}

/// Translate an L2-linear address to L1-physical: L2's 4-level paging from `cr3` (SDM 4.5,
/// with 2 MiB and 1 GiB pages), each table read through EPT12. `None` if not present.
pub fn l2_linear_to_l1(mem: &impl PhysRead, eptp: u64, cr3: u64, linear: u64) -> Option<u64> {
    let gpa = long_mode_walk(mem, cr3, linear, |gpa| l2_phys_to_l1(mem, eptp, gpa))?;
    l2_phys_to_l1(mem, eptp, gpa)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::vec::Vec;

    use nestbench_abi::ept::walk;

    use super::*;

    /// L1 memory as a map of words, with the same top-down allocator as the guest.
    pub struct MapMem {
        /// The words.
        pub words: HashMap<u64, u64>,
        /// The allocator.
        pub alloc: FrameAlloc,
    }

    impl MapMem {
        /// The real frame region.
        pub fn new() -> Self {
            Self { words: HashMap::new(), alloc: FrameAlloc::new(FRAMES_START, FRAMES_END) }
        }
        /// A byte.
        pub fn byte(&self, pa: u64) -> u8 {
            (FrameMemory::read_u64(self, pa & !7) >> ((pa & 7) * 8)) as u8
        }
    }

    impl FrameMemory for MapMem {
        fn alloc_zeroed_page(&mut self) -> Option<u64> {
            let pa = self.alloc.alloc()?;
            for w in 0..512 {
                self.words.remove(&(pa + w * 8));
            }
            Some(pa)
        }
        fn read_u64(&self, pa: u64) -> u64 {
            assert_eq!(pa % 8, 0);
            self.words.get(&pa).copied().unwrap_or(0)
        }
        fn write_u64(&mut self, pa: u64, value: u64) {
            assert!((FRAMES_START..FRAMES_END).contains(&pa), "write outside the frame region: {pa:#x}");
            self.words.insert(pa, value);
        }
    }

    impl PhysRead for MapMem {
        fn read_u64(&self, pa: u64) -> Option<u64> {
            Some(FrameMemory::read_u64(self, pa))
        }
    }

    /// An image of `pages` pages whose every byte encodes its offset.
    fn image(pages: usize) -> Vec<u8> {
        (0..pages * 4096).map(|i| (i / 4096 * 7 + i) as u8).collect()
    }

    #[test]
    fn image_pages_are_copied_to_scattered_frames_and_mapped_at_their_l2_addresses() {
        let mut m = MapMem::new();
        let img = image(5);
        let s = build(&mut m, &img, L2_IMAGE_BASE + 0x10, Format::Ept).unwrap();
        let eptp = s.ept.eptp();
        let mut frames = Vec::new();
        for p in 0..5u64 {
            let gpa = L2_IMAGE_BASE + p * 4096;
            let Walk::Mapped { pa, perms, page_size } = walk(&m, eptp, gpa, 46) else { panic!("{gpa:#x} unmapped") };
            assert_eq!((perms, page_size), (RWX, 4096));
            assert_ne!(pa, gpa, "not an identity map");
            assert!((FRAMES_START..FRAMES_END).contains(&pa));
            for off in [0u64, 1, 0x7FF, 0xFFF] {
                assert_eq!(m.byte(pa + off), img[(p * 4096 + off) as usize], "page {p} byte {off:#x}");
            }
            frames.push(pa);
        }
        assert!(frames.windows(2).all(|w| w[1] != w[0] + 4096), "consecutive L2 pages are not contiguous in L1");
        // Nothing past the image, below the stack, or in the hole between stack and results.
        for gpa in [L2_IMAGE_BASE + 5 * 4096, L2_STACK_TOP - L2_STACK_BYTES - 4096 * 10, L2_STACK_TOP, 0, 0x20_0000] {
            assert!(matches!(walk(&m, eptp, gpa, 46), Walk::NotPresent { .. }), "{gpa:#x} should be unmapped");
        }
    }

    #[test]
    fn l2_paging_is_an_identity_map_of_the_used_pages_and_user_accessible() {
        let mut m = MapMem::new();
        let s = build(&mut m, &image(3), L2_IMAGE_BASE, Format::Ept).unwrap();
        let eptp = s.ept.eptp();
        let used = [L2_PML4, L2_GDT, L2_TSS, L2_TSS + 0x2000, L2_STACK_TOP - 8, L2_RESULTS_GPA, L2_IMAGE_BASE + 0x2FFF];
        for lin in used {
            let via_paging = l2_linear_to_l1(&m, eptp, s.cr3, lin);
            assert_eq!(via_paging, l2_phys_to_l1(&m, eptp, lin), "{lin:#x}: linear = physical");
            assert!(via_paging.is_some(), "{lin:#x} mapped");
        }
        for lin in [L2_IMAGE_BASE + 0x3000, L2_STACK_TOP, 0x1000, 0x4000_0000] {
            assert_eq!(l2_linear_to_l1(&m, eptp, s.cr3, lin), None, "{lin:#x} not mapped");
        }
        // Every level is user + writable + present (CPL 3 payloads).
        let mut table = s.cr3;
        for level in (1..=4u32).rev() {
            let shift = 12 + 9 * (level - 1);
            let e = m.words[&(l2_phys_to_l1(&m, eptp, table + ((L2_IMAGE_BASE >> shift) & 0x1FF) * 8).unwrap())];
            assert_eq!(e & 7, 7, "level {level}: P, R/W, U/S");
            table = e & ept::ADDR_MASK;
        }
    }

    #[test]
    fn gdt_tss_and_results_page() {
        let mut m = MapMem::new();
        let s = build(&mut m, &image(1), L2_IMAGE_BASE, Format::Ept).unwrap();
        let eptp = s.ept.eptp();
        let at = |gpa: u64| l2_phys_to_l1(&m, eptp, gpa).unwrap();
        assert_eq!(s.gdt, (L2_GDT, 55));
        let g = gdt();
        for (i, d) in g.iter().enumerate() {
            assert_eq!(m.words.get(&(at(L2_GDT) + i as u64 * 8)).copied().unwrap_or(0), *d);
        }
        // Descriptors carry exactly the VMCS access rights L1 writes for each selector.
        let ar_of = |d: u64| ((d >> 40) & 0xFF) as u32 | (((d >> 52) & 0xF) as u32) << 12;
        assert_eq!(ar_of(g[1]), ar::code64(0));
        assert_eq!(ar_of(g[3]), ar::data(3));
        assert_eq!(ar_of(g[4]), ar::code64(3));
        assert_eq!(ar_of(g[5]) & 0xFF, ar::TSS_BUSY);
        // TSS: I/O map base 104, bitmap all zero within the limit, 0xFF terminator.
        assert_eq!(s.tss, (L2_TSS, 104 + 8192));
        let tss = at(L2_TSS);
        assert_eq!(u16::from(m.byte(tss + 102)) | u16::from(m.byte(tss + 103)) << 8, 104);
        for port in [0u64, 0xE0, 0xE4, 0x340, 0x1234, 0xFFFF] {
            let byte_gpa = L2_TSS + 104 + port / 8;
            assert!(byte_gpa <= L2_TSS + u64::from(s.tss.1), "port {port:#x} inside the limit");
            assert_eq!(m.byte(at(byte_gpa & !0xFFF) + (byte_gpa & 0xFFF)), 0, "port {port:#x} allowed");
        }
        let term = L2_TSS + 104 + 8192;
        assert_eq!(m.byte(at(term & !0xFFF) + (term & 0xFFF)), 0xFF);
        // The results page is mapped and zero.
        assert_eq!(at(L2_RESULTS_GPA), s.results_pa);
        assert!((0..512).all(|w| FrameMemory::read_u64(&m, s.results_pa + w * 8) == 0));
    }

    #[test]
    fn bad_images_are_refused() {
        let mut m = MapMem::new();
        assert!(matches!(build(&mut m, &[], L2_IMAGE_BASE, Format::Ept), Err(SetupError::BadImage { .. })));
        assert!(matches!(
            build(&mut m, &image(1), L2_IMAGE_BASE + 4096, Format::Ept),
            Err(SetupError::BadImage { .. })
        ));
        let big = std::vec![0u8; (L2_IMAGE_MAX + 1) as usize];
        assert!(matches!(build(&mut m, &big, L2_IMAGE_BASE, Format::Ept), Err(SetupError::BadImage { .. })));
    }

    #[test]
    fn a_full_size_image_fits_in_the_frame_region() {
        let mut m = MapMem::new();
        let img = std::vec![0x90u8; L2_IMAGE_MAX as usize];
        assert!(build(&mut m, &img, L2_IMAGE_BASE, Format::Ept).is_ok());
    }
}
