//! Why L2 stopped, as the run loop sees it: [`Exit`], one kind per handler in
//! [`crate::exits`], decoded by the vendor layer ([`crate::vcpu::Vcpu::run`]).
//!
//! The common kinds carry their facts in a vendor-neutral form. Where the ABI already has an
//! encoding of those facts (the I/O qualification of SDM Table 28-5, the EPT-violation
//! qualification of Table 28-7), the kind keeps that encoding, and another vendor translates
//! into it (AMD's IOIO EXITINFO1 and NPF error code carry the same facts): the payload report
//! records it as is.

use nestbench_abi::vmx::{ExitReason, IoInstructionInfo, IoQualification};

/// An L2 exit, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// IN, OUT, INS, OUTS.
    Io(IoQualification),
    /// HLT.
    Hlt,
    /// CPUID (leaf and sub-leaf in L2's EAX and ECX).
    Cpuid,
    /// RDMSR of `msr` (L2's ECX).
    MsrRead {
        /// The MSR.
        msr: u32,
    },
    /// WRMSR of `value` (L2's EDX:EAX) to `msr` (L2's ECX).
    MsrWrite {
        /// The MSR.
        msr: u32,
        /// The value.
        value: u64,
    },
    /// A hypercall instruction (VMCALL; AMD: VMMCALL).
    Hypercall,
    /// An access L2's nested paging does not allow (VMX: EPT violation; AMD: nested page
    /// fault).
    NestedPageFault(NestedPageFault),
    /// L2 triple-faulted (AMD: shutdown).
    TripleFault,
    /// VMX only: EPT misconfiguration (SDM 29.3.3.1) at guest-physical `gpa`.
    EptMisconfig {
        /// The guest-physical address whose translation hit the entry.
        gpa: u64,
    },
    /// MOV to or from a control register.
    ControlRegister(ControlRegister),
    /// VMX only: the VMX-preemption timer expired (SDM 26.5.1).
    PreemptionTimer,
    /// VMX only: interrupt window (SDM 26.7.5).
    InterruptWindow,
    /// Anything else, with the vendor's raw exit code (VMX: the full exit-reason field, bit 31
    /// set for a VM-entry failure).
    Other(u32),
}

impl Exit {
    /// The exit as the payload report counts and records it: the ABI's exit-reason number
    /// ([`ExitReason`]), the report's vocabulary on every vendor.
    #[inline(always)]
    #[must_use]
    pub const fn report_reason(&self) -> u32 {
        (match self {
            Self::Io(_) => ExitReason::IoInstruction,
            Self::Hlt => ExitReason::Hlt,
            Self::Cpuid => ExitReason::Cpuid,
            Self::MsrRead { .. } => ExitReason::Rdmsr,
            Self::MsrWrite { .. } => ExitReason::Wrmsr,
            Self::Hypercall => ExitReason::Vmcall,
            Self::NestedPageFault(_) => ExitReason::EptViolation,
            Self::TripleFault => ExitReason::TripleFault,
            Self::EptMisconfig { .. } => ExitReason::EptMisconfiguration,
            Self::ControlRegister(_) => ExitReason::ControlRegisterAccess,
            Self::PreemptionTimer => ExitReason::PreemptionTimer,
            Self::InterruptWindow => ExitReason::InterruptWindow,
            Self::Other(raw) => return *raw,
        }) as u32
    }
}

/// A MOV to or from a control register (VMX: the qualification of SDM 28.2.1, Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlRegister {
    /// The control register.
    pub cr: u8,
    /// MOV to CR (`true`) or MOV from CR.
    pub load: bool,
    /// The general-purpose register (0 = RAX ... 15 = R15, as instructions encode it).
    pub gpr: u8,
}

impl ControlRegister {
    /// Table 28-3: bits 3:0 the control register, 5:4 the access type (0 = MOV to CR, 1 = MOV
    /// from CR), 11:8 the register.
    #[must_use]
    pub const fn qualification(&self) -> u64 {
        (self.cr as u64 & 0xF) | if self.load { 0 } else { 1 << 4 } | (self.gpr as u64 & 0xF) << 8
    }

    /// The access a qualification describes; `None` for CLTS and LMSW (access types 2, 3).
    #[must_use]
    pub const fn from_qualification(q: u64) -> Option<Self> {
        let load = match (q >> 4) & 3 {
            0 => true,
            1 => false,
            _ => return None,
        };
        Some(Self { cr: (q & 0xF) as u8, load, gpr: ((q >> 8) & 0xF) as u8 })
    }
}

/// A nested page fault: the access, where, and what the nested paging allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestedPageFault {
    /// L2-physical address accessed.
    pub gpa: u64,
    /// L2-linear address accessed, 0 when there is none (qualification bit 7 clear).
    pub linear: u64,
    /// The access and the permissions found, in the encoding of SDM Table 28-7
    /// (`nestbench_abi::ept::violation`).
    pub qualification: u64,
}

/// What INS/OUTS need beyond the [`IoQualification`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringIo {
    /// Address size and segment, in the encoding of SDM Table 28-8 (VM-exit instruction
    /// information for INS/OUTS).
    pub info: IoInstructionInfo,
    /// The linear address of the memory operand.
    pub linear: u64,
}
