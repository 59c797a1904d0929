//! `vmmcall`: the cost of a VMMCALL intercept that L1 handles, from CPL 3: AMD's twin of
//! [`crate::vmcall`] (the same handler in L1: the hypercall kind).
//!
//! Each iteration times one `vmmcall`: one #VMEXIT, VMEXIT_VMMCALL (0x81, intercepted at any
//! CPL when the VMCB's VMMCALL intercept is set: APM Vol. 2, 15.9 and Table B-1), that L1
//! answers with RAX = [`crate::vmcall::VMCALL_RESULT`] and by advancing RIP. Every RAX is checked;
//! mismatches count in `failures`. On Intel CPUs VMMCALL is #UD.

use nestbench_abi::payload::Cpl;
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::Setup;

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "vmmcall",
    description: "vmmcall at CPL 3 (AMD): one VMMCALL intercept per iteration, checks L1's RAX",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::Vmcall, 1)],
    default_iterations: 1000,
    fixed_iterations: None,
    soft_engine: Support::Unsupported { reason: "the soft engine is VMX, where VMMCALL is #UD" },
    vendors: Vendors::SvmOnly { reason: "VMMCALL is AMD's: on Intel it raises #UD (run vmcall there)" },
    single_level: Twin::None { reason: "single-level VMMCALL is KVM's own hypercall, which L0 never sees" },
    setup: Setup::NONE,
};

/// `iterations` timed `vmmcall`s, each checked; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    crate::vmcall::each_checked(recorder, iterations, || {
        let value: u64;
        // SAFETY: VMMCALL is intercepted by L1, which sets RAX and resumes after it; no
        // memory is touched and only the named registers change.
        let t = unsafe {
            crate::timed!(
                "vmmcall",
                "mov {value}, rax";
                value = out(reg) value,
                options(nomem, nostack),
            )
        };
        (t, value)
    });
}
