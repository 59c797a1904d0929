//! The `bochs` engine's runner: L1 on Debian's Bochs 2.7, where it uses its hardware VMX
//! backend on Bochs' emulated VMX (EPT, VMCS shadowing, preemption timer), with no L0 at
//! all (docs: DESIGN.md "The bochs engine", HOST-NOTES.md "Bochs").
//!
//! * [`image`]: L1's memory, built as the soft engine builds it, cut into RAM images.
//! * [`rom`]: the reset ROM that takes the CPU from reset to 64-bit mode and L1's entry.
//! * [`config`]: Bochs' CPU models (which have EPT), the bochsrc, the run directory.
//! * [`parse`]: Bochs' stdout (L1's port-0xE9 lines, [`nestbench_abi::e9`]) to events.
//! * [`run`]: Bochs in a network namespace of its own, with a time budget, to a
//!   [`RunReport`](crate::events::RunReport) of the soft engine's shape plus a
//!   [`BochsSection`].

pub mod config;
pub mod image;
pub mod parse;
pub mod rom;
pub mod run;

pub use config::{CPU_MODELS, CpuModel, DEFAULT_MODEL, cpu_model};
pub use run::{BochsConfig, BochsError, run};

/// What the Bochs engine adds to the run report (`"bochs"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BochsSection {
    /// The CPU model.
    pub model: String,
    /// The VMX features of the full set this model lacks (see [`CpuModel::lacks`]).
    pub lacks: Vec<&'static str>,
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output_after_end: Vec<String>,
    /// The run directory, when it was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
}
