//! `preempt_timer`: VMX-preemption timer exits (basic reason 52) during a long compute loop
//! at CPL 3.
//!
//! L1 activates the timer (SDM 25.6.1, pin-based bit 6) with a value per arm (VMCS field
//! 0x482E; the argument's low 32 bits when [`nestbench_abi::payload::PREEMPT_VALUE_GIVEN`] is set, else
//! [`nestbench_abi::payload::PREEMPT_DEFAULT_VALUE`]) and re-arms it at every exit until `iterations` exits, then
//! clears the control. After each exit it writes the count so far into L2's results page at
//! [`PREEMPT_MAILBOX_OFFSET`]. The payload runs xorshift chunks, polls that count, and
//! records one iteration per exit it observes: the TSC from the previous observation to this
//! one (one timer period plus the exit's round trip, as L2's TSC sees it). It stops once
//! `iterations` exits were seen, so the exit count is exact whatever the timing; its own
//! progress (chunks done) goes to [`PREEMPT_PROGRESS_OFFSET`].

use nestbench_abi::payload::{Cpl, L2_RESULTS_GPA, PREEMPT_MAILBOX_OFFSET, PREEMPT_PROGRESS_OFFSET};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::{Setup, setup};

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "preempt_timer",
    description: "a compute loop at CPL 3 that L1 preempts with the VMX-preemption timer: one exit per arm",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::PreemptionTimer, 1)],
    default_iterations: 100,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::VmxOnly { reason: "SVM has no VMX-preemption timer" },
    single_level: Twin::None {
        reason: "its loop ends only on L1's VMX-preemption timer: single-level nothing ends it",
    },
    setup: Setup::flags(setup::PREEMPTION_TIMER),
};

/// Xorshift64 steps per chunk between two polls of the mailbox.
pub const CHUNK_STEPS: u32 = 256;

/// The iterations to record when `seen` exits were recorded and the mailbox says `count`.
#[must_use]
pub const fn newly_seen(seen: u64, count: u64, iterations: u64) -> u64 {
    let target = if count < iterations { count } else { iterations };
    target.saturating_sub(seen)
}

/// Poll the exit count, compute meanwhile, one iteration per exit; `arg` is L1's.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    let mailbox = (L2_RESULTS_GPA + PREEMPT_MAILBOX_OFFSET) as *const u64;
    let progress = (L2_RESULTS_GPA + PREEMPT_PROGRESS_OFFSET) as *mut u64;
    let mut seen = 0;
    let mut chunks: u64 = 0;
    let mut x = crate::compute::SEED;
    // SAFETY: reads the TSC only.
    let mut last = unsafe { crate::timed!("";).1 };
    while seen < iterations {
        // SAFETY: register arithmetic only.
        unsafe {
            core::arch::asm!(
                "2:",
                "mov {t}, {x}",
                "shl {t}, 13",
                "xor {x}, {t}",
                "mov {t}, {x}",
                "shr {t}, 7",
                "xor {x}, {t}",
                "mov {t}, {x}",
                "shl {t}, 17",
                "xor {x}, {t}",
                "dec ecx",
                "jnz 2b",
                x = inout(reg) x,
                t = out(reg) _,
                inout("ecx") CHUNK_STEPS => _,
                options(nomem, nostack),
            );
        }
        chunks += 1;
        // SAFETY: the mailbox and progress words lie in L2's results page (mapped writable
        // in every payload's address space, rt.rs), past PayloadResults; L1 writes the
        // mailbox between two of L2's instructions (at an exit), so a volatile read sees it.
        let count = unsafe { mailbox.read_volatile() };
        // SAFETY: as above.
        unsafe { progress.write_volatile(chunks) };
        for _ in 0..newly_seen(seen, count, iterations) {
            // SAFETY: reads the TSC only.
            let now = unsafe { crate::timed!("";).1 };
            recorder.record(last, now);
            last = now;
            seen += 1;
        }
    }
    if x == 0 {
        // Xorshift never reaches 0 from a non-zero seed.
        recorder.fail();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nestbench_abi::payload::{PREEMPT_DEFAULT_VALUE, PREEMPT_VALUE_GIVEN};

    #[test]
    fn one_iteration_per_exit_seen_and_never_beyond_the_count() {
        assert_eq!(newly_seen(0, 0, 10), 0);
        assert_eq!(newly_seen(0, 3, 10), 3);
        assert_eq!(newly_seen(3, 3, 10), 0);
        assert_eq!(newly_seen(3, 50, 10), 7);
        assert_eq!(newly_seen(10, 50, 10), 0);
        assert_eq!(PREEMPT_VALUE_GIVEN as u32, 0, "the value bits are separate from the flag");
        const { assert!(PREEMPT_DEFAULT_VALUE > 0) };
    }
}
