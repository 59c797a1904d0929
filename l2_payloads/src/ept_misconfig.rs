//! `ept_misconfig`: a read through an EPT12 leaf with a reserved memory type.
//!
//! L1 maps [`EPT_MISCONFIG_PAGES`] seeded data pages before the launch (as for `ept_fill`)
//! and gives the leaf of page `arg % EPT_MISCONFIG_PAGES` memory type 2
//! ([`EPT_MISCONFIG_MEMTYPE`], reserved: SDM 29.3.3.1). The payload reads the other pages
//! (no VM exit), then times the read of that page: one EPT misconfiguration (reason 49,
//! qualification 0, GUEST_PHYSICAL_ADDRESS = the page), which L1 repairs (write-back) and
//! resumes; the read retries and must see the page's seeded words. A last pass reads every
//! page again without exits. The whole run is one iteration.

use nestbench_abi::payload::{Cpl, EPT_MISCONFIG_PAGES};
#[cfg(target_arch = "x86_64")]
use nestbench_abi::payload::{EPT_DATA_GPA, EPT_PATTERN_OFFSETS};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::{PoolPages, Setup, setup};

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "ept_misconfig",
    description: "read through an EPT12 leaf with a reserved memory type, CPL 3: one EPT misconfiguration, L1 repairs it",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::EptMisconfiguration, 1)],
    default_iterations: 1,
    fixed_iterations: Some(1),
    soft_engine: Support::Runs,
    vendors: Vendors::VmxOnly {
        reason: "an NPT entry has no memory type to misconfigure (EPT misconfiguration is VMX-only)",
    },
    single_level: Twin::None { reason: "single-level there is no EPT12 to misconfigure: the access takes no exit" },
    setup: Setup {
        flags: setup::EPT_POOL | setup::EPT_MISCONFIG,
        pool_pages: PoolPages::Fixed(EPT_MISCONFIG_PAGES as u32),
    },
};

/// The data page (index) L1 misconfigures for `arg`.
#[must_use]
pub const fn page(arg: u64) -> u64 {
    arg % EPT_MISCONFIG_PAGES
}

#[cfg(target_arch = "x86_64")]
fn check(recorder: &mut Recorder, i: u64) {
    let gpa = EPT_DATA_GPA + i * 4096;
    for off in EPT_PATTERN_OFFSETS {
        // SAFETY: L1 maps the data page in L2's paging and in EPT12 onto a page it seeded.
        let v = unsafe { ((gpa + off) as *const u64).read_volatile() };
        if !crate::ept_touch::seeded(gpa, off, v) {
            recorder.fail();
        }
    }
}

/// `ept_misconfig`'s body; `iterations` is ignored (always one), `arg` picks the page.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, _iterations: u64, arg: u64) {
    let bad = page(arg);
    for i in (0..EPT_MISCONFIG_PAGES).filter(|&i| i != bad) {
        check(recorder, i);
    }
    let gpa = EPT_DATA_GPA + bad * 4096;
    let first: u64;
    // SAFETY: as in `check`; the read is the measured access (an EPT misconfiguration that
    // L1 repairs, then the read retires).
    let (before, after) = unsafe {
        crate::timed!(
            "mov {v}, qword ptr [{p}]";
            v = out(reg) first,
            p = in(reg) gpa,
            options(nostack, readonly),
        )
    };
    recorder.record(before, after);
    if !crate::ept_touch::seeded(gpa, 0, first) {
        recorder.fail();
    }
    for i in 0..EPT_MISCONFIG_PAGES {
        check(recorder, i);
    }
}
