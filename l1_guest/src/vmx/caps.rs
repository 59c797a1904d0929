//! VMX capabilities (SDM Vol. 3D, Appendix A) and the controls L1 runs L2 with.
//!
//! The capability MSRs are plain RDMSRs on both backends (the soft engine's L0 filters
//! 0x480-0x491 to userspace). Controls are computed with
//! `nestbench_abi::controls::Allowed::adjust`: a bit L1 requires but may not set is an
//! error naming the field, an optional bit that is not allowed is dropped, and every bit
//! that must be 1 is added (SDM A.3-A.5, 27.2.1.1).

use nestbench_abi::controls::{Allowed, ControlError, entry, ept_cap, exit, proc1, proc2};
use nestbench_abi::vmx::{VmxBasic, msr};

/// The VMX capability MSRs L1 needs, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxCaps {
    /// IA32_VMX_BASIC.
    pub basic: VmxBasic,
    /// Pin-based controls (TRUE MSR when BASIC[55]).
    pub pin: Allowed,
    /// Primary processor-based controls (TRUE MSR when BASIC[55]).
    pub proc1: Allowed,
    /// Secondary processor-based controls (IA32_VMX_PROCBASED_CTLS2; all-zero when the
    /// primary controls do not allow "activate secondary controls").
    pub proc2: Allowed,
    /// VM-exit controls (TRUE MSR when BASIC[55]).
    pub exit: Allowed,
    /// VM-entry controls (TRUE MSR when BASIC[55]).
    pub entry: Allowed,
    /// IA32_VMX_MISC.
    pub misc: u64,
    /// IA32_VMX_CR0_FIXED0 / FIXED1.
    pub cr0_fixed: (u64, u64),
    /// IA32_VMX_CR4_FIXED0 / FIXED1.
    pub cr4_fixed: (u64, u64),
    /// IA32_VMX_EPT_VPID_CAP (0 when neither EPT nor VPID may be enabled).
    pub ept_vpid: u64,
}

impl VmxCaps {
    /// Read the capability MSRs with `rdmsr` (SDM A.1: the TRUE MSRs 0x48D-0x490 exist only
    /// when IA32_VMX_BASIC[55] is 1; A.3.3: IA32_VMX_PROCBASED_CTLS2 only when the primary
    /// controls allow "activate secondary controls"; A.10: IA32_VMX_EPT_VPID_CAP only when
    /// the secondary controls allow "enable EPT" or "enable VPID").
    pub fn read(mut rdmsr: impl FnMut(u32) -> u64) -> Self {
        let basic = VmxBasic::from_raw(rdmsr(msr::IA32_VMX_BASIC));
        let t = basic.true_controls();
        let pick = |plain: u32, true_msr: u32| if t { true_msr } else { plain };
        let pin = Allowed::from_msr(rdmsr(pick(msr::IA32_VMX_PINBASED_CTLS, msr::IA32_VMX_TRUE_PINBASED_CTLS)));
        let proc1 = Allowed::from_msr(rdmsr(pick(msr::IA32_VMX_PROCBASED_CTLS, msr::IA32_VMX_TRUE_PROCBASED_CTLS)));
        let exit = Allowed::from_msr(rdmsr(pick(msr::IA32_VMX_EXIT_CTLS, msr::IA32_VMX_TRUE_EXIT_CTLS)));
        let entry = Allowed::from_msr(rdmsr(pick(msr::IA32_VMX_ENTRY_CTLS, msr::IA32_VMX_TRUE_ENTRY_CTLS)));
        let proc2 = if proc1.may_be_one & proc1::ACTIVATE_SECONDARY_CONTROLS != 0 {
            Allowed::from_msr(rdmsr(msr::IA32_VMX_PROCBASED_CTLS2))
        } else {
            Allowed { must_be_one: 0, may_be_one: 0 }
        };
        let ept_vpid = if proc2.may_be_one & (proc2::ENABLE_EPT | proc2::ENABLE_VPID) != 0 {
            rdmsr(msr::IA32_VMX_EPT_VPID_CAP)
        } else {
            0
        };
        Self {
            basic,
            pin,
            proc1,
            proc2,
            exit,
            entry,
            misc: rdmsr(msr::IA32_VMX_MISC),
            cr0_fixed: (rdmsr(msr::IA32_VMX_CR0_FIXED0), rdmsr(msr::IA32_VMX_CR0_FIXED1)),
            cr4_fixed: (rdmsr(msr::IA32_VMX_CR4_FIXED0), rdmsr(msr::IA32_VMX_CR4_FIXED1)),
            ept_vpid,
        }
    }

    /// `cr0` with the bits IA32_VMX_CR0_FIXED0 sets forced to 1 and the bits FIXED1 clears
    /// forced to 0 (SDM A.7, 24.8 "Restrictions on VMX Operation").
    #[must_use]
    pub const fn adjust_cr0(&self, cr0: u64) -> u64 {
        (cr0 | self.cr0_fixed.0) & self.cr0_fixed.1
    }

    /// `cr4` adjusted to IA32_VMX_CR4_FIXED0/1 (SDM A.8).
    #[must_use]
    pub const fn adjust_cr4(&self, cr4: u64) -> u64 {
        (cr4 | self.cr4_fixed.0) & self.cr4_fixed.1
    }
}

/// The five control fields L1 writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    /// Pin-based VM-execution controls.
    pub pin: u32,
    /// Primary processor-based VM-execution controls.
    pub proc1: u32,
    /// Secondary processor-based VM-execution controls.
    pub proc2: u32,
    /// VM-exit controls.
    pub exit: u32,
    /// VM-entry controls.
    pub entry: u32,
}

impl Controls {
    /// Whether the VM-exit controls save and load IA32_EFER.
    #[must_use]
    pub const fn exit_load_efer(&self) -> bool {
        self.exit & exit::LOAD_EFER != 0
    }

    /// Whether "use MSR bitmaps" is set (SDM 25.6.9).
    #[must_use]
    pub const fn uses_msr_bitmaps(&self) -> bool {
        self.proc1 & proc1::USE_MSR_BITMAPS != 0
    }

    /// Whether the VM-entry controls load IA32_EFER.
    #[must_use]
    pub const fn entry_load_efer(&self) -> bool {
        self.entry & entry::LOAD_EFER != 0
    }
}

/// Why L1 cannot run L2 on these capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapsError {
    /// A required control is not allowed.
    Control {
        /// The control field ("pin-based", "primary", ...).
        field: &'static str,
        /// What is wrong.
        error: ControlError,
    },
    /// IA32_VMX_EPT_VPID_CAP lacks something L1's EPT needs (4-level walk, write-back).
    Ept(u64),
}

impl core::fmt::Display for CapsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Control { field, error } => write!(f, "{field} controls: {error}"),
            Self::Ept(cap) => write!(f, "IA32_VMX_EPT_VPID_CAP {cap:#x} lacks a 4-level walk or write-back"),
        }
    }
}

/// The controls for running a payload (at CPL 0 when `cpl0`):
/// * pin-based: nothing;
/// * primary: unconditional I/O exiting and activate secondary controls, plus HLT exiting at
///   CPL 0 (at CPL 3 HLT is a #GP, never an exit); "use MSR bitmaps" where allowed (without
///   it every RDMSR/WRMSR exits, SDM 26.1.3, which the soft engine cannot honour for the
///   x2APIC range);
/// * secondary: enable EPT;
/// * VM-exit: host address-space size (a 64-bit host, SDM 27.2.1.2), optionally save/load
///   IA32_EFER;
/// * VM-entry: IA-32e mode guest, optionally load IA32_EFER.
pub fn compute_controls(caps: &VmxCaps, cpl0: bool) -> Result<Controls, CapsError> {
    let adjust = |field, allowed: Allowed, required, optional| {
        allowed.adjust(required, optional).map_err(|error| CapsError::Control { field, error })
    };
    let want = ept_cap::WALK_LENGTH_4 | ept_cap::MEMTYPE_WB;
    if caps.ept_vpid & want != want {
        return Err(CapsError::Ept(caps.ept_vpid));
    }
    let hlt = if cpl0 { proc1::HLT_EXITING } else { 0 };
    Ok(Controls {
        pin: adjust("pin-based", caps.pin, 0, 0)?,
        proc1: adjust(
            "primary processor-based",
            caps.proc1,
            proc1::UNCONDITIONAL_IO_EXITING | proc1::ACTIVATE_SECONDARY_CONTROLS | hlt,
            proc1::USE_MSR_BITMAPS,
        )?,
        proc2: adjust("secondary processor-based", caps.proc2, proc2::ENABLE_EPT, 0)?,
        exit: adjust("VM-exit", caps.exit, exit::HOST_ADDRESS_SPACE_SIZE, exit::SAVE_EFER | exit::LOAD_EFER)?,
        entry: adjust("VM-entry", caps.entry, entry::IA32E_MODE_GUEST, entry::LOAD_EFER)?,
    })
}

/// A pin-based control bit the capability MSR does not allow to be 1 (for the FailControl
/// scenario, SDM 27.2.1.1), or `None` if every bit may be 1.
#[must_use]
pub const fn disallowed_pin_bit(caps: &VmxCaps) -> Option<u32> {
    let not_allowed = !caps.pin.may_be_one;
    if not_allowed == 0 { None } else { Some(1 << not_allowed.trailing_zeros()) }
}

#[cfg(test)]
pub mod fixtures {
    //! Capability MSR values for host tests.

    /// What KVM's nested VMX (kvm_intel nested=1, ept=1, enable_shadow_vmcs=1,
    /// unrestricted_guest=1, enable_apicv=1, eptad=1) advertises to an L1 on a Skylake-SP host.
    ///
    /// Source: Linux `arch/x86/kvm/vmx/nested.c`, `nested_vmx_setup_ctls_msrs()` and its
    /// helpers (v6.x), evaluated for a Skylake `vmcs_config`, and `vmx_get_vmx_msr()` (the
    /// non-TRUE MSRs OR the "always-on without TRUE MSR" bits back in: pin 0x16, proc
    /// 0x0401E172, exit 0x36DFF, entry 0x11FF; the TRUE ones additionally clear CR3-load/store
    /// exiting and save/load debug controls from the must-be-one half). BASIC:
    /// VMCS12_REVISION 0x11E57ED0, 4096-byte regions, WB, INS/OUTS info, TRUE controls.
    /// CR0_FIXED0 = PE|NE|PG, CR4_FIXED0 = VMXE (KVM's "core2 setting"); FIXED1 are the
    /// host's (Skylake: 0xFFFF_FFFF and 0x3767FF, plus UMIP that KVM emulates).
    /// EPT_VPID_CAP: execute-only, 4-level walk, WB, 2M, 1G, INVEPT, A/D, single and global
    /// INVEPT; INVVPID with all four extents.
    pub fn kvm_nested_skylake(msr: u32) -> u64 {
        match msr {
            0x480 => 0x00D8_1000_11E5_7ED0,
            0x481 => 0x0000_00FF_0000_0016,
            0x482 => 0xFFF9_FFFE_0401_E172,
            0x483 => 0x00FF_FFFF_0003_6DFF,
            0x484 => 0x0001_F3FF_0000_11FF,
            0x485 => 0x2000_0165,
            0x486 => 0x8000_0021,
            0x487 => 0xFFFF_FFFF,
            0x488 => 0x2000,
            0x489 => 0x0037_6FFF,
            0x48A => 0x34,
            0x48B => 0x0213_7BFF_0000_0000,
            0x48C => 0x0000_0F01_0633_4041,
            0x48D => 0x0000_00FF_0000_0016,
            0x48E => 0xFFF9_FFFE_0400_6172,
            0x48F => 0x00FF_FFFF_0003_6DFB,
            0x490 => 0x0001_F3FF_0000_11FB,
            0x491 => 1,
            _ => panic!("MSR {msr:#x} is not a VMX capability MSR"),
        }
    }

    /// A minimal VMX that honours only what the soft engine's design promises
    /// (shared/DESIGN.md): TRUE controls, no EFER save/load, EPT 4-level WB, and a CPU
    /// without TRUE MSRs for the fallback path when `true_controls` is false.
    pub fn minimal(true_controls: bool) -> impl Fn(u32) -> u64 {
        move |msr| match msr {
            0x480 => 0x0058_1000_0000_0001 | if true_controls { 1 << 55 } else { 0 },
            // Default1 bits must be one; the plain MSRs are what a pre-TRUE CPU reports.
            0x481 | 0x48D => 0x0000_0016_0000_0016,
            0x482 | 0x48E => 0x8501_E1F2_0401_E172, // HLT, uncond. I/O, secondary
            0x483 | 0x48F => 0x0003_6FFF_0003_6DFF, // + host address-space size
            0x484 | 0x490 => 0x0000_13FF_0000_11FF, // + IA-32e mode guest
            0x485 => 0,
            0x486 => 0x8000_0021,
            0x487 => 0xFFFF_FFFF,
            0x488 => 0x2000,
            0x489 => 0x0037_27FF,
            0x48B => 0x0000_0002_0000_0000,
            0x48C => 0x0000_0000_0000_4040,
            _ => panic!("MSR {msr:#x} not expected"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_nested_skylake_reads_the_true_msrs() {
        let mut read = std::vec::Vec::new();
        let caps = VmxCaps::read(|m| {
            read.push(m);
            fixtures::kvm_nested_skylake(m)
        });
        for plain in [0x481, 0x482, 0x483, 0x484] {
            assert!(!read.contains(&plain), "BASIC[55] = 1: the TRUE MSR replaces {plain:#x}");
        }
        assert!(read.contains(&0x48B) && read.contains(&0x48C));
        assert_eq!(caps.basic.revision_id(), 0x11E5_7ED0);
        assert_eq!(caps.proc1.must_be_one, 0x0400_6172);
        assert_eq!(caps.exit.must_be_one & exit::SAVE_DEBUG_CONTROLS, 0, "TRUE exit controls free bit 2");
    }

    #[test]
    fn controls_on_kvm_nested_skylake() {
        let caps = VmxCaps::read(fixtures::kvm_nested_skylake);
        let c = compute_controls(&caps, true).unwrap();
        assert_eq!(c.pin, 0x16, "only the default1 bits");
        assert_eq!(
            c.proc1,
            0x0400_6172
                | proc1::UNCONDITIONAL_IO_EXITING
                | proc1::ACTIVATE_SECONDARY_CONTROLS
                | proc1::HLT_EXITING
                | proc1::USE_MSR_BITMAPS
        );
        assert_eq!(c.proc2, proc2::ENABLE_EPT);
        assert_eq!(c.exit, 0x0003_6DFB | exit::HOST_ADDRESS_SPACE_SIZE | exit::SAVE_EFER | exit::LOAD_EFER);
        assert_eq!(c.entry, 0x11FB | entry::IA32E_MODE_GUEST | entry::LOAD_EFER);
        assert!(c.exit_load_efer() && c.entry_load_efer());
        for (a, v) in [(caps.pin, c.pin), (caps.proc1, c.proc1), (caps.proc2, c.proc2), (caps.exit, c.exit)] {
            assert_eq!(a.check(v), Ok(()));
        }
        assert_eq!(caps.entry.check(c.entry), Ok(()));

        let user = compute_controls(&caps, false).unwrap();
        assert_eq!(user.proc1 & proc1::HLT_EXITING, 0, "CPL 3 payloads: HLT is a #GP, no HLT exiting");
        // Pin bit 8 upwards may not be 1 here: the FailControl scenario's perturbation.
        assert_eq!(disallowed_pin_bit(&caps), Some(1 << 8));
        assert!(caps.pin.check(c.pin | 1 << 8).is_err());
    }

    #[test]
    fn optional_efer_controls_are_dropped_and_plain_msrs_used_without_true_controls() {
        for t in [true, false] {
            let caps = VmxCaps::read(fixtures::minimal(t));
            assert_eq!(caps.basic.true_controls(), t);
            let c = compute_controls(&caps, true).unwrap();
            assert!(!c.exit_load_efer() && !c.entry_load_efer(), "not advertised: dropped, not an error");
            assert_eq!(c.exit, 0x36DFF | exit::HOST_ADDRESS_SPACE_SIZE);
            assert_eq!(c.entry, 0x11FF | entry::IA32E_MODE_GUEST);
            assert!(!c.uses_msr_bitmaps(), "not advertised: every RDMSR/WRMSR exits");
        }
    }

    #[test]
    fn a_missing_required_control_is_an_error_naming_the_field() {
        let mut caps = VmxCaps::read(fixtures::kvm_nested_skylake);
        caps.proc2.may_be_one &= !proc2::ENABLE_EPT;
        assert_eq!(
            compute_controls(&caps, true),
            Err(CapsError::Control {
                field: "secondary processor-based",
                error: ControlError::NotAllowedOne(proc2::ENABLE_EPT)
            })
        );
        let mut caps = VmxCaps::read(fixtures::kvm_nested_skylake);
        caps.ept_vpid &= !ept_cap::MEMTYPE_WB;
        assert!(matches!(compute_controls(&caps, true), Err(CapsError::Ept(_))));
    }

    #[test]
    fn cr_adjustment_follows_the_fixed_msrs() {
        let caps = VmxCaps::read(fixtures::kvm_nested_skylake);
        assert_eq!(caps.adjust_cr0(0x8000_0011), 0x8000_0031, "NE forced on");
        assert_eq!(caps.adjust_cr4(0x20), 0x2020, "VMXE forced on");
        assert_eq!(caps.adjust_cr4(0x20 | 1 << 23), 0x2020, "an unsupported bit forced off");
    }
}
