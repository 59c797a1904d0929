//! VMCALL exits (basic reason 18). VMCALL in VMX non-root operation always exits (SDM
//! 26.1.2, "Instructions That Cause VM Exits Unconditionally"), at any CPL. L1 answers it
//! like a trivial hypercall: RAX = [`VMCALL_RESULT`], then L2 continues after the VMCALL.
//! The `vmcall` payload checks the value.
//!
//! Not on the `soft` engine: a VMCALL hangs the vCPU inside KVM_RUN under `kvm_pvm`, the KVM
//! of this project's development machines (docs/bochs-engine.md), so the `vmcall` payload is
//! skipped there.

use super::{RunState, advance_rip};
use crate::exit::Exit;
use crate::vcpu::Vcpu;

pub use nestbench_abi::payload::VMCALL_RESULT;

/// Record the exit, set RAX, skip the VMCALL.
#[inline(always)]
pub fn handle<V: Vcpu>(vcpu: &mut V, run: &mut RunState) {
    let len = vcpu.insn_len();
    let rip = vcpu.rip();
    vcpu.record(run, Exit::Hypercall.report_reason(), len, 0, rip, 0, 0);
    vcpu.regs().rax = VMCALL_RESULT;
    advance_rip(vcpu, rip, len);
}

#[cfg(test)]
mod tests {
    use nestbench_abi::payload::L2_IMAGE_BASE;
    use nestbench_abi::vmcs::{Field32, FieldNatural};

    use super::*;
    use crate::vcpu::GuestRegs;
    use crate::vmx::entry::ExitFrame;
    use crate::vmx::fake::Recording;
    use crate::vmx::vcpu::VmxVcpu;

    #[test]
    fn handler_sets_rax_records_and_advances_rip() {
        let mut b = Recording::default();
        b.fields.insert(Field32::VmExitInstructionLength.encoding(), 3);
        b.fields.insert(FieldNatural::GuestRip.encoding(), L2_IMAGE_BASE + 0x40);
        let mut run = RunState::new();
        let mut frame = ExitFrame::default();
        frame.regs = GuestRegs { rax: 0x1234, rcx: 5, rdx: 6, ..GuestRegs::default() };
        let mut vcpu = VmxVcpu::for_test(b, &mut frame);
        handle(&mut vcpu, &mut run);
        let b = vcpu.into_backend();
        let regs = frame.regs;
        assert_eq!(regs, GuestRegs { rax: VMCALL_RESULT, rcx: 5, rdx: 6, ..GuestRegs::default() });
        assert_eq!(b.writes, [(FieldNatural::GuestRip.encoding(), L2_IMAGE_BASE + 0x43)]);
        assert_eq!(b.accesses, 3, "two VMREADs and one VMWRITE");
        assert_eq!(run.report.exits_by_reason[18], 1);
        let rec = run.report.exit_records[0];
        assert_eq!((rec.reason, rec.insn_len, rec.rip_offset), (18, 3, 0x40));
    }
}
