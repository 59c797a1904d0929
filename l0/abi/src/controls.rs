//! VMX controls: the bits of each VM-execution, VM-exit and VM-entry control field, and the
//! rule that relates a control value to its capability MSR (Intel SDM Vol. 3D, Appendix A.3-A.5).
//!
//! One rule serves both levels: L1 *adjusts* the controls it wants to what the capability
//! MSRs allow (an error, never a silent drop, when a bit it requires is not allowed), and L0's
//! soft engine *checks* VMCS12's controls against the capabilities it advertised at VM entry
//! (SDM 27.2.1.1: a control outside the allowed settings is VMfailValid 7).

/// A capability MSR of the two-halves form (SDM A.3.1): bits 31:0 are the allowed
/// 0-settings (a 1 there means the control must be 1), bits 63:32 the allowed 1-settings (a 0
/// there means the control must be 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// Bits that must be 1.
    pub must_be_one: u32,
    /// Bits that may be 1.
    pub may_be_one: u32,
}

/// Why a control value is not allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// These bits are set, but the capability MSR says they must be 0.
    NotAllowedOne(u32),
    /// These bits are clear, but the capability MSR says they must be 1.
    RequiredOne(u32),
}

impl core::fmt::Display for ControlError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotAllowedOne(b) => write!(f, "bits {b:#010x} are set but not allowed to be 1"),
            Self::RequiredOne(b) => write!(f, "bits {b:#010x} are clear but required to be 1"),
        }
    }
}

impl Allowed {
    /// Decode a capability MSR value.
    #[must_use]
    pub const fn from_msr(v: u64) -> Self {
        Self { must_be_one: v as u32, may_be_one: (v >> 32) as u32 }
    }

    /// The capability of a control that has only an allowed-1 half (the secondary and
    /// tertiary processor-based controls, SDM A.3.3: every bit may be 0).
    #[must_use]
    pub const fn from_allowed_one(may_be_one: u32) -> Self {
        Self { must_be_one: 0, may_be_one }
    }

    /// Check a control value (SDM 27.2.1.1, the checks L0 makes at VM entry).
    pub const fn check(&self, value: u32) -> Result<(), ControlError> {
        let bad_one = value & !self.may_be_one;
        if bad_one != 0 {
            return Err(ControlError::NotAllowedOne(bad_one));
        }
        let missing = self.must_be_one & !value;
        if missing != 0 {
            return Err(ControlError::RequiredOne(missing));
        }
        Ok(())
    }

    /// The value L1 writes: `required` (an error if any of it may not be 1), plus whichever
    /// of `optional` may be 1, plus every bit that must be 1 (SDM A.3.1: "software should
    /// consult the VMX capability MSRs").
    pub const fn adjust(&self, required: u32, optional: u32) -> Result<u32, ControlError> {
        let bad = required & !self.may_be_one;
        if bad != 0 {
            return Err(ControlError::NotAllowedOne(bad));
        }
        Ok(required | (optional & self.may_be_one) | self.must_be_one)
    }
}

/// Pin-based VM-execution controls (SDM 25.6.1, Table 25-5).
pub mod pin {
    /// External-interrupt exiting.
    pub const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
    /// NMI exiting.
    pub const NMI_EXITING: u32 = 1 << 3;
    /// Virtual NMIs.
    pub const VIRTUAL_NMIS: u32 = 1 << 5;
    /// Activate VMX-preemption timer.
    pub const PREEMPTION_TIMER: u32 = 1 << 6;
    /// Process posted interrupts.
    pub const POSTED_INTERRUPTS: u32 = 1 << 7;
}

/// Primary processor-based VM-execution controls (SDM 25.6.2, Table 25-6).
pub mod proc1 {
    /// Interrupt-window exiting.
    pub const INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
    /// Use TSC offsetting.
    pub const USE_TSC_OFFSETTING: u32 = 1 << 3;
    /// HLT exiting.
    pub const HLT_EXITING: u32 = 1 << 7;
    /// INVLPG exiting.
    pub const INVLPG_EXITING: u32 = 1 << 9;
    /// MWAIT exiting.
    pub const MWAIT_EXITING: u32 = 1 << 10;
    /// RDPMC exiting.
    pub const RDPMC_EXITING: u32 = 1 << 11;
    /// RDTSC exiting.
    pub const RDTSC_EXITING: u32 = 1 << 12;
    /// CR3-load exiting.
    pub const CR3_LOAD_EXITING: u32 = 1 << 15;
    /// CR3-store exiting.
    pub const CR3_STORE_EXITING: u32 = 1 << 16;
    /// Activate tertiary controls.
    pub const ACTIVATE_TERTIARY_CONTROLS: u32 = 1 << 17;
    /// CR8-load exiting.
    pub const CR8_LOAD_EXITING: u32 = 1 << 19;
    /// CR8-store exiting.
    pub const CR8_STORE_EXITING: u32 = 1 << 20;
    /// Use TPR shadow.
    pub const USE_TPR_SHADOW: u32 = 1 << 21;
    /// NMI-window exiting.
    pub const NMI_WINDOW_EXITING: u32 = 1 << 22;
    /// MOV-DR exiting.
    pub const MOV_DR_EXITING: u32 = 1 << 23;
    /// Unconditional I/O exiting.
    pub const UNCONDITIONAL_IO_EXITING: u32 = 1 << 24;
    /// Use I/O bitmaps.
    pub const USE_IO_BITMAPS: u32 = 1 << 25;
    /// Monitor trap flag.
    pub const MONITOR_TRAP_FLAG: u32 = 1 << 27;
    /// Use MSR bitmaps.
    pub const USE_MSR_BITMAPS: u32 = 1 << 28;
    /// MONITOR exiting.
    pub const MONITOR_EXITING: u32 = 1 << 29;
    /// PAUSE exiting.
    pub const PAUSE_EXITING: u32 = 1 << 30;
    /// Activate secondary controls.
    pub const ACTIVATE_SECONDARY_CONTROLS: u32 = 1 << 31;
}

/// Secondary processor-based VM-execution controls (SDM 25.6.2, Table 25-7).
pub mod proc2 {
    /// Virtualize APIC accesses.
    pub const VIRTUALIZE_APIC_ACCESSES: u32 = 1 << 0;
    /// Enable EPT.
    pub const ENABLE_EPT: u32 = 1 << 1;
    /// Descriptor-table exiting.
    pub const DESCRIPTOR_TABLE_EXITING: u32 = 1 << 2;
    /// Enable RDTSCP.
    pub const ENABLE_RDTSCP: u32 = 1 << 3;
    /// Virtualize x2APIC mode.
    pub const VIRTUALIZE_X2APIC: u32 = 1 << 4;
    /// Enable VPID.
    pub const ENABLE_VPID: u32 = 1 << 5;
    /// WBINVD exiting.
    pub const WBINVD_EXITING: u32 = 1 << 6;
    /// Unrestricted guest.
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
    /// APIC-register virtualization.
    pub const APIC_REGISTER_VIRTUALIZATION: u32 = 1 << 8;
    /// Virtual-interrupt delivery.
    pub const VIRTUAL_INTERRUPT_DELIVERY: u32 = 1 << 9;
    /// PAUSE-loop exiting.
    pub const PAUSE_LOOP_EXITING: u32 = 1 << 10;
    /// RDRAND exiting.
    pub const RDRAND_EXITING: u32 = 1 << 11;
    /// Enable INVPCID.
    pub const ENABLE_INVPCID: u32 = 1 << 12;
    /// Enable VM functions.
    pub const ENABLE_VM_FUNCTIONS: u32 = 1 << 13;
    /// VMCS shadowing.
    pub const VMCS_SHADOWING: u32 = 1 << 14;
    /// Enable ENCLS exiting.
    pub const ENCLS_EXITING: u32 = 1 << 15;
    /// RDSEED exiting.
    pub const RDSEED_EXITING: u32 = 1 << 16;
    /// Enable PML.
    pub const ENABLE_PML: u32 = 1 << 17;
    /// EPT-violation #VE.
    pub const EPT_VIOLATION_VE: u32 = 1 << 18;
    /// Enable XSAVES/XRSTORS.
    pub const ENABLE_XSAVES: u32 = 1 << 20;
    /// Mode-based execute control for EPT.
    pub const MODE_BASED_EXECUTE_CONTROL: u32 = 1 << 22;
    /// Use TSC scaling.
    pub const USE_TSC_SCALING: u32 = 1 << 25;
}

/// Primary VM-exit controls (SDM 25.7.1, Table 25-13).
pub mod exit {
    /// Save debug controls.
    pub const SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
    /// Host address-space size (64-bit host).
    pub const HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
    /// Load IA32_PERF_GLOBAL_CTRL.
    pub const LOAD_PERF_GLOBAL_CTRL: u32 = 1 << 12;
    /// Acknowledge interrupt on exit.
    pub const ACK_INTERRUPT_ON_EXIT: u32 = 1 << 15;
    /// Save IA32_PAT.
    pub const SAVE_PAT: u32 = 1 << 18;
    /// Load IA32_PAT.
    pub const LOAD_PAT: u32 = 1 << 19;
    /// Save IA32_EFER.
    pub const SAVE_EFER: u32 = 1 << 20;
    /// Load IA32_EFER.
    pub const LOAD_EFER: u32 = 1 << 21;
    /// Save VMX-preemption timer value.
    pub const SAVE_PREEMPTION_TIMER: u32 = 1 << 22;
}

/// VM-entry controls (SDM 25.8.1, Table 25-15).
pub mod entry {
    /// Load debug controls.
    pub const LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
    /// IA-32e mode guest.
    pub const IA32E_MODE_GUEST: u32 = 1 << 9;
    /// Entry to SMM.
    pub const ENTRY_TO_SMM: u32 = 1 << 10;
    /// Deactivate dual-monitor treatment.
    pub const DEACTIVATE_DUAL_MONITOR: u32 = 1 << 11;
    /// Load IA32_PERF_GLOBAL_CTRL.
    pub const LOAD_PERF_GLOBAL_CTRL: u32 = 1 << 13;
    /// Load IA32_PAT.
    pub const LOAD_PAT: u32 = 1 << 14;
    /// Load IA32_EFER.
    pub const LOAD_EFER: u32 = 1 << 15;
}

/// The "default1" bits of each control field (SDM A.2: bits reserved to 1 in the
/// non-TRUE capability MSRs): pin-based 1, 2, 4; primary processor-based 1, 4-6, 8, 13-16,
/// 26; VM-exit 0-8, 10, 11, 13, 14, 16, 17; VM-entry 0-8, 12.
pub mod default1 {
    /// Pin-based.
    pub const PIN: u32 = 0x0000_0016;
    /// Primary processor-based.
    pub const PROC1: u32 = 0x0401_E172;
    /// VM-exit.
    pub const EXIT: u32 = 0x0003_6DFF;
    /// VM-entry.
    pub const ENTRY: u32 = 0x0000_11FF;
}

/// CR0 or CR4 bits that violate the fixed-bit MSRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedBitsError {
    /// Bits clear in the value but set in FIXED0.
    pub must_be_one: u64,
    /// Bits set in the value but clear in FIXED1.
    pub must_be_zero: u64,
}

/// Check CR0 or CR4 against its fixed-bit MSRs (SDM A.7, A.8): bits set in FIXED0 must be
/// 1, bits clear in FIXED1 must be 0.
pub const fn check_fixed(value: u64, fixed0: u64, fixed1: u64) -> Result<(), FixedBitsError> {
    let e = FixedBitsError { must_be_one: fixed0 & !value, must_be_zero: value & !fixed1 };
    if e.must_be_one == 0 && e.must_be_zero == 0 { Ok(()) } else { Err(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // IA32_VMX_TRUE_PROCBASED_CTLS as a typical Intel host reports it (allowed-0 = 0x04006172:
    // CR3-load/store exiting may be 0 under TRUE controls; allowed-1 = 0xFFF9FFFE: no tertiary
    // controls (bit 17), bit 18 reserved).
    const TRUE_PROC: u64 = 0xFFF9_FFFE_0400_6172;

    #[test]
    fn adjust_adds_must_be_one_bits_and_keeps_only_allowed_optional_ones() {
        let a = Allowed::from_msr(TRUE_PROC);
        let v = a.adjust(proc1::HLT_EXITING | proc1::USE_IO_BITMAPS, proc1::ACTIVATE_TERTIARY_CONTROLS).unwrap();
        assert_eq!(v & 0x0400_6172, 0x0400_6172, "must-be-one bits are set");
        assert_ne!(v & proc1::HLT_EXITING, 0);
        assert_eq!(v & proc1::ACTIVATE_TERTIARY_CONTROLS, 0, "bit 17 may not be 1 here: dropped, it was optional");
        assert_eq!(a.check(v), Ok(()));
    }

    #[test]
    fn a_required_bit_that_is_not_allowed_is_an_error_not_a_silent_drop() {
        let a = Allowed::from_msr(TRUE_PROC);
        assert_eq!(a.adjust(proc1::ACTIVATE_TERTIARY_CONTROLS, 0), Err(ControlError::NotAllowedOne(1 << 17)));
    }

    #[test]
    fn check_names_the_offending_bits() {
        let a = Allowed::from_msr(TRUE_PROC);
        assert_eq!(a.check(0x0400_6172 | 1 << 17), Err(ControlError::NotAllowedOne(1 << 17)));
        assert_eq!(a.check(0x0400_6170), Err(ControlError::RequiredOne(0x2)));
        let secondary = Allowed::from_allowed_one(proc2::ENABLE_EPT | proc2::VMCS_SHADOWING);
        assert_eq!(secondary.check(0), Ok(()));
        assert_eq!(secondary.check(proc2::UNRESTRICTED_GUEST), Err(ControlError::NotAllowedOne(1 << 7)));
    }

    #[test]
    fn default1_masks_match_the_sdm_bit_lists() {
        let bits = |list: &[u32]| list.iter().fold(0u32, |m, b| m | 1 << b);
        assert_eq!(default1::PIN, bits(&[1, 2, 4]));
        assert_eq!(default1::PROC1, bits(&[1, 4, 5, 6, 8, 13, 14, 15, 16, 26]));
        assert_eq!(default1::EXIT, bits(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 14, 16, 17]));
        assert_eq!(default1::ENTRY, bits(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 12]));
    }

    #[test]
    fn cr0_fixed_bits() {
        // IA32_VMX_CR0_FIXED0 = PE|NE|PG, FIXED1 = all low 32 bits.
        let (f0, f1) = (0x8000_0021, 0xFFFF_FFFF);
        assert_eq!(check_fixed(0x8005_0033, f0, f1), Ok(()));
        assert_eq!(
            check_fixed(0x8005_0013, f0, f1),
            Err(FixedBitsError { must_be_one: 0x20, must_be_zero: 0 }),
            "NE clear"
        );
        assert_eq!(
            check_fixed(1 << 40 | 0x8000_0021, f0, f1),
            Err(FixedBitsError { must_be_one: 0, must_be_zero: 1 << 40 }),
            "a high reserved bit"
        );
    }
}

/// IA32_VMX_EPT_VPID_CAP bits (SDM A.10).
pub mod ept_cap {
    /// Bit 0: execute-only EPT translations.
    pub const EXECUTE_ONLY: u64 = 1 << 0;
    /// Bit 6: page-walk length of 4.
    pub const WALK_LENGTH_4: u64 = 1 << 6;
    /// Bit 7: page-walk length of 5.
    pub const WALK_LENGTH_5: u64 = 1 << 7;
    /// Bit 8: uncacheable EPT paging structures.
    pub const MEMTYPE_UC: u64 = 1 << 8;
    /// Bit 14: write-back EPT paging structures.
    pub const MEMTYPE_WB: u64 = 1 << 14;
    /// Bit 16: 2-Mbyte pages (bit 7 of an EPT PDE).
    pub const PAGE_2M: u64 = 1 << 16;
    /// Bit 17: 1-Gbyte pages (bit 7 of an EPT PDPTE).
    pub const PAGE_1G: u64 = 1 << 17;
    /// Bit 20: INVEPT.
    pub const INVEPT: u64 = 1 << 20;
    /// Bit 21: accessed and dirty flags for EPT.
    pub const ACCESSED_DIRTY: u64 = 1 << 21;
    /// Bit 25: single-context INVEPT.
    pub const INVEPT_SINGLE_CONTEXT: u64 = 1 << 25;
    /// Bit 26: all-context INVEPT.
    pub const INVEPT_ALL_CONTEXT: u64 = 1 << 26;
    /// Bit 32: INVVPID.
    pub const INVVPID: u64 = 1 << 32;
}
