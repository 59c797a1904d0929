//! The runtime every payload shares: entry, per-iteration timing, the results page and the
//! final `out DONE_PORT`.
//!
//! * **Entry** ([`payload_main!`](crate::payload_main)): L1 enters `_start` (the image base)
//!   at the payload's CPL with RDI = iterations, RSI = argument and RSP set below
//!   [`L2_STACK_TOP`](nestbench_abi::payload::L2_STACK_TOP). `_start` aligns the stack and
//!   calls [`run`] with the payload's `run` function.
//! * **Timing** ([`timed!`](crate::timed)): kvm-unit-tests style, `lfence; rdtsc` before and
//!   after the measured instruction(s), never CPUID (it exits). The delta includes the
//!   shift/or that builds the first 64-bit TSC value and any register move the measured
//!   instruction needs (one or two cycles, the same in every layer and level).
//! * **Results** ([`Recorder`]): per-iteration min/max/total and the log2 histogram
//!   ([`bucket`]), kept on the stack while the payload runs (so the measured loop touches no
//!   page it has not touched before) and written once to the
//!   [`PayloadResults`] page at [`L2_RESULTS_GPA`], magic last.
//! * **Done** ([`done`]): `out DONE_PORT, eax` with EAX = [`STATUS_OK`] or
//!   [`STATUS_INTERNAL_ERROR`]; L1 ends the payload there. A panic is an internal error.

#[cfg(target_arch = "x86_64")]
use nestbench_abi::payload::{DONE_PORT, L2_RESULTS_GPA};
use nestbench_abi::payload::{HIST_BUCKETS, PayloadResults, RESULTS_MAGIC, bucket};

/// DONE_PORT status: the payload ran (its own checks are in `failures`).
pub const STATUS_OK: u32 = 0;
/// DONE_PORT status: the payload itself went wrong (a panic, a TSC that went backwards, a
/// cycle total that overflowed); its results are not to be trusted.
pub const STATUS_INTERNAL_ERROR: u32 = 1;

/// The 64-bit TSC in RAX, LFENCE-serialised: `lfence; rdtsc`, then EDX:EAX into RAX.
/// Clobbers RAX and RDX. (A string literal for `asm!`/`global_asm!` templates.)
#[doc(hidden)]
#[macro_export]
macro_rules! tsc_to_rax {
    () => {
        "lfence\nrdtsc\nshl rdx, 32\nor rax, rdx"
    };
}

/// Time one iteration of assembly: `lfence; rdtsc; <template>; lfence; rdtsc`, evaluating to
/// the TSC values `(before, after)`.
///
/// The template runs with RAX and RDX holding the first TSC value (it may overwrite both:
/// set EAX/DX there if the instruction needs them) and must leave the second `rdtsc` free
/// to overwrite them; operands follow the `;` (plus `clobber_abi`/`options` if needed) and
/// cannot use RAX or RDX. Must be used inside `unsafe`, like `asm!`.
#[macro_export]
macro_rules! timed {
    ($($template:expr),+ ; $($operands:tt)*) => {{
        let before: u64;
        let after: u64;
        ::core::arch::asm!(
            $crate::tsc_to_rax!(),
            "mov {before}, rax",
            $($template,)+
            $crate::tsc_to_rax!(),
            before = out(reg) before,
            out("rax") after,
            out("rdx") _,
            $($operands)*
        );
        (before, after)
    }};
}

/// Per-iteration statistics, as the results page wants them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorder {
    iterations: u64,
    total: u64,
    min: u64,
    max: u64,
    failures: u64,
    hist: [u64; HIST_BUCKETS],
    internal_error: bool,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// No iterations yet.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            iterations: 0,
            total: 0,
            min: u64::MAX,
            max: 0,
            failures: 0,
            hist: [0; HIST_BUCKETS],
            internal_error: false,
        }
    }

    /// One iteration timed from TSC `before` to TSC `after`. A TSC that went backwards (or a
    /// total that overflows) is an internal error and the iteration is not counted.
    pub fn record(&mut self, before: u64, after: u64) {
        let Some(delta) = after.checked_sub(before) else {
            self.internal_error = true;
            return;
        };
        let Some(total) = self.total.checked_add(delta) else {
            self.internal_error = true;
            return;
        };
        self.total = total;
        self.iterations += 1;
        self.min = self.min.min(delta);
        self.max = self.max.max(delta);
        self.hist[bucket(delta)] += 1;
    }

    /// A payload-specific check failed (e.g. `inl` read a value other than L1's).
    pub fn fail(&mut self) {
        self.failures += 1;
    }

    /// The results page's contents (min is 0 when no iteration was recorded).
    #[must_use]
    pub const fn results(&self) -> PayloadResults {
        PayloadResults {
            magic: RESULTS_MAGIC,
            iterations: self.iterations,
            total_cycles: self.total,
            min_cycles: if self.iterations == 0 { 0 } else { self.min },
            max_cycles: self.max,
            failures: self.failures,
            hist: self.hist,
        }
    }

    /// The DONE_PORT status.
    #[must_use]
    pub const fn status(&self) -> u32 {
        if self.internal_error { STATUS_INTERNAL_ERROR } else { STATUS_OK }
    }
}

/// Run a payload and end it: `payload(recorder, iterations, arg)`, then the results page,
/// then [`done`]. Called by `_start` (see [`payload_main!`](crate::payload_main)).
#[cfg(target_arch = "x86_64")]
pub fn run(iterations: u64, arg: u64, payload: impl FnOnce(&mut Recorder, u64, u64)) -> ! {
    let mut recorder = Recorder::new();
    payload(&mut recorder, iterations, arg);
    // SAFETY: only bare-metal payloads call `run` (from `_start`), and L1 maps the results
    // page at L2_RESULTS_GPA, writable, in every payload's address space
    // (nestbench_abi::payload); nothing else of the payload lives there.
    unsafe { publish(&recorder.results(), L2_RESULTS_GPA as *mut PayloadResults) };
    done(recorder.status())
}

/// Write `results` to `page`, the magic last (so a page with the magic is complete).
///
/// # Safety
/// `page` must be valid for writes of a [`PayloadResults`] and aligned.
#[cfg(target_arch = "x86_64")]
pub unsafe fn publish(results: &PayloadResults, page: *mut PayloadResults) {
    let incomplete = PayloadResults { magic: 0, ..*results };
    // SAFETY: the caller guarantees `page` is valid and aligned; volatile writes are not
    // reordered with each other, so the magic lands after everything else.
    unsafe {
        page.write_volatile(incomplete);
        (&raw mut (*page).magic).write_volatile(results.magic);
    }
}

/// `out DONE_PORT, eax` with EAX = `status`: the payload's last exit. L1 never resumes it; if
/// it did, `ud2` faults rather than run off the end.
#[cfg(target_arch = "x86_64")]
pub fn done(status: u32) -> ! {
    // SAFETY: a port write that L1 intercepts (it ends the payload); no memory is touched.
    unsafe {
        core::arch::asm!(
            "out {port}, eax",
            "ud2",
            port = const DONE_PORT,
            in("eax") status,
            options(noreturn, nomem, nostack),
        )
    }
}

/// The bare-metal image of payload module `$payload`: its `_start` (the entry, first in
/// `.text.start`), which aligns the stack and calls [`run`] with `$payload::run`, RDI
/// (iterations) and RSI (argument) untouched.
#[macro_export]
macro_rules! payload_main {
    ($payload:ident) => {
        ::core::arch::global_asm!(
            ".section .text.start, \"ax\"",
            ".global _start",
            ".type _start, @function",
            "_start:",
            "and rsp, -16",
            "xor ebp, ebp",
            "call {main}",
            "ud2",
            ".size _start, . - _start",
            main = sym payload_entry,
        );

        extern "sysv64" fn payload_entry(iterations: u64, arg: u64) -> ! {
            $crate::rt::run(iterations, arg, $crate::$payload::run)
        }
    };
}

/// A panic in a payload is an internal error: report it and stop.
#[cfg(all(feature = "bare-metal", target_os = "none"))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    done(STATUS_INTERNAL_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_keeps_min_max_total_and_histogram() {
        let mut r = Recorder::new();
        assert_eq!(r.results().min_cycles, 0, "no iterations: min is 0, not u64::MAX");
        r.record(100, 110);
        r.record(1000, 1003);
        r.record(5, 5 + 4096);
        r.fail();
        let res = r.results();
        assert_eq!(res.magic, RESULTS_MAGIC);
        assert_eq!((res.iterations, res.total_cycles, res.min_cycles, res.max_cycles), (3, 10 + 3 + 4096, 3, 4096));
        assert_eq!(res.failures, 1);
        assert_eq!((res.hist[3], res.hist[1], res.hist[12]), (1, 1, 1));
        assert_eq!(res.hist.iter().sum::<u64>(), 3);
        assert_eq!(r.status(), STATUS_OK);
    }

    #[test]
    fn a_backwards_tsc_or_overflow_is_an_internal_error() {
        let mut r = Recorder::new();
        r.record(10, 9);
        assert_eq!((r.status(), r.results().iterations), (STATUS_INTERNAL_ERROR, 0));
        let mut r = Recorder::new();
        r.record(0, u64::MAX);
        r.record(0, 1);
        assert_eq!((r.status(), r.results().iterations), (STATUS_INTERNAL_ERROR, 1));
    }

    #[test]
    fn publish_writes_everything_magic_included() {
        let mut r = Recorder::new();
        r.record(1, 2);
        let mut page = PayloadResults {
            magic: 0,
            iterations: 0,
            total_cycles: 0,
            min_cycles: 0,
            max_cycles: 0,
            failures: 0,
            hist: [7; HIST_BUCKETS],
        };
        // SAFETY: `page` is a live, aligned local.
        unsafe { publish(&r.results(), &raw mut page) };
        assert_eq!(page, r.results());
    }

    #[test]
    fn timed_reads_an_increasing_tsc() {
        // SAFETY: only TSC reads and a register move.
        let (before, after) = unsafe { crate::timed!("mov {x}, 1"; x = out(reg) _) };
        assert!(after >= before);
    }
}
