//! The MSRs L1 intercepts and emulates for L2, described once: L1's RDMSR/WRMSR exit handlers
//! (`l1_guest/src/exits/{rdmsr,wrmsr}.rs`) and L0's single-level twin (`l0/src/single_level.rs`,
//! which gets the same two MSRs from KVM's MSR filter) answer with this one [`EmulatedMsrs`].
//!
//! * IA32_SYSENTER_ESP (0x175, low range): reads return [`RDMSR_VALUE`] until L2 writes it.
//!   The `rdmsr` payload reads it and checks the value.
//! * IA32_KERNEL_GS_BASE (0xC000_0102, high range): every write is recorded and checked
//!   against the sequence the `wrmsr` payload writes ([`WRMSR_FIRST_VALUE`] + n for the n-th
//!   write); mismatches go into the payload report's failures.
//!
//! Both exist on every x86-64 CPU and in every KVM guest, take any canonical value, and are
//! used by nothing a payload does (no SYSENTER, no SWAPGS), so an access that reached the
//! real MSR (an engine that ignored the bitmap or the filter) would be harmless and visibly
//! wrong. The values are `l2_payloads::{rdmsr, wrmsr}`'s (a test in `l1_guest` ties them).

/// IA32_SYSENTER_ESP.
pub const IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_KERNEL_GS_BASE.
pub const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;
/// The MSRs whose reads and writes are intercepted and emulated.
pub const INTERCEPTED: [u32; 2] = [IA32_SYSENTER_ESP, IA32_KERNEL_GS_BASE];
/// IA32_SYSENTER_ESP as L2 reads it before writing it (= `l2_payloads::rdmsr::VALUE`).
pub const RDMSR_VALUE: u64 = 0x0000_4E42_5244_0175;
/// The first value the `wrmsr` payload writes to IA32_KERNEL_GS_BASE; its n-th write is this
/// plus n (= `l2_payloads::wrmsr::value(n)`).
pub const WRMSR_FIRST_VALUE: u64 = 0x0000_4E42_5752_0000;

/// L2's view of the intercepted MSRs, and the check of the writes to IA32_KERNEL_GS_BASE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmulatedMsrs {
    values: [u64; INTERCEPTED.len()],
    /// Writes to IA32_KERNEL_GS_BASE so far.
    pub gs_base_writes: u64,
    /// Of those, how many were not `WRMSR_FIRST_VALUE + n`.
    pub gs_base_mismatches: u64,
}

impl EmulatedMsrs {
    /// Reset values: IA32_SYSENTER_ESP reads [`RDMSR_VALUE`], IA32_KERNEL_GS_BASE 0.
    #[must_use]
    pub const fn new() -> Self {
        Self { values: [RDMSR_VALUE, 0], gs_base_writes: 0, gs_base_mismatches: 0 }
    }

    fn slot(msr: u32) -> Option<usize> {
        INTERCEPTED.iter().position(|&m| m == msr)
    }

    /// The value of `msr`, or `None` for an MSR that is not emulated.
    #[must_use]
    pub fn read(&self, msr: u32) -> Option<u64> {
        Self::slot(msr).map(|i| self.values[i])
    }

    /// Record a write; `false` for an MSR that is not emulated. A write to
    /// IA32_KERNEL_GS_BASE is checked against the `wrmsr` payload's sequence.
    pub fn write(&mut self, msr: u32, value: u64) -> bool {
        let Some(i) = Self::slot(msr) else { return false };
        self.values[i] = value;
        if msr == IA32_KERNEL_GS_BASE {
            if value != WRMSR_FIRST_VALUE.wrapping_add(self.gs_base_writes) {
                self.gs_base_mismatches += 1;
            }
            self.gs_base_writes += 1;
        }
        true
    }
}

impl Default for EmulatedMsrs {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_recorded_and_checked() {
        let mut m = EmulatedMsrs::new();
        assert_eq!(m.read(IA32_KERNEL_GS_BASE), Some(0));
        assert_eq!(m.read(0x10), None);
        assert!(!m.write(0x10, 1));
        assert!(m.write(IA32_KERNEL_GS_BASE, WRMSR_FIRST_VALUE));
        assert!(m.write(IA32_KERNEL_GS_BASE, WRMSR_FIRST_VALUE + 1));
        assert_eq!((m.gs_base_writes, m.gs_base_mismatches), (2, 0));
        assert!(m.write(IA32_KERNEL_GS_BASE, WRMSR_FIRST_VALUE + 1), "a repeated write");
        assert_eq!((m.gs_base_writes, m.gs_base_mismatches), (3, 1));
        assert_eq!(m.read(IA32_KERNEL_GS_BASE), Some(WRMSR_FIRST_VALUE + 1));
        assert!(m.write(IA32_SYSENTER_ESP, 7));
        assert_eq!(m.read(IA32_SYSENTER_ESP), Some(7));
        assert_eq!(m.gs_base_writes, 3, "only IA32_KERNEL_GS_BASE is checked");
    }
}
