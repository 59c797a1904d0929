//! Who paid for L2's exits on the kvm engine, from what L0 can see without tracepoints:
//! KVM's statistics deltas of L1's vCPU (`exits`: every exit KVM handled, L1's and L2's;
//! `nested_run`: L1's VMLAUNCH/VMRESUME that entered L2), the L2 exits L1 says it handled,
//! and the exits that reached L0's userspace, tagged with KVM_RUN_X86_GUEST_MODE.

pub use nestbench_protocol::kvm_engine::KvmAttribution;
use std::collections::BTreeMap;

/// Attribute a run: `counters` are the vCPU's KVM statistics deltas, `reflected` the exits
/// L1 handled, `userspace` the KVM_RUN returns as (from L1, from L2).
#[must_use]
pub fn attribute(counters: &BTreeMap<String, u64>, reflected: u64, userspace: (u64, u64)) -> KvmAttribution {
    let kvm_exits = counters.get("exits").copied();
    KvmAttribution {
        reflected_exits: reflected,
        kvm_exits,
        nested_runs: counters.get("nested_run").copied(),
        userspace_exits_l1: userspace.0,
        userspace_exits_l2: userspace.1,
        kvm_exits_per_reflected_exit: kvm_exits.filter(|_| reflected > 0).map(|e| e as f64 / reflected as f64),
    }
}
