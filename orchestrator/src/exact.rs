//! Exact figures of the kvm engine on an emulated host, per reflected L2 exit, in steady
//! state: each payload runs with N and with 2N iterations in the same boot, and every figure
//! is the difference divided by N, so that boot, L1's set-up and the first exit's cold costs
//! cancel. On Bochs the TSC ticks once per instruction, so the payload's cycle total is the
//! instructions KVM's nested code, L1 and L2 execute together (docs/emulated-hosts.md);
//! with `clock: sync=none` and the deterministic command line, every count here is the same
//! on every boot of the same kernel and model.

use std::collections::BTreeMap;

use nestbench_protocol::events::Engine;
use nestbench_protocol::kvm_engine::KvmAttribution;
use nestbench_protocol::request::{EngineRequest, RunRequest};
use serde::{Deserialize, Serialize};

use crate::run::{Figures, KvmFigures, RunDoc};

/// Runs per payload: N and 2N iterations, without and with KVM's tracepoints.
pub const RUNS_PER_PAYLOAD: usize = 4;

/// The payloads of the exact table by default: one exit kind each.
pub const DEFAULT_PAYLOADS: [&str; 5] = ["outl", "hlt", "cpuid", "rdmsr", "ept_touch"];

/// One payload's steady-state figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExactRow {
    /// The payload.
    pub payload: String,
    /// N (the runs had N and 2N iterations).
    pub n: u64,
    /// Reflected L2 exits between the two runs (`kvm_nested_vmexit_inject`); N when every
    /// iteration's exit reached L1.
    pub reflected: u64,
    /// Instructions per nested round trip (L2 exit, KVM, L1's handler, back into L2): the
    /// payload's TSC total, which counts instructions on Bochs.
    pub instructions_per_round_trip: f64,
    /// The cheapest single round trip of the 2N run (the steadier A/B figure: it excludes
    /// the emulated host's own timer interrupts).
    pub min_round_trip: Option<u64>,
    /// What recording KVM's nested tracepoints adds per round trip (instructions).
    #[serde(default)]
    pub tracepoint_instructions_per_round_trip: f64,
    /// KVM exits (L0's `exits` statistic) per reflected exit.
    pub kvm_exits_per_reflected: f64,
    /// `nested_run` (VM entries into L2 by L1) per reflected exit.
    pub nested_runs_per_reflected: f64,
    /// L2 exits that KVM handled itself (`kvm_nested_vmexit` not injected) per reflected
    /// exit.
    pub l0_handled_per_reflected: f64,
    /// L1's own exits to L0 per reflected exit, by the kernel's exit-reason name
    /// (`VMREAD`, `VMWRITE`, `VMRESUME`, ...), from `kvm_exit` of L1's vCPU.
    pub l1_exits_per_reflected: BTreeMap<String, f64>,
    /// Why there is no row, when a run failed.
    pub error: Option<String>,
}

/// The payload's TSC total over its timed loop (its mean times its iterations; the mean is
/// that total divided by the iterations, so this is exact).
fn total_cycles(j: &RunDoc) -> u64 {
    (j.latency().mean.unwrap_or(0.0) * j.iterations as f64).round() as u64
}

/// The kvm engine's figures of a run document.
fn kvm(j: &RunDoc) -> Option<&KvmFigures> {
    if let Figures::Kvm(k) = &j.figures { Some(k) } else { None }
}

/// The figures from the `run --json` documents (kvm engine) of the N and 2N runs,
/// `plain` without KVM's tracepoints and `traced` with them: instructions and KVM's
/// statistics from the plain pair, exits by level and reason from the traced pair.
#[must_use]
pub fn steady_state(payload: &str, n: u64, plain: [&RunDoc; 2], traced: [&RunDoc; 2]) -> ExactRow {
    let failed = plain.iter().chain(traced.iter()).find_map(|j| {
        let ok = j.complete && j.payload_status() == (Some(0), Some(0)) && kvm(j).is_some();
        (!ok).then(|| {
            j.error.clone().unwrap_or_else(|| {
                format!(
                    "the {} run did not complete: {}",
                    j.iterations,
                    j.outcome().map_or_else(|| "no end report".to_owned(), crate::boot::describe_outcome)
                )
            })
        })
    });
    if let Some(error) = failed {
        return ExactRow { payload: payload.to_owned(), n, error: Some(error), ..ExactRow::default() };
    }
    let (Some(ts), Some(tl)) =
        (kvm(traced[0]).and_then(|k| k.tracepoints.as_ref()), kvm(traced[1]).and_then(|k| k.tracepoints.as_ref()))
    else {
        let why = traced
            .iter()
            .find_map(|j| kvm(j).and_then(|k| k.tracepoints_unavailable.clone()))
            .unwrap_or_else(|| "no tracepoint counts".to_owned());
        return ExactRow {
            payload: payload.to_owned(),
            n,
            error: Some(format!("KVM's tracepoints: {why}")),
            ..ExactRow::default()
        };
    };
    let per = |x: u64| x as f64 / n as f64;
    let reflected = tl.nested_vmexit_inject.saturating_sub(ts.nested_vmexit_inject);
    let l0_handled = tl.l0_handled().saturating_sub(ts.l0_handled());
    let (rs, rl) = (&ts.l1_exits_by_reason, &tl.l1_exits_by_reason);
    let l1_exits_per_reflected = rl
        .keys()
        .chain(rs.keys())
        .map(|k| (k.clone(), per(rl.get(k).copied().unwrap_or(0).saturating_sub(rs.get(k).copied().unwrap_or(0)))))
        .filter(|(_, v)| *v != 0.0)
        .collect();
    let per_reflected = |x: u64| if reflected == 0 { 0.0 } else { x as f64 / reflected as f64 };
    let delta = |pair: [&RunDoc; 2], f: &dyn Fn(&RunDoc) -> u64| f(pair[1]).saturating_sub(f(pair[0]));
    let attribution = |f: fn(&KvmAttribution) -> Option<u64>| {
        move |j: &RunDoc| kvm(j).and_then(|k| k.attribution.as_ref()).and_then(f).unwrap_or(0)
    };
    let instructions = per(delta(plain, &total_cycles));
    ExactRow {
        payload: payload.to_owned(),
        n,
        reflected,
        instructions_per_round_trip: instructions,
        min_round_trip: plain[1].latency().min,
        tracepoint_instructions_per_round_trip: per(delta(traced, &total_cycles)) - instructions,
        kvm_exits_per_reflected: per_reflected(delta(plain, &attribution(|a| a.kvm_exits))),
        nested_runs_per_reflected: per_reflected(delta(plain, &attribution(|a| a.nested_runs))),
        l0_handled_per_reflected: per_reflected(l0_handled),
        l1_exits_per_reflected,
        error: None,
    }
}

/// Measure `payloads` on an emulated `host` in one boot: each with `n` and `2n` iterations
/// of the kvm engine without KVM's tracepoints (the instruction figures) and with them (the
/// exits by reason and level), each run's guest budget `timeout`.
pub async fn measure(
    host: &crate::hosts::HostSpec,
    opts: &crate::hosts::EmulatedOptions,
    l0: &std::path::Path,
    payloads: &[&str],
    n: u64,
    timeout: std::time::Duration,
) -> Result<(crate::hosts::Session, Vec<ExactRow>), crate::hosts::HostError> {
    let mut invocations = Vec::new();
    for p in payloads {
        for tracepoints in [false, true] {
            for iterations in [n, 2 * n] {
                let args = RunRequest {
                    payload: (*p).to_owned(),
                    iterations,
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    engine: EngineRequest::Kvm { tracepoints },
                }
                .args();
                invocations.push(crate::hosts::Invocation { args, deadline: timeout, files: Vec::new() });
            }
        }
    }
    let session = crate::hosts::run_all(host, opts, l0, &invocations, |_, _| {}).await?;
    let rows = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let j = |k: usize| RunDoc::of(&session.runs[RUNS_PER_PAYLOAD * i + k], Engine::Kvm, p, n << (k % 2), false);
            steady_state(p, n, [&j(0), &j(1)], [&j(2), &j(3)])
        })
        .collect();
    Ok((session, rows))
}

/// The rows as a text table (one line per payload; L1 exits by reason after it).
#[must_use]
pub fn render(title: &str, rows: &[ExactRow]) -> String {
    use std::fmt::Write;
    let mut s = format!("{title}\n");
    let _ = writeln!(
        s,
        "  {:<12} {:>6} {:>10} {:>14} {:>10} {:>10} {:>12} {:>12} {:>10}",
        "payload", "N", "reflected", "insns/exit", "min", "+tracing", "KVM exits", "nested_run", "L0-only"
    );
    for r in rows {
        if let Some(e) = &r.error {
            let _ = writeln!(s, "  {:<12} FAILED: {e}", r.payload);
            continue;
        }
        let _ = writeln!(
            s,
            "  {:<12} {:>6} {:>10} {:>14.1} {:>10} {:>10.1} {:>12.2} {:>12.2} {:>10.2}",
            r.payload,
            r.n,
            r.reflected,
            r.instructions_per_round_trip,
            r.min_round_trip.map_or("-".into(), |m| m.to_string()),
            r.tracepoint_instructions_per_round_trip,
            r.kvm_exits_per_reflected,
            r.nested_runs_per_reflected,
            r.l0_handled_per_reflected
        );
        let l1: Vec<String> = r.l1_exits_per_reflected.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        let _ = writeln!(
            s,
            "  {:<12} L1 exits per reflected exit: {}",
            "",
            if l1.is_empty() { "none".into() } else { l1.join(", ") }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use nestbench_protocol::kvm_engine::NestedCounts;

    fn doc(iterations: u64, mean: f64, kvm_exits: u64, inject: u64, vmexit: u64, vmread: u64) -> RunDoc {
        let f = KvmFigures {
            l1: crate::run::L1View { payload_status: Some(0), ..Default::default() },
            kvm_intel_params: None,
            kvm_amd_params: None,
            vmx_msrs: None,
            attribution: Some(KvmAttribution {
                kvm_exits: Some(kvm_exits),
                nested_runs: Some(inject),
                ..KvmAttribution::default()
            }),
            tracepoints: Some(NestedCounts {
                nested_vmexit_inject: inject,
                nested_vmexit: vmexit,
                l1_exits_by_reason: BTreeMap::from([
                    ("VMREAD".into(), vmread),
                    ("VMRESUME".into(), inject),
                    ("CPUID".into(), 9),
                ]),
                ..NestedCounts::default()
            }),
            tracepoints_unavailable: None,
            l0_only_exits: None,
            reflected_exits: None,
            l1_traps: None,
            kvm_exits_per_reflected_exit: None,
            latency_cycles: crate::run::Latency { mean: Some(mean), min: Some(17000), ..Default::default() },
            payload_failures: Some(0),
            kvm_stats: None,
            time_ns: crate::run::TimeNs::default(),
            console: Vec::new(),
        };
        RunDoc {
            run_json_version: crate::run::RUN_JSON_VERSION,
            engine: Engine::Kvm,
            payload: "outl".into(),
            iterations,
            complete: true,
            incomplete: None,
            figures: Figures::Kvm(Box::new(f)),
            error: None,
            host: None,
            trace: None,
        }
    }

    #[test]
    fn set_up_cancels_and_figures_are_per_reflected_exit() {
        // 50 vs 100 iterations: 2 KVM exits, 4 VMREADs and 1 L0-handled exit per iteration
        // on top of a set-up that is the same in both runs.
        let small = doc(50, 18_000.0, 200 + 100, 51, 59, 10 + 200);
        let large = doc(100, 17_600.0, 200 + 200, 101, 59 + 100, 10 + 400);
        let r = steady_state("outl", 50, [&small, &large], [&small, &large]);
        assert_eq!(r.tracepoint_instructions_per_round_trip, 0.0);
        let traced_large = doc(100, 18_600.0, 200 + 200, 101, 59 + 100, 10 + 400);
        let t = steady_state("outl", 50, [&small, &large], [&small, &traced_large]);
        assert_eq!(t.tracepoint_instructions_per_round_trip, (1_860_000.0 - 1_760_000.0) / 50.0);
        assert_eq!(
            t.instructions_per_round_trip, r.instructions_per_round_trip,
            "instructions come from the plain pair"
        );
        assert_eq!(r.error, None);
        assert_eq!(r.reflected, 50);
        assert_eq!(r.instructions_per_round_trip, (1_760_000.0 - 900_000.0) / 50.0);
        assert_eq!(r.kvm_exits_per_reflected, 2.0);
        assert_eq!(r.l0_handled_per_reflected, 1.0);
        assert_eq!(r.l1_exits_per_reflected, BTreeMap::from([("VMREAD".into(), 4.0), ("VMRESUME".into(), 1.0)]));
        assert!(render("t", &[r]).contains("VMREAD 4.00, VMRESUME 1.00"));
    }

    #[test]
    fn a_failed_run_or_missing_tracepoints_give_no_figures() {
        let mut bad = doc(50, 1.0, 1, 1, 1, 1);
        bad.complete = false;
        bad.error = Some("KVM refused".into());
        let good = doc(100, 1.0, 1, 1, 1, 1);
        let r = steady_state("hlt", 50, [&bad, &good], [&good, &good]);
        assert_eq!(r.error.as_deref(), Some("KVM refused"));
        let mut no_tp = doc(100, 1.0, 1, 1, 1, 1);
        if let Figures::Kvm(k) = &mut no_tp.figures {
            k.tracepoints = None;
            k.tracepoints_unavailable = Some("tracefs is not mounted".into());
        }
        let small = doc(50, 1.0, 1, 1, 1, 1);
        assert!(
            steady_state("hlt", 50, [&small, &good], [&small, &no_tp])
                .error
                .unwrap()
                .contains("tracefs is not mounted")
        );
        assert!(
            render("t", &[steady_state("hlt", 50, [&bad, &bad], [&bad, &bad])])
                .contains("hlt          FAILED: KVM refused")
        );
    }
}
