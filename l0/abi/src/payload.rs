//! L2 payloads: how L0 hands a payload to L1, how a payload talks to L1, and what L1 reports.
//!
//! * **Image.** A payload is a static ELF linked at [`L2_IMAGE_BASE`] (an L2-physical =
//!   L2-linear address). L0 copies its loadable bytes, flat from [`L2_IMAGE_BASE`], into L1
//!   memory at [`STAGING_GPA`] and describes it in [`PayloadInfo`] (in
//!   [`crate::boot::BootInfo`]). L1 copies the image page by page onto scattered L1 pages and
//!   maps them with EPT12 at their L2 addresses: L2-physical pages never sit at the same L1
//!   address (not an identity map).
//! * **L2's address space** (built by L1): code at [`L2_IMAGE_BASE`], stack below
//!   [`L2_STACK_TOP`], the [`PayloadResults`] page at [`L2_RESULTS_GPA`], L2's own page
//!   tables, GDT and TSS (the TSS with an all-zero I/O bitmap: CPL 3 port I/O on the
//!   development hosts is checked against it, docs/kvm-exits.md row 3d), all identity-mapped
//!   in L2.
//! * **Protocol.** The payload does its work (the exiting instruction, N times, on
//!   [`PAYLOAD_PORT`] where it does port I/O), writes [`PayloadResults`], and ends with
//!   `out DONE_PORT, eax` (EAX = status). L1 treats that I/O exit as the end of the payload,
//!   not as a measured exit.

/// Where payload images are linked (L2-physical = L2-linear).
pub const L2_IMAGE_BASE: u64 = 0x40_0000;
/// Largest payload image.
pub const L2_IMAGE_MAX: u64 = 0x10_0000;
/// Top of L2's stack (the stack is the 16 KiB below it).
pub const L2_STACK_TOP: u64 = 0x3F_0000;
/// L2's results page.
pub const L2_RESULTS_GPA: u64 = 0x3F_F000;
/// Where L0 stages the payload image in L1 memory.
pub const STAGING_GPA: u64 = 0x100_0000;
/// The port payloads do their measured I/O on (below 0x340, so it needs no I/O-bitmap
/// room even with a minimal TSS).
pub const PAYLOAD_PORT: u16 = 0x00E0;
/// The port a payload writes its status to when it is done.
pub const DONE_PORT: u16 = 0x00E4;
/// The value L1 returns for `in` from [`PAYLOAD_PORT`] (the `inl` payload checks it).
pub const IN_VALUE: u32 = 0x4E42_4C31; // "NBL1"

const _: () = assert!(L2_STACK_TOP <= L2_RESULTS_GPA && L2_RESULTS_GPA + 4096 <= L2_IMAGE_BASE);
const _: () = assert!(STAGING_GPA >= crate::layout::L1_IMAGE_BASE + 0x80_0000, "room for the L1 image");

/// Which privilege level a payload runs at.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpl {
    /// CPL 0 (needed for HLT, RDMSR/WRMSR).
    Kernel = 0,
    /// CPL 3 with IOPL 3 (port I/O; native on the development hosts).
    User = 3,
}

/// What L0 tells L1 about the payload to run (part of the boot info). Integer-only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadInfo {
    /// 0 when there is no payload (L1 only probes).
    pub present: u32,
    /// CPL to run at: 0 or 3 ([`Cpl`]).
    pub cpl: u32,
    /// Bytes staged at [`STAGING_GPA`] (a multiple of 4 KiB).
    pub size: u64,
    /// Entry point (an L2 address inside the image).
    pub entry: u64,
    /// Iterations the payload should do (passed to it in RDI).
    pub iterations: u64,
    /// Payload-specific argument (RSI).
    pub arg: u64,
    /// The payload's name, NUL-padded ASCII.
    pub name: [u8; 16],
}

const _: () = assert!(size_of::<PayloadInfo>() == 56);

/// Buckets of the per-iteration latency histogram: bucket `b` counts iterations of
/// `[2^b, 2^(b+1))` cycles (bucket 0 also counts 0 and 1).
pub const HIST_BUCKETS: usize = 40;

/// "NBRESULT".
pub const RESULTS_MAGIC: u64 = u64::from_le_bytes(*b"NBRESULT");

/// What a payload measured, in its results page. Integer-only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadResults {
    /// [`RESULTS_MAGIC`] once written.
    pub magic: u64,
    /// Iterations done.
    pub iterations: u64,
    /// Sum of the per-iteration TSC deltas (LFENCE; RDTSC; exiting instruction; LFENCE;
    /// RDTSC).
    pub total_cycles: u64,
    /// Smallest per-iteration delta.
    pub min_cycles: u64,
    /// Largest per-iteration delta.
    pub max_cycles: u64,
    /// Payload-specific check failures (0 = every check passed).
    pub failures: u64,
    /// Per-iteration deltas, log2 buckets.
    pub hist: [u64; HIST_BUCKETS],
}

const _: () = assert!(size_of::<PayloadResults>() == 8 * (6 + HIST_BUCKETS));
impl crate::Pod for PayloadResults {}

/// The histogram bucket of a cycle count.
#[must_use]
pub const fn bucket(cycles: u64) -> usize {
    let b = if cycles < 2 { 0 } else { 63 - cycles.leading_zeros() as usize };
    if b < HIST_BUCKETS { b } else { HIST_BUCKETS - 1 }
}

/// One L2 exit as L1 saw it (from its VMCS), for the tests and the conformance check.
/// Integer-only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitRecord {
    /// Exit reason (full 32-bit field).
    pub reason: u32,
    /// VM-exit instruction length.
    pub insn_len: u32,
    /// Exit qualification.
    pub qualification: u64,
    /// Guest RIP at the exit, as an offset from [`L2_IMAGE_BASE`].
    pub rip_offset: u64,
    /// VM-exit instruction information.
    pub insn_info: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Guest-linear address (string I/O).
    pub guest_linear: u64,
}

const _: () = assert!(size_of::<ExitRecord>() == 40);
impl crate::Pod for ExitRecord {}

/// Most exit records L1 keeps per run (the first ones; the count of all is reported).
pub const MAX_EXIT_RECORDS: usize = 64;

/// L1's report on a payload run (Report kind `PayloadRun`). Integer-only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadReport {
    /// The payload's status from DONE_PORT (0 = ok).
    pub status: u64,
    /// L2 exits L1 handled, by basic reason 0..=79 (index = reason).
    pub exits_by_reason: [u32; 80],
    /// How many exit records follow in `records` (at most [`MAX_EXIT_RECORDS`]).
    pub records: u32,
    /// L1's VMREAD/VMWRITE instructions executed while handling exits (the hardware and
    /// soft backends both count; shadowed ones included).
    pub vmx_accesses: u32,
    /// The payload's results page as L1 read it.
    pub results: PayloadResults,
    /// The first exit records.
    pub exit_records: [ExitRecord; MAX_EXIT_RECORDS],
}

impl crate::Pod for PayloadReport {}
const _: () = assert!(size_of::<PayloadReport>() == 8 + 320 + 8 + size_of::<PayloadResults>() + 40 * MAX_EXIT_RECORDS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_log2() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 1);
        assert_eq!(bucket(1024), 10);
        assert_eq!(bucket(u64::MAX), HIST_BUCKETS - 1);
    }
}
