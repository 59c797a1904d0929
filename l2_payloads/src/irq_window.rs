//! `irq_window`: interrupt-window exits (basic reason 7), one per iteration, at CPL 3.
//!
//! L1 sets "interrupt-window exiting" (SDM 25.6.2, Table 25-6, bit 2) and L2's RFLAGS.IF at
//! launch. The window is open at every entry (IF = 1, no STI/MOV-SS blocking), so each entry
//! exits before L2's first instruction (SDM 26.7.5): L1 records `iterations` such exits, all
//! at the entry point, then clears the control and IF. Only then does L2 run: the timed
//! [`crate::compute`] loop, `iterations` times, with no exit. This is the only form of the
//! interrupt window the soft engine honours (docs/soft-engine.md "Interrupts": a window
//! that opens inside L2 is refused, KVM reports it late on this host). On SVM the same
//! exits are VMEXIT_VINTR: a pending V_IRQ with the VINTR intercept (APM 15.21.4).

use nestbench_abi::payload::Cpl;
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::{Setup, setup};

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "irq_window",
    description: "interrupt-window exiting with IF = 1 at CPL 3: one exit before the first instruction per entry",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::InterruptWindow, 1)],
    default_iterations: 100,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::None {
        reason: "its exits come at VM entry, before the timed loop, which has none: a twin would time the loop alone",
    },
    setup: Setup::flags(setup::INTERRUPT_WINDOW),
};

/// The [`crate::compute`] loop, `iterations` times (the exits all came before it).
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, arg: u64) {
    crate::compute::run(recorder, iterations, arg);
}
