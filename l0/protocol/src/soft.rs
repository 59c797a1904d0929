//! What the soft engine adds to the run report (docs/soft-engine.md "Counting").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Counters of one run, per docs/soft-engine.md "Counting".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SoftStats {
    /// Whether VMREAD/VMWRITE are shadowed.
    pub vmcs_shadowing: bool,
    /// `Call::Vmx` hypercalls per operation.
    pub vmx_hypercalls: BTreeMap<String, u64>,
    /// Capability-MSR reads L0 answered.
    pub capability_msr_reads: u64,
    /// VM entries that reached L2.
    pub entries: u64,
    /// VM-entry attempts that failed, by outcome (`vmfail_invalid`, `vmfail_valid(7)`,
    /// `entry_failure(33)`).
    pub entry_failures: BTreeMap<String, u64>,
    /// L2 exits reflected to L1, by exit reason.
    pub reflected_exits: BTreeMap<String, u64>,
    /// Their total.
    pub reflected_total: u64,
    /// L2 exits L0 handled without L1 (none in part 1 but kicks).
    pub l0_only_exits: u64,
    /// KVM_RUN returns of VM2.
    pub l2_kvm_exits: u64,
    /// What this host's KVM does at an OUT exit (measured at start): RIP already past it
    /// (kvm_pvm) or still at it with the completion pending (upstream KVM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_rip_past: Option<bool>,
    /// Reflected exits that L1 resumed from (the ones the trap counts are per).
    pub reflected_resumed: u64,
    /// Exits of L1's VM between those reflected exits and the next VM entry, the entry's
    /// own doorbell included.
    pub l1_traps: u64,
    /// Of those, VMREAD/VMWRITE hypercalls (the rest are the doorbells).
    pub l1_vmx_traps: u64,
    /// VMREAD/VMWRITE hypercalls after the first VM entry (L1's exit handling; compare
    /// with the VMREAD/VMWRITE executions L1 counts itself).
    pub vmx_rw_after_first_entry: u64,
    /// Memslots VM2 has (after the last exit).
    pub memslots: u64,
    /// EPT12 shadow (re)starts: the first entry, an EPTP change, INVEPT.
    pub ept_shadow_builds: u64,
    /// VM2's EPT12 shadow: lazy fills (L0-only exits, also in `l0_only_exits`), premapped
    /// leaves, coalescing, evictions, and the memslot limit.
    pub ept: EptStats,
    /// Time inside VM2's KVM_RUN, ns.
    pub l2_ns: u64,
    /// Time inside L1's KVM_RUN between a reflected exit and the next entry, ns.
    pub l1_ns: u64,
    /// Time in L0 between a reflected exit and the next entry, outside any KVM_RUN, ns.
    pub l0_ns: u64,
    /// The VMX-preemption timer: arms, exits, the overshoot of its kicks ([`super::timer`]).
    pub preemption_timer: TimerStats,
}

impl SoftStats {
    /// L1 traps per reflected exit (1 is the minimum: the VMRESUME doorbell).
    #[must_use]
    pub fn l1_traps_per_reflected_exit(&self) -> Option<f64> {
        (self.reflected_resumed > 0).then(|| self.l1_traps as f64 / self.reflected_resumed as f64)
    }
}

/// Preemption-timer figures of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimerStats {
    /// The rate: the timer counts at TSC >> `rate` (IA32_VMX_MISC[4:0]).
    pub rate: u32,
    /// The TSC frequency used to turn TSC ticks into host-timer time, kHz (0 until known).
    pub tsc_khz: u64,
    /// VM entries with "activate VMX-preemption timer" set.
    pub arms: u64,
    /// Preemption-timer exits reflected (basic reason 52).
    pub exits: u64,
    /// Of those, entries with timer value 0: the exit came before L2's first instruction,
    /// VM2 was not run.
    pub zero_value_exits: u64,
    /// Host-timer kicks that landed after their arm was over (L0-only returns).
    pub stale_kicks: u64,
    /// Overshoot of the timer exits that ran L2 (L2 time at the exit minus the deadline),
    /// TSC ticks: smallest.
    pub overshoot_min_tsc: Option<i64>,
    /// Largest.
    pub overshoot_max_tsc: Option<i64>,
    /// Mean.
    pub overshoot_mean_tsc: Option<f64>,
    /// Sum (for the mean).
    #[serde(skip)]
    overshoot_sum: i128,
    /// Count (for the mean).
    #[serde(skip)]
    overshoot_n: u64,
}

impl TimerStats {
    /// Nothing counted yet, for a timer that counts at TSC >> `rate`.
    #[must_use]
    pub fn at_rate(rate: u32) -> Self {
        Self { rate, ..Self::default() }
    }

    /// Count one timer exit that came `ticks` TSC ticks after its deadline.
    pub fn overshoot(&mut self, ticks: i64) {
        self.overshoot_min_tsc = Some(self.overshoot_min_tsc.map_or(ticks, |m| m.min(ticks)));
        self.overshoot_max_tsc = Some(self.overshoot_max_tsc.map_or(ticks, |m| m.max(ticks)));
        self.overshoot_sum += i128::from(ticks);
        self.overshoot_n += 1;
        self.overshoot_mean_tsc = Some(self.overshoot_sum as f64 / self.overshoot_n as f64);
    }
}

/// Counters of VM2's EPT12 shadow (docs/soft-engine.md "Counting"), with the memslot limits
/// that bound what this engine can say about EPT (`nestbench payloads` lists them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EptStats {
    /// The most memslots VM2 keeps: [`DEFAULT_MEMSLOT_BUDGET`] (or what L0 was told, up to
    /// KVM's limit).
    pub memslot_limit: u64,
    /// KVM's memslot limit for VM2 (KVM_CAP_NR_MEMSLOTS).
    pub kvm_memslot_limit: u64,
    /// Memslots VM2 has now.
    pub memslots: u64,
    /// The most memslots VM2 had at once.
    pub memslots_peak: u64,
    /// Lazy fills: first touches of a page EPT12 maps (L0-only exits).
    pub fills: u64,
    /// Time L0 spent in those fills (walk, KVM_SET_USER_MEMORY_REGION, completing the
    /// access), ns.
    pub fill_ns: u64,
    /// Leaves mapped by the premapping at VM entry (paging structures, GDT, IDT, TSS, RIP,
    /// RSP pages).
    pub premapped: u64,
    /// Fills that extended a neighbouring slot instead of adding one.
    pub coalesced: u64,
    /// Slots evicted at the memslot limit.
    pub evictions: u64,
    /// Times every slot was dropped (INVEPT, a new EPTP).
    pub resets: u64,
    /// VM entries at which an L2 paging-structure page had changed since the last exit (L1
    /// edited L2's page tables: stores KVM cannot see, [`L2Vm::resync_tables`]).
    pub table_resyncs: u64,
    /// Slots deleted and re-created by those resyncs.
    pub table_resync_slots: u64,
    /// KVM_SET_USER_MEMORY_REGION calls (creates and deletes).
    pub slot_ioctls: u64,
    /// [`MEMSLOT_LIMITS`]: what these figures cannot show.
    pub known_limits: Vec<String>,
}
