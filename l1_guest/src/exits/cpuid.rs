//! CPUID exits (basic reason 10). CPUID in VMX non-root operation always exits (SDM 26.1.2,
//! "Instructions That Cause VM Exits Unconditionally"). L1 executes CPUID itself with L2's
//! EAX (leaf) and ECX (sub-leaf) and hands back what its CPU returned, as the instruction
//! would have: EAX, EBX, ECX, EDX zero-extended into RAX, RBX, RCX, RDX (SDM Vol. 2A,
//! CPUID: "the high 32 bits of RAX/RBX/RCX/RDX are cleared" in 64-bit mode). Then L2
//! continues after the CPUID. L1 passes its own view through unfiltered: L2 sees the VMX bit
//! and hypervisor leaves exactly as L1 does.
//!
//! On the `soft` engine this exit never reaches L1: the host KVM answers L2's CPUID in the
//! kernel (the `cpuid` payload is skipped there).

use super::{RunState, advance_rip};
use crate::exit::Exit;
use crate::vcpu::{GuestRegs, Vcpu};
use crate::x86::Cpuid;

/// Record the exit, answer the CPUID, skip it.
#[inline(always)]
pub fn handle<V: Vcpu>(vcpu: &mut V, run: &mut RunState) {
    let len = vcpu.insn_len();
    let rip = vcpu.rip();
    vcpu.record(run, Exit::Cpuid.report_reason(), len, 0, rip, 0, 0);
    emulate(vcpu.regs(), crate::x86::cpuid_count);
    advance_rip(vcpu, rip, len);
}

/// L2's registers after its CPUID, with `cpuid(leaf, subleaf)` executing the instruction:
/// leaf and sub-leaf from EAX and ECX (the upper halves of RAX and RCX are ignored), the
/// four results zero-extended; no other register changes.
#[inline(always)]
pub fn emulate(regs: &mut GuestRegs, cpuid: impl FnOnce(u32, u32) -> Cpuid) {
    let r = cpuid(regs.rax as u32, regs.rcx as u32);
    regs.rax = u64::from(r.eax);
    regs.rbx = u64::from(r.ebx);
    regs.rcx = u64::from(r.ecx);
    regs.rdx = u64::from(r.edx);
}

#[cfg(test)]
mod tests {
    use nestbench_abi::payload::L2_IMAGE_BASE;
    use nestbench_abi::vmcs::{Field32, FieldNatural};

    use super::*;
    use crate::vmx::entry::ExitFrame;
    use crate::vmx::fake::Recording;
    use crate::vmx::vcpu::VmxVcpu;

    #[test]
    fn emulate_passes_eax_ecx_and_zero_extends_the_results() {
        let mut regs = GuestRegs {
            rax: 0xFFFF_FFFF_0000_0007,
            rbx: 0x1111_1111_1111_1111,
            rcx: 0xAAAA_AAAA_0000_0001,
            rdx: 0x2222_2222_2222_2222,
            rsi: 0x33,
            r15: 0x44,
            ..GuestRegs::default()
        };
        let before = regs;
        emulate(&mut regs, |leaf, sub| {
            assert_eq!((leaf, sub), (7, 1), "the low halves of RAX and RCX");
            Cpuid { eax: 0x8000_0001, ebx: 2, ecx: 3, edx: 0xFFFF_FFFF }
        });
        assert_eq!((regs.rax, regs.rbx, regs.rcx, regs.rdx), (0x8000_0001, 2, 3, 0xFFFF_FFFF));
        assert_eq!(GuestRegs { rax: before.rax, rbx: before.rbx, rcx: before.rcx, rdx: before.rdx, ..regs }, before);
    }

    #[test]
    fn handler_answers_with_this_cpus_cpuid_records_and_advances_rip() {
        let mut b = Recording::default();
        b.fields.insert(Field32::VmExitInstructionLength.encoding(), 2);
        b.fields.insert(FieldNatural::GuestRip.encoding(), L2_IMAGE_BASE + 0x123);
        let mut run = RunState::new();
        let mut frame = ExitFrame::default();
        frame.regs = GuestRegs { rax: 0, rcx: 0, rbx: !0, rdx: !0, ..GuestRegs::default() };
        let mut vcpu = VmxVcpu::for_test(b, &mut frame);
        handle(&mut vcpu, &mut run);
        let b = vcpu.into_backend();
        let regs = frame.regs;
        let want = crate::x86::cpuid(0);
        assert_eq!(
            (regs.rax, regs.rbx, regs.rcx, regs.rdx),
            (u64::from(want.eax), u64::from(want.ebx), u64::from(want.ecx), u64::from(want.edx))
        );
        assert_eq!(b.writes, [(FieldNatural::GuestRip.encoding(), L2_IMAGE_BASE + 0x125)]);
        assert_eq!(b.accesses, 3, "two VMREADs and one VMWRITE");
        assert_eq!(run.report.exits_by_reason[10], 1);
        let rec = run.report.exit_records[0];
        assert_eq!((rec.reason, rec.insn_len, rec.rip_offset, rec.qualification), (10, 2, 0x123, 0));
    }
}
