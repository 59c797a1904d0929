//! L2's vCPU on VMX: [`VmxVcpu`] implements the vendor layer ([`Vcpu`]) over a backend
//! ([`VmxBackend`]: hardware or soft). It enters L2 through [`entry::enter`] and decodes the
//! VMCS's exit information into a vendor-neutral [`Exit`] (SDM 28.2 "Recording VM-Exit
//! Information").
//!
//! Decoding reads the exit reason and, per reason, only what the kind carries: the I/O
//! qualification; the EPT-violation qualification, guest-physical address and (when bit 7
//! says it is valid) guest-linear address; the EPT-misconfiguration address. RIP and the
//! instruction length are read when a handler asks ([`Vcpu::rip`], [`Vcpu::insn_len`]), so
//! no exit pays a VMREAD its handler does not need.

use nestbench_abi::vmcs::{Field32, Field64, FieldNatural};
use nestbench_abi::vmx::intr::Event;
use nestbench_abi::vmx::{ExitReason, IoInstructionInfo, IoQualification};

use super::entry::{self, ExitFrame};
use super::{Vmcs, VmxBackend, VmxFail};
use crate::exit::{ControlRegister, Exit, NestedPageFault, StringIo};
use crate::exits::{self, EXIT_ENTRY_FAILED, RunState, must};
use crate::vcpu::{GuestRegs, Vcpu};

/// L2's vCPU: the backend with L2's VMCS current, and the exit frame HOST_RSP points into.
#[derive(Debug)]
pub struct VmxVcpu<'f, B: VmxBackend> {
    backend: B,
    frame: &'f mut ExitFrame,
}

impl<'f, B: VmxBackend> VmxVcpu<'f, B> {
    /// L2's vCPU on `backend`, with L2's GPRs in `frame.regs`; its first entry launches.
    ///
    /// # Safety
    /// `backend`'s current VMCS must be complete, with HOST_RIP = [`entry::exit_stub_address`]
    /// and HOST_RSP = `frame.host_rsp()`, and `frame` must not move while L2 can exit to it
    /// (the run's frame is `'static`: [`ExitFrame::take`]).
    pub unsafe fn new(backend: B, frame: &'f mut ExitFrame) -> Self {
        frame.set_resume(false);
        Self { backend, frame }
    }

    /// Host tests: a vCPU that is never entered.
    #[cfg(test)]
    pub fn for_test(backend: B, frame: &'f mut ExitFrame) -> Self {
        Self { backend, frame }
    }

    /// Host tests: the backend back, to look at what the handlers did to it.
    #[cfg(test)]
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// The backend, for what only VMX has (the VMX-only exits, the scenarios' VMX
    /// instructions).
    #[inline(always)]
    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }

    /// One VM entry with the instruction the caller names. `Ok` after L2's next VM exit (the
    /// exit-reason field says which); `Err` with RFLAGS when the entry failed (SDM 31.2,
    /// decoded by [`entry::entry_failure`]). The must-fail scenarios and the VM-entry cases
    /// drive entries this way.
    pub fn enter(&mut self, how: entry::EntryInstruction) -> Result<(), u64> {
        self.frame.set_entry(how);
        // SAFETY: `new`'s contract: the VMCS's host RIP/RSP are the stub and this frame, and
        // `B` made it current.
        match unsafe { entry::enter::<B>(self.frame) } {
            0 => Ok(()),
            rflags => Err(rflags),
        }
    }

    /// The VMfail a failed entry's RFLAGS say (SDM 31.2), with the VM-instruction error
    /// number for VMfailValid.
    pub fn entry_failure(&mut self, rflags: u64) -> Option<VmxFail> {
        entry::entry_failure(rflags, || self.backend.read32(Field32::VmInstructionError).unwrap_or(0))
    }

    /// The entry [`Vcpu::run`] makes failed: report as VMLAUNCH or VMRESUME and stop.
    #[cold]
    #[inline(never)]
    fn entry_failed(&mut self, rflags: u64) -> ! {
        let f = self.entry_failure(rflags);
        if self.frame.resumes() {
            crate::println!("l1: VMRESUME failed: {f:?} (RFLAGS {rflags:#x})");
        } else {
            crate::println!("l1: VMLAUNCH failed: {f:?}");
            exits::unexpected::dump(&mut self.backend);
        }
        crate::hypercall::exit(EXIT_ENTRY_FAILED)
    }

    /// Decode the exit that just happened (SDM 28.2.1: the basic exit reason says what the
    /// qualification and the other information fields hold).
    ///
    /// I/O and HLT, the exits the `soft` engine reflects every iteration, are tested first,
    /// one compare each; the other reasons after them. One `match` over every reason would
    /// become a jump table, which adds instructions to the HLT path, and each instruction on
    /// the exit path costs ~0.5 us on the development hosts, where L1 is emulated.
    #[inline(always)]
    fn decode(&mut self) -> Exit {
        let reason = must(self.backend.read32(Field32::VmExitReason), "VMREAD exit reason");
        if reason == ExitReason::IoInstruction as u32 {
            let q = must(self.backend.read_nat(FieldNatural::ExitQualification), "VMREAD qualification");
            return Exit::Io(IoQualification::from_raw(q));
        }
        if reason == ExitReason::Hlt as u32 {
            return Exit::Hlt;
        }
        // An empty asm statement: no instruction, but the compiler cannot merge the compares
        // below with the two above into one switch (a jump table).
        // SAFETY: it contains no instruction.
        unsafe { core::arch::asm!("", options(nomem, nostack, preserves_flags)) };
        self.decode_other(reason)
    }

    #[inline(always)]
    fn decode_other(&mut self, reason: u32) -> Exit {
        let b = &mut self.backend;
        match reason {
            r if r == ExitReason::Cpuid as u32 => Exit::Cpuid,
            r if r == ExitReason::Vmcall as u32 => Exit::Hypercall,
            r if r == ExitReason::TripleFault as u32 => Exit::TripleFault,
            // RDMSR/WRMSR (SDM Vol. 2B): the MSR is ECX (RCX's high half ignored), the value
            // EDX:EAX (RAX's and RDX's high halves ignored).
            r if r == ExitReason::Rdmsr as u32 => Exit::MsrRead { msr: self.frame.regs.rcx as u32 },
            r if r == ExitReason::Wrmsr as u32 => {
                let g = &self.frame.regs;
                Exit::MsrWrite { msr: g.rcx as u32, value: (g.rdx & 0xFFFF_FFFF) << 32 | g.rax & 0xFFFF_FFFF }
            }
            // SDM 28.2.1, Table 28-7; the guest-linear address only when bit 7 says it is valid.
            r if r == ExitReason::EptViolation as u32 => {
                let q = must(b.read_nat(FieldNatural::ExitQualification), "VMREAD exit qualification");
                let gpa = must(b.read64(Field64::GuestPhysicalAddress), "VMREAD guest-physical address");
                let linear = if q & nestbench_abi::ept::violation::LINEAR_VALID != 0 {
                    must(b.read_nat(FieldNatural::GuestLinearAddress), "VMREAD guest-linear address")
                } else {
                    0
                };
                Exit::NestedPageFault(NestedPageFault { gpa, linear, qualification: q })
            }
            r if r == ExitReason::EptMisconfiguration as u32 => Exit::EptMisconfig {
                gpa: must(b.read64(Field64::GuestPhysicalAddress), "VMREAD guest-physical address"),
            },
            r if r == ExitReason::ControlRegisterAccess as u32 => {
                let q = must(b.read_nat(FieldNatural::ExitQualification), "VMREAD exit qualification");
                ControlRegister::from_qualification(q).map_or(Exit::Other(reason), Exit::ControlRegister)
            }
            r if r == ExitReason::PreemptionTimer as u32 => Exit::PreemptionTimer,
            r if r == ExitReason::InterruptWindow as u32 => Exit::InterruptWindow,
            _ => Exit::Other(reason),
        }
    }
}

#[cfg(test)]
impl VmxVcpu<'_, super::fake::Recording> {
    /// Host tests: decode an exit of `reason` from the recorded fields and the frame.
    pub fn decode_for_test(&mut self, reason: ExitReason) -> Exit {
        self.backend.fields.insert(Field32::VmExitReason.encoding(), reason as u64);
        self.decode()
    }
}

impl<B: VmxBackend> Vcpu for VmxVcpu<'_, B> {
    #[inline(always)]
    fn run(&mut self) -> Exit {
        // SAFETY: `new`'s contract: the VMCS's host RIP/RSP are the stub and this frame, and
        // `B` made it current.
        let rflags = unsafe { entry::enter::<B>(self.frame) };
        if rflags != 0 {
            self.entry_failed(rflags);
        }
        self.frame.set_resume(true);
        self.decode()
    }

    #[inline(always)]
    fn regs(&mut self) -> &mut GuestRegs {
        &mut self.frame.regs
    }

    #[inline(always)]
    fn rip(&mut self) -> u64 {
        must(self.backend.read_nat(FieldNatural::GuestRip), "VMREAD guest RIP")
    }

    #[inline(always)]
    fn set_rip(&mut self, rip: u64) {
        must(self.backend.write_nat(FieldNatural::GuestRip, rip), "VMWRITE guest RIP");
    }

    #[inline(always)]
    fn insn_len(&mut self) -> u32 {
        must(self.backend.read32(Field32::VmExitInstructionLength), "VMREAD instruction length")
    }

    fn rsp(&mut self) -> u64 {
        must(self.backend.read_nat(FieldNatural::GuestRsp), "VMREAD guest RSP")
    }

    fn rflags(&mut self) -> u64 {
        must(self.backend.read_nat(FieldNatural::GuestRflags), "VMREAD guest RFLAGS")
    }

    /// SDM 28.2.5: the instruction information (Table 28-8) and the guest-linear address.
    fn string_io(&mut self) -> StringIo {
        let info = must(self.backend.read32(Field32::VmExitInstructionInfo), "VMREAD instruction information");
        let linear = must(self.backend.read_nat(FieldNatural::GuestLinearAddress), "VMREAD guest-linear address");
        StringIo { info: IoInstructionInfo::from_raw(info), linear }
    }

    fn guest_cr3(&mut self) -> u64 {
        must(self.backend.read_nat(FieldNatural::GuestCr3), "VMREAD guest CR3")
    }

    fn set_guest_cr3(&mut self, cr3: u64) {
        must(self.backend.write_nat(FieldNatural::GuestCr3, cr3), "VMWRITE guest CR3");
    }

    fn inject(&mut self, event: Event) {
        let (info, error_code) = event.encode();
        must(self.backend.write32(Field32::VmEntryExceptionErrorCode, error_code), "VMWRITE entry error code");
        must(self.backend.write32(Field32::VmEntryInterruptionInfo, info), "VMWRITE entry interruption info");
    }

    fn invalidate_nested(&mut self, kind: u64, root: u64) {
        must(self.backend.invept(kind, root), "INVEPT");
    }

    fn vendor_exit(&mut self, exit: Exit, run: &mut RunState) {
        let b = &mut self.backend;
        match exit {
            Exit::EptMisconfig { gpa } => exits::ept_misconfig::handle(b, run, gpa),
            Exit::PreemptionTimer => exits::preemption_timer::handle(b, run),
            Exit::InterruptWindow => exits::interrupt_window::handle(b, run),
            other => exits::unexpected::handle(self, other.report_reason()),
        }
    }

    fn dump(&mut self) {
        exits::unexpected::dump(&mut self.backend);
    }

    #[inline(always)]
    fn accesses(&self) -> u32 {
        self.backend.accesses()
    }
}
