//! WRMSR exits (basic reason 32). WRMSR (SDM Vol. 2B): "Writes the contents of registers
//! EDX:EAX into the 64-bit model specific register (MSR) specified in the ECX register. ...
//! the high-order 32 bits of RCX, RAX, and RDX are ignored." L1 records the value in its
//! emulated MSR ([`super::rdmsr::EmulatedMsrs`], which checks the `wrmsr` payload's
//! sequence) and advances RIP by the VM-exit instruction length (SDM 28.2.4).

use super::{RunState, advance_rip};
use crate::exit::Exit;
use crate::vcpu::Vcpu;

/// Record the exit and `value`, skip the WRMSR. An MSR L1 does not emulate is an unexpected
/// exit. The record's qualification is 0, as RDMSR's ([`super::rdmsr::handle`]).
#[inline(always)]
pub fn handle<V: Vcpu>(vcpu: &mut V, run: &mut RunState, msr: u32, value: u64) {
    let reason = Exit::MsrWrite { msr, value }.report_reason();
    let len = vcpu.insn_len();
    let rip = vcpu.rip();
    vcpu.record(run, reason, len, 0, rip, 0, 0);
    let mismatches = run.msrs.gs_base_mismatches;
    if !run.msrs.write(msr, value) {
        crate::println!("l1: WRMSR of MSR {msr:#x}, which L1 does not intercept");
        super::unexpected::handle(vcpu, reason)
    }
    if mismatches == 0 && run.msrs.gs_base_mismatches != 0 {
        first_mismatch(run.msrs.gs_base_writes - 1, value);
    }
    advance_rip(vcpu, rip, len);
}

#[cold]
fn first_mismatch(n: u64, value: u64) {
    crate::println!(
        "l1: WRMSR: write {n} of IA32_KERNEL_GS_BASE is {value:#x}, expected {:#x}",
        super::rdmsr::WRMSR_FIRST_VALUE.wrapping_add(n)
    );
}

#[cfg(test)]
mod tests {
    use nestbench_abi::payload::L2_IMAGE_BASE;
    use nestbench_abi::vmcs::{Field32, FieldNatural};
    use nestbench_abi::vmx::ExitReason;

    use super::super::rdmsr::{IA32_KERNEL_GS_BASE, WRMSR_FIRST_VALUE};
    use super::*;
    use crate::vcpu::GuestRegs;
    use crate::vmx::entry::ExitFrame;
    use crate::vmx::fake::Recording;
    use crate::vmx::vcpu::VmxVcpu;

    #[test]
    fn handler_records_edx_eax_and_advances_rip() {
        let mut b = Recording::default();
        b.fields.insert(Field32::VmExitInstructionLength.encoding(), 2);
        b.fields.insert(FieldNatural::GuestRip.encoding(), L2_IMAGE_BASE + 0x50);
        let mut run = RunState::new();
        let v = WRMSR_FIRST_VALUE;
        let mut frame = ExitFrame::default();
        frame.regs = GuestRegs {
            rax: 0xDEAD_0000_0000_0000 | (v & 0xFFFF_FFFF),
            rdx: 0xBEEF_0000_0000_0000 | v >> 32,
            rcx: u64::from(IA32_KERNEL_GS_BASE),
            ..GuestRegs::default()
        };
        let mut vcpu = VmxVcpu::for_test(b, &mut frame);
        let Exit::MsrWrite { msr, value } = vcpu.decode_for_test(ExitReason::Wrmsr) else { panic!("not a WRMSR") };
        handle(&mut vcpu, &mut run, msr, value);
        let b = vcpu.into_backend();
        assert_eq!(run.msrs.read(IA32_KERNEL_GS_BASE), Some(v), "upper halves of RAX/RDX ignored");
        assert_eq!((run.msrs.gs_base_writes, run.msrs.gs_base_mismatches), (1, 0));
        assert_eq!(b.writes, [(FieldNatural::GuestRip.encoding(), L2_IMAGE_BASE + 0x52)]);
        assert_eq!(run.report.exits_by_reason[32], 1);
        let rec = run.report.exit_records[0];
        assert_eq!((rec.reason, rec.insn_len, rec.rip_offset), (32, 2, 0x50));
    }
}
