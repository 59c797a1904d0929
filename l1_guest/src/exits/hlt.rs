//! HLT exits (basic reason 12; with "HLT exiting", SDM 26.1.3: HLT at CPL 0 exits before it
//! executes). Recorded, then L2 continues after the HLT.

use super::{RunState, advance_rip};
use crate::exit::Exit;
use crate::vcpu::Vcpu;

/// Record the exit and skip the HLT.
#[inline(always)]
pub fn handle<V: Vcpu>(vcpu: &mut V, run: &mut RunState) {
    let len = vcpu.insn_len();
    let rip = vcpu.rip();
    vcpu.record(run, Exit::Hlt.report_reason(), len, 0, rip, 0, 0);
    advance_rip(vcpu, rip, len);
}
