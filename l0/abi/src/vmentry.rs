//! A VM-entry conformance case as L0 hands it to L1 ([`crate::boot::Scenario::Vmentry`]):
//! VMCS writes on top of L1's valid baseline VMCS for a 64-bit L2 with EPT, optional
//! VM-entry MSR-load entries, capabilities the case needs, and the VMX instructions to
//! execute (docs/vmentry.md). L0 writes it at [`CASE_GPA`]; L1 checks the magic and every
//! count before using it.

/// Where L0 places the case in L1 memory (below L1's image, inside L0's low area).
pub const CASE_GPA: u64 = 0x7000;
/// "NBCASE01" as a little-endian u64.
pub const CASE_MAGIC: u64 = u64::from_le_bytes(*b"NBCASE01");
/// Most VMCS writes in a case.
pub const MAX_WRITES: usize = 16;
/// Most instructions in a case.
pub const MAX_STEPS: usize = 4;
/// Most VM-entry MSR-load entries.
pub const MAX_MSR_LOADS: usize = 4;

abi_enum! {
    /// How a write changes the baseline value of its field.
    pub enum WriteOp: u32 {
        /// The field becomes `value`.
        Set = 0,
        /// The field's baseline value OR `value`.
        Or = 1,
        /// The field's baseline value AND NOT `value`.
        AndNot = 2,
    }
}

abi_enum! {
    /// A VMX instruction of a case.
    pub enum Step: u32 {
        /// VMLAUNCH of the case's VMCS.
        VmLaunch = 0,
        /// VMRESUME of the case's VMCS.
        VmResume = 1,
        /// VMCLEAR of the case's VMCS.
        VmClear = 2,
        /// VMPTRLD of the case's VMCS (making it current again).
        VmPtrLd = 3,
        /// VMPTRLD of the case's VMCS address + 8 (not 4 KiB-aligned: VMfailValid 9).
        VmPtrLdUnaligned = 4,
        /// VMPTRLD of the VMXON region (VMfailValid 10).
        VmPtrLdVmxon = 5,
        /// VMPTRLD of a region whose revision identifier is not the processor's (VMfailValid 11).
        VmPtrLdBadRevision = 6,
        /// VMPTRLD of the last 4 KiB page below L1's MAXPHYADDR (CPUID.80000008H:EAX[7:0]),
        /// where no memory is: the revision identifier reads as all ones (VMfailValid 11).
        VmPtrLdUnbacked = 7,
        /// VMPTRLD of 1 << MAXPHYADDR, beyond the physical-address width (VMfailValid 9).
        VmPtrLdBeyondWidth = 8,
        /// VMCLEAR of the case's VMCS address + 8 (VMfailValid 2).
        VmClearUnaligned = 9,
        /// VMCLEAR of the VMXON region (VMfailValid 3).
        VmClearVmxon = 10,
        /// VMCLEAR of 1 << MAXPHYADDR (VMfailValid 2).
        VmClearBeyondWidth = 11,
        /// VMCLEAR of the last 4 KiB page below MAXPHYADDR, where no memory is (succeeds:
        /// the launch-state write goes nowhere).
        VmClearUnbacked = 12,
        /// VMXON of the VMXON region again, in VMX root operation (VMfailValid 15).
        VmxOnInRoot = 13,
        /// VMREAD of [`UNSUPPORTED_FIELD`] (VMfailValid 12).
        VmReadUnsupported = 14,
        /// VMWRITE of 0 to [`UNSUPPORTED_FIELD`] (VMfailValid 12).
        VmWriteUnsupported = 15,
        /// VMPTRLD of a fresh region whose revision word has bit 31 (the shadow-VMCS
        /// indicator) set; a VMLAUNCH or VMRESUME after it is VMfailInvalid (SDM 31.3).
        VmPtrLdShadow = 16,
        /// VMWRITE of 0 to the VM-exit reason field, read-only (VMfailValid 13 unless
        /// IA32_VMX_MISC[29] lets VMWRITE write any supported field, SDM 31.3 VMWRITE).
        VmWriteReadOnly = 17,
        /// VMLAUNCH right after a MOV to SS that reloads SS (SDM 31.3 VMLAUNCH: "ELSIF events
        /// are being blocked by MOV SS THEN VMfailValid(VM entry with events blocked by MOV
        /// SS)", error 26).
        VmLaunchAfterMovSs = 18,
    }
}

/// A VMCS field encoding no processor supports (a 32-bit read-only field, index 7FFH), for
/// [`Step::VmReadUnsupported`] and [`Step::VmWriteUnsupported`].
pub const UNSUPPORTED_FIELD: u32 = 0x4FFE;

impl Step {
    /// Every step with its name in case files (docs/vmentry.md, vmentry/case.schema.json).
    pub const NAMES: [(Self, &'static str); 19] = [
        (Self::VmLaunch, "vmlaunch"),
        (Self::VmResume, "vmresume"),
        (Self::VmClear, "vmclear"),
        (Self::VmPtrLd, "vmptrld"),
        (Self::VmPtrLdUnaligned, "vmptrld_unaligned"),
        (Self::VmPtrLdVmxon, "vmptrld_vmxon"),
        (Self::VmPtrLdBadRevision, "vmptrld_bad_revision"),
        (Self::VmPtrLdUnbacked, "vmptrld_unbacked"),
        (Self::VmPtrLdBeyondWidth, "vmptrld_beyond_maxphyaddr"),
        (Self::VmClearUnaligned, "vmclear_unaligned"),
        (Self::VmClearVmxon, "vmclear_vmxon"),
        (Self::VmClearBeyondWidth, "vmclear_beyond_maxphyaddr"),
        (Self::VmClearUnbacked, "vmclear_unbacked"),
        (Self::VmxOnInRoot, "vmxon_in_root"),
        (Self::VmReadUnsupported, "vmread_unsupported_field"),
        (Self::VmWriteUnsupported, "vmwrite_unsupported_field"),
        (Self::VmPtrLdShadow, "vmptrld_shadow_vmcs"),
        (Self::VmWriteReadOnly, "vmwrite_read_only_field"),
        (Self::VmLaunchAfterMovSs, "vmlaunch_after_mov_ss"),
    ];

    /// The step a case file names `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
    }
}

/// Capabilities a case may need ([`Case::needs`]); L1 checks them against the capability
/// MSRs and reports [`crate::report::VerdictKind::Skipped`] with the missing bits.
pub mod need {
    /// "unrestricted guest" may be 1 (IA32_VMX_PROCBASED_CTLS2 bit 39).
    pub const UNRESTRICTED_GUEST: u32 = 1 << 0;
    /// "VMCS shadowing" may be 1 (bit 46).
    pub const VMCS_SHADOWING: u32 = 1 << 1;
    /// "activate VMX-preemption timer" may be 1 (IA32_VMX_PINBASED_CTLS bit 38).
    pub const PREEMPTION_TIMER: u32 = 1 << 2;
    /// The engine's VM-entry instruction sees a MOV SS shadow right before it (SDM 31.3
    /// VMLAUNCH, error 26): VMLAUNCH on hardware does; the soft engine's doorbell write does
    /// not, since KVM completes an emulated MMIO write, ending the shadow, before L0 sees it.
    pub const MOV_SS_SHADOW: u32 = 1 << 3;
    /// Every bit this ABI defines.
    pub const ALL: u32 = UNRESTRICTED_GUEST | VMCS_SHADOWING | PREEMPTION_TIMER | MOV_SS_SHADOW;
    /// Every bit with its name in case files and output.
    pub const NAMES: [(u32, &str); 4] = [
        (UNRESTRICTED_GUEST, "unrestricted_guest"),
        (VMCS_SHADOWING, "vmcs_shadowing"),
        (PREEMPTION_TIMER, "preemption_timer"),
        (MOV_SS_SHADOW, "mov_ss_shadow"),
    ];
}

/// One VMCS write.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaseWrite {
    /// The field's encoding (SDM Appendix B).
    pub encoding: u32,
    /// A [`WriteOp`].
    pub op: u32,
    /// The operand.
    pub value: u64,
}
const _: () = assert!(size_of::<CaseWrite>() == 16);

/// One VM-entry MSR-load entry (SDM 25.8.2, Table 25-15: index, reserved, data).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsrLoad {
    /// The MSR index.
    pub index: u32,
    /// Reserved (the entry's bits 63:32), normally 0.
    pub reserved: u32,
    /// The value.
    pub value: u64,
}
const _: () = assert!(size_of::<MsrLoad>() == 16);

/// The case.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Case {
    /// [`CASE_MAGIC`].
    pub magic: u64,
    /// Writes used, at most [`MAX_WRITES`].
    pub n_writes: u32,
    /// Steps used, 1 to [`MAX_STEPS`].
    pub n_steps: u32,
    /// MSR-load entries used, at most [`MAX_MSR_LOADS`]; when non-zero L1 puts them on a page
    /// of its own and sets the VM-entry MSR-load count and address before the writes.
    pub n_msr_loads: u32,
    /// [`need`] bits.
    pub needs: u32,
    /// The writes, applied in order after the baseline.
    pub writes: [CaseWrite; MAX_WRITES],
    /// The instructions ([`Step`] values), executed in order until one fails or the last one
    /// has its verdict.
    pub steps: [u32; MAX_STEPS],
    /// The MSR-load entries.
    pub msr_loads: [MsrLoad; MAX_MSR_LOADS],
}
const _: () = assert!(size_of::<Case>() == 24 + 16 * MAX_WRITES + 4 * MAX_STEPS + 16 * MAX_MSR_LOADS);
const _: () = assert!(CASE_GPA + size_of::<Case>() as u64 <= 0x8000, "inside L0's low area");
// SAFETY: `Case` is `#[repr(C)]`, integers only, and the assertion of its size next to
// this implementation rules out padding.
unsafe impl crate::Pod for Case {}

impl Case {
    /// Whether the counts are in range and every step and op is defined (L1 checks this
    /// before using the case; L0 builds only such cases).
    #[must_use]
    pub fn well_formed(&self) -> bool {
        self.magic == CASE_MAGIC
            && self.n_writes as usize <= MAX_WRITES
            && (1..=MAX_STEPS).contains(&(self.n_steps as usize))
            && self.n_msr_loads as usize <= MAX_MSR_LOADS
            && self.needs & !need::ALL == 0
            && self.steps[..self.n_steps as usize].iter().all(|s| Step::from_raw(*s).is_some())
            && self.writes[..self.n_writes as usize].iter().all(|w| WriteOp::from_raw(w.op).is_some())
    }
}

/// Where the capability MSRs of the engine running a case change its SDM verdict: parts of the
/// case's VMCS (after its writes) they do not allow, and one permission they grant. The
/// verdict then follows those MSRs, not the case's `expect`: a control, EPTP or injection
/// setting outside them fails the entry with VMfailValid 7 (27.2.1), an activity state
/// IA32_VMX_MISC does not list fails it with reason 33 (27.3.1.5), a VMWRITE to a read-only
/// field succeeds where IA32_VMX_MISC[29] is 1. L1 reports it
/// ([`crate::report::ReportKind::CaseCapabilities`]) before the steps.
pub mod outside {
    /// The pin-based controls (IA32_VMX_(TRUE_)PINBASED_CTLS).
    pub const PIN_CONTROLS: u32 = 1 << 0;
    /// The primary processor-based controls.
    pub const PROC_CONTROLS: u32 = 1 << 1;
    /// The secondary processor-based controls (checked when "activate secondary controls" is 1).
    pub const PROC2_CONTROLS: u32 = 1 << 2;
    /// The VM-exit controls.
    pub const EXIT_CONTROLS: u32 = 1 << 3;
    /// The VM-entry controls.
    pub const ENTRY_CONTROLS: u32 = 1 << 4;
    /// The guest activity state (HLT, shutdown or wait-for-SIPI, not in IA32_VMX_MISC[8:6]).
    pub const ACTIVITY_STATE: u32 = 1 << 5;
    /// The EPTP (with EPT enabled): a memory type (UC, WB), page-walk length (4, 5) or
    /// accessed-and-dirty flag that IA32_VMX_EPT_VPID_CAP does not list (27.2.1.1).
    pub const EPT_POINTER: u32 = 1 << 6;
    /// A software interrupt or exception injected with VM-entry instruction length 0 where
    /// IA32_VMX_MISC[30] is 0 (27.2.1.3).
    pub const INSTRUCTION_LENGTH: u32 = 1 << 7;
    /// Not a setting the MSRs forbid but one they grant: IA32_VMX_MISC[29] is 1, so VMWRITE
    /// may write read-only fields and [`super::Step::VmWriteReadOnly`] succeeds rather than
    /// failing with error 13 (SDM 31.3 VMWRITE, A.6).
    pub const VMWRITE_ANY_FIELD: u32 = 1 << 8;
    /// Every bit with its name in output.
    pub const NAMES: [(u32, &str); 9] = [
        (PIN_CONTROLS, "pin_based_vm_exec_control"),
        (PROC_CONTROLS, "primary_proc_based_vm_exec_control"),
        (PROC2_CONTROLS, "secondary_proc_based_vm_exec_control"),
        (EXIT_CONTROLS, "vm_exit_controls"),
        (ENTRY_CONTROLS, "vm_entry_controls"),
        (ACTIVITY_STATE, "guest_activity_state"),
        (EPT_POINTER, "ept_pointer"),
        (INSTRUCTION_LENGTH, "vm_entry_instruction_length"),
        (VMWRITE_ANY_FIELD, "vmwrite_any_field"),
    ];
    /// The bits of the checks on the VMX controls (27.2.1): any of them makes the verdict
    /// VMfailValid 7.
    pub const CONTROLS: u32 = PIN_CONTROLS
        | PROC_CONTROLS
        | PROC2_CONTROLS
        | EXIT_CONTROLS
        | ENTRY_CONTROLS
        | EPT_POINTER
        | INSTRUCTION_LENGTH;
}

/// L1's [`outside`] report.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaseCapabilities {
    /// [`outside`] bits.
    pub outside: u32,
    /// Reserved, 0.
    pub reserved: u32,
}
const _: () = assert!(size_of::<CaseCapabilities>() == 8);
// SAFETY: `#[repr(C)]`, two u32s, no padding (the size assertion above).
unsafe impl crate::Pod for CaseCapabilities {}

/// Apply `op` with `value` to the baseline value `base`.
#[must_use]
pub const fn apply(op: WriteOp, base: u64, value: u64) -> u64 {
    match op {
        WriteOp::Set => value,
        WriteOp::Or => base | value,
        WriteOp::AndNot => base & !value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_and_well_formedness() {
        assert_eq!(apply(WriteOp::Set, 0xF0, 3), 3);
        assert_eq!(apply(WriteOp::Or, 0xF0, 3), 0xF3);
        assert_eq!(apply(WriteOp::AndNot, 0xF3, 3), 0xF0);
        let mut c = Case { magic: CASE_MAGIC, n_steps: 1, ..Case::default() };
        assert!(c.well_formed());
        c.steps[0] = 99;
        assert!(!c.well_formed());
        c.steps[0] = 0;
        c.n_steps = 0;
        assert!(!c.well_formed(), "at least one instruction");
        c.n_steps = 1;
        c.n_writes = 17;
        assert!(!c.well_formed());
    }

    #[test]
    fn every_step_has_one_name() {
        for (i, (step, name)) in Step::NAMES.iter().enumerate() {
            assert_eq!(*step as u32, i as u32, "NAMES is in the order of the values");
            assert_eq!(Step::from_name(name), Some(*step));
        }
        assert_eq!(Step::from_raw(Step::NAMES.len() as u32), None, "every step is named");
    }
}
