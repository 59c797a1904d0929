//! The result of a single-level run (the payload as a plain KVM guest: the twin of a nested
//! run).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The result of a single-level run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SingleLevelRun {
    /// The payload's status from DONE_PORT.
    pub status: u64,
    /// KVM exits by kind.
    pub kvm_exits: BTreeMap<String, u64>,
    /// The payload's results page (`None` if it never wrote it).
    pub results: Option<crate::events::PayloadResults>,
    /// Wall time of the run, ns.
    pub wall_ns: u64,
    /// How it ended if not through DONE_PORT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}
