//! The orchestrator -> l0 direction: what one `nestbench-l0 run` is asked to do. Its wire form
//! is the command line ([`RunRequest::args`]), so a run can be reproduced by hand; the
//! orchestrator builds every run from a [`RunRequest`], and `nestbench-l0` parses its flags
//! back into one before it runs (its tests parse every variant's `args()` back to the same
//! request), so the two sides cannot disagree on a flag.

use crate::events::Engine;

/// One payload run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRequest {
    /// The payload's name (`nestbench payloads`).
    pub payload: String,
    /// Iterations of its exiting instruction.
    pub iterations: u64,
    /// The guest's time budget (l0's watchdog), in milliseconds.
    pub timeout_ms: u64,
    /// Where it runs, with that engine's options.
    pub engine: EngineRequest,
}

/// The engine of a run and the options only that engine has: a combination that makes no
/// sense (a trace on the kvm engine, shadowing single-level) cannot be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineRequest {
    /// L0 provides VMX to L1 (docs/soft-engine.md).
    Soft {
        /// VMCS shadowing for L1's VMREAD/VMWRITE.
        vmcs_shadowing: bool,
        /// L1's exit trace, drained as `trace` events.
        trace: Option<TraceRequest>,
    },
    /// The host kernel's nested VMX (docs/kvm-engine.md).
    Kvm {
        /// Record KVM's nested tracepoints (they add KVM instructions to every exit).
        tracepoints: bool,
    },
    /// Bochs' emulated VMX (docs/bochs-engine.md).
    Bochs {
        /// Bochs' CPU model.
        cpu_model: String,
    },
    /// The payload as a plain KVM guest, no L1.
    SingleLevel,
}

/// The exit trace of a soft-engine run (docs/event-stream.md, "Traces").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRequest {
    /// Ring capacity in records (`None`: L1's largest).
    pub capacity: Option<u32>,
    /// Drain only at the end (so the ring overflows: tests of drop counting).
    pub drain_at_end: bool,
}

impl EngineRequest {
    /// The engine, without its options.
    #[must_use]
    pub const fn engine(&self) -> Engine {
        match self {
            Self::Soft { .. } => Engine::Soft,
            Self::Kvm { .. } => Engine::Kvm,
            Self::Bochs { .. } => Engine::Bochs,
            Self::SingleLevel => Engine::SingleLevel,
        }
    }
}

impl RunRequest {
    /// The `nestbench-l0` arguments that ask for this run.
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        let on_off = |b: bool| if b { "on" } else { "off" }.to_owned();
        let mut a: Vec<String> = vec!["run".into(), "--payload".into(), self.payload.clone()];
        a.extend(["--iterations".into(), self.iterations.to_string()]);
        a.extend(["--timeout-ms".into(), self.timeout_ms.to_string()]);
        match &self.engine {
            EngineRequest::Soft { vmcs_shadowing, trace } => {
                a.extend(["--engine".into(), "soft".into(), "--vmcs-shadowing".into(), on_off(*vmcs_shadowing)]);
                if let Some(t) = trace {
                    a.push("--trace".into());
                    if let Some(n) = t.capacity {
                        a.extend(["--trace-capacity".into(), n.to_string()]);
                    }
                    if t.drain_at_end {
                        a.push("--trace-drain-at-end".into());
                    }
                }
            }
            EngineRequest::Kvm { tracepoints } => {
                a.extend(["--engine".into(), "kvm".into(), "--kvm-tracepoints".into(), on_off(*tracepoints)]);
            }
            EngineRequest::Bochs { cpu_model } => {
                a.extend(["--engine".into(), "bochs".into(), "--cpu-model".into(), cpu_model.clone()]);
            }
            EngineRequest::SingleLevel => a.push("--single-level".into()),
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_names_itself_once_and_only_its_own_options() {
        let req = |engine| RunRequest { payload: "outl".into(), iterations: 7, timeout_ms: 9, engine };
        let soft = req(EngineRequest::Soft {
            vmcs_shadowing: false,
            trace: Some(TraceRequest { capacity: Some(64), drain_at_end: true }),
        });
        assert_eq!(
            soft.args().join(" "),
            "run --payload outl --iterations 7 --timeout-ms 9 --engine soft --vmcs-shadowing off --trace \
             --trace-capacity 64 --trace-drain-at-end"
        );
        let single = req(EngineRequest::SingleLevel).args().join(" ");
        assert!(single.ends_with("--single-level") && !single.contains("--engine"), "{single}");
        let kvm = req(EngineRequest::Kvm { tracepoints: true }).args().join(" ");
        assert!(kvm.ends_with("--engine kvm --kvm-tracepoints on"), "{kvm}");
        assert_eq!(soft.engine.engine(), Engine::Soft);
    }
}
