//! `ept_remap`: L1 points an EPT12 leaf at another L1 page and executes INVEPT; L2 must see
//! the new page's contents.
//!
//! Data page 0 ([`EPT_DATA_GPA`]) is mapped before the launch onto a seeded L1 page; L1 holds
//! a second page seeded with the complement of its words. Iteration `i` reads the page
//! (the first page's word for even `i`, the second's for odd `i`), then times
//! `out PAYLOAD_PORT, eax` with EAX = the INVEPT type, 1 (single-context) for even `i`, 2
//! (all-context) for odd `i`: one I/O exit, in which L1 swaps the leaf to the other page
//! and executes INVEPT of that type (crate docs of `l1_guest::exits::remap`). A last read
//! checks the final mapping.

use nestbench_abi::payload::Cpl;
#[cfg(target_arch = "x86_64")]
use nestbench_abi::payload::{EPT_DATA_GPA, PAYLOAD_PORT, ept_pattern};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::{PoolPages, Setup, setup};

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "ept_remap",
    description: "L1 remaps an EPT12 leaf to another page and INVEPTs (single, all alternating), CPL 3: one I/O exit each",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::IoInstruction, 1)],
    default_iterations: 64,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::None {
        reason: "L1 remaps EPT12 between iterations: single-level there is no EPT12 and half the checks fail",
    },
    setup: Setup { flags: setup::EPT_POOL | setup::REMAP_EPT, pool_pages: PoolPages::Fixed(1) },
};

/// The INVEPT type iteration `i` asks for: 1 (single-context) for even `i`, 2 (all-context)
/// for odd.
#[must_use]
pub const fn invept_type(i: u64) -> u32 {
    (i % 2) as u32 + 1
}

/// `ept_remap`'s body; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    const _: () = assert!(PAYLOAD_PORT == 0xE0, "the immediate port below");
    let check = |recorder: &mut Recorder, swapped: bool| {
        // SAFETY: data page 0 is mapped in L2's paging and in EPT12 onto one of L1's two
        // seeded pages.
        let v = unsafe { (EPT_DATA_GPA as *const u64).read_volatile() };
        let want = ept_pattern(EPT_DATA_GPA, 0);
        if v != if swapped { !want } else { want } {
            recorder.fail();
        }
    };
    for i in 0..iterations {
        check(recorder, i % 2 == 1);
        let kind = invept_type(i);
        // SAFETY: port I/O on PAYLOAD_PORT, which L1 intercepts (the TSS bitmap allows it).
        let (before, after) = unsafe {
            crate::timed!(
                "mov eax, {k:e}",
                "out 0xE0, eax";
                k = in(reg) kind,
                options(nostack, nomem),
            )
        };
        recorder.record(before, after);
    }
    check(recorder, iterations % 2 == 1);
}
