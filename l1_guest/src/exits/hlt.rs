//! HLT exits (basic reason 12; with "HLT exiting", SDM 26.1.3: HLT at CPL 0 exits before it
//! executes). Recorded, then L2 continues after the HLT.

use nestbench_abi::vmcs::{Field32, FieldNatural};

use super::{RunState, advance_rip, must};
use crate::vmx::{Vmcs, VmxBackend};

/// Record the exit and skip the HLT.
#[inline(always)]
pub fn handle<B: VmxBackend>(b: &mut B, run: &mut RunState, reason: u32) {
    let len = must(b.read32(Field32::VmExitInstructionLength), "VMREAD instruction length");
    let rip = must(b.read_nat(FieldNatural::GuestRip), "VMREAD guest RIP");
    run.record(reason, len, 0, rip, 0, 0);
    advance_rip(b, rip, len);
}
