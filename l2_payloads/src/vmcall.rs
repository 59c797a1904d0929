//! `vmcall`: the cost of a VMCALL exit that L1 handles, from CPL 3 (kvm-unit-tests' `vmcall`
//! test in x86/vmexit.c).
//!
//! Each iteration times one `vmcall`: one VM exit, reason 18 (VMCALL always exits in VMX
//! non-root operation, at any CPL: SDM 26.1.2), that L1 answers with RAX =
//! [`VMCALL_RESULT`] and by advancing RIP. Every RAX is checked; mismatches count in
//! `failures`.
//!
//! This is the one image allowed to contain VMCALL (l0's image check): on the development
//! hosts a VMCALL hangs the vCPU inside KVM_RUN, so the `soft` engine never runs it.

use nestbench_abi::payload::Cpl;
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::Setup;

pub use nestbench_abi::payload::VMCALL_RESULT;

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "vmcall",
    description: "vmcall at CPL 3: one VMCALL exit per iteration, checks L1's RAX",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::Vmcall, 1)],
    default_iterations: 1000,
    fixed_iterations: None,
    soft_engine: Support::Unsupported {
        reason: "VMCALL hangs the vCPU inside KVM_RUN on this host (HOST-NOTES), so the soft engine cannot run it",
    },
    vendors: Vendors::VmxOnly { reason: "VMCALL is Intel's: on AMD it raises #UD (run vmmcall there)" },
    single_level: Twin::Same,
    setup: Setup::NONE,
};

/// `iterations` timed `vmcall`s, each checked; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    each_checked(recorder, iterations, || {
        let value: u64;
        // SAFETY: VMCALL exits to L1, which sets RAX and resumes after it; no memory is
        // touched and only the named registers change.
        let t = unsafe {
            crate::timed!(
                "vmcall",
                "mov {value}, rax";
                value = out(reg) value,
                options(nomem, nostack),
            )
        };
        (t, value)
    });
}

/// `iterations` of `one` (a timed hypercall instruction: the TSC before and after, and RAX
/// after it), each recorded and its RAX checked against [`VMCALL_RESULT`]. Shared with
/// [`crate::vmmcall`].
#[inline(always)]
pub(crate) fn each_checked(recorder: &mut Recorder, iterations: u64, mut one: impl FnMut() -> ((u64, u64), u64)) {
    for _ in 0..iterations {
        let ((before, after), value) = one();
        recorder.record(before, after);
        if value != VMCALL_RESULT {
            recorder.fail();
        }
    }
}
