//! EPT-violation exits (basic reason 48; SDM 28.2.1, Table 28-7 qualification; the
//! guest-physical address in GUEST_PHYSICAL_ADDRESS, 0x2400, and the guest-linear address in
//! GUEST_LINEAR_ADDRESS, 0x640A, when qualification bit 7 says it is valid).
//!
//! The EPT payloads' data region ([`EPT_DATA_GPA`], [`EPT_DATA_PAGES`]) is mapped by L2's
//! paging but, for `ept_touch`, not by EPT12: L1 seeds a pool of scattered L1 pages before
//! the launch and maps one of them on demand at each first touch, then resumes L2 at the same
//! instruction (SDM 28.2.1: an EPT violation is fault-like, guest RIP is the faulting
//! instruction). For `ept_fill` the whole pool is mapped before the launch, so any violation
//! there is unexpected. For `ept_ro` it is mapped read-only before the launch: a write is a
//! violation with the write bit and R in bits 5:3, which L1 resolves by granting write (an
//! EPT violation invalidates the cached translations of the faulting address, SDM 29.4.3.1,
//! so the retry sees the new permission without INVEPT). No INVEPT is needed after a not-present entry becomes present (SDM
//! 29.4.3.3: a processor does not cache translations for not-present EPT entries).
//!
//! For `mmio` L1 emulates a device register at [`MMIO_GPA`], which EPT12 never maps
//! ([`MmioDevice`]): every access is a violation on a not-present entry, decoded by the
//! qualification (read or write) and the register convention of `nestbench_abi::payload`
//! (data in EAX, a [`MMIO_INSN_LEN`]-byte `mov`), then skipped.

use super::{EXIT_PAYLOAD_FAILED, EXIT_UNEXPECTED_EXIT, RunState, advance_rip};
use crate::ept_builder::{EptBuilder, EptError, FrameMemory, PageSize};
use crate::exit::{Exit, NestedPageFault};
use crate::l2::L1Frames;
use crate::vcpu::Vcpu;
use nestbench_abi::ept::{READ, RWX, WRITE};
use nestbench_abi::payload::{
    EPT_DATA_GPA, EPT_DATA_PAGES, EPT_PATTERN_OFFSETS, EPT_POOL_PAGES, MMIO_GPA, MMIO_INSN_LEN, ept_pattern,
    mmio_read_value, mmio_write_value,
};

const PAGE: u64 = 4096;

/// The qualification bits (SDM 28.2.1, Table 28-7), defined once in the ABI: L0's soft engine
/// writes what this decodes.
pub use nestbench_abi::ept::violation::{
    FETCH_ACCESS as QUAL_FETCH, FINAL_TRANSLATION as QUAL_FINAL_TRANSLATION, LINEAR_VALID as QUAL_LINEAR_VALID,
    PERMS_SHIFT as QUAL_PERMS_SHIFT, READ_ACCESS as QUAL_READ, WRITE_ACCESS as QUAL_WRITE,
};

/// The EPT payloads' pool of seeded L1 pages.
#[derive(Debug)]
pub struct EptPool {
    /// L1's frame allocator after the setup (EPT12 tables allocated on demand come from it).
    pub frames: L1Frames,
    /// The L1 frame of data page 0; data page `i` lives at
    /// `first - (i % EPT_POOL_PAGES) * 4096` (the allocator hands out descending frames:
    /// ascending L2 pages land on descending, non-contiguous L1 pages; pages beyond the pool
    /// alias its pages).
    pub first: u64,
    /// Data pages the pool backs (L2 pages; at most `EPT_POOL_PAGES` distinct L1 frames).
    pub pages: u64,
    /// `ept_touch`: map on the first touch. `ept_fill`, `ept_ro`: mapped before the launch.
    pub on_demand: bool,
    /// `ept_ro`: mapped read-only; a write gets write permission.
    pub read_only: bool,
    /// Violations resolved by mapping a pool page.
    pub resolved: u64,
    /// `ept_fetch`: instruction fetches are resolved too (the pages hold code).
    pub fetch: bool,
}

impl EptPool {
    /// Back `pages` (at most [`EPT_DATA_PAGES`]) data pages with `min(pages,
    /// EPT_POOL_PAGES)` pool pages from `frames`, each seeded with the [`ept_pattern`] of
    /// the data page it backs first, and with `on_demand` false map all `pages` into the
    /// EPT12 at `eptp` right away (4 KiB leaves; pages beyond the pool alias it).
    pub fn setup(
        mut frames: L1Frames,
        eptp: u64,
        pages: u64,
        on_demand: bool,
        read_only: bool,
    ) -> Result<Self, EptError> {
        let pages = pages.min(EPT_DATA_PAGES);
        let mut first = 0;
        for i in 0..pages.min(EPT_POOL_PAGES) {
            let pa = frames.alloc_zeroed_page().ok_or(EptError::OutOfFrames)?;
            if i == 0 {
                first = pa;
            } else if pa != first - i * PAGE {
                return Err(EptError::OutOfFrames);
            }
            let gpa = EPT_DATA_GPA + i * PAGE;
            for off in EPT_PATTERN_OFFSETS {
                frames.write_u64(pa + off, ept_pattern(gpa, off));
            }
        }
        let mut pool = Self { frames, first, pages, on_demand, read_only, resolved: 0, fetch: false };
        if !on_demand {
            for i in 0..pages {
                pool.map(eptp, EPT_DATA_GPA + i * PAGE)?;
            }
        }
        Ok(pool)
    }

    /// The pool frame that backs L2-physical `gpa`, if `gpa` is in the pool's range.
    #[must_use]
    pub const fn frame_for(&self, gpa: u64) -> Option<u64> {
        if gpa < EPT_DATA_GPA || gpa >= EPT_DATA_GPA + self.pages * PAGE {
            return None;
        }
        Some(self.first - (gpa - EPT_DATA_GPA) / PAGE % EPT_POOL_PAGES * PAGE)
    }

    fn map(&mut self, eptp: u64, gpa: u64) -> Result<(), EptError> {
        let page = gpa & !(PAGE - 1);
        let pa = self.frame_for(page).ok_or(EptError::AlreadyMapped { gpa })?;
        let perms = if self.read_only { READ } else { RWX };
        EptBuilder::from_eptp(eptp).map(&mut self.frames, page, pa, PageSize::Size4K, perms)
    }

    /// Resolve a violation: a read or write of a not-present pool page (qualification bits
    /// 5:3 all 0) is mapped read/write. Anything else is not L1's to fix.
    pub fn resolve(&mut self, eptp: u64, gpa: u64, qualification: u64) -> bool {
        let perms = (qualification >> QUAL_PERMS_SHIFT) & RWX;
        let data = qualification & (QUAL_READ | QUAL_WRITE) != 0 && qualification & QUAL_FETCH == 0;
        let data = data || (self.fetch && qualification & (QUAL_READ | QUAL_WRITE | QUAL_FETCH) == QUAL_FETCH);
        if self.read_only && qualification & QUAL_WRITE != 0 && perms == READ && self.frame_for(gpa).is_some() {
            let ok = EptBuilder::from_eptp(eptp).set_permissions(&mut self.frames, gpa & !(PAGE - 1), RWX) == Ok(true);
            self.resolved += u64::from(ok);
            return ok;
        }
        if !self.on_demand || !data || perms != 0 || self.frame_for(gpa).is_none() {
            return false;
        }
        let ok = self.map(eptp, gpa).is_ok();
        self.resolved += u64::from(ok);
        ok
    }
}

const _: () = assert!(WRITE == 1 << 1);

/// The `mmio` payload's device: one 32-bit register at [`MMIO_GPA`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmioDevice {
    /// The last value written.
    pub value: u32,
    /// Writes emulated (the payload writes `mmio_write_value(i)` in iteration `i`).
    pub writes: u64,
    /// Reads emulated.
    pub reads: u64,
}

/// What [`MmioDevice::access`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioAccess {
    /// Not an access L1 emulates (another address, a fetch, a present translation).
    NotMine,
    /// Emulated; the instruction is to be skipped.
    Done,
    /// A write of a value other than the payload's sequence (L1 checks what it receives).
    WrongValue {
        /// Written.
        got: u32,
        /// Expected.
        want: u32,
    },
}

impl MmioDevice {
    /// Emulate the access an EPT violation with qualification `q` at `gpa` describes, with
    /// the payload's data register EAX in `rax` (written for a read: a 32-bit destination
    /// zero-extends, SDM 3.4.1.1).
    pub fn access(&mut self, gpa: u64, q: u64, rax: &mut u64) -> MmioAccess {
        let kind = q & (QUAL_READ | QUAL_WRITE | QUAL_FETCH);
        let not_present = (q >> QUAL_PERMS_SHIFT) & RWX == 0;
        if gpa != MMIO_GPA || !not_present || (kind != QUAL_READ && kind != QUAL_WRITE) {
            return MmioAccess::NotMine;
        }
        if kind == QUAL_WRITE {
            let (got, want) = (*rax as u32, mmio_write_value(self.writes));
            self.writes += 1;
            self.value = got;
            if got != want {
                return MmioAccess::WrongValue { got, want };
            }
        } else {
            *rax = u64::from(mmio_read_value(self.value));
            self.reads += 1;
        }
        MmioAccess::Done
    }
}

/// Record the exit; emulate the `mmio` register; map the page for `ept_touch`; anything else
/// stops the run.
pub fn handle<V: Vcpu>(vcpu: &mut V, run: &mut RunState, fault: NestedPageFault) {
    let NestedPageFault { gpa, linear, qualification: q } = fault;
    let rip = vcpu.rip();
    // SDM 28.2.4: the VM-exit instruction length is undefined for EPT violations: not read.
    vcpu.record(run, Exit::NestedPageFault(fault).report_reason(), 0, q, rip, 0, linear);
    if let Some(dev) = run.mmio.as_mut() {
        match dev.access(gpa, q, &mut vcpu.regs().rax) {
            MmioAccess::Done => return advance_rip(vcpu, rip, MMIO_INSN_LEN),
            MmioAccess::WrongValue { got, want } => {
                crate::println!("l1: mmio: write {} of {got:#x}, expected {want:#x}", dev.writes - 1);
                crate::hypercall::exit(EXIT_PAYLOAD_FAILED)
            }
            MmioAccess::NotMine => {}
        }
    }
    let eptp = run.eptp;
    if run.ept.as_mut().is_some_and(|p| p.resolve(eptp, gpa, q)) {
        return;
    }
    crate::println!(
        "l1: EPT violation L1 cannot resolve: guest-physical {gpa:#x}, linear {linear:#x}, qualification {q:#x}, RIP {rip:#x}"
    );
    crate::hypercall::exit(EXIT_UNEXPECTED_EXIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_not_present_data_accesses_inside_an_on_demand_pool_are_resolved() {
        let frames = L1Frames::new();
        // Host test: no frame is touched by `frame_for` or the checks before `map`.
        let pool = EptPool {
            frames,
            first: 0x1F0_0000,
            pages: 4,
            on_demand: true,
            read_only: false,
            resolved: 0,
            fetch: false,
        };
        assert_eq!(pool.frame_for(EPT_DATA_GPA), Some(0x1F0_0000));
        assert_eq!(pool.frame_for(EPT_DATA_GPA + 3 * PAGE + 8), Some(0x1F0_0000 - 3 * PAGE));
        assert_eq!(pool.frame_for(EPT_DATA_GPA + 4 * PAGE), None);
        assert_eq!(pool.frame_for(EPT_DATA_GPA - 1), None);
        let big = EptPool { pages: EPT_POOL_PAGES + 2, ..pool };
        assert_eq!(big.frame_for(EPT_DATA_GPA + (EPT_POOL_PAGES + 1) * PAGE), Some(0x1F0_0000 - PAGE), "aliases");
        let pool = EptPool { pages: 4, ..big };
        let mut p = pool;
        let q = QUAL_READ | QUAL_LINEAR_VALID | QUAL_FINAL_TRANSLATION;
        assert!(!p.resolve(0, EPT_DATA_GPA + 4 * PAGE, q), "outside the pool");
        assert!(!p.resolve(0, EPT_DATA_GPA, q | QUAL_FETCH), "a fetch");
        assert!(!p.resolve(0, EPT_DATA_GPA, q | 1 << QUAL_PERMS_SHIFT), "present, read-only: not a missing page");
        p.on_demand = false;
        assert!(!p.resolve(0, EPT_DATA_GPA, q), "ept_fill maps everything up front");
        assert_eq!(p.resolved, 0);
    }

    #[test]
    fn the_mmio_register_answers_reads_and_checks_writes() {
        let mut d = MmioDevice::default();
        let w = QUAL_WRITE | QUAL_LINEAR_VALID | QUAL_FINAL_TRANSLATION;
        let r = QUAL_READ | QUAL_LINEAR_VALID | QUAL_FINAL_TRANSLATION;
        let mut rax = 0xFFFF_FFFF_0000_0000 | u64::from(mmio_write_value(0));
        assert_eq!(d.access(MMIO_GPA, w, &mut rax), MmioAccess::Done);
        assert_eq!(d.access(MMIO_GPA, r, &mut rax), MmioAccess::Done);
        assert_eq!(rax, u64::from(mmio_read_value(mmio_write_value(0))), "zero-extended");
        let mut bad = 5;
        assert_eq!(d.access(MMIO_GPA, w, &mut bad), MmioAccess::WrongValue { got: 5, want: mmio_write_value(1) });
        assert_eq!(d.access(MMIO_GPA + 4096, r, &mut rax), MmioAccess::NotMine);
        assert_eq!(d.access(MMIO_GPA, r | QUAL_FETCH, &mut rax), MmioAccess::NotMine);
        assert_eq!(d.access(MMIO_GPA, r | 1 << QUAL_PERMS_SHIFT, &mut rax), MmioAccess::NotMine);
        assert_eq!((d.reads, d.writes), (1, 2));
    }
}
