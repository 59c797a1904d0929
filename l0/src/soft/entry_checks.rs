//! The VM-entry checks of VMLAUNCH/VMRESUME on VMCS12 (Intel SDM Vol. 3C, 27.2 "Checks on
//! VMX Controls and Host-State Area" and 27.3.1 "Checks on the Guest State Area"), as a pure
//! function of the VMCS12 fields, the capabilities L0 advertised ([`Caps`]) and L1's
//! MAXPHYADDR. The checks of 27.1 (no current VMCS, launch state) are the caller's.
//!
//! Families run in the SDM's order and each check quotes its SDM bullet: controls
//! (27.2.1, VMfailValid 7), host state (27.2.2-27.2.4, VMfailValid 8), guest state (27.3.1, a
//! VM exit with reason 33 | 1 << 31 and qualification 0, or 4 for the VMCS link pointer).
//! Checks about controls that [`Caps::soft`] does not allow to be 1 (TPR shadow, virtual
//! NMIs, VPID, unrestricted guest, PML, VMCS shadowing, ...) are vacuous: the
//! allowed-settings check has already refused such a control. Each is named where it would
//! be.
//!
//! **Valid but not honoured.** A setting the SDM accepts but L0 cannot carry out is
//! [`EntryFailure::Unsupported`] (docs/soft-engine.md: an `engine_unsupported` event, never a
//! fake VMfail). Such a setting is only remembered when met; the checks go on, and an
//! architectural failure found later wins, because hardware would fail that entry anyway
//! and the unsupported setting would never take effect. Unsupported in part 1:
//!
//! * a non-zero exception bitmap, or a page-fault error-code mask/match that makes some #PF
//!   exit (KVM does not surface L2's exceptions to L0);
//! * a non-zero VM-exit MSR-store or VM-exit MSR-load count, once its address passes the
//!   27.2.1 checks, and more than 512 VM-entry MSR-load entries (fewer are checked and
//!   loaded, SDM 27.4: `super::msr_load`);
//! * injection of a software interrupt or exception (types 4-6), once the field passes the
//!   27.2.1.3 checks (external interrupts, NMIs and hardware exceptions are injected:
//!   `super::injection`);
//! * a guest that is not IA-32e mode ("IA-32e mode guest" = 0), once its PDPTE fields pass
//!   27.3.1.6 (with EPT; [`Checker::guest_pdptes`]);
//! * a guest without EPT ("enable EPT" = 0: VM2's memory comes from EPT12 only);
//! * a non-zero IA32_DEBUGCTL with "load debug controls" (LBR/BTF are not loaded into VM2);
//! * a non-zero pending-debug-exceptions field (no way to make VM2 deliver them);
//!
//! A VMCS link pointer other than FFFFFFFF_FFFFFFFFH gets the alignment and width checks
//! here and the checks on the memory it references and the current-VMCS pointer in
//! [`link_target`]; a valid one is accepted and unused (no VMCS shadowing for L1's guests).
//!
//! Activity states other than active are *not* in that list: IA32_VMX_MISC advertises none,
//! so the SDM makes them invalid (guest-state failure), not unsupported.
//!
//! L1 is assumed to be in IA-32e mode at VM entry (the soft L1 is a 64-bit kernel), which
//! decides the address-space-size checks of 27.2.4. Linear addresses are 48 bits wide
//! (CR4.LA57 is not allowed by IA32_VMX_CR4_FIXED1).

use nestbench_abi::controls::{Allowed, entry, exit, pin, proc1, proc2};
use nestbench_abi::vmcs::{Field16, Field32, Field64, FieldNatural};
use nestbench_abi::vmx::{VmInstructionError, entry_failure, intr};

use super::caps::{Caps, ept_cap};

/// Read access to the fields of a VMCS12 by encoding (`nestbench_abi::vmcs`). 16- and 32-bit
/// fields may come back with junk in the upper bits: the checks mask them to the field's
/// width. A field that is not there reads as 0.
pub trait Vmcs12Read {
    /// The value of the field with encoding `field`.
    fn read(&self, field: u32) -> u64;
}

/// Why a VM entry does not happen (SDM 27.2, 27.3.1), or why L0 does not do it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryFailure {
    /// A check on the VMX controls failed (27.2.1): VMfailValid with error 7.
    #[error("VM entry with invalid control field(s): {field}: {why}")]
    Control {
        /// The VMCS field (its `nestbench_abi::vmcs` name).
        field: &'static str,
        /// Which rule it breaks.
        why: String,
    },
    /// A check on the host-state area failed (27.2.2-27.2.4): VMfailValid with error 8.
    #[error("VM entry with invalid host-state field(s): {field}: {why}")]
    HostState {
        /// The VMCS field.
        field: &'static str,
        /// Which rule it breaks.
        why: String,
    },
    /// A check on the guest-state area failed (27.3.1): VM exit with reason
    /// `33 | 1 << 31` and this exit qualification (27.8: 0, or 4 for the VMCS link pointer).
    #[error("VM-entry failure due to invalid guest state (qualification {qualification}): {field}: {why}")]
    GuestState {
        /// The VMCS field.
        field: &'static str,
        /// Which rule it breaks.
        why: String,
        /// `nestbench_abi::vmx::entry_failure::DEFAULT` or `INVALID_VMCS_LINK_POINTER`.
        qualification: u64,
    },
    /// A valid setting that the soft engine cannot honour: `engine_unsupported`.
    #[error("engine_unsupported: {field}: {why}")]
    Unsupported {
        /// The VMCS field.
        field: &'static str,
        /// What L0 cannot do.
        why: String,
    },
}

impl EntryFailure {
    /// The VM-instruction error of a VMfailValid outcome (7 or 8); `None` otherwise.
    #[must_use]
    pub const fn instruction_error(&self) -> Option<VmInstructionError> {
        match self {
            Self::Control { .. } => Some(VmInstructionError::EntryInvalidControls),
            Self::HostState { .. } => Some(VmInstructionError::EntryInvalidHostState),
            Self::GuestState { .. } | Self::Unsupported { .. } => None,
        }
    }

    /// The field the failure names.
    #[must_use]
    pub const fn field(&self) -> &'static str {
        match self {
            Self::Control { field, .. }
            | Self::HostState { field, .. }
            | Self::GuestState { field, .. }
            | Self::Unsupported { field, .. } => field,
        }
    }
}

/// Run the checks of SDM 27.2 and 27.3.1 on `vmcs` against `caps`, with L1's physical
/// addresses `maxphyaddr` bits wide. `Ok` means the entry may proceed to loading guest state.
pub fn check(vmcs: &impl Vmcs12Read, caps: &Caps, maxphyaddr: u32) -> Result<(), EntryFailure> {
    let mut c = Checker::new(vmcs, caps, maxphyaddr);
    c.controls()?;
    c.host_state()?;
    c.guest_state()?;
    c.unsupported.map_or(Ok(()), Err)
}

// Bits of the registers the checks look at.
use nestbench_abi::cr::{CR0_PE, CR0_PG, CR4_PAE, CR4_PCIDE, EFER_DEFINED, EFER_LMA, EFER_LME};
const RFLAGS_RESERVED_ZERO: u64 = !0x3F_FFFF | 1 << 15 | 1 << 5 | 1 << 3;
const RFLAGS_FIXED_ONE: u64 = 1 << 1;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_VM: u64 = 1 << 17;
/// Activity state 1 (SDM 25.4.2, Table 25-3).
const ACTIVITY_HLT: u32 = 1;

// Access-rights fields (SDM 25.4.1, Table 25-2).
const AR_TYPE: u32 = 0xF;
const AR_S: u32 = 1 << 4;
const AR_DPL_SHIFT: u32 = 5;
const AR_P: u32 = 1 << 7;
const AR_RESERVED_11_8: u32 = 0xF00;
const AR_L: u32 = 1 << 13;
const AR_DB: u32 = 1 << 14;
const AR_G: u32 = 1 << 15;
const AR_UNUSABLE: u32 = 1 << 16;
const AR_RESERVED_31_17: u32 = 0xFFFE_0000;

// Interruptibility state (SDM 25.4.2, Table 25-3).
const BLOCKING_BY_STI: u32 = 1 << 0;
const BLOCKING_BY_MOV_SS: u32 = 1 << 1;
const BLOCKING_BY_SMI: u32 = 1 << 2;

/// Whether `addr` is canonical for 48-bit linear addresses (bits 63:47 identical).
const fn canonical(addr: u64) -> bool {
    (((addr << 16) as i64) >> 16) as u64 == addr
}

/// Whether `addr` sets no bit at or above `maxphyaddr`.
const fn within_phys(addr: u64, maxphyaddr: u32) -> bool {
    maxphyaddr >= 64 || addr >> maxphyaddr == 0
}

/// The G-bit rules shared by every segment (27.3.1.2, "Bit 15 (G)").
fn granularity_error(limit: u32, ar: u32) -> Option<&'static str> {
    let g = ar & AR_G != 0;
    if limit & 0xFFF != 0xFFF && g {
        Some("a limit bit in 11:0 is 0, so G must be 0")
    } else if limit & 0xFFF0_0000 != 0 && !g {
        Some("a limit bit in 31:20 is 1, so G must be 1")
    } else {
        None
    }
}

/// One guest segment register's fields.
struct Segment {
    name: &'static str,
    selector: Field16,
    base: FieldNatural,
    limit: Field32,
    ar: Field32,
}

const fn seg(name: &'static str, selector: Field16, base: FieldNatural, limit: Field32, ar: Field32) -> Segment {
    Segment { name, selector, base, limit, ar }
}

const GUEST_CS: Segment =
    seg("CS", Field16::GuestCsSelector, FieldNatural::GuestCsBase, Field32::GuestCsLimit, Field32::GuestCsAccessRights);
const GUEST_SS: Segment =
    seg("SS", Field16::GuestSsSelector, FieldNatural::GuestSsBase, Field32::GuestSsLimit, Field32::GuestSsAccessRights);
const GUEST_DS: Segment =
    seg("DS", Field16::GuestDsSelector, FieldNatural::GuestDsBase, Field32::GuestDsLimit, Field32::GuestDsAccessRights);
const GUEST_ES: Segment =
    seg("ES", Field16::GuestEsSelector, FieldNatural::GuestEsBase, Field32::GuestEsLimit, Field32::GuestEsAccessRights);
const GUEST_FS: Segment =
    seg("FS", Field16::GuestFsSelector, FieldNatural::GuestFsBase, Field32::GuestFsLimit, Field32::GuestFsAccessRights);
const GUEST_GS: Segment =
    seg("GS", Field16::GuestGsSelector, FieldNatural::GuestGsBase, Field32::GuestGsLimit, Field32::GuestGsAccessRights);
const GUEST_TR: Segment =
    seg("TR", Field16::GuestTrSelector, FieldNatural::GuestTrBase, Field32::GuestTrLimit, Field32::GuestTrAccessRights);
const GUEST_LDTR: Segment = seg(
    "LDTR",
    Field16::GuestLdtrSelector,
    FieldNatural::GuestLdtrBase,
    Field32::GuestLdtrLimit,
    Field32::GuestLdtrAccessRights,
);

/// The state of one run of the checks.
struct Checker<'a, V: Vmcs12Read> {
    v: &'a V,
    caps: &'a Caps,
    maxphyaddr: u32,
    /// The first valid-but-unsupported setting met, reported if nothing fails.
    unsupported: Option<EntryFailure>,
}

impl<'a, V: Vmcs12Read> Checker<'a, V> {
    fn new(v: &'a V, caps: &'a Caps, maxphyaddr: u32) -> Self {
        Self { v, caps, maxphyaddr, unsupported: None }
    }

    fn r16(&self, f: Field16) -> u16 {
        self.v.read(f.encoding()) as u16
    }

    fn r32(&self, f: Field32) -> u32 {
        self.v.read(f.encoding()) as u32
    }

    fn r64(&self, f: Field64) -> u64 {
        self.v.read(f.encoding())
    }

    fn rn(&self, f: FieldNatural) -> u64 {
        self.v.read(f.encoding())
    }

    fn pin(&self) -> u32 {
        self.r32(Field32::PinBasedVmExecControl)
    }

    fn proc(&self) -> u32 {
        self.r32(Field32::PrimaryProcBasedVmExecControl)
    }

    /// The secondary controls in effect: 27.2.1.1, "If the 'activate secondary controls'
    /// primary processor-based VM-execution control is 0 ..., no checks are performed on
    /// the secondary processor-based VM-execution controls. The logical processor operates
    /// as if all the secondary processor-based VM-execution controls were 0."
    fn proc2(&self) -> u32 {
        if self.proc() & proc1::ACTIVATE_SECONDARY_CONTROLS != 0 {
            self.r32(Field32::SecondaryProcBasedVmExecControl)
        } else {
            0
        }
    }

    fn exit_ctls(&self) -> u32 {
        self.r32(Field32::VmExitControls)
    }

    fn entry_ctls(&self) -> u32 {
        self.r32(Field32::VmEntryControls)
    }

    fn ia32e_guest(&self) -> bool {
        self.entry_ctls() & entry::IA32E_MODE_GUEST != 0
    }

    /// Remember a valid setting L0 cannot honour (the first one wins).
    fn unsupported(&mut self, field: &'static str, why: impl Into<String>) {
        if self.unsupported.is_none() {
            self.unsupported = Some(EntryFailure::Unsupported { field, why: why.into() });
        }
    }

    // ---------------------------------------------------------------------------------
    // 27.2.1 Checks on VMX Controls
    // ---------------------------------------------------------------------------------

    fn controls(&mut self) -> Result<(), EntryFailure> {
        self.execution_controls()?;
        self.exit_controls()?;
        self.entry_controls()
    }

    /// 27.2.1.1 Checks on VM-Execution Control Fields.
    fn execution_controls(&mut self) -> Result<(), EntryFailure> {
        let caps = *self.caps;
        // "Reserved bits in the pin-based VM-execution controls must be set properly.
        // Software may consult the VMX capability MSRs to determine the proper settings (see
        // Appendix A.3.1)."
        allowed(caps.allowed_pinbased(), self.pin(), Field32::PinBasedVmExecControl.name())?;
        // "Reserved bits in the primary processor-based VM-execution controls must be set
        // properly. Software may consult the VMX capability MSRs to determine the proper
        // settings (see Appendix A.3.2)."
        let proc = self.proc();
        allowed(caps.allowed_procbased(), proc, Field32::PrimaryProcBasedVmExecControl.name())?;
        // "If the 'activate secondary controls' primary processor-based VM-execution control
        // is 1, reserved bits in the secondary processor-based VM-execution controls must be
        // cleared. Software may consult the VMX capability MSRs to determine which bits are
        // reserved (see Appendix A.3.3)."
        let proc2 = self.proc2();
        allowed(caps.allowed_procbased2(), proc2, Field32::SecondaryProcBasedVmExecControl.name())?;
        // ("If the 'activate tertiary controls' ... is 1, reserved bits in the tertiary
        // ... controls must be cleared": tertiary controls are not allowed-1.)

        // "The CR3-target count must not be greater than 4. Future processors may support a
        // different number of CR3-target values. Software should read the VMX capability MSR
        // IA32_VMX_MISC to determine the number of values supported (see Appendix A.6)."
        let count = self.r32(Field32::Cr3TargetCount);
        if count > caps.cr3_target_count() {
            return Err(control(
                Field32::Cr3TargetCount.name(),
                format!("{count} CR3-target values, IA32_VMX_MISC[24:16] supports {}", caps.cr3_target_count()),
            ));
        }

        // "If the 'use I/O bitmaps' VM-execution control is 1, bits 11:0 of each I/O-bitmap
        // address must be 0. Neither address should set any bits beyond the processor's
        // physical-address width."
        if proc & proc1::USE_IO_BITMAPS != 0 {
            for f in [Field64::IoBitmapA, Field64::IoBitmapB] {
                let a = self.r64(f);
                if a & 0xFFF != 0 {
                    return Err(control(f.name(), format!("{a:#x} is not 4-KByte aligned (bits 11:0)")));
                }
                if !within_phys(a, self.maxphyaddr) {
                    return Err(control(f.name(), format!("{a:#x} is beyond MAXPHYADDR {}", self.maxphyaddr)));
                }
            }
        }

        // "If the 'use MSR bitmaps' VM-execution control is 1, bits 11:0 of the MSR-bitmap
        // address must be 0. The address should not set any bits beyond the processor's
        // physical-address width." (Whether the bitmap lies in L1 memory, and whether L0 can
        // honour what it intercepts, is decided at entry by `super::msr`.)
        if proc & proc1::USE_MSR_BITMAPS != 0 {
            let f = Field64::MsrBitmap;
            let a = self.r64(f);
            if a & 0xFFF != 0 {
                return Err(control(f.name(), format!("{a:#x} is not 4-KByte aligned (bits 11:0)")));
            }
            if !within_phys(a, self.maxphyaddr) {
                return Err(control(f.name(), format!("{a:#x} is beyond MAXPHYADDR {}", self.maxphyaddr)));
            }
        }

        // Vacuous here (their controls are not allowed-1): "use TPR shadow" (virtual-APIC address, TPR threshold), virtualize x2APIC mode /
        // APIC-register virtualization / virtual-interrupt delivery (need TPR shadow),
        // "NMI exiting" / "virtual NMIs" / "NMI-window exiting", "process posted interrupts",
        // "enable VPID" (VPID != 0), "unrestricted guest" (needs EPT), "enable PML",
        // "enable VM functions", "VMCS shadowing" (VMREAD/VMWRITE-bitmap addresses),
        // "EPT-violation #VE", "virtualize APIC accesses", "sub-page write permissions".

        // "If the 'enable EPT' VM-execution control is 1, the EPTP VM-execution control field
        // (see Table 25-9 in Section 25.6.11) must satisfy the following checks:"
        if proc2 & proc2::ENABLE_EPT != 0 {
            self.check_eptp(caps)?;
        } else {
            // Valid but not honoured: without EPT, L2-physical addresses are L1-physical ones;
            // L0 builds VM2's memory from EPT12 only.
            self.unsupported(
                Field32::SecondaryProcBasedVmExecControl.name(),
                "a guest without EPT ('enable EPT' = 0, L2-physical = L1-physical) is not implemented",
            );
        }

        // Valid but not honoured: exceptions of L2 never reach L0 (KVM handles them in VM2;
        // only a triple fault is seen, as a shutdown). SDM 26.2 (exception bitmap): a #PF
        // exits iff bit 14 of the bitmap equals ((PFEC & PFEC_MASK) == PFEC_MATCH).
        let bitmap = self.r32(Field32::ExceptionBitmap);
        if bitmap & !(1 << 14) != 0 {
            self.unsupported(
                Field32::ExceptionBitmap.name(),
                format!("exception bitmap {bitmap:#x}: L0 cannot intercept L2 exceptions"),
            );
        } else {
            let mask = self.r32(Field32::PageFaultErrorCodeMask);
            let matched = self.r32(Field32::PageFaultErrorCodeMatch);
            let some_pf_exits = if bitmap & (1 << 14) != 0 { matched & !mask == 0 } else { mask != 0 || matched != 0 };
            if some_pf_exits {
                self.unsupported(
                    Field32::ExceptionBitmap.name(),
                    format!(
                        "exception bitmap {bitmap:#x} with PFEC mask {mask:#x} / match {matched:#x} makes page faults \
                         exit: L0 cannot intercept L2 exceptions"
                    ),
                );
            }
        }
        Ok(())
    }

    /// The EPTP bullets of 27.2.1.1.
    fn check_eptp(&self, caps: Caps) -> Result<(), EntryFailure> {
        let field = Field64::EptPointer.name();
        let eptp = self.r64(Field64::EptPointer);
        // "The EPT memory type (bits 2:0) must be a value supported by the processor as
        // indicated in the IA32_VMX_EPT_VPID_CAP MSR (see Appendix A.10)."
        let mt = eptp & 7;
        let mt_ok = (mt == 0 && caps.ept_vpid & ept_cap::MEMTYPE_UC != 0)
            || (mt == 6 && caps.ept_vpid & ept_cap::MEMTYPE_WB != 0);
        if !mt_ok {
            return Err(control(field, format!("EPTP {eptp:#x}: memory type {mt} is not supported")));
        }
        // "Bits 5:3 (1 less than the EPT page-walk length) must indicate a supported EPT
        // page-walk length: 3 (4-level) if bit 6 of IA32_VMX_EPT_VPID_CAP is 1 ..."
        let walk = (eptp >> 3) & 7;
        if !(walk == 3 && caps.ept_vpid & ept_cap::WALK_LENGTH_4 != 0) {
            return Err(control(field, format!("EPTP {eptp:#x}: page-walk length {} is not supported", walk + 1)));
        }
        // "Bit 6 (enable bit for accessed and dirty flags for EPT) must be 0 if bit 21 of the
        // IA32_VMX_EPT_VPID_CAP MSR (see Appendix A.10) is read as 0, indicating that the
        // processor does not support accessed and dirty flags for EPT."
        if eptp & (1 << 6) != 0 && caps.ept_vpid & ept_cap::ACCESSED_DIRTY == 0 {
            return Err(control(field, format!("EPTP {eptp:#x}: accessed/dirty flags (bit 6) are not supported")));
        }
        // "Reserved bits 11:7 and 63:N (where N is the processor's physical-address width)
        // must all be 0." (Bit 7, "supervisor shadow-stack control" on newer processors, is
        // not offered: IA32_VMX_EPT_VPID_CAP[23] = 0.)
        if eptp & 0xF80 != 0 || !within_phys(eptp, self.maxphyaddr) {
            return Err(control(
                field,
                format!("EPTP {eptp:#x}: reserved bits 11:7 or bits above MAXPHYADDR {} are set", self.maxphyaddr),
            ));
        }
        Ok(())
    }

    /// 27.2.1.2 Checks on VM-Exit Control Fields.
    fn exit_controls(&mut self) -> Result<(), EntryFailure> {
        // "Reserved bits in the primary VM-exit controls must be set properly. Software may
        // consult the VMX capability MSRs to determine the proper settings (see Appendix
        // A.4.1)."
        allowed(self.caps.allowed_exit(), self.exit_ctls(), Field32::VmExitControls.name())?;
        // "If the 'activate VMX-preemption timer' VM-execution control is 0, the 'save
        // VMX-preemption timer value' VM-exit control must also be 0."
        if self.exit_ctls() & exit::SAVE_PREEMPTION_TIMER != 0 && self.pin() & pin::PREEMPTION_TIMER == 0 {
            return Err(control(
                Field32::VmExitControls.name(),
                "'save VMX-preemption timer value' without 'activate VMX-preemption timer'".into(),
            ));
        }

        // "The following checks are performed for the VM-exit MSR-store address if the
        // VM-exit MSR-store count field is non-zero: ..." and the same for the MSR-load area.
        for (count, addr) in [
            (Field32::VmExitMsrStoreCount, Field64::VmExitMsrStoreAddr),
            (Field32::VmExitMsrLoadCount, Field64::VmExitMsrLoadAddr),
        ] {
            self.msr_area(count, addr)?;
        }
        Ok(())
    }

    /// The MSR-area address checks of 27.2.1.2 and 27.2.1.3; a valid non-empty area is
    /// unsupported.
    fn msr_area(&mut self, count_field: Field32, addr_field: Field64) -> Result<(), EntryFailure> {
        let count = self.r32(count_field);
        if count == 0 {
            return Ok(());
        }
        let addr = self.r64(addr_field);
        // "The lower 4 bits of the ... address must be 0."
        if addr & 0xF != 0 {
            return Err(control(addr_field.name(), format!("{addr:#x} is not 16-byte aligned (bits 3:0)")));
        }
        // "The address should not set any bits beyond the processor's physical-address
        // width."
        if !within_phys(addr, self.maxphyaddr) {
            return Err(control(addr_field.name(), format!("{addr:#x} is beyond MAXPHYADDR {}", self.maxphyaddr)));
        }
        // "The address of the last byte in the ... area should not set any bits beyond the
        // processor's physical-address width. The address of this last byte is ... address +
        // (MSR count * 16) – 1. (The arithmetic used for the computation uses more bits than
        // the processor's physical-address width.)"
        let last = u128::from(addr) + u128::from(count) * 16 - 1;
        if self.maxphyaddr < 128 && last >> self.maxphyaddr != 0 {
            return Err(control(
                addr_field.name(),
                format!("the {count}-entry area at {addr:#x} ends at {last:#x}, beyond MAXPHYADDR {}", self.maxphyaddr),
            ));
        }
        // The entries of the VM-entry MSR-load area are checked and loaded after the guest
        // state (SDM 27.4, `super::msr_load`); the VM-exit areas are not honoured.
        if count_field != Field32::VmEntryMsrLoadCount {
            self.unsupported(
                count_field.name(),
                format!("{count} MSR-area entries: L0 stores and loads no MSR lists at VM exit"),
            );
        } else if count > super::msr_load::MAX_ENTRIES {
            self.unsupported(
                count_field.name(),
                format!(
                    "{count} entries: L0 loads at most {} (IA32_VMX_MISC[27:25] recommends 512)",
                    super::msr_load::MAX_ENTRIES
                ),
            );
        }
        Ok(())
    }

    /// 27.2.1.3 Checks on VM-Entry Control Fields.
    fn entry_controls(&mut self) -> Result<(), EntryFailure> {
        // "Reserved bits in the VM-entry controls must be set properly. Software may consult
        // the VMX capability MSRs to determine the proper settings (see Appendix A.5)."
        allowed(self.caps.allowed_entry(), self.entry_ctls(), Field32::VmEntryControls.name())?;

        // "Fields relevant to VM-entry event injection must be set properly. These fields
        // are the VM-entry interruption-information field (see Table 25-17 in Section
        // 25.8.3), the VM-entry exception error code, and the VM-entry instruction length.
        // If the valid bit (bit 31) in the VM-entry interruption-information field is 1, the
        // following must hold:"
        let info = self.r32(Field32::VmEntryInterruptionInfo);
        if info & intr::VALID != 0 {
            self.check_injection(info)?;
            // Injected through KVM_SET_VCPU_EVENTS (super::injection), which has no place for
            // the instruction length a software event pushes.
            let kind = (info >> intr::TYPE_SHIFT) & 7;
            if matches!(kind, intr::SOFTWARE_INTERRUPT | intr::PRIVILEGED_SOFTWARE_EXCEPTION | intr::SOFTWARE_EXCEPTION)
            {
                self.unsupported(
                    Field32::VmEntryInterruptionInfo.name(),
                    format!(
                        "injection of a software interrupt or exception ({info:#010x}): KVM_SET_VCPU_EVENTS cannot give \
                         VM2 the instruction length it pushes"
                    ),
                );
            }
        }

        // "The following checks are performed for the VM-entry MSR-load address if the
        // VM-entry MSR-load count field is non-zero: ..."
        self.msr_area(Field32::VmEntryMsrLoadCount, Field64::VmEntryMsrLoadAddr)?;

        // ("If the processor is not in SMM, the 'entry to SMM' and 'deactivate dual-monitor
        // treatment' VM-entry controls must be 0": neither is allowed-1.)

        // Not an SDM check: a guest outside IA-32e mode is valid, but part 1 runs 64-bit L2s
        // only (no PDPTE loading, no 32-bit segment bases in the I/O decoder).
        if !self.ia32e_guest() {
            self.unsupported(
                Field32::VmEntryControls.name(),
                "a guest outside IA-32e mode ('IA-32e mode guest' = 0) is not supported in part 1",
            );
        }
        Ok(())
    }

    /// The event-injection bullets of 27.2.1.3, for a valid interruption-information field.
    fn check_injection(&self, info: u32) -> Result<(), EntryFailure> {
        let field = Field32::VmEntryInterruptionInfo.name();
        let kind = (info >> intr::TYPE_SHIFT) & 7;
        let vector = info & intr::VECTOR;
        // "The field's interruption type (bits 10:8) is not set to a reserved value. Value 1
        // is reserved on all logical processors; value 7 (other event) is reserved on logical
        // processors that do not support the 1-setting of the 'monitor trap flag' VM-execution
        // control."
        let mtf = self.caps.allowed_procbased().may_be_one & proc1::MONITOR_TRAP_FLAG != 0;
        if kind == 1 || (kind == intr::OTHER_EVENT && !mtf) {
            return Err(control(field, format!("{info:#010x}: interruption type {kind} is reserved")));
        }
        // "The field's vector (bits 7:0) is consistent with the interruption type: If the
        // interruption type is non-maskable interrupt (NMI), the vector is 2. If the
        // interruption type is hardware exception, the vector is at most 31. If the
        // interruption type is other event, the vector is 0 (pending MTF VM exit)."
        let vector_ok = match kind {
            intr::NMI => vector == 2,
            intr::HARDWARE_EXCEPTION => vector <= 31,
            intr::OTHER_EVENT => vector == 0,
            _ => true,
        };
        if !vector_ok {
            return Err(control(field, format!("{info:#010x}: vector {vector} does not fit interruption type {kind}")));
        }
        // "The field's deliver-error-code bit (bit 11) is 1 if each of the following holds:
        // (1) the interruption type is hardware exception; (2) bit 0 (corresponding to
        // CR0.PE) is set in the CR0 field in the guest-state area; (3) IA32_VMX_BASIC[56] is
        // read as 0 (see Appendix A.1); and (4) the vector indicates one of the following
        // exceptions: #DF (vector 8), #TS (10), #NP (11), #SS (12), #GP (13), #PF (14), or #AC
        // (17)."
        // "The field's deliver-error-code bit is 0 if any of the following holds: (1) the
        // interruption type is not hardware exception; (2) bit 0 is clear in the CR0 field in
        // the guest-state area; or (3) IA32_VMX_BASIC[56] is read as 0 and the vector is in
        // one of the following ranges: 0–7, 9, 15, 16, or 18–31."
        let deliver = info & intr::ERROR_CODE != 0;
        let pe = self.rn(FieldNatural::GuestCr0) & CR0_PE != 0;
        let strict = !self.caps.vmx_basic().no_error_code_check();
        let has_code = matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17);
        let hw = kind == intr::HARDWARE_EXCEPTION;
        if hw && pe && strict && has_code && !deliver {
            return Err(control(field, format!("{info:#010x}: exception {vector} must deliver an error code")));
        }
        if deliver && (!hw || !pe || (strict && !has_code)) {
            return Err(control(field, format!("{info:#010x}: deliver-error-code must be 0 here")));
        }
        // "Reserved bits in the field (30:12) are 0."
        if info & intr::ENTRY_RESERVED != 0 {
            return Err(control(field, format!("{info:#010x}: reserved bits 30:12 are set")));
        }
        // "If the deliver-error-code bit (bit 11) is 1, bits 31:16 of the VM-entry exception
        // error-code field are 0."
        let code = self.r32(Field32::VmEntryExceptionErrorCode);
        if deliver && code >> 16 != 0 {
            return Err(control(
                Field32::VmEntryExceptionErrorCode.name(),
                format!("{code:#x}: bits 31:16 of the error code are set"),
            ));
        }
        // "If the interruption type is software interrupt, software exception, or privileged
        // software exception, the VM-entry instruction-length field is in the range 0–15. A
        // VM-entry instruction length of 0 is allowed only if IA32_VMX_MISC[30] is read as 1;
        // see Appendix A.6."
        if matches!(kind, intr::SOFTWARE_INTERRUPT | intr::PRIVILEGED_SOFTWARE_EXCEPTION | intr::SOFTWARE_EXCEPTION) {
            let len = self.r32(Field32::VmEntryInstructionLength);
            let zero_ok = self.caps.misc & (1 << 30) != 0;
            if len > 15 || (len == 0 && !zero_ok) {
                return Err(control(
                    Field32::VmEntryInstructionLength.name(),
                    format!("instruction length {len} for a software event (1-15 allowed)"),
                ));
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // 27.2.2-27.2.4 Checks on the host-state area
    // ---------------------------------------------------------------------------------

    fn host_state(&mut self) -> Result<(), EntryFailure> {
        let exit_ctls = self.exit_ctls();
        let host_64 = exit_ctls & exit::HOST_ADDRESS_SPACE_SIZE != 0;

        // 27.2.2 Checks on Host Control Registers, MSRs, and SSP.
        // "The CR0 field must not set any bit to a value not supported in VMX operation (see
        // Section 24.8)."
        let cr0 = self.rn(FieldNatural::HostCr0);
        if let Err(e) = self.caps.check_cr0(cr0) {
            return Err(host(FieldNatural::HostCr0.name(), format!("{cr0:#x} violates IA32_VMX_CR0_FIXED0/1: {e:?}")));
        }
        // "The CR4 field must not set any bit to a value not supported in VMX operation (see
        // Section 24.8)."
        let cr4 = self.rn(FieldNatural::HostCr4);
        if let Err(e) = self.caps.check_cr4(cr4) {
            return Err(host(FieldNatural::HostCr4.name(), format!("{cr4:#x} violates IA32_VMX_CR4_FIXED0/1: {e:?}")));
        }
        // ("If bit 23 in the CR4 field (corresponding to CET) is 1, bit 16 in the CR0 field
        // (WP) must also be 1": CR4.CET is not allowed by IA32_VMX_CR4_FIXED1.)
        // "On processors that support Intel 64 architecture, the CR3 field must be such that
        // bits 63:52 and bits in the range 51:32 beyond the processor's physical-address
        // width must be 0."
        let cr3 = self.rn(FieldNatural::HostCr3);
        if !within_phys(cr3, self.maxphyaddr) {
            return Err(host(
                FieldNatural::HostCr3.name(),
                format!("{cr3:#x} is beyond MAXPHYADDR {}", self.maxphyaddr),
            ));
        }
        // "On processors that support Intel 64 architecture, the IA32_SYSENTER_ESP field and
        // the IA32_SYSENTER_EIP field must each contain a canonical address."
        for f in [FieldNatural::HostIa32SysenterEsp, FieldNatural::HostIa32SysenterEip] {
            let a = self.rn(f);
            if !canonical(a) {
                return Err(host(f.name(), format!("{a:#x} is not canonical")));
            }
        }
        // ("If the 'load IA32_PERF_GLOBAL_CTRL' / 'load IA32_PAT' VM-exit control is 1 ...":
        // not allowed-1.)
        // "If the 'load IA32_EFER' VM-exit control is 1, bits reserved in the IA32_EFER MSR
        // must be 0. Bit 10 (corresponding to IA32_EFER.LMA) must equal the value of the
        // 'host address-space size' VM-exit control. It must also be identical to bit 8
        // (LME)."
        if exit_ctls & exit::LOAD_EFER != 0 {
            let efer = self.r64(Field64::HostIa32Efer);
            let field = Field64::HostIa32Efer.name();
            if efer & !EFER_DEFINED != 0 {
                return Err(host(field, format!("{efer:#x} sets reserved IA32_EFER bits")));
            }
            let lma = efer & EFER_LMA != 0;
            if lma != host_64 {
                return Err(host(field, format!("{efer:#x}: LMA differs from 'host address-space size'")));
            }
            if lma != (efer & EFER_LME != 0) {
                return Err(host(field, format!("{efer:#x}: LMA differs from LME")));
            }
        }

        // 27.2.3 Checks on Host Segment and Descriptor-Table Registers.
        // "In the selector field for each of CS, SS, DS, ES, FS, GS and TR, the RPL (bits
        // 1:0) and the TI flag (bit 2) must be 0."
        for f in [
            Field16::HostCsSelector,
            Field16::HostSsSelector,
            Field16::HostDsSelector,
            Field16::HostEsSelector,
            Field16::HostFsSelector,
            Field16::HostGsSelector,
            Field16::HostTrSelector,
        ] {
            let s = self.r16(f);
            if s & 7 != 0 {
                return Err(host(f.name(), format!("selector {s:#x} has RPL or TI set")));
            }
        }
        // "The selector fields for CS and TR cannot be 0000H."
        for f in [Field16::HostCsSelector, Field16::HostTrSelector] {
            if self.r16(f) == 0 {
                return Err(host(f.name(), "selector is 0000H".into()));
            }
        }
        // "The selector field for SS cannot be 0000H if the 'host address-space size' VM-exit
        // control is 0."
        if !host_64 && self.r16(Field16::HostSsSelector) == 0 {
            return Err(host(Field16::HostSsSelector.name(), "selector is 0000H with a 32-bit host".into()));
        }
        // "On processors that support Intel 64 architecture, the base-address fields for FS,
        // GS, GDTR, IDTR, and TR must contain canonical addresses."
        for f in [
            FieldNatural::HostFsBase,
            FieldNatural::HostGsBase,
            FieldNatural::HostGdtrBase,
            FieldNatural::HostIdtrBase,
            FieldNatural::HostTrBase,
        ] {
            let a = self.rn(f);
            if !canonical(a) {
                return Err(host(f.name(), format!("{a:#x} is not canonical")));
            }
        }

        // 27.2.4 Checks Related to Address-Space Size.
        // "If the logical processor is in IA-32e mode (if IA32_EFER.LMA = 1) at the time of
        // VM entry, the 'host address-space size' VM-exit control must be 1." L1 always is.
        if !host_64 {
            return Err(host(
                Field32::VmExitControls.name(),
                "L1 is in IA-32e mode, so 'host address-space size' must be 1".into(),
            ));
        }
        // "If the 'host address-space size' VM-exit control is 1, the following must hold:
        // Bit 5 of the CR4 field (corresponding to CR4.PAE) is 1. The RIP field contains a
        // canonical address."
        if cr4 & CR4_PAE == 0 {
            return Err(host(FieldNatural::HostCr4.name(), format!("{cr4:#x}: PAE must be 1 for a 64-bit host")));
        }
        let rip = self.rn(FieldNatural::HostRip);
        if !canonical(rip) {
            return Err(host(FieldNatural::HostRip.name(), format!("{rip:#x} is not canonical")));
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // 27.3.1 Checks on the Guest State Area
    // ---------------------------------------------------------------------------------

    fn guest_state(&mut self) -> Result<(), EntryFailure> {
        self.guest_control_registers()?;
        self.guest_segments()?;
        self.guest_descriptor_tables()?;
        self.guest_rip_rflags()?;
        self.guest_non_register_state()?;
        self.guest_pdptes()
    }

    /// 27.3.1.6 Checks on Guest Page-Directory-Pointer-Table Entries. "A VM entry is to a guest
    /// that uses PAE paging if (1) bit 31 (PG) is set in the CR0 field in the guest-state
    /// area; (2) bit 5 (PAE) is set in the CR4 field; and (3) the 'IA-32e mode guest' VM-entry
    /// control is 0." Such a guest is unsupported here (entry_controls), but a PDPTE failure
    /// is architectural and wins over that.
    fn guest_pdptes(&self) -> Result<(), EntryFailure> {
        let pae_paging = self.rn(FieldNatural::GuestCr0) & CR0_PG != 0
            && self.rn(FieldNatural::GuestCr4) & CR4_PAE != 0
            && !self.ia32e_guest();
        // "If the 'enable EPT' VM-execution control is 1, VM entry checks the validity of the
        // PDPTE fields in the guest-state area." (With EPT 0 it checks the PDPTEs at CR3 in
        // memory, which this pure function does not read: that guest stays unsupported.)
        if !pae_paging || self.proc2() & proc2::ENABLE_EPT == 0 {
            return Ok(());
        }
        for f in [Field64::GuestPdpte0, Field64::GuestPdpte1, Field64::GuestPdpte2, Field64::GuestPdpte3] {
            check_pdpte(f.name(), self.r64(f), self.maxphyaddr)?;
        }
        Ok(())
    }

    /// 27.3.1.1 Checks on Guest Control Registers, Debug Registers, and MSRs.
    fn guest_control_registers(&mut self) -> Result<(), EntryFailure> {
        let ia32e = self.ia32e_guest();
        let entry_ctls = self.entry_ctls();
        // "The CR0 field must not set any bit to a value not supported in VMX operation (see
        // Section 24.8). The following are exceptions: Bit 0 (corresponding to CR0.PE) and
        // bit 31 (PG) are not checked if the 'unrestricted guest' VM-execution control is 1."
        // (Unrestricted guest is not allowed-1: PE and PG are checked.)
        let cr0 = self.rn(FieldNatural::GuestCr0);
        if let Err(e) = self.caps.check_cr0(cr0) {
            return Err(guest(
                FieldNatural::GuestCr0.name(),
                format!("{cr0:#x} violates IA32_VMX_CR0_FIXED0/1: {e:?}"),
            ));
        }
        // "If bit 31 in the CR0 field (corresponding to PG) is 1, bit 0 in that field (PE)
        // must also be 1."
        if cr0 & CR0_PG != 0 && cr0 & CR0_PE == 0 {
            return Err(guest(FieldNatural::GuestCr0.name(), format!("{cr0:#x}: PG without PE")));
        }
        // "The CR4 field must not set any bit to a value not supported in VMX operation (see
        // Section 24.8)."
        let cr4 = self.rn(FieldNatural::GuestCr4);
        if let Err(e) = self.caps.check_cr4(cr4) {
            return Err(guest(
                FieldNatural::GuestCr4.name(),
                format!("{cr4:#x} violates IA32_VMX_CR4_FIXED0/1: {e:?}"),
            ));
        }
        // ("If bit 23 in the CR4 field (corresponding to CET) is 1, bit 16 in the CR0 field
        // (WP) must also be 1": CR4.CET is not allowed.)
        // "If the 'load debug controls' VM-entry control is 1, bits reserved in the
        // IA32_DEBUGCTL MSR must be 0 in the field for that register. The first processors
        // to support the virtual-machine extensions supported only the 1-settings of bits 0
        // and 1 in this MSR, allowing only those bits to be set to 1 in this field." The soft
        // engine is such a processor.
        let load_debug = entry_ctls & entry::LOAD_DEBUG_CONTROLS != 0;
        if load_debug {
            let debugctl = self.r64(Field64::GuestIa32Debugctl);
            if debugctl & !3 != 0 {
                return Err(guest(Field64::GuestIa32Debugctl.name(), format!("{debugctl:#x} sets reserved bits")));
            }
            if debugctl != 0 {
                self.unsupported(
                    Field64::GuestIa32Debugctl.name(),
                    format!("IA32_DEBUGCTL {debugctl:#x} (LBR/BTF) is not loaded into L2"),
                );
            }
        }
        // "If the 'IA-32e mode guest' VM-entry control is 1, bit 31 in the CR0 field
        // (corresponding to CR0.PG) and bit 5 in the CR4 field (corresponding to CR4.PAE)
        // must each be 1."
        if ia32e && cr0 & CR0_PG == 0 {
            return Err(guest(FieldNatural::GuestCr0.name(), format!("{cr0:#x}: IA-32e mode guest needs PG")));
        }
        if ia32e && cr4 & CR4_PAE == 0 {
            return Err(guest(FieldNatural::GuestCr4.name(), format!("{cr4:#x}: IA-32e mode guest needs PAE")));
        }
        // "If the 'IA-32e mode guest' VM-entry control is 0, bit 17 in the CR4 field
        // (corresponding to CR4.PCIDE) must be 0."
        if !ia32e && cr4 & CR4_PCIDE != 0 {
            return Err(guest(FieldNatural::GuestCr4.name(), format!("{cr4:#x}: PCIDE outside IA-32e mode")));
        }
        // "The CR3 field must be such that bits 63:52 and bits in the range 51:32 beyond the
        // processor's physical-address width are 0."
        let cr3 = self.rn(FieldNatural::GuestCr3);
        if !within_phys(cr3, self.maxphyaddr) {
            return Err(guest(
                FieldNatural::GuestCr3.name(),
                format!("{cr3:#x} is beyond MAXPHYADDR {}", self.maxphyaddr),
            ));
        }
        // "If the 'load debug controls' VM-entry control is 1, bits 63:32 in the DR7 field
        // must be 0."
        let dr7 = self.rn(FieldNatural::GuestDr7);
        if load_debug && dr7 >> 32 != 0 {
            return Err(guest(FieldNatural::GuestDr7.name(), format!("{dr7:#x}: bits 63:32 must be 0")));
        }
        // "The IA32_SYSENTER_ESP field and the IA32_SYSENTER_EIP field must each contain a
        // canonical address."
        for f in [FieldNatural::GuestIa32SysenterEsp, FieldNatural::GuestIa32SysenterEip] {
            let a = self.rn(f);
            if !canonical(a) {
                return Err(guest(f.name(), format!("{a:#x} is not canonical")));
            }
        }
        // ("If the 'load IA32_PERF_GLOBAL_CTRL' / 'load IA32_PAT' / 'load IA32_BNDCFGS' ...
        // VM-entry control is 1 ...": not allowed-1.)
        // "If the 'load IA32_EFER' VM-entry control is 1, the following checks are performed
        // on the field for the IA32_EFER MSR: Bits reserved in the IA32_EFER MSR must be 0.
        // Bit 10 (corresponding to IA32_EFER.LMA) must equal the value of the 'IA-32e mode
        // guest' VM-entry control. It must also be identical to bit 8 (LME) if bit 31 in the
        // CR0 field (corresponding to CR0.PG) is 1."
        if entry_ctls & entry::LOAD_EFER != 0 {
            let efer = self.r64(Field64::GuestIa32Efer);
            let field = Field64::GuestIa32Efer.name();
            if efer & !EFER_DEFINED != 0 {
                return Err(guest(field, format!("{efer:#x} sets reserved IA32_EFER bits")));
            }
            let lma = efer & EFER_LMA != 0;
            if lma != ia32e {
                return Err(guest(field, format!("{efer:#x}: LMA differs from 'IA-32e mode guest'")));
            }
            if cr0 & CR0_PG != 0 && lma != (efer & EFER_LME != 0) {
                return Err(guest(field, format!("{efer:#x}: LMA differs from LME with CR0.PG = 1")));
            }
        }
        Ok(())
    }

    /// 27.3.1.2 Checks on Guest Segment Registers. "The guest will be virtual-8086 if the VM
    /// flag (bit 17) is 1 in the RFLAGS field in the guest-state area. The guest will be
    /// IA-32e mode if the 'IA-32e mode guest' VM-entry control is 1. Any one of these
    /// registers is said to be usable if the unusable bit (bit 16) is 0 in the access-rights
    /// field for that register." ("Unrestricted guest" is 0 throughout.)
    fn guest_segments(&self) -> Result<(), EntryFailure> {
        let v86 = self.rn(FieldNatural::GuestRflags) & RFLAGS_VM != 0;
        let ia32e = self.ia32e_guest();
        let sel = |s: &Segment| self.r16(s.selector);
        let ar = |s: &Segment| self.r32(s.ar);
        let usable = |s: &Segment| ar(s) & AR_UNUSABLE == 0;
        let bad = |s: &Segment, f: u32, why: String| guest(field_name(f), format!("{}: {why}", s.name));

        // Selector fields.
        // "TR. The TI flag (bit 2) must be 0."
        if sel(&GUEST_TR) & 4 != 0 {
            return Err(bad(&GUEST_TR, GUEST_TR.selector.encoding(), "TI must be 0".into()));
        }
        // "LDTR. If LDTR is usable, the TI flag (bit 2) must be 0."
        if usable(&GUEST_LDTR) && sel(&GUEST_LDTR) & 4 != 0 {
            return Err(bad(&GUEST_LDTR, GUEST_LDTR.selector.encoding(), "TI must be 0".into()));
        }
        // "SS. If the guest will not be virtual-8086 and the 'unrestricted guest' VM-execution
        // control is 0, the RPL (bits 1:0) must equal the RPL of the selector field for CS."
        if !v86 && sel(&GUEST_SS) & 3 != sel(&GUEST_CS) & 3 {
            return Err(bad(&GUEST_SS, GUEST_SS.selector.encoding(), "RPL must equal CS.RPL".into()));
        }

        // Base-address fields.
        let data_segs = [&GUEST_CS, &GUEST_SS, &GUEST_DS, &GUEST_ES, &GUEST_FS, &GUEST_GS];
        // "CS, SS, DS, ES, FS, GS. If the guest will be virtual-8086, the address must be the
        // selector field shifted left 4 bits (multiplied by 16)."
        if v86 {
            for s in data_segs {
                if self.rn(s.base) != u64::from(sel(s)) << 4 {
                    return Err(bad(s, s.base.encoding(), "virtual-8086 base must be selector * 16".into()));
                }
            }
        }
        // "The following checks are performed on processors that support Intel 64
        // architecture: TR, FS, GS. The address must be canonical. LDTR. If LDTR is usable,
        // the address must be canonical. CS. Bits 63:32 of the address must be zero. SS, DS,
        // ES. If the register is usable, bits 63:32 of the address must be zero."
        for s in [&GUEST_TR, &GUEST_FS, &GUEST_GS] {
            if !canonical(self.rn(s.base)) {
                return Err(bad(s, s.base.encoding(), format!("base {:#x} is not canonical", self.rn(s.base))));
            }
        }
        if usable(&GUEST_LDTR) && !canonical(self.rn(GUEST_LDTR.base)) {
            return Err(bad(&GUEST_LDTR, GUEST_LDTR.base.encoding(), "base is not canonical".into()));
        }
        if self.rn(GUEST_CS.base) >> 32 != 0 {
            return Err(bad(&GUEST_CS, GUEST_CS.base.encoding(), "base bits 63:32 must be 0".into()));
        }
        for s in [&GUEST_SS, &GUEST_DS, &GUEST_ES] {
            if usable(s) && self.rn(s.base) >> 32 != 0 {
                return Err(bad(s, s.base.encoding(), "base bits 63:32 must be 0".into()));
            }
        }

        // "Limit fields for CS, SS, DS, ES, FS, GS. If the guest will be virtual-8086, the
        // field must be 0000FFFFH."
        // "Access-rights fields. CS, SS, DS, ES, FS, GS. If the guest will be virtual-8086,
        // the field must be 000000F3H."
        if v86 {
            for s in data_segs {
                if self.r32(s.limit) != 0xFFFF {
                    return Err(bad(s, s.limit.encoding(), "virtual-8086 limit must be 0000FFFFH".into()));
                }
                if ar(s) != 0xF3 {
                    return Err(bad(s, s.ar.encoding(), "virtual-8086 access rights must be 000000F3H".into()));
                }
            }
        } else {
            self.guest_segment_access_rights(ia32e)?;
        }

        // "TR. The different sub-fields are considered separately:"
        let tr = ar(&GUEST_TR);
        let tr_err = |why: &str| Err(bad(&GUEST_TR, GUEST_TR.ar.encoding(), format!("access rights {tr:#x}: {why}")));
        // "Bits 3:0 (Type). If the guest will not be IA-32e mode, the Type must be 3 (16-bit
        // busy TSS) or 11 (32-bit busy TSS). If the guest will be IA-32e mode, the Type must
        // be 11 (64-bit busy TSS)."
        let tr_type = tr & AR_TYPE;
        if !(tr_type == 11 || (!ia32e && tr_type == 3)) {
            return tr_err("type must be a busy TSS (11; or 3 outside IA-32e mode)");
        }
        // "Bit 4 (S). S must be 0."
        if tr & AR_S != 0 {
            return tr_err("S must be 0");
        }
        // "Bit 7 (P). P must be 1."
        if tr & AR_P == 0 {
            return tr_err("P must be 1");
        }
        // "Bits 11:8 (reserved). These bits must all be 0."
        if tr & AR_RESERVED_11_8 != 0 {
            return tr_err("reserved bits 11:8 must be 0");
        }
        // "Bit 15 (G). If any bit in the limit field in the range 11:0 is 0, G must be 0. If
        // any bit in the limit field in the range 31:20 is 1, G must be 1."
        if let Some(why) = granularity_error(self.r32(GUEST_TR.limit), tr) {
            return tr_err(why);
        }
        // "Bit 16 (Unusable). The unusable bit must be 0."
        if tr & AR_UNUSABLE != 0 {
            return tr_err("TR must be usable");
        }
        // "Bits 31:17 (reserved). These bits must all be 0."
        if tr & AR_RESERVED_31_17 != 0 {
            return tr_err("reserved bits 31:17 must be 0");
        }

        // "LDTR. The following checks on the different sub-fields apply only if LDTR is
        // usable:"
        if usable(&GUEST_LDTR) {
            let l = ar(&GUEST_LDTR);
            let ldtr_err =
                |why: &str| Err(bad(&GUEST_LDTR, GUEST_LDTR.ar.encoding(), format!("access rights {l:#x}: {why}")));
            // "Bits 3:0 (Type). The Type must be 2 (LDT)."
            if l & AR_TYPE != 2 {
                return ldtr_err("type must be 2 (LDT)");
            }
            // "Bit 4 (S). S must be 0."
            if l & AR_S != 0 {
                return ldtr_err("S must be 0");
            }
            // "Bit 7 (P). P must be 1."
            if l & AR_P == 0 {
                return ldtr_err("P must be 1");
            }
            // "Bits 11:8 (reserved). These bits must all be 0."
            if l & AR_RESERVED_11_8 != 0 {
                return ldtr_err("reserved bits 11:8 must be 0");
            }
            // "Bit 15 (G). ..." (as for TR)
            if let Some(why) = granularity_error(self.r32(GUEST_LDTR.limit), l) {
                return ldtr_err(why);
            }
            // "Bits 31:17 (reserved). These bits must all be 0."
            if l & AR_RESERVED_31_17 != 0 {
                return ldtr_err("reserved bits 31:17 must be 0");
            }
        }
        Ok(())
    }

    /// The access-rights bullets of 27.3.1.2 for CS, SS, DS, ES, FS and GS when "the guest
    /// will not be virtual-8086".
    fn guest_segment_access_rights(&self, ia32e: bool) -> Result<(), EntryFailure> {
        let cs_ar = self.r32(GUEST_CS.ar);
        let ss_ar = self.r32(GUEST_SS.ar);
        let dpl = |ar: u32| (ar >> AR_DPL_SHIFT) & 3;
        for s in [&GUEST_CS, &GUEST_SS, &GUEST_DS, &GUEST_ES, &GUEST_FS, &GUEST_GS] {
            let ar = self.r32(s.ar);
            let is_cs = s.selector == GUEST_CS.selector;
            let is_ss = s.selector == GUEST_SS.selector;
            let usable = ar & AR_UNUSABLE == 0;
            let ty = ar & AR_TYPE;
            let rpl = u32::from(self.r16(s.selector) & 3);
            let err = |why: &str| {
                Err(guest(field_name(s.ar.encoding()), format!("{}: access rights {ar:#x}: {why}", s.name)))
            };
            // "Bits 3:0 (Type)."
            // "CS. ... If the control [unrestricted guest] is 0, the Type must be 9, 11, 13, or
            // 15 (accessed code segment)."
            if is_cs && !matches!(ty, 9 | 11 | 13 | 15) {
                return err("type must be 9, 11, 13 or 15 (accessed code segment)");
            }
            // "SS. If SS is usable, the Type must be 3 or 7 (read/write, accessed data
            // segment)."
            if is_ss && usable && !matches!(ty, 3 | 7) {
                return err("type must be 3 or 7 (read/write accessed data segment)");
            }
            // "DS, ES, FS, GS. The following checks apply if the register is usable: Bit 0 of
            // the Type must be 1 (accessed). If bit 3 of the Type is 1 (code segment), then bit
            // 1 of the Type must be 1 (readable)."
            if !is_cs && !is_ss && usable {
                if ty & 1 == 0 {
                    return err("type must be accessed (bit 0)");
                }
                if ty & 8 != 0 && ty & 2 == 0 {
                    return err("a code segment must be readable (type bit 1)");
                }
            }
            let checked = is_cs || usable;
            // "Bit 4 (S). If the register is CS or if the register is usable, S must be 1."
            if checked && ar & AR_S == 0 {
                return err("S must be 1");
            }
            // "Bits 6:5 (DPL)."
            // "CS. ... If the Type is 9 or 11 (non-conforming code segment), the DPL must
            // equal the DPL in the access-rights field for SS. If the Type is 13 or 15
            // (conforming code segment), the DPL cannot be greater than the DPL in the
            // access-rights field for SS."
            if is_cs && matches!(ty, 9 | 11) && dpl(ar) != dpl(ss_ar) {
                return err("a non-conforming CS needs DPL = SS.DPL");
            }
            if is_cs && matches!(ty, 13 | 15) && dpl(ar) > dpl(ss_ar) {
                return err("a conforming CS needs DPL <= SS.DPL");
            }
            // "SS. If the 'unrestricted guest' VM-execution control is 0, the DPL must equal
            // the RPL from the selector field. The DPL must be 0 either if the Type in the
            // access-rights field for CS is 3 (read/write, accessed expand-up data segment)
            // or if bit 0 in the CR0 field (corresponding to CR0.PE) is 0."
            if is_ss {
                if dpl(ar) != rpl {
                    return err("DPL must equal the selector's RPL");
                }
                let pe = self.rn(FieldNatural::GuestCr0) & CR0_PE != 0;
                if (cs_ar & AR_TYPE == 3 || !pe) && dpl(ar) != 0 {
                    return err("DPL must be 0 (CS type 3 or CR0.PE = 0)");
                }
            }
            // "DS, ES, FS, GS. The DPL cannot be less than the RPL in the selector field if (1)
            // the 'unrestricted guest' VM-execution control is 0; (2) the register is usable;
            // and (3) the Type in the access-rights field is in the range 0 – 11 (data segment
            // or non-conforming code segment)."
            if !is_cs && !is_ss && usable && ty <= 11 && dpl(ar) < rpl {
                return err("DPL must not be less than the selector's RPL");
            }
            // "Bit 7 (P). If the register is CS or if the register is usable, P must be 1."
            if checked && ar & AR_P == 0 {
                return err("P must be 1");
            }
            // "Bits 11:8 (reserved). If the register is CS or if the register is usable, these
            // bits must all be 0."
            if checked && ar & AR_RESERVED_11_8 != 0 {
                return err("reserved bits 11:8 must be 0");
            }
            // "Bit 14 (D/B). For CS, D/B must be 0 if the guest will be IA-32e mode and the L
            // bit (bit 13) in the access-rights field is 1."
            if is_cs && ia32e && ar & AR_L != 0 && ar & AR_DB != 0 {
                return err("a 64-bit CS (L = 1) needs D/B = 0");
            }
            // "Bit 15 (G). The following checks apply if the register is CS or if the
            // register is usable: If any bit in the limit field in the range 11:0 is 0, G must
            // be 0. If any bit in the limit field in the range 31:20 is 1, G must be 1."
            if let Some(why) = granularity_error(self.r32(s.limit), ar).filter(|_| checked) {
                return err(why);
            }
            // "Bits 31:17 (reserved). If the register is CS or if the register is usable,
            // these bits must all be 0."
            if checked && ar & AR_RESERVED_31_17 != 0 {
                return err("reserved bits 31:17 must be 0");
            }
        }
        Ok(())
    }

    /// 27.3.1.3 Checks on Guest Descriptor-Table Registers.
    fn guest_descriptor_tables(&self) -> Result<(), EntryFailure> {
        for (base, limit) in [
            (FieldNatural::GuestGdtrBase, Field32::GuestGdtrLimit),
            (FieldNatural::GuestIdtrBase, Field32::GuestIdtrLimit),
        ] {
            // "On processors that support Intel 64 architecture, the base-address fields
            // must contain canonical addresses."
            let b = self.rn(base);
            if !canonical(b) {
                return Err(guest(base.name(), format!("{b:#x} is not canonical")));
            }
            // "Bits 31:16 of each limit field must be 0."
            let l = self.r32(limit);
            if l >> 16 != 0 {
                return Err(guest(limit.name(), format!("{l:#x}: bits 31:16 must be 0")));
            }
        }
        Ok(())
    }

    /// 27.3.1.4 Checks on Guest RIP, RFLAGS, and SSP.
    fn guest_rip_rflags(&self) -> Result<(), EntryFailure> {
        let ia32e = self.ia32e_guest();
        let cs_l = self.r32(GUEST_CS.ar) & AR_L != 0;
        let rip = self.rn(FieldNatural::GuestRip);
        let field = FieldNatural::GuestRip.name();
        // "RIP. The following checks are performed on processors that support Intel 64
        // architecture: Bits 63:32 must be 0 if the 'IA-32e mode guest' VM-entry control is 0
        // or if the L bit (bit 13) in the access-rights field for CS is 0."
        if (!ia32e || !cs_l) && rip >> 32 != 0 {
            return Err(guest(field, format!("{rip:#x}: bits 63:32 must be 0 outside 64-bit mode")));
        }
        // "If the processor supports N < 64 linear-address bits, bits 63:N must be identical
        // if the 'IA-32e mode guest' VM-entry control is 1 and the L bit in the access-rights
        // field for CS is 1." (N = 48: bits 63:48, so bit 47 may differ; such a RIP enters
        // and then faults on the fetch, as on hardware.)
        let high = rip >> 48;
        if ia32e && cs_l && high != 0 && high != 0xFFFF {
            return Err(guest(field, format!("{rip:#x}: bits 63:48 must be identical")));
        }

        let rflags = self.rn(FieldNatural::GuestRflags);
        let field = FieldNatural::GuestRflags.name();
        // "RFLAGS. Reserved bits 63:22 (bits 31:22 on processors that do not support Intel 64
        // architecture), bit 15, bit 5 and bit 3 must be 0 in the field, and reserved bit 1
        // must be 1."
        if rflags & RFLAGS_RESERVED_ZERO != 0 || rflags & RFLAGS_FIXED_ONE == 0 {
            return Err(guest(
                field,
                format!("{rflags:#x}: reserved bits 63:22, 15, 5, 3 must be 0 and bit 1 must be 1"),
            ));
        }
        // "The VM flag (bit 17) must be 0 either if the 'IA-32e mode guest' VM-entry control
        // is 1 or if bit 0 in the CR0 field (corresponding to CR0.PE) is 0."
        let pe = self.rn(FieldNatural::GuestCr0) & CR0_PE != 0;
        if rflags & RFLAGS_VM != 0 && (ia32e || !pe) {
            return Err(guest(field, format!("{rflags:#x}: VM must be 0 in IA-32e mode or with CR0.PE = 0")));
        }
        // "The IF flag (RFLAGS[bit 9]) must be 1 if the valid bit (bit 31) in the VM-entry
        // interruption-information field is 1 and the interruption type (bits 10:8) is
        // external interrupt."
        let info = self.r32(Field32::VmEntryInterruptionInfo);
        let injecting_ext = info & intr::VALID != 0 && (info >> intr::TYPE_SHIFT) & 7 == intr::EXTERNAL_INTERRUPT;
        if injecting_ext && rflags & RFLAGS_IF == 0 {
            return Err(guest(field, format!("{rflags:#x}: IF must be 1 to inject an external interrupt")));
        }
        // (SSP: "load CET state" is not allowed-1.)
        Ok(())
    }

    /// 27.3.1.5 Checks on Guest Non-Register State.
    fn guest_non_register_state(&mut self) -> Result<(), EntryFailure> {
        let info = self.r32(Field32::VmEntryInterruptionInfo);
        let injecting = info & intr::VALID != 0;
        let inj_type = (info >> intr::TYPE_SHIFT) & 7;
        let rflags = self.rn(FieldNatural::GuestRflags);

        // "Activity state. The activity-state field must contain a value in the range 0 – 3,
        // indicating an activity state supported by the implementation (see Section 25.4.2).
        // Future processors may include support for other activity states. Software should
        // read the VMX capability MSR IA32_VMX_MISC (see Appendix A.6) to determine what
        // activity states are supported."
        let activity = self.r32(Field32::GuestActivityState);
        let supported = activity == 0 || (activity <= 3 && self.caps.activity_states() & (1 << (activity - 1)) != 0);
        if !supported {
            return Err(guest(
                Field32::GuestActivityState.name(),
                format!("activity state {activity} is not supported (IA32_VMX_MISC[8:6] = 0: active only)"),
            ));
        }
        let field = Field32::GuestActivityState.name();
        // "The activity-state field must not indicate the HLT state if the DPL (bits 6:5) in
        // the access-rights field for SS is not 0."
        let ss_dpl = (self.r32(Field32::GuestSsAccessRights) >> AR_DPL_SHIFT) & 3;
        if activity == ACTIVITY_HLT && ss_dpl != 0 {
            return Err(guest(field, format!("HLT with SS.DPL {ss_dpl}")));
        }
        // "The activity-state field must indicate the active state if the interruptibility-
        // state field indicates blocking by either MOV-SS or by STI (if either bit 0 or bit 1
        // in that field is 1)."
        let blocking = self.r32(Field32::GuestInterruptibilityState) & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS);
        if activity != 0 && blocking != 0 {
            return Err(guest(field, format!("activity state {activity} with STI or MOV-SS blocking")));
        }
        // "If the valid bit (bit 31) in the VM-entry interruption-information field is 1, the
        // interruption to be delivered ... must not be one that would normally be blocked while
        // a logical processor is in the activity state corresponding to the contents of the
        // activity-state field. ... HLT. The only events allowed are the following: external
        // interrupts (interruption type 0), non-maskable interrupts (interruption type 2),
        // exceptions with vector 1 (debug exception) or vector 18 (machine-check exception)
        // (interruption type 3), pending MTF VM exit (interruption type 7 with vector 0)."
        let vector = info & intr::VECTOR;
        let allowed_in_hlt = match inj_type {
            intr::EXTERNAL_INTERRUPT | intr::NMI => true,
            intr::HARDWARE_EXCEPTION => vector == 1 || vector == 18,
            intr::OTHER_EVENT => vector == 0,
            _ => false,
        };
        if activity == ACTIVITY_HLT && injecting && !allowed_in_hlt {
            return Err(guest(field, format!("HLT with an injected event ({info:#010x}) that HLT blocks")));
        }
        // ("must not indicate the wait-for-SIPI state if the 'entry to SMM' VM-entry control is
        // 1": wait-for-SIPI is not advertised.)

        // "Interruptibility state."
        let intr = self.r32(Field32::GuestInterruptibilityState);
        let field = Field32::GuestInterruptibilityState.name();
        // "The reserved bits (bits 31:5) must be 0." Bit 4 (enclave interruption) "If bit 4
        // (enclave interruption) is 1, bit 1 (blocking by MOV-SS) must be 0 and the processor
        // must support for SGX by enumerating CPUID.(EAX=07H,ECX=0):EBX.SGX[bit 2] as 1": no
        // SGX here, so bits 31:4 must be 0.
        if intr >> 4 != 0 {
            return Err(guest(field, format!("{intr:#x}: reserved bits 31:5 (and bit 4, no SGX) must be 0")));
        }
        // "The field cannot indicate blocking by both STI and MOV SS (bits 0 and 1 cannot both
        // be 1)."
        if intr & BLOCKING_BY_STI != 0 && intr & BLOCKING_BY_MOV_SS != 0 {
            return Err(guest(field, format!("{intr:#x}: blocking by both STI and MOV SS")));
        }
        // "Bit 0 (blocking by STI) must be 0 if the IF flag (bit 9) is 0 in the RFLAGS field."
        if intr & BLOCKING_BY_STI != 0 && rflags & RFLAGS_IF == 0 {
            return Err(guest(field, format!("{intr:#x}: blocking by STI with RFLAGS.IF = 0")));
        }
        // "Bit 0 (blocking by STI) and bit 1 (blocking by MOV-SS) must both be 0 if the valid
        // bit (bit 31) in the VM-entry interruption-information field is 1 and the
        // interruption type (bits 10:8) in that field has value 0, indicating external
        // interrupt."
        if injecting && inj_type == intr::EXTERNAL_INTERRUPT && intr & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS) != 0 {
            return Err(guest(field, format!("{intr:#x}: STI/MOV-SS blocking while injecting an external interrupt")));
        }
        // "Bit 1 (blocking by MOV-SS) must be 0 if the valid bit (bit 31) in the VM-entry
        // interruption-information field is 1 and the interruption type (bits 10:8) in that
        // field has value 2, indicating non-maskable interrupt (NMI)."
        if injecting && inj_type == intr::NMI && intr & BLOCKING_BY_MOV_SS != 0 {
            return Err(guest(field, format!("{intr:#x}: MOV-SS blocking while injecting an NMI")));
        }
        // "Bit 2 (blocking by SMI) must be 0 if the processor is not in SMM."
        if intr & BLOCKING_BY_SMI != 0 {
            return Err(guest(field, format!("{intr:#x}: blocking by SMI outside SMM")));
        }
        // ("Bit 2 (blocking by SMI) must be 1 if the 'entry to SMM' VM-entry control is 1":
        // not allowed-1. "A processor may require bit 0 (blocking by STI) to be 0 if ... NMI":
        // this one does not. "Bit 3 (blocking by NMI) must be 0 if the 'virtual NMIs'
        // VM-execution control is 1, ...": not allowed-1.)

        // "Pending debug exceptions."
        let pending = self.rn(FieldNatural::GuestPendingDebugExceptions);
        let field = FieldNatural::GuestPendingDebugExceptions.name();
        // "Bits 11:4, bit 13, bit 15, and bits 63:17 (bits 31:17 on processors that do not
        // support Intel 64 architecture) must be 0."
        let reserved = 0xFF0 | 1 << 13 | 1 << 15 | !0x1_FFFF;
        if pending & reserved != 0 {
            return Err(guest(field, format!("{pending:#x}: reserved bits 11:4, 13, 15, 63:17 must be 0")));
        }
        // "The following checks are performed if any of the following holds: (1) the
        // interruptibility-state field indicates blocking by STI (bit 0 in that field is 1);
        // (2) the interruptibility-state field indicates blocking by MOV SS (bit 1 in that
        // field is 1); or (3) the activity-state field indicates HLT:
        // — Bit 14 (BS) must be 1 if the TF flag (bit 8) in the RFLAGS field is 1 and the BTF
        //   flag (bit 1) in the IA32_DEBUGCTL field is 0.
        // — Bit 14 (BS) must be 0 if the TF flag (bit 8) in the RFLAGS field is 0 or the BTF
        //   flag (bit 1) in the IA32_DEBUGCTL field is 1."
        if intr & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS) != 0 || activity == 1 {
            let bs = pending & (1 << 14) != 0;
            let single_step = rflags & RFLAGS_TF != 0 && self.r64(Field64::GuestIa32Debugctl) & 2 == 0;
            if bs != single_step {
                return Err(guest(field, format!("{pending:#x}: BS (bit 14) must be {}", u8::from(single_step))));
            }
        }
        // "If bit 16 (RTM) in the pending debug exceptions field is 1: ... the processor must
        // support for RTM by enumerating CPUID.(EAX=07H,ECX=0):EBX[bit 11] as 1": L2 sees no
        // RTM here.
        if pending & (1 << 16) != 0 {
            return Err(guest(field, format!("{pending:#x}: RTM (bit 16) without RTM support")));
        }
        if pending != 0 {
            self.unsupported(field, format!("pending debug exceptions {pending:#x} cannot be delivered to L2 by L0"));
        }

        // Interrupt-window exiting (SDM 26.7.5: "a VM exit occurs before execution of any
        // instruction if RFLAGS.IF = 1 and there is no blocking of events by STI or by MOV
        // SS") is honoured only when that holds at entry: the exit then comes before L2's first
        // instruction and L0 need not run VM2. Otherwise the exit would come when L2 opens the
        // window, which only KVM_EXIT_IRQ_WINDOW_OPEN could tell, and on this host it comes
        // late (docs/kvm-exits.md row W: hundreds of CPL 0 instructions, one past an STI
        // shadow): refused rather than reported late.
        if self.proc() & proc1::INTERRUPT_WINDOW_EXITING != 0 {
            let rflags = self.rn(FieldNatural::GuestRflags);
            let blocking = self.r32(Field32::GuestInterruptibilityState) & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS);
            if rflags & RFLAGS_IF == 0 || blocking != 0 {
                self.unsupported(
                    Field32::PrimaryProcBasedVmExecControl.name(),
                    format!(
                        "interrupt-window exiting with guest RFLAGS {rflags:#x}, blocking {blocking:#x}: the window \
                         would open inside L2, and KVM reports that late on this host (docs/kvm-exits.md row W)"
                    ),
                );
            }
        }

        // "VMCS link pointer. The following checks apply if the field contains a value other
        // than FFFFFFFF_FFFFFFFFH:"
        let link = self.r64(Field64::VmcsLinkPointer);
        let field = Field64::VmcsLinkPointer.name();
        if link != u64::MAX {
            // "Bits 11:0 must be 0."
            if link & 0xFFF != 0 {
                return Err(link_failure(field, format!("{link:#x} is not 4-KByte aligned")));
            }
            // "Bits beyond the processor's physical-address width must be 0."
            if !within_phys(link, self.maxphyaddr) {
                return Err(link_failure(field, format!("{link:#x} is beyond MAXPHYADDR {}", self.maxphyaddr)));
            }
            // The checks on the memory it references and on the current-VMCS pointer need
            // L1's memory: `link_target`, right after these checks.
        }
        Ok(())
    }
}

/// The rest of 27.3.1.5's VMCS-link-pointer checks, for a pointer that is not all ones and
/// passed [`check`]: "The 4 bytes located in memory referenced by the value of the field (as
/// a physical address) must satisfy the following: Bits 30:0 must contain the processor's
/// VMCS revision identifier (see Section 25.2). Bit 31 must contain the setting of the 'VMCS
/// shadowing' VM-execution control." and "If the processor is not in SMM or the 'entry to
/// SMM' VM-entry control is 1, the field must not contain the current VMCS pointer."
/// `word` is the 4 bytes (`None`: the address is outside L1's memory, which reads as no
/// VMCS). A linked VMCS that passes is not used: L0 offers no VMCS shadowing to L1's guests.
pub fn link_target(
    link: u64,
    word: Option<u32>,
    revision: u32,
    shadowing: bool,
    current: u64,
) -> Result<(), EntryFailure> {
    let field = Field64::VmcsLinkPointer.name();
    if link == current {
        return Err(link_failure(field, format!("{link:#x} is the current VMCS")));
    }
    let want = revision & 0x7FFF_FFFF | u32::from(shadowing) << 31;
    match word {
        Some(w) if w == want => Ok(()),
        Some(w) => Err(link_failure(field, format!("the VMCS at {link:#x} has revision word {w:#x}, not {want:#x}"))),
        None => Err(link_failure(field, format!("{link:#x} is outside L1's memory"))),
    }
}

/// "... uses the same checks that are used when CR3 is loaded with MOV to CR3 when PAE paging
/// is in use" (27.3.1.6): a present PDPTE with a reserved bit set (SDM 4.4.1, Table 4-8: bits
/// 2:1, 8:5 and MAXPHYADDR-1:63) is a #GP there, so the entry fails; the exit qualification is
/// 2 (27.8: "a problem loading the PDPTRs").
fn check_pdpte(field: &'static str, e: u64, maxphyaddr: u32) -> Result<(), EntryFailure> {
    const PDPTE_RESERVED: u64 = 0b1_1110_0110;
    if e & 1 != 0 && (e & PDPTE_RESERVED != 0 || e >> maxphyaddr != 0) {
        return Err(EntryFailure::GuestState {
            field,
            why: format!("{e:#x}: a present PDPTE with reserved bits set"),
            qualification: entry_failure::PDPTE_LOAD,
        });
    }
    Ok(())
}

/// 27.3.1.6 with "enable EPT" 0: "VM entry checks the validity of the PDPTEs referenced by
/// the CR3 field in the guest-state area if ... PAE paging was not in use before the VM entry"
/// (L1 runs in IA-32e mode, so it was not). `read` gives the quadword at an L1-physical address
/// (all ones where no memory is). For a guest the pure checks found only unsupported (a PAE
/// guest without EPT): a PDPTE failure is architectural and wins.
pub fn pdptes_in_memory(
    vmcs: &impl Vmcs12Read,
    maxphyaddr: u32,
    read: impl Fn(u64) -> u64,
) -> Result<(), EntryFailure> {
    let get = |f: FieldNatural| vmcs.read(f.encoding());
    let entry = vmcs.read(Field32::VmEntryControls.encoding()) as u32;
    let proc = vmcs.read(Field32::PrimaryProcBasedVmExecControl.encoding()) as u32;
    let ept = proc & proc1::ACTIVATE_SECONDARY_CONTROLS != 0
        && vmcs.read(Field32::SecondaryProcBasedVmExecControl.encoding()) as u32 & proc2::ENABLE_EPT != 0;
    let pae_paging = get(FieldNatural::GuestCr0) & CR0_PG != 0
        && get(FieldNatural::GuestCr4) & CR4_PAE != 0
        && entry & entry::IA32E_MODE_GUEST == 0;
    if !pae_paging || ept {
        return Ok(());
    }
    // PAE paging: CR3 bits 31:5 locate the 32-byte PDPT (SDM 4.4.1).
    let pdpt = get(FieldNatural::GuestCr3) & 0xFFFF_FFE0;
    for i in 0..4 {
        check_pdpte(FieldNatural::GuestCr3.name(), read(pdpt + 8 * i), maxphyaddr)?;
    }
    Ok(())
}

/// The name of a field by encoding (the encodings here all come from the typed enums).
fn field_name(encoding: u32) -> &'static str {
    nestbench_abi::vmcs::lookup(encoding).map_or("unknown field", |i| i.name)
}

/// A control field against its allowed settings (27.2.1.1-27.2.1.3, "Reserved bits in ...
/// must be set properly").
fn allowed(a: Allowed, value: u32, field: &'static str) -> Result<(), EntryFailure> {
    a.check(value).map_err(|e| control(field, format!("{value:#010x}: {e}")))
}

fn control(field: &'static str, why: String) -> EntryFailure {
    EntryFailure::Control { field, why }
}

fn host(field: &'static str, why: String) -> EntryFailure {
    EntryFailure::HostState { field, why }
}

fn guest(field: &'static str, why: String) -> EntryFailure {
    EntryFailure::GuestState { field, why, qualification: entry_failure::DEFAULT }
}

fn link_failure(field: &'static str, why: String) -> EntryFailure {
    EntryFailure::GuestState { field, why, qualification: entry_failure::INVALID_VMCS_LINK_POINTER }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use nestbench_abi::controls::{default1, pin};
    use nestbench_abi::{ept, payload};

    use super::*;

    const MAXPHYADDR: u32 = 46;

    /// A VMCS12 as a map from encoding to value; absent fields read 0.
    #[derive(Clone, Debug, Default)]
    struct Map(HashMap<u32, u64>);

    impl Vmcs12Read for Map {
        fn read(&self, field: u32) -> u64 {
            self.0.get(&field).copied().unwrap_or(0)
        }
    }

    impl Map {
        fn set(&mut self, field: u32, value: u64) -> &mut Self {
            self.0.insert(field, value);
            self
        }
        fn with(mut self, field: u32, value: u64) -> Self {
            self.set(field, value);
            self
        }
        fn get(&self, field: u32) -> u64 {
            self.read(field)
        }
    }

    /// Everything an L1 writes for a 64-bit CPL 3 guest with EPT and I/O bitmaps, on a
    /// 64-bit host, with the controls adjusted to [`Caps::soft`].
    fn baseline() -> Map {
        let caps = Caps::soft();
        let mut m = Map::default();
        let pin = caps.allowed_pinbased().adjust(0, pin::EXTERNAL_INTERRUPT_EXITING).unwrap();
        let proc = caps
            .allowed_procbased()
            .adjust(proc1::HLT_EXITING | proc1::USE_IO_BITMAPS | proc1::ACTIVATE_SECONDARY_CONTROLS, 0)
            .unwrap();
        let proc2 = caps.allowed_procbased2().adjust(proc2::ENABLE_EPT, 0).unwrap();
        let exit =
            caps.allowed_exit().adjust(exit::HOST_ADDRESS_SPACE_SIZE | exit::SAVE_EFER | exit::LOAD_EFER, 0).unwrap();
        let entry = caps.allowed_entry().adjust(entry::IA32E_MODE_GUEST | entry::LOAD_EFER, 0).unwrap();
        m.set(Field32::PinBasedVmExecControl.encoding(), pin.into())
            .set(Field32::PrimaryProcBasedVmExecControl.encoding(), proc.into())
            .set(Field32::SecondaryProcBasedVmExecControl.encoding(), proc2.into())
            .set(Field32::VmExitControls.encoding(), exit.into())
            .set(Field32::VmEntryControls.encoding(), entry.into())
            .set(Field64::IoBitmapA.encoding(), 0x20_0000)
            .set(Field64::IoBitmapB.encoding(), 0x20_1000)
            .set(Field64::EptPointer.encoding(), ept::eptp(0x30_0000))
            .set(Field64::VmcsLinkPointer.encoding(), u64::MAX)
            // Host: L1's own state.
            .set(FieldNatural::HostCr0.encoding(), 0x8005_0033)
            .set(FieldNatural::HostCr3.encoding(), 0x1000)
            .set(FieldNatural::HostCr4.encoding(), 0x2000 | 0x20 | 0x80 | 0x200 | 0x400)
            .set(Field16::HostCsSelector.encoding(), 0x08)
            .set(Field16::HostSsSelector.encoding(), 0x10)
            .set(Field16::HostDsSelector.encoding(), 0x10)
            .set(Field16::HostEsSelector.encoding(), 0x10)
            .set(Field16::HostFsSelector.encoding(), 0)
            .set(Field16::HostGsSelector.encoding(), 0)
            .set(Field16::HostTrSelector.encoding(), 0x18)
            .set(FieldNatural::HostTrBase.encoding(), 0x7000)
            .set(FieldNatural::HostGdtrBase.encoding(), 0x6000)
            .set(FieldNatural::HostIdtrBase.encoding(), 0x8000)
            .set(FieldNatural::HostRsp.encoding(), 0x9F_F000)
            .set(FieldNatural::HostRip.encoding(), 0x20_1234)
            .set(Field64::HostIa32Efer.encoding(), 0xD01)
            // Guest: a 64-bit CPL 3 payload.
            .set(FieldNatural::GuestCr0.encoding(), 0x8000_0031)
            .set(FieldNatural::GuestCr3.encoding(), 0x38_0000)
            .set(FieldNatural::GuestCr4.encoding(), 0x2020)
            .set(FieldNatural::GuestDr7.encoding(), 0x400)
            .set(Field64::GuestIa32Efer.encoding(), 0x500)
            .set(FieldNatural::GuestRip.encoding(), payload::L2_IMAGE_BASE)
            .set(FieldNatural::GuestRsp.encoding(), payload::L2_STACK_TOP)
            .set(FieldNatural::GuestRflags.encoding(), 0x202)
            .set(Field16::GuestCsSelector.encoding(), 0x1B)
            .set(Field32::GuestCsLimit.encoding(), 0xFFFF_FFFF)
            .set(Field32::GuestCsAccessRights.encoding(), 0xA0FB)
            .set(Field16::GuestTrSelector.encoding(), 0x28)
            .set(FieldNatural::GuestTrBase.encoding(), 0x3F_E000)
            .set(Field32::GuestTrLimit.encoding(), 0x67)
            .set(Field32::GuestTrAccessRights.encoding(), 0x8B)
            .set(Field32::GuestLdtrAccessRights.encoding(), 0x1_0000)
            .set(FieldNatural::GuestGdtrBase.encoding(), 0x3F_D000)
            .set(Field32::GuestGdtrLimit.encoding(), 0x37)
            .set(Field32::GuestIdtrLimit.encoding(), 0);
        for (sel, limit, ar) in [
            (Field16::GuestSsSelector, Field32::GuestSsLimit, Field32::GuestSsAccessRights),
            (Field16::GuestDsSelector, Field32::GuestDsLimit, Field32::GuestDsAccessRights),
            (Field16::GuestEsSelector, Field32::GuestEsLimit, Field32::GuestEsAccessRights),
        ] {
            m.set(sel.encoding(), 0x23).set(limit.encoding(), 0xFFFF_FFFF).set(ar.encoding(), 0xC0F3);
        }
        for ar in [Field32::GuestFsAccessRights, Field32::GuestGsAccessRights] {
            m.set(ar.encoding(), 0x1_0000);
        }
        m
    }

    fn run(m: &Map) -> Result<(), EntryFailure> {
        check(m, &Caps::soft(), MAXPHYADDR)
    }

    #[track_caller]
    fn control_fails(m: &Map, field: &str) {
        match run(m) {
            Err(EntryFailure::Control { field: f, .. }) if f == field => {}
            other => panic!("expected a Control failure on {field}, got {other:?}"),
        }
    }

    #[track_caller]
    fn host_fails(m: &Map, field: &str) {
        match run(m) {
            Err(EntryFailure::HostState { field: f, .. }) if f == field => {}
            other => panic!("expected a HostState failure on {field}, got {other:?}"),
        }
    }

    #[track_caller]
    fn guest_fails(m: &Map, field: &str, qualification: u64) {
        match run(m) {
            Err(EntryFailure::GuestState { field: f, qualification: q, .. }) if f == field && q == qualification => {}
            other => panic!("expected a GuestState failure on {field} (qualification {qualification}), got {other:?}"),
        }
    }

    #[track_caller]
    fn unsupported(m: &Map, field: &str) {
        match run(m) {
            Err(EntryFailure::Unsupported { field: f, .. }) if f == field => {}
            other => panic!("expected Unsupported on {field}, got {other:?}"),
        }
    }

    #[test]
    fn preemption_timer_and_interrupt_window_part3() {
        let b = baseline();
        let pins = b.get(Field32::PinBasedVmExecControl.encoding());
        let exits = b.get(Field32::VmExitControls.encoding());
        let save = u64::from(exit::SAVE_PREEMPTION_TIMER);
        let timer = u64::from(pin::PREEMPTION_TIMER);
        // SDM 27.2.1.2: "save VMX-preemption timer value" needs "activate VMX-preemption timer".
        control_fails(&b.clone().with(Field32::VmExitControls.encoding(), exits | save), "vm_exit_controls");
        let m = b
            .clone()
            .with(Field32::VmExitControls.encoding(), exits | save)
            .with(Field32::PinBasedVmExecControl.encoding(), pins | timer);
        assert!(run(&m).is_ok(), "{:?}", run(&m));
        // Interrupt-window exiting: honoured with RFLAGS.IF = 1 and no blocking, refused
        // otherwise (the window would open inside L2).
        let proc =
            b.get(Field32::PrimaryProcBasedVmExecControl.encoding()) | u64::from(proc1::INTERRUPT_WINDOW_EXITING);
        let rflags = b.get(FieldNatural::GuestRflags.encoding());
        let w = b.clone().with(Field32::PrimaryProcBasedVmExecControl.encoding(), proc);
        unsupported(
            &w.clone().with(FieldNatural::GuestRflags.encoding(), rflags & !RFLAGS_IF),
            "primary_proc_based_vm_exec_control",
        );
        let open = w.with(FieldNatural::GuestRflags.encoding(), rflags | RFLAGS_IF);
        assert!(run(&open).is_ok(), "{:?}", run(&open));
        unsupported(
            &open.with(Field32::GuestInterruptibilityState.encoding(), u64::from(BLOCKING_BY_STI)),
            "primary_proc_based_vm_exec_control",
        );
    }

    #[test]
    fn the_baseline_enters() {
        assert_eq!(run(&baseline()), Ok(()));
        // Without the secondary controls, EPT and its EPTP are not looked at: a guest without
        // EPT, valid and not honoured.
        let b = baseline();
        let proc =
            b.get(Field32::PrimaryProcBasedVmExecControl.encoding()) & !u64::from(proc1::ACTIVATE_SECONDARY_CONTROLS);
        let m = b
            .with(Field32::PrimaryProcBasedVmExecControl.encoding(), proc)
            .with(Field32::SecondaryProcBasedVmExecControl.encoding(), 0xFFFF_FFFF)
            .with(Field64::EptPointer.encoding(), 0xFFF);
        unsupported(&m, "secondary_proc_based_vm_exec_control");
        // 16/32-bit fields are masked to their width.
        let m = baseline().with(Field16::GuestCsSelector.encoding(), 0xABCD_0000_001B);
        assert_eq!(run(&m), Ok(()));
    }

    #[test]
    fn controls_outside_the_allowed_settings_fail_with_error_7() {
        let b = baseline();
        let proc = b.get(Field32::PrimaryProcBasedVmExecControl.encoding());
        let m =
            b.clone().with(Field32::PrimaryProcBasedVmExecControl.encoding(), proc | u64::from(proc1::RDTSC_EXITING));
        control_fails(&m, "primary_proc_based_vm_exec_control");
        assert_eq!(run(&m).unwrap_err().instruction_error(), Some(VmInstructionError::EntryInvalidControls));
        // A must-be-one (default1) bit cleared.
        let m = b.clone().with(Field32::PinBasedVmExecControl.encoding(), 0);
        control_fails(&m, "pin_based_vm_exec_control");
        let m = b.clone().with(Field32::SecondaryProcBasedVmExecControl.encoding(), u64::from(proc2::ENABLE_VPID | 2));
        control_fails(&m, "secondary_proc_based_vm_exec_control");
        let exit = b.get(Field32::VmExitControls.encoding());
        let m = b.clone().with(Field32::VmExitControls.encoding(), exit | u64::from(exit::LOAD_PAT));
        control_fails(&m, "vm_exit_controls");
        let entry = b.get(Field32::VmEntryControls.encoding());
        let m = b.with(Field32::VmEntryControls.encoding(), entry & !1);
        control_fails(&m, "vm_entry_controls");
    }

    #[test]
    fn cr3_target_count_and_io_bitmaps() {
        control_fails(&baseline().with(Field32::Cr3TargetCount.encoding(), 1), "cr3_target_count");
        control_fails(&baseline().with(Field64::IoBitmapA.encoding(), 0x20_0800), "io_bitmap_a");
        control_fails(&baseline().with(Field64::IoBitmapB.encoding(), 1 << MAXPHYADDR), "io_bitmap_b");
        // Not checked without "use I/O bitmaps".
        let b = baseline();
        let proc = b.get(Field32::PrimaryProcBasedVmExecControl.encoding()) & !u64::from(proc1::USE_IO_BITMAPS);
        let m = b.with(Field32::PrimaryProcBasedVmExecControl.encoding(), proc).with(Field64::IoBitmapA.encoding(), 1);
        assert_eq!(run(&m), Ok(()));
    }

    #[test]
    fn msr_bitmap_address() {
        // SDM 27.2.1.1: 4-KByte aligned, within the physical-address width, when "use MSR
        // bitmaps" is 1; not checked otherwise.
        let b = baseline();
        let proc = b.get(Field32::PrimaryProcBasedVmExecControl.encoding()) | u64::from(proc1::USE_MSR_BITMAPS);
        let with_bitmaps = b.clone().with(Field32::PrimaryProcBasedVmExecControl.encoding(), proc);
        assert_eq!(run(&with_bitmaps.clone().with(Field64::MsrBitmap.encoding(), 0x20_2000)), Ok(()));
        control_fails(&with_bitmaps.clone().with(Field64::MsrBitmap.encoding(), 0x20_2008), "msr_bitmap");
        control_fails(&with_bitmaps.with(Field64::MsrBitmap.encoding(), 1 << MAXPHYADDR), "msr_bitmap");
        assert_eq!(run(&b.with(Field64::MsrBitmap.encoding(), 0x20_2008)), Ok(()));
    }

    #[test]
    fn eptp_checks() {
        let good = ept::eptp(0x30_0000);
        control_fails(&baseline().with(Field64::EptPointer.encoding(), good | 1 << 6), "ept_pointer");
        control_fails(&baseline().with(Field64::EptPointer.encoding(), good & !7), "ept_pointer"); // UC
        // A 5-level walk.
        control_fails(&baseline().with(Field64::EptPointer.encoding(), (good & !0x38) | 4 << 3), "ept_pointer");
        control_fails(&baseline().with(Field64::EptPointer.encoding(), good | 1 << 7), "ept_pointer");
        control_fails(&baseline().with(Field64::EptPointer.encoding(), good | 1 << MAXPHYADDR), "ept_pointer");
    }

    #[test]
    fn msr_areas_are_checked_then_unsupported() {
        let m = baseline()
            .with(Field32::VmEntryMsrLoadCount.encoding(), 1)
            .with(Field64::VmEntryMsrLoadAddr.encoding(), 0x50_0000);
        assert_eq!(check(&m, &Caps::soft(), MAXPHYADDR), Ok(()), "entry MSR loads are honoured (msr_load)");
        unsupported(&m.clone().with(Field32::VmEntryMsrLoadCount.encoding(), 513), "vm_entry_msr_load_count");
        let m = m.with(Field64::VmEntryMsrLoadAddr.encoding(), 0x50_0008);
        control_fails(&m, "vm_entry_msr_load_addr");
        let m = baseline()
            .with(Field32::VmExitMsrStoreCount.encoding(), 2)
            .with(Field64::VmExitMsrStoreAddr.encoding(), (1 << MAXPHYADDR) - 16);
        control_fails(&m, "vm_exit_msr_store_addr"); // the last byte is beyond MAXPHYADDR
        let m = baseline()
            .with(Field32::VmExitMsrLoadCount.encoding(), 3)
            .with(Field64::VmExitMsrLoadAddr.encoding(), 0x50_0000);
        unsupported(&m, "vm_exit_msr_load_count");
    }

    #[test]
    fn event_injection_is_checked_and_software_events_are_unsupported() {
        let info = |v: u32| baseline().with(Field32::VmEntryInterruptionInfo.encoding(), v.into());
        // #GP with its error code, #UD, an external interrupt, an NMI: valid and injected.
        for ok in [
            intr::VALID | 3 << 8 | intr::ERROR_CODE | 13,
            intr::VALID | 3 << 8 | 6,
            intr::VALID | 0x20,
            intr::VALID | 2 << 8 | 2,
        ] {
            assert_eq!(run(&info(ok)), Ok(()), "{ok:#x}");
        }
        // INT 80h with a length: valid, not honoured (KVM cannot push RIP + length).
        let int80 = info(intr::VALID | 4 << 8 | 0x80).with(Field32::VmEntryInstructionLength.encoding(), 2);
        unsupported(&int80, "vm_entry_interruption_info");
        // #GP without error code, #UD with one, type 1, type 7 (no MTF), NMI vector 3,
        // hardware exception vector 32, reserved bit 12.
        for bad in [
            intr::VALID | 3 << 8 | 13,
            intr::VALID | 3 << 8 | intr::ERROR_CODE | 6,
            intr::VALID | 1 << 8 | 32,
            intr::VALID | 7 << 8,
            intr::VALID | 2 << 8 | 3,
            intr::VALID | 3 << 8 | 32,
            intr::VALID | 1 << 12 | 32,
        ] {
            control_fails(&info(bad), "vm_entry_interruption_info");
        }
        // Error code bits 31:16; software interrupt with length 0 and 16.
        let m = info(intr::VALID | 3 << 8 | intr::ERROR_CODE | 13)
            .with(Field32::VmEntryExceptionErrorCode.encoding(), 0x1_0000);
        control_fails(&m, "vm_entry_exception_error_code");
        control_fails(&info(intr::VALID | 4 << 8 | 0x80), "vm_entry_instruction_length");
        let m = info(intr::VALID | 4 << 8 | 0x80).with(Field32::VmEntryInstructionLength.encoding(), 16);
        control_fails(&m, "vm_entry_instruction_length");
        // An external interrupt with RFLAGS.IF = 0 fails in the guest-state checks.
        let m = info(intr::VALID | 0x20).with(FieldNatural::GuestRflags.encoding(), 2);
        guest_fails(&m, "guest_rflags", 0);
        // Without the valid bit nothing is looked at.
        assert_eq!(run(&info(0x7FFF_FFFF)), Ok(()));
    }

    #[test]
    fn host_state_failures_are_error_8() {
        let cr4 = baseline().get(FieldNatural::HostCr4.encoding());
        let m = baseline().with(FieldNatural::HostCr4.encoding(), cr4 & !CR4_PAE);
        host_fails(&m, "host_cr4");
        assert_eq!(run(&m).unwrap_err().instruction_error(), Some(VmInstructionError::EntryInvalidHostState));
        host_fails(&baseline().with(FieldNatural::HostCr4.encoding(), cr4 & !0x2000), "host_cr4"); // VMXE
        host_fails(&baseline().with(FieldNatural::HostCr0.encoding(), 0x8005_0013), "host_cr0"); // NE
        host_fails(&baseline().with(FieldNatural::HostCr3.encoding(), 1 << 50), "host_cr3");
        host_fails(&baseline().with(FieldNatural::HostIa32SysenterEip.encoding(), 1 << 47), "host_ia32_sysenter_eip");
        host_fails(&baseline().with(Field64::HostIa32Efer.encoding(), 0xD01 | 1 << 2), "host_ia32_efer");
        host_fails(&baseline().with(Field64::HostIa32Efer.encoding(), 0x901), "host_ia32_efer"); // LMA != LME
        host_fails(&baseline().with(Field16::HostSsSelector.encoding(), 0x13), "host_ss_selector");
        host_fails(&baseline().with(Field16::HostTrSelector.encoding(), 0x1C), "host_tr_selector");
        host_fails(&baseline().with(Field16::HostCsSelector.encoding(), 0), "host_cs_selector");
        host_fails(&baseline().with(FieldNatural::HostGsBase.encoding(), 0x0000_8000_0000_0000), "host_gs_base");
        host_fails(&baseline().with(FieldNatural::HostRip.encoding(), 0x1234_0000_0000_0000), "host_rip");
        // A 32-bit host: EFER.LMA (with "load IA32_EFER") disagrees first; without it, the
        // address-space-size rule.
        let exit = baseline().get(Field32::VmExitControls.encoding()) & !u64::from(exit::HOST_ADDRESS_SPACE_SIZE);
        host_fails(&baseline().with(Field32::VmExitControls.encoding(), exit), "host_ia32_efer");
        let exit = exit & !u64::from(exit::LOAD_EFER);
        host_fails(&baseline().with(Field32::VmExitControls.encoding(), exit), "vm_exit_controls");
    }

    #[test]
    fn guest_control_registers_and_msrs() {
        let m = baseline().with(FieldNatural::GuestRflags.encoding(), 0x200);
        guest_fails(&m, "guest_rflags", entry_failure::DEFAULT);
        assert_eq!(run(&m).unwrap_err().instruction_error(), None);
        guest_fails(&baseline().with(FieldNatural::GuestCr0.encoding(), 0x8000_0011), "guest_cr0", 0); // NE
        guest_fails(&baseline().with(FieldNatural::GuestCr4.encoding(), 0x2000), "guest_cr4", 0); // IA-32e, no PAE
        guest_fails(&baseline().with(FieldNatural::GuestCr4.encoding(), 0x2020 | 1 << 16), "guest_cr4", 0);
        guest_fails(&baseline().with(FieldNatural::GuestCr3.encoding(), 1 << 52), "guest_cr3", 0);
        guest_fails(&baseline().with(Field64::GuestIa32Efer.encoding(), 0x100), "guest_ia32_efer", 0); // LMA
        guest_fails(&baseline().with(Field64::GuestIa32Efer.encoding(), 0x400), "guest_ia32_efer", 0); // LME
        guest_fails(&baseline().with(Field64::GuestIa32Efer.encoding(), 0x500 | 1 << 12), "guest_ia32_efer", 0);
        let m = baseline().with(FieldNatural::GuestIa32SysenterEsp.encoding(), 0x0001_0000_0000_0000);
        guest_fails(&m, "guest_ia32_sysenter_esp", 0);
        // "Load debug controls": DR7 bits 63:32 and IA32_DEBUGCTL.
        let entry = baseline().get(Field32::VmEntryControls.encoding()) | u64::from(entry::LOAD_DEBUG_CONTROLS);
        let m = baseline().with(Field32::VmEntryControls.encoding(), entry);
        assert_eq!(run(&m), Ok(()));
        guest_fails(&m.clone().with(FieldNatural::GuestDr7.encoding(), 1 << 32 | 0x400), "guest_dr7", 0);
        guest_fails(&m.clone().with(Field64::GuestIa32Debugctl.encoding(), 1 << 6), "guest_ia32_debugctl", 0);
        unsupported(&m.with(Field64::GuestIa32Debugctl.encoding(), 1), "guest_ia32_debugctl");
        // Without "load debug controls" DR7's high bits are not looked at.
        assert_eq!(run(&baseline().with(FieldNatural::GuestDr7.encoding(), 1 << 32)), Ok(()));
    }

    #[test]
    fn guest_segments() {
        let ar = |f: Field32, v: u32| baseline().with(f.encoding(), v.into());
        guest_fails(&ar(Field32::GuestTrAccessRights, 0x83), "guest_tr_access_rights", 0); // 16-bit TSS in IA-32e
        guest_fails(&ar(Field32::GuestTrAccessRights, 0x0B), "guest_tr_access_rights", 0); // not present
        guest_fails(&ar(Field32::GuestTrAccessRights, 0x1_008B), "guest_tr_access_rights", 0); // unusable
        // SS.DPL 2 != its RPL 3 (CS conforming with DPL 2, so CS's own DPL rule holds).
        let m = ar(Field32::GuestSsAccessRights, 0xC0D3).with(Field32::GuestCsAccessRights.encoding(), 0xA0DF);
        guest_fails(&m, "guest_ss_access_rights", 0);
        guest_fails(&ar(Field32::GuestSsAccessRights, 0xC0D3), "guest_cs_access_rights", 0); // CS.DPL != SS.DPL
        guest_fails(&ar(Field32::GuestCsAccessRights, 0xE0FB), "guest_cs_access_rights", 0); // L and D
        guest_fails(&ar(Field32::GuestCsAccessRights, 0xA0F3), "guest_cs_access_rights", 0); // data type
        guest_fails(&ar(Field32::GuestCsAccessRights, 0xA0DB), "guest_cs_access_rights", 0); // DPL 2 != SS.DPL
        guest_fails(&ar(Field32::GuestDsAccessRights, 0xC0F2), "guest_ds_access_rights", 0); // not accessed
        guest_fails(&ar(Field32::GuestDsAccessRights, 0xC0D3), "guest_ds_access_rights", 0); // DPL 2 < RPL 3
        guest_fails(&ar(Field32::GuestEsAccessRights, 0x40F3), "guest_es_access_rights", 0); // G with limit 4G
        guest_fails(&ar(Field32::GuestFsAccessRights, 0xC0F3 | 1 << 17), "guest_fs_access_rights", 0);
        guest_fails(&ar(Field32::GuestLdtrAccessRights, 0x8B), "guest_ldtr_access_rights", 0); // type 11
        assert_eq!(run(&ar(Field32::GuestLdtrAccessRights, 0x82)), Ok(()));
        // An unusable DS is not looked at beyond its unusable bit.
        assert_eq!(run(&ar(Field32::GuestDsAccessRights, 0x1_0000)), Ok(()));
        let m = baseline().with(Field16::GuestSsSelector.encoding(), 0x20);
        guest_fails(&m, "guest_ss_selector", 0); // RPL 0 != CS.RPL 3
        guest_fails(&baseline().with(Field16::GuestTrSelector.encoding(), 0x2C), "guest_tr_selector", 0);
        guest_fails(&baseline().with(FieldNatural::GuestCsBase.encoding(), 1 << 32), "guest_cs_base", 0);
        let m = baseline().with(FieldNatural::GuestFsBase.encoding(), 0x0000_8000_0000_0000);
        guest_fails(&m, "guest_fs_base", 0);
    }

    #[test]
    fn guest_descriptor_tables_rip_rflags() {
        guest_fails(&baseline().with(Field32::GuestGdtrLimit.encoding(), 0x1_0000), "guest_gdtr_limit", 0);
        let m = baseline().with(FieldNatural::GuestIdtrBase.encoding(), 0x0000_8000_0000_0000);
        guest_fails(&m, "guest_idtr_base", 0);
        guest_fails(&baseline().with(FieldNatural::GuestRip.encoding(), 0x0001_0000_0040_0000), "guest_rip", 0);
        // Bits 63:48 identical is what the SDM asks: bit 47 alone may differ.
        assert_eq!(run(&baseline().with(FieldNatural::GuestRip.encoding(), 0x0000_8000_0000_0000)), Ok(()));
        // In compatibility mode (CS.L = 0) RIP bits 63:32 must be 0.
        let m = baseline()
            .with(Field32::GuestCsAccessRights.encoding(), 0xC0FB)
            .with(FieldNatural::GuestRip.encoding(), 1 << 32);
        guest_fails(&m, "guest_rip", 0);
        for rflags in [0x202 | 1 << 22, 0x202 | 1 << 15, 0x202 | 1 << 5, 0x202 | 1 << 3] {
            guest_fails(&baseline().with(FieldNatural::GuestRflags.encoding(), rflags), "guest_rflags", 0);
        }
        // RFLAGS.VM = 1 makes the guest virtual-8086 for the segment checks (27.3.1.2), which
        // come first and fail first: the same entry failure, named on a segment field.
        let m = baseline().with(FieldNatural::GuestRflags.encoding(), 0x202 | 1 << 17);
        guest_fails(&m, "guest_cs_base", 0);
    }

    #[test]
    fn guest_non_register_state() {
        let f = |field: Field32, v: u64| baseline().with(field.encoding(), v);
        guest_fails(&f(Field32::GuestActivityState, 2), "guest_activity_state", 0); // shutdown is not
        guest_fails(&f(Field32::GuestActivityState, 4), "guest_activity_state", 0);
        // HLT is advertised, at CPL 0 only (the baseline's SS.DPL is 3).
        guest_fails(&f(Field32::GuestActivityState, 1), "guest_activity_state", 0);
        let hlt = f(Field32::GuestActivityState, 1)
            .with(Field16::GuestCsSelector.encoding(), 0x18)
            .with(Field32::GuestCsAccessRights.encoding(), 0xA09B)
            .with(Field16::GuestSsSelector.encoding(), 0x20)
            .with(Field32::GuestSsAccessRights.encoding(), 0xC093);
        assert_eq!(run(&hlt), Ok(()));
        let info = |v: u32| hlt.clone().with(Field32::VmEntryInterruptionInfo.encoding(), v.into());
        guest_fails(&info(intr::VALID | 3 << 8 | 6), "guest_activity_state", 0); // #UD: blocked in HLT
        let irq = info(intr::VALID | 0x20).with(FieldNatural::GuestRflags.encoding(), 0x202);
        assert_eq!(run(&irq), Ok(()), "an external interrupt wakes HLT");
        guest_fails(&f(Field32::GuestInterruptibilityState, 1 << 5), "guest_interruptibility_state", 0);
        guest_fails(&f(Field32::GuestInterruptibilityState, 3), "guest_interruptibility_state", 0);
        guest_fails(&f(Field32::GuestInterruptibilityState, 4), "guest_interruptibility_state", 0); // SMI
        let m = f(Field32::GuestInterruptibilityState, 1).with(FieldNatural::GuestRflags.encoding(), 2);
        guest_fails(&m, "guest_interruptibility_state", 0); // STI blocking, IF = 0
        assert_eq!(run(&f(Field32::GuestInterruptibilityState, 1 | 8)), Ok(()), "STI and NMI blocking");
        let pending = |v: u64| baseline().with(FieldNatural::GuestPendingDebugExceptions.encoding(), v);
        guest_fails(&pending(1 << 4), "guest_pending_debug_exceptions", 0);
        guest_fails(&pending(1 << 16), "guest_pending_debug_exceptions", 0);
        unsupported(&pending(1 << 12), "guest_pending_debug_exceptions");
        // BS must match single-stepping under STI blocking.
        let m = f(Field32::GuestInterruptibilityState, 1).with(FieldNatural::GuestRflags.encoding(), 0x302);
        guest_fails(&m, "guest_pending_debug_exceptions", 0);
        let m = m.with(FieldNatural::GuestPendingDebugExceptions.encoding(), 1 << 14);
        unsupported(&m, "guest_pending_debug_exceptions");
    }

    #[test]
    fn vmcs_link_pointer() {
        let link = |v: u64| baseline().with(Field64::VmcsLinkPointer.encoding(), v);
        guest_fails(&link(0x50_0010), "vmcs_link_pointer", entry_failure::INVALID_VMCS_LINK_POINTER);
        guest_fails(&link(1 << MAXPHYADDR), "vmcs_link_pointer", entry_failure::INVALID_VMCS_LINK_POINTER);
        // Aligned and within MAXPHYADDR (0 included): valid as far as `check` can see; the
        // memory it points to is `link_target`'s.
        assert_eq!(check(&link(0x50_0000), &Caps::soft(), MAXPHYADDR), Ok(()));
        let rev = Caps::soft().vmx_basic().revision_id();
        assert_eq!(link_target(0x50_0000, Some(rev), rev, false, 0x60_0000), Ok(()));
        let q = |r: Result<(), EntryFailure>| match r {
            Err(EntryFailure::GuestState { qualification, .. }) => qualification,
            other => panic!("{other:?}"),
        };
        let bad = entry_failure::INVALID_VMCS_LINK_POINTER;
        assert_eq!(q(link_target(0x50_0000, Some(rev ^ 1), rev, false, 0x60_0000)), bad, "wrong revision");
        assert_eq!(q(link_target(0x50_0000, Some(rev), rev, true, 0x60_0000)), bad, "bit 31 must match shadowing");
        assert_eq!(q(link_target(0x60_0000, Some(rev), rev, false, 0x60_0000)), bad, "the current VMCS");
        assert_eq!(q(link_target(0x50_0000, None, rev, false, 0x60_0000)), bad, "outside memory");
    }

    #[test]
    fn not_honoured_settings() {
        // CR3-load/store exiting (the non-TRUE default1 value) is honoured (super::cr3_exiting).
        let b = baseline();
        let proc = b.get(Field32::PrimaryProcBasedVmExecControl.encoding()) | u64::from(default1::PROC1);
        assert_eq!(run(&b.with(Field32::PrimaryProcBasedVmExecControl.encoding(), proc)), Ok(()));
        // Exceptions, and #PF filtering that lets some page faults exit.
        unsupported(&baseline().with(Field32::ExceptionBitmap.encoding(), 1 << 6), "exception_bitmap");
        unsupported(&baseline().with(Field32::ExceptionBitmap.encoding(), 1 << 14), "exception_bitmap");
        unsupported(&baseline().with(Field32::PageFaultErrorCodeMatch.encoding(), 1), "exception_bitmap");
        let m = baseline()
            .with(Field32::ExceptionBitmap.encoding(), 1 << 14)
            .with(Field32::PageFaultErrorCodeMask.encoding(), 1)
            .with(Field32::PageFaultErrorCodeMatch.encoding(), 2);
        assert_eq!(run(&m), Ok(()), "bit 14 set, but no error code can match: no #PF exits");
        // A 32-bit guest.
        let entry = baseline().get(Field32::VmEntryControls.encoding()) & !u64::from(entry::IA32E_MODE_GUEST);
        let m = baseline()
            .with(Field32::VmEntryControls.encoding(), entry)
            .with(Field64::GuestIa32Efer.encoding(), 0)
            .with(Field32::GuestCsAccessRights.encoding(), 0xC0FB);
        unsupported(&m, "vm_entry_controls");
    }

    #[test]
    fn an_architectural_failure_wins_over_an_earlier_unsupported_setting() {
        let m = baseline()
            .with(Field32::VmExitMsrLoadCount.encoding(), 1)
            .with(Field64::VmExitMsrLoadAddr.encoding(), 0x50_0000);
        unsupported(&m, "vm_exit_msr_load_count");
        let cr4 = m.get(FieldNatural::HostCr4.encoding()) & !CR4_PAE;
        host_fails(&m.clone().with(FieldNatural::HostCr4.encoding(), cr4), "host_cr4");
        guest_fails(&m.with(FieldNatural::GuestRflags.encoding(), 0), "guest_rflags", 0);
    }

    #[test]
    fn a_pae_guest_with_a_bad_pdpte_fails_before_it_is_unsupported() {
        // A 32-bit guest with PAE paging (the baseline's CR0.PG and CR4.PAE) under EPT.
        let entry = baseline().get(Field32::VmEntryControls.encoding()) & !u64::from(entry::IA32E_MODE_GUEST);
        let pae = baseline()
            .with(Field32::VmEntryControls.encoding(), entry)
            .with(Field64::GuestIa32Efer.encoding(), 0)
            .with(Field32::GuestCsAccessRights.encoding(), 0xC0FB)
            .with(Field64::GuestPdpte0.encoding(), 0x5000 | 1);
        unsupported(&pae, "vm_entry_controls");
        for bad in [1 << 1, 1 << 2, 1 << 5, 1 << 8, 1 << MAXPHYADDR] {
            let m = pae.clone().with(Field64::GuestPdpte2.encoding(), 0x6000 | 1 | bad);
            guest_fails(&m, "guest_pdpte2", entry_failure::PDPTE_LOAD);
        }
        // Not present: its other bits are not checked.
        unsupported(&pae.clone().with(Field64::GuestPdpte3.encoding(), 1 << 1), "vm_entry_controls");
        // In IA-32e mode the PDPTE fields are not used.
        assert_eq!(run(&baseline().with(Field64::GuestPdpte0.encoding(), 0x7)), Ok(()));
    }
}
