//! VM-entry MSR loading (SDM 27.4 "Loading MSRs"): after the guest state, each entry of the
//! VM-entry MSR-load area is checked and written, in order, to L2's vCPU. The first entry that
//! fails ends the entry with a VM-entry failure, exit reason 34 with bit 31, and the exit
//! qualification the entry's index counted from 1 (SDM 27.8); the entries before it stay
//! loaded.
//!
//! An entry fails when (27.4): bits 31:0 of its index are C0000100H (IA32_FS_BASE) or
//! C0000101H (IA32_GS_BASE); bits 31:8 are 000008H (x2APIC MSRs); the index is an MSR writable
//! only in SMM (IA32_SMM_MONITOR_CTL) or one the processor refuses to load on VM entry
//! (IA32_BIOS_UPDT_TRIG); bits 63:32 of its first quadword are not 0; or WRMSR of its value
//! would #GP ("if the value ... would cause a general-protection exception if executed via
//! WRMSR with CPL = 0").
//!
//! L0 applies the #GP rules itself, per MSR ([`wrmsr`]): KVM_SET_MSRS is a
//! host-initiated write, which KVM lets through where a guest's WRMSR would fault (IA32_PAT =
//! 0202020202020202H, memory type 2, was accepted). An MSR whose rules L0 does not know is not
//! loaded: the entry is `engine_unsupported` with the MSR named, never a guess.

use kvm_bindings::{Msrs, kvm_msr_entry};

use crate::memory::GuestMem;
use crate::vcpu::Vcpu;

/// The most entries L0 loads in one VM entry (IA32_VMX_MISC[27:25] = 0: 512 recommended).
pub const MAX_ENTRIES: u32 = 512;
/// IA32_SMM_MONITOR_CTL: writable only in SMM.
pub const IA32_SMM_MONITOR_CTL: u32 = 0x9B;
/// IA32_BIOS_UPDT_TRIG: not loaded on VM entry (27.4's model-specific example).
pub const IA32_BIOS_UPDT_TRIG: u32 = 0x79;
/// IA32_FS_BASE and IA32_GS_BASE: never loaded from the area (the guest-state area has them).
pub const IA32_FS_BASE: u32 = 0xC000_0100;
/// See [`IA32_FS_BASE`].
pub const IA32_GS_BASE: u32 = 0xC000_0101;

/// Why one entry cannot be loaded (the checks of 27.4 that do not depend on the MSR's value).
#[must_use]
pub fn refuse(index: u32, high: u32) -> Option<&'static str> {
    if index == IA32_FS_BASE || index == IA32_GS_BASE {
        Some("IA32_FS_BASE or IA32_GS_BASE (bits 31:0 = C0000100H or C0000101H)")
    } else if index >> 8 == 0x8 {
        Some("an x2APIC MSR (bits 31:8 = 000008H)")
    } else if index == IA32_SMM_MONITOR_CTL {
        Some("IA32_SMM_MONITOR_CTL, writable only in SMM")
    } else if index == IA32_BIOS_UPDT_TRIG {
        Some("IA32_BIOS_UPDT_TRIG, not loaded on VM entry")
    } else if high != 0 {
        Some("bits 63:32 of the entry's first quadword are not 0")
    } else {
        None
    }
}

/// What WRMSR of a value at CPL 0 does ([`wrmsr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrmsr {
    /// It writes.
    Writes,
    /// It raises #GP, for this reason.
    Faults(&'static str),
    /// L0 does not know the MSR's rules.
    Unknown,
}

/// What WRMSR of `value` to `index` at CPL 0 does, for the MSRs L0 loads.
#[must_use]
pub fn wrmsr(index: u32, value: u64) -> Wrmsr {
    // Canonical for 48-bit linear addresses (bits 63:47 equal): L1's CPUID shows no LA57.
    let canonical = (value as i64) << 16 >> 16 == value as i64;
    let fault = |gp: bool, why| if gp { Wrmsr::Faults(why) } else { Wrmsr::Writes };
    match index {
        // IA32_TIME_STAMP_COUNTER, IA32_SYSENTER_CS (63:16 "not used", not reserved), IA32_STAR.
        0x10 | 0x174 | 0xC000_0081 => Wrmsr::Writes,
        // IA32_SYSENTER_ESP/EIP, IA32_LSTAR, IA32_CSTAR, IA32_KERNEL_GS_BASE: "WRMSR ... #GP if
        // the address is not canonical" (Vol. 4, Table 2-2).
        0x175 | 0x176 | 0xC000_0082 | 0xC000_0083 | 0xC000_0102 => fault(!canonical, "not a canonical address"),
        // IA32_TSC_AUX: bits 63:32 reserved.
        0xC000_0103 => fault(value >> 32 != 0, "reserved bits 63:32 set"),
        // IA32_PAT (SDM 13.12.2): "Any attempt to write an invalid memory type (2, 3, or 8
        // through FFH) to a PAT entry generates a general-protection exception".
        0x277 => fault(value.to_le_bytes().iter().any(|&t| !matches!(t, 0 | 1 | 4..=7)), "a reserved memory type"),
        _ => Wrmsr::Unknown,
    }
}

/// Why an entry was not loaded.
#[derive(Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Entry `n` (from 1) fails the load: the VM-entry failure's qualification.
    Fails {
        /// The entry's number, from 1.
        n: u32,
        /// What was wrong.
        why: String,
    },
    /// Entry `n` is valid as far as L0 knows, but L0 cannot load it (`engine_unsupported`).
    Unsupported {
        /// The entry's number, from 1.
        n: u32,
        /// What L0 lacks.
        why: String,
    },
}

/// Entry `i` (from 0) of the area at L1-physical `addr`: its MSR index and value when 27.4
/// lets it load, or why not.
fn judge(mem: &GuestMem, addr: u64, i: u32) -> Result<(u32, u64), LoadError> {
    let at = addr + 16 * u64::from(i);
    let n = i + 1;
    let (Ok(first), Ok(value)) = (mem.read_u64(at), mem.read_u64(at + 8)) else {
        return Err(LoadError::Fails { n, why: format!("entry at {at:#x} is outside L1's memory") });
    };
    let (index, high) = (first as u32, (first >> 32) as u32);
    if let Some(why) = refuse(index, high) {
        return Err(LoadError::Fails { n, why: format!("MSR {index:#x}: {why}") });
    }
    match wrmsr(index, value) {
        Wrmsr::Writes => Ok((index, value)),
        Wrmsr::Faults(why) => {
            Err(LoadError::Fails { n, why: format!("MSR {index:#x} = {value:#x}: WRMSR would #GP: {why}") })
        }
        Wrmsr::Unknown => Err(LoadError::Unsupported {
            n,
            why: format!("MSR {index:#x}: L0 does not know the WRMSR rules of this MSR, so it does not load it"),
        }),
    }
}

/// Load the `count` entries at L1-physical `addr` into `vcpu`.
pub fn load(vcpu: &Vcpu, mem: &GuestMem, addr: u64, count: u32) -> Result<(), LoadError> {
    for i in 0..count.min(MAX_ENTRIES) {
        let (index, value) = judge(mem, addr, i)?;
        let msrs =
            Msrs::from_entries(&[kvm_msr_entry { index, data: value, ..Default::default() }]).expect("one entry fits");
        match vcpu.fd().set_msrs(&msrs) {
            Ok(1) => {}
            r => {
                return Err(LoadError::Unsupported {
                    n: i + 1,
                    why: format!("MSR {index:#x} = {value:#x}: KVM_SET_MSRS on L2's vCPU refused it ({r:?})"),
                });
            }
        }
    }
    Ok(())
}

/// Without loading anything: the first entry that fails the load (its number from 1, and
/// why), when every entry before it is one L0 knows the rules of. For an entry L0 refuses as
/// unsupported for another reason: the MSR loading comes after the guest state on hardware
/// (27.4), so its failure is architectural and wins.
#[must_use]
pub fn first_failure(mem: &GuestMem, addr: u64, count: u32) -> Option<(u32, String)> {
    for i in 0..count.min(MAX_ENTRIES) {
        match judge(mem, addr, i) {
            Ok(_) => {}
            Err(LoadError::Fails { n, why }) => return Some((n, why)),
            Err(LoadError::Unsupported { .. }) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_27_4_refusals() {
        assert!(refuse(IA32_FS_BASE, 0).is_some());
        assert!(refuse(IA32_GS_BASE, 0).is_some());
        assert!(refuse(0x808, 0).is_some());
        assert!(refuse(0x8FF, 0).is_some());
        assert!(refuse(IA32_SMM_MONITOR_CTL, 0).is_some());
        assert!(refuse(IA32_BIOS_UPDT_TRIG, 0).is_some());
        assert!(refuse(0x174, 1).is_some());
        assert_eq!(refuse(0x174, 0), None);
        assert_eq!(refuse(0x900, 0), None);
        assert_eq!(refuse(0xC000_0102, 0), None, "IA32_KERNEL_GS_BASE is loadable");
    }

    #[test]
    fn the_wrmsr_rules() {
        const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;
        let faults = |i, v| matches!(wrmsr(i, v), Wrmsr::Faults(_));
        assert_eq!(wrmsr(0x277, PAT_DEFAULT), Wrmsr::Writes);
        assert!(faults(0x277, 0x0202_0202_0202_0202), "memory type 2");
        assert!(faults(0x277, PAT_DEFAULT | 8 << 56), "memory type 8 in PA7");
        assert_eq!(wrmsr(0xC000_0082, 0xFFFF_8000_0000_0000), Wrmsr::Writes);
        assert!(faults(0xC000_0082, 0x0000_8000_0000_0000), "bit 47 alone");
        assert!(faults(0xC000_0103, 1 << 32));
        assert_eq!(wrmsr(0x174, u64::MAX), Wrmsr::Writes);
        assert_eq!(wrmsr(0x1D9, 0), Wrmsr::Unknown, "IA32_DEBUGCTL: rules not modelled");
    }
}
