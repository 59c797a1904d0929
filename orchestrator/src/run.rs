//! `nestbench run` and `nestbench payloads`: one payload on one engine, through an
//! `nestbench-l0` child, summarised as the JSON (and a few lines of text).

use std::fmt::Write;

use std::collections::BTreeMap;

use nestbench_protocol::bochs::BochsSection;
use nestbench_protocol::events::{Engine, ExitRecord, KvmStats, Outcome, PayloadResults};
use nestbench_protocol::kvm_engine::{KvmAttribution, KvmVmxMsr, NestedCounts};
use serde::Serialize;
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

/// A log2 bucket's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Inclusive.
    pub lower: u64,
    /// Exclusive.
    pub upper: u64,
}

/// Per-iteration figures from the payload's results page (cycles; instructions on Bochs).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Mean (`None` without iterations).
    pub mean: Option<f64>,
    /// Smallest.
    pub min: Option<u64>,
    /// Largest.
    pub max: Option<u64>,
    /// The log2 bucket of the median.
    pub p50: Option<Bucket>,
    /// The log2 bucket of the 99th percentile.
    pub p99: Option<Bucket>,
    /// `(bucket, count)` of the non-empty buckets.
    pub histogram_log2: Option<Vec<(usize, u64)>>,
    /// Iterations.
    pub samples: u64,
}

impl Latency {
    fn of(r: Option<&PayloadResults>) -> Self {
        let Some(r) = r else { return Self::default() };
        let hist: Vec<(u64, u64)> = r.hist.iter().map(|&(b, c)| (b as u64, c)).collect();
        let bucket = |q| percentile_bucket(&hist, q).map(|(lower, upper)| Bucket { lower, upper });
        Self {
            mean: (r.iterations > 0).then(|| r.total_cycles as f64 / r.iterations as f64),
            min: Some(r.min_cycles),
            max: Some(r.max_cycles),
            p50: bucket(0.5),
            p99: bucket(0.99),
            histogram_log2: Some(r.hist.clone()),
            samples: r.iterations,
        }
    }
}

/// KVM exits of a nested soft-engine run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KvmExitCounts {
    /// KVM_RUN returns of L1's VM.
    pub l1_vm: Option<u64>,
    /// KVM_RUN returns of VM2 (L2).
    pub l2_vm: Option<u64>,
    /// Both per reflected exit.
    pub per_reflected_exit: Option<f64>,
}

/// Time per layer, ns.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TimeNs {
    /// L0 (outside any KVM_RUN, between a reflected exit and the next entry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l0: Option<u64>,
    /// L1 (its KVM_RUN between a reflected exit and the next entry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l1: Option<u64>,
    /// L2 (VM2's KVM_RUN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2: Option<u64>,
    /// The run's wall time.
    pub wall: Option<u64>,
}

/// What L1 reported about the payload, on every engine with L1.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct L1View {
    /// How the run ended.
    pub outcome: Option<Outcome>,
    /// The payload's status.
    pub payload_status: Option<u64>,
    /// L2 exits L1 handled, by the kernel's reason name.
    pub exits: Option<BTreeMap<String, u64>>,
    /// The first exit records.
    pub exit_records: Option<Vec<ExitRecord>>,
}

impl L1View {
    fn of(run: &ChildRun) -> Self {
        let p = run.payload_run();
        Self {
            outcome: run.report().map(|r| r.outcome.clone()),
            payload_status: p.map(|p| p.status),
            exits: p.map(|p| p.exits.clone()),
            exit_records: p.map(|p| p.exit_records.clone()),
        }
    }
}

/// The soft engine's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SoftFigures {
    /// VMCS shadowing.
    pub vmcs_shadowing: bool,
    /// L1's view.
    #[serde(flatten)]
    pub l1: L1View,
    /// L2 exits reflected to L1.
    pub reflected_exits: u64,
    /// By reason.
    pub reflected_exits_by_reason: Option<BTreeMap<String, u64>>,
    /// L2 exits L0 handled alone.
    pub l0_only_exits: Option<u64>,
    /// KVM exits.
    pub kvm_exits: KvmExitCounts,
    /// L1's exits between reflected exits and the next entry.
    pub l1_traps: Option<u64>,
    /// Per reflected exit L1 resumed from.
    pub l1_traps_per_reflected_exit: Option<f64>,
    /// L1's VMREAD/VMWRITE executions while handling exits.
    pub l1_vmx_accesses: Option<u32>,
    /// L0's VMX hypercalls by operation.
    pub l0_vmx_hypercalls: Option<BTreeMap<String, u64>>,
    /// Failed VM entries by outcome.
    pub entry_failures: Option<BTreeMap<String, u64>>,
    /// VM2's memslots.
    pub memslots: Option<u64>,
    /// Time per layer.
    pub time_ns: TimeNs,
    /// Per iteration.
    pub latency_cycles: Latency,
    /// Failed payload checks.
    pub payload_failures: Option<u64>,
    /// KVM statistics deltas.
    pub kvm_stats: Option<KvmStats>,
    /// L1's console.
    pub console: Vec<String>,
}

/// The kvm engine's figures (L1 on the kernel's nested VMX).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KvmFigures {
    /// L1's view.
    #[serde(flatten)]
    pub l1: L1View,
    /// kvm_intel's parameters.
    pub kvm_intel_params: Option<BTreeMap<String, String>>,
    /// kvm_amd's parameters (AMD hosts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kvm_amd_params: Option<BTreeMap<String, String>>,
    /// The VMX capability MSRs L1 saw.
    pub vmx_msrs: Option<Vec<KvmVmxMsr>>,
    /// From KVM's statistics.
    pub attribution: Option<KvmAttribution>,
    /// From KVM's tracepoints.
    pub tracepoints: Option<NestedCounts>,
    /// Why there are none.
    pub tracepoints_unavailable: Option<String>,
    /// L2 exits KVM handled alone (tracepoints).
    pub l0_only_exits: Option<u64>,
    /// L2 exits reflected to L1 (tracepoints).
    pub reflected_exits: Option<u64>,
    /// L1's own exits (tracepoints).
    pub l1_traps: Option<u64>,
    /// From the statistics.
    pub kvm_exits_per_reflected_exit: Option<f64>,
    /// Per iteration.
    pub latency_cycles: Latency,
    /// Failed payload checks.
    pub payload_failures: Option<u64>,
    /// KVM statistics deltas.
    pub kvm_stats: Option<KvmStats>,
    /// Wall time.
    pub time_ns: TimeNs,
    /// L1's console.
    pub console: Vec<String>,
}

/// A single-level run's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SingleFigures {
    /// The payload's status.
    pub payload_status: Option<u64>,
    /// How it ended if not through DONE_PORT.
    pub problem: Option<String>,
    /// KVM exits by kind.
    pub kvm_exits: Option<BTreeMap<String, u64>>,
    /// Per iteration.
    pub latency_cycles: Latency,
    /// Failed payload checks.
    pub payload_failures: Option<u64>,
    /// Wall time.
    pub time_ns: TimeNs,
}

/// A Bochs run's figures: L1 as the root hypervisor, instructions not time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BochsFigures {
    /// The CPU model.
    pub cpu_model: Option<String>,
    /// L1's view.
    #[serde(flatten)]
    pub l1: L1View,
    /// Instructions between the payload's two RDTSCs, per iteration.
    pub instructions_per_iteration: Latency,
    /// Instructions Bochs executed.
    pub instructions_total: Option<u64>,
    /// Failed payload checks.
    pub payload_failures: Option<u64>,
    /// What the Bochs engine saw.
    pub bochs: Option<BochsSection>,
}

/// The engine-specific part of a [`RunDoc`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Figures {
    /// `soft`.
    Soft(Box<SoftFigures>),
    /// `kvm`.
    Kvm(Box<KvmFigures>),
    /// `single_level`.
    SingleLevel(Box<SingleFigures>),
    /// `bochs`.
    Bochs(Box<BochsFigures>),
}

/// The `run --json` document (version [`RUN_JSON_VERSION`]): one payload on one engine,
/// built from the typed stream, and the one summary `bench` digests.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunDoc {
    /// [`RUN_JSON_VERSION`].
    pub run_json_version: u32,
    /// The engine.
    pub engine: Engine,
    /// The payload.
    pub payload: String,
    /// Its iterations.
    pub iterations: u64,
    /// Whether the stream ended with `end` or `error`.
    pub complete: bool,
    /// Why not, for a person.
    pub incomplete: Option<String>,
    /// The engine's figures.
    #[serde(flatten)]
    pub figures: Figures,
    /// l0's `error` message.
    pub error: Option<String>,
    /// The emulated host it ran on (`--host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<crate::hosts::HostDoc>,
    /// The exit trace (`--trace`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Value>,
}

impl RunDoc {
    /// The document of `run` on `engine` (`shadowing`: the soft engine's VMCS shadowing).
    #[must_use]
    pub fn of(run: &ChildRun, engine: Engine, payload: &str, iterations: u64, shadowing: bool) -> Self {
        let figures = match engine {
            Engine::Soft => Figures::Soft(Box::new(soft_figures(run, shadowing))),
            Engine::Kvm => Figures::Kvm(Box::new(kvm_figures(run))),
            Engine::SingleLevel => Figures::SingleLevel(Box::new(single_figures(run))),
            Engine::Bochs => Figures::Bochs(Box::new(bochs_figures(run))),
        };
        Self {
            run_json_version: RUN_JSON_VERSION,
            engine,
            payload: payload.to_owned(),
            iterations,
            complete: run.complete(),
            incomplete: run.why_incomplete(),
            figures,
            error: run.error().map(str::to_owned),
            host: None,
            trace: None,
        }
    }

    /// The payload's status and its failed checks, on every engine.
    #[must_use]
    pub fn payload_status(&self) -> (Option<u64>, Option<u64>) {
        match &self.figures {
            Figures::Soft(f) => (f.l1.payload_status, f.payload_failures),
            Figures::Kvm(f) => (f.l1.payload_status, f.payload_failures),
            Figures::SingleLevel(f) => (f.payload_status, f.payload_failures),
            Figures::Bochs(f) => (f.l1.payload_status, f.payload_failures),
        }
    }

    /// How the run with L1 ended (`None` single-level or without a report).
    #[must_use]
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.figures {
            Figures::Soft(f) => f.l1.outcome.as_ref(),
            Figures::Kvm(f) => f.l1.outcome.as_ref(),
            Figures::Bochs(f) => f.l1.outcome.as_ref(),
            Figures::SingleLevel(_) => None,
        }
    }

    /// Per-iteration figures.
    #[must_use]
    pub fn latency(&self) -> &Latency {
        match &self.figures {
            Figures::Soft(f) => &f.latency_cycles,
            Figures::Kvm(f) => &f.latency_cycles,
            Figures::SingleLevel(f) => &f.latency_cycles,
            Figures::Bochs(f) => &f.instructions_per_iteration,
        }
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn soft_figures(run: &ChildRun, shadowing: bool) -> SoftFigures {
    let report = run.report();
    let soft = report.and_then(|r| r.soft.as_ref());
    let p = run.payload_run();
    let reflected = soft.map_or(0, |s| s.reflected_total);
    let l1_vm = report.map(|r| r.kvm_exits_total);
    let l2_vm = soft.map(|s| s.l2_kvm_exits);
    SoftFigures {
        vmcs_shadowing: shadowing,
        l1: L1View::of(run),
        reflected_exits: reflected,
        reflected_exits_by_reason: soft.map(|s| s.reflected_exits.clone()),
        l0_only_exits: soft.map(|s| s.l0_only_exits),
        kvm_exits: KvmExitCounts {
            l1_vm,
            l2_vm,
            per_reflected_exit: ratio(l1_vm.unwrap_or(0) + l2_vm.unwrap_or(0), reflected),
        },
        l1_traps: soft.map(|s| s.l1_traps),
        l1_traps_per_reflected_exit: soft.and_then(|s| ratio(s.l1_traps, s.reflected_resumed)),
        l1_vmx_accesses: p.map(|p| p.vmx_accesses),
        l0_vmx_hypercalls: soft.map(|s| s.vmx_hypercalls.clone()),
        entry_failures: soft.map(|s| s.entry_failures.clone()),
        memslots: soft.map(|s| s.memslots),
        time_ns: TimeNs {
            l0: soft.map(|s| s.l0_ns),
            l1: soft.map(|s| s.l1_ns),
            l2: soft.map(|s| s.l2_ns),
            wall: report.map(|r| r.wall_ns),
        },
        latency_cycles: Latency::of(p.and_then(|p| p.results.as_ref())),
        payload_failures: p.and_then(|p| p.results.as_ref()).map(|r| r.failures),
        kvm_stats: report.and_then(|r| r.kvm_stats.clone()),
        console: run.console().map(str::to_owned).collect(),
    }
}

fn kvm_figures(run: &ChildRun) -> KvmFigures {
    let report = run.report();
    let k = report.and_then(|r| r.kvm_engine.as_ref());
    let tp = k.and_then(|k| k.tracepoints.as_ref());
    let p = run.payload_run();
    KvmFigures {
        l1: L1View::of(run),
        kvm_intel_params: k.map(|k| k.kvm_intel_params.clone()),
        kvm_amd_params: k.map(|k| k.kvm_amd_params.clone()).filter(|m| !m.is_empty()),
        vmx_msrs: k.map(|k| k.vmx_msrs.clone()),
        attribution: k.map(|k| k.attribution.clone()),
        tracepoints: tp.cloned(),
        tracepoints_unavailable: k.and_then(|k| k.tracepoints_unavailable.clone()),
        l0_only_exits: tp.map(NestedCounts::l0_handled),
        reflected_exits: tp.map(|t| t.nested_vmexit_inject),
        l1_traps: tp.map(NestedCounts::l1_exits),
        kvm_exits_per_reflected_exit: k.and_then(|k| k.attribution.kvm_exits_per_reflected_exit),
        latency_cycles: Latency::of(p.and_then(|p| p.results.as_ref())),
        payload_failures: p.and_then(|p| p.results.as_ref()).map(|r| r.failures),
        kvm_stats: report.and_then(|r| r.kvm_stats.clone()),
        time_ns: TimeNs { wall: report.map(|r| r.wall_ns), ..TimeNs::default() },
        console: run.console().map(str::to_owned).collect(),
    }
}

fn single_figures(run: &ChildRun) -> SingleFigures {
    let r = run.single_level();
    SingleFigures {
        payload_status: r.map(|r| r.status),
        problem: r.and_then(|r| r.problem.clone()),
        kvm_exits: r.map(|r| r.kvm_exits.clone()),
        latency_cycles: Latency::of(r.and_then(|r| r.results.as_ref())),
        payload_failures: r.and_then(|r| r.results.as_ref()).map(|x| x.failures),
        time_ns: TimeNs { wall: r.map(|r| r.wall_ns), ..TimeNs::default() },
    }
}

/// Bochs is L1's root hypervisor: its figures are L1 instructions per exit on a CPU that
/// executes VMX, never a nested cost (Bochs' TSC counts instructions with `clock:
/// sync=none`, so the payload's cycles are instructions).
fn bochs_figures(run: &ChildRun) -> BochsFigures {
    let bochs = run.report().and_then(|r| r.bochs.clone());
    let p = run.payload_run();
    BochsFigures {
        cpu_model: bochs.as_ref().map(|b| b.model.clone()),
        l1: L1View::of(run),
        instructions_per_iteration: Latency::of(p.and_then(|p| p.results.as_ref())),
        instructions_total: bochs.as_ref().and_then(|b| b.instructions),
        payload_failures: p.and_then(|p| p.results.as_ref()).map(|r| r.failures),
        bochs,
    }
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

/// A number, `null` when absent.
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

/// A ratio with two decimals, `null` when absent.
fn fmt_num(v: Option<f64>) -> String {
    v.map_or_else(|| "null".to_owned(), |f| format!("{f:.2}"))
}

/// A map as JSON (as the text output always showed it).
fn map<T: Serialize>(m: Option<&T>) -> String {
    m.and_then(|m| serde_json::to_string(m).ok()).unwrap_or_else(|| "null".to_owned())
}

fn describe(o: Option<&Outcome>) -> String {
    o.map_or_else(|| "none (no end report)".to_owned(), crate::boot::describe_outcome)
}

/// A few lines for the terminal.
#[must_use]
pub fn render(j: &RunDoc) -> String {
    if let Figures::Bochs(b) = &j.figures {
        return render_bochs(j, b);
    }
    let mut s = String::new();
    let (status, failures) = j.payload_status();
    // Nothing measured: no screen of nulls, just what happened (l0 refused the run, or its
    // child ended without a result).
    let nothing = match (&j.error, &j.incomplete) {
        _ if status.is_some() => None,
        (Some(e), _) => Some(format!("not run: {e}")),
        (None, Some(why)) => Some(format!("no result: {why}")),
        (None, None) => None,
    };
    if let Some(what) = nothing {
        let _ = writeln!(s, "{} on {}: {what}", j.payload, j.engine);
        return s;
    }
    let _ = writeln!(
        s,
        "{} on {} ({} iterations{})",
        j.payload,
        j.engine,
        j.iterations,
        match &j.figures {
            Figures::Soft(f) => format!(", VMCS shadowing {}", if f.vmcs_shadowing { "on" } else { "off" }),
            _ => String::new(),
        }
    );
    if let Some(h) = &j.host {
        let (ready, session) = h.boot.as_ref().map_or((None, f64::NAN), |b| (b.boot_to_ready_s, b.session_s));
        let _ = writeln!(
            s,
            "  host           {}; boot to ready {:.1} s, session {:.1} s wall",
            h.summary(),
            ready.unwrap_or(f64::NAN),
            session
        );
    }
    let lat = j.latency();
    let _ = writeln!(
        s,
        "  latency        mean {} cycles, min {}, max {}, p50 < {}, p99 < {} (log2 buckets)",
        fmt_num(lat.mean),
        opt(lat.min),
        opt(lat.max),
        opt(lat.p50.map(|b| b.upper)),
        opt(lat.p99.map(|b| b.upper))
    );
    match &j.figures {
        Figures::Soft(f) => {
            let _ = writeln!(s, "  L2 exits (L1)  {}", map(f.l1.exits.as_ref()));
            let _ = writeln!(s, "  reflected      {} (L0-only {})", f.reflected_exits, opt(f.l0_only_exits));
            let _ = writeln!(
                s,
                "  KVM exits      L1 VM {}, L2 VM {}, per reflected exit {}",
                opt(f.kvm_exits.l1_vm),
                opt(f.kvm_exits.l2_vm),
                fmt_num(f.kvm_exits.per_reflected_exit)
            );
            let _ = writeln!(
                s,
                "  L1 traps       {} per reflected exit; L0 VMX hypercalls {}",
                fmt_num(f.l1_traps_per_reflected_exit),
                map(f.l0_vmx_hypercalls.as_ref())
            );
            let _ = writeln!(
                s,
                "  time           L0 {} ns, L1 {} ns, L2 {} ns (wall {} ns)",
                opt(f.time_ns.l0),
                opt(f.time_ns.l1),
                opt(f.time_ns.l2),
                opt(f.time_ns.wall)
            );
            let _ = writeln!(s, "  outcome        {}", describe(f.l1.outcome.as_ref()));
        }
        Figures::Kvm(f) => {
            let a = f.attribution.as_ref();
            let _ = writeln!(s, "  L2 exits (L1)  {}", map(f.l1.exits.as_ref()));
            let _ = writeln!(
                s,
                "  KVM (stats)    exits {}, nested_run {}, per L2 exit L1 handled {}",
                opt(a.and_then(|a| a.kvm_exits)),
                opt(a.and_then(|a| a.nested_runs)),
                fmt_num(a.and_then(|a| a.kvm_exits_per_reflected_exit))
            );
            match &f.tracepoints_unavailable {
                Some(why) => {
                    let _ = writeln!(s, "  tracepoints    unavailable: {why}");
                }
                None => {
                    let _ = writeln!(
                        s,
                        "  tracepoints    L2 exits {}, reflected {}, L0-only {}, L1 exits {}",
                        opt(f.tracepoints.as_ref().map(|t| t.nested_vmexit)),
                        opt(f.reflected_exits),
                        opt(f.l0_only_exits),
                        opt(f.l1_traps)
                    );
                    if let Some(t) = f.tracepoints.as_ref().filter(|t| !t.vmenter_failed.is_empty()) {
                        let _ =
                            writeln!(s, "  entry failed   KVM's consistency checks: {}", t.vmenter_failed.join("; "));
                    }
                }
            }
            if let Some(amd) = &f.kvm_amd_params {
                let p = |k: &str| amd.get(k).map_or("null", String::as_str);
                let _ = writeln!(
                    s,
                    "  kvm_amd        nested={} npt={} nrips={} vgif={} avic={} lbrv={} vls={}",
                    p("nested"),
                    p("npt"),
                    p("nrips"),
                    p("vgif"),
                    p("avic"),
                    p("lbrv"),
                    p("vls")
                );
            } else {
                let p = |k: &str| f.kvm_intel_params.as_ref().and_then(|m| m.get(k)).map_or("null", String::as_str);
                let _ = writeln!(
                    s,
                    "  kvm_intel      nested={} ept={} enable_shadow_vmcs={}",
                    p("nested"),
                    p("ept"),
                    p("enable_shadow_vmcs")
                );
            }
            let _ = writeln!(s, "  outcome        {}", describe(f.l1.outcome.as_ref()));
        }
        Figures::SingleLevel(f) => {
            let _ = writeln!(s, "  KVM exits      {}", map(f.kvm_exits.as_ref()));
        }
        Figures::Bochs(_) => {}
    }
    let _ = writeln!(s, "  payload        status {}, failures {}", opt(status), opt(failures));
    render_tail(&mut s, j);
    s
}

fn render_tail(s: &mut String, j: &RunDoc) {
    if let Some(e) = &j.error {
        let _ = writeln!(s, "  error          {e}");
    }
    if !j.complete {
        let _ = writeln!(s, "  PARTIAL: {}", j.incomplete.as_deref().unwrap_or("l0 did not finish the run"));
    }
}

fn render_bochs(j: &RunDoc, b: &BochsFigures) -> String {
    let mut s = String::new();
    let i = &b.instructions_per_iteration;
    let _ = writeln!(
        s,
        "{} on bochs {} ({} iterations): L1 on a CPU that executes VMX or SVM; figures are instructions, not a nested cost",
        j.payload,
        b.cpu_model.as_deref().unwrap_or("?"),
        j.iterations
    );
    let _ = writeln!(
        s,
        "  per iteration  mean {} instructions between the payload's two RDTSCs (exit, L1 handler, entry), min {}, max {}",
        fmt_num(i.mean),
        opt(i.min),
        opt(i.max)
    );
    let _ = writeln!(s, "  L2 exits (L1)  {}", map(b.l1.exits.as_ref()));
    let _ = writeln!(
        s,
        "  total          {} instructions; outcome {}",
        opt(b.instructions_total),
        describe(b.l1.outcome.as_ref())
    );
    let _ = writeln!(s, "  payload        status {}, failures {}", opt(b.l1.payload_status), opt(b.payload_failures));
    render_tail(&mut s, j);
    s
}

/// `nestbench payloads`: every payload and which engines run it, per vendor (`kvm` is the
/// kvm engine on nested VMX, `kvm_svm` on nested SVM).
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
                    "bochs": match m.vendors.vmx() {
                        Ok(()) => json!({ "runs": true }),
                        Err(why) => json!({ "runs": false, "reason": why }),
                    },
                    "kvm": match (m.vendors.vmx(), wedge) {
                        (Err(why), _) => json!({ "runs": false, "reason": why }),
                        (Ok(()), None) => json!({ "runs": true, "reason": "where KVM offers nested VMX (kvm_intel nested=1; here: --host bochs)" }),
                        (Ok(()), Some((_, why))) => json!({ "runs": true, "reason": format!("where KVM offers nested VMX, but not on --host bochs: {why}") }),
                    },
                    "kvm_svm": match m.vendors.svm() {
                        Ok(()) => json!({ "runs": true, "reason": "where KVM offers nested SVM (kvm_amd nested=1; here: --host qemu)" }),
                        Err(why) => json!({ "runs": false, "reason": why }),
                    },
                },
            })
        })
        .collect();
    let limits = l0::soft::l2vm::MEMSLOT_LIMITS;
    if json {
        let aliases: serde_json::Map<String, Value> =
            l2_payloads::NPT_ALIASES.iter().map(|(a, r)| ((*a).to_owned(), json!(r))).collect();
        return serde_json::to_string_pretty(
            &json!({ "payloads": rows, "npt_aliases": aliases, "soft_engine_memslot_limits": limits }),
        )
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
        for e in ["soft", "single_level", "bochs", "kvm", "kvm_svm"] {
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
    let aliases: Vec<String> = l2_payloads::NPT_ALIASES.iter().map(|(a, r)| format!("{a} = {r}")).collect();
    let _ = writeln!(s, "\nOn SVM the EPT payloads run on NPT12 unchanged; their SVM names: {}", aliases.join(", "));
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
