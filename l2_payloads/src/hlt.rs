//! `hlt`: the cost of a HLT exit that L1 handles, at CPL 0 (HLT is #GP at CPL 3).
//!
//! Each iteration times one `hlt`: one VM exit, reason 12, that L1 completes by advancing
//! RIP (L2 never actually halts). On the development hosts CPL 0 code is emulated one
//! instruction at a time by KVM, so the loop around the `hlt` costs far more there than on
//! hardware; the delta still brackets only the `hlt` and the TSC reads.

use nestbench_abi::payload::Cpl;
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::Setup;

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "hlt",
    description: "hlt at CPL 0: one HLT exit per iteration",
    cpl: Cpl::Kernel,
    exits_per_iteration: &[(ExitReason::Hlt, 1)],
    default_iterations: 1000,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::Same,
    setup: Setup::NONE,
};

/// `iterations` timed `hlt`s; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    for _ in 0..iterations {
        // SAFETY: HLT exits to L1 (HLT exiting), which resumes after it; no memory or
        // register is touched.
        let (before, after) = unsafe { crate::timed!("hlt"; options(nomem, nostack)) };
        recorder.record(before, after);
    }
}
