//! The host facts `doctor` shows and every result carries: the CPU, the kernel, KVM's offer,
//! the CPL 0 probe and what this host's KVM leaves behind at each kind of exit (measured by
//! l0's `soft::host_exits` probes; the soft engine normalises by it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the host's KVM offers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmFacts {
    /// The device path.
    pub path: PathBuf,
    /// Whether it opened and answered like KVM.
    pub usable: bool,
    /// Why not, when not usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// KVM_GET_API_VERSION.
    pub api_version: Option<i32>,
    /// CPUID.1:ECX.VMX in KVM_GET_SUPPORTED_CPUID: KVM offers VMX to guests.
    pub offers_vmx: bool,
    /// CPUID.8000_0001:ECX.SVM in KVM_GET_SUPPORTED_CPUID.
    pub offers_svm: bool,
    /// KVM_CAP_NESTED_STATE (0 = no nested state to save).
    pub nested_state: i32,
    /// KVM_CAP_SYNC_REGS.
    pub sync_regs: bool,
    /// KVM_CAP_X86_USER_SPACE_MSR.
    pub user_space_msr: bool,
    /// KVM_CAP_NR_MEMSLOTS.
    pub nr_memslots: usize,
}

/// The result of the CPL 0 emulation probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpl0Probe {
    /// Instructions the probe guest executed at CPL 0.
    pub guest_instructions: u64,
    /// The vCPU's `insn_emulation` statistic over the probe (`None`: not offered).
    pub insn_emulation: Option<u64>,
    /// Whether CPL 0 code is emulated instruction by instruction.
    pub emulated: bool,
    /// Wall time of the probe run in nanoseconds.
    pub wall_ns: u64,
}

/// Everything `doctor` reports about the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    /// /proc/cpuinfo "model name".
    pub cpu_model: String,
    /// /proc/cpuinfo "vendor_id".
    pub cpu_vendor: String,
    /// /proc/cpuinfo "microcode" (absent in many VMs).
    pub microcode: Option<String>,
    /// Logical CPUs.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// Loaded KVM modules and their parameters (/sys/module/NAME/parameters).
    pub kvm_modules: BTreeMap<String, BTreeMap<String, String>>,
    /// KVM's offer.
    pub kvm: KvmFacts,
    /// The CPL 0 probe (`None` when KVM is unusable or the probe failed; see
    /// `cpl0_probe_error`).
    pub cpl0: Option<Cpl0Probe>,
    /// Why the probe did not run or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpl0_probe_error: Option<String>,
    /// What this host's KVM leaves behind at an OUT exit, measured by running one
    /// (`soft::host_exits`); the soft engine normalises by it.
    #[serde(default)]
    pub exit_semantics: Option<HostExits>,
    /// Why the exit-semantics probe failed, when it did.
    #[serde(default)]
    pub exit_semantics_error: Option<String>,
    /// External tools.
    pub tools: BTreeMap<String, Tool>,
}

/// An external program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    /// Where it is, if found on PATH.
    pub path: Option<PathBuf>,
    /// Support files it needs that are missing.
    pub missing: Vec<PathBuf>,
}

impl Tool {
    /// Found, with everything it needs.
    #[must_use]
    pub fn available(&self) -> bool {
        self.path.is_some() && self.missing.is_empty()
    }
}

/// RCX of the REP string probes.
pub const REP_COUNT: u64 = 4;

/// Where RIP is when KVM_RUN returns an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rip {
    /// At the instruction: whatever it still has to do (write a destination, advance RIP)
    /// is a completion the next KVM_RUN runs.
    At,
    /// Past it: KVM retired the instruction before the exit.
    Past,
}

/// The first exit of a REP string I/O instruction with RCX = 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepString {
    /// Elements the exit carries (`kvm_run.io.count`).
    pub per_exit: u32,
    /// Where RIP is at that exit.
    pub rip: Rip,
    /// RCX at the exit (4 before it): 3 where the exit's element is already counted.
    pub rcx: u64,
}

/// What touching a GPA without memslot does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum NoSlot {
    /// KVM_EXIT_INTERNAL_ERROR, suberror 1 (emulation failure).
    EmulationFailure {
        /// RIP is the fetch target (the jump retired), as a hardware fetch fault leaves it.
        rip_is_target: bool,
        /// The exception KVM queued for the next entry along with the exit (upstream at CPL 0:
        /// #UD, vector 6), if any.
        queued_exception: Option<u8>,
    },
    /// No exit: a #PF in the guest (CR2 = the linear address; here, without an IDT, a triple
    /// fault = KVM_EXIT_SHUTDOWN), RIP at the access (kvm_pvm).
    GuestPageFault,
    /// KVM_EXIT_MMIO read at the paging structure's GPA, not the load's, with the load's
    /// length, RIP at the load (upstream: the walk's fault is handled as MMIO and KVM's
    /// emulator reads the table entry through the exit).
    MmioReadOfTable,
    /// Anything else.
    Other {
        /// What the probe saw.
        seen: String,
    },
}

/// What a kick (a signal to the vCPU thread: the watchdog, the soft engine's preemption
/// timer) out of a guest that does not exit on its own gives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Kick {
    /// KVM_RUN returns EINTR at an instruction boundary of the guest's loop.
    Eintr,
    /// KVM_RUN did not return until the guest's bounded loop ([`KICK_LOOP_TSC`] TSC cycles)
    /// ended and it exited on its own (Bochs-hosted KVM): a guest that never exits would hold the vCPU
    /// thread, and the host, for ever.
    NotKicked,
    /// Anything else.
    Other {
        /// What the probe saw.
        seen: String,
    },
}

/// What each userspace exit of this host's KVM leaves behind, one field per row of
/// docs/kvm-exits.md ("Per host").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostExits {
    /// `out imm8, al` (row 1).
    pub out: Rip,
    /// `outsd` without REP (row 3c).
    pub outs: Rip,
    /// `rep outsb` (row 3a).
    pub rep_outs: RepString,
    /// `in al, imm8` (row 2).
    #[serde(rename = "in")]
    pub r#in: Rip,
    /// `rep insb` (row 3b).
    pub rep_ins: RepString,
    /// `hlt` (row 4).
    pub hlt: Rip,
    /// `rdmsr` / `wrmsr` of a filtered MSR (row 5).
    pub rdmsr: Rip,
    /// See `rdmsr`.
    pub wrmsr: Rip,
    /// A load / store at a GPA without memslot (rows 6, 7).
    pub mmio_read: Rip,
    /// See `mmio_read`.
    pub mmio_write: Rip,
    /// Whether KVM offers KVM_CAP_EXIT_ON_EMULATION_FAILURE, which the soft engine turns on
    /// for VM2 and the fetch probes.
    pub exit_on_emulation_failure: bool,
    /// `jmp` to a GPA without memslot at CPL 0 (row 8).
    pub fetch_no_slot: NoSlot,
    /// The same at CPL 3, where most payloads run.
    pub fetch_no_slot_cpl3: NoSlot,
    /// A load whose page walk reads a page table at a GPA without memslot (row 9).
    pub walk_no_slot: NoSlot,
    /// Row K.
    pub kick: Kick,
    /// Row S: KVM_GUESTDBG_SINGLESTEP gives a KVM_EXIT_DEBUG after one instruction of a CPL-0
    /// guest, RIP past it (the soft engine's CR3-load/store exiting steps VM2). Absent from
    /// results written before the row existed.
    #[serde(default)]
    pub single_step: bool,
}

impl HostExits {
    /// kvm_pvm's semantics (this machine; docs/kvm-exits.md).
    #[must_use]
    pub const fn kvm_pvm() -> Self {
        Self {
            out: Rip::Past,
            outs: Rip::Past,
            rep_outs: RepString { per_exit: 1, rip: Rip::At, rcx: REP_COUNT - 1 },
            r#in: Rip::At,
            rep_ins: RepString { per_exit: REP_COUNT as u32, rip: Rip::At, rcx: REP_COUNT },
            hlt: Rip::Past,
            rdmsr: Rip::At,
            wrmsr: Rip::At,
            mmio_read: Rip::At,
            mmio_write: Rip::Past,
            exit_on_emulation_failure: false,
            fetch_no_slot: NoSlot::EmulationFailure { rip_is_target: true, queued_exception: None },
            fetch_no_slot_cpl3: NoSlot::EmulationFailure { rip_is_target: true, queued_exception: None },
            walk_no_slot: NoSlot::GuestPageFault,
            kick: Kick::Eintr,
            single_step: true,
        }
    }

    /// Upstream KVM's (6.1 and 6.12, Intel and AMD: docs/kvm-exits.md, pinned by
    /// `orchestrator/tests/emulated_hosts.rs`), where the host delivers kicks (QEMU-hosted;
    /// Bochs-hosted KVM does not: [`Kick::NotKicked`]).
    #[must_use]
    pub fn upstream() -> Self {
        Self { out: Rip::At, exit_on_emulation_failure: true, walk_no_slot: NoSlot::MmioReadOfTable, ..Self::kvm_pvm() }
    }

    /// The rows the soft engine cannot normalise on this host, each with what the host does
    /// and what the engine needs. Empty where every exit can be presented as a VM exit. The
    /// kick is not among them: without it only the VMX-preemption timer is refused
    /// ([`HostExits::kicks`]).
    #[must_use]
    pub fn gaps(&self) -> Vec<String> {
        let mut gaps = Vec::new();
        let mut need = |ok: bool, row: &str, seen: String, needs: &str| {
            if !ok {
                gaps.push(format!("{row}: this KVM {seen}; the soft engine needs {needs}"));
            }
        };
        let at = |r: Rip| format!("exits with RIP {}", if r == Rip::At { "at it" } else { "past it" });
        need(
            self.rep_outs.per_exit == 1 && self.rep_outs.rip == Rip::At && self.rep_outs.rcx == REP_COUNT - 1,
            "REP OUTS",
            format!("exits with {:?}", self.rep_outs),
            "one element per exit, RIP at it, RCX counting the exit's element",
        );
        need(self.r#in == Rip::At, "IN", at(self.r#in), "RIP at it");
        need(
            self.rep_ins.rip == Rip::At && self.rep_ins.rcx == REP_COUNT,
            "REP INS",
            format!("exits with {:?}", self.rep_ins),
            "RIP at it with RCX untouched",
        );
        need(self.hlt == Rip::Past, "HLT", at(self.hlt), "RIP past it");
        need(self.rdmsr == Rip::At, "RDMSR", at(self.rdmsr), "RIP at it");
        need(self.wrmsr == Rip::At, "WRMSR", at(self.wrmsr), "RIP at it");
        need(self.mmio_read == Rip::At, "MMIO read", at(self.mmio_read), "RIP at it");
        need(self.mmio_write == Rip::Past, "MMIO write", at(self.mmio_write), "RIP past it");
        for (cpl, row) in [(0, &self.fetch_no_slot), (3, &self.fetch_no_slot_cpl3)] {
            need(
                matches!(row, NoSlot::EmulationFailure { rip_is_target: true, .. }),
                &format!("fetch from a GPA without memslot at CPL {cpl}"),
                format!("gives {row:?}"),
                "an emulation failure at the fetch target",
            );
        }
        need(
            matches!(self.walk_no_slot, NoSlot::GuestPageFault | NoSlot::MmioReadOfTable),
            "page walk through a GPA without memslot",
            format!("gives {:?}", self.walk_no_slot),
            "a #PF in the guest or an MMIO read of the table (it maps L2's paging structures before L2 runs, and \
             refuses the MMIO read of one it missed)",
        );
        gaps
    }
}

impl std::fmt::Display for Rip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if *self == Self::At { "at" } else { "past" })
    }
}

impl std::fmt::Display for NoSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EmulationFailure { rip_is_target, queued_exception } => {
                write!(f, "emulation failure, RIP {}", if *rip_is_target { "at the target" } else { "elsewhere" })?;
                match queued_exception {
                    Some(v) => write!(f, ", vector {v} queued"),
                    None => f.write_str(", nothing queued"),
                }
            }
            Self::GuestPageFault => f.write_str("#PF in the guest"),
            Self::MmioReadOfTable => f.write_str("MMIO read of the table"),
            Self::Other { seen } => f.write_str(seen),
        }
    }
}

/// One line: where RIP is per exit kind, and what the no-memslot cases, a kick and a single
/// step give.
impl std::fmt::Display for HostExits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rep = |r: &RepString| format!("{} per exit, RIP {}, RCX {}", r.per_exit, r.rip, r.rcx);
        write!(
            f,
            "RIP after OUT {}, OUTS {}, IN {}, HLT {}, RDMSR {}, WRMSR {}, MMIO read {}, MMIO write {}; \
             REP OUTS {}; REP INS {}; fetch without memslot: {} (CPL 0), {} (CPL 3){}; walk without memslot: {}; kick: {}; \
             single-step: {}",
            self.out,
            self.outs,
            self.r#in,
            self.hlt,
            self.rdmsr,
            self.wrmsr,
            self.mmio_read,
            self.mmio_write,
            rep(&self.rep_outs),
            rep(&self.rep_ins),
            self.fetch_no_slot,
            self.fetch_no_slot_cpl3,
            if self.exit_on_emulation_failure { " with KVM_CAP_EXIT_ON_EMULATION_FAILURE" } else { "" },
            self.walk_no_slot,
            match &self.kick {
                Kick::Eintr => "EINTR at an instruction boundary",
                Kick::NotKicked => "not delivered while the guest runs",
                Kick::Other { seen } => seen,
            },
            if self.single_step { "a debug exit per instruction" } else { "no debug exit" }
        )
    }
}

impl HostExits {
    /// Whether a kick returns a spinning guest's KVM_RUN: the soft engine's VMX-preemption
    /// timer depends on it.
    #[must_use]
    pub fn kicks(&self) -> bool {
        self.kick == Kick::Eintr
    }

    /// Why the soft engine cannot single-step VM2 here (row S), if it cannot.
    #[must_use]
    pub fn no_single_step(&self) -> Option<&'static str> {
        (!self.single_step).then_some(
            "this host's KVM gives no KVM_EXIT_DEBUG after a single-stepped instruction (KVM_GUESTDBG_SINGLESTEP, \
             measured: docs/kvm-exits.md row S)",
        )
    }
}
