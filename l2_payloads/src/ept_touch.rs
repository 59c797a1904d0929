//! `ept_touch`: the cost of an EPT violation that L1 resolves, page by page.
//!
//! The data region ([`EPT_DATA_GPA`]) is mapped by L2's own paging, but EPT12 maps none of
//! it: L1 seeded a pool of scattered L1 pages and maps one at each first touch. Each
//! iteration times the first read of a fresh page (one EPT violation, reason 48, then the
//! read completes), then checks the page's two seeded words ([`ept_pattern`]): L1 wrote them
//! for exactly that L2 page, so a wrong value means a wrong translation. A second, untimed
//! pass reads every page again: it must cause no exit at all (the manifest counts one
//! violation per page, and the tests check the total).
//!
//! Iterations are pages, at most [`EPT_DATA_PAGES`] (1 GiB); pages beyond the first
//! [`EPT_POOL_PAGES`] alias pool pages in EPT12 and carry their pattern ([`ept_alias`]).

#[cfg(target_arch = "x86_64")]
use nestbench_abi::payload::EPT_DATA_GPA;
use nestbench_abi::payload::{Cpl, EPT_DATA_PAGES, EPT_PATTERN_OFFSETS, EPT_POOL_PAGES, ept_alias, ept_pattern};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::{Setup, setup};

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "ept_touch",
    description: "first read of N fresh pages at CPL 3: one EPT violation per page, L1 maps a seeded page",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::EptViolation, 1)],
    default_iterations: 64,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::None {
        reason: "single-level there is no EPT12: the first touch of a page takes no exit, so a twin would time a plain read",
    },
    setup: Setup::flags(setup::EPT_POOL | setup::EPT_ON_DEMAND),
};

/// The pages an EPT payload touches when asked for `iterations`.
#[must_use]
pub const fn pages(iterations: u64) -> u64 {
    if iterations < EPT_DATA_PAGES { iterations } else { EPT_DATA_PAGES }
}

/// The pages a payload that must not alias (`ept_ro`, `ept_fetch`: they write to or put
/// code in their pages) touches when asked for `iterations`.
#[must_use]
pub const fn pool_pages(iterations: u64) -> u64 {
    if iterations < EPT_POOL_PAGES { iterations } else { EPT_POOL_PAGES }
}

/// Whether the seeded word at `off` of data page `gpa` reads back as `value` (the pattern
/// of the pool page it aliases).
#[must_use]
pub const fn seeded(gpa: u64, off: u64, value: u64) -> bool {
    value == ept_pattern(ept_alias(gpa), off)
}

const _: () = assert!(EPT_PATTERN_OFFSETS[0] == 0 && EPT_PATTERN_OFFSETS[1] == 0xFF8);

/// Time the first read of each of `pages(iterations)` data pages and check both seeded
/// words, then read every page again (untimed) and check again. Shared by `ept_touch` and
/// `ept_fill` (the difference is whether EPT12 maps the pages before L2 runs).
#[cfg(target_arch = "x86_64")]
pub fn touch_pages(recorder: &mut Recorder, iterations: u64) {
    let n = pages(iterations);
    for i in 0..n {
        let gpa = EPT_DATA_GPA + i * 4096;
        let first: u64;
        // SAFETY: L1 maps the whole data region in L2's paging (present, writable, user)
        // and, on first touch at the latest, in EPT12 onto a seeded page; the read has no
        // other effect.
        let (before, after) = unsafe {
            crate::timed!(
                "mov {v}, qword ptr [{p}]";
                v = out(reg) first,
                p = in(reg) gpa,
                options(nostack, readonly),
            )
        };
        recorder.record(before, after);
        check(recorder, gpa, first);
    }
    for i in 0..n {
        check(recorder, EPT_DATA_GPA + i * 4096, read(EPT_DATA_GPA + i * 4096));
    }
}

#[cfg(target_arch = "x86_64")]
fn read(addr: u64) -> u64 {
    // SAFETY: as in `touch_pages`: a mapped, aligned data word.
    unsafe { (addr as *const u64).read_volatile() }
}

#[cfg(target_arch = "x86_64")]
fn check(recorder: &mut Recorder, gpa: u64, first: u64) {
    let last_off = EPT_PATTERN_OFFSETS[1];
    if !seeded(gpa, 0, first) || !seeded(gpa, last_off, read(gpa + last_off)) {
        recorder.fail();
    }
}

/// `ept_touch`'s body; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    touch_pages(recorder, iterations);
}
