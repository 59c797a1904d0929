//! KVM binary statistics (KVM_GET_STATS_FD) as a run report carries them: deltas over the run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a statistic behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatKind {
    /// A counter: the delta over a run is meaningful.
    Cumulative,
    /// A current value.
    Instant,
    /// A high-water mark.
    Peak,
    /// A histogram (linear or logarithmic buckets).
    Histogram,
}

/// The change of every statistic between two snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsDelta {
    /// Counters (and histogram totals): after minus before.
    pub counters: BTreeMap<String, u64>,
    /// Instant and peak values: the value after.
    pub gauges: BTreeMap<String, u64>,
}
