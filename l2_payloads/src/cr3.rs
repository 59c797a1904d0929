//! `cr3`: the cost of a control-register-access exit pair that L1 emulates, at CPL 0 (MOV
//! CR3 is #GP at CPL 3, which has priority over the VM exit: SDM 26.1.1).
//!
//! L1 sets "CR3-load exiting" and "CR3-store exiting" with a CR3-target count of 0 (SDM
//! 26.1.3), so each iteration's timed `mov rcx, cr3; mov cr3, rcx` is two VM exits, reason
//! 28: MOV from CR3 (qualification 0x113: CR3, access type 1, RCX) and MOV to CR3 (0x103).
//! L1 answers the first with L2's guest-state CR3 and writes the second into it. Every value
//! read must be non-zero and equal the first one (the CR3 L2 runs on); a mismatch counts in
//! `failures`. On the
//! soft engine VM2 is single-stepped while these controls are on (docs/soft-engine.md), so
//! each L2 instruction there is one more KVM exit, all of them L0's.

use nestbench_abi::payload::{Cpl, Setup, setup};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "cr3",
    description: "mov rcx, cr3; mov cr3, rcx at CPL 0 with CR3-load/store exiting: two CR_ACCESS exits per iteration that L1 emulates",
    cpl: Cpl::Kernel,
    exits_per_iteration: &[(ExitReason::ControlRegisterAccess, 2)],
    default_iterations: 1000,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::VmxOnly { reason: "L1's SVM CR3 intercepts are not built" },
    single_level: Twin::None {
        reason: "single-level, MOV CR3 runs in the kernel's KVM without an exit: there is no L1 to intercept it",
    },
    setup: Setup::flags(setup::CR3_EXITING),
};

/// `iterations` timed CR3 reads and writes back, each read checked; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    let mut first = None;
    for _ in 0..iterations {
        let value: u64;
        // SAFETY: reads CR3 and loads the same value back (L1 intercepts both): the address
        // space does not change.
        let (before, after) = unsafe {
            crate::timed!(
                "mov rcx, cr3",
                "mov cr3, rcx";
                out("rcx") value,
                options(nostack),
            )
        };
        recorder.record(before, after);
        if value == 0 || *first.get_or_insert(value) != value {
            recorder.fail();
        }
    }
}
