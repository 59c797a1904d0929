//! The boot information block L0 writes at [`crate::layout::BOOT_INFO`] (address in RDI at
//! L1's entry point).

/// "NBBOOT01" as a little-endian u64.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"NBBOOT01");

abi_enum! {
    /// What L1 should do after it has set itself up. Unknown values make it report and
    /// exit with status [`EXIT_BAD_BOOT_INFO`].
    pub enum Scenario: u32 {
        /// Probe the CPU, send a [`crate::report::ProbeReport`], then run the payload of
        /// [`BootInfo::payload`] if there is one, and exit.
        Probe = 0,
        /// Probe, then touch an unmapped linear address: exercises L1's exception reporting
        /// (a #PF that L1 reports through the Exception hypercall).
        PageFault = 1,
        /// Must-fail: a VMLAUNCH with a pin-based control bit set that the capability MSR
        /// does not allow (SDM 27.2.1.1): VMfailValid 7.
        FailControl = 10,
        /// Must-fail: host CR4 without PAE in a 64-bit host (SDM 27.2.2): VMfailValid 8.
        FailHostState = 11,
        /// Must-fail: guest RFLAGS with reserved bit 1 clear (SDM 27.3.1.4): VM exit
        /// 33 | 1 << 31, qualification 0.
        FailGuestState = 12,
        /// Must-fail: VMRESUME of a VMCS that was never launched: VMfailValid 5.
        FailResumeBeforeLaunch = 13,
        /// Must-fail: VMLAUNCH of a launched VMCS (after one successful entry): VMfailValid 4.
        FailLaunchLaunched = 14,
        /// Must-fail: VMPTRLD of an address that is not 4 KiB-aligned: VMfailValid 9.
        FailVmptrldUnaligned = 15,
        /// Must-fail: VMPTRLD of a VMCS with the wrong revision identifier: VMfailValid 11.
        FailRevision = 16,
        /// Must-fail: VMWRITE to a read-only field (exit reason): VMfailValid 13.
        FailWriteReadOnly = 17,
        /// A VM-entry conformance case ([`crate::vmentry::Case`] at
        /// [`crate::vmentry::CASE_GPA`]): one verdict.
        Vmentry = 20,
        /// Print L1's baseline VMCS for the VM-entry cases (every field of
        /// [`crate::vmcs::ALL`]: `vmcs <encoding> <value>` console lines), then exit.
        VmentryBaseline = 21,
    }
}

/// Exit status L1 uses when the boot information is not what it was built for.
pub const EXIT_BAD_BOOT_INFO: u64 = 0xB0;

/// Boot information. Integer-only, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`crate::ABI_VERSION`] of the L0 that wrote this.
    pub abi_version: u32,
    /// A [`Scenario`] value.
    pub scenario: u32,
    /// Bytes of guest memory, starting at guest-physical 0.
    pub mem_size: u64,
    /// Bytes identity-mapped by the boot page tables.
    pub identity_map_size: u64,
    /// Exit tracing: the ring capacity (records, a power of two) L1 should register with
    /// [`crate::hypercall::Call::TraceRing`], at most what its ring holds; 0: no tracing.
    pub trace_capacity: u32,
    /// Reserved, zero.
    pub reserved0: u32,
    /// Reserved, zero.
    pub reserved: [u64; 3],
    /// The L2 payload to run, if any.
    pub payload: crate::payload::PayloadInfo,
}

const _: () = assert!(size_of::<BootInfo>() == 64 + size_of::<crate::payload::PayloadInfo>());

// SAFETY: `BootInfo` is `#[repr(C)]`, integers only, and the assertion of its size next to
// this implementation rules out padding.
unsafe impl crate::Pod for BootInfo {}
