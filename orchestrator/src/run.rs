//! `nestbench run` and `nestbench payloads`: one payload on one engine, through an
//! `nestbench-l0` child, summarised as the JSON (and a few lines of text).

use std::fmt::Write;

use serde_json::{Value, json};

use crate::l0_child::ChildRun;

/// Version of the `run --json` document.
pub const RUN_JSON_VERSION: u32 = 1;

/// Percentile `q` (0..1) of a log2 histogram `[(bucket, count)]`: the bounds `[2^b,
/// 2^(b+1))` of the bucket it falls in. The payloads keep log2 buckets, so that is the
/// resolution; `None` for an empty histogram.
#[must_use]
pub fn percentile_bucket(hist: &[(u64, u64)], q: f64) -> Option<(u64, u64)> {
    let total: u64 = hist.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let bounds = |b: u64| (if b == 0 { 0 } else { 1u64 << b.min(63) }, 1u64 << (b + 1).min(63));
    let mut seen = 0;
    for &(b, c) in hist {
        seen += c;
        if seen >= rank {
            return Some(bounds(b));
        }
    }
    hist.last().map(|&(b, _)| bounds(b))
}

fn bucket_json(b: Option<(u64, u64)>) -> Value {
    b.map_or(Value::Null, |(lower, upper)| json!({ "lower": lower, "upper": upper }))
}

fn latency(results: &Value) -> Value {
    let hist: Vec<(u64, u64)> = results["hist"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| Some((p[0].as_u64()?, p[1].as_u64()?))).collect())
        .unwrap_or_default();
    let n = results["iterations"].as_u64().unwrap_or(0);
    let total = results["total_cycles"].as_u64().unwrap_or(0);
    json!({
        "mean": if n > 0 { Value::from(total as f64 / n as f64) } else { Value::Null },
        "min": results["min_cycles"],
        "max": results["max_cycles"],
        "p50": bucket_json(percentile_bucket(&hist, 0.5)),
        "p99": bucket_json(percentile_bucket(&hist, 0.99)),
        "histogram_log2": results["hist"],
        "samples": n,
    })
}

/// The `run --json` document of a nested (soft engine) run.
#[must_use]
pub fn nested_json(run: &ChildRun, payload: &str, iterations: u64, shadowing: bool) -> Value {
    let report = run.event("end").map(|e| &e["report"]).cloned().unwrap_or(Value::Null);
    let payload_run = run.event("payload_run").cloned().unwrap_or(Value::Null);
    let soft = &report["soft"];
    let reflected = soft["reflected_total"].as_u64().unwrap_or(0);
    json!({
        "run_json_version": RUN_JSON_VERSION,
        "engine": "soft",
        "payload": payload,
        "iterations": iterations,
        "vmcs_shadowing": shadowing,
        "complete": run.complete(),
        "incomplete": run.why_incomplete(),
        "outcome": report["outcome"],
        "payload_status": payload_run["status"],
        "exits": payload_run["exits"],
        "exit_records": payload_run["exit_records"],
        "reflected_exits": reflected,
        "reflected_exits_by_reason": soft["reflected_exits"],
        "l0_only_exits": soft["l0_only_exits"],
        "kvm_exits": {
            "l1_vm": report["kvm_exits_total"],
            "l2_vm": soft["l2_kvm_exits"],
            "per_reflected_exit": if reflected > 0 {
                Value::from((report["kvm_exits_total"].as_u64().unwrap_or(0) + soft["l2_kvm_exits"].as_u64().unwrap_or(0)) as f64 / reflected as f64)
            } else { Value::Null },
        },
        "l1_traps": soft["l1_traps"],
        "l1_traps_per_reflected_exit": if soft["reflected_resumed"].as_u64().unwrap_or(0) > 0 {
            Value::from(soft["l1_traps"].as_u64().unwrap_or(0) as f64 / soft["reflected_resumed"].as_u64().unwrap_or(1) as f64)
        } else { Value::Null },
        "l1_vmx_accesses": payload_run["vmx_accesses"],
        "l0_vmx_hypercalls": soft["vmx_hypercalls"],
        "entry_failures": soft["entry_failures"],
        "memslots": soft["memslots"],
        "time_ns": { "l0": soft["l0_ns"], "l1": soft["l1_ns"], "l2": soft["l2_ns"], "wall": report["wall_ns"] },
        "latency_cycles": latency(&payload_run["results"]),
        "payload_failures": payload_run["results"]["failures"],
        "kvm_stats": report["kvm_stats"],
        "console": run.events.iter().filter(|e| e["event"] == "console").map(|e| e["text"].clone()).collect::<Vec<_>>(),
        "error": run.event("error").map(|e| &e["message"]),
    })
}

/// The text lines about a run's exit trace.
#[must_use]
pub fn render_trace(end: &Value, path: Option<&std::path::Path>, agg: &crate::trace::Aggregate) -> String {
    let mut s = String::new();
    let complete = end["complete"] == true;
    let _ = writeln!(
        s,
        "trace: {} records, {} dropped by L1 (ring full), {} sequence gaps{}",
        agg.records,
        end["dropped"],
        agg.gaps,
        if complete { "" } else { "  PARTIAL: the run did not complete" }
    );
    match path {
        Some(p) => {
            let _ = writeln!(s, "trace written to {}", p.display());
        }
        None if !end["write_error"].is_null() => {
            let _ = writeln!(s, "trace NOT written: {}", end["write_error"]);
        }
        None => {}
    }
    if !end["l0"]["error"].is_null() {
        let _ = writeln!(s, "tracing stopped early: {}", end["l0"]["error"]);
    }
    s
}

/// The `run --json` document of a kvm-engine run (L1 on the kernel's nested VMX): L1's
/// view of the exits, and L0's attribution from KVM's statistics and tracepoints.
#[must_use]
pub fn kvm_json(run: &ChildRun, payload: &str, iterations: u64) -> Value {
    let report = run.event("end").map(|e| &e["report"]).cloned().unwrap_or(Value::Null);
    let payload_run = run.event("payload_run").cloned().unwrap_or(Value::Null);
    let k = &report["kvm_engine"];
    let tp = &k["tracepoints"];
    let reflected = tp["nested_vmexit_inject"].as_u64();
    json!({
        "run_json_version": RUN_JSON_VERSION,
        "engine": "kvm",
        "payload": payload,
        "iterations": iterations,
        "complete": run.complete(),
        "incomplete": run.why_incomplete(),
        "outcome": report["outcome"],
        "payload_status": payload_run["status"],
        "exits": payload_run["exits"],
        "exit_records": payload_run["exit_records"],
        "kvm_intel_params": k["kvm_intel_params"],
        "vmx_msrs": k["vmx_msrs"],
        "attribution": k["attribution"],
        "tracepoints": tp,
        "tracepoints_unavailable": k["tracepoints_unavailable"],
        "l0_only_exits": reflected.and_then(|r| tp["nested_vmexit"].as_u64().map(|n| n.saturating_sub(r))),
        "reflected_exits": reflected,
        "l1_traps": reflected.and_then(|_| tp["kvm_exit"].as_u64().zip(tp["nested_vmexit"].as_u64()).map(|(a, b)| a.saturating_sub(b))),
        "kvm_exits_per_reflected_exit": k["attribution"]["kvm_exits_per_reflected_exit"],
        "latency_cycles": latency(&payload_run["results"]),
        "payload_failures": payload_run["results"]["failures"],
        "kvm_stats": report["kvm_stats"],
        "time_ns": { "wall": report["wall_ns"] },
        "console": run.events.iter().filter(|e| e["event"] == "console").map(|e| e["text"].clone()).collect::<Vec<_>>(),
        "error": run.event("error").map(|e| &e["message"]),
    })
}

/// The `run --json` document of a single-level run.
#[must_use]
pub fn single_json(run: &ChildRun, payload: &str, iterations: u64) -> Value {
    let r = run.event("end").map(|e| &e["single_level"]).cloned().unwrap_or(Value::Null);
    json!({
        "run_json_version": RUN_JSON_VERSION,
        "engine": "single_level",
        "payload": payload,
        "iterations": iterations,
        "complete": run.complete(),
        "incomplete": run.why_incomplete(),
        "payload_status": r["status"],
        "problem": r["problem"],
        "kvm_exits": r["kvm_exits"],
        "latency_cycles": latency(&r["results"]),
        "payload_failures": r["results"]["failures"],
        "time_ns": { "wall": r["wall_ns"] },
        "error": run.event("error").map(|e| &e["message"]),
    })
}

/// The `run --json` document of a Bochs run. Bochs is L1's root hypervisor: its figures are
/// L1 instructions per exit on a CPU that executes VMX, never a nested cost (Bochs' TSC
/// counts instructions with `clock: sync=none`, so the payload's cycles are instructions).
#[must_use]
pub fn bochs_json(run: &ChildRun, payload: &str, iterations: u64) -> Value {
    let report = run.event("end").map(|e| &e["report"]).cloned().unwrap_or(Value::Null);
    let payload_run = run.event("payload_run").cloned().unwrap_or(Value::Null);
    json!({
        "run_json_version": RUN_JSON_VERSION,
        "engine": "bochs",
        "cpu_model": report["bochs"]["model"],
        "payload": payload,
        "iterations": iterations,
        "complete": run.complete(),
        "incomplete": run.why_incomplete(),
        "outcome": report["outcome"],
        "payload_status": payload_run["status"],
        "exits": payload_run["exits"],
        "exit_records": payload_run["exit_records"],
        "instructions_per_iteration": latency(&payload_run["results"]),
        "instructions_total": report["bochs"]["instructions"],
        "payload_failures": payload_run["results"]["failures"],
        "bochs": report["bochs"],
        "error": run.event("error").map(|e| &e["message"]),
    })
}

/// A few lines for the terminal.
#[must_use]
pub fn render(j: &Value) -> String {
    if j["engine"] == "bochs" {
        return render_bochs(j);
    }
    let mut s = String::new();
    // Nothing measured: no screen of nulls, just what happened (l0 refused the run, or its
    // child ended without a result).
    let nothing = match (j["error"].as_str(), j["incomplete"].as_str()) {
        _ if !j["payload_status"].is_null() => None,
        (Some(e), _) => Some(format!("not run: {e}")),
        (None, Some(why)) => Some(format!("no result: {why}")),
        (None, None) => None,
    };
    if let Some(what) = nothing {
        let _ =
            writeln!(s, "{} on {}: {what}", j["payload"].as_str().unwrap_or("?"), j["engine"].as_str().unwrap_or("?"));
        return s;
    }
    let lat = &j["latency_cycles"];
    let _ = writeln!(
        s,
        "{} on {} ({} iterations{})",
        j["payload"].as_str().unwrap_or("?"),
        j["engine"].as_str().unwrap_or("?"),
        j["iterations"],
        if j["engine"] == "soft" {
            format!(", VMCS shadowing {}", if j["vmcs_shadowing"] == true { "on" } else { "off" })
        } else {
            String::new()
        }
    );
    let h = &j["host"]["boot"];
    if let Some(name) = h["host"].as_str() {
        let _ = writeln!(
            s,
            "  host           {name}, kernel {}, {} {}; boot to ready {:.1} s, session {:.1} s wall",
            h["kernel_release"].as_str().unwrap_or("?"),
            h["kvm_module"].as_str().unwrap_or("?"),
            h["kvm_module_params"].as_str().unwrap_or("?"),
            h["boot_to_ready_s"].as_f64().unwrap_or(f64::NAN),
            h["session_s"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(
        s,
        "  latency        mean {} cycles, min {}, max {}, p50 < {}, p99 < {} (log2 buckets)",
        fmt_num(&lat["mean"]),
        lat["min"],
        lat["max"],
        lat["p50"]["upper"],
        lat["p99"]["upper"]
    );
    if j["engine"] == "soft" {
        let _ = writeln!(s, "  L2 exits (L1)  {}", j["exits"]);
        let _ = writeln!(s, "  reflected      {} (L0-only {})", j["reflected_exits"], j["l0_only_exits"]);
        let _ = writeln!(
            s,
            "  KVM exits      L1 VM {}, L2 VM {}, per reflected exit {}",
            j["kvm_exits"]["l1_vm"],
            j["kvm_exits"]["l2_vm"],
            fmt_num(&j["kvm_exits"]["per_reflected_exit"])
        );
        let _ = writeln!(
            s,
            "  L1 traps       {} per reflected exit; L0 VMX hypercalls {}",
            fmt_num(&j["l1_traps_per_reflected_exit"]),
            j["l0_vmx_hypercalls"]
        );
        let _ = writeln!(
            s,
            "  time           L0 {} ns, L1 {} ns, L2 {} ns (wall {} ns)",
            j["time_ns"]["l0"], j["time_ns"]["l1"], j["time_ns"]["l2"], j["time_ns"]["wall"]
        );
        let _ = writeln!(s, "  outcome        {}", crate::boot::describe_outcome(&j["outcome"]));
    } else if j["engine"] == "kvm" {
        let a = &j["attribution"];
        let _ = writeln!(s, "  L2 exits (L1)  {}", j["exits"]);
        let _ = writeln!(
            s,
            "  KVM (stats)    exits {}, nested_run {}, per L2 exit L1 handled {}",
            a["kvm_exits"],
            a["nested_runs"],
            fmt_num(&a["kvm_exits_per_reflected_exit"])
        );
        match j["tracepoints_unavailable"].as_str() {
            Some(why) => {
                let _ = writeln!(s, "  tracepoints    unavailable: {why}");
            }
            None => {
                let _ = writeln!(
                    s,
                    "  tracepoints    L2 exits {}, reflected {}, L0-only {}, L1 exits {}",
                    j["tracepoints"]["nested_vmexit"], j["reflected_exits"], j["l0_only_exits"], j["l1_traps"]
                );
            }
        }
        let p = &j["kvm_intel_params"];
        let _ = writeln!(
            s,
            "  kvm_intel      nested={} ept={} enable_shadow_vmcs={}",
            p["nested"], p["ept"], p["enable_shadow_vmcs"]
        );
        let _ = writeln!(s, "  outcome        {}", crate::boot::describe_outcome(&j["outcome"]));
    } else {
        let _ = writeln!(s, "  KVM exits      {}", j["kvm_exits"]);
    }
    let _ = writeln!(s, "  payload        status {}, failures {}", j["payload_status"], j["payload_failures"]);
    if let Some(e) = j["error"].as_str() {
        let _ = writeln!(s, "  error          {e}");
    }
    if j["complete"] != true {
        let _ = writeln!(s, "  PARTIAL: {}", j["incomplete"].as_str().unwrap_or("l0 did not finish the run"));
    }
    s
}

fn render_bochs(j: &Value) -> String {
    let mut s = String::new();
    let i = &j["instructions_per_iteration"];
    let _ = writeln!(
        s,
        "{} on bochs {} ({} iterations): L1 on a CPU that executes VMX; figures are instructions, not a nested cost",
        j["payload"].as_str().unwrap_or("?"),
        j["cpu_model"].as_str().unwrap_or("?"),
        j["iterations"]
    );
    let _ = writeln!(
        s,
        "  per iteration  mean {} instructions between the payload's two RDTSCs (exit, L1 handler, entry), min {}, max {}",
        fmt_num(&i["mean"]),
        i["min"],
        i["max"]
    );
    let _ = writeln!(s, "  L2 exits (L1)  {}", j["exits"]);
    let _ = writeln!(
        s,
        "  total          {} instructions; outcome {}",
        j["instructions_total"],
        crate::boot::describe_outcome(&j["outcome"])
    );
    let _ = writeln!(s, "  payload        status {}, failures {}", j["payload_status"], j["payload_failures"]);
    if let Some(e) = j["error"].as_str() {
        let _ = writeln!(s, "  error          {e}");
    }
    if j["complete"] != true {
        let _ = writeln!(s, "  PARTIAL: {}", j["incomplete"].as_str().unwrap_or("l0 did not finish the run"));
    }
    s
}

fn fmt_num(v: &Value) -> String {
    v.as_f64().map_or_else(|| v.to_string(), |f| format!("{f:.2}"))
}

/// `nestbench payloads`: every payload and which engines run it.
#[must_use]
pub fn payloads(json: bool) -> String {
    let rows: Vec<Value> = l2_payloads::all()
        .iter()
        .map(|m| {
            let (soft, why) = match m.soft_engine {
                l2_payloads::Support::Runs => (true, None),
                l2_payloads::Support::Unsupported { reason } => (false, Some(reason)),
            };
            let wedge = crate::hosts::emulated::BOCHS_HOST_WEDGES.iter().find(|(p, _)| *p == m.name);
            json!({
                "name": m.name,
                "description": m.description,
                "cpl": m.cpl as u32,
                "exits_per_iteration": m.exits_per_iteration.iter().map(|(r, n)| json!({"reason": r.kernel_name(), "sdm_name": r.name(), "count": n})).collect::<Vec<_>>(),
                "default_iterations": m.default_iterations,
                "engines": {
                    "soft": match (soft, wedge) {
                        (true, Some(_)) => json!({ "runs": true, "reason": "on upstream KVM and kvm_pvm; on --host bochs the \
                            soft engine refuses its VMX-preemption timer: a kick does not stop a running guest there \
                            (docs/kvm-exits.md row K)" }),
                        _ => json!({ "runs": soft, "reason": why }),
                    },
                    "single_level": match m.single_level {
                        l2_payloads::Twin::Same => json!({ "runs": true }),
                        l2_payloads::Twin::None { reason } => json!({ "runs": false, "reason": format!("no twin: {reason}") }),
                    },
                    "bochs": { "runs": true },
                    "kvm": match wedge {
                        None => json!({ "runs": true, "reason": "where KVM offers nested VMX (kvm_intel nested=1; here: --host bochs)" }),
                        Some((_, why)) => json!({ "runs": true, "reason": format!("where KVM offers nested VMX, but not on --host bochs: {why}") }),
                    },
                },
            })
        })
        .collect();
    let limits = l0::soft::l2vm::MEMSLOT_LIMITS;
    if json {
        return serde_json::to_string_pretty(&json!({ "payloads": rows, "soft_engine_memslot_limits": limits }))
            .expect("serializes");
    }
    let mut s = String::new();
    for r in &rows {
        let _ = writeln!(
            s,
            "{:<14} CPL {}  {}",
            r["name"].as_str().unwrap_or(""),
            r["cpl"],
            r["description"].as_str().unwrap_or("")
        );
        for e in ["soft", "single_level", "bochs", "kvm"] {
            let x = &r["engines"][e];
            let _ = writeln!(
                s,
                "    {:<13} {}",
                e,
                if x["runs"] == true {
                    x["reason"].as_str().map_or_else(|| "runs".to_owned(), |r| format!("runs {r}"))
                } else {
                    format!("skipped: {}", x["reason"].as_str().unwrap_or(""))
                }
            );
        }
    }
    let _ = writeln!(s, "\nsoft engine: EPT12 is shadowed as KVM memslots; known limits:");
    for l in limits {
        let _ = writeln!(s, "  - {l}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_log2_buckets() {
        let h = [(10, 50), (11, 49), (20, 1)];
        assert_eq!(percentile_bucket(&h, 0.5), Some((1024, 2048)));
        assert_eq!(percentile_bucket(&h, 0.99), Some((2048, 4096)));
        assert_eq!(percentile_bucket(&h, 1.0), Some((1 << 20, 1 << 21)));
        assert_eq!(percentile_bucket(&[(0, 3)], 0.5), Some((0, 2)));
        assert_eq!(percentile_bucket(&[], 0.5), None);
    }
}
