//! `inl`: the cost of an I/O-instruction exit whose result L1 supplies, from CPL 3.
//!
//! Each iteration times one `in eax, 0xE0` ([`PAYLOAD_PORT`], immediate form): one VM exit,
//! reason 30, that L1 completes by writing [`IN_VALUE`] into RAX and advancing RIP. Every
//! value read is checked against [`IN_VALUE`]; mismatches count in `failures` (a wrong value
//! means L1, or the engine under it, lost the IN completion).

use nestbench_abi::payload::{Cpl, IN_VALUE, PAYLOAD_PORT};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::Setup;

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "inl",
    description: "in eax, 0xE0 at CPL 3: one I/O-instruction exit per iteration, checks L1's value",
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

/// `iterations` timed `in`s, each checked; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    for _ in 0..iterations {
        let value: u32;
        // SAFETY: a port read that L1 intercepts (IOPL 3 lets CPL 3 execute it); no memory
        // is touched and only the named registers change.
        let (before, after) = unsafe {
            crate::timed!(
                "in eax, {port}",
                "mov {value:e}, eax";
                value = out(reg) value,
                port = const PAYLOAD_PORT,
                options(nomem, nostack),
            )
        };
        recorder.record(before, after);
        if value != IN_VALUE {
            recorder.fail();
        }
    }
}
