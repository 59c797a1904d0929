//! Sending RDMSR/WRMSR of chosen MSRs to userspace: KVM_CAP_X86_USER_SPACE_MSR plus a
//! KVM_X86_SET_MSR_FILTER that denies them (Documentation/virt/kvm/api.rst 4.126, 7.21).
//!
//! With the capability enabled for `KVM_MSR_EXIT_REASON_FILTER | KVM_MSR_EXIT_REASON_UNKNOWN`,
//! an access KVM's filter denies, and an access to an MSR KVM does not know (e.g. 0x480 on a
//! host without nested VMX), returns from KVM_RUN as `KVM_EXIT_X86_RDMSR`/`WRMSR` instead of
//! a #GP in the guest. docs/kvm-exits.md says where RIP stands then and how the exit completes.

use kvm_bindings::{
    KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER, KVM_MSR_EXIT_REASON_UNKNOWN, KVM_MSR_FILTER_MAX_RANGES,
    kvm_enable_cap,
};
use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};

/// The x2APIC MSR range, which KVM's MSR filter does not cover.
pub const X2APIC_MSRS: std::ops::RangeInclusive<u32> = 0x800..=0x8FF;

/// Errors of MSR-filter setup.
#[derive(Debug, thiserror::Error)]
pub enum MsrFilterError {
    /// More MSRs than KVM_X86_SET_MSR_FILTER has ranges (one range per MSR here).
    #[error("{0} MSRs to deny, but KVM's MSR filter takes at most {max} ranges", max = KVM_MSR_FILTER_MAX_RANGES)]
    TooMany(usize),
    /// An MSR in the x2APIC range, which the filter cannot send to userspace.
    #[error("MSR {0:#x} is in the x2APIC range 0x800-0x8ff, which KVM's MSR filter does not cover")]
    X2apic(u32),
    /// KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR) failed.
    #[error("KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR): {0}")]
    EnableCap(kvm_ioctls::Error),
    /// KVM_X86_SET_MSR_FILTER failed.
    #[error("KVM_X86_SET_MSR_FILTER: {0}")]
    SetFilter(kvm_ioctls::Error),
}

/// Send RDMSR/WRMSR of each MSR in `deny` (and of MSRs KVM does not know) to userspace
/// as KVM_EXIT_X86_RDMSR / WRMSR; every other MSR is KVM's. One filter range per MSR.
pub fn exit_to_userspace(vm: &VmFd, deny: &[u32]) -> Result<(), MsrFilterError> {
    let ranges: Vec<(u32, u32)> = deny.iter().map(|&m| (m, 1)).collect();
    exit_ranges_to_userspace(vm, &ranges)
}

/// Send RDMSR/WRMSR of every MSR in the ranges `(base, count)` (and of MSRs KVM does not
/// know) to userspace; every other MSR is KVM's. At most KVM_MSR_FILTER_MAX_RANGES ranges;
/// none may touch the x2APIC range, which the filter does not cover.
pub fn exit_ranges_to_userspace(vm: &VmFd, deny: &[(u32, u32)]) -> Result<(), MsrFilterError> {
    if deny.len() > KVM_MSR_FILTER_MAX_RANGES as usize {
        return Err(MsrFilterError::TooMany(deny.len()));
    }
    if let Some(m) = deny.iter().flat_map(|&(b, n)| b..b.saturating_add(n)).find(|m| X2APIC_MSRS.contains(m)) {
        return Err(MsrFilterError::X2apic(m));
    }
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [u64::from(KVM_MSR_EXIT_REASON_FILTER | KVM_MSR_EXIT_REASON_UNKNOWN), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap).map_err(MsrFilterError::EnableCap)?;
    // A clear bit denies the MSR to the guest, which makes KVM exit to userspace.
    let bitmaps: Vec<Vec<u8>> = deny.iter().map(|&(_, n)| vec![0u8; (n as usize).div_ceil(8).max(1)]).collect();
    let ranges: Vec<MsrFilterRange<'_>> = deny
        .iter()
        .zip(&bitmaps)
        .map(|(&(base, msr_count), bitmap)| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base,
            msr_count,
            bitmap,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges).map_err(MsrFilterError::SetFilter)
}

/// One range of a general KVM MSR filter: for the accesses named by `read`/`write`, MSR
/// `base + i` goes to KVM when bit `i` of `allow` is set and to userspace when it is clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// The range filters reads.
    pub read: bool,
    /// The range filters writes.
    pub write: bool,
    /// First MSR.
    pub base: u32,
    /// MSRs in the range.
    pub count: u32,
    /// One bit per MSR (LSB first), at least `count` bits: set = KVM handles it.
    pub allow: Vec<u8>,
}

/// A whole filter: the ranges (the first range that matches an access decides) and what
/// happens to an access no range matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Unmatched accesses go to userspace (`KVM_MSR_FILTER_DEFAULT_DENY`).
    pub default_deny: bool,
    /// The ranges, at most KVM_MSR_FILTER_MAX_RANGES.
    pub ranges: Vec<Range>,
}

/// Enable KVM_CAP_X86_USER_SPACE_MSR with only `KVM_MSR_EXIT_REASON_FILTER`: an access the
/// filter denies exits to userspace; an access to an MSR KVM does not know stays a #GP in the
/// guest, as on hardware.
pub fn enable_filter_exits(vm: &VmFd) -> Result<(), MsrFilterError> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [u64::from(KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap).map_err(MsrFilterError::EnableCap)
}

/// Install `filter` with KVM_X86_SET_MSR_FILTER (replacing the previous one; KVM applies it
/// to every vCPU before its next entry). The x2APIC range is KVM's whatever the filter says
/// (Documentation/virt/kvm/api.rst 4.126): callers must not rely on denying it.
pub fn set(vm: &VmFd, filter: &Filter) -> Result<(), MsrFilterError> {
    if filter.ranges.len() > KVM_MSR_FILTER_MAX_RANGES as usize {
        return Err(MsrFilterError::TooMany(filter.ranges.len()));
    }
    let ranges: Vec<MsrFilterRange<'_>> = filter
        .ranges
        .iter()
        .map(|r| {
            let mut flags = MsrFilterRangeFlags::empty();
            flags.set(MsrFilterRangeFlags::READ, r.read);
            flags.set(MsrFilterRangeFlags::WRITE, r.write);
            MsrFilterRange { flags, base: r.base, msr_count: r.count, bitmap: &r.allow }
        })
        .collect();
    let action = if filter.default_deny { MsrFilterDefaultAction::DENY } else { MsrFilterDefaultAction::ALLOW };
    vm.set_msr_filter(action, &ranges).map_err(MsrFilterError::SetFilter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_x2apic_msrs_and_too_many_ranges() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else { return };
        let vm = kvm.create_vm().unwrap();
        assert!(matches!(exit_to_userspace(&vm, &[0x10, 0x830]), Err(MsrFilterError::X2apic(0x830))));
        let many: Vec<u32> = (0..17).collect();
        assert!(matches!(exit_to_userspace(&vm, &many), Err(MsrFilterError::TooMany(17))));
    }
}
