//! VM-entry MSR loading (SDM 27.4 "Loading MSRs"): after the guest state, each entry of the
//! VM-entry MSR-load area is checked and written, in order, to L2's vCPU. The first entry that
//! fails ends the entry with a VM-entry failure, exit reason 34 with bit 31, and the exit
//! qualification the entry's index counted from 1 (SDM 27.8); the entries before it stay
//! loaded.
//!
//! An entry fails when (27.4): bits 31:8 of its index are 000008H (x2APIC MSRs); the index is
//! an MSR writable only in SMM (IA32_SMM_MONITOR_CTL) or one the processor refuses to load on
//! VM entry (IA32_BIOS_UPDT_TRIG); bits 63:32 of its first quadword are not 0; or WRMSR of
//! its value would #GP, which here is KVM refusing KVM_SET_MSRS for L2's vCPU.

use kvm_bindings::{Msrs, kvm_msr_entry};

use crate::memory::GuestMem;
use crate::vcpu::Vcpu;

/// The most entries L0 loads in one VM entry (IA32_VMX_MISC[27:25] = 0: 512 recommended).
pub const MAX_ENTRIES: u32 = 512;
/// IA32_SMM_MONITOR_CTL: writable only in SMM.
pub const IA32_SMM_MONITOR_CTL: u32 = 0x9B;
/// IA32_BIOS_UPDT_TRIG: not loaded on VM entry (27.4's model-specific example).
pub const IA32_BIOS_UPDT_TRIG: u32 = 0x79;

/// Why one entry cannot be loaded (the checks that need no WRMSR).
#[must_use]
pub fn refuse(index: u32, high: u32) -> Option<&'static str> {
    if index >> 8 == 0x8 {
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

/// Load the `count` entries at L1-physical `addr` into `vcpu`. `Err((i, why))`: entry `i`
/// (from 1) failed, the VM-entry failure's qualification.
pub fn load(vcpu: &Vcpu, mem: &GuestMem, addr: u64, count: u32) -> Result<(), (u32, String)> {
    for i in 0..count.min(MAX_ENTRIES) {
        let at = addr + 16 * u64::from(i);
        let n = i + 1;
        let (Ok(first), Ok(value)) = (mem.read_u64(at), mem.read_u64(at + 8)) else {
            return Err((n, format!("entry at {at:#x} is outside L1's memory")));
        };
        let (index, high) = (first as u32, (first >> 32) as u32);
        if let Some(why) = refuse(index, high) {
            return Err((n, format!("MSR {index:#x}: {why}")));
        }
        let msrs =
            Msrs::from_entries(&[kvm_msr_entry { index, data: value, ..Default::default() }]).expect("one entry fits");
        match vcpu.fd().set_msrs(&msrs) {
            Ok(1) => {}
            r => return Err((n, format!("MSR {index:#x} = {value:#x}: WRMSR would #GP (KVM_SET_MSRS: {r:?})"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_27_4_refusals() {
        assert!(refuse(0x808, 0).is_some());
        assert!(refuse(0x8FF, 0).is_some());
        assert!(refuse(IA32_SMM_MONITOR_CTL, 0).is_some());
        assert!(refuse(IA32_BIOS_UPDT_TRIG, 0).is_some());
        assert!(refuse(0x174, 1).is_some());
        assert_eq!(refuse(0x174, 0), None);
        assert_eq!(refuse(0x900, 0), None);
    }
}
