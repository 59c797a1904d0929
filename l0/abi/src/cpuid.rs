//! Hypervisor CPUID leaves published by nestbench's L0.
//!
//! Intel and AMD reserve leaves 0x4000_0000-0x4000_00FF for hypervisors; CPUID.1:ECX bit 31
//! ("hypervisor present") tells the guest to look there. L0 replaces KVM's own leaves in that
//! range with these, so L1 never mistakes its L0 for a KVM paravirtual host.

/// Signature leaf: EAX = highest hypervisor leaf, EBX:ECX:EDX = [`SIGNATURE`].
pub const LEAF_SIGNATURE: u32 = 0x4000_0000;
/// Information leaf: EAX = [`crate::ABI_VERSION`], EBX = feature bits (`FEATURE_*`),
/// ECX = the hypercall I/O port, EDX = 0.
pub const LEAF_INFO: u32 = 0x4000_0001;
/// The highest leaf L0 publishes in the hypervisor range.
pub const LEAF_MAX: u32 = LEAF_INFO;

/// "NESTBENCH-L0", as EBX, ECX, EDX of [`LEAF_SIGNATURE`] (12 ASCII bytes, little-endian
/// words, in the style of "KVMKVMKVM\0\0\0").
pub const SIGNATURE: [u8; 12] = *b"NESTBENCH-L0";

/// Feature bit: the hypercall port ([`crate::hypercall::PORT`]) is served.
pub const FEATURE_HYPERCALL: u32 = 1 << 0;
/// Feature bit: L0 provides VMX to L1 in userspace (the `soft` engine). Not set by the
/// foundation L0; L1 falls back to reporting that no VMX is available.
pub const FEATURE_SOFT_VMX: u32 = 1 << 1;

/// CPUID.1:ECX bit 5: VMX (Intel SDM Vol. 2A, CPUID, Table 3-10).
pub const CPUID1_ECX_VMX: u32 = 1 << 5;
/// CPUID.1:ECX bit 31: a hypervisor is present (reserved for hypervisor use).
pub const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.8000_0001H:ECX bit 2: SVM (AMD APM Vol. 3, CPUID Fn8000_0001_ECX).
pub const CPUID_EXT1_ECX_SVM: u32 = 1 << 2;

/// Split [`SIGNATURE`] into the (EBX, ECX, EDX) words of [`LEAF_SIGNATURE`].
#[must_use]
pub const fn signature_words() -> (u32, u32, u32) {
    let s = SIGNATURE;
    (
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
    )
}

/// Rebuild the 12 signature bytes from the (EBX, ECX, EDX) words of a CPUID leaf.
#[must_use]
pub fn signature_from_words(ebx: u32, ecx: u32, edx: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0..4].copy_from_slice(&ebx.to_le_bytes());
    out[4..8].copy_from_slice(&ecx.to_le_bytes());
    out[8..12].copy_from_slice(&edx.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trips_through_registers() {
        let (b, c, d) = signature_words();
        assert_eq!(&signature_from_words(b, c, d), b"NESTBENCH-L0");
    }
}
