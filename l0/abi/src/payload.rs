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

/// The value L1 leaves in RAX after handling a VMCALL exit (the `vmcall` payload checks it).
pub const VMCALL_RESULT: u64 = u64::from_le_bytes(*b"NBVMCALL");

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
    /// The payload's name, NUL-padded ASCII (for reports; L1 never branches on it).
    pub name: [u8; 16],
    /// What L1 sets up before the launch: [`Setup::flags`].
    pub setup: u32,
    /// How many pages the EPT pool has: [`Setup::pool_pages`], encoded by
    /// [`PoolPages::raw`].
    pub pool_pages: u32,
}

const _: () = assert!(size_of::<PayloadInfo>() == 64);

/// What L1 must set up for a payload before it launches it: part of the payload's manifest,
/// handed to L1 in [`PayloadInfo`], so that L1 never recognises a payload by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// [`setup`] bits.
    pub flags: u32,
    /// The EPT pool's size (with [`setup::EPT_POOL`]).
    pub pool_pages: PoolPages,
}

impl Setup {
    /// Nothing beyond L2's address space and VMCS.
    pub const NONE: Self = Self { flags: 0, pool_pages: PoolPages::Iterations };

    /// These `flags`, with a pool of one page per iteration.
    #[must_use]
    pub const fn flags(flags: u32) -> Self {
        Self { flags, pool_pages: PoolPages::Iterations }
    }

    /// Whether every bit of `flag` is set.
    #[must_use]
    pub const fn has(self, flag: u32) -> bool {
        self.flags & flag == flag
    }

    /// From [`PayloadInfo`]'s fields (another level's values: any raw value decodes).
    #[must_use]
    pub const fn from_raw(flags: u32, pool_pages: u32) -> Self {
        Self { flags, pool_pages: PoolPages::from_raw(pool_pages) }
    }
}

/// The bits of [`Setup::flags`].
pub mod setup {
    /// A pool of seeded L1 pages backs the data region at [`super::EPT_DATA_GPA`] in EPT12.
    pub const EPT_POOL: u32 = 1 << 0;
    /// The pool's pages are mapped when L2 first touches them (an EPT violation L1 resolves),
    /// not before the launch.
    pub const EPT_ON_DEMAND: u32 = 1 << 1;
    /// [`EPT_ON_DEMAND`] only when the payload's argument is 0 (`ept_fetch`).
    pub const EPT_ON_DEMAND_IF_ARG_0: u32 = 1 << 2;
    /// The pool's pages are mapped read-only.
    pub const EPT_READ_ONLY: u32 = 1 << 3;
    /// The leaf of page `arg % EPT_MISCONFIG_PAGES` gets a reserved memory type: an EPT
    /// misconfiguration that L1 repairs.
    pub const EPT_MISCONFIG: u32 = 1 << 4;
    /// Every pool page holds a function L2 calls: instruction fetches through EPT12.
    pub const EPT_FETCH_CODE: u32 = 1 << 5;
    /// L1 emulates the MMIO device at [`super::MMIO_GPA`].
    pub const MMIO_DEVICE: u32 = 1 << 6;
    /// L1 remaps data page 0 between two L1 frames in EPT12 (with INVEPT).
    pub const REMAP_EPT: u32 = 1 << 7;
    /// L1 swaps the EPT12 leaf under L2's PTE for data page 0.
    pub const REMAP_PTE: u32 = 1 << 8;
    /// The VMX-preemption timer, armed once per iteration.
    pub const PREEMPTION_TIMER: u32 = 1 << 9;
    /// Interrupt-window exiting with L2's RFLAGS.IF set.
    pub const INTERRUPT_WINDOW: u32 = 1 << 10;
    /// L1 checks each I/O exit's qualification and instruction information against the
    /// payload's table ([`super::IO_ENCODINGS`]).
    pub const IO_CHECK: u32 = 1 << 11;
    /// On each `out PAYLOAD_PORT`, L1 injects [`super::INJECTED_EVENTS`]`[EAX % 4]` into L2
    /// at the next entry (SDM 27.6); L2's own IDT handles it.
    pub const INJECT_EVENTS: u32 = 1 << 12;
    /// L1 sets "CR3-load exiting" and "CR3-store exiting" (CR3-target count 0) and emulates
    /// L2's MOV to and from CR3 on its guest-state CR3 (`cr3`).
    pub const CR3_EXITING: u32 = 1 << 13;
    /// SVM: L1 gives the VMCB guest ASID 0, which fails VMRUN's consistency checks (APM
    /// Vol. 2, 15.5.1: "ASID is equal to zero"): the first VMRUN must exit with
    /// VMEXIT_INVALID, which L1 records and reports instead of running L2.
    pub const VMRUN_BAD_ASID: u32 = 1 << 14;
    /// SVM: L1 clears EFER.SVME in the VMCB's save area (15.5.1: "EFER.SVME is zero"): as
    /// [`VMRUN_BAD_ASID`].
    pub const VMRUN_BAD_EFER: u32 = 1 << 15;
}

/// The events L1 injects for [`setup::INJECT_EVENTS`], by EAX of L2's `out` modulo 4: #UD,
/// #GP with error code [`INJECTED_ERROR_CODE`], external interrupt [`INJECTED_VECTOR`], NMI.
pub const INJECTED_EVENTS: [crate::vmx::intr::Event; 4] = [
    crate::vmx::intr::Event::HardwareException { vector: 6, error_code: None },
    crate::vmx::intr::Event::HardwareException { vector: 13, error_code: Some(INJECTED_ERROR_CODE) },
    crate::vmx::intr::Event::ExternalInterrupt(INJECTED_VECTOR),
    crate::vmx::intr::Event::Nmi,
];
/// The #GP error code of [`INJECTED_EVENTS`] (a selector error code: index 3, GDT).
pub const INJECTED_ERROR_CODE: u32 = 0x18;
/// The external interrupt's vector in [`INJECTED_EVENTS`] (the first one not an exception).
pub const INJECTED_VECTOR: u8 = 0x20;

/// How many pages the EPT pool has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolPages {
    /// One per iteration (pages past [`EPT_POOL_PAGES`] alias the pool's).
    Iterations,
    /// One per iteration, at most [`EPT_POOL_PAGES`] (payloads that write to or put code in
    /// their pages: no aliasing).
    IterationsUpToPool,
    /// This many.
    Fixed(u32),
}

impl PoolPages {
    /// [`PayloadInfo::pool_pages`]: 0 for `Iterations`, `u32::MAX` for `IterationsUpToPool`,
    /// `n` for `Fixed(n)` (`n` is neither).
    #[must_use]
    pub const fn raw(self) -> u32 {
        match self {
            Self::Iterations => 0,
            Self::IterationsUpToPool => u32::MAX,
            Self::Fixed(n) => n,
        }
    }

    /// The inverse of [`raw`](Self::raw).
    #[must_use]
    pub const fn from_raw(v: u32) -> Self {
        match v {
            0 => Self::Iterations,
            u32::MAX => Self::IterationsUpToPool,
            n => Self::Fixed(n),
        }
    }

    /// The pages for a run of `iterations`.
    #[must_use]
    pub const fn pages(self, iterations: u64) -> u64 {
        match self {
            Self::Iterations => iterations,
            Self::IterationsUpToPool => {
                if iterations < EPT_POOL_PAGES {
                    iterations
                } else {
                    EPT_POOL_PAGES
                }
            }
            Self::Fixed(n) => n as u64,
        }
    }
}

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
// SAFETY: `PayloadResults` is `#[repr(C)]`, integers only, and the assertion of its size next to
// this implementation rules out padding.
unsafe impl crate::Pod for PayloadResults {}

/// The histogram bucket of a cycle count.
#[must_use]
pub const fn bucket(cycles: u64) -> usize {
    let b = if cycles < 2 { 0 } else { 63 - cycles.leading_zeros() as usize };
    if b < HIST_BUCKETS { b } else { HIST_BUCKETS - 1 }
}

abi_enum! {
    /// The virtualization extension L1 runs L2 with ([`PayloadReport::vendor`]).
    pub enum Vendor: u32 {
        /// Intel VMX (hardware, Bochs, or the soft engine's userspace VMX).
        Vmx = 0,
        /// AMD SVM (APM Vol. 2, chapter 15).
        Svm = 1,
    }
}

/// One L2 exit as L1 saw it (from its VMCS or VMCB), for the tests and the conformance
/// check. Integer-only.
///
/// On VMX the fields are the VMCS's exit information. On SVM (APM 15.7): `reason` is
/// EXITCODE (low 32 bits), `insn_len` nRIP - RIP for the instruction intercepts (0 for the
/// others), `qualification` EXITINFO1, `guest_linear` EXITINFO2, `insn_info` EXITINTINFO's
/// low 32 bits.
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
// SAFETY: `ExitRecord` is `#[repr(C)]`, integers only, and the assertion of its size next to
// this implementation rules out padding.
unsafe impl crate::Pod for ExitRecord {}

/// Most exit records L1 keeps per run (the first ones; the count of all is reported).
pub const MAX_EXIT_RECORDS: usize = 64;

/// L1's report on a payload run (Report kind `PayloadRun`). Integer-only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadReport {
    /// The payload's status from DONE_PORT (0 = ok).
    pub status: u64,
    /// L2 exits L1 handled, by kind: the index is the VMX basic exit reason of the kind
    /// (0..=79) on every vendor; on SVM the kind's exit code is
    /// [`crate::svm::code_of_kind`].
    pub exits_by_reason: [u32; 80],
    /// How many exit records follow in `records` (at most [`MAX_EXIT_RECORDS`]).
    pub records: u32,
    /// L1's VMREAD/VMWRITE instructions executed while handling exits (the hardware and
    /// soft backends both count; shadowed ones included).
    pub vmx_accesses: u32,
    /// Which virtualization extension L1 ran L2 with ([`Vendor`]): it says how to read the
    /// exit records and name the counts.
    pub vendor: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The payload's results page as L1 read it.
    pub results: PayloadResults,
    /// The first exit records.
    pub exit_records: [ExitRecord; MAX_EXIT_RECORDS],
}

// SAFETY: `PayloadReport` is `#[repr(C)]`, integers only, and the assertion of its size next to
// this implementation rules out padding.
unsafe impl crate::Pod for PayloadReport {}
const _: () = assert!(size_of::<PayloadReport>() == 8 + 320 + 16 + size_of::<PayloadResults>() + 40 * MAX_EXIT_RECORDS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_pool_pages_round_trip_and_count() {
        for p in [PoolPages::Iterations, PoolPages::IterationsUpToPool, PoolPages::Fixed(1), PoolPages::Fixed(4)] {
            assert_eq!(PoolPages::from_raw(p.raw()), p);
        }
        assert_eq!(PoolPages::Iterations.pages(2000), 2000);
        assert_eq!(PoolPages::IterationsUpToPool.pages(2000), EPT_POOL_PAGES);
        assert_eq!(PoolPages::IterationsUpToPool.pages(3), 3);
        assert_eq!(PoolPages::Fixed(2).pages(2000), 2);
        let s = Setup::from_raw(setup::EPT_POOL | setup::EPT_READ_ONLY, u32::MAX);
        assert!(
            s.has(setup::EPT_POOL) && s.has(setup::EPT_POOL | setup::EPT_READ_ONLY) && !s.has(setup::EPT_ON_DEMAND)
        );
        assert_eq!(s.pool_pages, PoolPages::IterationsUpToPool);
    }

    #[test]
    fn histogram_buckets_are_log2() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 1);
        assert_eq!(bucket(1024), 10);
        assert_eq!(bucket(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn data_pages_beyond_the_pool_alias_its_pages() {
        assert_eq!(ept_alias(EPT_DATA_GPA + 8), EPT_DATA_GPA + 8);
        assert_eq!(ept_alias(EPT_DATA_GPA + (EPT_POOL_PAGES - 1) * 4096), EPT_DATA_GPA + (EPT_POOL_PAGES - 1) * 4096);
        assert_eq!(ept_alias(EPT_DATA_GPA + EPT_POOL_PAGES * 4096 + 0xFF8), EPT_DATA_GPA + 0xFF8);
        assert_eq!(ept_alias(EPT_DATA_GPA + (EPT_DATA_PAGES - 1) * 4096), EPT_DATA_GPA + (EPT_POOL_PAGES - 1) * 4096);
    }
}

/// One instruction of the `io_encodings` payload: the bytes the payload executes, and what
/// a VM exit for it must report (SDM 28.2.1, Table 28-5; instruction length 28.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoCase {
    /// The instruction's encoding, exactly as the payload executes it.
    pub bytes: &'static [u8],
    /// Access size in bytes.
    pub size: u8,
    /// IN/INS (true) or OUT/OUTS.
    pub is_in: bool,
    /// INS/OUTS.
    pub string: bool,
    /// REP prefix.
    pub rep: bool,
    /// Port from an imm8 (true) or DX.
    pub immediate: bool,
    /// VM exits it causes: 1, or RCX for REP forms (L1 emulates one iteration per exit).
    pub exits: u8,
}

/// RCX the `io_encodings` payload sets before each REP form.
pub const IO_REP_COUNT: u8 = 2;

const fn io(bytes: &'static [u8], size: u8, is_in: bool, string: bool, rep: bool, immediate: bool) -> IoCase {
    IoCase { bytes, size, is_in, string, rep, immediate, exits: if rep { IO_REP_COUNT } else { 1 } }
}

/// The `io_encodings` payload, in order: every I/O encoding once, on [`PAYLOAD_PORT`] (DX
/// holds it for the DX forms; RSI/RDI point at a buffer for the string forms). Immediate
/// ports are the byte 0xE0 = `PAYLOAD_PORT`.
pub const IO_ENCODINGS: [IoCase; 18] = [
    io(&[0xE6, 0xE0], 1, false, false, false, true),       // out 0xE0, al
    io(&[0x66, 0xE7, 0xE0], 2, false, false, false, true), // out 0xE0, ax
    io(&[0xE7, 0xE0], 4, false, false, false, true),       // out 0xE0, eax
    io(&[0xEE], 1, false, false, false, false),            // out dx, al
    io(&[0x66, 0xEF], 2, false, false, false, false),      // out dx, ax
    io(&[0xEF], 4, false, false, false, false),            // out dx, eax
    io(&[0xE4, 0xE0], 1, true, false, false, true),        // in al, 0xE0
    io(&[0x66, 0xE5, 0xE0], 2, true, false, false, true),  // in ax, 0xE0
    io(&[0xE5, 0xE0], 4, true, false, false, true),        // in eax, 0xE0
    io(&[0xEC], 1, true, false, false, false),             // in al, dx
    io(&[0x66, 0xED], 2, true, false, false, false),       // in ax, dx
    io(&[0xED], 4, true, false, false, false),             // in eax, dx
    io(&[0x6E], 1, false, true, false, false),             // outsb
    io(&[0x66, 0x6F], 2, false, true, false, false),       // outsw
    io(&[0x6F], 4, false, true, false, false),             // outsd
    io(&[0xF3, 0x6E], 1, false, true, true, false),        // rep outsb (RCX = 2)
    io(&[0x6C], 1, true, true, false, false),              // insb
    io(&[0xF3, 0x6C], 1, true, true, true, false),         // rep insb (RCX = 2)
];

const _: () = assert!(PAYLOAD_PORT == 0xE0, "IO_ENCODINGS encodes the immediate port 0xE0");

/// The EPT payloads' data region (`ept_touch`, `ept_fill`): L2-physical = L2-linear pages
/// from here, [`EPT_DATA_PAGES`] of them (1 GiB), which L1's L2 page tables always map
/// (present, writable, user) whether or not EPT12 maps them: the first 2 MiB with 4 KiB
/// pages, the rest with 2 MiB pages.
pub const EPT_DATA_GPA: u64 = 0x60_0000;
/// Pages in the EPT data region (the most pages `ept_touch` / `ept_fill` touch): 1 GiB.
pub const EPT_DATA_PAGES: u64 = 1 << 18;
/// Distinct L1 pages L1 seeds for the data region (its pool). L2 data page `i` is backed by
/// pool page `i % EPT_POOL_PAGES` (aliasing in EPT12 is legal), so 1 GiB of L2 memory needs
/// 2 MiB of L1 memory; a data page carries the pattern of [`ept_alias`] of its address. The
/// payloads that write to or put code in their pages (`ept_ro`, `ept_fetch`) use at most
/// this many pages, so none of their pages alias.
pub const EPT_POOL_PAGES: u64 = 512;

const _: () = assert!(L2_IMAGE_BASE + L2_IMAGE_MAX <= EPT_DATA_GPA && EPT_DATA_GPA % (2 << 20) == 0);
const _: () = assert!(EPT_POOL_PAGES <= EPT_DATA_PAGES && EPT_DATA_PAGES % 512 == 0);

/// The data page whose pool page backs data page `gpa` (page-aligned or not; the offset is
/// kept): `gpa` itself for the first [`EPT_POOL_PAGES`] pages.
#[must_use]
pub const fn ept_alias(gpa: u64) -> u64 {
    if gpa < EPT_DATA_GPA {
        return gpa;
    }
    let page = (gpa - EPT_DATA_GPA) / 4096 % EPT_POOL_PAGES;
    EPT_DATA_GPA + page * 4096 + gpa % 4096
}

/// The u64 that L1 seeds at byte offset `off` (0 or 0xFF8) of the L1 pool page it maps at
/// the EPT data page `gpa` (L2-physical, one of the first [`EPT_POOL_PAGES`]): the payload
/// reads it back (through [`ept_alias`] for the pages beyond the pool), which proves the
/// translation L2 went through ends on that very page.
#[must_use]
pub const fn ept_pattern(gpa: u64, off: u64) -> u64 {
    0x4E42_4550_0000_0000 ^ (gpa + off).rotate_left(17)
}

/// Offsets of the seeded words in an EPT data page.
pub const EPT_PATTERN_OFFSETS: [u64; 2] = [0, 0xFF8];

/// `ept_misconfig`: the data pages L1 maps in EPT12 before the launch (like `ept_fill`); the
/// leaf of page `arg % EPT_MISCONFIG_PAGES` gets the reserved memory type
/// [`EPT_MISCONFIG_MEMTYPE`], so the payload's first read of it is an EPT misconfiguration
/// (reason 49, SDM 29.3.3.1), which L1 repairs (memory type write-back) before resuming.
pub const EPT_MISCONFIG_PAGES: u64 = 4;
/// The memory type L1 writes into that leaf: 2 is reserved (SDM 29.3.3.1: "bits 5:3 ... value
/// 2, 3, or 7").
pub const EPT_MISCONFIG_MEMTYPE: u64 = 2;

/// `mmio`: the L2-physical (= L2-linear) address of the device register L1 emulates. L2's
/// paging maps it (page 0 of the EPT data region); EPT12 never does, so every access is an
/// EPT violation (reason 48) that L1 emulates and skips.
pub const MMIO_GPA: u64 = EPT_DATA_GPA;
/// The register convention of the `mmio` payload: its only accesses are the 7-byte
/// `mov dword ptr [MMIO_GPA], eax` (`89 04 25 disp32`) and `mov eax, dword ptr [MMIO_GPA]`
/// (`8B 04 25 disp32`): the data is always EAX, the qualification (SDM Table 28-7 bit 0
/// read, bit 1 write) says which, and L1 advances RIP by this length (the VM-exit
/// instruction length is undefined for EPT violations, SDM 28.2.4).
pub const MMIO_INSN_LEN: u32 = 7;
/// What the `mmio` payload writes in iteration `i`.
#[must_use]
pub const fn mmio_write_value(i: u64) -> u32 {
    0x4D4D_0000 ^ (i as u32).wrapping_mul(0x9E37_79B9)
}
/// What L1's device returns for a read after `written` was the last value written: not the
/// memory contents (there is no memory behind it), so the payload's check proves L1 answered.
#[must_use]
pub const fn mmio_read_value(written: u32) -> u32 {
    written ^ 0x4E42_4D49 // "IMBN"
}

const _: () = assert!(MMIO_GPA < 1 << 31, "an absolute disp32 address");

/// `preempt_timer`: where in L2's results page (offset from [`L2_RESULTS_GPA`], past
/// [`PayloadResults`]) L1 writes the number of VMX-preemption-timer exits so far (a `u64`);
/// the payload polls it and stops once it reaches its iteration count.
pub const PREEMPT_MAILBOX_OFFSET: u64 = 0x800;
/// `preempt_timer`: where the payload writes its own progress (compute chunks done, a `u64`).
pub const PREEMPT_PROGRESS_OFFSET: u64 = 0x808;
/// `preempt_timer`: set in the payload argument to give the timer value (bits 31:0) that L1
/// arms with; without it L1 uses [`PREEMPT_DEFAULT_VALUE`]. `1 << 32` alone is value 0.
pub const PREEMPT_VALUE_GIVEN: u64 = 1 << 32;
/// `preempt_timer`: the default VMX-preemption timer value (2^14 timer ticks: at the soft
/// engine's rate 5, 2^19 TSC ticks of L2 time, about 0.2 ms at 2.6 GHz).
pub const PREEMPT_DEFAULT_VALUE: u32 = 1 << 14;

const _: () = assert!(PREEMPT_MAILBOX_OFFSET as usize >= size_of::<PayloadResults>());

/// `ept_fetch`: where L1 puts a function in each data page (after the first seeded word):
/// `mov eax, imm32; ret` ([`ept_fetch_code`]), which the payload calls.
pub const EPT_FETCH_CODE_OFFSET: u64 = 16;
/// The value the function in data page `gpa` returns: it proves the fetch reached that page.
#[must_use]
pub const fn ept_fetch_value(gpa: u64) -> u32 {
    ept_pattern(gpa, EPT_FETCH_CODE_OFFSET) as u32
}
/// The function's bytes: `B8 imm32` (mov eax, imm32), `C3` (ret).
#[must_use]
pub const fn ept_fetch_code(gpa: u64) -> [u8; 6] {
    let v = ept_fetch_value(gpa).to_le_bytes();
    [0xB8, v[0], v[1], v[2], v[3], 0xC3]
}
