//! `ept_ro`: a write to a page EPT12 maps read-only.
//!
//! L1 maps the data pages read-only before the launch. Each iteration reads a page's seeded
//! word (allowed: no VM exit on hardware), then times a write to it: an EPT violation
//! (reason 48) with the write bit and EPT permission R in the qualification (SDM 28.2.1,
//! Table 28-7: 0x18A with the linear-address bits), which L1 resolves by granting write; the
//! write then retires, and the payload reads its value back.

use nestbench_abi::payload::Cpl;
#[cfg(target_arch = "x86_64")]
use nestbench_abi::payload::{EPT_DATA_GPA, ept_pattern};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::{PoolPages, Setup, setup};

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "ept_ro",
    description: "write to a page EPT12 maps read-only, CPL 3: one EPT violation per page, L1 grants write",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::EptViolation, 1)],
    default_iterations: 64,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::None { reason: "single-level there is no read-only EPT12 mapping: the write takes no exit" },
    setup: Setup { flags: setup::EPT_POOL | setup::EPT_READ_ONLY, pool_pages: PoolPages::IterationsUpToPool },
};

/// Iterations are pages, at most `EPT_POOL_PAGES` (no aliasing); `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    for i in 0..crate::ept_touch::pool_pages(iterations) {
        let gpa = EPT_DATA_GPA + i * 4096;
        let p = gpa as *mut u64;
        // SAFETY: the data page is mapped in L2's paging and (read-only, then read/write) in
        // EPT12 onto a page L1 seeded for this payload alone.
        if unsafe { p.read_volatile() } != ept_pattern(gpa, 0) {
            recorder.fail();
        }
        let value = !ept_pattern(gpa, 0);
        // SAFETY: as above; the store is the measured access (an EPT violation L1 resolves).
        let (before, after) = unsafe {
            crate::timed!(
                "mov qword ptr [{p}], {v}";
                p = in(reg) gpa,
                v = in(reg) value,
                options(nostack),
            )
        };
        recorder.record(before, after);
        // SAFETY: as above.
        if unsafe { p.read_volatile() } != value {
            recorder.fail();
        }
    }
}
