//! What [`crate::vmrun_bad_asid`] and [`crate::vmrun_bad_efer`] share: a VMRUN whose VMCB
//! breaks one consistency check (APM Vol. 2, 15.5.1), chosen by the set-up flag.
//!
//! The first VMRUN must exit at once with VMEXIT_INVALID (EXITCODE -1, compared as 32 bits),
//! which L1 records (EXITCODE, EXITINFO1/2) and reports as the run's one exit, counted under
//! the kind of VMX's "VM-entry failure due to invalid guest state" (the kernel names both
//! `invalid_guest_state`/`INVALID_STATE`). L2's code, `out DONE_PORT` at once, never runs.
//! SVM only; on the kvm engine KVM's own checks (`nested_vmcb_check_controls`/`_save` in
//! arch/x86/kvm/svm/nested.c) decide, on Bochs its `SVM_VMRUN` checks.

use nestbench_abi::payload::{Cpl, Setup};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};

/// The manifest of the payload `name` that breaks the check L1's set-up `flag` names.
#[must_use]
pub const fn manifest(name: &'static str, description: &'static str, flag: u32) -> Manifest {
    Manifest {
        name,
        description,
        cpl: Cpl::User,
        exits_per_iteration: &[(ExitReason::EntryFailureGuestState, 1)],
        default_iterations: 1,
        fixed_iterations: Some(1),
        soft_engine: Support::Unsupported { reason: "the soft engine is VMX; this is an SVM consistency check" },
        vendors: Vendors::SvmOnly {
            reason: "a VMCB consistency check (VMX's are the VM-entry cases: nestbench vmentry)",
        },
        single_level: Twin::None { reason: "no L1, no VMRUN" },
        setup: Setup::flags(flag),
    }
}

/// Nothing: L1 never enters L2 (the VMRUN fails); should it, `done` ends the run at once.
pub fn run(_: &mut Recorder, _: u64, _: u64) {}
