//! What the kvm engine adds to the run report (docs/kvm-engine.md): the VMX capability MSRs
//! L1 sees, the attribution from KVM's statistics and the counts from its nested tracepoints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One VMX capability MSR as L1 sees it on the kvm engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmVmxMsr {
    /// The MSR index.
    pub index: u32,
    /// What L1's vCPU reports after the pass-through (KVM_GET_MSRS on the vCPU).
    pub value: u64,
    /// Whether L0 wrote it (KVM restores it) or KVM derived it.
    pub written: bool,
    /// What /dev/kvm reported (KVM_GET_MSRS on the system fd), where it differs from `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_value: Option<u64>,
}

/// The figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KvmAttribution {
    /// L2 exits L1's handlers counted (its payload report): the reflected ones.
    pub reflected_exits: u64,
    /// KVM's `exits` delta: every exit KVM handled during the run.
    pub kvm_exits: Option<u64>,
    /// KVM's `nested_run` delta: L2 entries.
    pub nested_runs: Option<u64>,
    /// Exits that reached L0's userspace from L1 (KVM_RUN returns without the guest-mode flag).
    pub userspace_exits_l1: u64,
    /// Exits that reached L0's userspace while L2 ran (KVM_RUN_X86_GUEST_MODE; kernels
    /// before the flag report 0).
    pub userspace_exits_l2: u64,
    /// KVM exits per reflected exit: what one L2 exit multiplies into at L0 (the reflected
    /// exit itself, L1's traps, KVM's own work), boot and setup included.
    pub kvm_exits_per_reflected_exit: Option<f64>,
}

/// Counts from one trace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NestedCounts {
    /// `kvm_exit` lines.
    pub kvm_exit: u64,
    /// `kvm_nested_vmexit` lines: exits while L2 ran.
    pub nested_vmexit: u64,
    /// `kvm_nested_vmexit_inject` lines: exits reflected to L1.
    pub nested_vmexit_inject: u64,
    /// `kvm_nested_vmenter` lines: entries to L2.
    pub nested_vmenter: u64,
    /// kvm_exit reasons of L1 (kvm_exit lines not matched by a nested_vmexit), by name.
    pub l1_exits_by_reason: BTreeMap<String, u64>,
    /// nested_vmexit reasons, by name.
    pub l2_exits_by_reason: BTreeMap<String, u64>,
    /// nested_vmexit_inject reasons, by name.
    pub reflected_by_reason: BTreeMap<String, u64>,
    /// Lines of other events or not in the expected format (kept count, never guessed at).
    pub other_lines: u64,
    /// What `kvm_nested_vmenter_failed` said, in order (at most 16): the consistency checks
    /// KVM failed L1's entries on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vmenter_failed: Vec<String>,
}

impl NestedCounts {
    /// L2 exits KVM handled without L1.
    #[must_use]
    pub fn l0_handled(&self) -> u64 {
        self.nested_vmexit.saturating_sub(self.nested_vmexit_inject)
    }

    /// L1's own exits (each one a trap to L0).
    #[must_use]
    pub fn l1_exits(&self) -> u64 {
        self.kvm_exit.saturating_sub(self.nested_vmexit)
    }

    /// L1 exits per reflected exit.
    #[must_use]
    pub fn l1_exits_per_reflected(&self) -> Option<f64> {
        (self.nested_vmexit_inject > 0).then(|| self.l1_exits() as f64 / self.nested_vmexit_inject as f64)
    }
}
