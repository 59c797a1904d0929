//! WRMSR exits (basic reason 32). WRMSR (SDM Vol. 2B): "Writes the contents of registers
//! EDX:EAX into the 64-bit model specific register (MSR) specified in the ECX register. ...
//! the high-order 32 bits of RCX, RAX, and RDX are ignored." L1 records the value in its
//! emulated MSR ([`super::rdmsr::EmulatedMsrs`], which checks the `wrmsr` payload's
//! sequence) and advances RIP by the VM-exit instruction length (SDM 28.2.4).

use nestbench_abi::vmcs::{Field32, FieldNatural};

use super::{RunState, advance_rip, must};
use crate::vmx::entry::GuestRegs;
use crate::vmx::{Vmcs, VmxBackend};

/// Record the exit and the value, skip the WRMSR. An MSR L1 does not emulate is an
/// unexpected exit.
#[inline(always)]
pub fn handle<B: VmxBackend>(b: &mut B, regs: &GuestRegs, run: &mut RunState, reason: u32) {
    let len = must(b.read32(Field32::VmExitInstructionLength), "VMREAD instruction length");
    let rip = must(b.read_nat(FieldNatural::GuestRip), "VMREAD guest RIP");
    let q = must(b.read_nat(FieldNatural::ExitQualification), "VMREAD qualification");
    run.record(reason, len, q, rip, 0, 0);
    let value = (regs.rdx & 0xFFFF_FFFF) << 32 | regs.rax & 0xFFFF_FFFF;
    let mismatches = run.msrs.gs_base_mismatches;
    if !run.msrs.write(regs.rcx as u32, value) {
        crate::println!("l1: WRMSR of MSR {:#x}, which L1 does not intercept", regs.rcx as u32);
        super::unexpected::handle(b, reason)
    }
    if mismatches == 0 && run.msrs.gs_base_mismatches != 0 {
        first_mismatch(run.msrs.gs_base_writes - 1, value);
    }
    advance_rip(b, rip, len);
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
    use nestbench_abi::vmx::ExitReason;

    use super::super::rdmsr::{IA32_KERNEL_GS_BASE, WRMSR_FIRST_VALUE};
    use super::*;
    use crate::vmx::fake::Recording;

    #[test]
    fn handler_records_edx_eax_and_advances_rip() {
        let mut b = Recording::default();
        b.fields.insert(Field32::VmExitInstructionLength.encoding(), 2);
        b.fields.insert(FieldNatural::GuestRip.encoding(), L2_IMAGE_BASE + 0x50);
        let mut run = RunState::new();
        let v = WRMSR_FIRST_VALUE;
        let regs = GuestRegs {
            rax: 0xDEAD_0000_0000_0000 | (v & 0xFFFF_FFFF),
            rdx: 0xBEEF_0000_0000_0000 | v >> 32,
            rcx: u64::from(IA32_KERNEL_GS_BASE),
            ..GuestRegs::default()
        };
        handle(&mut b, &regs, &mut run, ExitReason::Wrmsr as u32);
        assert_eq!(run.msrs.read(IA32_KERNEL_GS_BASE), Some(v), "upper halves of RAX/RDX ignored");
        assert_eq!((run.msrs.gs_base_writes, run.msrs.gs_base_mismatches), (1, 0));
        assert_eq!(b.writes, [(FieldNatural::GuestRip.encoding(), L2_IMAGE_BASE + 0x52)]);
        assert_eq!(run.report.exits_by_reason[32], 1);
        let rec = run.report.exit_records[0];
        assert_eq!((rec.reason, rec.insn_len, rec.rip_offset), (32, 2, 0x50));
    }
}
