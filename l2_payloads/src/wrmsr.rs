//! `wrmsr`: the cost of a WRMSR exit that L1 handles, at CPL 0 (WRMSR is #GP at CPL 3).
//!
//! Each iteration `i` (from 0) times one `wrmsr` of [`value`]`(i)` to [`MSR`]
//! (IA32_KERNEL_GS_BASE): one VM exit, reason 32, because L1 sets the MSR's write bit in its
//! MSR bitmap (SDM 25.6.9). L1 records the value (EDX:EAX) and checks it against
//! [`value`]`(n)` for its n-th WRMSR exit, so a lost, repeated or mangled write shows up
//! as a failure in L1's report; then it advances RIP.
//!
//! Why IA32_KERNEL_GS_BASE (0xC000_0102): it exists on every x86-64 CPU and in every KVM
//! guest, takes any canonical 64-bit value, and nothing a payload runs uses it (no SWAPGS),
//! so a write that somehow reached KVM or the CPU would be harmless; it lies in the high MSR
//! range (write bitmap at offset 3072), so the two payloads cover both halves of the bitmap.

use nestbench_abi::payload::Cpl;
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::Setup;

/// The MSR written: IA32_KERNEL_GS_BASE.
pub const MSR: u32 = 0xC000_0102;
/// The value of the first write ("NB" "WR" 0000, canonical, both halves non-zero).
pub const FIRST_VALUE: u64 = 0x0000_4E42_5752_0000;

/// The value iteration `i` writes: [`FIRST_VALUE`] + `i` (canonical for any `i` below 2^32).
#[must_use]
pub const fn value(i: u64) -> u64 {
    FIRST_VALUE.wrapping_add(i)
}

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "wrmsr",
    description: "wrmsr of IA32_KERNEL_GS_BASE at CPL 0: one WRMSR exit per iteration, L1 checks the value",
    cpl: Cpl::Kernel,
    exits_per_iteration: &[(ExitReason::Wrmsr, 1)],
    default_iterations: 1000,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::Same,
    setup: Setup::NONE,
};

/// `iterations` timed `wrmsr`s of [`value`]`(i)`; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    for i in 0..iterations {
        let v = value(i);
        // SAFETY: a WRMSR that L1 intercepts (CPL 0); it writes no memory L2 can see and
        // changes only the named registers.
        let (before, after) = unsafe {
            crate::timed!(
                "mov eax, {lo:e}",
                "mov edx, {hi:e}",
                "wrmsr";
                lo = in(reg) v as u32,
                hi = in(reg) (v >> 32) as u32,
                in("ecx") MSR,
                options(nomem, nostack),
            )
        };
        recorder.record(before, after);
    }
}
