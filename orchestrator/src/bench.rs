//! `nestbench bench`: the default matrix on every engine this host can run, with
//! kvm-unit-tests style calibration, warm-up and repetitions, each run in its own
//! `nestbench-l0` child; the results go to `results/runs/<timestamp>-<host>/` atomically.
//!
//! The matrix, per payload (any list the manifests hold):
//!
//! * `soft`: nested with VMCS shadowing on and off, and the single-level twin (the same image
//!   as a plain KVM guest of L0), unless the manifest says the soft engine cannot run it;
//! * `bochs` (when installed): L1 as root hypervisor, figures in instructions per iteration;
//! * `kvm` (where the host's KVM offers nested VMX): L1 on KVM's nVMX, with KVM's own exit
//!   counts; elsewhere skipped with doctor's reason.
//!
//! Timing: iterations are doubled from `start_iterations` until one run's loop spans at least
//! 2^k cycles (judged as the fastest iteration times the count, so a preempted iteration does
//! not end calibration early; those calibration runs are the warm-up), then `repetitions`
//! runs of that size are measured. A payload that does fewer iterations than asked (it
//! caps its work) is measured at what it does. Runs are sequential: two cores, and timing must not share them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nestbench_protocol::events::{Engine, KvmStats, Outcome};
use nestbench_protocol::request::{EngineRequest, RunRequest, TraceRequest};
use serde_json::Value;

use crate::doctor::EngineStatus;
use crate::l0_child::{self, ChildRun, Interruption};
use crate::results::{
    self, CalibrationStep, Config, ConfigResult, EngineEntry, ExitMultiplication, Exits, PerLevel, Profile, Repetition,
    Skipped, Summary, Tsc,
};
use crate::run::{Figures, RunDoc};

/// `results/schema/summary.schema.json`, built in.
pub const SCHEMA: &str = include_str!("../../results/schema/summary.schema.json");

/// The CI profile: short loops, few repetitions (minutes on a 2-core machine).
#[must_use]
pub fn quick_profile() -> Profile {
    Profile {
        name: "quick".into(),
        repetitions: 7,
        warmup: 0,
        target_log2_cycles: 25,
        target_log2_instructions: 16,
        start_iterations: 8,
        max_iterations: 1 << 22,
        max_run_wall_ms: 250,
    }
}

/// The default profile.
#[must_use]
pub fn full_profile() -> Profile {
    Profile {
        name: "full".into(),
        repetitions: 10,
        warmup: 1,
        target_log2_cycles: 29,
        target_log2_instructions: 20,
        start_iterations: 16,
        max_iterations: 1 << 24,
        max_run_wall_ms: 2_000,
    }
}

/// One configuration to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The engine.
    pub engine: Engine,
    /// The payload.
    pub payload: String,
    /// VMCS shadowing for nested runs.
    pub shadowing: Option<bool>,
    /// The payload ignores requested iterations and always does this many.
    pub fixed_iterations: Option<u64>,
    /// Iterations to use instead of calibrating (the baseline's, so counts compare exactly).
    pub pinned_iterations: Option<u64>,
}

impl Planned {
    fn config(&self) -> Config {
        match self.engine {
            Engine::Bochs => Config::Bochs,
            Engine::SingleLevel => Config::SingleLevel,
            Engine::Soft | Engine::Kvm => Config::Nested,
        }
    }

    fn id(&self) -> String {
        results::config_id(self.engine, &self.payload, self.shadowing)
    }
}

/// The plan: configurations in run order, what is skipped and why, and each engine's entry.
#[derive(Debug)]
pub struct Plan {
    /// Configurations, soft engine (per payload: single-level, shadowing on, off) first.
    pub configs: Vec<Planned>,
    /// Skipped engines and payloads.
    pub skipped: Vec<Skipped>,
    /// Every engine.
    pub engines: Vec<EngineEntry>,
}

/// Build the matrix from doctor's engine verdicts, the engines asked for (`None`: every one
/// this host can run) and the payloads.
#[must_use]
pub fn plan(engines: &[EngineStatus], wanted: Option<&[String]>, payloads: &[&l2_payloads::Manifest]) -> Plan {
    let mut p = Plan { configs: Vec::new(), skipped: Vec::new(), engines: Vec::new() };
    for e in engines {
        let asked = wanted.is_none_or(|w| w.iter().any(|x| x == e.engine.name()));
        let runnable = e.can_run && e.implemented;
        let benched = asked && runnable;
        let reason = if !asked {
            "not asked for (--engines)".to_owned()
        } else if !e.can_run {
            e.reason.clone()
        } else if !e.implemented {
            format!("this host can run it, but nestbench has not built the {} engine yet ({})", e.engine, e.reason)
        } else {
            e.reason.clone()
        };
        if asked && !runnable {
            p.skipped.push(Skipped { engine: e.engine, payload: None, reason: reason.clone() });
        }
        p.engines.push(EngineEntry {
            engine: e.engine,
            can_run: e.can_run,
            implemented: e.implemented,
            benched,
            reason,
        });
        if !benched {
            continue;
        }
        for m in payloads {
            let fixed = m.fixed_iterations;
            match e.engine {
                Engine::Soft => match m.soft_engine {
                    l2_payloads::Support::Runs => {
                        let twin = match m.single_level {
                            l2_payloads::Twin::Same => Some((Engine::SingleLevel, None)),
                            l2_payloads::Twin::None { reason } => {
                                p.skipped.push(Skipped {
                                    engine: Engine::SingleLevel,
                                    payload: Some(m.name.into()),
                                    reason: format!("no single-level twin: {reason}"),
                                });
                                None
                            }
                        };
                        for (engine, shadowing) in
                            twin.into_iter().chain([(Engine::Soft, Some(true)), (Engine::Soft, Some(false))])
                        {
                            p.configs.push(Planned {
                                engine,
                                payload: m.name.into(),
                                shadowing,
                                fixed_iterations: fixed,
                                pinned_iterations: None,
                            });
                        }
                    }
                    l2_payloads::Support::Unsupported { reason } => p.skipped.push(Skipped {
                        engine: Engine::Soft,
                        payload: Some(m.name.into()),
                        reason: format!("{reason} (its single-level twin is skipped with it)"),
                    }),
                },
                Engine::Kvm | Engine::Bochs => match if e.svm { m.vendors.svm() } else { m.vendors.vmx() } {
                    Ok(()) => p.configs.push(Planned {
                        engine: e.engine,
                        payload: m.name.into(),
                        shadowing: None,
                        fixed_iterations: fixed,
                        pinned_iterations: None,
                    }),
                    Err(reason) => p.skipped.push(Skipped {
                        engine: e.engine,
                        payload: Some(m.name.into()),
                        reason: format!("{} only: {reason}", if e.svm { "VMX" } else { "SVM" }),
                    }),
                },
                Engine::SingleLevel => p.skipped.push(Skipped {
                    engine: e.engine,
                    payload: Some(m.name.into()),
                    reason: "single-level runs are the soft engine's twins, not an engine of their own".into(),
                }),
            }
        }
    }
    p
}

/// How to run children.
#[derive(Clone, Debug)]
pub struct Runner {
    /// The `nestbench-l0` binary.
    pub l0: PathBuf,
    /// The guest's budget per run (l0's watchdog); the child is killed 10 s after it.
    pub timeout_ms: u64,
    /// Bochs' CPU model.
    pub cpu_model: String,
}

impl Runner {
    /// The run of configuration `c` with `iterations` (`trace`: with L1's exit trace).
    fn request(&self, c: &Planned, iterations: u64, trace: bool) -> RunRequest {
        let engine = match c.engine {
            Engine::Soft => EngineRequest::Soft {
                vmcs_shadowing: c.shadowing != Some(false),
                trace: trace.then(TraceRequest::default),
            },
            Engine::Kvm => EngineRequest::Kvm { tracepoints: true },
            Engine::Bochs => EngineRequest::Bochs { cpu_model: self.cpu_model.clone() },
            Engine::SingleLevel => EngineRequest::SingleLevel,
        };
        RunRequest { payload: c.payload.clone(), iterations, timeout_ms: self.timeout_ms, engine }
    }

    fn args(&self, c: &Planned, iterations: u64) -> Vec<String> {
        self.request(c, iterations, false).args()
    }
}

/// One finished child run, digested.
struct OneRun {
    rep: Repetition,
    exits: Exits,
    mult: Option<ExitMultiplication>,
    insn_emulation: Option<u64>,
}

/// Why a child run does not count, in words.
fn failure(child: &ChildRun, doc: &RunDoc) -> Option<String> {
    if child.interrupted == Some(Interruption::Interrupted) {
        return Some("interrupted (Ctrl-C); nestbench-l0 was stopped".into());
    }
    if let Some(e) = child.error().filter(|_| child.complete()) {
        return Some(format!("nestbench-l0: {e}"));
    }
    if let Some(why) = child.why_incomplete() {
        return Some(why);
    }
    match (&doc.figures, doc.outcome()) {
        (Figures::SingleLevel(f), _) => {
            if let Some(p) = &f.problem {
                return Some(format!("the single-level run failed: {p:?}"));
            }
        }
        (_, Some(Outcome::Exited { .. })) => {}
        (_, o) => {
            return Some(format!(
                "the run failed: {}",
                o.map_or_else(|| "no end report".to_owned(), crate::boot::describe_outcome)
            ));
        }
    }
    match doc.payload_status() {
        (Some(0), Some(0)) => None,
        (status, failures) => Some(format!(
            "the payload reported status {} with {} failures",
            status.map_or_else(|| "null".to_owned(), |s| s.to_string()),
            failures.map_or_else(|| "null".to_owned(), |s| s.to_string())
        )),
    }
}

fn digest(c: &Planned, iterations: u64, child: &ChildRun, started_s: f64) -> Result<OneRun, String> {
    let engine = c.engine;
    let doc = RunDoc::of(child, engine, &c.payload, iterations, c.shadowing != Some(false));
    if let Some(why) = failure(child, &doc) {
        return Err(why);
    }
    let res = match engine {
        Engine::SingleLevel => child.single_level().and_then(|s| s.results.as_ref()),
        _ => child.payload_run().ok_or("no payload_run event")?.results.as_ref(),
    }
    .ok_or("the payload reported no iterations")?;
    let report = child.report();
    let kvm_by_kind = || report.map(|r| r.kvm_exits.clone()).unwrap_or_default();
    let insn = |s: &Option<KvmStats>| s.as_ref().and_then(|s| s.vcpu.counters.get("insn_emulation").copied());
    let (exits, mult, insn) = match &doc.figures {
        Figures::SingleLevel(f) => {
            let by_kind = f.kvm_exits.clone().unwrap_or_default();
            let total: u64 = by_kind.values().sum();
            (
                Exits {
                    l2_by_reason: by_kind.clone(),
                    reflected_by_reason: Default::default(),
                    per_level: PerLevel { kvm_exits_l2_vm: Some(total), ..Default::default() },
                    kvm_by_kind: by_kind,
                    stable_across_repetitions: true,
                },
                None,
                None,
            )
        }
        Figures::Kvm(f) => (
            Exits {
                l2_by_reason: f.l1.exits.clone().unwrap_or_default(),
                reflected_by_reason: f.tracepoints.as_ref().map(|t| t.reflected_by_reason.clone()).unwrap_or_default(),
                per_level: PerLevel {
                    l0_only: f.l0_only_exits,
                    reflected_to_l1: f.reflected_exits,
                    l1_traps: f.l1_traps,
                    kvm_exits_l1_vm: f.attribution.as_ref().and_then(|a| a.kvm_exits),
                    kvm_exits_l2_vm: None,
                },
                kvm_by_kind: kvm_by_kind(),
                stable_across_repetitions: true,
            },
            Some(ExitMultiplication {
                kvm_exits_per_reflected_exit: f.kvm_exits_per_reflected_exit,
                l1_traps_per_reflected_exit: f
                    .l1_traps
                    .zip(f.reflected_exits)
                    .filter(|(_, r)| *r > 0)
                    .map(|(t, r)| t as f64 / r as f64),
            }),
            insn(&f.kvm_stats),
        ),
        Figures::Bochs(f) => (
            Exits {
                l2_by_reason: f.l1.exits.clone().unwrap_or_default(),
                reflected_by_reason: Default::default(),
                per_level: PerLevel::default(),
                kvm_by_kind: Default::default(),
                stable_across_repetitions: true,
            },
            None,
            None,
        ),
        Figures::Soft(f) => (
            Exits {
                l2_by_reason: f.l1.exits.clone().unwrap_or_default(),
                reflected_by_reason: f.reflected_exits_by_reason.clone().unwrap_or_default(),
                per_level: PerLevel {
                    l0_only: f.l0_only_exits,
                    reflected_to_l1: Some(f.reflected_exits),
                    l1_traps: f.l1_traps,
                    kvm_exits_l1_vm: f.kvm_exits.l1_vm,
                    kvm_exits_l2_vm: f.kvm_exits.l2_vm,
                },
                kvm_by_kind: kvm_by_kind(),
                stable_across_repetitions: true,
            },
            Some(ExitMultiplication {
                kvm_exits_per_reflected_exit: f.kvm_exits.per_reflected_exit,
                l1_traps_per_reflected_exit: f.l1_traps_per_reflected_exit,
            }),
            insn(&f.kvm_stats),
        ),
    };
    let n = res.iterations;
    let wall_ns = match &doc.figures {
        Figures::Soft(f) => f.time_ns.wall,
        Figures::Kvm(f) => f.time_ns.wall,
        Figures::SingleLevel(f) => f.time_ns.wall,
        Figures::Bochs(_) => report.map(|r| r.wall_ns),
    };
    Ok(OneRun {
        rep: Repetition {
            iterations: n,
            mean: if n > 0 { res.total_cycles as f64 / n as f64 } else { 0.0 },
            min: res.min_cycles,
            max: res.max_cycles,
            total: res.total_cycles,
            histogram_log2: res.hist.iter().map(|&(b, c)| [b as u64, c]).collect(),
            wall_ns,
            started_s,
            exits: exits.l2_by_reason.values().sum(),
            layers: match &doc.figures {
                Figures::Soft(f) => Some(results::Layers {
                    l0_ns: f.time_ns.l0.unwrap_or(0) as f64,
                    l1_ns: f.time_ns.l1.unwrap_or(0) as f64,
                    l2_ns: f.time_ns.l2.unwrap_or(0) as f64,
                })
                .filter(|_| f.time_ns.l0.is_some()),
                _ => None,
            },
        },
        exits,
        mult,
        insn_emulation: insn,
    })
}

/// Progress on the terminal: an indicatif bar when stderr is a terminal, one line per
/// configuration otherwise (unless quiet).
struct Progress {
    bar: indicatif::ProgressBar,
    quiet: bool,
}

impl Progress {
    fn new(len: usize, quiet: bool) -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(Some(len as u64), indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        Self { bar, quiet }
    }

    fn msg(&self, m: String) {
        self.bar.set_message(m);
    }

    fn line(&self, m: String) {
        if self.bar.is_hidden() {
            if !self.quiet {
                eprintln!("{m}");
            }
        } else {
            self.bar.println(m);
        }
    }
}

/// Everything a bench execution needs besides the plan.
pub struct Exec<'a> {
    /// How to start children.
    pub runner: &'a Runner,
    /// The profile.
    pub profile: &'a Profile,
    /// Set on Ctrl-C (or by a caller): no new run starts.
    pub stop: Arc<AtomicBool>,
    /// No per-configuration lines when stderr is not a terminal.
    pub quiet: bool,
    /// Where each finished calibration and repetition goes at once.
    pub journal: Option<&'a results::OutDir>,
    /// What an earlier bench's journal had finished (`bench --resume`): reused, not measured.
    pub resume: Option<&'a crate::journal::Resumed>,
}

impl Exec<'_> {
    fn record(&self, line: &crate::journal::Line) {
        if let (Some(j), Ok(v)) = (self.journal, serde_json::to_value(line)) {
            j.record(&v);
        }
    }
}

/// What executing a plan produced.
pub struct Executed {
    /// One per configuration attempted.
    pub results: Vec<ConfigResult>,
    /// Why the run is partial (empty: complete).
    pub partial_reasons: Vec<String>,
    /// Configurations that ran to the end but failed (the payload reported failures, the
    /// guest faulted, l0 refused it): the run is complete, these results are not.
    pub failures: Vec<String>,
}

/// Whether an error says the l0 child's stream did not finish (Ctrl-C, killed, deadline):
/// that makes the run partial. Anything else is a failed configuration of a finished run.
#[must_use]
pub fn stream_incomplete(error: &str) -> bool {
    ["interrupted", "nestbench-l0 outlived", "nestbench-l0 was killed", "nestbench-l0 ended without"]
        .iter()
        .any(|p| error.contains(p))
}

/// One traced run of a soft-engine configuration, after its repetitions (tracing costs L1
/// instructions, so it never enters the latency figures): the trace's drops, checked
/// against the sequence gaps the orchestrator saw.
async fn traced_run(runner: &Runner, c: &Planned, iterations: u64) -> Result<u64, String> {
    let deadline = Duration::from_millis(runner.timeout_ms) + Duration::from_secs(10);
    let args = runner.request(c, iterations, true).args();
    let mut sink = crate::trace::Sink::default();
    let child = l0_child::run_l0(&runner.l0, &args, deadline, |i| {
        sink.on(i);
    })
    .await
    .map_err(|e| e.to_string())?;
    let (end, _, agg) = sink.finish(&child);
    if end["complete"] != true {
        return Err(format!("traced run incomplete: {end}"));
    }
    if agg.gaps != agg.dropped {
        return Err(format!("trace has {} sequence gaps but L1 counted {} drops", agg.gaps, agg.dropped));
    }
    Ok(agg.dropped)
}

async fn run_child(runner: &Runner, c: &Planned, iterations: u64, t0: Instant) -> Result<(OneRun, bool), String> {
    let started_s = t0.elapsed().as_secs_f64();
    let deadline = Duration::from_millis(runner.timeout_ms) + Duration::from_secs(10);
    let child =
        l0_child::run_l0(&runner.l0, &runner.args(c, iterations), deadline, |_| {}).await.map_err(|e| e.to_string())?;
    let interrupted = child.interrupted == Some(Interruption::Interrupted);
    digest(c, iterations, &child, started_s).map(|r| (r, interrupted))
}

fn empty_result(c: &Planned) -> ConfigResult {
    ConfigResult {
        id: c.id(),
        engine: c.engine,
        payload: c.payload.clone(),
        config: c.config(),
        vmcs_shadowing: c.shadowing,
        unit: if c.engine == Engine::Bochs { "instructions" } else { "cycles" }.into(),
        complete: false,
        errors: Vec::new(),
        iterations: 0,
        iterations_from: "calibration".into(),
        calibration: Vec::new(),
        warmup_runs: 0,
        repetitions: Vec::new(),
        latency: None,
        exits: None,
        exit_multiplication: None,
        nested_over_single: None,
        kvm_insn_emulation: None,
        trace_drops: None,
        steady_state: None,
    }
}

fn note_error(x: &Exec<'_>, r: &mut ConfigResult, what: String, e: &str) {
    if e.starts_with("interrupted") {
        x.stop.store(true, Ordering::SeqCst);
    }
    let error = format!("{what}: {e}");
    x.record(&crate::journal::Line::Error { id: r.id.clone(), error: error.clone() });
    r.errors.push(error);
}

/// Calibration (the warm-up): kvm-unit-tests style doubling until the loop spans the
/// target, or one run at the baseline's iterations when `c.pinned_iterations` is set; then
/// the profile's extra warm-up runs. `false` when the configuration failed.
async fn calibrate(x: &Exec<'_>, c: &Planned, r: &mut ConfigResult, t0: Instant, pb: &Progress) -> bool {
    let p = x.profile;
    let target = 1u64 << if c.engine == Engine::Bochs { p.target_log2_instructions } else { p.target_log2_cycles };
    let mut iterations = c.fixed_iterations.or(c.pinned_iterations).unwrap_or(p.start_iterations);
    if c.pinned_iterations.is_some() && c.fixed_iterations.is_none() {
        r.iterations_from = "baseline".into();
    }
    loop {
        if x.stop.load(Ordering::SeqCst) {
            r.errors.push("interrupted (Ctrl-C) before this configuration finished".into());
            return false;
        }
        pb.msg(format!("{}: calibrating, {iterations} iterations", r.id));
        let run_start = Instant::now();
        match run_child(x.runner, c, iterations, t0).await {
            Ok((one, _)) => {
                let too_long = run_start.elapsed() >= Duration::from_millis(p.max_run_wall_ms);
                r.calibration.push(CalibrationStep { iterations, total: one.rep.total });
                r.warmup_runs += 1;
                if one.rep.iterations < iterations {
                    // The payload caps its work (a fixed set of pages, a table): measure
                    // what it does.
                    iterations = one.rep.iterations.max(1);
                    break;
                }
                // The span is judged by the fastest iteration times the count: a preempted
                // iteration must not end calibration early.
                let span = one.rep.min.saturating_mul(one.rep.iterations);
                if c.fixed_iterations.is_some()
                    || c.pinned_iterations.is_some()
                    || span >= target
                    || too_long
                    || iterations >= p.max_iterations
                {
                    break;
                }
                iterations = (iterations * 2).min(p.max_iterations);
            }
            Err(e) => {
                // A payload with a capacity (a page set, a table) may fail past it: measure
                // at the largest count it ran cleanly.
                if let Some(last) =
                    r.calibration.last().filter(|_| !stream_incomplete(&e) && c.pinned_iterations.is_none())
                {
                    iterations = last.iterations;
                    break;
                }
                note_error(x, r, format!("calibration at {iterations} iterations"), &e);
                return false;
            }
        }
    }
    r.iterations = iterations;
    for k in 0..p.warmup {
        if x.stop.load(Ordering::SeqCst) {
            r.errors.push("interrupted (Ctrl-C) before this configuration finished".into());
            return false;
        }
        pb.msg(format!("{}: warm-up {}/{}", r.id, k + 1, p.warmup));
        match run_child(x.runner, c, iterations, t0).await {
            Ok(_) => r.warmup_runs += 1,
            Err(e) => {
                note_error(x, r, format!("warm-up at {iterations} iterations"), &e);
                return false;
            }
        }
    }
    true
}

/// Keep one repetition (measured now, or read back from a resumed journal) and journal it.
fn keep(x: &Exec<'_>, r: &mut ConfigResult, one: OneRun) {
    x.record(&crate::journal::Line::Repetition {
        id: r.id.clone(),
        repetition: one.rep.clone(),
        exits: Some(one.exits.clone()),
        exit_multiplication: one.mult.clone(),
        kvm_insn_emulation: one.insn_emulation,
    });
    match r.exits.as_mut() {
        Some(prev) => {
            prev.stable_across_repetitions &= prev.l2_by_reason == one.exits.l2_by_reason
                && prev.per_level == one.exits.per_level
                && prev.reflected_by_reason == one.exits.reflected_by_reason
                && r.kvm_insn_emulation == one.insn_emulation;
        }
        None => {
            // The first repetition's counts are kept; instability is remembered.
            r.exits = Some(one.exits);
            r.exit_multiplication = one.mult;
            r.kvm_insn_emulation = one.insn_emulation;
        }
    }
    r.repetitions.push(one.rep);
}

/// Take what a resumed journal had finished for this configuration: its calibration and
/// repetitions (journalled again, so the new journal is whole). `false`: nothing to reuse.
fn reuse(x: &Exec<'_>, r: &mut ConfigResult) -> bool {
    let Some(done) = x.resume.and_then(|j| j.done(&r.id)) else { return false };
    let Some((iterations, calibration)) = done.calibrated.clone() else { return false };
    r.iterations = iterations;
    r.warmup_runs = calibration.len() as u32;
    r.calibration = calibration;
    x.record(&crate::journal::Line::Calibrated {
        id: r.id.clone(),
        iterations: r.iterations,
        calibration: r.calibration.clone(),
    });
    for line in done.repetitions.iter().take(x.profile.repetitions as usize) {
        if let crate::journal::Line::Repetition {
            repetition,
            exits: Some(exits),
            exit_multiplication,
            kvm_insn_emulation,
            ..
        } = line
        {
            let one = OneRun {
                rep: repetition.clone(),
                exits: exits.clone(),
                mult: exit_multiplication.clone(),
                insn_emulation: *kvm_insn_emulation,
            };
            keep(x, r, one);
        }
    }
    true
}

/// One measured repetition; `false` when it failed.
async fn repetition(x: &Exec<'_>, c: &Planned, r: &mut ConfigResult, t0: Instant) -> bool {
    match run_child(x.runner, c, r.iterations, t0).await {
        Ok((one, _)) => {
            keep(x, r, one);
            true
        }
        Err(e) => {
            note_error(x, r, format!("repetition {} at {} iterations", r.repetitions.len() + 1, r.iterations), &e);
            false
        }
    }
}

/// Runs of half the repetitions' iterations behind each steady-state figure.
pub const STEADY_RUNS: usize = 3;

/// Whether a configuration gets steady-state figures: nested soft-engine runs of a payload
/// whose iterations can be halved.
fn has_steady_state(c: &Planned, iterations: u64) -> bool {
    c.engine == Engine::Soft && c.fixed_iterations.is_none() && iterations >= 2
}

/// The steady-state figures of a configuration: [`STEADY_RUNS`] runs of half its
/// iterations, against its repetitions ([`results::steady_state`]). A failed run leaves the
/// figures out and says why in the configuration's errors.
async fn steady(x: &Exec<'_>, c: &Planned, r: &mut ConfigResult, t0: Instant) {
    let Some(large) = r.exits.as_ref().map(|e| e.per_level.clone()) else { return };
    let half = r.iterations / 2;
    let mut small: Vec<(Repetition, results::PerLevel)> = x
        .resume
        .and_then(|j| j.done(&r.id))
        .map(|d| d.steady.iter().filter(|(rep, _)| rep.iterations == half).take(STEADY_RUNS).cloned().collect())
        .unwrap_or_default();
    for (rep, per_level) in &small {
        x.record(&crate::journal::Line::SteadyRun {
            id: r.id.clone(),
            repetition: rep.clone(),
            per_level: Some(per_level.clone()),
        });
    }
    for k in small.len()..STEADY_RUNS {
        match run_child(x.runner, c, half, t0).await {
            Ok((one, _)) => {
                x.record(&crate::journal::Line::SteadyRun {
                    id: r.id.clone(),
                    repetition: one.rep.clone(),
                    per_level: Some(one.exits.per_level.clone()),
                });
                small.push((one.rep, one.exits.per_level));
            }
            Err(e) => {
                note_error(x, r, format!("steady-state run {} at {half} iterations", k + 1), &e);
                return;
            }
        }
    }
    r.steady_state = results::steady_state(&r.repetitions, &large, &small);
}

/// Run a plan: first calibrate (and warm up) every configuration, then measure the
/// repetitions round-robin — repetition 1 of every configuration, then repetition 2, ... —
/// so each configuration's samples spread over the whole bench and a burst of load on the
/// host widens them (and the comparison sees noise) instead of shifting all of them.
pub async fn execute(x: &Exec<'_>, configs: &[Planned], tsc: Option<&Tsc>) -> Executed {
    let t0 = Instant::now();
    let reps = x.profile.repetitions as usize;
    let traced = configs.iter().filter(|c| c.engine == Engine::Soft).count();
    let pb = Progress::new(configs.len() * (1 + reps) + 2 * traced, x.quiet);
    let mut results: Vec<ConfigResult> = Vec::new();
    let mut ok: Vec<bool> = Vec::new();
    let mut attempted = 0;
    for c in configs {
        if x.stop.load(Ordering::SeqCst) {
            break;
        }
        let mut r = empty_result(c);
        let good = if reuse(x, &mut r) {
            pb.line(format!(
                "{:<34} resumed: {} iterations, {} repetitions reused",
                r.id,
                r.iterations,
                r.repetitions.len()
            ));
            true
        } else {
            let good = calibrate(x, c, &mut r, t0, &pb).await;
            if good {
                x.record(&crate::journal::Line::Calibrated {
                    id: r.id.clone(),
                    iterations: r.iterations,
                    calibration: r.calibration.clone(),
                });
            }
            good
        };
        pb.bar.inc(1);
        if !good {
            pb.line(format!("{:<34} FAILED: {}", r.id, r.errors.join("; ")));
            pb.bar.inc(reps as u64);
        }
        results.push(r);
        ok.push(good);
        attempted += 1;
    }
    for k in 0..reps {
        for (i, c) in configs.iter().enumerate().take(attempted) {
            if !ok[i] {
                continue;
            }
            if results[i].repetitions.len() > k {
                pb.bar.inc(1); // reused from a resumed journal
                continue;
            }
            if x.stop.load(Ordering::SeqCst) {
                results[i].errors.push("interrupted (Ctrl-C) before this configuration finished".into());
                ok[i] = false;
                continue;
            }
            pb.msg(format!("{}: repetition {}/{reps}, {} iterations", c.id(), k + 1, results[i].iterations));
            ok[i] = repetition(x, c, &mut results[i], t0).await;
            pb.bar.inc(1);
        }
    }
    for (i, c) in configs.iter().enumerate().take(attempted).filter(|(_, c)| c.engine == Engine::Soft) {
        if !ok[i] || x.stop.load(Ordering::SeqCst) {
            continue;
        }
        pb.msg(format!("{}: traced run, {} iterations", c.id(), results[i].iterations));
        match traced_run(x.runner, c, results[i].iterations).await {
            Ok(drops) => results[i].trace_drops = Some(drops),
            Err(e) => note_error(x, &mut results[i], "traced run".into(), &e),
        }
        pb.bar.inc(1);
    }
    for (i, c) in configs.iter().enumerate().take(attempted) {
        if !ok[i] || x.stop.load(Ordering::SeqCst) || !has_steady_state(c, results[i].iterations) {
            continue;
        }
        pb.msg(format!("{}: steady state, {} runs of {} iterations", c.id(), STEADY_RUNS, results[i].iterations / 2));
        steady(x, c, &mut results[i], t0).await;
        pb.bar.inc(1);
    }
    pb.bar.finish_and_clear();
    let ns = |r: &ConfigResult| tsc.filter(|_| r.unit == "cycles").map(|t| 1e6 / t.khz as f64);
    let mut out = Executed { results: Vec::new(), partial_reasons: Vec::new(), failures: Vec::new() };
    for (i, mut r) in results.into_iter().enumerate() {
        r.latency = results::latency(&r.repetitions, ns(&r));
        r.complete = r.errors.is_empty() && r.repetitions.len() == reps;
        pb.line(line(i, configs.len(), &r));
        if r.errors.iter().any(|e| stream_incomplete(e)) {
            out.partial_reasons.push(format!("{}: {}", r.id, r.errors.join("; ")));
        } else if !r.complete {
            out.failures.push(format!("{}: {}", r.id, r.errors.join("; ")));
        }
        out.results.push(r);
    }
    if attempted < configs.len() {
        out.partial_reasons.push(format!(
            "interrupted (Ctrl-C): {} of {} configurations not run",
            configs.len() - attempted,
            configs.len()
        ));
    }
    set_ratios(&mut out.results);
    out
}

fn line(i: usize, n: usize, r: &ConfigResult) -> String {
    let what = match &r.latency {
        Some(l) => format!(
            "p50 {:.0} {} per iteration ({} × {} iterations{})",
            l.repetitions.p50,
            r.unit,
            l.repetition_samples,
            r.iterations,
            if r.complete { "" } else { ", incomplete" }
        ),
        None => format!("FAILED: {}", r.errors.join("; ")),
    };
    format!("[{}/{n}] {:<34} {what}", i + 1, r.id)
}

/// Fill `nested_over_single` from the single-level twin of each nested result.
pub fn set_ratios(results: &mut [ConfigResult]) {
    let single: Vec<(String, f64)> = results
        .iter()
        .filter(|r| r.config == Config::SingleLevel)
        .filter_map(|r| Some((r.payload.clone(), r.latency.as_ref()?.repetitions.p50)))
        .collect();
    for r in results.iter_mut().filter(|r| r.config == Config::Nested) {
        let s = single.iter().find(|(p, _)| *p == r.payload).map(|(_, v)| *v);
        r.nested_over_single = match (r.latency.as_ref(), s) {
            (Some(l), Some(s)) if s > 0.0 => Some(l.repetitions.p50 / s),
            _ => None,
        };
    }
}

/// Inputs of a whole bench.
pub struct BenchConfig {
    /// `--quick`.
    pub quick: bool,
    /// Where runs go (`results/runs`).
    pub out: PathBuf,
    /// The baseline directory (`results/baseline/<profile>`) and whether the user named it (then it
    /// must exist and be readable); `None`: compare with nothing.
    pub baseline: Option<(PathBuf, bool)>,
    /// `--engines`.
    pub engines: Option<Vec<String>>,
    /// `--payloads`.
    pub payloads: Option<Vec<String>>,
    /// How to start children.
    pub runner: Runner,
    /// The KVM device.
    pub kvm: PathBuf,
    /// No per-configuration lines.
    pub quiet: bool,
    /// Emulated hosts to measure the kvm engine on (exact figures, one boot each).
    pub emulated: Vec<EmulatedTarget>,
    /// `--resume`: an earlier bench's journal, whose finished runs are reused.
    pub resume: Option<crate::journal::Resumed>,
}

/// One emulated host configuration of a bench.
#[derive(Clone, Debug)]
pub struct EmulatedTarget {
    /// The host.
    pub host: crate::hosts::HostSpec,
    /// Its kernel and parameters.
    pub opts: crate::hosts::EmulatedOptions,
}

impl EmulatedTarget {
    /// Parse `bochs[:MODEL]@KERNEL` or `qemu@KERNEL` (KERNEL defaults to 6.1; QEMU runs with
    /// `-icount 0`).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (host, kernel) = s.split_once('@').unwrap_or((s, crate::hosts::kernel::DEFAULT_KERNEL));
        let spec = crate::hosts::HostSpec::parse(host)?;
        anyhow::ensure!(spec != crate::hosts::HostSpec::Local, "--emulated-hosts {s:?}: local is not an emulated host");
        let icount = (spec == crate::hosts::HostSpec::Qemu).then_some(0);
        Ok(Self {
            host: spec,
            opts: crate::hosts::EmulatedOptions { kernel: Some(kernel.to_owned()), icount, ..Default::default() },
        })
    }

    /// `bochs:<model>@<kernel>`.
    #[must_use]
    pub fn name(&self) -> String {
        format!("{}@{}", self.host.name(), self.opts.kernel.as_deref().unwrap_or(crate::hosts::kernel::DEFAULT_KERNEL))
    }
}

/// The emulated hosts a bench measures by default: Skylake-X (VMCS shadowing) and Ivy
/// Bridge (none), each with every kernel of kernels.list, and QEMU's nested SVM (kvm_amd)
/// with every kernel; `--quick`: Skylake-X and QEMU with 6.1. QEMU runs with `-icount 0`, so
/// its cycle figures are instructions of the emulated machine (docs/emulated-hosts.md).
#[must_use]
pub fn default_emulated(quick: bool) -> Vec<EmulatedTarget> {
    let kernels = crate::doctor::kernel_aliases();
    let mut v = Vec::new();
    let hosts = crate::doctor::LISTED_MODELS.iter().map(|m| format!("bochs:{m}")).chain(["qemu".to_owned()]);
    for (i, host) in hosts.enumerate() {
        for k in &kernels {
            let first_model = i == 0 || host == "qemu";
            if quick && (!first_model || *k != crate::hosts::kernel::DEFAULT_KERNEL) {
                continue;
            }
            v.extend(EmulatedTarget::parse(&format!("{host}@{k}")));
        }
    }
    v
}

/// N of the exact figures (the runs have N and 2N iterations).
pub const EXACT_ITERATIONS: u64 = 100;

/// Measure the kvm engine on each emulated host (one boot each); a host that cannot boot here
/// is skipped with the reason.
async fn emulated_hosts(
    cfg: &BenchConfig,
    payloads: &[&str],
    stop: &AtomicBool,
    skipped: &mut Vec<results::Skipped>,
) -> Vec<results::EmulatedHostRun> {
    let mut out = Vec::new();
    for t in &cfg.emulated {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Some(emulator) = t.host.emulator() else { continue };
        if let Err(e) = crate::hosts::emulated::preflight(emulator, &t.opts) {
            skipped.push(results::Skipped {
                engine: Engine::Kvm,
                payload: None,
                reason: format!("emulated host {}: {e}", t.name()),
            });
            continue;
        }
        if !cfg.quiet {
            eprintln!(
                "emulated host {}: {} runs in one boot ...",
                t.name(),
                crate::exact::RUNS_PER_PAYLOAD * payloads.len()
            );
        }
        let timeout = Duration::from_millis(cfg.runner.timeout_ms.max(60_000));
        let kernel = t.opts.kernel.clone().unwrap_or_default();
        let params = emulator.module_params(&t.opts);
        let run =
            match crate::exact::measure(&t.host, &t.opts, &cfg.runner.l0, payloads, EXACT_ITERATIONS, timeout).await {
                Ok((session, rows)) => results::EmulatedHostRun {
                    host: t.host.name(),
                    kernel,
                    kernel_release: session.boot.as_ref().map(|b| b.kernel_release.clone()),
                    kvm_intel_params: params,
                    boot: session.boot,
                    rows,
                    error: None,
                },
                Err(e) => results::EmulatedHostRun {
                    host: t.host.name(),
                    kernel,
                    kernel_release: None,
                    kvm_intel_params: params,
                    boot: None,
                    rows: Vec::new(),
                    error: Some(e.to_string()),
                },
            };
        if !cfg.quiet {
            match &run.error {
                Some(e) => eprintln!("emulated host {}: FAILED: {e}", t.name()),
                None => eprint!("{}", crate::exact::render(&format!("emulated host {}", t.name()), &run.rows)),
            }
        }
        out.push(run);
    }
    out
}

/// What a bench produced.
pub struct BenchOutcome {
    /// The summary as written.
    pub summary: Summary,
    /// The run directory.
    pub dir: PathBuf,
    /// The baseline comparison, when there was a comparable baseline.
    pub comparison: Option<crate::compare::Comparison>,
    /// One line: what the run was compared with, or why not.
    pub baseline_line: String,
}

/// Host facts as the summary records them.
pub struct HostInfo {
    /// doctor's host document.
    pub host: Value,
    /// doctor's engine verdicts.
    pub engines: Vec<EngineStatus>,
    /// KVM module parameters.
    pub kvm_module_params: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// CPU model / backend / cpus.
    pub host_class: String,
    /// The kernel release.
    pub kernel: String,
    /// The TSC.
    pub tsc: Option<Tsc>,
}

/// Gather host facts (blocking: doctor boots a probe guest on its own vCPU thread).
#[must_use]
pub fn host_info(kvm: &Path) -> HostInfo {
    let facts = l0::host::gather(kvm);
    let d = crate::doctor::doctor(facts);
    let backend = ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .iter()
        .find(|m| d.host.kvm_modules.contains_key(**m))
        .copied()
        .unwrap_or("no KVM backend module");
    HostInfo {
        host_class: format!("{} / {backend} / {} cpus", d.host.cpu_model, d.host.cpus),
        kernel: d.host.kernel.clone(),
        kvm_module_params: d.host.kvm_modules.clone(),
        host: serde_json::to_value(&d.host).unwrap_or(Value::Null),
        engines: d.engines,
        tsc: l0::host::tsc_khz(kvm).map(|(khz, source)| Tsc { khz, source: source.into() }),
    }
}

/// Select payloads by name (`None`: all); unknown names are an error naming the known ones.
pub fn select_payloads(names: Option<&[String]>) -> anyhow::Result<Vec<&'static l2_payloads::Manifest>> {
    let all = l2_payloads::all();
    let Some(names) = names else { return Ok(all.iter().collect()) };
    names
        .iter()
        .map(|n| {
            l2_payloads::find(n).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown payload {n:?}; known payloads: {}",
                    all.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect()
}

/// Assemble the summary of an executed plan.
#[must_use]
pub fn summary(
    info: &HostInfo,
    plan: &Plan,
    profile: &Profile,
    executed: Executed,
    started: SystemTime,
    run_id: &str,
) -> Summary {
    let finished = SystemTime::now();
    let mut partial_reasons = executed.partial_reasons;
    let not_attempted = plan.configs.len().saturating_sub(executed.results.len());
    if not_attempted > 0 && !partial_reasons.iter().any(|r| r.contains("not run")) {
        partial_reasons.push(format!("{not_attempted} configurations not run"));
    }
    Summary {
        schema_version: results::SCHEMA_VERSION,
        nestbench_version: env!("CARGO_PKG_VERSION").into(),
        run_id: run_id.into(),
        started_at: results::utc(started).0,
        finished_at: results::utc(finished).0,
        wall_s: finished.duration_since(started).map_or(0.0, |d| d.as_secs_f64()),
        partial: !partial_reasons.is_empty(),
        partial_reasons,
        failures: executed.failures,
        profile: profile.clone(),
        hostname: results::hostname(),
        host_class: info.host_class.clone(),
        host: info.host.clone(),
        kvm_module_params: info.kvm_module_params.clone(),
        tsc: info.tsc.clone(),
        engines: plan.engines.clone(),
        results: executed.results,
        skipped: plan.skipped.clone(),
        baseline: None,
        bochs_models: Vec::new(),
        emulated_hosts: Vec::new(),
        resumed_from: None,
    }
}

/// The Bochs CPU generations of the per-model table: full VMX (Skylake-X, Ice Lake), no PML
/// (Haswell), no VMCS shadowing (Sandy Bridge), no unrestricted guest (Lynnfield); SVM with
/// NRIP_SAVE (Ryzen) and without (Phenom: L1 decodes the instruction for the next RIP).
pub const BOCHS_GENERATIONS: [&str; 7] = [
    "corei7_skylake_x",
    "corei7_icelake_u",
    "corei7_haswell_4770",
    "corei7_sandy_bridge_2600k",
    "corei5_lynnfield_750",
    "ryzen",
    "phenom_8650_toliman",
];
/// The payloads of the per-model table (those selected for the bench).
pub const BOCHS_GENERATION_PAYLOADS: [&str; 4] = ["outl", "hlt", "cpuid", "rdmsr"];
/// Iterations per model and payload (instruction counts are exact: one run each).
pub const BOCHS_GENERATION_ITERATIONS: u64 = 50;

/// L1 instructions per iteration on each of [`BOCHS_GENERATIONS`], one run per payload.
async fn bochs_generations(
    runner: &Runner,
    payloads: &[&str],
    stop: &AtomicBool,
    quiet: bool,
) -> Vec<results::BochsModelRow> {
    let mut rows = Vec::new();
    let t0 = Instant::now();
    for model in BOCHS_GENERATIONS {
        let lacks: Vec<String> = l0::bochs::config::l1_cpu_model(model)
            .map(|m| m.lacks())
            .unwrap_or_default()
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let on_model = Runner { cpu_model: model.into(), ..runner.clone() };
        for payload in payloads {
            if stop.load(Ordering::SeqCst) {
                return rows;
            }
            let n = BOCHS_GENERATION_ITERATIONS;
            let c = Planned {
                engine: Engine::Bochs,
                payload: (*payload).into(),
                shadowing: None,
                fixed_iterations: None,
                pinned_iterations: None,
            };
            let (instructions_per_iteration, exits, error) = match run_child(&on_model, &c, n, t0).await {
                Ok((one, _)) => (Some(one.rep.mean), Some(one.rep.exits), None),
                Err(e) => (None, None, Some(e)),
            };
            let row = results::BochsModelRow {
                model: model.into(),
                lacks: lacks.clone(),
                payload: (*payload).into(),
                iterations: n,
                instructions_per_iteration,
                exits,
                error,
            };
            if !quiet {
                eprintln!(
                    "bochs {model:<28} {payload:<8} {}",
                    row.instructions_per_iteration.map_or_else(
                        || format!("FAILED: {}", row.error.clone().unwrap_or_default()),
                        |v| format!("{v:.1} instructions per iteration")
                    )
                );
            }
            rows.push(row);
        }
    }
    rows
}

/// The baseline in `dir` (its summary.json): `None` when there is none and the user did not
/// name it (`explicit`); an error naming the path when it is unreadable, or named and missing.
pub fn load_baseline(dir: &Path, explicit: bool) -> anyhow::Result<Option<Summary>> {
    let file = dir.join("summary.json");
    if !explicit && !file.exists() {
        return Ok(None);
    }
    results::load(&file).map(Some).map_err(|e| anyhow::anyhow!("--baseline {}: {e:#}", dir.display()))
}

/// Use the baseline's iterations for every configuration it measured completely in the same
/// context (host class, kernel, profile), so that counts compare exactly.
pub fn pin_to_baseline(configs: &mut [Planned], base: &Summary, context: &str) {
    if crate::compare::context(base) != context {
        return;
    }
    for c in configs {
        if let Some(b) = base.result(&c.id()).filter(|b| b.complete && b.iterations > 0) {
            c.pinned_iterations = Some(b.iterations);
        }
    }
}

/// Compare against the baseline (if any), render every file, and write the run directory.
pub fn finish(
    mut s: Summary,
    out: &Path,
    baseline_dir: Option<&Path>,
    base: Option<&Summary>,
    journal: Option<&results::OutDir>,
) -> anyhow::Result<BenchOutcome> {
    let context = crate::compare::context(&s);
    let baseline_dir = baseline_dir.unwrap_or(Path::new("none"));
    let baseline_line = match base {
        None if baseline_dir == Path::new("none") => "baseline: none (--baseline none)".to_owned(),
        None => format!("baseline: none at {} (nothing compared)", baseline_dir.display()),
        Some(b) if crate::compare::context(b) != context => format!(
            "baseline: {} (run {}) not compared: it is {}, this run {}",
            baseline_dir.display(),
            b.run_id,
            crate::compare::context(b),
            context
        ),
        Some(b) => format!("baseline: compared with {} (run {}), both {context}", baseline_dir.display(), b.run_id),
    };
    let base = base.filter(|b| crate::compare::context(b) == context);
    let comparison = base.map(|base| {
        let history = results::history(out);
        let c = crate::compare::compare(base, &s, &history);
        s.baseline = Some(results::BaselineRef {
            path: baseline_dir.display().to_string(),
            run_id: base.run_id.clone(),
            same_host_class: c.same_host_class,
            regressions: c.regressions(),
            improvements: c.improvements(),
            compared: c.verdicts.len(),
        });
        c
    });
    // Belt and braces: the document must match its published schema (a bug otherwise).
    if let Ok(schema) = serde_json::from_str::<Value>(SCHEMA) {
        if let Err(errors) = crate::schema::validate(&schema, &serde_json::to_value(&s)?) {
            eprintln!("warning: summary.json does not match its schema (a nestbench bug): {}", errors.join("; "));
        }
    }
    let history = results::history(out);
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("summary.json", format!("{}\n", serde_json::to_string_pretty(&s)?).into_bytes()),
        ("dashboard.html", crate::dashboard::html(&s, &history, comparison.as_ref()).into_bytes()),
        ("metrics.openmetrics.txt", crate::export::openmetrics(&s).into_bytes()),
        ("bencher.json", format!("{}\n", serde_json::to_string_pretty(&crate::export::bencher(&s))?).into_bytes()),
    ];
    files.extend(crate::report::report_files(&s, comparison.as_ref()).into_iter().map(|(n, t)| (n, t.into_bytes())));
    files.push(("junit.xml", crate::export::junit(&s, comparison.as_ref()).into_bytes()));
    if let Some(c) = &comparison {
        files.push(("compare.json", format!("{}\n", serde_json::to_string_pretty(c)?).into_bytes()));
    }
    if let Some(j) = journal {
        files.push(("journal.jsonl", j.contents()));
    }
    let dir = results::write_run_dir(out, &s.run_id, &files, s.partial)
        .map_err(|e| anyhow::anyhow!("writing the run into {}: {e}", out.display()))?;
    if let Some(j) = journal {
        j.finished();
    }
    Ok(BenchOutcome { summary: s, dir, comparison, baseline_line })
}

/// The whole bench: host facts, plan, runs (under a tokio runtime of our own; KVM_RUN
/// happens in the children), summary, files.
pub fn bench(cfg: &BenchConfig) -> anyhow::Result<BenchOutcome> {
    let started = SystemTime::now();
    let profile = if cfg.quick { quick_profile() } else { full_profile() };
    let payloads = select_payloads(cfg.payloads.as_deref())?;
    if let Some(es) = &cfg.engines {
        for e in es {
            anyhow::ensure!(
                ["soft", "bochs", "kvm"].contains(&e.as_str()),
                "unknown engine {e:?}; engines: soft, bochs, kvm"
            );
        }
    }
    let info = host_info(&cfg.kvm);
    let mut plan = plan(&info.engines, cfg.engines.as_deref(), &payloads);
    if let Some(es) = cfg.engines.as_deref().filter(|es| !es.is_empty()) {
        // Engines the user named that this host cannot run: say so now, not after an empty run.
        let refused: Vec<String> = plan
            .engines
            .iter()
            .filter(|e| es.iter().any(|x| x == e.engine.name()) && !e.benched)
            .map(|e| format!("{}: {}", e.engine, e.reason))
            .collect();
        anyhow::ensure!(refused.is_empty(), "--engines names engines this host cannot run: {}", refused.join("; "));
    }
    let base = match &cfg.baseline {
        Some((dir, explicit)) => load_baseline(dir, *explicit)?,
        None => None,
    };
    // The output directory before anything is measured: a bad --out must not cost a bench.
    let run_id = format!("{}-{}", results::utc(started).1, results::hostname());
    if let Some(j) = &cfg.resume {
        anyhow::ensure!(
            j.host_class == info.host_class && j.kernel == info.kernel,
            "--resume {}: that bench ran on {} with kernel {}, this host is {} with kernel {}: its figures would not \
             be of one run",
            j.path.display(),
            j.host_class,
            j.kernel,
            info.host_class,
            info.kernel
        );
        eprintln!("{}", j.describe());
    }
    let outdir = results::OutDir::claim(&cfg.out, &run_id)?;
    outdir.record(&serde_json::to_value(crate::journal::Line::Bench {
        run_id: run_id.clone(),
        quick: cfg.quick,
        engines: cfg.engines.clone(),
        payloads: cfg.payloads.clone(),
        host_class: info.host_class.clone(),
        kernel: info.kernel.clone(),
    })?);
    if let Some(b) = &base {
        pin_to_baseline(
            &mut plan.configs,
            b,
            &crate::compare::context_of(&info.host_class, &info.kernel, &profile.name),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let executed = rt.block_on(async {
        let flag = stop.clone();
        let watcher = tokio::spawn(async move {
            crate::interrupt::wait().await;
            flag.store(true, Ordering::SeqCst);
        });
        let x = Exec {
            runner: &cfg.runner,
            profile: &profile,
            stop: stop.clone(),
            quiet: cfg.quiet,
            journal: Some(&outdir),
            resume: cfg.resume.as_ref(),
        };
        let e = execute(&x, &plan.configs, info.tsc.as_ref()).await;
        let bochs_benched = plan.engines.iter().any(|e| e.engine == Engine::Bochs && e.benched);
        let wanted: Vec<&str> =
            BOCHS_GENERATION_PAYLOADS.iter().copied().filter(|p| payloads.iter().any(|m| m.name == *p)).collect();
        let models = if bochs_benched && !stop.load(Ordering::SeqCst) {
            bochs_generations(&cfg.runner, &wanted, &stop, cfg.quiet).await
        } else {
            Vec::new()
        };
        let exact_payloads: Vec<&str> =
            crate::exact::DEFAULT_PAYLOADS.iter().copied().filter(|p| payloads.iter().any(|m| m.name == *p)).collect();
        let mut skipped = Vec::new();
        let emulated = if exact_payloads.is_empty() {
            Vec::new()
        } else {
            emulated_hosts(cfg, &exact_payloads, &stop, &mut skipped).await
        };
        watcher.abort();
        (e, models, emulated, skipped)
    });
    let (executed, bochs_models, emulated, emulated_skipped) = executed;
    let mut s = summary(&info, &plan, &profile, executed, started, &run_id);
    s.bochs_models = bochs_models;
    s.skipped.extend(emulated_skipped);
    s.failures.extend(
        emulated
            .iter()
            .filter_map(|e| e.error.as_ref().map(|why| format!("emulated host {} ({}): {why}", e.host, e.kernel))),
    );
    s.failures.extend(emulated.iter().flat_map(|e| {
        e.rows.iter().filter_map(move |r| {
            r.error.as_ref().map(|why| format!("kvm/{} on {} ({}): {why}", r.payload, e.host, e.kernel))
        })
    }));
    s.emulated_hosts = emulated;
    s.resumed_from = cfg.resume.as_ref().map(|j| format!("{} ({})", j.run_id, j.path.display()));
    let partial = s.partial;
    let o = finish(s, &cfg.out, cfg.baseline.as_ref().map(|(d, _)| d.as_path()), base.as_ref(), Some(&outdir))?;
    // A resumed journal left outside any run directory is now in this run's journal.jsonl.
    if let Some(j) = cfg.resume.as_ref().filter(|j| !partial && j.path.file_name() != Some("journal.jsonl".as_ref())) {
        if std::fs::remove_file(&j.path).is_ok() {
            eprintln!("{} is in {} now: removed", j.path.display(), o.dir.join("journal.jsonl").display());
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(engine: Engine, can_run: bool, implemented: bool) -> EngineStatus {
        EngineStatus { engine, can_run, implemented, reason: format!("{engine} reason"), svm: false }
    }

    #[test]
    fn the_matrix_covers_every_payload_and_skips_with_reasons() {
        let engines =
            [status(Engine::Soft, true, true), status(Engine::Kvm, false, false), status(Engine::Bochs, true, true)];
        let payloads: Vec<_> = l2_payloads::all().iter().collect();
        let p = plan(&engines, None, &payloads);
        let soft_runs: Vec<_> = payloads.iter().filter(|m| m.soft_engine == l2_payloads::Support::Runs).collect();
        let twins = soft_runs.iter().filter(|m| m.single_level == l2_payloads::Twin::Same).count();
        let vmx = payloads.iter().filter(|m| m.vendors.vmx().is_ok()).count();
        assert_eq!(p.configs.len(), 2 * soft_runs.len() + twins + vmx);
        let vmmcall = p.skipped.iter().find(|s| s.engine == Engine::Bochs && s.payload.as_deref() == Some("vmmcall"));
        assert!(vmmcall.is_some_and(|s| s.reason.starts_with("SVM only: ")), "{vmmcall:?}");
        for m in soft_runs.iter().filter(|m| m.single_level != l2_payloads::Twin::Same) {
            assert!(!p.configs.iter().any(|c| c.engine == Engine::SingleLevel && c.payload == m.name), "{}", m.name);
            let s = p.skipped.iter().find(|s| s.engine == Engine::SingleLevel && s.payload.as_deref() == Some(m.name));
            assert!(s.is_some_and(|s| s.reason.starts_with("no single-level twin: ")), "{}: {s:?}", m.name);
        }
        assert!(
            p.configs.iter().any(|c| c.engine == Engine::Soft && c.payload == "outl" && c.shadowing == Some(false))
        );
        assert!(p.configs.iter().any(|c| c.engine == Engine::SingleLevel && c.payload == "outl"));
        assert!(p.configs.iter().any(|c| c.engine == Engine::Bochs && c.payload == "cpuid"));
        assert!(p.skipped.iter().any(|s| s.engine == Engine::Kvm && s.payload.is_none() && s.reason == "kvm reason"));
        for m in payloads.iter().filter(|m| m.soft_engine != l2_payloads::Support::Runs) {
            assert!(p.skipped.iter().any(|s| s.payload.as_deref() == Some(m.name) && s.reason.len() > 20));
        }
        let only_soft = plan(&engines, Some(&["soft".to_owned()]), &payloads);
        assert!(only_soft.configs.iter().all(|c| c.engine != Engine::Bochs));
        assert!(only_soft.engines.iter().any(|e| e.engine == Engine::Bochs && !e.benched));
        let no_bochs = plan(&[status(Engine::Soft, true, true), status(Engine::Bochs, false, true)], None, &payloads);
        assert!(no_bochs.skipped.iter().any(|s| s.engine == Engine::Bochs && s.reason == "bochs reason"));
    }

    fn fake_l0(dir: &Path, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("fake-l0");
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn host() -> HostInfo {
        HostInfo {
            host: serde_json::json!({"cpu_model": "Test CPU", "cpu_vendor": "TestVendor", "kernel": "6.0"}),
            engines: vec![status(Engine::Soft, true, true)],
            kvm_module_params: [("kvm".to_owned(), [("tdp_mmu".to_owned(), "N".to_owned())].into())].into(),
            host_class: "Test CPU / kvm_pvm / 2 cpus".into(),
            kernel: "6.0".into(),
            tsc: Some(Tsc { khz: 2_000_000, source: "test".into() }),
        }
    }

    /// A fake `nestbench-l0` that answers single-level runs properly for its first `ok`
    /// calls and then dies by SIGKILL after saying hello: the killed-child case.
    fn killed_after(dir: &Path, ok: u32) -> PathBuf {
        let count = dir.join("count");
        fake_l0(
            dir,
            &format!(
                r#"n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}
it=$5
echo '{{"event":"hello","stream_version":1}}'
if [ $n -gt {ok} ]; then kill -9 $$; fi
echo "{{\"event\":\"end\",\"single_level\":{{\"kvm_exits\":{{\"io_out\":$((it+1))}},\"results\":{{\"failures\":0,\"hist\":[[16,$it]],\"iterations\":$it,\"max_cycles\":70000,\"min_cycles\":66000,\"total_cycles\":$((it*67000))}},\"status\":0,\"wall_ns\":1000}}}}"
"#,
                c = count.display()
            ),
        )
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nestbench-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn tiny() -> Profile {
        Profile {
            name: "test".into(),
            repetitions: 3,
            warmup: 0,
            target_log2_cycles: 20,
            target_log2_instructions: 10,
            start_iterations: 4,
            max_iterations: 64,
            max_run_wall_ms: 60_000,
        }
    }

    fn run_fake(dir: &Path, l0: PathBuf, payloads: &[&str]) -> BenchOutcome {
        let runner = Runner { l0, timeout_ms: 5000, cpu_model: "x".into() };
        let profile = tiny();
        let ms: Vec<_> = payloads.iter().map(|p| l2_payloads::find(p).unwrap()).collect();
        let info = host();
        let mut plan = plan(&info.engines, None, &ms);
        plan.configs.retain(|c| c.engine == Engine::SingleLevel);
        let x = Exec {
            runner: &runner,
            profile: &profile,
            stop: Arc::new(AtomicBool::new(false)),
            quiet: true,
            journal: None,
            resume: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let executed = rt.block_on(execute(&x, &plan.configs, info.tsc.as_ref()));
        let s = summary(&info, &plan, &profile, executed, SystemTime::now(), "20260101T000000Z-test");
        finish(s, &dir.join("runs"), Some(&dir.join("baseline")), None, None).unwrap()
    }

    #[test]
    fn a_fake_l0_gives_a_complete_run_with_calibration_and_repetitions() {
        let dir = tmpdir("ok");
        let o = run_fake(&dir, killed_after(&dir, 1000), &["outl"]);
        let r = &o.summary.results[0];
        assert!(r.complete, "{:?}", r.errors);
        assert!(!o.summary.partial);
        // 66000 cycles for the fastest iteration: 4, 8, 16 iterations span 2^20 at 16.
        assert_eq!(r.calibration.iter().map(|c| c.iterations).collect::<Vec<_>>(), [4, 8, 16]);
        assert_eq!(r.iterations, 16);
        assert_eq!(r.repetitions.len(), 3);
        let l = r.latency.as_ref().unwrap();
        assert_eq!(l.repetitions.p50, 67000.0);
        assert_eq!(l.repetitions_ns.as_ref().unwrap().p50, 33500.0, "2 GHz");
        assert_eq!(r.exits.as_ref().unwrap().l2_by_reason["io_out"], 17);
        assert!(!o.dir.join(results::PARTIAL_MARKER).exists());
        for f in ["summary.json", "report.md", "dashboard.html", "metrics.openmetrics.txt", "bencher.json"] {
            assert!(o.dir.join(f).is_file(), "{f}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_killed_bench_resumes_from_its_journal_and_measures_only_what_is_missing() {
        let dir = tmpdir("resume");
        let out = dir.join("out");
        let info = host();
        let profile = tiny();
        let ms: Vec<_> = ["outl", "inl"].iter().map(|p| l2_payloads::find(p).unwrap()).collect();
        let mut plan = plan(&info.engines, None, &ms);
        plan.configs.retain(|c| c.engine == Engine::SingleLevel);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let exec = |l0: PathBuf, journal: &results::OutDir, resume: Option<&crate::journal::Resumed>| {
            let runner = Runner { l0, timeout_ms: 5000, cpu_model: "x".into() };
            let x = Exec {
                runner: &runner,
                profile: &profile,
                stop: Arc::new(AtomicBool::new(false)),
                quiet: true,
                journal: Some(journal),
                resume,
            };
            rt.block_on(execute(&x, &plan.configs, info.tsc.as_ref()))
        };
        let header = |run_id: &str| {
            serde_json::to_value(crate::journal::Line::Bench {
                run_id: run_id.into(),
                quick: true,
                engines: None,
                payloads: Some(vec!["outl".into(), "inl".into()]),
                host_class: info.host_class.clone(),
                kernel: info.kernel.clone(),
            })
            .unwrap()
        };
        // The first bench: calibration (3 runs each) and the first round of repetitions, then
        // every child is SIGKILLed; the bench itself dies without writing its run directory.
        let first = dir.join("first");
        std::fs::create_dir_all(&first).unwrap();
        {
            let j = results::OutDir::claim(&out, "r1").unwrap();
            j.record(&header("r1"));
            let e = exec(killed_after(&first, 8), &j, None);
            assert!(!e.partial_reasons.is_empty());
        }
        let journal = out.join("r1.journal.jsonl");
        let resumed = crate::journal::Resumed::read(&journal).unwrap();
        assert_eq!(resumed.payloads.as_deref(), Some(&["outl".to_owned(), "inl".to_owned()][..]));
        assert!(resumed.describe().contains("2 configurations calibrated, 2 repetitions"), "{}", resumed.describe());
        // The resumed bench: no calibration, only the 2 x 2 missing repetitions are measured.
        let second = dir.join("second");
        std::fs::create_dir_all(&second).unwrap();
        let j = results::OutDir::claim(&out, "r2").unwrap();
        j.record(&header("r2"));
        let e = exec(killed_after(&second, 1000), &j, Some(&resumed));
        assert!(e.partial_reasons.is_empty() && e.failures.is_empty(), "{:?} {:?}", e.partial_reasons, e.failures);
        assert_eq!(std::fs::read_to_string(second.join("count")).unwrap().trim(), "4", "children of the resumed bench");
        for r in &e.results {
            assert_eq!((r.iterations, r.repetitions.len(), r.calibration.len()), (16, 3, 3), "{}", r.id);
            assert!(r.exits.is_some() && r.errors.is_empty());
        }
        // The new journal is whole: it resumes to everything, with nothing left to measure.
        let again = crate::journal::Resumed::read(&out.join("r2.journal.jsonl")).unwrap();
        assert!(again.describe().contains("2 configurations calibrated, 6 repetitions"), "{}", again.describe());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_killed_l0_child_gives_a_partial_run_and_no_corrupt_files() {
        let dir = tmpdir("killed");
        // Calibration (3 runs each) and the first round of repetitions succeed; the ninth
        // child (outl's second repetition) and every later one is SIGKILLed.
        let o = run_fake(&dir, killed_after(&dir, 8), &["outl", "inl"]);
        assert!(o.summary.partial);
        assert!(o.dir.join(results::PARTIAL_MARKER).is_file());
        let r = &o.summary.results[0];
        assert!(!r.complete);
        assert_eq!(r.repetitions.len(), 1, "what finished is kept");
        assert!(r.errors[0].contains("killed by signal 9 (SIGKILL"), "{:?}", r.errors);
        assert!(o.summary.partial_reasons.iter().any(|p| p.contains("single_level/outl")));
        // The other configuration went on (and its next child was killed too).
        assert_eq!(o.summary.results.len(), 2);
        assert_eq!(o.summary.results[1].repetitions.len(), 1);
        // Every file parses / is whole; nothing temporary is left.
        let text = std::fs::read_to_string(o.dir.join("summary.json")).unwrap();
        let back: Summary = serde_json::from_str(&text).unwrap();
        assert!(back.partial);
        let v: Value = serde_json::from_str(&text).unwrap();
        let schema: Value = serde_json::from_str(include_str!("../../results/schema/summary.schema.json")).unwrap();
        crate::schema::validate(&schema, &v).unwrap();
        assert!(std::fs::read_to_string(o.dir.join("report.md")).unwrap().contains("PARTIAL"));
        assert!(std::fs::read_to_string(o.dir.join("dashboard.html")).unwrap().trim_end().ends_with("</html>"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("runs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let names: Vec<_> =
            std::fs::read_dir(&o.dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
