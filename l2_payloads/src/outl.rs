//! `outl`: the cost of an I/O-instruction exit that L1 handles, from CPL 3.
//!
//! Each iteration times one `out 0xE0, eax` ([`PAYLOAD_PORT`], immediate form, EAX = the
//! iteration number): one VM exit, reason 30, that L1 completes by advancing RIP. The figure
//! is the full round trip L2 -> (L0) -> L1 -> (L0) -> L2 as L2's TSC sees it.

use nestbench_abi::payload::{Cpl, PAYLOAD_PORT};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::Setup;

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "outl",
    description: "out 0xE0, eax at CPL 3: one I/O-instruction exit per iteration",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::IoInstruction, 1)],
    default_iterations: 1000,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::Same,
    setup: Setup::NONE,
};

const _: () = assert!(PAYLOAD_PORT <= 0xFF, "the immediate form needs an 8-bit port");

/// `iterations` timed `out`s; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    for i in 0..iterations {
        // SAFETY: a port write that L1 intercepts (IOPL 3 lets CPL 3 execute it); no memory
        // is touched and only the named registers change.
        let (before, after) = unsafe {
            crate::timed!(
                "mov eax, {value:e}",
                "out {port}, eax";
                value = in(reg) i,
                port = const PAYLOAD_PORT,
                options(nomem, nostack),
            )
        };
        recorder.record(before, after);
    }
}
