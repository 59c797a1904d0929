//! VMX-preemption timer exits (basic reason 52) of the `preempt_timer` payload.
//!
//! SDM 26.5.1 "VMX-Preemption Timer": with the pin-based control "activate VMX-preemption
//! timer" (SDM 25.6.1, Table 25-5, bit 6) the timer counts down from the value VM entry
//! loaded (field 0x482E) at the TSC rate >> IA32_VMX_MISC[4:0], and a VM exit occurs when
//! it reaches zero; "if the timer is activated with a value of zero, a VM exit occurs before
//! any instruction is executed". The exit qualification is 0 (SDM 28.2.1) and RIP is where
//! L2 was preempted: L1 records the exit and resumes L2 there, with the timer re-armed
//! (VM entry reloads it from the field, SDM 27.7.4) until the run's exit count is reached,
//! then with the control cleared so that the payload can finish.

use nestbench_abi::controls::{exit, pin};
use nestbench_abi::payload::{PREEMPT_DEFAULT_VALUE, PREEMPT_MAILBOX_OFFSET, PREEMPT_VALUE_GIVEN};
use nestbench_abi::vmcs::{Field32, FieldNatural};

use super::{RunState, must};
use crate::exit::Exit;
use crate::vmx::caps::VmxCaps;
use crate::vmx::{Vmcs, VmxBackend, VmxFail};

/// The timer of the current run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerRun {
    /// Timer exits to take before the control is cleared.
    pub target: u64,
    /// The value each arm loads.
    pub value: u32,
    /// Timer exits so far.
    pub exits: u64,
    /// Whether "save VMX-preemption timer value" is set.
    pub save: bool,
}

/// The timer value of payload argument `arg` (the low 32 bits with [`PREEMPT_VALUE_GIVEN`]).
#[must_use]
pub const fn value_of(arg: u64) -> u32 {
    if arg & PREEMPT_VALUE_GIVEN != 0 { arg as u32 } else { PREEMPT_DEFAULT_VALUE }
}

/// Why the timer cannot be armed.
#[derive(Clone, Copy, Debug)]
pub enum ArmError {
    /// IA32_VMX_(TRUE_)PINBASED_CTLS does not allow "activate VMX-preemption timer".
    NotAllowed,
    /// A VMREAD/VMWRITE failed.
    Vmx(VmxFail),
}

/// Activate the timer in the current VMCS for `target` exits of `value` each, and "save
/// VMX-preemption timer value" where allowed (SDM 25.7.1; with it the field holds the
/// remaining value after each exit, which the handler overwrites anyway). The timer's run
/// goes into [`RunState::timer`].
pub fn arm<B: VmxBackend>(b: &mut B, caps: &VmxCaps, target: u64, value: u32) -> Result<TimerRun, ArmError> {
    if caps.pin.may_be_one & pin::PREEMPTION_TIMER == 0 {
        return Err(ArmError::NotAllowed);
    }
    let pins = b.read32(Field32::PinBasedVmExecControl).map_err(ArmError::Vmx)?;
    b.write32(Field32::PinBasedVmExecControl, pins | pin::PREEMPTION_TIMER).map_err(ArmError::Vmx)?;
    let save = caps.exit.may_be_one & exit::SAVE_PREEMPTION_TIMER != 0;
    if save {
        let e = b.read32(Field32::VmExitControls).map_err(ArmError::Vmx)?;
        b.write32(Field32::VmExitControls, e | exit::SAVE_PREEMPTION_TIMER).map_err(ArmError::Vmx)?;
    }
    b.write32(Field32::VmxPreemptionTimerValue, value).map_err(ArmError::Vmx)?;
    Ok(TimerRun { target, value, exits: 0, save })
}

/// Record the exit, tell the payload, re-arm or stop the timer. RIP is not advanced: no
/// instruction caused the exit.
pub fn handle<B: VmxBackend>(b: &mut B, run: &mut RunState) {
    let rip = must(b.read_nat(FieldNatural::GuestRip), "VMREAD guest RIP");
    let qualification = must(b.read_nat(FieldNatural::ExitQualification), "VMREAD exit qualification");
    let len = must(b.read32(Field32::VmExitInstructionLength), "VMREAD instruction length");
    run.record(Exit::PreemptionTimer.report_reason(), len, qualification, rip, 0, 0);
    let results_pa = run.results_pa;
    let t = &mut run.timer;
    t.exits += 1;
    // SDM 28.3.4: with "save VMX-preemption timer value" the exit stores the timer's value,
    // which is 0 when the timer itself caused the exit.
    if t.save {
        let saved = must(b.read32(Field32::VmxPreemptionTimerValue), "VMREAD preemption timer value");
        if saved != 0 {
            crate::println!("l1: preemption-timer exit {} saved timer value {saved}, not 0", t.exits);
            crate::hypercall::exit(super::EXIT_PAYLOAD_FAILED);
        }
    }
    // SAFETY: results_pa is the L1 frame behind L2's results page (a whole page, identity
    // mapped in L1); the mailbox word lies inside it, past PayloadResults.
    unsafe { ((results_pa + PREEMPT_MAILBOX_OFFSET) as *mut u64).write_volatile(t.exits) };
    if t.exits >= t.target {
        let pins = must(b.read32(Field32::PinBasedVmExecControl), "VMREAD pin-based controls");
        let e = must(b.read32(Field32::VmExitControls), "VMREAD exit controls");
        // SDM 27.2.1.2: "save VMX-preemption timer value" requires the timer control.
        must(b.write32(Field32::VmExitControls, e & !exit::SAVE_PREEMPTION_TIMER), "VMWRITE exit controls");
        must(b.write32(Field32::PinBasedVmExecControl, pins & !pin::PREEMPTION_TIMER), "VMWRITE pin-based controls");
    } else {
        must(b.write32(Field32::VmxPreemptionTimerValue, t.value), "VMWRITE preemption timer value");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_gives_the_value_only_with_the_flag() {
        assert_eq!(value_of(0), PREEMPT_DEFAULT_VALUE);
        assert_eq!(value_of(PREEMPT_VALUE_GIVEN), 0);
        assert_eq!(value_of(PREEMPT_VALUE_GIVEN | 77), 77);
        assert_eq!(value_of(77), PREEMPT_DEFAULT_VALUE);
    }
}
