//! `compute`: the no-exit baseline. Each iteration times a fixed integer loop
//! ([`STEPS`] xorshift64 steps from [`SEED`], a serial dependency chain with no memory
//! access and no exiting instruction), so its cycles are the same natively, in a single-level
//! guest and in L2: a difference is the TSC's or the scheduler's, not VMX's. Each result is
//! checked against [`EXPECTED`]; a mismatch counts in `failures`.

use nestbench_abi::payload::Cpl;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::Setup;

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "compute",
    description: "a fixed integer loop at CPL 3 (64 xorshift64 steps), no exits: the baseline",
    cpl: Cpl::User,
    exits_per_iteration: &[],
    default_iterations: 1000,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::Same,
    setup: Setup::NONE,
};

/// Xorshift64 steps per iteration.
pub const STEPS: u32 = 64;
/// The chain's start value.
pub const SEED: u64 = 0x9E37_79B9_7F4A_7C15;
/// The value after [`STEPS`] steps from [`SEED`].
pub const EXPECTED: u64 = xorshift(SEED, STEPS);

/// `steps` xorshift64 (13, 7, 17) steps from `x`: what the timed loop computes.
#[must_use]
pub const fn xorshift(mut x: u64, steps: u32) -> u64 {
    let mut i = 0;
    while i < steps {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        i += 1;
    }
    x
}

/// `iterations` timed loops, each checked; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    for _ in 0..iterations {
        let mut x = SEED;
        // SAFETY: register arithmetic only.
        let (before, after) = unsafe {
            crate::timed!(
                "mov ecx, {steps}",
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
                "jnz 2b";
                x = inout(reg) x,
                t = out(reg) _,
                steps = const STEPS,
                out("rcx") _,
                options(nomem, nostack),
            )
        };
        recorder.record(before, after);
        if x != EXPECTED {
            recorder.fail();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_computes_the_expected_value() {
        let mut r = Recorder::new();
        run(&mut r, 3, 0);
        let res = r.results();
        assert_eq!((res.iterations, res.failures), (3, 0));
        assert!(res.min_cycles > 0 && res.min_cycles <= res.max_cycles);
        assert_ne!(EXPECTED, SEED);
        // The reference, independently: the classic xorshift64 step.
        let mut x = SEED;
        for _ in 0..STEPS {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        assert_eq!(x, EXPECTED);
    }
}
