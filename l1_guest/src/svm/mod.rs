//! L1's SVM backend (AMD64 APM Vol. 2, chapter 15 "Secure Virtual Machine"): the VMCB
//! ([`vmcb`]), its contents and the permission maps ([`setup`]), the vCPU the run loop drives
//! ([`vcpu`]: VMRUN, #VMEXIT decode into [`crate::exit::Exit`]) and the host-testable
//! decoding ([`decode`]).
//!
//! The run loop ([`crate::exits::run_loop`]) and the handlers of the common exits are the
//! VMX ones: I/O, HLT, CPUID, RDMSR/WRMSR, VMMCALL (the hypercall kind), nested page faults
//! (NPT12 is built by the EPT builder in its NPT format, [`crate::ept_builder::Format`]) and
//! shutdown; the interrupt window is SVM's VINTR intercept ([`window`]). What is VMX-only
//! (EPT misconfiguration, the preemption timer, CR3 exiting, VMX event injection) is refused
//! before L2 starts, naming the set-up.

pub mod decode;
pub mod setup;
pub mod vcpu;
pub mod vmcb;
pub mod window;

use nestbench_abi::cr;
use nestbench_abi::svm::{MSR_VM_CR, MSR_VM_HSAVE_PA, VM_CR_SVMDIS, features};

use crate::x86;

/// CPUID 8000_0001h ECX.SVM (APM 15.4).
pub const CPUID_EXT1_ECX_SVM: u32 = nestbench_abi::cpuid::CPUID_EXT1_ECX_SVM;

/// Whether CPUID says this CPU has SVM (8000_0001h ECX bit 2; the extended leaves reach it).
#[must_use]
pub fn offered() -> bool {
    x86::cpuid(0x8000_0000).eax >= 0x8000_0001 && x86::cpuid(0x8000_0001).ecx & CPUID_EXT1_ECX_SVM != 0
}

/// CPUID 8000_000Ah EDX: the SVM features (0 where the leaf is absent).
#[must_use]
pub fn feature_bits() -> u32 {
    if x86::cpuid(0x8000_0000).eax >= 0x8000_000A { x86::cpuid(0x8000_000A).edx } else { 0 }
}

/// Why SVM cannot be enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnableError {
    /// VM_CR.SVMDIS is set (15.30.1): the firmware disabled SVM.
    Disabled,
    /// No nested paging (CPUID 8000_000Ah EDX bit 0): L1 needs NPT for L2's memory.
    NoNestedPaging,
}

impl core::fmt::Display for EnableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Disabled => "VM_CR.SVMDIS is set: SVM is disabled (APM 15.30.1)",
            Self::NoNestedPaging => "the CPU offers SVM without nested paging (CPUID 8000_000Ah EDX.NP): L1 needs NPT",
        })
    }
}

/// Enable SVM (15.4): EFER.SVME, then VM_HSAVE_PA = `hsave` (a zeroed page L1 owns: VMRUN
/// saves L1's state there, 15.30.4). Returns the features the backend uses.
pub fn enable(hsave: u64) -> Result<vcpu::Features, EnableError> {
    if x86::rdmsr_safe(MSR_VM_CR).unwrap_or(0) & VM_CR_SVMDIS != 0 {
        return Err(EnableError::Disabled);
    }
    let f = feature_bits();
    if f & features::NP == 0 {
        return Err(EnableError::NoNestedPaging);
    }
    let efer = x86::rdmsr_safe(x86::MSR_EFER).unwrap_or(0);
    // SAFETY: setting EFER.SVME on a CPU that offers SVM and has it enabled (VM_CR checked)
    // only makes the SVM instructions available; VM_HSAVE_PA takes a page-aligned physical
    // address of a page L1 owns.
    unsafe {
        x86::wrmsr(x86::MSR_EFER, efer | cr::EFER_SVME);
        x86::wrmsr(MSR_VM_HSAVE_PA, hsave);
    }
    Ok(vcpu::Features { nrips: f & features::NRIPS != 0, vmcb_clean: f & features::VMCB_CLEAN != 0 })
}

/// VMSAVE L1's own VMLOAD state (FS, GS, TR, LDTR, KernelGsBase, STAR/LSTAR/CSTAR/SFMASK,
/// SYSENTER) into the page at `pa` (15.5.2), for the VMLOAD after each #VMEXIT.
pub fn save_host_state(pa: u64) {
    // SAFETY: SVM is enabled (`enable`), `pa` is a page-aligned page L1 owns; VMSAVE writes
    // only that page's state-save fields.
    unsafe { core::arch::asm!("vmsave rax", in("rax") pa, options(nostack, preserves_flags)) };
}
