//! `rdmsr`: the cost of an RDMSR exit that L1 answers, at CPL 0 (RDMSR is #GP at CPL 3).
//!
//! Each iteration times one `rdmsr` of [`MSR`] (IA32_SYSENTER_ESP): one VM exit, reason 31,
//! because L1 sets the MSR's read bit in its MSR bitmap (SDM 25.6.9; without "use MSR
//! bitmaps" every RDMSR exits, SDM 26.1.3). L1 completes it by loading EDX:EAX with
//! [`VALUE`] (SDM 5.1, RDMSR: the high 32 bits of RAX and RDX are cleared) and advancing
//! RIP. Every value read is checked; mismatches count in `failures` (a wrong value means L1,
//! or the engine under it, lost the completion, or the read went to a real MSR).
//!
//! Why IA32_SYSENTER_ESP (0x175): it exists on every x86-64 CPU and in every KVM guest, it
//! holds any canonical 64-bit value, and nothing a payload runs uses it (no SYSENTER), so an
//! access that somehow reached KVM or the CPU would be harmless; it lies in the low MSR
//! range (read bitmap at offset 0). The single-level twin filters it to L0, which answers
//! as L1 does.

use nestbench_abi::payload::Cpl;
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::Setup;

/// The MSR read: IA32_SYSENTER_ESP.
pub const MSR: u32 = 0x175;
/// The value L1 returns for it (canonical, both halves non-zero: "NB" "RD" 0175).
pub const VALUE: u64 = 0x0000_4E42_5244_0175;

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "rdmsr",
    description: "rdmsr of IA32_SYSENTER_ESP at CPL 0: one RDMSR exit per iteration, checks L1's value",
    cpl: Cpl::Kernel,
    exits_per_iteration: &[(ExitReason::Rdmsr, 1)],
    default_iterations: 1000,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::Same,
    setup: Setup::NONE,
};

/// `iterations` timed `rdmsr`s, each checked; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    for _ in 0..iterations {
        let lo: u32;
        let hi: u32;
        // SAFETY: an RDMSR that L1 intercepts (CPL 0); no memory is touched and only the
        // named registers change.
        let (before, after) = unsafe {
            crate::timed!(
                "rdmsr",
                "mov {lo:e}, eax",
                "mov {hi:e}, edx";
                lo = out(reg) lo,
                hi = out(reg) hi,
                in("ecx") MSR,
                options(nomem, nostack),
            )
        };
        recorder.record(before, after);
        if (u64::from(hi) << 32 | u64::from(lo)) != VALUE {
            recorder.fail();
        }
    }
}
