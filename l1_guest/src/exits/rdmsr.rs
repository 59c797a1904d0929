//! RDMSR exits (basic reason 31) and the MSRs L1 emulates for L2.
//!
//! L1 intercepts reads and writes of two MSRs with its MSR bitmap (SDM 25.6.9; the bitmap is
//! built by [`crate::vmx::msr_bitmap`]) and keeps their values itself, as a hypervisor that
//! virtualises an MSR would:
//!
//! * IA32_SYSENTER_ESP (0x175, low range): reads return [`RDMSR_VALUE`] until L2 writes it.
//!   The `rdmsr` payload reads it and checks the value.
//! * IA32_KERNEL_GS_BASE (0xC000_0102, high range): every write is recorded and checked
//!   against the sequence the `wrmsr` payload writes ([`WRMSR_FIRST_VALUE`] + n for the n-th
//!   write); mismatches go into the payload report's failures.
//!
//! Both exist on every x86-64 CPU and in every KVM guest, take any canonical value, and are
//! used by nothing a payload does (no SYSENTER, no SWAPGS), so an access that reached the
//! real MSR (an engine that ignored the bitmap) would be harmless and visibly wrong. The
//! values are `l2_payloads::{rdmsr, wrmsr}`'s (a test ties them).
//!
//! RDMSR (SDM Vol. 2B, RDMSR): "Reads the contents of a 64-bit model specific register (MSR)
//! specified in the ECX register into registers EDX:EAX. ... On processors that support the
//! Intel 64 architecture, the high-order 32 bits of RCX are ignored. ... the high-order 32
//! bits of each of RAX and RDX are cleared." L1 does exactly that, then advances RIP by the
//! VM-exit instruction length (SDM 28.2.4).

use nestbench_abi::vmcs::{Field32, FieldNatural};

use super::{RunState, advance_rip, must};
use crate::vmx::entry::GuestRegs;
use crate::vmx::{Vmcs, VmxBackend};

/// IA32_SYSENTER_ESP.
pub const IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_KERNEL_GS_BASE.
pub const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;
/// The MSRs whose reads and writes L1 intercepts.
pub const INTERCEPTED: [u32; 2] = [IA32_SYSENTER_ESP, IA32_KERNEL_GS_BASE];
/// IA32_SYSENTER_ESP as L2 reads it before writing it (= `l2_payloads::rdmsr::VALUE`).
pub const RDMSR_VALUE: u64 = 0x0000_4E42_5244_0175;
/// The first value the `wrmsr` payload writes to IA32_KERNEL_GS_BASE; its n-th write is this
/// plus n (= `l2_payloads::wrmsr::value(n)`).
pub const WRMSR_FIRST_VALUE: u64 = 0x0000_4E42_5752_0000;

/// L2's view of the intercepted MSRs, and the check of the writes to IA32_KERNEL_GS_BASE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmulatedMsrs {
    values: [u64; INTERCEPTED.len()],
    /// Writes to IA32_KERNEL_GS_BASE so far.
    pub gs_base_writes: u64,
    /// Of those, how many were not `WRMSR_FIRST_VALUE + n`.
    pub gs_base_mismatches: u64,
}

impl EmulatedMsrs {
    /// Reset values: IA32_SYSENTER_ESP reads [`RDMSR_VALUE`], IA32_KERNEL_GS_BASE 0.
    #[must_use]
    pub const fn new() -> Self {
        Self { values: [RDMSR_VALUE, 0], gs_base_writes: 0, gs_base_mismatches: 0 }
    }

    fn slot(msr: u32) -> Option<usize> {
        INTERCEPTED.iter().position(|&m| m == msr)
    }

    /// The value of `msr`, or `None` for an MSR L1 does not emulate.
    #[must_use]
    pub fn read(&self, msr: u32) -> Option<u64> {
        Self::slot(msr).map(|i| self.values[i])
    }

    /// Record a write; `false` for an MSR L1 does not emulate. A write to
    /// IA32_KERNEL_GS_BASE is checked against the `wrmsr` payload's sequence.
    pub fn write(&mut self, msr: u32, value: u64) -> bool {
        let Some(i) = Self::slot(msr) else { return false };
        self.values[i] = value;
        if msr == IA32_KERNEL_GS_BASE {
            if value != WRMSR_FIRST_VALUE.wrapping_add(self.gs_base_writes) {
                self.gs_base_mismatches += 1;
            }
            self.gs_base_writes += 1;
        }
        true
    }
}

impl Default for EmulatedMsrs {
    fn default() -> Self {
        Self::new()
    }
}

/// Record the exit, load EDX:EAX with the emulated MSR, skip the RDMSR. An MSR L1 does not
/// emulate (only possible without "use MSR bitmaps", or outside the bitmap's ranges) is an
/// unexpected exit.
#[inline(always)]
pub fn handle<B: VmxBackend>(b: &mut B, regs: &mut GuestRegs, run: &mut RunState, reason: u32) {
    let len = must(b.read32(Field32::VmExitInstructionLength), "VMREAD instruction length");
    let rip = must(b.read_nat(FieldNatural::GuestRip), "VMREAD guest RIP");
    let q = must(b.read_nat(FieldNatural::ExitQualification), "VMREAD qualification");
    run.record(reason, len, q, rip, 0, 0);
    let Some(value) = run.msrs.read(regs.rcx as u32) else {
        crate::println!("l1: RDMSR of MSR {:#x}, which L1 does not intercept", regs.rcx as u32);
        super::unexpected::handle(b, reason)
    };
    regs.rax = value & 0xFFFF_FFFF;
    regs.rdx = value >> 32;
    advance_rip(b, rip, len);
}

#[cfg(test)]
mod tests {
    use nestbench_abi::payload::L2_IMAGE_BASE;
    use nestbench_abi::vmx::ExitReason;

    use super::*;
    use crate::vmx::fake::Recording;

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
        let mut regs = GuestRegs { rax: u64::MAX, rcx: 0xFFFF_FFFF_0000_0175, rdx: u64::MAX, ..GuestRegs::default() };
        handle(&mut b, &mut regs, &mut run, ExitReason::Rdmsr as u32);
        assert_eq!((regs.rax, regs.rdx), (0x5244_0175, 0x4E42), "upper halves cleared, ECX only");
        assert_eq!(b.writes, [(FieldNatural::GuestRip.encoding(), L2_IMAGE_BASE + 0x32)]);
        assert_eq!(run.report.exits_by_reason[31], 1);
        let rec = run.report.exit_records[0];
        assert_eq!((rec.reason, rec.insn_len, rec.qualification, rec.rip_offset), (31, 2, 0, 0x30));
    }

    #[test]
    fn writes_are_recorded_and_checked() {
        let mut m = EmulatedMsrs::new();
        assert_eq!(m.read(IA32_KERNEL_GS_BASE), Some(0));
        assert_eq!(m.read(0x10), None);
        assert!(!m.write(0x10, 1));
        assert!(m.write(IA32_KERNEL_GS_BASE, WRMSR_FIRST_VALUE));
        assert!(m.write(IA32_KERNEL_GS_BASE, WRMSR_FIRST_VALUE + 1));
        assert_eq!((m.gs_base_writes, m.gs_base_mismatches), (2, 0));
        assert!(m.write(IA32_KERNEL_GS_BASE, WRMSR_FIRST_VALUE + 1), "a repeated write");
        assert_eq!((m.gs_base_writes, m.gs_base_mismatches), (3, 1));
        assert_eq!(m.read(IA32_KERNEL_GS_BASE), Some(WRMSR_FIRST_VALUE + 1));
        assert!(m.write(IA32_SYSENTER_ESP, 7));
        assert_eq!(m.read(IA32_SYSENTER_ESP), Some(7));
        assert_eq!(m.gs_base_writes, 3, "only IA32_KERNEL_GS_BASE is checked");
    }
}
