//! nestbench's L2 payloads: small `no_std` programs that L1 runs with VMX, each with a
//! [`Manifest`] (which exits it causes, how many, at which CPL, whether the `soft` engine
//! can run it).
//!
//! The payload contract (image base, ports, results page, entry registers) is
//! [`nestbench_abi::payload`]. This crate is
//!
//! * a host-buildable, host-tested library: the manifests ([`all`], [`find`]), the shared
//!   runtime ([`rt`]: entry, timing, results, done) and one small module per payload;
//! * with the `bare-metal` feature, for `x86_64-unknown-none`, one static image per payload
//!   (`src/bin/<name>.rs`, named like its manifest), linked at
//!   [`L2_IMAGE_BASE`](nestbench_abi::payload::L2_IMAGE_BASE) by `link.ld`. `l0`'s build
//!   script builds them; `l0::images::payload_elf(name)` finds them.
//!
//! | payload | CPL | measures |
//! |---|---|---|
//! | [`outl`] | 3 | `out 0xE0, eax`: one I/O-instruction exit per iteration |
//! | [`inl`] | 3 | `in eax, 0xE0`: one I/O-instruction exit per iteration, checks L1's value |
//! | [`io_encodings`] | 3 | every I/O encoding of `IO_ENCODINGS` once (L1 checks the qualifications) |
//! | [`hlt`] | 0 | `hlt`: one HLT exit per iteration |
//! | [`compute`] | 3 | a fixed integer loop without exits: the no-exit baseline |
//! | [`cpuid`] | 3 | `cpuid` (EAX = 0): one CPUID exit per iteration (not on `soft`) |
//! | [`vmcall`] | 3 | `vmcall`: one VMCALL exit per iteration, checks L1's RAX (not on `soft`) |
//! | [`ept_touch`] | 3 | first read of N fresh pages: one EPT violation per page, L1 maps it |
//! | [`ept_fill`] | 3 | first read of N pages EPT12 maps: no VM exit (L0-only fills on `soft`) |
//! | [`ept_ro`] | 3 | write to N pages EPT12 maps read-only: one EPT violation per page, L1 grants write |
//! | [`ept_misconfig`] | 3 | read through a leaf with a reserved memory type: one EPT misconfiguration, L1 repairs it |
//! | [`mmio`] | 3 | write and read back a device register L1 emulates behind an unmapped page: two EPT violations |
//! | [`ept_remap`] | 3 | L1 remaps an EPT12 leaf and INVEPTs (single/all alternating): one I/O exit each, L2 sees the new page |
//! | [`pte_remap`] | 3 | L1 points an L2 PTE at another page between entries: one I/O exit each, L2 sees the new page |
//! | [`ept_fetch`] | 3 | call code on N fresh pages: one EPT violation (fetch) per page, L1 maps it |
//! | [`rdmsr`] | 0 | `rdmsr` of IA32_SYSENTER_ESP: one RDMSR exit per iteration, checks L1's value |
//! | [`preempt_timer`] | 3 | a compute loop L1 preempts with the VMX-preemption timer: one exit (52) per arm, N arms |
//! | [`irq_window`] | 3 | interrupt-window exiting with IF = 1: one exit (7) before the first instruction per entry, N entries |
//! | [`wrmsr`] | 0 | `wrmsr` of IA32_KERNEL_GS_BASE: one WRMSR exit per iteration, L1 checks the value |
//! | [`inject`] | 0 | `out 0xE0, eax`, then L1 injects #UD, #GP, an external interrupt or an NMI into L2's own IDT: one I/O exit per iteration |
//! | [`vmmcall`] | 3 | `vmmcall` (AMD): one VMMCALL intercept per iteration, checks L1's RAX (SVM only) |
//! | [`vmrun_bad_asid`], [`vmrun_bad_efer`] | 0 | a VMRUN of a VMCB that breaks one consistency check: one VMEXIT_INVALID (SVM only) |
//! | [`cr3`] | 0 | `mov rcx, cr3; mov cr3, rcx` with CR3-load/store exiting: two control-register-access exits per iteration, L1 emulates them |
//!
//! Every payload times each iteration kvm-unit-tests style, `lfence; rdtsc; <insn>; lfence;
//! rdtsc` (never CPUID, which exits), and ends with `out DONE_PORT, eax`: that last exit is
//! the end of the run, not a measured exit, and is not in any manifest's exit counts.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

use nestbench_abi::payload::Cpl;
use nestbench_abi::vmx::ExitReason;

pub mod rt;

pub mod compute;
pub mod cpuid;
pub mod cr3;
pub mod ept_fetch;
pub mod ept_fill;
pub mod ept_misconfig;
pub mod ept_remap;
pub mod ept_ro;
pub mod ept_touch;
pub mod hlt;
pub mod inject;
pub mod inl;
pub mod io_encodings;
pub mod irq_window;
pub mod mmio;
pub mod outl;
pub mod preempt_timer;
pub mod pte_remap;
pub mod rdmsr;
pub mod vmcall;
pub mod vmmcall;
pub mod vmrun_bad;
pub mod vmrun_bad_asid;
pub mod vmrun_bad_efer;
pub mod wrmsr;

/// Whether the `soft` engine (L0's userspace nested VMX) can run a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// It runs, and every exit it causes is one the engine reflects.
    Runs,
    /// It is skipped on this engine, for this reason.
    Unsupported {
        /// Why (shown by `nestbench payloads` and recorded with results).
        reason: &'static str,
    },
}

/// Whether a payload has a single-level twin: the same operation run directly under L0
/// (no L1), so that nested / single-level compares like with like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Twin {
    /// The twin performs the payload's operation and exits the same way, to L0.
    Same,
    /// No twin, for this reason (shown by `nestbench payloads`, recorded by the bench).
    None {
        /// Why.
        reason: &'static str,
    },
}

/// Which virtualization extensions L1 runs a payload on (the payload binaries are shared
/// where the instruction is the same: an EPT payload is the NPT payload on SVM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendors {
    /// VMX and SVM.
    Both,
    /// VMX only, for this reason on SVM.
    VmxOnly {
        /// Why not on SVM.
        reason: &'static str,
    },
    /// SVM only, for this reason on VMX.
    SvmOnly {
        /// Why not on VMX.
        reason: &'static str,
    },
}

impl Vendors {
    /// `Err(why not)` where it does not run on SVM.
    pub const fn svm(self) -> Result<(), &'static str> {
        match self {
            Self::VmxOnly { reason } => Err(reason),
            _ => Ok(()),
        }
    }

    /// `Err(why not)` where it does not run on VMX.
    pub const fn vmx(self) -> Result<(), &'static str> {
        match self {
            Self::SvmOnly { reason } => Err(reason),
            _ => Ok(()),
        }
    }
}

/// What a payload is and what running it must cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The payload's name: its image is the binary of the same name, and it goes into
    /// [`PayloadInfo::name`](nestbench_abi::payload::PayloadInfo) (at most 16 ASCII bytes).
    pub name: &'static str,
    /// One line: what it measures.
    pub description: &'static str,
    /// The CPL L1 runs it at.
    pub cpl: Cpl,
    /// The L2 exits L1 handles per iteration (basic reason, count), besides the final
    /// `out DONE_PORT` exit. A payload with [`fixed_iterations`](Self::fixed_iterations)
    /// counts its whole run as one iteration.
    pub exits_per_iteration: &'static [(ExitReason, u32)],
    /// Iterations to ask for when the user does not say (RDI at entry).
    pub default_iterations: u64,
    /// `Some(n)` when the payload ignores the requested iterations and always does `n`
    /// (`io_encodings` runs its table once).
    pub fixed_iterations: Option<u64>,
    /// Whether the `soft` engine can run it.
    pub soft_engine: Support,
    /// Whether L1 runs it on VMX, SVM or both.
    pub vendors: Vendors,
    /// Whether it has a single-level twin.
    pub single_level: Twin,
    /// What L1 sets up before it launches it (EPT pool, MMIO device, timer, remaps, ...):
    /// handed to L1 in the boot info, so that L1 never branches on the payload's name.
    pub setup: nestbench_abi::payload::Setup,
}

impl Manifest {
    /// The iterations the payload does when asked for `requested`.
    #[must_use]
    pub const fn iterations(&self, requested: u64) -> u64 {
        match self.fixed_iterations {
            Some(n) => n,
            None => requested,
        }
    }

    /// The L2 exits of basic reason `reason` that a run asked for `requested` iterations
    /// causes (the final `out DONE_PORT` not included).
    #[must_use]
    pub fn expected_exits(&self, reason: ExitReason, requested: u64) -> u64 {
        let per: u64 = self.exits_per_iteration.iter().filter(|(r, _)| *r == reason).map(|(_, n)| u64::from(*n)).sum();
        per.saturating_mul(self.iterations(requested))
    }
}

static ALL: [Manifest; 24] = [
    outl::MANIFEST,
    inl::MANIFEST,
    io_encodings::MANIFEST,
    hlt::MANIFEST,
    compute::MANIFEST,
    cpuid::MANIFEST,
    vmcall::MANIFEST,
    rdmsr::MANIFEST,
    wrmsr::MANIFEST,
    ept_touch::MANIFEST,
    ept_fill::MANIFEST,
    ept_ro::MANIFEST,
    ept_misconfig::MANIFEST,
    mmio::MANIFEST,
    preempt_timer::MANIFEST,
    ept_remap::MANIFEST,
    pte_remap::MANIFEST,
    ept_fetch::MANIFEST,
    irq_window::MANIFEST,
    inject::MANIFEST,
    cr3::MANIFEST,
    vmmcall::MANIFEST,
    vmrun_bad_asid::MANIFEST,
    vmrun_bad_efer::MANIFEST,
];

/// Every payload, in a stable order.
#[must_use]
pub fn all() -> &'static [Manifest] {
    &ALL
}

/// The SVM names of the EPT payloads, which run unchanged on NPT (the same binaries: L1's
/// nested paging is EPT12 on VMX, NPT12 on SVM): `npt_touch` is `ept_touch`, and so on.
/// Results keep the payload's own name.
pub const NPT_ALIASES: [(&str, &str); 5] = [
    ("npt_touch", "ept_touch"),
    ("npt_fill", "ept_fill"),
    ("npt_ro", "ept_ro"),
    ("npt_remap", "ept_remap"),
    ("npt_fetch", "ept_fetch"),
];

/// The payload called `name` (or an [`NPT_ALIASES`] name of one).
#[must_use]
pub fn find(name: &str) -> Option<&'static Manifest> {
    let name = NPT_ALIASES.iter().find(|(alias, _)| *alias == name).map_or(name, |(_, real)| real);
    ALL.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npt_names_find_the_ept_payloads() {
        for (alias, real) in NPT_ALIASES {
            assert_eq!(find(alias).map(|m| m.name), Some(real));
            assert!(find(real).is_some_and(|m| m.vendors.svm().is_ok()), "{real} runs on SVM");
        }
        assert!(find("npt_misconfig").is_none());
    }
    use nestbench_abi::payload::{IO_ENCODINGS, PayloadInfo};

    /// `[[bin]]` names in this crate's Cargo.toml, each with its `required-features`.
    fn cargo_bins() -> Vec<(String, bool)> {
        let toml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
        let mut bins = Vec::new();
        for block in toml.split("[[bin]]").skip(1) {
            let block = block.split("\n[").next().unwrap();
            let field = |key: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(key).map(|v| v.trim().trim_start_matches('=').trim().to_owned()))
            };
            let name = field("name").expect("a [[bin]] has a name").trim_matches('"').to_owned();
            let bare = field("required-features").is_some_and(|f| f == "[\"bare-metal\"]");
            bins.push((name, bare));
        }
        bins
    }

    #[test]
    fn setups_are_consistent() {
        use nestbench_abi::payload::{PoolPages, setup};
        let pool_flags = setup::EPT_ON_DEMAND
            | setup::EPT_ON_DEMAND_IF_ARG_0
            | setup::EPT_READ_ONLY
            | setup::EPT_MISCONFIG
            | setup::EPT_FETCH_CODE
            | setup::REMAP_EPT
            | setup::REMAP_PTE;
        for m in all() {
            let s = m.setup;
            if !s.has(setup::EPT_POOL) {
                assert_eq!(s.flags & pool_flags, 0, "{}: pool settings without a pool", m.name);
                assert_eq!(s.pool_pages, PoolPages::Iterations, "{}", m.name);
            }
            assert!(!(s.has(setup::REMAP_EPT) && s.has(setup::REMAP_PTE)), "{}: one remap", m.name);
            // A payload that needs its EPT12 pool takes EPT exits or fills.
            let ept = m
                .exits_per_iteration
                .iter()
                .any(|(r, _)| matches!(r, ExitReason::EptViolation | ExitReason::EptMisconfiguration));
            if ept {
                assert!(
                    s.has(setup::EPT_POOL) || s.has(setup::MMIO_DEVICE),
                    "{}: EPT exits with nothing behind them",
                    m.name
                );
            }
        }
    }

    #[test]
    fn names_are_unique_short_ascii_and_findable() {
        let max = PayloadInfo::default().name.len();
        assert_eq!(max, 16);
        for (i, m) in all().iter().enumerate() {
            assert!(!m.name.is_empty() && m.name.len() <= max, "{}: name must fit PayloadInfo::name", m.name);
            assert!(m.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{}", m.name);
            assert!(all()[..i].iter().all(|o| o.name != m.name), "{} is listed twice", m.name);
            assert_eq!(find(m.name), Some(m));
            assert!(!m.description.is_empty());
        }
        assert_eq!(find("nope"), None);
    }

    #[test]
    fn every_manifest_has_a_bare_metal_image_and_every_image_a_manifest() {
        let bins = cargo_bins();
        for m in all() {
            let bin = bins.iter().find(|(n, _)| n == m.name);
            assert_eq!(
                bin.map(|(_, bare)| *bare),
                Some(true),
                "{}: no [[bin]] with required-features bare-metal",
                m.name
            );
            let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin").join(format!("{}.rs", m.name));
            let src = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
            assert!(src.contains(&format!("payload_main!({})", m.name)), "{}: the image runs another payload", m.name);
        }
        for (name, _) in &bins {
            assert!(find(name).is_some(), "image {name} has no manifest");
        }
    }

    #[test]
    fn cpl_and_exits_are_sane() {
        for m in all() {
            assert!(m.default_iterations > 0, "{}", m.name);
            assert_ne!(m.fixed_iterations, Some(0), "{}", m.name);
            for (i, (reason, n)) in m.exits_per_iteration.iter().enumerate() {
                assert!(*n > 0, "{}: {reason:?} listed with 0 exits", m.name);
                assert!(m.exits_per_iteration[..i].iter().all(|(r, _)| r != reason), "{}: {reason:?} twice", m.name);
                // HLT, RDMSR, WRMSR and MOV CR are #GP at CPL 3: they never exit from there.
                if matches!(
                    reason,
                    ExitReason::Hlt | ExitReason::Rdmsr | ExitReason::Wrmsr | ExitReason::ControlRegisterAccess
                ) {
                    assert_eq!(m.cpl, Cpl::Kernel, "{}: {reason:?} needs CPL 0", m.name);
                }
            }
            // CPL 0 is emulated instruction by instruction on the development hosts: only
            // what needs it runs there (HLT, RDMSR/WRMSR, MOV CR, or loading its own IDT).
            if m.cpl == Cpl::Kernel && !m.setup.has(nestbench_abi::payload::setup::INJECT_EVENTS) {
                assert!(
                    m.exits_per_iteration.iter().any(|(r, _)| matches!(
                        r,
                        ExitReason::Hlt | ExitReason::Rdmsr | ExitReason::Wrmsr | ExitReason::ControlRegisterAccess
                    )),
                    "{}: runs at CPL 0 without needing to",
                    m.name
                );
            }
            if let Support::Unsupported { reason } = m.soft_engine {
                assert!(!reason.is_empty(), "{}", m.name);
            }
        }
    }

    #[test]
    fn exit_counts() {
        let m = |n| find(n).unwrap();
        assert_eq!(m("outl").expected_exits(ExitReason::IoInstruction, 1000), 1000);
        assert_eq!(m("inl").expected_exits(ExitReason::IoInstruction, 7), 7);
        assert_eq!(m("hlt").expected_exits(ExitReason::Hlt, 5), 5);
        assert_eq!(m("hlt").expected_exits(ExitReason::IoInstruction, 5), 0);
        assert!(m("compute").exits_per_iteration.is_empty());
        let table: u64 = IO_ENCODINGS.iter().map(|c| u64::from(c.exits)).sum();
        assert_eq!(m("io_encodings").expected_exits(ExitReason::IoInstruction, 1000), table);
        assert_eq!(m("io_encodings").iterations(1000), 1);
        assert_eq!(m("cpuid").exits_per_iteration, [(ExitReason::Cpuid, 1)]);
        assert_eq!(m("cpuid").expected_exits(ExitReason::Cpuid, 9), 9);
        assert_eq!(m("vmcall").exits_per_iteration, [(ExitReason::Vmcall, 1)]);
        assert_eq!(m("vmcall").expected_exits(ExitReason::Vmcall, 9), 9);
        assert_eq!(m("vmcall").expected_exits(ExitReason::IoInstruction, 9), 0);
        assert_eq!(m("ept_touch").expected_exits(ExitReason::EptViolation, 50), 50);
        assert!(m("ept_fill").exits_per_iteration.is_empty());
        assert_eq!(ept_touch::pages(10_000), 10_000);
        assert_eq!(ept_touch::pages(u64::MAX), nestbench_abi::payload::EPT_DATA_PAGES);
        assert_eq!(ept_touch::pool_pages(10_000), nestbench_abi::payload::EPT_POOL_PAGES);
        assert_eq!(m("rdmsr").exits_per_iteration, [(ExitReason::Rdmsr, 1)]);
        assert_eq!(m("wrmsr").exits_per_iteration, [(ExitReason::Wrmsr, 1)]);
        assert_eq!(m("wrmsr").expected_exits(ExitReason::Wrmsr, 9), 9);
        assert_eq!(m("ept_misconfig").expected_exits(ExitReason::EptMisconfiguration, 50), 1);
        assert_eq!(ept_misconfig::page(5), 1);
        assert_eq!(m("mmio").expected_exits(ExitReason::EptViolation, 10), 20);
        assert_eq!((ept_remap::invept_type(0), ept_remap::invept_type(1), ept_remap::invept_type(2)), (1, 2, 1));
    }

    #[test]
    fn order_is_stable_and_only_exits_the_host_kvm_hides_are_unsupported_on_soft() {
        let names: Vec<&str> = all().iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                "outl",
                "inl",
                "io_encodings",
                "hlt",
                "compute",
                "cpuid",
                "vmcall",
                "rdmsr",
                "wrmsr",
                "ept_touch",
                "ept_fill",
                "ept_ro",
                "ept_misconfig",
                "mmio",
                "preempt_timer",
                "ept_remap",
                "pte_remap",
                "ept_fetch",
                "irq_window",
                "inject",
                "cr3",
                "vmmcall",
                "vmrun_bad_asid",
                "vmrun_bad_efer"
            ]
        );
        for m in all() {
            let hidden = m.exits_per_iteration.iter().any(|(r, _)| matches!(r, ExitReason::Cpuid | ExitReason::Vmcall));
            // The soft engine is VMX: an SVM-only payload is unsupported there too.
            let unsupported = hidden || m.vendors.vmx().is_err();
            assert_eq!(matches!(m.soft_engine, Support::Unsupported { .. }), unsupported, "{}", m.name);
        }
    }
}
