//! `cpuid`: the cost of a CPUID exit that L1 handles, from CPL 3.
//!
//! Each iteration times one `cpuid` with EAX = 0 and ECX = 0: one VM exit, reason 10 (CPUID
//! always exits in VMX non-root operation, SDM 26.1.2), that L1 answers by executing CPUID
//! itself and advancing RIP. kvm-unit-tests' `cpuid` test in x86/vmexit.c. Every answer is
//! checked: the highest basic leaf (EAX) and the vendor's first word (EBX) must be nonzero
//! and the same in every iteration; mismatches count in `failures` (a zero means L1, or the
//! engine under it, did not hand the results back into L2's registers).
//!
//! The timed window also holds the two `xor`s that set EAX/ECX and the save/restore of RBX
//! (which CPUID overwrites and Rust reserves): a few cycles, the same in every layer.

use nestbench_abi::payload::Cpl;
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::Setup;

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "cpuid",
    description: "cpuid (EAX = 0) at CPL 3: one CPUID exit per iteration",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::Cpuid, 1)],
    default_iterations: 1000,
    fixed_iterations: None,
    soft_engine: Support::Unsupported {
        reason: "this host's KVM handles CPUID in the kernel: L0 never sees L2's CPUID, so it cannot reflect it",
    },
    vendors: Vendors::Both,
    single_level: Twin::Same,
    setup: Setup::NONE,
};

/// Whether one CPUID.0 answer is plausible and consistent with the first (`first` is filled
/// in by the first answer).
#[must_use]
pub fn check(first: &mut Option<(u32, u32)>, max_leaf: u32, vendor0: u32) -> bool {
    if max_leaf == 0 || vendor0 == 0 {
        return false;
    }
    *first.get_or_insert((max_leaf, vendor0)) == (max_leaf, vendor0)
}

/// `iterations` timed `cpuid`s, each checked; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    let mut first = None;
    for _ in 0..iterations {
        let max_leaf: u32;
        let vendor0: u32;
        // SAFETY: CPUID exits to L1, which writes EAX, EBX, ECX, EDX as CPUID would; RBX is
        // saved in a scratch register before and restored after; no memory is touched.
        let (before, after) = unsafe {
            crate::timed!(
                "xor eax, eax",
                "xor ecx, ecx",
                "mov {saved}, rbx",
                "cpuid",
                "mov {leaf:e}, eax",
                "mov {vendor:e}, ebx",
                "mov rbx, {saved}";
                saved = out(reg) _,
                leaf = out(reg) max_leaf,
                vendor = out(reg) vendor0,
                out("rcx") _,
                options(nomem, nostack),
            )
        };
        recorder.record(before, after);
        if !check(&mut first, max_leaf, vendor0) {
            recorder.fail();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_must_be_nonzero_and_stable() {
        let mut first = None;
        assert!(check(&mut first, 0x16, 0x756E_6547)); // "Genu"
        assert!(check(&mut first, 0x16, 0x756E_6547));
        assert!(!check(&mut first, 0x17, 0x756E_6547));
        assert!(!check(&mut first, 0x16, 0));
        let mut first = None;
        assert!(!check(&mut first, 0, 0), "CPUID left untouched: EAX still 0");
        assert_eq!(first, None);
    }

    #[test]
    fn the_timed_cpuid_reads_this_cpu() {
        let mut r = Recorder::new();
        run(&mut r, 3, 0);
        let res = r.results();
        assert_eq!((res.iterations, res.failures), (3, 0));
    }
}
