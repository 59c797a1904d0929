//! `nestbench boot`: boot L1 through an `nestbench-l0` child and show what L1 reported, the
//! outcome, and the KVM statistics deltas.

use std::fmt::Write;

use nestbench_protocol::events::{Event, Msr, MsrState, Outcome};
use serde::Serialize;

use crate::l0_child::{ChildRun, Interruption};

/// Version of the `boot --json` document.
pub const BOOT_JSON_VERSION: u32 = 1;

/// The `boot --json` document: the child's events, grouped.
#[derive(Serialize)]
pub struct BootDoc<'a> {
    /// [`BOOT_JSON_VERSION`].
    pub boot_json_version: u32,
    /// Whether the stream ended with `end` or `error`.
    pub complete: bool,
    /// Set when nestbench stopped the child.
    pub interrupted: Option<Interruption>,
    /// The child's exit code.
    pub l0_exit_code: Option<i32>,
    /// The `hello` line.
    pub hello: Option<&'a nestbench_protocol::Hello>,
    /// L1's console lines.
    pub console: Vec<&'a str>,
    /// L1's probe (as its event).
    pub probe: Option<&'a Event>,
    /// Hypercalls L0 refused (as their events).
    pub hypercall_errors: Vec<&'a Event>,
    /// The run report.
    pub report: Option<&'a nestbench_protocol::RunReport>,
    /// l0's `error` message.
    pub error: Option<&'a str>,
    /// Lines that were not events.
    pub malformed_lines: &'a [String],
    /// l0's stderr, when it wrote any.
    pub l0_stderr: Option<&'a str>,
    /// The emulated host it ran on (`--host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<crate::hosts::HostDoc>,
}

/// The `boot --json` document of `run`.
#[must_use]
pub fn to_json(run: &ChildRun) -> BootDoc<'_> {
    BootDoc {
        boot_json_version: BOOT_JSON_VERSION,
        complete: run.complete(),
        interrupted: run.interrupted,
        l0_exit_code: run.exit_code,
        hello: run.hello(),
        console: run.console().collect(),
        probe: run.events.iter().find(|e| matches!(e, Event::Probe(_))),
        hypercall_errors: run.events.iter().filter(|e| matches!(e, Event::HypercallError { .. })).collect(),
        report: run.report(),
        error: run.error(),
        malformed_lines: &run.malformed,
        l0_stderr: (!run.stderr.is_empty()).then_some(run.stderr.as_str()),
        host: None,
    }
}

fn msr_line(m: &Msr) -> String {
    match m.status {
        MsrState::Ok => format!("{:#x}", m.value.unwrap_or(0)),
        MsrState::Gp => "#GP on RDMSR".into(),
        other => other.name().replace('_', " "),
    }
}

/// The human-readable summary.
#[must_use]
pub fn render(run: &ChildRun) -> String {
    let mut s = String::new();
    let console: Vec<&str> = run.console().collect();
    if !console.is_empty() {
        let _ = writeln!(s, "L1 console");
        for l in console {
            let _ = writeln!(s, "  | {l}");
        }
    }
    if let Some(p) = run.probe() {
        let b = |v: bool| if v { "offered" } else { "not offered" };
        let _ = writeln!(s, "L1 probe");
        let _ = writeln!(s, "  cpu          {} (family/model/stepping {:#x})", p.vendor, p.family_model_stepping);
        let _ = writeln!(s, "  VMX          {}   SVM {}", b(p.vmx), b(p.svm));
        let _ = writeln!(
            s,
            "  hypervisor   {} {} (ABI v{}, features {:#x}, hypercall port {:#x})",
            p.hypervisor_signature,
            if p.nestbench_l0 { "= nestbench L0" } else { "(not nestbench)" },
            p.l0_abi_version,
            p.l0_features,
            p.l0_hypercall_port
        );
        let _ = writeln!(s, "  CR0/CR4/EFER {:#x} / {:#x} / {:#x}", p.cr0, p.cr4, p.efer);
        let _ = writeln!(
            s,
            "  MTRR default {}   FEATURE_CONTROL {}",
            msr_line(&p.mtrr_def_type),
            msr_line(&p.feature_control)
        );
        let read: Vec<String> = p
            .vmx_msrs
            .iter()
            .filter(|m| m.status == MsrState::Ok)
            .map(|m| format!("{:#x}={}", m.index, msr_line(m)))
            .collect();
        if read.is_empty() {
            let first = p.vmx_msrs.first().map_or_else(|| "none".into(), msr_line);
            let _ = writeln!(s, "  VMX MSRs     {first} (0x480-0x491)");
        } else {
            let _ = writeln!(s, "  VMX MSRs     {}", read.join(" "));
        }
    }
    for e in &run.events {
        if let Event::HypercallError { rip, detail, status, .. } = e {
            let _ = writeln!(s, "hypercall error at RIP {rip:#x}: {detail} ({status})");
        }
    }
    if let Some(r) = run.report() {
        let _ = writeln!(s, "outcome        {}", describe_outcome(&r.outcome));
        let _ = writeln!(s, "wall time      {:.2} ms", r.wall_ns as f64 / 1e6);
        let exits: Vec<String> = r.kvm_exits.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "KVM exits      {} ({})", r.kvm_exits_total, exits.join(", "));
        match &r.kvm_stats {
            Some(k) => {
                for (level, d) in [("vcpu", &k.vcpu), ("vm", &k.vm)] {
                    let nz: Vec<String> =
                        d.counters.iter().filter(|(_, v)| **v != 0).map(|(k, v)| format!("{k} {v}")).collect();
                    let _ = writeln!(
                        s,
                        "KVM stats {level:<4} {}",
                        if nz.is_empty() { "(all zero)".into() } else { nz.join(", ") }
                    );
                }
            }
            None => {
                let _ = writeln!(s, "KVM stats      not available on this host (no KVM_GET_STATS_FD)");
            }
        }
    }
    if let Some(e) = run.error() {
        let _ = writeln!(s, "error          {e}");
    }
    match run.interrupted {
        Some(why) => {
            let _ = writeln!(s, "PARTIAL: l0 was stopped ({why:?}); the events above are what it sent before");
        }
        None if !run.complete() => {
            let _ = writeln!(s, "PARTIAL: {}", run.why_incomplete().unwrap_or_default());
        }
        None => {}
    }
    for l in &run.malformed {
        let _ = writeln!(s, "unparsed l0 output: {l}");
    }
    s
}

/// One line for an outcome: every kind has its words (the match is exhaustive, so a new
/// kind does not compile until it has them).
#[must_use]
pub fn describe_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Exited { status } => format!("exited with status {status}"),
        Outcome::GuestException { vector, name, error_code, rip, cr2, .. } => {
            format!("L1 took {name} (vector {vector}) error code {error_code:#x} at RIP {rip:#x}, CR2 {cr2:#x}")
        }
        Outcome::TripleFault { regs, cr3, .. } => {
            format!("triple fault at RIP {:#x} (RSP {:#x}, CR3 {cr3:#x})", regs.rip, regs.rsp)
        }
        Outcome::EmulationFailure { rip, insn_bytes, disassembly } => format!(
            "KVM could not emulate `{disassembly}` at RIP {rip:#x} (bytes {})",
            insn_bytes.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
        ),
        Outcome::Timeout { budget_ms, regs, disassembly } => format!(
            "timeout: the guest ran past its {budget_ms} ms budget; stopped at RIP {:#x} (`{disassembly}`)",
            regs.rip
        ),
        Outcome::Halted { rip } => format!("halted at RIP {rip:#x} with nothing to wake it"),
        Outcome::UnhandledExit { exit, rip } => format!("unhandled exit {exit} at RIP {rip:#x}"),
        Outcome::InternalError { suberror, data, rip } => format!(
            "KVM internal error, suberror {suberror} at RIP {rip:#x} (data {})",
            data.iter().map(|d| format!("{d:#x}")).collect::<Vec<_>>().join(" ")
        ),
        Outcome::EntryFailed { reason } => {
            format!("KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x})")
        }
        Outcome::EngineStopped { engine, why } => {
            format!("the {engine} engine stopped before L1 said how its run ended: {why}")
        }
        Outcome::EngineUnsupported { what, why } => format!(
            "the engine does not support {what}: {why} (a valid setting it cannot honour, not a VM-entry failure)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_kind_reads_as_words() {
        let regs =
            serde_json::to_value(nestbench_protocol::events::Gprs { rip: 4096, rsp: 8192, ..Default::default() })
                .unwrap();
        for o in [
            serde_json::json!({"kind": "exited", "status": 0}),
            serde_json::json!({"kind": "guest_exception", "vector": 14, "name": "#PF", "error_code": 2, "rip": 1, "cr2": 0,
                "rsp": 0, "rflags": 2, "gprs": []}),
            serde_json::json!({"kind": "triple_fault", "regs": regs, "cr0": 1, "cr3": 4096, "cr4": 0, "idt": [0, 0]}),
            serde_json::json!({"kind": "emulation_failure", "rip": 1, "insn_bytes": [15, 11], "disassembly": "ud2"}),
            serde_json::json!({"kind": "internal_error", "suberror": 1, "data": [1, 2], "rip": 1}),
            serde_json::json!({"kind": "timeout", "budget_ms": 10, "regs": regs, "disassembly": "hlt"}),
            serde_json::json!({"kind": "halted", "rip": 1}),
            serde_json::json!({"kind": "unhandled_exit", "exit": "io_out port 0x80", "rip": 1}),
            serde_json::json!({"kind": "entry_failed", "reason": 33}),
            serde_json::json!({"kind": "engine_stopped", "engine": "bochs", "why": "exit status 1"}),
            serde_json::json!({"kind": "engine_unsupported", "what": "VM-entry interruption information", "why": "event injection"}),
        ] {
            let o: Outcome = serde_json::from_value(o).expect("an outcome of the protocol");
            let text = describe_outcome(&o);
            assert!(!text.contains('{') && !text.contains("\"kind\""), "{o:?}: {text}");
        }
        assert_eq!(
            describe_outcome(&Outcome::EntryFailed { reason: 33 }),
            "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason 0x21)"
        );
    }
}
