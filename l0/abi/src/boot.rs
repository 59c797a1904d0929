//! The boot information block L0 writes at [`crate::layout::BOOT_INFO`] (address in RDI at
//! L1's entry point).

/// "NBBOOT01" as a little-endian u64.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"NBBOOT01");

abi_enum! {
    /// What L1 should do after it has set itself up. The foundation L1 knows these; unknown
    /// values make it report and exit with status [`EXIT_BAD_BOOT_INFO`].
    pub enum Scenario: u32 {
        /// Probe the CPU, send a [`crate::report::ProbeReport`], exit 0.
        Probe = 0,
        /// Probe, then touch an unmapped linear address: exercises L1's exception reporting
        /// (a #PF that L1 reports through the Exception hypercall).
        PageFault = 1,
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
    /// Reserved, zero.
    pub reserved: [u64; 4],
    /// The L2 payload to run, if any.
    pub payload: crate::payload::PayloadInfo,
}

const _: () = assert!(size_of::<BootInfo>() == 64 + size_of::<crate::payload::PayloadInfo>());

impl crate::Pod for BootInfo {}
