//! Capturing KVM's nested-VMX tracepoints during a run, in a private tracefs instance
//! (`instances/nestbench-<pid>`: its own ring buffer and event switches, so other tracing on
//! the host is neither disturbed nor mixed in). Needs tracefs mounted (at
//! /sys/kernel/tracing or /sys/kernel/debug/tracing) and root; without them the capture
//! says why and the run goes on without tracepoint figures.

use std::path::{Path, PathBuf};

/// The events captured ([`super::tracepoints`] says what each means).
pub const EVENTS: [&str; 4] = ["kvm_exit", "kvm_nested_vmexit", "kvm_nested_vmexit_inject", "kvm_nested_vmenter"];

/// Captured where the kernel has them: `kvm_nested_vmenter_failed` names the consistency
/// check a VM entry into L2 failed (KVM's `CC()` in vmx/nested.c and svm/nested.c).
pub const OPTIONAL_EVENTS: [&str; 1] = ["kvm_nested_vmenter_failed"];

/// Where tracefs is mounted, if it is (with KVM's events).
#[must_use]
pub fn root() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("events/kvm/kvm_exit").is_dir())
}

/// A capture in progress; dropping it removes the instance.
#[derive(Debug)]
pub struct Capture {
    dir: PathBuf,
}

fn write(p: &Path, v: &str) -> Result<(), String> {
    std::fs::write(p, v).map_err(|e| format!("writing {v:?} to {}: {e}", p.display()))
}

impl Capture {
    /// Create the instance under `root` and enable [`EVENTS`] in it.
    pub fn start(root: &Path) -> Result<Self, String> {
        let dir = root.join("instances").join(format!("nestbench-{}", std::process::id()));
        if !dir.exists() {
            std::fs::create_dir(&dir).map_err(|e| format!("creating tracefs instance {}: {e}", dir.display()))?;
        }
        let c = Self { dir };
        write(&c.dir.join("buffer_size_kb"), "16384")?;
        for e in EVENTS {
            write(&c.dir.join(format!("events/kvm/{e}/enable")), "1")?;
        }
        for e in OPTIONAL_EVENTS {
            let switch = c.dir.join(format!("events/kvm/{e}/enable"));
            if switch.exists() {
                write(&switch, "1")?;
            }
        }
        write(&c.dir.join("tracing_on"), "1")?;
        Ok(c)
    }

    /// Stop and return the trace text.
    pub fn finish(self) -> Result<String, String> {
        write(&self.dir.join("tracing_on"), "0")?;
        std::fs::read_to_string(self.dir.join("trace"))
            .map_err(|e| format!("reading {}/trace: {e}", self.dir.display()))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Events must be off before the instance can go; both are best effort at this point.
        for e in EVENTS.iter().chain(&OPTIONAL_EVENTS) {
            let _ = std::fs::write(self.dir.join(format!("events/kvm/{e}/enable")), "0");
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
