//! VMX architectural constants that L0 and L1 must agree on bit for bit: exit reasons, the
//! exit-reason field, VM-instruction error numbers, VM-entry-failure qualifications, the I/O
//! exit qualification and INS/OUTS instruction information, and the capability MSRs.
//!
//! L1 decodes these values from its VMCS; the soft engine's L0 *produces* them for L1 and
//! must report exactly what hardware reports. Every item quotes the Intel SDM section (and
//! table, in the numbering of the current Vol. 3 where chapter 25 is the VMCS, 27 VM entries,
//! 28 VM exits and 31 the VMX instruction reference) that defines it. Names and texts are
//! the SDM's, checked against KVM (`arch/x86/include/asm/vmx.h`, `uapi/asm/vmx.h`), Bochs
//! (`cpu/vmx.h`) and kvm-unit-tests (`x86/vmx.h`).
//!
//! Values from another level are never trusted: enums decode with `from_raw` (`None` for a
//! number this ABI does not define), and the bit-field newtypes accept any raw value and
//! decode each field on access.

use core::fmt;

/// The exit-reason table, one row per reason: variant = number, the SDM's name (Table C-1),
/// the kernel's name (`VMX_EXIT_REASONS` in arch/x86/include/uapi/asm/vmx.h), and whether the
/// kernel has that name (`false`: one of its style, where the kernel has none). The enum,
/// `ALL`, `name`, `kernel_name` and `kernel_names` all come from it: a reason is added in one
/// place.
macro_rules! exit_reasons {
    ($(#[$meta:meta])* pub enum $name:ident: $repr:ty {
        $($variant:ident = $value:expr, $sdm:literal, $kernel:literal, $kernels:literal;)*
    }) => {
        abi_enum! {
            $(#[$meta])*
            pub enum $name: $repr {
                $(#[doc = $sdm] $variant = $value,)*
            }
        }

        impl $name {
            /// Every defined basic exit reason, in numeric order.
            pub const ALL: [Self; [$(Self::$variant),*].len()] = [$(Self::$variant),*];

            /// The SDM's name for this exit reason (Table C-1, "Name" column).
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $sdm,)*
                }
            }

            /// The kernel's name for this exit reason: the string of `VMX_EXIT_REASONS` in
            /// arch/x86/include/uapi/asm/vmx.h, which the `kvm_exit` and `kvm_nested_vmexit*`
            /// tracepoints and `perf kvm stat` print (`IO_INSTRUCTION`, `EPT_VIOLATION`,
            /// `MSR_READ`). Every output of nestbench names exits by it, with
            /// [`name`](Self::name) (the SDM's) as a label. The reasons the kernel's table
            /// leaves out (SMIs, GETSEC, RSM, PCONFIG, SPP, LOADIWKEY, ENCLV, ENQCMD/ENQCMDS,
            /// SEAMCALL, the MSR-list and user-MSR instructions; see
            /// [`kernel_names`](Self::kernel_names)) get an identifier of the same style.
            #[must_use]
            pub const fn kernel_name(self) -> &'static str {
                match self {
                    $(Self::$variant => $kernel,)*
                }
            }

            /// Whether [`kernel_name`](Self::kernel_name) is the kernel's own (in
            /// `VMX_EXIT_REASONS`) rather than one nestbench made up in its style.
            #[must_use]
            pub const fn kernel_names(self) -> bool {
                match self {
                    $(Self::$variant => $kernels,)*
                }
            }
        }
    };
}

exit_reasons! {
    /// A basic exit reason: bits 15:0 of the exit-reason field (SDM Vol. 3D, Appendix C,
    /// Table C-1 "Basic Exit Reasons"). 35, 38, 42 and 71 are not used by the SDM. 84 and 85
    /// (RDMSR and WRMSRNS with an immediate operand, in Xen and a Bochs port) are left out until
    /// their SDM names are checked; they decode as `None`.
    pub enum ExitReason: u16 {
        ExceptionOrNmi = 0, "Exception or non-maskable interrupt (NMI)", "EXCEPTION_NMI", true;
        ExternalInterrupt = 1, "External interrupt", "EXTERNAL_INTERRUPT", true;
        TripleFault = 2, "Triple fault", "TRIPLE_FAULT", true;
        InitSignal = 3, "INIT signal", "INIT_SIGNAL", true;
        StartupIpi = 4, "Start-up IPI (SIPI)", "SIPI_SIGNAL", true;
        IoSmi = 5, "I/O system-management interrupt (SMI)", "IO_SMI", false;
        OtherSmi = 6, "Other SMI", "OTHER_SMI", false;
        InterruptWindow = 7, "Interrupt window", "INTERRUPT_WINDOW", true;
        NmiWindow = 8, "NMI window", "NMI_WINDOW", true;
        TaskSwitch = 9, "Task switch", "TASK_SWITCH", true;
        Cpuid = 10, "CPUID", "CPUID", true;
        Getsec = 11, "GETSEC", "GETSEC", false;
        Hlt = 12, "HLT", "HLT", true;
        Invd = 13, "INVD", "INVD", true;
        Invlpg = 14, "INVLPG", "INVLPG", true;
        Rdpmc = 15, "RDPMC", "RDPMC", true;
        Rdtsc = 16, "RDTSC", "RDTSC", true;
        Rsm = 17, "RSM", "RSM", false;
        Vmcall = 18, "VMCALL", "VMCALL", true;
        Vmclear = 19, "VMCLEAR", "VMCLEAR", true;
        Vmlaunch = 20, "VMLAUNCH", "VMLAUNCH", true;
        Vmptrld = 21, "VMPTRLD", "VMPTRLD", true;
        Vmptrst = 22, "VMPTRST", "VMPTRST", true;
        Vmread = 23, "VMREAD", "VMREAD", true;
        Vmresume = 24, "VMRESUME", "VMRESUME", true;
        Vmwrite = 25, "VMWRITE", "VMWRITE", true;
        Vmxoff = 26, "VMXOFF", "VMOFF", true;
        Vmxon = 27, "VMXON", "VMON", true;
        ControlRegisterAccess = 28, "Control-register accesses", "CR_ACCESS", true;
        MovDr = 29, "MOV DR", "DR_ACCESS", true;
        IoInstruction = 30, "I/O instruction", "IO_INSTRUCTION", true;
        Rdmsr = 31, "RDMSR", "MSR_READ", true;
        Wrmsr = 32, "WRMSR", "MSR_WRITE", true;
        EntryFailureGuestState = 33, "VM-entry failure due to invalid guest state", "INVALID_STATE", true;
        EntryFailureMsrLoading = 34, "VM-entry failure due to MSR loading", "MSR_LOAD_FAIL", true;
        Mwait = 36, "MWAIT", "MWAIT_INSTRUCTION", true;
        MonitorTrapFlag = 37, "Monitor trap flag", "MONITOR_TRAP_FLAG", true;
        Monitor = 39, "MONITOR", "MONITOR_INSTRUCTION", true;
        Pause = 40, "PAUSE", "PAUSE_INSTRUCTION", true;
        EntryFailureMachineCheck = 41, "VM-entry failure due to machine-check event", "MCE_DURING_VMENTRY", true;
        TprBelowThreshold = 43, "TPR below threshold", "TPR_BELOW_THRESHOLD", true;
        ApicAccess = 44, "APIC access", "APIC_ACCESS", true;
        VirtualizedEoi = 45, "Virtualized EOI", "EOI_INDUCED", true;
        GdtrIdtrAccess = 46, "Access to GDTR or IDTR", "GDTR_IDTR", true;
        LdtrTrAccess = 47, "Access to LDTR or TR", "LDTR_TR", true;
        EptViolation = 48, "EPT violation", "EPT_VIOLATION", true;
        EptMisconfiguration = 49, "EPT misconfiguration", "EPT_MISCONFIG", true;
        Invept = 50, "INVEPT", "INVEPT", true;
        Rdtscp = 51, "RDTSCP", "RDTSCP", true;
        PreemptionTimer = 52, "VMX-preemption timer expired", "PREEMPTION_TIMER", true;
        Invvpid = 53, "INVVPID", "INVVPID", true;
        Wbinvd = 54, "WBINVD or WBNOINVD", "WBINVD", true;
        Xsetbv = 55, "XSETBV", "XSETBV", true;
        ApicWrite = 56, "APIC write", "APIC_WRITE", true;
        Rdrand = 57, "RDRAND", "RDRAND", true;
        Invpcid = 58, "INVPCID", "INVPCID", true;
        Vmfunc = 59, "VMFUNC", "VMFUNC", true;
        Encls = 60, "ENCLS", "ENCLS", true;
        Rdseed = 61, "RDSEED", "RDSEED", true;
        PmlFull = 62, "Page-modification log full", "PML_FULL", true;
        Xsaves = 63, "XSAVES", "XSAVES", true;
        Xrstors = 64, "XRSTORS", "XRSTORS", true;
        Pconfig = 65, "PCONFIG", "PCONFIG", false;
        SppEvent = 66, "SPP-related event", "SPP_EVENT", false;
        Umwait = 67, "UMWAIT", "UMWAIT", true;
        Tpause = 68, "TPAUSE", "TPAUSE", true;
        Loadiwkey = 69, "LOADIWKEY", "LOADIWKEY", false;
        Enclv = 70, "ENCLV", "ENCLV", false;
        EnqcmdPasidFailure = 72, "ENQCMD PASID translation failure", "ENQCMD_PASID_FAILURE", false;
        EnqcmdsPasidFailure = 73, "ENQCMDS PASID translation failure", "ENQCMDS_PASID_FAILURE", false;
        BusLock = 74, "Bus lock", "BUS_LOCK", true;
        InstructionTimeout = 75, "Instruction timeout", "NOTIFY", true;
        Seamcall = 76, "SEAMCALL", "SEAMCALL", false;
        Tdcall = 77, "TDCALL", "TDCALL", true;
        Rdmsrlist = 78, "RDMSRLIST", "RDMSRLIST", false;
        Wrmsrlist = 79, "WRMSRLIST", "WRMSRLIST", false;
        Urdmsr = 80, "URDMSR", "URDMSR", false;
        Uwrmsr = 81, "UWRMSR", "UWRMSR", false;
    }
}

impl ExitReason {
    /// The reason whose [`kernel_name`](Self::kernel_name) or SDM [`name`](Self::name) is
    /// `s` (summaries written before kernel names keyed exits by the SDM's).
    #[must_use]
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.kernel_name() == s || r.name() == s)
    }

    /// Whether this reason is one a VM-entry failure reports (SDM 27.8: invalid guest state,
    /// MSR loading, machine-check event; the exit-reason field then has bit 31 set).
    #[must_use]
    pub const fn is_entry_failure(self) -> bool {
        matches!(self, Self::EntryFailureGuestState | Self::EntryFailureMsrLoading | Self::EntryFailureMachineCheck)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}

/// The full 32-bit exit-reason VMCS field (SDM 25.9.1, table "Format of Exit Reason"; how
/// VM exits fill it: SDM 28.2.1). Any raw value is representable; accessors decode fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct RawExitReason(u32);

impl RawExitReason {
    /// Bits 15:0: the basic exit reason.
    pub const BASIC_MASK: u32 = 0xFFFF;
    /// Bit 26: a bus lock was asserted before this VM exit (with the "bus-lock detection"
    /// control; Linux calls it `bus_lock_detected`).
    pub const BUS_LOCK_DETECTED: u32 = 1 << 26;
    /// Bit 27: the VM exit was incident to enclave mode.
    pub const ENCLAVE_MODE: u32 = 1 << 27;
    /// Bit 28: pending MTF VM exit (SMM VM exits only).
    pub const PENDING_MTF: u32 = 1 << 28;
    /// Bit 29: VM exit from VMX root operation (SMM VM exits only).
    pub const FROM_VMX_ROOT: u32 = 1 << 29;
    /// Bit 31: VM-entry failure (0 = true VM exit; 1 = VM-entry failure).
    pub const ENTRY_FAILURE: u32 = 1 << 31;

    /// Wrap a value read from the exit-reason field.
    #[must_use]
    pub const fn from_raw(v: u32) -> Self {
        Self(v)
    }

    /// The field's value.
    #[must_use]
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// The value a true VM exit for `reason` records (every other bit 0).
    #[must_use]
    pub const fn vm_exit(reason: ExitReason) -> Self {
        Self(reason as u32)
    }

    /// The value a VM-entry failure for `reason` records: basic reason | bit 31 (SDM 27.8).
    /// `None` for a reason that is not an entry-failure reason (33, 34 or 41).
    #[must_use]
    pub const fn vm_entry_failure(reason: ExitReason) -> Option<Self> {
        if reason.is_entry_failure() { Some(Self(reason as u32 | Self::ENTRY_FAILURE)) } else { None }
    }

    /// Bits 15:0, the basic exit reason as a number.
    #[must_use]
    pub const fn basic(self) -> u16 {
        (self.0 & Self::BASIC_MASK) as u16
    }

    /// The basic exit reason, or `None` for a number this ABI does not define.
    #[must_use]
    pub const fn reason(self) -> Option<ExitReason> {
        ExitReason::from_raw(self.basic())
    }

    /// Bit 31: this is a VM-entry failure, not a true VM exit.
    #[must_use]
    pub const fn entry_failure(self) -> bool {
        self.0 & Self::ENTRY_FAILURE != 0
    }

    /// Bit 26: bus lock detected.
    #[must_use]
    pub const fn bus_lock_detected(self) -> bool {
        self.0 & Self::BUS_LOCK_DETECTED != 0
    }

    /// Bit 27: the VM exit was incident to enclave mode.
    #[must_use]
    pub const fn enclave_mode(self) -> bool {
        self.0 & Self::ENCLAVE_MODE != 0
    }

    /// Bit 28: pending MTF VM exit.
    #[must_use]
    pub const fn pending_mtf(self) -> bool {
        self.0 & Self::PENDING_MTF != 0
    }

    /// Bit 29: VM exit from VMX root operation.
    #[must_use]
    pub const fn from_vmx_root(self) -> bool {
        self.0 & Self::FROM_VMX_ROOT != 0
    }
}

impl fmt::Display for RawExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entry_failure() {
            f.write_str("VM-entry failure: ")?;
        }
        match self.reason() {
            Some(r) => write!(f, "{r}")?,
            None => write!(f, "unknown exit reason {}", self.basic())?,
        }
        if self.0 & !(Self::BASIC_MASK | Self::ENTRY_FAILURE) != 0 {
            write!(f, " [field {:#010x}]", self.0)?;
        }
        Ok(())
    }
}

abi_enum! {
    /// VM-instruction error numbers: the value of the VM-instruction error field after a
    /// VMfailValid (SDM 31.4, Table 31-1 "VM-Instruction Error Numbers"). 14, 21 and 27 are
    /// not used by the SDM; 0 means no error is recorded.
    pub enum VmInstructionError: u32 {
        /// 1: VMCALL executed in VMX root operation.
        VmcallInRoot = 1,
        /// 2: VMCLEAR with invalid physical address.
        VmclearInvalidAddress = 2,
        /// 3: VMCLEAR with VMXON pointer.
        VmclearVmxonPointer = 3,
        /// 4: VMLAUNCH with non-clear VMCS.
        VmlaunchNonClear = 4,
        /// 5: VMRESUME with non-launched VMCS.
        VmresumeNonLaunched = 5,
        /// 6: VMRESUME after VMXOFF.
        VmresumeAfterVmxoff = 6,
        /// 7: VM entry with invalid control field(s).
        EntryInvalidControls = 7,
        /// 8: VM entry with invalid host-state field(s).
        EntryInvalidHostState = 8,
        /// 9: VMPTRLD with invalid physical address.
        VmptrldInvalidAddress = 9,
        /// 10: VMPTRLD with VMXON pointer.
        VmptrldVmxonPointer = 10,
        /// 11: VMPTRLD with incorrect VMCS revision identifier.
        VmptrldBadRevision = 11,
        /// 12: VMREAD/VMWRITE from/to unsupported VMCS component.
        UnsupportedComponent = 12,
        /// 13: VMWRITE to read-only VMCS component.
        VmwriteReadOnly = 13,
        /// 15: VMXON executed in VMX root operation.
        VmxonInRoot = 15,
        /// 16: VM entry with invalid executive-VMCS pointer.
        EntryInvalidExecutivePointer = 16,
        /// 17: VM entry with non-launched executive VMCS.
        EntryNonLaunchedExecutive = 17,
        /// 18: VM entry with executive-VMCS pointer not VMXON pointer.
        EntryExecutiveNotVmxon = 18,
        /// 19: VMCALL with non-clear VMCS.
        VmcallNonClear = 19,
        /// 20: VMCALL with invalid VM-exit control fields.
        VmcallInvalidExitControls = 20,
        /// 22: VMCALL with incorrect MSEG revision identifier.
        VmcallBadMsegRevision = 22,
        /// 23: VMXOFF under dual-monitor treatment of SMIs and SMM.
        VmxoffDualMonitor = 23,
        /// 24: VMCALL with invalid SMM-monitor features.
        VmcallInvalidSmmFeatures = 24,
        /// 25: VM entry with invalid VM-execution control fields in executive VMCS.
        EntryInvalidExecutiveControls = 25,
        /// 26: VM entry with events blocked by MOV SS.
        EntryMovSsBlocking = 26,
        /// 28: Invalid operand to INVEPT/INVVPID.
        InvalidInvOperand = 28,
    }
}

impl VmInstructionError {
    /// Every defined error number, in numeric order.
    pub const ALL: [Self; 25] = [
        Self::VmcallInRoot,
        Self::VmclearInvalidAddress,
        Self::VmclearVmxonPointer,
        Self::VmlaunchNonClear,
        Self::VmresumeNonLaunched,
        Self::VmresumeAfterVmxoff,
        Self::EntryInvalidControls,
        Self::EntryInvalidHostState,
        Self::VmptrldInvalidAddress,
        Self::VmptrldVmxonPointer,
        Self::VmptrldBadRevision,
        Self::UnsupportedComponent,
        Self::VmwriteReadOnly,
        Self::VmxonInRoot,
        Self::EntryInvalidExecutivePointer,
        Self::EntryNonLaunchedExecutive,
        Self::EntryExecutiveNotVmxon,
        Self::VmcallNonClear,
        Self::VmcallInvalidExitControls,
        Self::VmcallBadMsegRevision,
        Self::VmxoffDualMonitor,
        Self::VmcallInvalidSmmFeatures,
        Self::EntryInvalidExecutiveControls,
        Self::EntryMovSsBlocking,
        Self::InvalidInvOperand,
    ];

    /// The SDM's description (Table 31-1, "Description" column, parentheses and final
    /// periods as printed there).
    #[must_use]
    pub const fn description(self) -> &'static str {
        match self {
            Self::VmcallInRoot => "VMCALL executed in VMX root operation",
            Self::VmclearInvalidAddress => "VMCLEAR with invalid physical address",
            Self::VmclearVmxonPointer => "VMCLEAR with VMXON pointer",
            Self::VmlaunchNonClear => "VMLAUNCH with non-clear VMCS",
            Self::VmresumeNonLaunched => "VMRESUME with non-launched VMCS",
            Self::VmresumeAfterVmxoff => "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)",
            Self::EntryInvalidControls => "VM entry with invalid control field(s)",
            Self::EntryInvalidHostState => "VM entry with invalid host-state field(s)",
            Self::VmptrldInvalidAddress => "VMPTRLD with invalid physical address",
            Self::VmptrldVmxonPointer => "VMPTRLD with VMXON pointer",
            Self::VmptrldBadRevision => "VMPTRLD with incorrect VMCS revision identifier",
            Self::UnsupportedComponent => "VMREAD/VMWRITE from/to unsupported VMCS component",
            Self::VmwriteReadOnly => "VMWRITE to read-only VMCS component",
            Self::VmxonInRoot => "VMXON executed in VMX root operation",
            Self::EntryInvalidExecutivePointer => "VM entry with invalid executive-VMCS pointer",
            Self::EntryNonLaunchedExecutive => "VM entry with non-launched executive VMCS",
            Self::EntryExecutiveNotVmxon => {
                "VM entry with executive-VMCS pointer not VMXON pointer (when attempting to deactivate the \
                 dual-monitor treatment of SMIs and SMM)"
            }
            Self::VmcallNonClear => {
                "VMCALL with non-clear VMCS (when attempting to activate the dual-monitor treatment of SMIs and SMM)"
            }
            Self::VmcallInvalidExitControls => "VMCALL with invalid VM-exit control fields",
            Self::VmcallBadMsegRevision => {
                "VMCALL with incorrect MSEG revision identifier (when attempting to activate the dual-monitor \
                 treatment of SMIs and SMM)"
            }
            Self::VmxoffDualMonitor => "VMXOFF under dual-monitor treatment of SMIs and SMM",
            Self::VmcallInvalidSmmFeatures => {
                "VMCALL with invalid SMM-monitor features (when attempting to activate the dual-monitor treatment \
                 of SMIs and SMM)"
            }
            Self::EntryInvalidExecutiveControls => {
                "VM entry with invalid VM-execution control fields in executive VMCS (when attempting to return \
                 from SMM)"
            }
            Self::EntryMovSsBlocking => "VM entry with events blocked by MOV SS.",
            Self::InvalidInvOperand => "Invalid operand to INVEPT/INVVPID.",
        }
    }
}

impl fmt::Display for VmInstructionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VM-instruction error {}: {}", *self as u32, self.description())
    }
}

/// The interruption-information format shared by the VM-entry interruption-information,
/// VM-exit interruption-information and IDT-vectoring information fields (SDM 25.8.3, Table
/// 25-17; 25.9.2, Tables 25-19 and 25-20).
pub mod intr {
    /// Bits 7:0: the vector.
    pub const VECTOR: u32 = 0xFF;
    /// Bits 10:8: the interruption type.
    pub const TYPE_SHIFT: u32 = 8;
    /// Bit 11: deliver (or, on exits, valid) error code.
    pub const ERROR_CODE: u32 = 1 << 11;
    /// Bits 30:12 of the VM-entry field: reserved.
    pub const ENTRY_RESERVED: u32 = 0x7FFF_F000;
    /// Bit 31: valid.
    pub const VALID: u32 = 1 << 31;
    /// Type 0: external interrupt.
    pub const EXTERNAL_INTERRUPT: u32 = 0;
    /// Type 2: non-maskable interrupt.
    pub const NMI: u32 = 2;
    /// Type 3: hardware exception.
    pub const HARDWARE_EXCEPTION: u32 = 3;
    /// Type 4: software interrupt (INT n).
    pub const SOFTWARE_INTERRUPT: u32 = 4;
    /// Type 5: privileged software exception (INT1).
    pub const PRIVILEGED_SOFTWARE_EXCEPTION: u32 = 5;
    /// Type 6: software exception (INT3, INTO).
    pub const SOFTWARE_EXCEPTION: u32 = 6;
    /// Type 7: other event (pending MTF VM exit).
    pub const OTHER_EVENT: u32 = 7;

    /// The interruption type of `info`.
    #[must_use]
    pub const fn kind(info: u32) -> u32 {
        (info >> TYPE_SHIFT) & 7
    }

    /// An event of the types L1 injects and L0's soft engine delivers (external interrupt,
    /// NMI, hardware exception); software interrupts and exceptions are not among them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Event {
        /// Type 0, with its vector.
        ExternalInterrupt(u8),
        /// Type 2 (vector 2).
        Nmi,
        /// Type 3, with its vector and the error code it delivers.
        HardwareException {
            /// The vector (0-31).
            vector: u8,
            /// The error code, when the event delivers one (bit 11).
            error_code: Option<u32>,
        },
    }

    impl Event {
        /// The event a VM-entry interruption-information field `info` describes, with the
        /// VM-entry exception error code `error_code`: `None` when `info` is not valid or of
        /// another type.
        #[must_use]
        pub const fn decode(info: u32, error_code: u32) -> Option<Self> {
            if info & VALID == 0 {
                return None;
            }
            let vector = (info & VECTOR) as u8;
            match kind(info) {
                EXTERNAL_INTERRUPT => Some(Self::ExternalInterrupt(vector)),
                NMI => Some(Self::Nmi),
                HARDWARE_EXCEPTION => Some(Self::HardwareException {
                    vector,
                    error_code: if info & ERROR_CODE != 0 { Some(error_code) } else { None },
                }),
                _ => None,
            }
        }

        /// The VM-entry interruption-information field and exception error code that inject it.
        #[must_use]
        pub const fn encode(self) -> (u32, u32) {
            match self {
                Self::ExternalInterrupt(v) => (VALID | EXTERNAL_INTERRUPT << TYPE_SHIFT | v as u32, 0),
                Self::Nmi => (VALID | NMI << TYPE_SHIFT | 2, 0),
                Self::HardwareException { vector, error_code: None } => {
                    (VALID | HARDWARE_EXCEPTION << TYPE_SHIFT | vector as u32, 0)
                }
                Self::HardwareException { vector, error_code: Some(c) } => {
                    (VALID | ERROR_CODE | HARDWARE_EXCEPTION << TYPE_SHIFT | vector as u32, c)
                }
            }
        }

        /// The vector the event is delivered through.
        #[must_use]
        pub const fn vector(self) -> u8 {
            match self {
                Self::ExternalInterrupt(v) | Self::HardwareException { vector: v, .. } => v,
                Self::Nmi => 2,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn events_encode_and_decode_back() {
            for e in [
                Event::ExternalInterrupt(0x20),
                Event::Nmi,
                Event::HardwareException { vector: 6, error_code: None },
                Event::HardwareException { vector: 13, error_code: Some(0x18) },
            ] {
                let (info, code) = e.encode();
                assert_eq!(Event::decode(info, code), Some(e));
            }
            assert_eq!(Event::HardwareException { vector: 6, error_code: None }.encode().0, 0x8000_0306);
            assert_eq!(Event::decode(VALID | SOFTWARE_INTERRUPT << TYPE_SHIFT | 0x80, 0), None);
            assert_eq!(Event::decode(0x306, 0), None, "not valid");
        }
    }
}

/// Exit qualifications of a VM-entry failure (SDM 27.8 "VM-Entry Failures During or After
/// Loading Guest State"). For basic reason 33 (invalid guest state) the qualification is one
/// of the codes below; for 34 (MSR loading) it is the 1-based index of the failing entry in
/// the VM-entry MSR-load area ([`msr_load_failure`](crate::vmx::entry_failure::msr_load_failure)).
pub mod entry_failure {
    /// 0: "Default." Every failure of reason 33 without a more specific code.
    pub const DEFAULT: u64 = 0;
    /// 2: "Failure was due to a problem loading the PDPTRs."
    pub const PDPTE_LOAD: u64 = 2;
    /// 3: "Failure was due to an attempt to inject a non-maskable interrupt (NMI) into a guest
    /// that is blocking events through the STI blocking bit in the interruptibility-state
    /// field."
    pub const NMI_INJECTION_STI_BLOCKING: u64 = 3;
    /// 4: "Failure was due to an invalid VMCS link pointer."
    pub const INVALID_VMCS_LINK_POINTER: u64 = 4;

    /// The qualification of an entry failure due to MSR loading (reason 34) at `index`, the
    /// 0-based position of the entry in the VM-entry MSR-load area: the SDM counts from 1.
    #[must_use]
    pub const fn msr_load_failure(index: u32) -> u64 {
        index as u64 + 1
    }
}

/// The exit qualification of an I/O-instruction VM exit (SDM 28.2.1, Table 28-5 "Exit
/// Qualification for I/O Instructions"). Bits 15:7 and 63:32 are not defined and are 0 in
/// every value this type builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct IoQualification(u64);

impl IoQualification {
    /// Bits 2:0: size of access (0 = 1-byte, 1 = 2-byte, 3 = 4-byte; other values not used).
    pub const SIZE_MASK: u64 = 0b111;
    /// Bit 3: direction of the attempted access (0 = OUT, 1 = IN).
    pub const IN: u64 = 1 << 3;
    /// Bit 4: string instruction (0 = not string; 1 = string).
    pub const STRING: u64 = 1 << 4;
    /// Bit 5: REP prefixed (0 = not REP; 1 = REP).
    pub const REP: u64 = 1 << 5;
    /// Bit 6: operand encoding (0 = DX, 1 = immediate).
    pub const IMMEDIATE: u64 = 1 << 6;
    /// Bits 31:16: port number (as specified in DX or in an immediate operand).
    pub const PORT_SHIFT: u32 = 16;

    /// Build the qualification hardware records for an access of `size_bytes` (1, 2 or 4;
    /// `None` otherwise) to `port`.
    #[must_use]
    pub const fn new(size_bytes: u8, is_in: bool, string: bool, rep: bool, immediate: bool, port: u16) -> Option<Self> {
        let size = match size_bytes {
            1 => 0,
            2 => 1,
            4 => 3,
            _ => return None,
        };
        let mut v = size | (port as u64) << Self::PORT_SHIFT;
        if is_in {
            v |= Self::IN;
        }
        if string {
            v |= Self::STRING;
        }
        if rep {
            v |= Self::REP;
        }
        if immediate {
            v |= Self::IMMEDIATE;
        }
        Some(Self(v))
    }

    /// Wrap a value read from the exit-qualification field.
    #[must_use]
    pub const fn from_raw(v: u64) -> Self {
        Self(v)
    }

    /// The field's value.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The access size in bytes, or `None` for an encoding the SDM does not use (2, 4-7).
    #[must_use]
    pub const fn size_bytes(self) -> Option<u8> {
        match self.0 & Self::SIZE_MASK {
            0 => Some(1),
            1 => Some(2),
            3 => Some(4),
            _ => None,
        }
    }

    /// Bit 3: IN (or INS); `false` for OUT (or OUTS).
    #[must_use]
    pub const fn is_in(self) -> bool {
        self.0 & Self::IN != 0
    }

    /// Bit 4: INS or OUTS.
    #[must_use]
    pub const fn string(self) -> bool {
        self.0 & Self::STRING != 0
    }

    /// Bit 5: REP prefixed.
    #[must_use]
    pub const fn rep(self) -> bool {
        self.0 & Self::REP != 0
    }

    /// Bit 6: the port is an immediate operand (`false`: it is in DX).
    #[must_use]
    pub const fn immediate(self) -> bool {
        self.0 & Self::IMMEDIATE != 0
    }

    /// Bits 31:16: the port number.
    #[must_use]
    pub const fn port(self) -> u16 {
        (self.0 >> Self::PORT_SHIFT) as u16
    }
}

abi_enum! {
    /// Address size in VM-exit instruction information (SDM 28.2.5).
    pub enum AddressSize: u8 {
        /// 16-bit.
        Bits16 = 0,
        /// 32-bit.
        Bits32 = 1,
        /// 64-bit.
        Bits64 = 2,
    }
}

abi_enum! {
    /// Segment register in VM-exit instruction information (SDM 28.2.5).
    pub enum SegmentRegister: u8 {
        /// ES.
        Es = 0,
        /// CS.
        Cs = 1,
        /// SS.
        Ss = 2,
        /// DS.
        Ds = 3,
        /// FS.
        Fs = 4,
        /// GS.
        Gs = 5,
    }
}

/// The VM-exit instruction-information field of an INS/OUTS VM exit (SDM 28.2.5, table
/// "Format of the VM-Exit Instruction-Information Field as Used for INS and OUTS"). The
/// processor fills it only if IA32_VMX_BASIC bit 54 is 1 ([`VmxBasic::INS_OUTS_INFO`]). Bits
/// 6:0, 14:10 and 31:18 are undefined and 0 in every value this type builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct IoInstructionInfo(u32);

impl IoInstructionInfo {
    /// Bits 9:7: address size.
    pub const ADDRESS_SIZE_SHIFT: u32 = 7;
    /// Bits 17:15: segment register (undefined for INS, which always uses ES).
    pub const SEGMENT_SHIFT: u32 = 15;

    /// Build the field for an access with `address_size` through `segment`.
    #[must_use]
    pub const fn new(address_size: AddressSize, segment: SegmentRegister) -> Self {
        Self((address_size as u32) << Self::ADDRESS_SIZE_SHIFT | (segment as u32) << Self::SEGMENT_SHIFT)
    }

    /// Wrap a value read from the field.
    #[must_use]
    pub const fn from_raw(v: u32) -> Self {
        Self(v)
    }

    /// The field's value.
    #[must_use]
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Bits 9:7, or `None` for an encoding the SDM does not use (3-7).
    #[must_use]
    pub const fn address_size(self) -> Option<AddressSize> {
        AddressSize::from_raw(((self.0 >> Self::ADDRESS_SIZE_SHIFT) & 0b111) as u8)
    }

    /// Bits 17:15, or `None` for an encoding the SDM does not use (6, 7). Meaningless for INS.
    #[must_use]
    pub const fn segment(self) -> Option<SegmentRegister> {
        SegmentRegister::from_raw(((self.0 >> Self::SEGMENT_SHIFT) & 0b111) as u8)
    }
}

/// Indices of the VMX capability MSRs (SDM Vol. 3D, Appendix A; Vol. 4, Table 2-2).
pub mod msr {
    /// IA32_VMX_BASIC: basic VMX information (A.1, [`super::VmxBasic`]).
    pub const IA32_VMX_BASIC: u32 = 0x480;
    /// IA32_VMX_PINBASED_CTLS: allowed settings of the pin-based controls (A.3.1).
    pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
    /// IA32_VMX_PROCBASED_CTLS: primary processor-based controls (A.3.2).
    pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
    /// IA32_VMX_EXIT_CTLS: primary VM-exit controls (A.4.1).
    pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
    /// IA32_VMX_ENTRY_CTLS: VM-entry controls (A.5).
    pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
    /// IA32_VMX_MISC: miscellaneous data (A.6).
    pub const IA32_VMX_MISC: u32 = 0x485;
    /// IA32_VMX_CR0_FIXED0 (A.7).
    pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
    /// IA32_VMX_CR0_FIXED1 (A.7).
    pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
    /// IA32_VMX_CR4_FIXED0 (A.8).
    pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
    /// IA32_VMX_CR4_FIXED1 (A.8).
    pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
    /// IA32_VMX_VMCS_ENUM: highest VMCS field index (A.9).
    pub const IA32_VMX_VMCS_ENUM: u32 = 0x48A;
    /// IA32_VMX_PROCBASED_CTLS2: secondary processor-based controls (A.3.3).
    pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
    /// IA32_VMX_EPT_VPID_CAP: EPT and VPID capabilities (A.10).
    pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
    /// IA32_VMX_TRUE_PINBASED_CTLS (A.3.1; exists if IA32_VMX_BASIC bit 55 = 1).
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
    /// IA32_VMX_TRUE_PROCBASED_CTLS (A.3.2; exists if IA32_VMX_BASIC bit 55 = 1).
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
    /// IA32_VMX_TRUE_EXIT_CTLS (A.4.1; exists if IA32_VMX_BASIC bit 55 = 1).
    pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48F;
    /// IA32_VMX_TRUE_ENTRY_CTLS (A.5; exists if IA32_VMX_BASIC bit 55 = 1).
    pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
    /// IA32_VMX_VMFUNC: allowed VM functions (A.11).
    pub const IA32_VMX_VMFUNC: u32 = 0x491;
    /// IA32_VMX_PROCBASED_CTLS3: tertiary processor-based controls, allowed-1 settings of
    /// all 64 bits (A.3.4; exists if bit 49 of IA32_VMX_PROCBASED_CTLS, the allowed-1 of
    /// "activate tertiary controls", is 1).
    pub const IA32_VMX_PROCBASED_CTLS3: u32 = 0x492;
    /// IA32_VMX_EXIT_CTLS2: secondary VM-exit controls, allowed-1 settings of all 64 bits
    /// (A.4.2; exists if bit 63 of IA32_VMX_EXIT_CTLS, the allowed-1 of "activate secondary
    /// controls", is 1).
    pub const IA32_VMX_EXIT_CTLS2: u32 = 0x493;
}

/// IA32_VMX_BASIC (SDM Vol. 3D, Appendix A.1 "Basic VMX Information").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct VmxBasic(u64);

impl VmxBasic {
    /// Bits 30:0: VMCS revision identifier (bit 31 is always 0).
    pub const REVISION_MASK: u64 = 0x7FFF_FFFF;
    /// Bits 44:32: bytes to allocate for the VMXON region and any VMCS region (1..=4096).
    pub const REGION_SIZE_SHIFT: u32 = 32;
    /// Bit 48: VMXON, VMCS and related physical addresses are limited to 32 bits.
    pub const PHYS_ADDR_32BIT: u64 = 1 << 48;
    /// Bit 49: the dual-monitor treatment of SMIs and SMM is supported.
    pub const DUAL_MONITOR: u64 = 1 << 49;
    /// Bits 53:50: memory type for accessing the VMCS and related structures.
    pub const MEMORY_TYPE_SHIFT: u32 = 50;
    /// Bit 54: the processor reports information in the VM-exit instruction-information
    /// field on VM exits due to INS and OUTS ([`IoInstructionInfo`]).
    pub const INS_OUTS_INFO: u64 = 1 << 54;
    /// Bit 55: any VMX control that defaults to 1 may be cleared to 0; the TRUE capability
    /// MSRs (0x48D-0x490) exist.
    pub const TRUE_CONTROLS: u64 = 1 << 55;
    /// Bit 56: software may use VM entry to deliver a hardware exception with or without an
    /// error code, regardless of vector (no error-code consistency check; Linux calls it
    /// `VMX_BASIC_NO_HW_ERROR_CODE_CC`).
    pub const NO_ERROR_CODE_CHECK: u64 = 1 << 56;
    /// The single-bit capabilities [`VmxBasic::new`] accepts in `flags`.
    pub const FLAGS: u64 = Self::PHYS_ADDR_32BIT
        | Self::DUAL_MONITOR
        | Self::INS_OUTS_INFO
        | Self::TRUE_CONTROLS
        | Self::NO_ERROR_CODE_CHECK;
    /// Memory type uncacheable (UC).
    pub const MEMORY_TYPE_UC: u8 = 0;
    /// Memory type write-back (WB).
    pub const MEMORY_TYPE_WB: u8 = 6;

    /// Build the value L0 advertises. `None` if the revision identifier uses bit 31, the
    /// region size is not in 1..=4096, the memory type is neither UC nor WB (the only ones
    /// A.1 defines), or `flags` has a bit outside [`VmxBasic::FLAGS`].
    #[must_use]
    pub const fn new(revision_id: u32, region_size: u16, memory_type: u8, flags: u64) -> Option<Self> {
        if revision_id as u64 & !Self::REVISION_MASK != 0
            || region_size == 0
            || region_size > 4096
            || (memory_type != Self::MEMORY_TYPE_UC && memory_type != Self::MEMORY_TYPE_WB)
            || flags & !Self::FLAGS != 0
        {
            return None;
        }
        Some(Self(
            revision_id as u64
                | (region_size as u64) << Self::REGION_SIZE_SHIFT
                | (memory_type as u64) << Self::MEMORY_TYPE_SHIFT
                | flags,
        ))
    }

    /// Wrap a value read from the MSR.
    #[must_use]
    pub const fn from_raw(v: u64) -> Self {
        Self(v)
    }

    /// The MSR's value.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Bits 30:0: the VMCS revision identifier.
    #[must_use]
    pub const fn revision_id(self) -> u32 {
        (self.0 & Self::REVISION_MASK) as u32
    }

    /// Bits 44:32: the VMXON/VMCS region size in bytes.
    #[must_use]
    pub const fn region_size(self) -> u16 {
        ((self.0 >> Self::REGION_SIZE_SHIFT) & 0x1FFF) as u16
    }

    /// Bit 48: physical addresses limited to 32 bits.
    #[must_use]
    pub const fn phys_addr_32bit(self) -> bool {
        self.0 & Self::PHYS_ADDR_32BIT != 0
    }

    /// Bit 49: dual-monitor treatment of SMIs and SMM supported.
    #[must_use]
    pub const fn dual_monitor(self) -> bool {
        self.0 & Self::DUAL_MONITOR != 0
    }

    /// Bits 53:50: the memory type ([`VmxBasic::MEMORY_TYPE_UC`] or
    /// [`VmxBasic::MEMORY_TYPE_WB`]; other values are not used).
    #[must_use]
    pub const fn memory_type(self) -> u8 {
        ((self.0 >> Self::MEMORY_TYPE_SHIFT) & 0xF) as u8
    }

    /// Bit 54: INS/OUTS instruction information reported.
    #[must_use]
    pub const fn ins_outs_info(self) -> bool {
        self.0 & Self::INS_OUTS_INFO != 0
    }

    /// Bit 55: the TRUE capability MSRs exist.
    #[must_use]
    pub const fn true_controls(self) -> bool {
        self.0 & Self::TRUE_CONTROLS != 0
    }

    /// Bit 56: no error-code consistency check on event injection.
    #[must_use]
    pub const fn no_error_code_check(self) -> bool {
        self.0 & Self::NO_ERROR_CODE_CHECK != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_are_distinct_and_the_kernels_where_it_has_them() {
        // A few rows of VMX_EXIT_REASONS (arch/x86/include/uapi/asm/vmx.h), as the kvm_exit
        // tracepoint prints them.
        for (r, k) in [
            (ExitReason::IoInstruction, "IO_INSTRUCTION"),
            (ExitReason::EptViolation, "EPT_VIOLATION"),
            (ExitReason::Rdmsr, "MSR_READ"),
            (ExitReason::Wrmsr, "MSR_WRITE"),
            (ExitReason::Vmxon, "VMON"),
            (ExitReason::EntryFailureGuestState, "INVALID_STATE"),
            (ExitReason::InterruptWindow, "INTERRUPT_WINDOW"),
        ] {
            assert_eq!(r.kernel_name(), k);
            assert!(r.kernel_names());
        }
        assert!(!ExitReason::Getsec.kernel_names());
        for (i, a) in ExitReason::ALL.iter().enumerate() {
            assert!(a.kernel_name().bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
            assert!(ExitReason::ALL[i + 1..].iter().all(|b| b.kernel_name() != a.kernel_name()), "{a}");
            assert_eq!(ExitReason::from_name(a.kernel_name()), Some(*a));
            assert_eq!(ExitReason::from_name(a.name()), Some(*a));
        }
        assert_eq!(ExitReason::from_name("io_out"), None);
    }

    #[test]
    fn every_exit_reason_round_trips_and_all_lists_exactly_the_defined_ones() {
        let mut defined = 0;
        for v in 0..=u16::MAX {
            if let Some(r) = ExitReason::from_raw(v) {
                assert_eq!(r as u16, v);
                assert!(ExitReason::ALL.contains(&r), "{r} missing from ALL");
                defined += 1;
            }
        }
        assert_eq!(defined, ExitReason::ALL.len());
        assert!(ExitReason::ALL.windows(2).all(|w| (w[0] as u16) < (w[1] as u16)), "ALL is in numeric order");
        for unused in [35, 38, 42, 71, 82, 0xFFFF] {
            assert_eq!(ExitReason::from_raw(unused), None, "{unused}");
        }
    }

    #[test]
    fn exit_reason_numbers_match_the_sdm() {
        // Appendix C, Table C-1.
        let table: [(ExitReason, u16, &str); 18] = [
            (ExitReason::ExceptionOrNmi, 0, "Exception or non-maskable interrupt (NMI)"),
            (ExitReason::ExternalInterrupt, 1, "External interrupt"),
            (ExitReason::TripleFault, 2, "Triple fault"),
            (ExitReason::InterruptWindow, 7, "Interrupt window"),
            (ExitReason::Cpuid, 10, "CPUID"),
            (ExitReason::Hlt, 12, "HLT"),
            (ExitReason::Vmcall, 18, "VMCALL"),
            (ExitReason::ControlRegisterAccess, 28, "Control-register accesses"),
            (ExitReason::IoInstruction, 30, "I/O instruction"),
            (ExitReason::Rdmsr, 31, "RDMSR"),
            (ExitReason::Wrmsr, 32, "WRMSR"),
            (ExitReason::EntryFailureGuestState, 33, "VM-entry failure due to invalid guest state"),
            (ExitReason::EntryFailureMsrLoading, 34, "VM-entry failure due to MSR loading"),
            (ExitReason::EntryFailureMachineCheck, 41, "VM-entry failure due to machine-check event"),
            (ExitReason::EptViolation, 48, "EPT violation"),
            (ExitReason::EptMisconfiguration, 49, "EPT misconfiguration"),
            (ExitReason::PreemptionTimer, 52, "VMX-preemption timer expired"),
            (ExitReason::Tdcall, 77, "TDCALL"),
        ];
        for (r, n, name) in table {
            assert_eq!(r as u16, n);
            assert_eq!(r.name(), name);
        }
        assert_eq!(ExitReason::Uwrmsr as u16, 81);
        let mut s = FmtBuf::default();
        core::fmt::write(&mut s, format_args!("{}", ExitReason::IoInstruction)).unwrap();
        assert_eq!(s.as_str(), "I/O instruction (30)");
    }

    #[test]
    fn only_33_34_and_41_are_entry_failure_reasons() {
        let failures: [ExitReason; 3] = [
            ExitReason::EntryFailureGuestState,
            ExitReason::EntryFailureMsrLoading,
            ExitReason::EntryFailureMachineCheck,
        ];
        for r in ExitReason::ALL {
            assert_eq!(r.is_entry_failure(), failures.contains(&r), "{r}");
        }
    }

    #[test]
    fn raw_exit_reason_encodes_and_decodes_the_sdm_bits() {
        let f = RawExitReason::vm_entry_failure(ExitReason::EntryFailureGuestState).unwrap();
        assert_eq!(f.raw(), 0x8000_0021);
        assert!(f.entry_failure());
        assert_eq!(f.basic(), 33);
        assert_eq!(f.reason(), Some(ExitReason::EntryFailureGuestState));
        assert_eq!(RawExitReason::vm_entry_failure(ExitReason::EntryFailureMsrLoading).unwrap().raw(), 0x8000_0022);
        assert_eq!(RawExitReason::vm_entry_failure(ExitReason::IoInstruction), None);

        let e = RawExitReason::vm_exit(ExitReason::EptViolation);
        assert_eq!(e.raw(), 48);
        assert!(!e.entry_failure() && !e.enclave_mode() && !e.pending_mtf() && !e.from_vmx_root());

        let r = RawExitReason::from_raw(1 << 26 | 1 << 27 | 1 << 28 | 1 << 29 | 0xABCD);
        assert!(r.bus_lock_detected() && r.enclave_mode() && r.pending_mtf() && r.from_vmx_root());
        assert!(!r.entry_failure());
        assert_eq!(r.basic(), 0xABCD);
        assert_eq!(r.reason(), None);
    }

    #[test]
    fn every_instruction_error_round_trips_and_all_lists_exactly_the_defined_ones() {
        let mut defined = 0;
        for v in 0..=64 {
            if let Some(e) = VmInstructionError::from_raw(v) {
                assert_eq!(e as u32, v);
                assert!(VmInstructionError::ALL.contains(&e), "{e} missing from ALL");
                defined += 1;
            }
        }
        assert_eq!(defined, VmInstructionError::ALL.len());
        for unused in [0, 14, 21, 27, 29, u32::MAX] {
            assert_eq!(VmInstructionError::from_raw(unused), None, "{unused}");
        }
    }

    #[test]
    fn instruction_error_numbers_and_texts_match_table_31_1() {
        let table: [(VmInstructionError, u32, &str); 8] = [
            (VmInstructionError::VmcallInRoot, 1, "VMCALL executed in VMX root operation"),
            (VmInstructionError::VmlaunchNonClear, 4, "VMLAUNCH with non-clear VMCS"),
            (VmInstructionError::VmresumeNonLaunched, 5, "VMRESUME with non-launched VMCS"),
            (VmInstructionError::EntryInvalidControls, 7, "VM entry with invalid control field(s)"),
            (VmInstructionError::EntryInvalidHostState, 8, "VM entry with invalid host-state field(s)"),
            (VmInstructionError::UnsupportedComponent, 12, "VMREAD/VMWRITE from/to unsupported VMCS component"),
            (VmInstructionError::VmwriteReadOnly, 13, "VMWRITE to read-only VMCS component"),
            (VmInstructionError::InvalidInvOperand, 28, "Invalid operand to INVEPT/INVVPID."),
        ];
        for (e, n, text) in table {
            assert_eq!(e as u32, n);
            assert_eq!(e.description(), text);
        }
        let mut s = FmtBuf::default();
        core::fmt::write(&mut s, format_args!("{}", VmInstructionError::VmwriteReadOnly)).unwrap();
        assert_eq!(s.as_str(), "VM-instruction error 13: VMWRITE to read-only VMCS component");
    }

    #[test]
    fn entry_failure_qualifications() {
        assert_eq!(entry_failure::DEFAULT, 0);
        assert_eq!(entry_failure::PDPTE_LOAD, 2);
        assert_eq!(entry_failure::NMI_INJECTION_STI_BLOCKING, 3);
        assert_eq!(entry_failure::INVALID_VMCS_LINK_POINTER, 4);
        assert_eq!(entry_failure::msr_load_failure(0), 1, "the SDM counts MSR-load entries from 1");
    }

    #[test]
    fn io_qualification_encodes_the_table_28_5_bits() {
        // out dx, al with DX = 0x510: 1 byte, OUT, not string, DX encoding.
        let q = IoQualification::new(1, false, false, false, false, 0x510).unwrap();
        assert_eq!(q.raw(), 0x0510_0000);
        // out dx, eax (the nestbench hypercall): size code 3.
        assert_eq!(IoQualification::new(4, false, false, false, false, 0x510).unwrap().raw(), 0x0510_0003);
        // rep insw with DX = 0x1F0: size code 1, IN, string, REP.
        let q = IoQualification::new(2, true, true, true, false, 0x1F0).unwrap();
        assert_eq!(q.raw(), 0x01F0_0039);
        assert_eq!(
            (q.size_bytes(), q.is_in(), q.string(), q.rep(), q.immediate(), q.port()),
            (Some(2), true, true, true, false, 0x1F0)
        );
        // in eax, 0x60: immediate operand.
        let q = IoQualification::new(4, true, false, false, true, 0x60).unwrap();
        assert_eq!(q.raw(), 0x0060_004B);
        assert!(q.immediate() && q.is_in() && !q.string());
        // outsb: string without REP.
        assert_eq!(IoQualification::new(1, false, true, false, false, 0x3F8).unwrap().raw(), 0x03F8_0010);

        for bad in [0, 3, 5, 8, 255] {
            assert_eq!(IoQualification::new(bad, false, false, false, false, 0), None, "{bad}");
        }
        assert_eq!(IoQualification::from_raw(2).size_bytes(), None, "size code 2 is not used");
        assert_eq!(IoQualification::from_raw(0xFFFF_0000).port(), 0xFFFF);
    }

    #[test]
    fn ins_outs_instruction_info_bits() {
        let i = IoInstructionInfo::new(AddressSize::Bits64, SegmentRegister::Ds);
        assert_eq!(i.raw(), 2 << 7 | 3 << 15);
        assert_eq!(i.address_size(), Some(AddressSize::Bits64));
        assert_eq!(i.segment(), Some(SegmentRegister::Ds));
        let i = IoInstructionInfo::new(AddressSize::Bits16, SegmentRegister::Es);
        assert_eq!(i.raw(), 0);
        let i = IoInstructionInfo::from_raw(3 << 7 | 7 << 15 | 0x7F);
        assert_eq!((i.address_size(), i.segment()), (None, None));
        for s in
            [SegmentRegister::Es, SegmentRegister::Cs, SegmentRegister::Ss, SegmentRegister::Fs, SegmentRegister::Gs]
        {
            assert_eq!(IoInstructionInfo::new(AddressSize::Bits32, s).segment(), Some(s));
        }
    }

    #[test]
    fn capability_msr_indices() {
        assert_eq!(msr::IA32_VMX_BASIC, 0x480);
        assert_eq!(msr::IA32_VMX_PROCBASED_CTLS2, 0x48B);
        assert_eq!(msr::IA32_VMX_EPT_VPID_CAP, 0x48C);
        assert_eq!(msr::IA32_VMX_TRUE_PINBASED_CTLS, 0x48D);
        assert_eq!(msr::IA32_VMX_TRUE_ENTRY_CTLS, 0x490);
        assert_eq!(msr::IA32_VMX_VMFUNC, 0x491);
        assert_eq!(msr::IA32_VMX_PROCBASED_CTLS3, 0x492);
        assert_eq!(msr::IA32_VMX_EXIT_CTLS2, 0x493);
        // The probe report covers exactly IA32_VMX_BASIC..=IA32_VMX_VMFUNC.
        assert_eq!(crate::report::VMX_MSR_FIRST, msr::IA32_VMX_BASIC);
        assert_eq!(crate::report::VMX_MSR_FIRST + crate::report::VMX_MSR_COUNT as u32 - 1, msr::IA32_VMX_VMFUNC);
    }

    #[test]
    fn vmx_basic_fields() {
        // The shape Intel hosts report (0x00DA_0400_...): 1024-byte regions, dual-monitor,
        // WB, INS/OUTS info, TRUE controls; revision 4 here.
        let v = VmxBasic::from_raw(0x00DA_0400_0000_0004);
        assert_eq!(v.revision_id(), 4);
        assert_eq!(v.region_size(), 1024);
        assert_eq!(v.memory_type(), VmxBasic::MEMORY_TYPE_WB);
        assert!(v.dual_monitor() && v.ins_outs_info() && v.true_controls());
        assert!(!v.phys_addr_32bit() && !v.no_error_code_check());

        let flags = VmxBasic::DUAL_MONITOR | VmxBasic::INS_OUTS_INFO | VmxBasic::TRUE_CONTROLS;
        assert_eq!(VmxBasic::new(4, 1024, VmxBasic::MEMORY_TYPE_WB, flags), Some(v));
        assert_eq!(VmxBasic::new(4, 4096, VmxBasic::MEMORY_TYPE_WB, 0).unwrap().region_size(), 4096);
        let all = VmxBasic::new(0x7FFF_FFFF, 1, VmxBasic::MEMORY_TYPE_UC, VmxBasic::FLAGS).unwrap();
        assert!(all.phys_addr_32bit() && all.dual_monitor() && all.no_error_code_check());
        assert_eq!((all.revision_id(), all.region_size(), all.memory_type()), (0x7FFF_FFFF, 1, 0));
        assert_eq!(VmxBasic::FLAGS, 1 << 48 | 1 << 49 | 1 << 54 | 1 << 55 | 1 << 56);

        assert_eq!(VmxBasic::new(1 << 31, 4096, 6, 0), None, "bit 31 of the revision is 0");
        assert_eq!(VmxBasic::new(1, 0, 6, 0), None);
        assert_eq!(VmxBasic::new(1, 4097, 6, 0), None);
        assert_eq!(VmxBasic::new(1, 4096, 5, 0), None, "only UC and WB");
        assert_eq!(VmxBasic::new(1, 4096, 6, 1 << 57), None);
    }

    /// A fixed buffer to test `Display` without `alloc`.
    struct FmtBuf {
        buf: [u8; 128],
        len: usize,
    }

    impl Default for FmtBuf {
        fn default() -> Self {
            Self { buf: [0; 128], len: 0 }
        }
    }

    impl FmtBuf {
        fn as_str(&self) -> &str {
            core::str::from_utf8(&self.buf[..self.len]).unwrap()
        }
    }

    impl core::fmt::Write for FmtBuf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = self.len + s.len();
            self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?.copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
}
