//! What the soft engine advertises: the VMX capability MSRs 0x480-0x491 (Intel SDM Vol. 3D,
//! Appendix A) as L1 reads them with RDMSR.
//!
//! The rule (docs/soft-engine.md): advertise only what L0 honours. A control
//! may be 1 only if L0 can produce its effect with the KVM of this host (docs/kvm-exits.md):
//! an exit KVM never hands to userspace (CPUID, RDTSC, CR accesses, MOV DR, NMI windows, MTF,
//! ...), or hands over inexactly (an interrupt window that opens inside L2), cannot be
//! reflected, so its control is not offered (or, for the interrupt window, refused at entry). The VM-entry checks
//! of [`super::entry_checks`] check VMCS12 against exactly these values.
//!
//! Part 1 offers: HLT exiting, I/O exiting (unconditional or by bitmaps), EPT (4 levels, WB,
//! 2 MiB / 1 GiB leaves, single- and all-context INVEPT, no A/D flags, no execute-only), a
//! 64-bit host with IA32_EFER save/load, 64-bit guests with IA32_EFER load. Nothing of
//! the pin-based controls, no VPID, no unrestricted guest, no activity state but active.
//! Part 2 adds MSR bitmaps (RDMSR/WRMSR exits, [`super::msr`]). Part 3 adds the
//! VMX-preemption timer (pin-based bit 6, "save VMX-preemption timer value" exit bit 22,
//! rate [`PREEMPTION_TIMER_RATE`] in IA32_VMX_MISC[4:0]; [`super::timer`]) and
//! interrupt-window exiting where it is exact (an open window at VM entry; the entry checks
//! refuse the rest). External-interrupt exiting stays 0: nothing surfaces external
//! interrupts for L2 on this host (docs/soft-engine.md "Interrupts").

use nestbench_abi::controls::{self, Allowed, default1, entry, exit, pin, proc1, proc2};
use nestbench_abi::vmx::{VmxBasic, msr};

/// The VMCS revision identifier of the soft engine: "NB" and version 1, in bits 30:0 of
/// IA32_VMX_BASIC (SDM A.1; bit 31 is 0). L1 writes it into bytes 0-3 of every VMXON region
/// and VMCS12 page (`nestbench_abi::vmcs12::REVISION_OFFSET`); VMPTRLD of a page with
/// another value is VMfailValid 11. Chosen so that it matches no Intel CPU's revision (those
/// are small numbers), so a VMCS12 image from real hardware is never mistaken for ours.
pub const REVISION_ID: u32 = 0x4E42_0001;

use nestbench_abi::cr::{CR0_NE, CR0_PE, CR0_PG, CR4_VME_TO_OSXMMEXCPT, CR4_VMXE};

/// IA32_VMX_MISC bit 5 (SDM A.6): VM exits store IA32_EFER.LMA into the "IA-32e mode guest"
/// VM-entry control.
pub const MISC_STORE_LMA: u64 = 1 << 5;
/// IA32_VMX_MISC bit 6: the HLT activity state (SDM A.6).
pub const MISC_ACTIVITY_HLT: u64 = 1 << 6;

pub use nestbench_abi::controls::ept_cap;

/// Primary processor-based controls the soft engine may honour as 1, beyond the default1
/// bits: HLT (KVM_EXIT_HLT, docs/kvm-exits.md row 4), port I/O (KVM_EXIT_IO, rows 1-3), MSR
/// bitmaps (KVM_EXIT_X86_RDMSR/WRMSR through a KVM MSR filter built from L1's bitmap, row 5
/// and [`super::msr`]; an intercepted x2APIC MSR is refused at entry), the secondary
/// controls (for EPT), and interrupt-window exiting (part 3: honoured where it is exact, an
/// entry with RFLAGS.IF = 1 and no STI/MOV-SS blocking exits before L2's first instruction;
/// any other entry with it is refused, docs/soft-engine.md "Interrupts").
const PROC1_OPTIONAL: u32 = proc1::INTERRUPT_WINDOW_EXITING
    | proc1::HLT_EXITING
    | proc1::UNCONDITIONAL_IO_EXITING
    | proc1::USE_IO_BITMAPS
    | proc1::USE_MSR_BITMAPS
    | proc1::ACTIVATE_SECONDARY_CONTROLS;
/// Primary processor-based default1 bits that TRUE controls let be 0 (SDM A.2: CR3-load
/// exiting and CR3-store exiting).
const PROC1_TRUE_ZERO: u32 = proc1::CR3_LOAD_EXITING | proc1::CR3_STORE_EXITING;
/// Secondary processor-based controls the soft engine honours: EPT only.
const PROC2_OPTIONAL: u32 = proc2::ENABLE_EPT;
/// VM-exit controls honoured beyond default1: a 64-bit host, IA32_EFER save and load
/// (L0 reads and writes EFER of both VMs with KVM_GET/SET_SREGS), and "save VMX-preemption
/// timer value" (part 3: L0 keeps the countdown itself, [`super::timer`]).
const EXIT_OPTIONAL: u32 =
    exit::HOST_ADDRESS_SPACE_SIZE | exit::SAVE_EFER | exit::LOAD_EFER | exit::SAVE_PREEMPTION_TIMER;
/// Pin-based controls honoured beyond default1 (part 3): "activate VMX-preemption timer"
/// (SDM 25.6.1; L0's host timer and a kick of VM2's vCPU, [`super::timer`]).
const PIN_OPTIONAL: u32 = pin::PREEMPTION_TIMER;
/// IA32_VMX_MISC bits 4:0 (SDM A.6): the VMX-preemption timer counts down by 1 every time
/// bit 5 of the TSC changes, i.e. at TSC >> 5. The same rate KVM's own nested VMX advertises
/// (VMX_MISC_EMULATED_PREEMPTION_TIMER_RATE): one timer tick is 32 TSC ticks, about 12 ns at
/// 2.6 GHz, finer than any host timer L0 can arm, so the rate costs no precision.
pub const PREEMPTION_TIMER_RATE: u32 = 5;
/// VM-exit default1 bit that TRUE controls let be 0 (SDM A.2: save debug controls).
const EXIT_TRUE_ZERO: u32 = exit::SAVE_DEBUG_CONTROLS;
/// VM-entry controls honoured beyond default1: a 64-bit guest and IA32_EFER load.
const ENTRY_OPTIONAL: u32 = entry::IA32E_MODE_GUEST | entry::LOAD_EFER;
/// VM-entry default1 bit that TRUE controls let be 0 (SDM A.2: load debug controls).
const ENTRY_TRUE_ZERO: u32 = entry::LOAD_DEBUG_CONTROLS;

/// A capability MSR of the two-halves form (SDM A.3.1): allowed 0-settings (must-be-one
/// bits) in 31:0, allowed 1-settings in 63:32.
const fn two_halves(must_be_one: u32, may_be_one: u32) -> u64 {
    (may_be_one as u64) << 32 | must_be_one as u64
}

/// The soft engine's VMX capability MSRs, one field per MSR (SDM Vol. 3D, Appendix A).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// IA32_VMX_BASIC (0x480, A.1).
    pub basic: u64,
    /// IA32_VMX_TRUE_PINBASED_CTLS (0x48D, A.3.1).
    pub true_pinbased: u64,
    /// IA32_VMX_TRUE_PROCBASED_CTLS (0x48E, A.3.2).
    pub true_procbased: u64,
    /// IA32_VMX_TRUE_EXIT_CTLS (0x48F, A.4.1).
    pub true_exit: u64,
    /// IA32_VMX_TRUE_ENTRY_CTLS (0x490, A.5).
    pub true_entry: u64,
    /// IA32_VMX_PINBASED_CTLS (0x481, A.3.1).
    pub pinbased: u64,
    /// IA32_VMX_PROCBASED_CTLS (0x482, A.3.2).
    pub procbased: u64,
    /// IA32_VMX_EXIT_CTLS (0x483, A.4.1).
    pub exit: u64,
    /// IA32_VMX_ENTRY_CTLS (0x484, A.5).
    pub entry: u64,
    /// IA32_VMX_PROCBASED_CTLS2 (0x48B, A.3.3).
    pub procbased2: u64,
    /// IA32_VMX_EPT_VPID_CAP (0x48C, A.10).
    pub ept_vpid: u64,
    /// IA32_VMX_MISC (0x485, A.6).
    pub misc: u64,
    /// IA32_VMX_CR0_FIXED0 (0x486, A.7): CR0 bits that must be 1 in VMX operation.
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1 (0x487, A.7): CR0 bits that may be 1 in VMX operation.
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0 (0x488, A.8): CR4 bits that must be 1 in VMX operation.
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1 (0x489, A.8): CR4 bits that may be 1 in VMX operation.
    pub cr4_fixed1: u64,
    /// IA32_VMX_VMCS_ENUM (0x48A, A.9).
    pub vmcs_enum: u64,
    /// IA32_VMX_VMFUNC (0x491, A.11).
    pub vmfunc: u64,
}

impl Caps {
    /// What the soft engine advertises in part 1 (values and reasons: module doc and
    /// docs/soft-engine.md).
    #[must_use]
    pub const fn soft() -> Self {
        // A.1: revision, 4 KiB regions (one page of VMCS12, nestbench_abi::vmcs12::SIZE),
        // write-back, INS/OUTS instruction information (L0 decodes string I/O), TRUE controls.
        // Bit 48 (32-bit addresses), 49 (dual monitor) and 56 (no error-code check on
        // injection) are 0.
        let basic = match VmxBasic::new(
            REVISION_ID,
            4096,
            VmxBasic::MEMORY_TYPE_WB,
            VmxBasic::INS_OUTS_INFO | VmxBasic::TRUE_CONTROLS,
        ) {
            Some(b) => b.raw(),
            None => panic!("IA32_VMX_BASIC fields out of range"),
        };

        // A.3.1: the default1 bits (reserved, without function) and, from part 3, "activate
        // VMX-preemption timer". No external-interrupt or NMI exiting (no interrupt reaches
        // L2 through VM2's KVM here: docs/soft-engine.md "Interrupts"), no posted interrupts.
        let true_pinbased = two_halves(default1::PIN, default1::PIN | PIN_OPTIONAL);
        // A.3.2: default1 (CR3-load/store exiting may be 0 under TRUE controls) + HLT, I/O,
        // MSR bitmaps, secondary controls. The allowed 1-settings of a TRUE MSR equal those of the
        // non-TRUE MSR, so the default1 bits stay allowed-1 (CR3-load/store exiting among
        // them: the entry checks refuse them as engine_unsupported).
        let true_procbased = two_halves(default1::PROC1 & !PROC1_TRUE_ZERO, default1::PROC1 | PROC1_OPTIONAL);
        // A.4.1: default1 (save debug controls may be 0) + 64-bit host, EFER save/load.
        let true_exit = two_halves(default1::EXIT & !EXIT_TRUE_ZERO, default1::EXIT | EXIT_OPTIONAL);
        // A.5: default1 (load debug controls may be 0) + IA-32e mode guest, EFER load.
        let true_entry = two_halves(default1::ENTRY & !ENTRY_TRUE_ZERO, default1::ENTRY | ENTRY_OPTIONAL);

        Self {
            basic,
            true_pinbased,
            true_procbased,
            true_exit,
            true_entry,
            // A.3.1, A.3.2, A.4.1, A.5: the non-TRUE MSRs report the default1 bits as
            // must-be-one; allowed 1-settings are the same.
            pinbased: true_pinbased | default1::PIN as u64,
            procbased: true_procbased | default1::PROC1 as u64,
            exit: true_exit | default1::EXIT as u64,
            entry: true_entry | default1::ENTRY as u64,
            // A.3.3: allowed 1-settings only (every secondary control may be 0).
            procbased2: two_halves(0, PROC2_OPTIONAL),
            ept_vpid: ept_cap::WALK_LENGTH_4
                | ept_cap::MEMTYPE_WB
                | ept_cap::PAGE_2M
                | ept_cap::PAGE_1G
                | ept_cap::INVEPT
                | ept_cap::INVEPT_SINGLE_CONTEXT
                | ept_cap::INVEPT_ALL_CONTEXT,
            // A.6: preemption-timer rate PREEMPTION_TIMER_RATE (bits 4:0), LMA stored on exit (bit 5), the
            // HLT activity state (bit 6; not shutdown or wait-for-SIPI), CR3-target count 0 (bits 24:16),
            // MSR-list size code 0 (bits 27:25; L0 honours no MSR list at all, the entry
            // checks refuse non-zero counts), no VMWRITE to exit-information fields (bit 29),
            // no zero-length software-interrupt injection (bit 30), MSEG revision 0.
            misc: MISC_STORE_LMA | MISC_ACTIVITY_HLT | PREEMPTION_TIMER_RATE as u64,
            // A.7: no unrestricted guest, so PE, NE and PG are fixed to 1; the upper 32 bits
            // of CR0 are reserved.
            cr0_fixed0: CR0_PE | CR0_NE | CR0_PG,
            cr0_fixed1: 0xFFFF_FFFF,
            // A.8: VMXE is fixed to 1; the CR4 bits an L2 may have are those VM2 (L2's KVM VM)
            // takes on every host here: VME..OSXMMEXCPT (bits 10:0) and VMXE (bit 13). Not
            // UMIP (11), LA57 (12; a 5-level L2 would need 57-bit canonical checks), SMXE,
            // FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP, PKE, CET, PKS: an L2 needing them is
            // refused at VM entry, never run with a bit silently dropped.
            cr4_fixed0: CR4_VMXE,
            cr4_fixed1: CR4_VME_TO_OSXMMEXCPT | CR4_VMXE,
            // A.9: bits 9:1 = the highest field index among the fields L0 knows.
            vmcs_enum: (nestbench_abi::vmcs::MAX_INDEX as u64) << 1,
            // A.11: no VM functions ("enable VM functions" is not allowed-1).
            vmfunc: 0,
        }
    }

    /// The value of capability MSR `index`, for 0x480-0x491; `None` for any other index.
    /// 0x491 (IA32_VMX_VMFUNC) reads as 0: on hardware it exists only when "enable VM
    /// functions" may be 1, which it may not here; the caller decides whether a read of it
    /// is a #GP.
    #[must_use]
    pub const fn msr(&self, index: u32) -> Option<u64> {
        Some(match index {
            msr::IA32_VMX_BASIC => self.basic,
            msr::IA32_VMX_PINBASED_CTLS => self.pinbased,
            msr::IA32_VMX_PROCBASED_CTLS => self.procbased,
            msr::IA32_VMX_EXIT_CTLS => self.exit,
            msr::IA32_VMX_ENTRY_CTLS => self.entry,
            msr::IA32_VMX_MISC => self.misc,
            msr::IA32_VMX_CR0_FIXED0 => self.cr0_fixed0,
            msr::IA32_VMX_CR0_FIXED1 => self.cr0_fixed1,
            msr::IA32_VMX_CR4_FIXED0 => self.cr4_fixed0,
            msr::IA32_VMX_CR4_FIXED1 => self.cr4_fixed1,
            msr::IA32_VMX_VMCS_ENUM => self.vmcs_enum,
            msr::IA32_VMX_PROCBASED_CTLS2 => self.procbased2,
            msr::IA32_VMX_EPT_VPID_CAP => self.ept_vpid,
            msr::IA32_VMX_TRUE_PINBASED_CTLS => self.true_pinbased,
            msr::IA32_VMX_TRUE_PROCBASED_CTLS => self.true_procbased,
            msr::IA32_VMX_TRUE_EXIT_CTLS => self.true_exit,
            msr::IA32_VMX_TRUE_ENTRY_CTLS => self.true_entry,
            msr::IA32_VMX_VMFUNC => self.vmfunc,
            _ => return None,
        })
    }

    /// The VMCS revision identifier L1 must put in VMXON regions and VMCS12 pages
    /// (`IA32_VMX_BASIC[30:0]`).
    #[must_use]
    pub const fn revision(&self) -> u32 {
        (self.basic & VmxBasic::REVISION_MASK) as u32
    }

    /// IA32_VMX_BASIC, decoded.
    #[must_use]
    pub const fn vmx_basic(&self) -> VmxBasic {
        VmxBasic::from_raw(self.basic)
    }

    /// Allowed settings of the pin-based controls (TRUE MSR: `IA32_VMX_BASIC[55]` = 1, so VM
    /// entry checks against it, SDM A.3.1).
    #[must_use]
    pub const fn allowed_pinbased(&self) -> Allowed {
        Allowed::from_msr(self.true_pinbased)
    }

    /// Allowed settings of the primary processor-based controls (TRUE MSR, SDM A.3.2).
    #[must_use]
    pub const fn allowed_procbased(&self) -> Allowed {
        Allowed::from_msr(self.true_procbased)
    }

    /// Allowed settings of the secondary processor-based controls (SDM A.3.3).
    #[must_use]
    pub const fn allowed_procbased2(&self) -> Allowed {
        Allowed::from_allowed_one((self.procbased2 >> 32) as u32)
    }

    /// Allowed settings of the primary VM-exit controls (TRUE MSR, SDM A.4.1).
    #[must_use]
    pub const fn allowed_exit(&self) -> Allowed {
        Allowed::from_msr(self.true_exit)
    }

    /// Allowed settings of the VM-entry controls (TRUE MSR, SDM A.5).
    #[must_use]
    pub const fn allowed_entry(&self) -> Allowed {
        Allowed::from_msr(self.true_entry)
    }

    /// IA32_VMX_MISC bits 24:16: the number of CR3-target values (SDM A.6).
    #[must_use]
    pub const fn cr3_target_count(&self) -> u32 {
        ((self.misc >> 16) & 0x1FF) as u32
    }

    /// IA32_VMX_MISC bits 8:6: activity states supported beyond active (bit 6 HLT, bit 7
    /// shutdown, bit 8 wait-for-SIPI; SDM A.6).
    #[must_use]
    pub const fn activity_states(&self) -> u32 {
        ((self.misc >> 6) & 0b111) as u32
    }

    /// Check CR0 against IA32_VMX_CR0_FIXED0/1 (SDM A.7).
    pub const fn check_cr0(&self, cr0: u64) -> Result<(), controls::FixedBitsError> {
        controls::check_fixed(cr0, self.cr0_fixed0, self.cr0_fixed1)
    }

    /// Check CR4 against IA32_VMX_CR4_FIXED0/1 (SDM A.8).
    pub const fn check_cr4(&self, cr4: u64) -> Result<(), controls::FixedBitsError> {
        controls::check_fixed(cr4, self.cr4_fixed0, self.cr4_fixed1)
    }
}

impl Default for Caps {
    fn default() -> Self {
        Self::soft()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nestbench_abi::controls::{ControlError, pin};

    /// What an L1 typically asks for on this engine, as (required, optional) per field.
    const L1_PIN: (u32, u32) = (0, pin::EXTERNAL_INTERRUPT_EXITING | pin::NMI_EXITING);
    const L1_PROC: (u32, u32) = (
        proc1::HLT_EXITING | proc1::USE_IO_BITMAPS | proc1::ACTIVATE_SECONDARY_CONTROLS,
        proc1::USE_MSR_BITMAPS | proc1::USE_TSC_OFFSETTING,
    );
    const L1_PROC2: (u32, u32) = (proc2::ENABLE_EPT, proc2::ENABLE_VPID | proc2::UNRESTRICTED_GUEST);
    const L1_EXIT: (u32, u32) =
        (exit::HOST_ADDRESS_SPACE_SIZE, exit::SAVE_EFER | exit::LOAD_EFER | exit::ACK_INTERRUPT_ON_EXIT);
    const L1_ENTRY: (u32, u32) = (entry::IA32E_MODE_GUEST, entry::LOAD_EFER | entry::LOAD_PAT);

    #[test]
    fn the_advertised_values() {
        let c = Caps::soft();
        assert_eq!(c.basic, 0x00D8_1000_4E42_0001);
        assert_eq!(c.true_pinbased, 0x0000_0056_0000_0016);
        assert_eq!(c.pinbased, 0x0000_0056_0000_0016);
        assert_eq!(c.true_procbased, 0x9701_E1F6_0400_6172);
        assert_eq!(c.procbased, 0x9701_E1F6_0401_E172);
        assert_eq!(c.true_exit, 0x0073_6FFF_0003_6DFB);
        assert_eq!(c.exit, 0x0073_6FFF_0003_6DFF);
        assert_eq!(c.true_entry, 0x0000_93FF_0000_11FB);
        assert_eq!(c.entry, 0x0000_93FF_0000_11FF);
        assert_eq!(c.procbased2, 0x0000_0002_0000_0000);
        assert_eq!(c.ept_vpid, 0x0613_4040);
        assert_eq!(c.misc, 0x65, "LMA stored, HLT, preemption-timer rate 5");
        assert_eq!((c.cr0_fixed0, c.cr0_fixed1), (0x8000_0021, 0xFFFF_FFFF));
        assert_eq!((c.cr4_fixed0, c.cr4_fixed1), (0x2000, 0x27FF));
        assert_eq!(c.vmcs_enum, u64::from(nestbench_abi::vmcs::MAX_INDEX) << 1);
        assert_eq!(c.vmfunc, 0);
    }

    #[test]
    fn basic_decodes_as_documented() {
        let b = Caps::soft().vmx_basic();
        assert_eq!(b.revision_id(), REVISION_ID);
        assert_eq!(Caps::soft().revision(), REVISION_ID);
        assert_eq!(b.region_size(), 4096);
        assert_eq!(b.memory_type(), VmxBasic::MEMORY_TYPE_WB);
        assert!(b.ins_outs_info() && b.true_controls());
        assert!(!b.phys_addr_32bit() && !b.dual_monitor() && !b.no_error_code_check());
    }

    #[test]
    fn msr_answers_exactly_0x480_to_0x491() {
        let c = Caps::soft();
        for index in 0x47F..=0x493 {
            assert_eq!(c.msr(index).is_some(), (0x480..=0x491).contains(&index), "{index:#x}");
        }
        assert_eq!(c.msr(msr::IA32_VMX_BASIC), Some(c.basic));
        assert_eq!(c.msr(msr::IA32_VMX_TRUE_PROCBASED_CTLS), Some(c.true_procbased));
        assert_eq!(c.msr(msr::IA32_VMX_PROCBASED_CTLS2), Some(c.procbased2));
        assert_eq!(c.msr(msr::IA32_VMX_EPT_VPID_CAP), Some(c.ept_vpid));
        assert_eq!(c.msr(msr::IA32_VMX_VMCS_ENUM), Some(c.vmcs_enum));
    }

    #[test]
    fn each_control_allows_its_default1_bits() {
        let c = Caps::soft();
        // SDM A.2: a default1 bit is allowed-1 everywhere, must-be-one in the non-TRUE MSRs.
        for (true_msr, plain, d1) in [
            (c.true_pinbased, c.pinbased, default1::PIN),
            (c.true_procbased, c.procbased, default1::PROC1),
            (c.true_exit, c.exit, default1::EXIT),
            (c.true_entry, c.entry, default1::ENTRY),
        ] {
            let (t, p) = (Allowed::from_msr(true_msr), Allowed::from_msr(plain));
            assert_eq!(t.may_be_one & d1, d1);
            assert_eq!(p.must_be_one & d1, d1);
            assert_eq!(t.may_be_one, p.may_be_one, "allowed 1-settings of TRUE and non-TRUE agree");
            assert_eq!(t.must_be_one & !p.must_be_one, 0, "TRUE only relaxes");
            assert_eq!(p.check(d1), Ok(()));
            assert_eq!(t.check(t.must_be_one), Ok(()));
        }
        // TRUE relaxes exactly CR3-load/store exiting, save and load debug controls.
        assert_eq!(default1::PROC1 & !c.allowed_procbased().must_be_one, PROC1_TRUE_ZERO);
        assert_eq!(default1::EXIT & !c.allowed_exit().must_be_one, EXIT_TRUE_ZERO);
        assert_eq!(default1::ENTRY & !c.allowed_entry().must_be_one, ENTRY_TRUE_ZERO);
        assert_eq!(c.allowed_pinbased().must_be_one, default1::PIN);
    }

    #[test]
    fn what_an_l1_typically_requests_adjusts() {
        let c = Caps::soft();
        let pin = c.allowed_pinbased().adjust(L1_PIN.0, L1_PIN.1).unwrap();
        assert_eq!(pin, default1::PIN, "optional pin-based bits are dropped");
        let proc = c.allowed_procbased().adjust(L1_PROC.0, L1_PROC.1).unwrap();
        assert_eq!(
            proc,
            0x0400_6172 | L1_PROC.0 | proc1::USE_MSR_BITMAPS,
            "MSR bitmaps, but no TSC offsetting, no CR3 exiting"
        );
        let proc2 = c.allowed_procbased2().adjust(L1_PROC2.0, L1_PROC2.1).unwrap();
        assert_eq!(proc2, proc2::ENABLE_EPT);
        let exit = c.allowed_exit().adjust(L1_EXIT.0, L1_EXIT.1).unwrap();
        assert_eq!(exit, 0x0003_6DFB | (EXIT_OPTIONAL & !exit::SAVE_PREEMPTION_TIMER));
        let entry = c.allowed_entry().adjust(L1_ENTRY.0, L1_ENTRY.1).unwrap();
        assert_eq!(entry, 0x0000_11FB | ENTRY_OPTIONAL);
        for (a, v) in [
            (c.allowed_pinbased(), pin),
            (c.allowed_procbased(), proc),
            (c.allowed_procbased2(), proc2),
            (c.allowed_exit(), exit),
            (c.allowed_entry(), entry),
        ] {
            assert_eq!(a.check(v), Ok(()));
        }
        // Requiring something not honoured is an error for L1, never a silent drop.
        assert_eq!(
            c.allowed_procbased().adjust(proc1::RDTSC_EXITING, 0),
            Err(ControlError::NotAllowedOne(proc1::RDTSC_EXITING))
        );
    }

    #[test]
    fn no_unsupported_bit_is_advertised() {
        let c = Caps::soft();
        // Exits this host's KVM cannot surface to L0, and features L0 does not emulate.
        // (Interrupt-window exiting is honoured from part 3 where exact: entry checks.)
        let proc_never = proc1::USE_TSC_OFFSETTING
            | proc1::INVLPG_EXITING
            | proc1::MWAIT_EXITING
            | proc1::RDPMC_EXITING
            | proc1::RDTSC_EXITING
            | proc1::ACTIVATE_TERTIARY_CONTROLS
            | proc1::CR8_LOAD_EXITING
            | proc1::CR8_STORE_EXITING
            | proc1::USE_TPR_SHADOW
            | proc1::NMI_WINDOW_EXITING
            | proc1::MOV_DR_EXITING
            | proc1::MONITOR_TRAP_FLAG
            | proc1::MONITOR_EXITING
            | proc1::PAUSE_EXITING;
        assert_eq!(c.allowed_procbased().may_be_one & proc_never, 0);
        assert_eq!(c.allowed_procbased().may_be_one, default1::PROC1 | PROC1_OPTIONAL);
        assert_eq!(
            c.allowed_pinbased().may_be_one,
            default1::PIN | pin::PREEMPTION_TIMER,
            "the preemption timer is the only pin-based control"
        );
        assert_eq!(c.allowed_procbased2().may_be_one, proc2::ENABLE_EPT);
        assert_eq!(c.allowed_exit().may_be_one, default1::EXIT | EXIT_OPTIONAL);
        assert_eq!(c.allowed_entry().may_be_one, default1::ENTRY | ENTRY_OPTIONAL);
        assert_eq!(c.procbased2 as u32, 0, "secondary controls have no must-be-one half");
        let ept_never = ept_cap::EXECUTE_ONLY | ept_cap::MEMTYPE_UC | ept_cap::ACCESSED_DIRTY | 1 << 7;
        assert_eq!(c.ept_vpid & ept_never, 0, "no execute-only, UC, A/D, 5-level");
        assert_eq!(c.ept_vpid >> 32, 0, "no INVVPID");
        assert_eq!(c.activity_states(), 1, "HLT only (no shutdown, no wait-for-SIPI)");
        assert_eq!(c.cr3_target_count(), 0);
        assert_eq!(c.misc & (1 << 29 | 1 << 30), 0, "no VMWRITE to exit information, no 0-length injection");
        assert_eq!(c.check_cr0(0x8000_0031), Ok(()));
        assert!(c.check_cr0(0x8000_0011).is_err(), "NE is fixed");
        assert!(c.check_cr0(0x21).is_err(), "no unrestricted guest: PG is fixed");
        assert_eq!(c.check_cr4(0x2020), Ok(()));
        assert!(c.check_cr4(0x20).is_err(), "VMXE is fixed");
        assert!(c.check_cr4(0x2020 | 1 << 17).is_err(), "PCIDE is not offered");
    }
}
