//! Thin wrappers over the x86 instructions L1 uses outside VMX.
//!
//! These compile on the host too (so the library's tests build), but they are only executed
//! in the guest. Every instruction here is one this host's KVM can emulate at CPL 0 (no SSE
//! arithmetic, POPCNT, RDTSCP, ...): the image-disassembly test in `l0` checks that.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// CPUID result.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpuid {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Execute CPUID for `leaf`, sub-leaf 0.
#[must_use]
pub fn cpuid(leaf: u32) -> Cpuid {
    cpuid_count(leaf, 0)
}

/// Execute CPUID with EAX = `leaf` and ECX = `subleaf`.
#[inline(always)]
#[must_use]
pub fn cpuid_count(leaf: u32, subleaf: u32) -> Cpuid {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    Cpuid { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
}

/// The physical-address width (MAXPHYADDR): CPUID.80000008H:EAX[7:0], or 36 where the leaf is
/// absent (SDM Vol. 3A 4.1.4).
#[must_use]
pub fn maxphyaddr() -> u32 {
    if cpuid(0x8000_0000).eax >= 0x8000_0008 { cpuid(0x8000_0008).eax & 0xFF } else { 36 }
}

/// Where the #GP handler resumes a faulting [`rdmsr_safe`]; 0 when no RDMSR is in flight.
static RECOVERY_RIP: AtomicU64 = AtomicU64::new(0);

/// Called by the exception handler: if a fault-tolerant instruction is in flight, returns
/// the RIP to resume at (and disarms it).
pub fn take_recovery_rip() -> Option<u64> {
    match RECOVERY_RIP.swap(0, Ordering::Relaxed) {
        0 => None,
        rip => Some(rip),
    }
}

/// RDMSR that survives a #GP (a non-existent MSR): `Err(())` when it faulted.
///
/// The recovery address is armed before RDMSR; on #GP the exception handler resumes at it
/// (see [`take_recovery_rip`]), which sets the fault flag.
#[allow(clippy::result_unit_err)]
pub fn rdmsr_safe(msr: u32) -> Result<u64, ()> {
    let lo: u32;
    let hi: u32;
    let faulted: u64;
    // SAFETY: RDMSR reads an MSR; a #GP for a missing MSR is caught by L1's handler, which
    // resumes at label 2 with all registers as they were before RDMSR. The recovery slot is a
    // static, valid for the whole program.
    unsafe {
        asm!(
            "lea {tmp}, [rip + 2f]",
            "mov [{slot}], {tmp}",
            "xor {flt:e}, {flt:e}",
            "rdmsr",
            "jmp 3f",
            "2:",
            "mov {flt:e}, 1",
            "3:",
            "mov qword ptr [{slot}], 0",
            slot = in(reg) RECOVERY_RIP.as_ptr(),
            tmp = out(reg) _,
            flt = out(reg) faulted,
            in("ecx") msr,
            inout("eax") 0u32 => lo,
            inout("edx") 0u32 => hi,
            options(nostack),
        );
    }
    if faulted == 0 { Ok(u64::from(hi) << 32 | u64::from(lo)) } else { Err(()) }
}

/// Read CR0.
#[must_use]
pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects (CPL 0 only; L1 runs at CPL 0).
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Read CR2.
#[must_use]
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Read CR4.
#[must_use]
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Read CR3.
#[must_use]
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Write CR0.
///
/// # Safety
/// The new value must keep L1 running: protected mode and paging on, and only bits the CPU
/// supports (SDM 2.5).
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: per the caller's contract.
    unsafe { asm!("mov cr0, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Write CR4.
///
/// # Safety
/// The new value must keep L1 running (PAE on in long mode) and set only supported bits.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: per the caller's contract.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// WRMSR.
///
/// # Safety
/// The MSR must exist and accept `value`, and writing it must not break L1.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags));
    }
}

/// IA32_EFER.
pub const MSR_EFER: u32 = 0xC000_0080;
