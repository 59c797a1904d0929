//! The VMCB (AMD APM Vol. 2, 15.5 and Appendix B): one 4 KiB page, control area at 0,
//! state-save area at 0x400 (offsets: `nestbench_abi::svm::vmcb`).
//!
//! [`Vmcb`] reads and writes its fields volatile, through the page's address: the processor
//! writes the page during VMRUN and #VMEXIT, behind the compiler's back.

use nestbench_abi::svm::vmcb as off;

/// Size of a VMCB.
pub const SIZE: usize = 4096;

/// A VMCB page.
#[derive(Debug)]
pub struct Vmcb {
    base: *mut u8,
}

/// A segment register as the VMCB keeps it (APM Appendix B, "Segment attributes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Attributes: descriptor bits 47:40 in 7:0, bits 55:52 in 11:8.
    pub attrib: u16,
    /// Limit (expanded to bytes).
    pub limit: u32,
    /// Base.
    pub base: u64,
}

impl Vmcb {
    /// The VMCB at `base`.
    ///
    /// # Safety
    /// `base` must be 4 KiB-aligned, point at [`SIZE`] bytes that nothing else accesses while
    /// this value lives (the processor's VMRUN/#VMEXIT aside), and stay valid that long.
    #[must_use]
    pub const unsafe fn new(base: *mut u8) -> Self {
        Self { base }
    }

    /// The page's address (L1-physical in the bare-metal L1: identity-mapped).
    #[must_use]
    pub fn address(&self) -> u64 {
        self.base as u64
    }

    #[inline(always)]
    fn at<T>(&self, offset: usize) -> *mut T {
        debug_assert!(offset + size_of::<T>() <= SIZE && offset % size_of::<T>() == 0);
        // SAFETY: every offset is one of the VMCB layout's, inside the page (`new`'s contract)
        // and aligned to its field (the debug assertion).
        unsafe { self.base.add(offset).cast() }
    }

    /// Read the u64 at `offset`.
    #[inline(always)]
    #[must_use]
    pub fn read64(&self, offset: usize) -> u64 {
        // SAFETY: `at` gives an aligned pointer into the page (`new`'s contract).
        unsafe { self.at::<u64>(offset).read_volatile() }
    }

    /// Write the u64 at `offset`.
    #[inline(always)]
    pub fn write64(&mut self, offset: usize, v: u64) {
        // SAFETY: as in `read64`.
        unsafe { self.at::<u64>(offset).write_volatile(v) }
    }

    /// Read the u32 at `offset`.
    #[inline(always)]
    #[must_use]
    pub fn read32(&self, offset: usize) -> u32 {
        // SAFETY: as in `read64`.
        unsafe { self.at::<u32>(offset).read_volatile() }
    }

    /// Write the u32 at `offset`.
    #[inline(always)]
    pub fn write32(&mut self, offset: usize, v: u32) {
        // SAFETY: as in `read64`.
        unsafe { self.at::<u32>(offset).write_volatile(v) }
    }

    /// Write the u8 at `offset`.
    #[inline(always)]
    pub fn write8(&mut self, offset: usize, v: u8) {
        // SAFETY: as in `read64`.
        unsafe { self.at::<u8>(offset).write_volatile(v) }
    }

    /// Read the u8 at `offset`.
    #[inline(always)]
    #[must_use]
    pub fn read8(&self, offset: usize) -> u8 {
        // SAFETY: as in `read64`.
        unsafe { self.at::<u8>(offset).read_volatile() }
    }

    /// Write a segment register (16 bytes: selector, attrib, limit, base).
    pub fn write_segment(&mut self, offset: usize, s: Segment) {
        // SAFETY: as in `read64`; the selector and attrib are 16-bit fields at +0 and +2.
        unsafe {
            self.at::<u16>(offset).write_volatile(s.selector);
            self.at::<u16>(offset + 2).write_volatile(s.attrib);
        }
        self.write32(offset + 4, s.limit);
        self.write64(offset + 8, s.base);
    }

    /// Read a segment register.
    #[must_use]
    pub fn segment(&self, offset: usize) -> Segment {
        // SAFETY: as in `write_segment`.
        let (selector, attrib) =
            unsafe { (self.at::<u16>(offset).read_volatile(), self.at::<u16>(offset + 2).read_volatile()) };
        Segment { selector, attrib, limit: self.read32(offset + 4), base: self.read64(offset + 8) }
    }

    /// EXITCODE's low 32 bits (VMEXIT_INVALID is compared as 32 bits: `ExitCode`).
    #[inline(always)]
    #[must_use]
    pub fn exit_code(&self) -> u32 {
        self.read64(off::EXITCODE) as u32
    }
}

#[cfg(test)]
pub mod page {
    //! A heap page standing in for L1 memory in host tests.

    use std::boxed::Box;

    use super::{SIZE, Vmcb};

    /// A zeroed, 4 KiB-aligned page.
    #[repr(C, align(4096))]
    pub struct Page(pub [u8; SIZE]);

    /// A fresh page and a VMCB over it (the box must outlive the VMCB).
    pub fn fresh() -> (Box<Page>, Vmcb) {
        let mut p = Box::new(Page([0; SIZE]));
        // SAFETY: the box is page-aligned, SIZE bytes, and the tests keep it alive and touch
        // it only through the VMCB.
        let v = unsafe { Vmcb::new(p.0.as_mut_ptr()) };
        (p, v)
    }
}
