//! Control-register accesses (basic reason 28) of the `cr3` payload: with "CR3-load exiting"
//! and "CR3-store exiting" (SDM 25.6.2, Table 25-6, bits 15 and 16; SDM 26.1.3: MOV to CR3
//! exits unless its operand is one of the first CR3-target-count CR3-target values, and the
//! count is 0 here; MOV from CR3 exits), L1 emulates L2's MOV CR3 on L2's guest-state CR3:
//! MOV from CR3 writes GUEST_CR3 into the register, MOV to CR3 writes the register into
//! GUEST_CR3 (VM entry then loads it, SDM 27.3.2.1; with VPID off every entry flushes L2's
//! TLB, 28.3.3.3). The qualification (SDM 28.2.1, Table 28-3) names the access type and the
//! register; RIP advances by the VM-exit instruction length. Any other control register,
//! access type (CLTS, LMSW) or RSP as the register is not a `cr3` exit: [`super::unexpected`].

use nestbench_abi::controls::proc1;
use nestbench_abi::vmcs::Field32;

use super::{RunState, advance_rip};
use crate::exit::{ControlRegister, Exit};
use crate::vcpu::Vcpu;
use crate::vmx::caps::VmxCaps;
use crate::vmx::{Vmcs, VmxBackend, VmxFail};

/// Both CR3 controls.
const CR3_EXITING: u32 = proc1::CR3_LOAD_EXITING | proc1::CR3_STORE_EXITING;

/// Why the CR3 controls cannot be set.
#[derive(Clone, Copy, Debug)]
pub enum ArmError {
    /// IA32_VMX_(TRUE_)PROCBASED_CTLS does not allow them to be 1.
    NotAllowed,
    /// A VMREAD/VMWRITE failed.
    Vmx(VmxFail),
}

/// Set "CR3-load exiting" and "CR3-store exiting" (the CR3-target count stays 0).
pub fn arm<B: VmxBackend>(b: &mut B, caps: &VmxCaps) -> Result<(), ArmError> {
    if caps.proc1.may_be_one & CR3_EXITING != CR3_EXITING {
        return Err(ArmError::NotAllowed);
    }
    let p = b.read32(Field32::PrimaryProcBasedVmExecControl).map_err(ArmError::Vmx)?;
    b.write32(Field32::PrimaryProcBasedVmExecControl, p | CR3_EXITING).map_err(ArmError::Vmx)
}

/// Record the exit, emulate the MOV on GUEST_CR3, skip it.
#[inline(always)]
pub fn handle<V: Vcpu>(vcpu: &mut V, run: &mut RunState, access: ControlRegister) {
    let len = vcpu.insn_len();
    let rip = vcpu.rip();
    vcpu.record(run, Exit::ControlRegister(access).report_reason(), len, access.qualification(), rip, 0, 0);
    if access.cr != 3 {
        super::unexpected::handle(vcpu, Exit::ControlRegister(access).report_reason());
    }
    let Some(&mut value) = vcpu.regs().gpr_mut(access.gpr) else {
        super::unexpected::handle(vcpu, Exit::ControlRegister(access).report_reason());
    };
    if access.load {
        vcpu.set_guest_cr3(value);
    } else {
        let cr3 = vcpu.guest_cr3();
        if let Some(reg) = vcpu.regs().gpr_mut(access.gpr) {
            *reg = cr3;
        }
    }
    advance_rip(vcpu, rip, len);
}
