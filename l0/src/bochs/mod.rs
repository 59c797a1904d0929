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

pub use nestbench_protocol::bochs::BochsSection;
