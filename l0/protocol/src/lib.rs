//! The protocol between the orchestrator and l0, defined once (docs/event-stream.md): the
//! run request ([`request::RunRequest`], as `nestbench-l0 run` flags), and every line
//! `nestbench-l0` writes on its stdout ([`events::Event`]: `hello`, L1's reports, notes,
//! trace batches, `end` with the [`events::RunReport`], `error`), the sections of the report
//! each engine adds, and the host facts `doctor` and the emulated hosts' agent report.
//! `nestbench-l0` serialises these types and the orchestrator deserialises the same types, so
//! a field renamed on one side is a compile error on the other, not a `null` at run time.

pub mod bochs;
pub mod events;
pub mod host;
pub mod kvm_engine;
pub mod request;
pub mod single_level;
pub mod soft;
pub mod stats;
pub mod trace;

pub use events::{Engine, Event, Hello, Outcome, RunReport, STREAM_VERSION, reason_name};
