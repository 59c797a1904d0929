//! What the Bochs engine adds to the run report (`"bochs"`).

use serde::{Deserialize, Serialize};

/// What the Bochs engine adds to the run report (`"bochs"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BochsSection {
    /// The CPU model.
    pub model: String,
    /// The VMX features of the full set this model lacks (see [`CpuModel::lacks`]).
    pub lacks: Vec<String>,
    /// Instructions Bochs executed until the emulation stopped (`Next at t=N`; the same
    /// run to run). `None` when Bochs never said.
    pub instructions: Option<u64>,
    /// Bochs' exit status (0 after the magic breakpoint and `quit`).
    pub exit_status: Option<i32>,
    /// The signal that ended Bochs, if one did.
    pub signal: Option<i32>,
    /// Whether the runner stopped Bochs at the time budget.
    pub timed_out: bool,
    /// Failed VM entries, VMX instruction failures, errors and panics from Bochs' log.
    pub log_lines: Vec<String>,
    /// What Bochs itself said (its exit message; debugger lines not understood).
    pub messages: Vec<String>,
    /// L1 output after its exit or exception line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_after_end: Vec<String>,
    /// The run directory, when it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
}
