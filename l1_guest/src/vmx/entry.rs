//! VM entry and VM exit for both backends: [`enter`] enters L2 and returns when L2 exits
//! (barevisor's shape), so the exit is handled by ordinary Rust code that owns its state.
//!
//! * **Entry** ([`enter`], inlined into the run loop): save RBX and RBP (the two registers
//!   Rust does not let an `asm!` block clobber), push the address to come back to, store RSP
//!   in the [`ExitFrame`], load L2's GPRs from it and execute the entry: VMLAUNCH or VMRESUME
//!   on hardware, the register-free doorbell write `mov byte ptr [DOORBELL_GPA], LAUNCH or
//!   RESUME` on the soft engine. VM entry takes the GPRs as L2's.
//! * **VM exit** (HOST_RIP = [`exit_stub_address`], HOST_RSP = [`ExitFrame::host_rsp`]): a VM
//!   exit leaves every GPR but RSP as L2 had it (SDM 28.5: host state is loaded from the
//!   VMCS; RSP and RIP come from it, the other GPRs are not touched), and so does the soft
//!   engine (docs/soft-engine.md, "VM exit"). The stub pushes them into the frame's
//!   [`GuestRegs`] (HOST_RSP is the end of that array), loads L1's RSP from the frame and
//!   returns to the address [`enter`] pushed; [`enter`] then restores RBP and RBX and returns
//!   0. The stub needs no stack of its own and touches no global.
//! * **VM-entry failure** (SDM 31.3 VMLAUNCH/VMRESUME: VMfailInvalid sets CF, VMfailValid
//!   sets ZF, and execution continues after the instruction; the soft engine resumes L1 after
//!   the doorbell write with the same flags): [`enter`] returns RFLAGS, which always has bit 1
//!   set, so it is never 0 ([`entry_failure`] decodes it).
//!
//! The instruction count of this path is what the soft engine multiplies: per round trip
//! the entry is 2 pushes, a LEA, a push, a store, a compare, 15 loads, a branch and the entry
//! instruction; the exit is 15 pushes, a load, a return, a clear and 2 pops.

use super::{VmxBackend, VmxFail};
use crate::static_cell::TakeOnce;
use crate::vcpu::GuestRegs;
use nestbench_abi::softvmx::{DOORBELL_GPA, DOORBELL_LAUNCH, DOORBELL_RESUME};

/// What the exit stub and [`enter`] share: L2's GPRs, L1's RSP inside [`enter`], and whether
/// the next entry resumes. HOST_RSP points into it, so it must not move while L2 runs: the
/// run's frame is a `&'static mut` ([`ExitFrame::take`]).
#[repr(C)]
#[derive(Debug, Default)]
pub struct ExitFrame {
    /// L2's GPRs (the stub pushes R15 first, at the highest address, and RAX last).
    pub regs: GuestRegs,
    /// L1's RSP inside [`enter`], just below the address the stub returns to.
    l1_rsp: u64,
    /// The next entry's [`EntryInstruction`].
    entry: u64,
}

/// Which entry instruction [`enter`] executes.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryInstruction {
    /// VMLAUNCH (the LAUNCH doorbell).
    Launch = 0,
    /// VMRESUME (the RESUME doorbell).
    Resume = 1,
    /// A MOV to SS that reloads L1's SS, then VMLAUNCH: the VMLAUNCH is in the MOV SS shadow
    /// (SDM 31.3 VMLAUNCH, VMfailValid 26). Only the VM-entry cases use it.
    LaunchAfterMovSs = 2,
}

const L1_RSP: usize = core::mem::offset_of!(ExitFrame, l1_rsp);
const ENTRY: usize = core::mem::offset_of!(ExitFrame, entry);
const _: () = assert!(L1_RSP == size_of::<GuestRegs>() && ENTRY == L1_RSP + 8);

/// L1's SS selector, for the MOV SS of [`EntryInstruction::LaunchAfterMovSs`] (a memory
/// operand: every GPR holds L2's value at that point).
static L1_SS: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(0);

/// The one exit frame of L1's one vCPU.
static FRAME: TakeOnce<ExitFrame> = TakeOnce::new(ExitFrame {
    regs: GuestRegs {
        rax: 0,
        rcx: 0,
        rdx: 0,
        rbx: 0,
        rbp: 0,
        rsi: 0,
        rdi: 0,
        r8: 0,
        r9: 0,
        r10: 0,
        r11: 0,
        r12: 0,
        r13: 0,
        r14: 0,
        r15: 0,
    },
    l1_rsp: 0,
    entry: 0,
});

impl ExitFrame {
    /// The run's frame, the first time; `None` after.
    pub fn take() -> Option<&'static mut Self> {
        FRAME.take()
    }

    /// HOST_RSP for this frame: the end of its register array, so the stub's 15 pushes fill it.
    #[must_use]
    pub fn host_rsp(&self) -> u64 {
        core::ptr::from_ref(self) as u64 + L1_RSP as u64
    }

    /// Whether the next entry resumes (VMRESUME) rather than launches (VMLAUNCH).
    #[must_use]
    pub const fn resumes(&self) -> bool {
        self.entry == EntryInstruction::Resume as u64
    }

    /// Make the next entry resume (VMRESUME) or launch (VMLAUNCH).
    #[inline(always)]
    pub fn set_resume(&mut self, resume: bool) {
        self.entry = u64::from(resume);
    }

    /// Make the next entry execute `how`.
    pub fn set_entry(&mut self, how: EntryInstruction) {
        if how == EntryInstruction::LaunchAfterMovSs {
            let ss: u16;
            // SAFETY: reads SS into a register.
            unsafe { core::arch::asm!("mov {0:x}, ss", out(reg) ss, options(nomem, nostack, preserves_flags)) };
            L1_SS.store(ss, core::sync::atomic::Ordering::Relaxed);
        }
        self.entry = how as u64;
    }
}

// The exit stub (HOST_RIP). On entry RSP = HOST_RSP = the frame's `l1_rsp` field.
core::arch::global_asm!(
    ".section .text.nb_vmx, \"ax\"",
    ".global nb_vmexit_stub",
    "nb_vmexit_stub:",
    "push r15", "push r14", "push r13", "push r12", "push r11", "push r10", "push r9", "push r8",
    "push rdi", "push rsi", "push rbp", "push rbx", "push rdx", "push rcx", "push rax",
    // RSP = the frame; its `l1_rsp` points at the return address `enter` pushed.
    "mov rsp, [rsp + {l1_rsp}]",
    "ret",
    l1_rsp = const L1_RSP,
);

// SAFETY: defined in the global_asm! above; only its address is used (HOST_RIP).
unsafe extern "C" {
    fn nb_vmexit_stub();
}

/// HOST_RIP: the exit stub.
#[must_use]
pub fn exit_stub_address() -> u64 {
    nb_vmexit_stub as *const () as u64
}

/// Enter L2 with the GPRs in `frame.regs` by the frame's [`EntryInstruction`]: VMRESUME (or
/// the RESUME doorbell), VMLAUNCH (LAUNCH), or MOV SS then VMLAUNCH. Returns 0 after L2's next VM exit, with L2's GPRs saved
/// in `frame.regs`; else the entry failed and this is RFLAGS right after the instruction
/// (SDM 31.2: CF for VMfailInvalid, ZF for VMfailValid).
///
/// # Safety
/// The current VMCS must be set up with HOST_RIP = [`exit_stub_address`] and HOST_RSP =
/// `frame.host_rsp()`, and `B` must be the backend that made it current.
#[inline(always)]
pub unsafe fn enter<B: VmxBackend>(frame: &mut ExitFrame) -> u64 {
    let frame = core::ptr::from_mut(frame);
    let ret: u64;
    // The same sequence for both backends but the entry instruction itself: the compare's
    // flags survive the loads (MOV changes no flag) and pick VMRESUME (equal, one taken
    // branch: the run loop's path), VMLAUNCH (below) or MOV SS + VMLAUNCH (above).
    macro_rules! entry_asm {
        ($launch:literal, $resume:literal $(, $name:ident = const $value:expr)*) => {
            // SAFETY: per the caller's contract. The block saves RBX and RBP and restores them
            // on both ways out; it declares every other GPR clobbered (they return with L2's
            // values or garbage); it returns with RSP as it found it: the exit path pops the
            // pushed return address with RET, the failure path with POP. The frame is valid
            // and exclusively ours for the block (from `&mut`).
            unsafe {
                core::arch::asm!(
                    "push rbx",
                    "push rbp",
                    "lea rax, [rip + 2f]",
                    "push rax",
                    "mov [rdi + {l1_rsp}], rsp",
                    "cmp qword ptr [rdi + {entry}], 1",
                    "mov rax, [rdi + 0]", "mov rcx, [rdi + 8]", "mov rdx, [rdi + 16]", "mov rbx, [rdi + 24]",
                    "mov rbp, [rdi + 32]", "mov rsi, [rdi + 40]", "mov r8, [rdi + 56]", "mov r9, [rdi + 64]",
                    "mov r10, [rdi + 72]", "mov r11, [rdi + 80]", "mov r12, [rdi + 88]", "mov r13, [rdi + 96]",
                    "mov r14, [rdi + 104]", "mov r15, [rdi + 112]",
                    "mov rdi, [rdi + 48]",
                    "je 3f",
                    "ja 6f",
                    $launch,
                    "jmp 4f",
                    "6:",
                    "mov ss, word ptr [rip + {l1_ss}]",
                    $launch,
                    "jmp 4f",
                    "3:",
                    $resume,
                    // Only reached when the entry failed: CF/ZF say how.
                    "4:",
                    "pushfq",
                    "pop rax",
                    "pop rcx",
                    "jmp 5f",
                    // The exit stub returns here.
                    "2:",
                    "xor eax, eax",
                    "5:",
                    "pop rbp",
                    "pop rbx",
                    l1_rsp = const L1_RSP,
                    entry = const ENTRY,
                    l1_ss = sym L1_SS,
                    $($name = const $value,)*
                    inout("rdi") frame => _,
                    out("rax") ret,
                    out("rcx") _, out("rdx") _, out("rsi") _,
                    out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                    out("r12") _, out("r13") _, out("r14") _, out("r15") _,
                );
            }
        };
    }
    if B::DOORBELL {
        entry_asm!(
            "mov byte ptr [{doorbell}], {launch}",
            "mov byte ptr [{doorbell}], {resume_bell}",
            doorbell = const DOORBELL_GPA,
            launch = const DOORBELL_LAUNCH,
            resume_bell = const DOORBELL_RESUME
        );
    } else {
        entry_asm!("vmlaunch", "vmresume");
    }
    ret
}

/// Decode the flags a failed VM entry left (SDM 31.2): CF = VMfailInvalid, ZF =
/// VMfailValid with the error number `read_error` fetches from the VMCS; `None` if neither
/// flag is set.
pub fn entry_failure(rflags: u64, read_error: impl FnOnce() -> u32) -> Option<VmxFail> {
    if rflags & 1 != 0 {
        Some(VmxFail::FailInvalid)
    } else if rflags & (1 << 6) != 0 {
        Some(VmxFail::FailValid(read_error()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_failure_flags() {
        assert_eq!(entry_failure(0x2 | 1, || 99), Some(VmxFail::FailInvalid));
        assert_eq!(entry_failure(0x2 | 1 << 6, || 7), Some(VmxFail::FailValid(7)));
        assert_eq!(entry_failure(0x2, || 7), None);
    }

    #[test]
    fn host_rsp_is_the_end_of_the_register_array() {
        let f = ExitFrame::default();
        assert_eq!(f.host_rsp(), core::ptr::from_ref(&f.regs) as u64 + 15 * 8);
    }
}
