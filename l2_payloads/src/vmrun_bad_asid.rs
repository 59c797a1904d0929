//! `vmrun_bad_asid`: a VMRUN of a VMCB with guest ASID 0 (APM Vol. 2, 15.5.1: "ASID is equal to zero"): one
//! VMEXIT_INVALID ([`crate::vmrun_bad`]).

use nestbench_abi::payload::setup;

use crate::Manifest;
pub use crate::vmrun_bad::run;

/// The manifest.
pub const MANIFEST: Manifest = crate::vmrun_bad::manifest(
    "vmrun_bad_asid",
    "VMRUN of a VMCB with guest ASID 0: one VMEXIT_INVALID, L2 never runs",
    setup::VMRUN_BAD_ASID,
);
