//! Structured reports from L1 to L0 (hypercalls `Report` and `Exception`).

abi_enum! {
    /// Which structure a `Report` hypercall carries.
    pub enum ReportKind: u64 {
        /// A [`ProbeReport`].
        Probe = 1,
        /// A [`crate::payload::PayloadReport`].
        PayloadRun = 2,
        /// A [`Verdict`] of a must-fail scenario.
        Verdict = 3,
        /// A [`crate::vmentry::CaseCapabilities`]: which parts of a VM-entry case's VMCS the
        /// engine's capability MSRs do not allow (sent before the case's steps run).
        CaseCapabilities = 4,
    }
}

/// The VMX capability MSRs L1 probes, IA32_VMX_BASIC (0x480) through IA32_VMX_VMFUNC (0x491)
/// (Intel SDM Vol. 4, Table 2-2; Vol. 3D, Appendix A).
pub const VMX_MSR_FIRST: u32 = 0x480;
/// Number of MSRs probed, 0x480..=0x491.
pub const VMX_MSR_COUNT: usize = 18;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2FF;
/// IA32_FEATURE_CONTROL.
pub const MSR_FEATURE_CONTROL: u32 = 0x3A;

abi_enum! {
    /// How one MSR read went.
    pub enum MsrStatus: u32 {
        /// RDMSR returned `value`.
        Ok = 0,
        /// RDMSR raised #GP (the MSR does not exist for this vCPU).
        GeneralProtection = 1,
        /// Not attempted.
        NotRead = 2,
    }
}

/// One MSR as L1 read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsrProbe {
    /// MSR index.
    pub index: u32,
    /// A [`MsrStatus`].
    pub status: u32,
    /// The value when `status` is `Ok`.
    pub value: u64,
}

const _: () = assert!(size_of::<MsrProbe>() == 16);

/// What L1 found about its CPU. Integer-only, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeReport {
    /// CPUID.0:EAX.
    pub max_basic_leaf: u32,
    /// CPUID.1:EAX (family/model/stepping).
    pub cpuid1_eax: u32,
    /// CPUID.1:ECX (VMX is bit 5, hypervisor bit 31).
    pub cpuid1_ecx: u32,
    /// CPUID.1:EDX.
    pub cpuid1_edx: u32,
    /// CPUID.8000_0001:ECX (SVM is bit 2).
    pub ext1_ecx: u32,
    /// CPUID.4000_0000:EAX, the highest hypervisor leaf.
    pub hv_max_leaf: u32,
    /// CPUID.0:EBX,EDX,ECX vendor string.
    pub vendor: [u8; 12],
    /// CPUID.4000_0000:EBX,ECX,EDX hypervisor signature.
    pub hv_signature: [u8; 12],
    /// CPUID.4000_0001:EAX, L0's ABI version.
    pub hv_abi_version: u32,
    /// CPUID.4000_0001:EBX, L0's feature bits.
    pub hv_features: u32,
    /// CPUID.4000_0001:ECX, the hypercall port.
    pub hv_hypercall_port: u32,
    /// Reserved, zero.
    pub reserved0: u32,
    /// CR0 as L1 runs.
    pub cr0: u64,
    /// CR4 as L1 runs.
    pub cr4: u64,
    /// IA32_EFER as L1 runs.
    pub efer: u64,
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def_type: MsrProbe,
    /// IA32_FEATURE_CONTROL.
    pub feature_control: MsrProbe,
    /// IA32_VMX_BASIC .. IA32_VMX_VMFUNC, in index order.
    pub vmx_msrs: [MsrProbe; VMX_MSR_COUNT],
}

const _: () = assert!(size_of::<ProbeReport>() == 88 + 16 * (2 + VMX_MSR_COUNT));

// SAFETY: `ProbeReport` is `#[repr(C)]`, integers only, and the assertion of its size next to
// this implementation rules out padding.
unsafe impl crate::Pod for ProbeReport {}

/// An exception L1 did not expect, as its IDT stub saw it. Integer-only, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExceptionReport {
    /// The vector (0-31).
    pub vector: u64,
    /// The error code the CPU pushed, or 0 for vectors without one.
    pub error_code: u64,
    /// RIP of the faulting instruction (or the next one, for traps).
    pub rip: u64,
    /// CS at the fault.
    pub cs: u64,
    /// RFLAGS at the fault.
    pub rflags: u64,
    /// RSP at the fault.
    pub rsp: u64,
    /// CR2 (the faulting linear address for #PF).
    pub cr2: u64,
    /// RAX, RBX, RCX, RDX, RSI, RDI, RBP, R8-R15 at the fault.
    pub gprs: [u64; 15],
}

const _: () = assert!(size_of::<ExceptionReport>() == 8 * 22);

// SAFETY: `ExceptionReport` is `#[repr(C)]`, integers only, and the assertion of its size next to
// this implementation rules out padding.
unsafe impl crate::Pod for ExceptionReport {}

/// x86 exception mnemonics by vector (Intel SDM Vol. 3A, Table 6-1).
#[must_use]
pub fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF",
        "reserved", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "reserved", "reserved", "reserved", "reserved",
        "reserved", "reserved", "#HV", "#VC", "#SX", "reserved",
    ];
    usize::try_from(vector).ok().and_then(|v| NAMES.get(v)).copied().unwrap_or("unknown")
}

abi_enum! {
    /// How a VMX instruction under test ended.
    pub enum VerdictKind: u32 {
        /// The entry succeeded; `exit_reason` is the first exit's.
        Entered = 0,
        /// VMfailInvalid.
        FailInvalid = 1,
        /// VMfailValid; `error` is the VM-instruction error.
        FailValid = 2,
        /// A VM exit for a failed entry; `exit_reason` has bit 31 set.
        EntryFailure = 3,
        /// A VMX instruction other than VM entry (VMPTRLD, VMWRITE, ...) succeeded: the
        /// engine advertises a capability that makes the scenario's failure not happen
        /// (IA32_VMX_MISC[29] for a VMWRITE to a read-only field).
        Succeeded = 4,
        /// The case needs a capability the engine does not advertise: `error` holds the
        /// missing [`crate::vmentry::need`] bits; nothing was executed.
        Skipped = 5,
    }
}

/// What L1 saw when it executed the instruction of a must-fail scenario. Integer-only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The [`Scenario`](crate::boot::Scenario) it was for.
    pub scenario: u32,
    /// A [`VerdictKind`].
    pub kind: u32,
    /// VM-instruction error number (FailValid).
    pub error: u32,
    /// Exit reason (Entered, EntryFailure).
    pub exit_reason: u32,
    /// Exit qualification (EntryFailure).
    pub qualification: u64,
}

const _: () = assert!(size_of::<Verdict>() == 24);
// SAFETY: `Verdict` is `#[repr(C)]`, integers only, and the assertion of its size next to
// this implementation rules out padding.
unsafe impl crate::Pod for Verdict {}
