//! `ept_fetch`: L2 calls code on a page EPT12 does not map yet (docs/kvm-exits.md row 8).
//!
//! L1 seeds every data page with a function at [`EPT_FETCH_CODE_OFFSET`] (`mov eax, imm32;
//! ret`, returning [`ept_fetch_value`] of its page). With `arg` 0 EPT12 maps none of them:
//! each iteration times a `call` into a fresh page, an EPT violation on the instruction
//! fetch (reason 48, SDM Table 28-7 bit 2, RIP at the called function), which L1 resolves
//! by mapping the page; the call then completes and returns the page's value. With `arg`
//! 1 L1 maps the pages before the launch: no VM exit on hardware, and on the soft engine
//! one L0-only fill per page (the emulation failure of the fetch, handled by L0). A second
//! pass calls every function again without exits.

use nestbench_abi::payload::Cpl;
#[cfg(target_arch = "x86_64")]
use nestbench_abi::payload::{EPT_DATA_GPA, EPT_FETCH_CODE_OFFSET, ept_fetch_value};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::{PoolPages, Setup, setup};

/// The manifest (for `arg` 0).
pub const MANIFEST: Manifest = Manifest {
    name: "ept_fetch",
    description: "call code on N fresh pages at CPL 3: one EPT violation (fetch) per page, L1 maps it",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::EptViolation, 1)],
    default_iterations: 64,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::None { reason: "its code pages exist only through EPT12: single-level the first call faults" },
    setup: Setup {
        flags: setup::EPT_POOL | setup::EPT_ON_DEMAND_IF_ARG_0 | setup::EPT_FETCH_CODE,
        pool_pages: PoolPages::IterationsUpToPool,
    },
};

#[cfg(target_arch = "x86_64")]
fn call(recorder: &mut Recorder, page: u64, timed: bool) {
    let gpa = EPT_DATA_GPA + page * 4096;
    let f = gpa + EPT_FETCH_CODE_OFFSET;
    let got: u32;
    // SAFETY: L1 put `mov eax, imm32; ret` at `f`, on a page L2's paging maps (user,
    // executable) and EPT12 maps (now or at the first fetch); it clobbers only EAX and
    // returns on the stack the call used.
    let (before, after) = unsafe { crate::timed!("call {f}", "mov {g:e}, eax"; f = in(reg) f, g = out(reg) got) };
    if timed {
        recorder.record(before, after);
    }
    if got != ept_fetch_value(gpa) {
        recorder.fail();
    }
}

/// `ept_fetch`'s body: iterations are pages, at most `EPT_POOL_PAGES` (no aliasing).
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    let n = crate::ept_touch::pool_pages(iterations);
    for i in 0..n {
        call(recorder, i, true);
    }
    for i in 0..n {
        call(recorder, i, false);
    }
}
