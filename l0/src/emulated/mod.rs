//! The part of an emulated host (an upstream Linux KVM booted inside Bochs or QEMU) that
//! runs inside it, and what both sides of its serial line agree on.
//!
//! The orchestrator plans every l0 invocation of one boot ([`Plan`]) and builds it into the
//! emulated machine's initramfs; the machine's init runs `nestbench-l0 agent`, which loads
//! the KVM modules with the parameters asked for, reports the host ([`frame::Kind::Host`]),
//! runs each planned invocation of itself and streams what each prints as [`frame`]s over
//! a line that carries nothing else (the emulator's debug port, or a serial line).

pub mod agent;
pub mod frame;

use serde::{Deserialize, Serialize};

/// Where the plan sits in the emulated machine's initramfs.
pub const PLAN_PATH: &str = "/nestbench/plan.json";

/// One kernel module to load, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleLoad {
    /// Its name (`kvm_intel`).
    pub name: String,
    /// The `.ko` file inside the emulated machine.
    pub path: String,
    /// Its parameters, as for insmod (`nested=1 enable_shadow_vmcs=0`).
    pub params: String,
}

/// One l0 invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRun {
    /// `nestbench-l0`'s arguments.
    pub args: Vec<String>,
    /// Its deadline in emulated milliseconds; the agent kills it after that.
    pub deadline_ms: u64,
}

/// Everything one boot of an emulated host does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Modules to load before anything runs.
    pub modules: Vec<ModuleLoad>,
    /// Host settings to apply after the modules load: (sysfs path, value), e.g.
    /// transparent huge pages.
    pub sysfs: Vec<(String, String)>,
    /// The runs, in order.
    pub runs: Vec<PlannedRun>,
}

/// What the agent reports about the emulated host before any run ([`frame::Kind::Host`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostReport {
    /// The host's facts, as `nestbench doctor` gathers them on a local host.
    pub facts: crate::host::HostFacts,
    /// The kernel's uptime when the agent started (boot to init, in emulated seconds).
    pub uptime_at_agent_s: f64,
    /// Each module's load time in emulated milliseconds, in load order.
    pub module_load_ms: Vec<(String, u64)>,
}
