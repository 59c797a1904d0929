//! `ept_fill`: the cost of L0's lazy EPT-shadow fill, which L1 never sees.
//!
//! L1 maps the whole pool in EPT12 before the launch, so on hardware (and Bochs) the reads
//! cause no VM exit at all. The `soft` engine still maps L2 memory into VM2 lazily: each
//! first touch is one L0-only exit (a memslot fill), counted by L0 and never reflected. The
//! same body as [`crate::ept_touch`]: time each page's first read, check its seeded words,
//! then read everything again.

use nestbench_abi::payload::Cpl;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::{Setup, setup};

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "ept_fill",
    description: "first read of N pages EPT12 already maps, CPL 3: no VM exit (L0-only fills on soft)",
    cpl: Cpl::User,
    exits_per_iteration: &[],
    default_iterations: 64,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::None { reason: "single-level there is no EPT12 to fill: a twin would time plain reads" },
    setup: Setup::flags(setup::EPT_POOL),
};

/// `ept_fill`'s body; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    crate::ept_touch::touch_pages(recorder, iterations);
}
