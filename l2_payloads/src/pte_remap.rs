//! `pte_remap`: L1 edits L2's own page table between two VM entries; L2 must see the new
//! mapping.
//!
//! Data pages 0 and 1 are mapped by EPT12 before the launch onto seeded L1 pages. L2's PTE
//! for linear [`EPT_DATA_GPA`] starts at L2-physical data page 0. Iteration `i` reads linear
//! data page 0 (it must hold L2-physical page `i % 2`'s seeded word), then times
//! `out PAYLOAD_PORT, eax`: one I/O exit, in which L1 points the PTE at the other page. L1
//! runs L2 without VPIDs, so the exit and the entry invalidate L2's linear mappings and L2
//! needs no INVLPG (`l1_guest::exits::remap`). On the soft engine the change is a store
//! into VM2's memory by another VM, which KVM's shadow MMU does not see: L0 resyncs
//! (`l0::soft::l2vm::L2Vm::resync_tables`).

use nestbench_abi::payload::Cpl;
#[cfg(target_arch = "x86_64")]
use nestbench_abi::payload::{EPT_DATA_GPA, PAYLOAD_PORT, ept_pattern};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::{PoolPages, Setup, setup};

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "pte_remap",
    description: "L1 points an L2 PTE at another page between two entries, CPL 3: one I/O exit each, L2 sees the new page",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::IoInstruction, 1)],
    default_iterations: 64,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::None {
        reason: "L1 swaps the EPT12 leaves under L2's page table between iterations: single-level half the checks fail",
    },
    setup: Setup { flags: setup::EPT_POOL | setup::REMAP_PTE, pool_pages: PoolPages::Fixed(2) },
};

/// `pte_remap`'s body; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    const _: () = assert!(PAYLOAD_PORT == 0xE0, "the immediate port below");
    let check = |recorder: &mut Recorder, page: u64| {
        // SAFETY: linear data page 0 is mapped by L2's paging onto data page 0 or 1, both
        // mapped in EPT12 onto L1's seeded pages.
        let v = unsafe { (EPT_DATA_GPA as *const u64).read_volatile() };
        if v != ept_pattern(EPT_DATA_GPA + page * 4096, 0) {
            recorder.fail();
        }
    };
    for i in 0..iterations {
        check(recorder, i % 2);
        // SAFETY: port I/O on PAYLOAD_PORT, which L1 intercepts (the TSS bitmap allows it).
        let (before, after) = unsafe { crate::timed!("out 0xE0, eax"; options(nostack, nomem)) };
        recorder.record(before, after);
    }
    check(recorder, iterations % 2);
}
