//! The one VM-entry/VM-exit path for both backends.
//!
//! * **VM exit** (HOST_RIP = [`exit_stub_address`], HOST_RSP = [`EXIT_STACK_TOP_OFFSET`]
//!   below the exit stack's top): a VM exit leaves every GPR but RSP as L2 had it (SDM 28.5:
//!   host state is loaded from the VMCS; RSP and RIP come from it, the other GPRs are not
//!   touched), and so does the soft engine (docs/soft-engine.md, "VM exit"). The stub pushes
//!   them into a [`GuestRegs`] on the exit stack, calls the Rust dispatcher
//!   (`l1_vmexit(&mut GuestRegs)`), pops them back and re-enters: `vmresume` on hardware, the
//!   register-free doorbell write `mov byte ptr [DOORBELL_GPA], DOORBELL_RESUME` on the soft
//!   engine. Either way VM entry takes the GPRs as L2's.
//! * **VM-entry failure** (SDM 31.3 VMLAUNCH/VMRESUME: VMfailInvalid sets CF, VMfailValid
//!   sets ZF, and execution continues after the instruction; the soft engine resumes L1 after
//!   the doorbell write with the same flags): the stub hands RFLAGS to `l1_resume_failed`.
//! * **First entry** ([`enter`]): the same instructions from Rust, VMLAUNCH or VMRESUME
//!   (the must-fail scenarios resume a never-launched VMCS), returning RFLAGS on failure.
//!
//! The instruction count of this path is what the soft engine multiplies: the stub is 15
//! pushes, one call, 15 pops, a compare, a branch and the entry instruction.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU8, Ordering};

use nestbench_abi::softvmx::{DOORBELL_GPA, DOORBELL_LAUNCH, DOORBELL_RESUME};

use super::VmxFail;

/// L2's general-purpose registers as the exit stub saves them (lowest address first: the
/// stub pushes R15 first and RAX last). RSP is in the VMCS (guest RSP), not here.
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

/// Nonzero when L1 uses the soft backend: the stub then rings the doorbell instead of
/// executing VMRESUME. Set once, before the first VM entry.
pub static USE_SOFT: AtomicU8 = AtomicU8::new(0);

/// Which entry [`enter`] performs: bit 0 = VMRESUME, bit 1 = soft backend.
static ENTER_KIND: AtomicU8 = AtomicU8::new(0);

/// Select the backend the stub re-enters with.
pub fn set_soft(soft: bool) {
    USE_SOFT.store(u8::from(soft), Ordering::Relaxed);
}

/// HOST_RSP is this many bytes below the exit stack's (16-byte-aligned) top, so that after
/// the stub's 15 pushes the stack is 16-byte aligned for the call (SysV ABI).
pub const EXIT_STACK_TOP_OFFSET: u64 = 8;

/// The exit stub's size of the register area (for documentation and tests).
pub const SAVED_REGS_BYTES: u64 = size_of::<GuestRegs>() as u64;
const _: () = assert!((SAVED_REGS_BYTES + EXIT_STACK_TOP_OFFSET) % 16 == 0);

// SAFETY (for the symbols below): `l1_vmexit` and `l1_resume_failed` are defined in
// crate::exits with the signatures the stub calls them with.
global_asm!(
    ".section .text.nb_vmx, \"ax\"",
    ".global nb_vmexit_stub",
    "nb_vmexit_stub:",
    "push r15", "push r14", "push r13", "push r12", "push r11", "push r10", "push r9", "push r8",
    "push rdi", "push rsi", "push rbp", "push rbx", "push rdx", "push rcx", "push rax",
    "mov rdi, rsp",
    "call {dispatch}",
    "pop rax", "pop rcx", "pop rdx", "pop rbx", "pop rbp", "pop rsi", "pop rdi",
    "pop r8", "pop r9", "pop r10", "pop r11", "pop r12", "pop r13", "pop r14", "pop r15",
    "cmp byte ptr [rip + {use_soft}], 0",
    "jne 2f",
    "vmresume",
    "jmp 3f",
    "2:",
    "mov byte ptr [{doorbell}], {resume}",
    "3:",
    // Only reached when the entry failed: CF/ZF say how.
    "pushfq",
    "pop rdi",
    "and rsp, -16",
    "call {failed}",
    "ud2",
    "",
    // extern "C" fn nb_vmx_enter(regs: *const GuestRegs, resume: u64) -> u64 (RFLAGS).
    ".global nb_vmx_enter",
    "nb_vmx_enter:",
    "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "movzx eax, byte ptr [rip + {use_soft}]",
    "and esi, 1",
    "lea eax, [rsi + 2 * rax]",
    "mov byte ptr [rip + {kind}], al",
    "mov rax, [rdi + 0]", "mov rcx, [rdi + 8]", "mov rdx, [rdi + 16]", "mov rbx, [rdi + 24]",
    "mov rbp, [rdi + 32]", "mov rsi, [rdi + 40]", "mov r8, [rdi + 56]", "mov r9, [rdi + 64]",
    "mov r10, [rdi + 72]", "mov r11, [rdi + 80]", "mov r12, [rdi + 88]", "mov r13, [rdi + 96]",
    "mov r14, [rdi + 104]", "mov r15, [rdi + 112]",
    // From here on only flags and memory change until the entry instruction.
    "cmp byte ptr [rip + {kind}], 1",
    "mov rdi, [rdi + 48]",
    "jb 10f",
    "je 11f",
    "cmp byte ptr [rip + {kind}], 2",
    "je 12f",
    "mov byte ptr [{doorbell}], {resume}",
    "jmp 20f",
    "12:",
    "mov byte ptr [{doorbell}], {launch}",
    "jmp 20f",
    "10:",
    "vmlaunch",
    "jmp 20f",
    "11:",
    "vmresume",
    "20:",
    "pushfq",
    "pop rax",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "ret",
    dispatch = sym crate::exits::l1_vmexit,
    failed = sym crate::exits::l1_resume_failed,
    use_soft = sym USE_SOFT,
    kind = sym ENTER_KIND,
    doorbell = const DOORBELL_GPA,
    resume = const DOORBELL_RESUME,
    launch = const DOORBELL_LAUNCH,
);

// SAFETY: both symbols are defined in the global_asm! above with these signatures.
unsafe extern "C" {
    fn nb_vmexit_stub();
    fn nb_vmx_enter(regs: *const GuestRegs, resume: u64) -> u64;
}

/// HOST_RIP: the exit stub.
#[must_use]
pub fn exit_stub_address() -> u64 {
    nb_vmexit_stub as *const () as u64
}

/// VMLAUNCH (`resume = false`) or VMRESUME of the current VMCS with L2's GPRs `regs`.
/// Returns only if the entry failed, with RFLAGS right after the instruction (SDM 31.2: CF
/// for VMfailInvalid, ZF for VMfailValid). A successful entry never returns here: the next
/// VM exit arrives at the exit stub.
///
/// # Safety
/// The current VMCS must be fully set up with HOST_RIP = [`exit_stub_address`] and HOST_RSP
/// on an exit stack nothing else uses, and [`USE_SOFT`] must name the backend in use.
pub unsafe fn enter(regs: &GuestRegs, resume: bool) -> u64 {
    // SAFETY: per the caller's contract; `nb_vmx_enter` saves and restores the callee-saved
    // registers on the failure path, and `regs` is a valid GuestRegs.
    unsafe { nb_vmx_enter(regs, u64::from(resume)) }
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
}
