//! The vendor layer under L1's run loop: a [`Vcpu`] enters L2, returns when L2 exits, and says
//! what happened as a vendor-neutral [`Exit`] (barevisor's shape). VMX implements it
//! ([`crate::vmx::vcpu::VmxVcpu`], over the hardware and soft backends); the SVM backend will
//! sit in [`crate::svm`].
//!
//! The run loop ([`crate::exits::run_loop`]) owns the run's state and hands `&mut` to one
//! handler per exit kind; the handlers of the common exits (I/O, HLT, CPUID, RDMSR/WRMSR,
//! VMCALL, nested page fault) see only this trait and the exit.
//!
//! Every method is called on the exit path, so each is a few inlined instructions (every
//! instruction of L1 costs ~0.5 us where L1 is emulated): no dynamic dispatch, and a vendor
//! reads a field of its exit information only when a handler asks for it.

use nestbench_abi::vmx::intr::Event;

use crate::exit::{Exit, StringIo};
use crate::exits::RunState;

/// L2's general-purpose registers but RSP, as the exit stub saves them (lowest address
/// first: the stub pushes R15 first and RAX last; [`crate::vmx::entry`]). RSP is in the
/// vendor's guest state (VMX: the VMCS's guest RSP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    /// RAX.
    pub rax: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RBX.
    pub rbx: u64,
    /// RBP.
    pub rbp: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
}

const _: () = assert!(size_of::<GuestRegs>() == 15 * 8);

impl GuestRegs {
    /// The register numbered `n` as instructions encode it (0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX,
    /// 5 = RBP, 6 = RSI, 7 = RDI, 8-15 = R8-R15; SDM 28.2.1, Table 28-3); `None` for 4 (RSP,
    /// which lives in the guest-state area) and beyond 15.
    pub fn gpr_mut(&mut self, n: u8) -> Option<&mut u64> {
        Some(match n {
            0 => &mut self.rax,
            1 => &mut self.rcx,
            2 => &mut self.rdx,
            3 => &mut self.rbx,
            5 => &mut self.rbp,
            6 => &mut self.rsi,
            7 => &mut self.rdi,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            15 => &mut self.r15,
            _ => return None,
        })
    }
}

/// One virtual CPU of L2, as the run loop drives it. A failed VMX instruction on the exit
/// path (a VMREAD, VMWRITE or INVEPT) is fatal inside these methods ([`crate::exits::fatal`]).
pub trait Vcpu {
    /// Enter L2 (the first time launch, then resume) and return at its next exit. An entry
    /// that fails is reported and ends the run (VMX: SDM 31.3, VMfailInvalid or VMfailValid).
    fn run(&mut self) -> Exit;
    /// L2's GPRs as the exit left them; what the handler leaves here L2 gets at the next
    /// entry.
    fn regs(&mut self) -> &mut GuestRegs;
    /// L2's RIP: the exiting instruction's address for the instruction exits, where L2 was
    /// stopped for the others.
    fn rip(&mut self) -> u64;
    /// Move L2's RIP (past an instruction the handler completed: [`crate::exits::advance_rip`]).
    fn set_rip(&mut self, rip: u64);
    /// The exiting instruction's length in bytes (VMX: SDM 28.2.4); only meaningful for
    /// exits an instruction caused.
    fn insn_len(&mut self) -> u32;
    /// L2's RSP.
    fn rsp(&mut self) -> u64;
    /// L2's RFLAGS.
    fn rflags(&mut self) -> u64;
    /// INS/OUTS: the address size and the linear address of the memory operand.
    fn string_io(&mut self) -> StringIo;
    /// L2's CR3 (VMX: the guest-state CR3 field).
    fn guest_cr3(&mut self) -> u64;
    /// Set L2's CR3 for the next entry.
    fn set_guest_cr3(&mut self, cr3: u64);
    /// Inject `event` into L2 at the next entry (VMX: the VM-entry interruption-information
    /// field and exception error code, SDM 25.8.3, delivered as 27.6 says; the entry's VM exit
    /// clears it again).
    fn inject(&mut self, event: Event);
    /// Invalidate the cached translations of L2's nested paging rooted at `root` (VMX: INVEPT
    /// of type `kind`, 1 single-context or 2 all-context, SDM 31.3).
    fn invalidate_nested(&mut self, kind: u64, root: u64);
    /// Handle an exit kind whose handler needs the vendor's control structure itself
    /// ([`Exit::EptMisconfig`] and [`Exit::PreemptionTimer`], VMX only; [`Exit::InterruptWindow`],
    /// VMX's interrupt-window exiting or SVM's VINTR).
    fn vendor_exit(&mut self, exit: Exit, run: &mut RunState);
    /// Print the vendor's guest and control state (an exit L1 has no handler for).
    fn dump(&mut self);
    /// Count and record the exit being handled ([`RunState::record`]): the handler passes
    /// its kind as the ABI's exit-reason number and the facts in VMX's encoding; a vendor
    /// with its own encoding records its own exit information instead.
    // The handler's facts as `RunState::record` takes them, plus the state: a struct would be
    // built on every exit path for nothing.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn record(
        &mut self,
        run: &mut RunState,
        reason: u32,
        insn_len: u32,
        qualification: u64,
        rip: u64,
        insn_info: u32,
        linear: u64,
    ) {
        run.record(reason, insn_len, qualification, rip, insn_info, linear);
    }
    /// Accesses to the vendor's control structure so far (VMX: VMREAD + VMWRITE), for the
    /// payload report.
    fn accesses(&self) -> u32;
}
