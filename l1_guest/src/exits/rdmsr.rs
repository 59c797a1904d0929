//! RDMSR exits (basic reason 31) and the MSRs L1 emulates for L2.
//!
//! L1 intercepts reads and writes of two MSRs with its MSR bitmap (SDM 25.6.9; the bitmap is
//! built by [`crate::vmx::msr_bitmap`]) and keeps their values itself, as a hypervisor that
//! virtualises an MSR would. Which MSRs, their values and the check of the `wrmsr` payload's
//! writes are the ABI's [`nestbench_abi::msr`] ([`EmulatedMsrs`]), which L0's single-level
//! twin answers with too.
//!
//! RDMSR (SDM Vol. 2B, RDMSR): "Reads the contents of a 64-bit model specific register (MSR)
//! specified in the ECX register into registers EDX:EAX. ... On processors that support the
//! Intel 64 architecture, the high-order 32 bits of RCX are ignored. ... the high-order 32
//! bits of each of RAX and RDX are cleared." L1 does exactly that, then advances RIP by the
//! VM-exit instruction length (SDM 28.2.4).

use super::{RunState, advance_rip};
use crate::exit::Exit;
use crate::vcpu::Vcpu;

pub use nestbench_abi::msr::{
    EmulatedMsrs, IA32_KERNEL_GS_BASE, IA32_SYSENTER_ESP, INTERCEPTED, RDMSR_VALUE, WRMSR_FIRST_VALUE,
};

/// Record the exit, load EDX:EAX with the emulated MSR `msr`, skip the RDMSR. An MSR L1
/// does not emulate (only possible without "use MSR bitmaps", or outside the bitmap's
/// ranges) is an unexpected exit. The exit qualification of RDMSR is 0 (SDM 28.2.1: it is
/// cleared for exits it does not describe), and so is the record's.
#[inline(always)]
pub fn handle<V: Vcpu>(vcpu: &mut V, run: &mut RunState, msr: u32) {
    let reason = Exit::MsrRead { msr }.report_reason();
    let len = vcpu.insn_len();
    let rip = vcpu.rip();
    vcpu.record(run, reason, len, 0, rip, 0, 0);
    let Some(value) = run.msrs.read(msr) else {
        crate::println!("l1: RDMSR of MSR {msr:#x}, which L1 does not intercept");
        super::unexpected::handle(vcpu, reason)
    };
    let regs = vcpu.regs();
    regs.rax = value & 0xFFFF_FFFF;
    regs.rdx = value >> 32;
    advance_rip(vcpu, rip, len);
}

#[cfg(test)]
mod tests {
    use nestbench_abi::payload::L2_IMAGE_BASE;
    use nestbench_abi::vmcs::{Field32, FieldNatural};
    use nestbench_abi::vmx::ExitReason;

    use super::*;
    use crate::vcpu::GuestRegs;
    use crate::vmx::entry::ExitFrame;
    use crate::vmx::fake::Recording;
    use crate::vmx::vcpu::VmxVcpu;

    #[test]
    fn the_values_are_the_payloads() {
        assert_eq!(IA32_SYSENTER_ESP, l2_payloads::rdmsr::MSR);
        assert_eq!(RDMSR_VALUE, l2_payloads::rdmsr::VALUE);
        assert_eq!(IA32_KERNEL_GS_BASE, l2_payloads::wrmsr::MSR);
        for n in [0, 1, 499] {
            assert_eq!(WRMSR_FIRST_VALUE.wrapping_add(n), l2_payloads::wrmsr::value(n));
        }
    }

    #[test]
    fn handler_loads_edx_eax_records_and_advances_rip() {
        let mut b = Recording::default();
        b.fields.insert(Field32::VmExitInstructionLength.encoding(), 2);
        b.fields.insert(FieldNatural::GuestRip.encoding(), L2_IMAGE_BASE + 0x30);
        let mut run = RunState::new();
        let mut frame = ExitFrame::default();
        frame.regs = GuestRegs { rax: u64::MAX, rcx: 0xFFFF_FFFF_0000_0175, rdx: u64::MAX, ..GuestRegs::default() };
        let mut vcpu = VmxVcpu::for_test(b, &mut frame);
        let Exit::MsrRead { msr } = vcpu.decode_for_test(ExitReason::Rdmsr) else { panic!("not an RDMSR") };
        handle(&mut vcpu, &mut run, msr);
        let b = vcpu.into_backend();
        let regs = frame.regs;
        assert_eq!((regs.rax, regs.rdx), (0x5244_0175, 0x4E42), "upper halves cleared, ECX only");
        assert_eq!(b.writes, [(FieldNatural::GuestRip.encoding(), L2_IMAGE_BASE + 0x32)]);
        assert_eq!(run.report.exits_by_reason[31], 1);
        let rec = run.report.exit_records[0];
        assert_eq!((rec.reason, rec.insn_len, rec.qualification, rec.rip_offset), (31, 2, 0, 0x30));
    }
}
