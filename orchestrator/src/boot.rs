//! `nestbench boot`: boot L1 through an `nestbench-l0` child and show what L1 reported, the
//! outcome, and the KVM statistics deltas.

use std::fmt::Write;

use serde_json::{Value, json};

use crate::l0_child::ChildRun;

/// Version of the `boot --json` document.
pub const BOOT_JSON_VERSION: u32 = 1;

/// The `boot --json` document: the child's events, grouped.
#[must_use]
pub fn to_json(run: &ChildRun) -> Value {
    let console: Vec<&Value> = run.events.iter().filter(|e| e["event"] == "console").map(|e| &e["text"]).collect();
    let hypercall_errors: Vec<&Value> = run.events.iter().filter(|e| e["event"] == "hypercall_error").collect();
    json!({
        "boot_json_version": BOOT_JSON_VERSION,
        "complete": run.complete(),
        "interrupted": run.interrupted,
        "l0_exit_code": run.exit_code,
        "hello": run.event("hello"),
        "console": console,
        "probe": run.event("probe"),
        "hypercall_errors": hypercall_errors,
        "report": run.event("end").map(|e| &e["report"]),
        "error": run.event("error").map(|e| &e["message"]),
        "malformed_lines": run.malformed,
        "l0_stderr": if run.stderr.is_empty() { Value::Null } else { Value::from(run.stderr.clone()) },
    })
}

fn msr_line(m: &Value) -> String {
    match m["status"].as_str() {
        Some("ok") => format!("{:#x}", m["value"].as_u64().unwrap_or(0)),
        Some("gp") => "#GP on RDMSR".into(),
        Some(other) => other.replace('_', " "),
        None => "?".into(),
    }
}

/// The human-readable summary.
#[must_use]
pub fn render(run: &ChildRun) -> String {
    let mut s = String::new();
    let j = to_json(run);
    if let Some(lines) = j["console"].as_array().filter(|l| !l.is_empty()) {
        let _ = writeln!(s, "L1 console");
        for l in lines {
            let _ = writeln!(s, "  | {}", l.as_str().unwrap_or(""));
        }
    }
    if let Some(p) = run.event("probe") {
        let b = |v: &Value| if v.as_bool() == Some(true) { "offered" } else { "not offered" };
        let _ = writeln!(s, "L1 probe");
        let _ = writeln!(
            s,
            "  cpu          {} (family/model/stepping {:#x})",
            p["vendor"].as_str().unwrap_or("?"),
            p["family_model_stepping"].as_u64().unwrap_or(0)
        );
        let _ = writeln!(s, "  VMX          {}   SVM {}", b(&p["vmx"]), b(&p["svm"]));
        let _ = writeln!(
            s,
            "  hypervisor   {} {} (ABI v{}, features {:#x}, hypercall port {:#x})",
            p["hypervisor_signature"].as_str().unwrap_or("?"),
            if p["nestbench_l0"].as_bool() == Some(true) { "= nestbench L0" } else { "(not nestbench)" },
            p["l0_abi_version"].as_u64().unwrap_or(0),
            p["l0_features"].as_u64().unwrap_or(0),
            p["l0_hypercall_port"].as_u64().unwrap_or(0)
        );
        let _ = writeln!(
            s,
            "  CR0/CR4/EFER {:#x} / {:#x} / {:#x}",
            p["cr0"].as_u64().unwrap_or(0),
            p["cr4"].as_u64().unwrap_or(0),
            p["efer"].as_u64().unwrap_or(0)
        );
        let _ = writeln!(
            s,
            "  MTRR default {}   FEATURE_CONTROL {}",
            msr_line(&p["mtrr_def_type"]),
            msr_line(&p["feature_control"])
        );
        if let Some(msrs) = p["vmx_msrs"].as_array() {
            let read: Vec<String> = msrs
                .iter()
                .filter(|m| m["status"] == "ok")
                .map(|m| format!("{:#x}={}", m["index"].as_u64().unwrap_or(0), msr_line(m)))
                .collect();
            if read.is_empty() {
                let _ = writeln!(
                    s,
                    "  VMX MSRs     {} (0x480-0x491)",
                    msrs.first().map_or_else(|| "none".into(), msr_line)
                );
            } else {
                let _ = writeln!(s, "  VMX MSRs     {}", read.join(" "));
            }
        }
    }
    for e in run.events.iter().filter(|e| e["event"] == "hypercall_error") {
        let _ = writeln!(
            s,
            "hypercall error at RIP {:#x}: {} ({})",
            e["rip"].as_u64().unwrap_or(0),
            e["detail"].as_str().unwrap_or("?"),
            e["status"].as_str().unwrap_or("?")
        );
    }
    if let Some(r) = j["report"].as_object() {
        let o = &r["outcome"];
        let _ = writeln!(s, "outcome        {}", describe_outcome(o));
        let _ = writeln!(s, "wall time      {:.2} ms", r["wall_ns"].as_u64().unwrap_or(0) as f64 / 1e6);
        let exits: Vec<String> =
            r["kvm_exits"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect()).unwrap_or_default();
        let _ = writeln!(s, "KVM exits      {} ({})", r["kvm_exits_total"], exits.join(", "));
        for level in ["vcpu", "vm"] {
            if let Some(c) = r["kvm_stats"][level]["counters"].as_object() {
                let nz: Vec<String> =
                    c.iter().filter(|(_, v)| v.as_u64().unwrap_or(0) != 0).map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(
                    s,
                    "KVM stats {level:<4} {}",
                    if nz.is_empty() { "(all zero)".into() } else { nz.join(", ") }
                );
            }
        }
        if r["kvm_stats"].is_null() {
            let _ = writeln!(s, "KVM stats      not available on this host (no KVM_GET_STATS_FD)");
        }
    }
    if let Some(e) = j["error"].as_str() {
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

fn hex(v: &Value) -> String {
    format!("{:#x}", v.as_u64().unwrap_or(0))
}

/// One line for an outcome object.
#[must_use]
pub fn describe_outcome(o: &Value) -> String {
    match o["kind"].as_str().unwrap_or("?") {
        "exited" => format!("exited with status {}", o["status"]),
        "guest_exception" => format!(
            "L1 took {} (vector {}) error code {} at RIP {}, CR2 {}",
            o["name"].as_str().unwrap_or("?"),
            o["vector"],
            hex(&o["error_code"]),
            hex(&o["rip"]),
            hex(&o["cr2"])
        ),
        "triple_fault" => format!(
            "triple fault at RIP {} (RSP {}, CR3 {})",
            hex(&o["regs"]["rip"]),
            hex(&o["regs"]["rsp"]),
            hex(&o["cr3"])
        ),
        "emulation_failure" => format!(
            "KVM could not emulate `{}` at RIP {} (bytes {})",
            o["disassembly"].as_str().unwrap_or("?"),
            hex(&o["rip"]),
            o["insn_bytes"]
                .as_array()
                .map(|b| b.iter().map(|x| format!("{:02x}", x.as_u64().unwrap_or(0))).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        ),
        "timeout" => format!(
            "timeout: the guest ran past its {} ms budget; stopped at RIP {} (`{}`)",
            o["budget_ms"],
            hex(&o["regs"]["rip"]),
            o["disassembly"].as_str().unwrap_or("")
        ),
        "halted" => format!("halted at RIP {} with nothing to wake it", hex(&o["rip"])),
        "unhandled_exit" => format!("unhandled exit {} at RIP {}", o["exit"].as_str().unwrap_or("?"), hex(&o["rip"])),
        "internal_error" => format!(
            "KVM internal error, suberror {} at RIP {} (data {})",
            o["suberror"],
            hex(&o["rip"]),
            o["data"].as_array().map(|d| d.iter().map(hex).collect::<Vec<_>>().join(" ")).unwrap_or_default()
        ),
        "entry_failed" => {
            format!("KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason {})", hex(&o["reason"]))
        }
        "engine_stopped" => format!(
            "the {} engine stopped before L1 said how its run ended: {}",
            o["engine"].as_str().unwrap_or("?"),
            o["why"].as_str().unwrap_or("?")
        ),
        "engine_unsupported" => format!(
            "the engine does not support {}: {} (a valid setting it cannot honour, not a VM-entry failure)",
            o["what"].as_str().unwrap_or("?"),
            o["why"].as_str().unwrap_or("?")
        ),
        other => format!("{other}: {o}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_kind_reads_as_words() {
        let regs = serde_json::json!({"rip": 4096, "rsp": 8192});
        for o in [
            serde_json::json!({"kind": "exited", "status": 0}),
            serde_json::json!({"kind": "guest_exception", "vector": 14, "name": "#PF", "error_code": 2, "rip": 1, "cr2": 0}),
            serde_json::json!({"kind": "triple_fault", "regs": regs, "cr3": 4096}),
            serde_json::json!({"kind": "emulation_failure", "rip": 1, "insn_bytes": [15, 11], "disassembly": "ud2"}),
            serde_json::json!({"kind": "internal_error", "suberror": 1, "data": [1, 2], "rip": 1}),
            serde_json::json!({"kind": "timeout", "budget_ms": 10, "regs": regs, "disassembly": "hlt"}),
            serde_json::json!({"kind": "halted", "rip": 1}),
            serde_json::json!({"kind": "unhandled_exit", "exit": "io_out port 0x80", "rip": 1}),
            serde_json::json!({"kind": "entry_failed", "reason": 33}),
            serde_json::json!({"kind": "engine_stopped", "engine": "bochs", "why": "exit status 1"}),
            serde_json::json!({"kind": "engine_unsupported", "what": "VM-entry interruption information", "why": "event injection"}),
        ] {
            let text = describe_outcome(&o);
            assert!(!text.contains('{') && !text.contains("\"kind\""), "{o}: {text}");
        }
        assert_eq!(
            describe_outcome(&serde_json::json!({"kind": "entry_failed", "reason": 33})),
            "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason 0x21)"
        );
    }
}
