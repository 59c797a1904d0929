//! Interrupt-window exits (basic reason 7) of the `irq_window` payload.
//!
//! SDM 25.6.2 (Table 25-6, bit 2) "interrupt-window exiting": "If this control is 1, a VM
//! exit occurs at the beginning of any instruction if RFLAGS.IF = 1 and there are no other
//! blocking of interrupts"; SDM 26.7.5: with the control set at VM entry, "a VM exit occurs
//! before execution of any instruction if RFLAGS.IF = 1 and there is no blocking of events by
//! STI or by MOV SS". The exit qualification is 0 (SDM 28.2.1) and RIP is L2's: L1 records
//! the exit and resumes L2 unchanged, with the control still set (so the next entry exits at
//! once again) until the run's exit count is reached; then it clears the control and L2's
//! RFLAGS.IF again (L2 never executes with IF = 1: no interrupt can reach its IDT-less
//! address space).

use nestbench_abi::controls::proc1;
use nestbench_abi::vmcs::{Field32, FieldNatural};

use super::{RunState, must};
use crate::exit::Exit;
use crate::vmx::caps::VmxCaps;
use crate::vmx::{Vmcs, VmxBackend, VmxFail};

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// The run's interrupt-window exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowRun {
    /// Exits to take before the control is cleared.
    pub target: u64,
    /// Exits so far.
    pub exits: u64,
}

/// Why the window cannot be requested.
#[derive(Clone, Copy, Debug)]
pub enum ArmError {
    /// IA32_VMX_(TRUE_)PROCBASED_CTLS does not allow "interrupt-window exiting".
    NotAllowed,
    /// A VMREAD/VMWRITE failed.
    Vmx(VmxFail),
}

/// Set "interrupt-window exiting" and L2's RFLAGS.IF for `target` exits (none for 0). The
/// run goes into [`RunState::window`].
pub fn arm<B: VmxBackend>(b: &mut B, caps: &VmxCaps, target: u64) -> Result<WindowRun, ArmError> {
    if caps.proc1.may_be_one & proc1::INTERRUPT_WINDOW_EXITING == 0 {
        return Err(ArmError::NotAllowed);
    }
    let run = WindowRun { target, exits: 0 };
    if target == 0 {
        return Ok(run);
    }
    let p = b.read32(Field32::PrimaryProcBasedVmExecControl).map_err(ArmError::Vmx)?;
    b.write32(Field32::PrimaryProcBasedVmExecControl, p | proc1::INTERRUPT_WINDOW_EXITING).map_err(ArmError::Vmx)?;
    let f = b.read_nat(FieldNatural::GuestRflags).map_err(ArmError::Vmx)?;
    b.write_nat(FieldNatural::GuestRflags, f | RFLAGS_IF).map_err(ArmError::Vmx)?;
    Ok(run)
}

/// Record the exit; after the last one clear the control and RFLAGS.IF. RIP is not
/// advanced: no instruction caused the exit.
pub fn handle<B: VmxBackend>(b: &mut B, run: &mut RunState) {
    let rip = must(b.read_nat(FieldNatural::GuestRip), "VMREAD guest RIP");
    let qualification = must(b.read_nat(FieldNatural::ExitQualification), "VMREAD exit qualification");
    let len = must(b.read32(Field32::VmExitInstructionLength), "VMREAD instruction length");
    run.record(Exit::InterruptWindow.report_reason(), len, qualification, rip, 0, 0);
    let w = &mut run.window;
    w.exits += 1;
    if w.exits >= w.target {
        let p = must(b.read32(Field32::PrimaryProcBasedVmExecControl), "VMREAD primary controls");
        let p = p & !proc1::INTERRUPT_WINDOW_EXITING;
        must(b.write32(Field32::PrimaryProcBasedVmExecControl, p), "VMWRITE primary controls");
        let f = must(b.read_nat(FieldNatural::GuestRflags), "VMREAD guest RFLAGS");
        must(b.write_nat(FieldNatural::GuestRflags, f & !RFLAGS_IF), "VMWRITE guest RFLAGS");
    }
}
