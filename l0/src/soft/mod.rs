//! The `soft` engine: VMX emulated in userspace for L1 (docs/soft-engine.md).

pub mod caps;
pub mod cr3_exiting;
pub mod engine;
pub mod entry_checks;
pub mod ept_fault;
pub mod host_exits;
pub mod injection;
pub mod io_decode;
pub mod l2vm;
pub mod msr;
pub mod msr_load;
pub mod timer;
pub mod transitions;
pub mod vmcs12;
pub mod vmx_ops;
