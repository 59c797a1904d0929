//! `vmrun_bad_efer`: a VMRUN of a VMCB with EFER.SVME clear in the save area (APM Vol. 2, 15.5.1: "EFER.SVME is zero"): one
//! VMEXIT_INVALID ([`crate::vmrun_bad`]).

use nestbench_abi::payload::setup;

use crate::Manifest;
pub use crate::vmrun_bad::run;

/// The manifest.
pub const MANIFEST: Manifest = crate::vmrun_bad::manifest(
    "vmrun_bad_efer",
    "VMRUN of a VMCB with EFER.SVME clear in the save area: one VMEXIT_INVALID, L2 never runs",
    setup::VMRUN_BAD_EFER,
);
