//! The results of one `nestbench bench`: the `summary.json` types (schema
//! `results/schema/summary.schema.json`, version [`SCHEMA_VERSION`]), the statistics behind
//! them, and the atomic writing of a run directory.
//!
//! Two kinds of percentiles live here, and the schema says which is which:
//!
//! * across **repetitions** (one l0 child each): every repetition's mean cycles per iteration
//!   is a sample, and `min/p50/p90/p99/max/mean/stddev` over those samples are exact
//!   (linear interpolation between order statistics, as numpy's default);
//! * across the **iterations** of all repetitions: the payloads keep only min, max, total and
//!   a log2 histogram, so `p50/p90/p99` are the bounds `[2^b, 2^(b+1))` of the bucket the
//!   percentile falls in.

use nestbench_protocol::Engine;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of `summary.json`. An incompatible change bumps it (and the schema's `const`).
pub const SCHEMA_VERSION: u32 = 1;

/// The marker file of a run that did not finish.
pub const PARTIAL_MARKER: &str = "PARTIAL";

/// `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The `nestbench` version that wrote it.
    pub nestbench_version: String,
    /// `<timestamp>-<host>`, the run directory's name.
    pub run_id: String,
    /// Start, UTC, RFC 3339.
    pub started_at: String,
    /// End, UTC, RFC 3339.
    pub finished_at: String,
    /// Wall time of the whole bench in seconds.
    pub wall_s: f64,
    /// The run did not finish (Ctrl-C, a killed or failed l0 child): see `partial_reasons`.
    pub partial: bool,
    /// Why it is partial.
    pub partial_reasons: Vec<String>,
    /// Configurations of a finished run that failed (payload failures, guest faults, ...).
    pub failures: Vec<String>,
    /// The measurement profile.
    pub profile: Profile,
    /// The machine's host name.
    pub hostname: String,
    /// What baselines are matched on: CPU model, KVM backend module, logical CPUs.
    pub host_class: String,
    /// `nestbench doctor --json`'s `host` (CPU, kernel, KVM offer, CPL 0 probe, tools).
    pub host: Value,
    /// Loaded KVM modules and their parameters (nested, enable_shadow_vmcs, ept, ...).
    pub kvm_module_params: BTreeMap<String, BTreeMap<String, String>>,
    /// The TSC frequency cycles are converted with; `null`: cycles only.
    pub tsc: Option<Tsc>,
    /// Every engine, whether this host can run it, and whether this bench ran it.
    pub engines: Vec<EngineEntry>,
    /// One entry per (engine, payload, configuration) that was run.
    pub results: Vec<ConfigResult>,
    /// What was not run, with the reason.
    pub skipped: Vec<Skipped>,
    /// The comparison against `results/baseline/<profile>/` when there was one.
    pub baseline: Option<BaselineRef>,
    /// L1 instructions per iteration on several Bochs CPU generations (when bochs ran): one
    /// run per model and payload, exact counts, no repetitions needed.
    #[serde(default)]
    pub bochs_models: Vec<BochsModelRow>,
    /// The kvm engine on emulated hosts (upstream KVM in Bochs): exact steady-state figures
    /// per reflected exit, per CPU model and kernel (`nestbench exact`).
    #[serde(default)]
    pub emulated_hosts: Vec<EmulatedHostRun>,
    /// The journal `bench --resume` finished (its calibrations and repetitions are in this
    /// run); `null`: measured in one go.
    #[serde(default)]
    pub resumed_from: Option<String>,
}

/// One emulated host configuration of a bench: one boot, N and 2N iterations per payload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EmulatedHostRun {
    /// `bochs:<model>`.
    pub host: String,
    /// `--kernel` (`6.1`, `6.12`).
    pub kernel: String,
    /// The kernel release inside (null when it did not boot).
    pub kernel_release: Option<String>,
    /// kvm_intel's parameters as given.
    pub kvm_intel_params: String,
    /// How the boot went (wall times, frames).
    pub boot: Option<crate::hosts::emulated::BootFigures>,
    /// One row per payload.
    pub rows: Vec<crate::exact::ExactRow>,
    /// Why there are no rows, when the host did not boot or stopped.
    pub error: Option<String>,
}

impl EmulatedHostRun {
    /// What rows are matched on across runs: host, kernel release and parameters.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.host, self.kernel_release.as_deref().unwrap_or(&self.kernel), self.kvm_intel_params)
    }
}

/// One payload on one Bochs CPU model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BochsModelRow {
    /// Bochs' model name.
    pub model: String,
    /// The VMX features of the full set (Skylake-X) it lacks.
    pub lacks: Vec<String>,
    /// The payload.
    pub payload: String,
    /// Iterations run.
    pub iterations: u64,
    /// Mean instructions between the payload's two RDTSCs per iteration (exit, L1's handler,
    /// entry); `null` when it failed.
    pub instructions_per_iteration: Option<f64>,
    /// L2 exits L1 handled.
    pub exits: Option<u64>,
    /// Why the row has no figure.
    pub error: Option<String>,
}

/// How the bench measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    /// `quick` (CI) or `full`.
    pub name: String,
    /// Measured repetitions per configuration (one l0 child each).
    pub repetitions: u32,
    /// Extra warm-up runs after calibration (calibration runs are warm-up too).
    pub warmup: u32,
    /// Iterations are doubled, from `start_iterations`, until one run's loop spans at least
    /// 2^`target_log2_cycles` TSC cycles (kvm-unit-tests style), or `max_iterations`.
    pub target_log2_cycles: u32,
    /// The same for Bochs, whose TSC counts instructions.
    pub target_log2_instructions: u32,
    /// The first calibration run's iterations.
    pub start_iterations: u64,
    /// The iteration cap.
    pub max_iterations: u64,
    /// Doubling also stops once a calibration run takes this long (ms, the whole child):
    /// a payload whose untimed part dominates (interrupt windows, ...) must not take minutes.
    pub max_run_wall_ms: u64,
}

/// TSC frequency.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tsc {
    /// kHz.
    pub khz: u64,
    /// Where it came from.
    pub source: String,
}

/// One engine in this run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EngineEntry {
    /// The engine.
    pub engine: Engine,
    /// Whether the host can run it (doctor).
    pub can_run: bool,
    /// Whether nestbench has it built.
    pub implemented: bool,
    /// Whether this bench ran it.
    pub benched: bool,
    /// Doctor's reason, or why it was not benched.
    pub reason: String,
}

/// Something the bench did not run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Skipped {
    /// The engine.
    pub engine: Engine,
    /// The payload (`null`: the whole engine).
    pub payload: Option<String>,
    /// Why.
    pub reason: String,
}

/// What a result measures.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Config {
    /// L2 under L1 under L0 (soft engine).
    Nested,
    /// The single-level twin: the payload as a plain KVM guest of L0.
    SingleLevel,
    /// L1 as root hypervisor on Bochs: instructions per exit, not a nested cost.
    Bochs,
}

/// One measured configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigResult {
    /// Stable key: `soft/outl/shadowing-on`, `single_level/outl`, `bochs/outl`.
    pub id: String,
    /// The engine.
    pub engine: Engine,
    /// The payload.
    pub payload: String,
    /// What it measures.
    pub config: Config,
    /// VMCS shadowing (nested runs only).
    pub vmcs_shadowing: Option<bool>,
    /// `cycles` (TSC), or `instructions` on Bochs (its TSC counts instructions).
    pub unit: String,
    /// Every repetition finished and the payload reported no failure.
    pub complete: bool,
    /// What went wrong, if anything.
    pub errors: Vec<String>,
    /// Iterations of each measured repetition.
    pub iterations: u64,
    /// `calibration` (doubled until the loop spans the target) or `baseline` (the
    /// baseline's iterations, so that counts compare exactly).
    pub iterations_from: String,
    /// The calibration (warm-up) runs: iterations and loop span.
    pub calibration: Vec<CalibrationStep>,
    /// Warm-up runs done (calibration plus extra).
    pub warmup_runs: u32,
    /// Each measured repetition.
    pub repetitions: Vec<Repetition>,
    /// Latency statistics (`null` when no repetition finished).
    pub latency: Option<Latency>,
    /// Exit counts of one repetition (`null` when none finished).
    pub exits: Option<Exits>,
    /// Exit multiplication (nested runs).
    pub exit_multiplication: Option<ExitMultiplication>,
    /// Nested p50 (across repetitions) / single-level p50 of the same payload.
    pub nested_over_single: Option<f64>,
    /// Instructions KVM emulated in the L1 VM during one repetition (`insn_emulation`;
    /// hosts that emulate guest CPL 0 count L1's work here).
    pub kvm_insn_emulation: Option<u64>,
    /// Exit-trace records L1 dropped in one traced run after the repetitions (soft engine;
    /// `null`: the engine streams no trace).
    pub trace_drops: Option<u64>,
    /// Steady-state figures per reflected exit, with the boot's share (nested runs of a
    /// payload whose iterations can be halved).
    #[serde(default)]
    pub steady_state: Option<SteadyState>,
}

/// One calibration run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CalibrationStep {
    /// Iterations asked for.
    pub iterations: u64,
    /// The loop's span (sum of per-iteration cycles).
    pub total: u64,
}

/// One measured repetition (one l0 child).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Repetition {
    /// Iterations done.
    pub iterations: u64,
    /// Mean per iteration.
    pub mean: f64,
    /// Fastest iteration.
    pub min: u64,
    /// Slowest iteration.
    pub max: u64,
    /// Sum over iterations.
    pub total: u64,
    /// `[log2 bucket, count]`.
    pub histogram_log2: Vec<[u64; 2]>,
    /// Wall time of the child's run (first KVM_RUN to end), ns.
    pub wall_ns: Option<u64>,
    /// When it started, seconds after the bench started.
    pub started_s: f64,
    /// Exits L1 handled (nested, Bochs) or KVM exits (single-level) in this repetition.
    pub exits: u64,
    /// Where this run's time went, per layer (soft engine, nested).
    #[serde(default)]
    pub layers: Option<Layers>,
}

/// Time of one soft-engine run per layer, ns, from l0's clocks around each `KVM_RUN`. The
/// layers are what `perf kvm stat` cannot split: L1's VM and L2's VM are both guests of one
/// KVM.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Layers {
    /// L0: l0's userspace between a reflected exit and the next entry (VMCS12 to VMCS02 and
    /// back, the entry checks, EPT12 shadowing), outside any `KVM_RUN`.
    pub l0_ns: f64,
    /// L1: inside L1's `KVM_RUN` between a reflected exit and the next entry: L1's handler,
    /// with KVM's handling of L1's own exits (its traps, emulated instructions).
    pub l1_ns: f64,
    /// L2: inside L2's `KVM_RUN`: L2's code and KVM's entries to and exits from L2's VM.
    pub l2_ns: f64,
}

impl Layers {
    /// The three added.
    #[must_use]
    pub fn total(&self) -> f64 {
        self.l0_ns + self.l1_ns + self.l2_ns
    }

    fn map2(a: &Self, b: &Self, f: impl Fn(f64, f64) -> f64) -> Self {
        Self { l0_ns: f(a.l0_ns, b.l0_ns), l1_ns: f(a.l1_ns, b.l1_ns), l2_ns: f(a.l2_ns, b.l2_ns) }
    }

    /// The median of each layer over `runs` (`None`: none has layers).
    #[must_use]
    pub fn median(runs: &[Repetition]) -> Option<Self> {
        let col = |f: fn(&Self) -> f64| {
            let v: Vec<f64> = runs.iter().filter_map(|r| r.layers.as_ref().map(f)).collect();
            stats(&v).map(|s| s.p50)
        };
        Some(Self { l0_ns: col(|l| l.l0_ns)?, l1_ns: col(|l| l.l1_ns)?, l2_ns: col(|l| l.l2_ns)? })
    }
}

/// Figures of a nested configuration in steady state: the repetitions (`large` iterations)
/// against runs of half as many (`small`), so that boot, set-up and the end cancel in the
/// difference (kvm-unit-tests' and `nestbench exact`'s N vs 2N). Counts are exact (they are
/// deterministic: the same in every run of one size); times are differences of medians.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SteadyState {
    /// Iterations of the smaller runs.
    pub small: u64,
    /// Iterations of the repetitions.
    pub large: u64,
    /// The smaller runs (their counts, layers and wall times).
    pub small_runs: Vec<Repetition>,
    /// Every smaller run had the same exit counts (otherwise the per-exit counts below are
    /// of the first).
    pub counts_stable: bool,
    /// Reflected exits per iteration in steady state. 0: the timed loop takes no exit that
    /// reaches L1 (its exits, if any, come before or after it).
    pub reflected_per_iteration: f64,
    /// L0-only exits (EPT12 shadow fills, ...) per iteration in steady state.
    pub l0_only_per_iteration: f64,
    /// Per reflected exit in steady state (`null` when the loop reflects none).
    pub per_reflected_exit: Option<PerReflectedExit>,
    /// Wall time of one repetition not explained by its iterations in steady state (boot,
    /// set-up, the end), ns, and its share of the repetition's wall time.
    pub boot_ns: Option<f64>,
    /// `boot_ns` / the repetition's wall time (median), 0..1.
    pub boot_share: Option<f64>,
    /// KVM exits (both VMs) of one repetition not explained by its reflected exits in steady
    /// state: the boot's and set-up's.
    pub boot_kvm_exits: Option<f64>,
}

/// What one reflected L2 exit costs in steady state, and where.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PerReflectedExit {
    /// KVM exits of L1's VM.
    pub kvm_exits_l1_vm: f64,
    /// KVM exits of L2's VM.
    pub kvm_exits_l2_vm: f64,
    /// L1 traps to L0 (VMREAD/VMWRITE without shadowing, VMRESUME, ...).
    pub l1_traps: f64,
    /// Time per layer, ns (differences of medians; `null` when a layer's difference came out
    /// negative: its fixed cost varies between runs more than its cost per exit).
    pub layers: Option<Layers>,
}

/// The steady-state figures from the repetitions (`large` iterations each, the first
/// one's counts in `large_counts`) and the smaller runs (each with its counts).
#[must_use]
pub fn steady_state(
    large: &[Repetition],
    large_counts: &PerLevel,
    small: &[(Repetition, PerLevel)],
) -> Option<SteadyState> {
    let (first_small, small_counts) = small.first()?;
    let n_large = large.first()?.iterations;
    let n_small = first_small.iterations;
    if n_large <= n_small {
        return None;
    }
    let di = (n_large - n_small) as f64;
    let d = |f: fn(&PerLevel) -> Option<u64>| Some(f(large_counts)? as f64 - f(small_counts)? as f64);
    let reflected = d(|p| p.reflected_to_l1)?;
    let runs: Vec<Repetition> = small.iter().map(|(r, _)| r.clone()).collect();
    let layers = Layers::median(large).zip(Layers::median(&runs));
    let per_reflected_exit = (reflected > 0.0).then(|| PerReflectedExit {
        kvm_exits_l1_vm: d(|p| p.kvm_exits_l1_vm).unwrap_or(0.0) / reflected,
        kvm_exits_l2_vm: d(|p| p.kvm_exits_l2_vm).unwrap_or(0.0) / reflected,
        l1_traps: d(|p| p.l1_traps).unwrap_or(0.0) / reflected,
        // A layer whose difference comes out negative has a fixed cost that varies more
        // between runs than its cost per exit: no split is better than a wrong one.
        layers: layers
            .map(|(l, s)| Layers::map2(&l, &s, |a, b| (a - b) / reflected))
            .filter(|l| l.l0_ns >= 0.0 && l.l1_ns >= 0.0 && l.l2_ns >= 0.0),
    });
    let wall = |rs: &[Repetition]| {
        stats(&rs.iter().filter_map(|r| r.wall_ns.map(|w| w as f64)).collect::<Vec<_>>()).map(|s| s.p50)
    };
    let (boot_ns, boot_share) = match (wall(large), wall(&runs)) {
        (Some(l), Some(s)) => {
            let boot = l - (l - s) / di * n_large as f64;
            (Some(boot), (l > 0.0).then(|| (boot / l).clamp(0.0, 1.0)))
        }
        _ => (None, None),
    };
    let kvm = |p: &PerLevel| Some(p.kvm_exits_l1_vm? as f64 + p.kvm_exits_l2_vm.unwrap_or(0) as f64);
    let boot_kvm_exits = match (kvm(large_counts), kvm(small_counts)) {
        (Some(l), Some(s)) => Some(l - (l - s) / di * n_large as f64),
        _ => None,
    };
    Some(SteadyState {
        small: n_small,
        large: n_large,
        counts_stable: small.iter().all(|(_, c)| c == small_counts),
        small_runs: runs,
        reflected_per_iteration: reflected / di,
        l0_only_per_iteration: d(|p| p.l0_only).unwrap_or(0.0) / di,
        per_reflected_exit,
        boot_ns,
        boot_share,
        boot_kvm_exits,
    })
}

/// Exact statistics of a sample.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n - 1; 0 for one sample).
    pub stddev: f64,
}

/// A log2 bucket `[lower, upper)`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Bucket {
    /// Inclusive.
    pub lower: f64,
    /// Exclusive.
    pub upper: f64,
}

/// Per-iteration statistics from the merged histogram.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IterationStats {
    /// Fastest iteration (exact).
    pub min: f64,
    /// Slowest iteration (exact).
    pub max: f64,
    /// Mean (exact: total / iterations).
    pub mean: f64,
    /// Log2 bucket of the median.
    pub p50: Bucket,
    /// Log2 bucket of the 90th percentile.
    pub p90: Bucket,
    /// Log2 bucket of the 99th percentile.
    pub p99: Bucket,
}

/// Latency of a configuration, in its unit and (cycles only) in ns.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Repetitions measured (samples of `repetitions`).
    pub repetition_samples: usize,
    /// Each repetition's mean per iteration, in the result's unit.
    pub repetition_means: Vec<f64>,
    /// Exact statistics over `repetition_means`.
    pub repetitions: Stats,
    /// The same in ns (`null`: no TSC frequency, or unit is instructions).
    pub repetitions_ns: Option<Stats>,
    /// Iterations over all repetitions (samples of `iterations`).
    pub iteration_samples: u64,
    /// Per-iteration statistics; percentiles are log2-bucket bounds.
    pub iterations: IterationStats,
    /// The same in ns.
    pub iterations_ns: Option<IterationStats>,
    /// The merged `[log2 bucket, count]` histogram of all iterations.
    pub histogram_log2: Vec<[u64; 2]>,
}

/// Exits of one repetition, per reason and per level.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exits {
    /// L2 exits L1 handled, per basic reason (nested, Bochs); KVM exits of the payload VM
    /// per kind (single-level).
    pub l2_by_reason: BTreeMap<String, u64>,
    /// L2 exits L0 reflected to L1, per reason (nested).
    pub reflected_by_reason: BTreeMap<String, u64>,
    /// Per level.
    pub per_level: PerLevel,
    /// KVM exits (KVM_RUN returns L0 saw) per kind, L1's VM (nested) or the payload VM.
    pub kvm_by_kind: BTreeMap<String, u64>,
    /// Every measured repetition had the same counts.
    pub stable_across_repetitions: bool,
}

/// Exit counts per level.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PerLevel {
    /// L2 exits L0 handled without L1 (EPT shadow fills, ...).
    pub l0_only: Option<u64>,
    /// L2 exits reflected to L1 (the final DONE exit included).
    pub reflected_to_l1: Option<u64>,
    /// L1's traps to L0 while handling them (VMREAD/VMWRITE, VMRESUME, ...).
    pub l1_traps: Option<u64>,
    /// KVM exits of L1's VM.
    pub kvm_exits_l1_vm: Option<u64>,
    /// KVM exits of L2's VM (nested) or of the payload VM (single-level).
    pub kvm_exits_l2_vm: Option<u64>,
}

/// How one L2 exit multiplies.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExitMultiplication {
    /// KVM exits (both VMs) per reflected exit.
    pub kvm_exits_per_reflected_exit: Option<f64>,
    /// L1 traps to L0 per reflected exit that was resumed.
    pub l1_traps_per_reflected_exit: Option<f64>,
}

/// The baseline comparison, summarised.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BaselineRef {
    /// Where the baseline is.
    pub path: String,
    /// Its run id.
    pub run_id: String,
    /// Whether it is of this host class (otherwise the verdicts are informational).
    pub same_host_class: bool,
    /// Significant regressions.
    pub regressions: usize,
    /// Significant improvements.
    pub improvements: usize,
    /// Metrics compared.
    pub compared: usize,
}

impl Summary {
    /// The result with this id.
    #[must_use]
    pub fn result(&self, id: &str) -> Option<&ConfigResult> {
        self.results.iter().find(|r| r.id == id)
    }

    /// Payloads in the order they were run.
    #[must_use]
    pub fn payloads(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for r in &self.results {
            if !v.contains(&r.payload.as_str()) {
                v.push(&r.payload);
            }
        }
        v
    }
}

/// The id of a configuration.
#[must_use]
pub fn config_id(engine: Engine, payload: &str, shadowing: Option<bool>) -> String {
    match shadowing {
        Some(true) => format!("{engine}/{payload}/shadowing-on"),
        Some(false) => format!("{engine}/{payload}/shadowing-off"),
        None => format!("{engine}/{payload}"),
    }
}

/// Exact statistics (linear interpolation between order statistics); `None` when empty.
#[must_use]
pub fn stats(samples: &[f64]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let mean = s.iter().sum::<f64>() / n as f64;
    let var = if n > 1 { s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    Some(Stats {
        min: s[0],
        p50: quantile(&s, 0.5),
        p90: quantile(&s, 0.9),
        p99: quantile(&s, 0.99),
        max: s[n - 1],
        mean,
        stddev: var.sqrt(),
    })
}

/// Quantile `q` of sorted `s` by linear interpolation.
#[must_use]
pub fn quantile(s: &[f64], q: f64) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

impl Stats {
    /// Every field times `k`.
    #[must_use]
    pub fn scaled(&self, k: f64) -> Stats {
        Stats {
            min: self.min * k,
            p50: self.p50 * k,
            p90: self.p90 * k,
            p99: self.p99 * k,
            max: self.max * k,
            mean: self.mean * k,
            stddev: self.stddev * k,
        }
    }
}

impl IterationStats {
    /// Every field times `k`.
    #[must_use]
    pub fn scaled(&self, k: f64) -> IterationStats {
        let b = |x: Bucket| Bucket { lower: x.lower * k, upper: x.upper * k };
        IterationStats {
            min: self.min * k,
            max: self.max * k,
            mean: self.mean * k,
            p50: b(self.p50),
            p90: b(self.p90),
            p99: b(self.p99),
        }
    }
}

/// Merge `[bucket, count]` histograms.
#[must_use]
pub fn merge_histograms<'a>(hists: impl IntoIterator<Item = &'a [[u64; 2]]>) -> Vec<[u64; 2]> {
    let mut m: BTreeMap<u64, u64> = BTreeMap::new();
    for h in hists {
        for &[b, c] in h {
            *m.entry(b).or_default() += c;
        }
    }
    m.into_iter().map(|(b, c)| [b, c]).collect()
}

/// Latency of a set of finished repetitions; `None` when there are none. `ns_per_unit` is
/// `Some(1e6 / tsc_khz)` for cycles with a known TSC.
#[must_use]
pub fn latency(reps: &[Repetition], ns_per_unit: Option<f64>) -> Option<Latency> {
    let means: Vec<f64> = reps.iter().map(|r| r.mean).collect();
    let repetitions = stats(&means)?;
    let hist = merge_histograms(reps.iter().map(|r| r.histogram_log2.as_slice()));
    let pairs: Vec<(u64, u64)> = hist.iter().map(|&[b, c]| (b, c)).collect();
    let bucket = |q| {
        let (lower, upper) = crate::run::percentile_bucket(&pairs, q).unwrap_or((0, 0));
        Bucket { lower: lower as f64, upper: upper as f64 }
    };
    let n: u64 = reps.iter().map(|r| r.iterations).sum();
    let total: u64 = reps.iter().map(|r| r.total).sum();
    let iterations = IterationStats {
        min: reps.iter().map(|r| r.min).min().unwrap_or(0) as f64,
        max: reps.iter().map(|r| r.max).max().unwrap_or(0) as f64,
        mean: if n > 0 { total as f64 / n as f64 } else { 0.0 },
        p50: bucket(0.5),
        p90: bucket(0.9),
        p99: bucket(0.99),
    };
    Some(Latency {
        repetition_samples: reps.len(),
        repetitions_ns: ns_per_unit.map(|k| repetitions.scaled(k)),
        repetitions,
        repetition_means: means,
        iteration_samples: n,
        iterations_ns: ns_per_unit.map(|k| iterations.scaled(k)),
        iterations,
        histogram_log2: hist,
    })
}

/// UTC time as RFC 3339 (`2026-01-02T03:04:05Z`) and as a compact stamp (`20260102T030405Z`).
#[must_use]
pub fn utc(t: std::time::SystemTime) -> (String, String) {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    (format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z"), format!("{y:04}{mo:02}{d:02}T{h:02}{m:02}{s:02}Z"))
}

/// This machine's host name, made safe for a directory name.
#[must_use]
pub fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    let s: String =
        raw.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if s.is_empty() { "host".into() } else { s }
}

/// Write `bytes` to `path` atomically: a temporary file next to it, fsync, rename. A reader
/// sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Write a run directory `out/name` atomically: it is built as `out/.name.tmp-PID` (files
/// written with [`write_atomic`], plus a [`PARTIAL_MARKER`] file when `partial`) and renamed
/// into place. Dot-directories left by a killed bench are ignored by history scans. When
/// `out/name` exists, `-2`, `-3`, ... is appended. Returns the final directory.
pub fn write_run_dir(out: &Path, name: &str, files: &[(&str, Vec<u8>)], partial: bool) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let tmp = out.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir(&tmp)?;
    for (file, bytes) in files {
        write_atomic(&tmp.join(file), bytes)?;
    }
    if partial {
        write_atomic(
            &tmp.join(PARTIAL_MARKER),
            b"This run did not finish; summary.json has \"partial\": true and says why.\n",
        )?;
    }
    let mut dest = out.join(name);
    let mut k = 2;
    while dest.exists() {
        dest = out.join(format!("{name}-{k}"));
        k += 1;
    }
    std::fs::rename(&tmp, &dest)?;
    if let Ok(d) = std::fs::File::open(out) {
        let _ = d.sync_all();
    }
    Ok(dest)
}

/// Free space a bench wants in its output directory before it measures anything (a run
/// directory is well under 1 MiB; this leaves room for the journal and the temporaries).
pub const MIN_FREE_BYTES: u64 = 64 << 20;

/// A bench's hold on its output directory: checked writable with space before anything is
/// measured, locked against a second bench writing into it at the same time, and a journal
/// that takes each finished calibration and repetition at once (appended, fsync'd), so that
/// a bench killed or failing at the end leaves what it measured readable
/// (`OUT/<run id>.journal.jsonl`). Dropping it releases the lock.
#[derive(Debug)]
pub struct OutDir {
    journal: std::sync::Mutex<std::fs::File>,
    /// The journal's path.
    pub journal_path: PathBuf,
    _lock: std::fs::File,
}

impl OutDir {
    /// Claim `out` for run `run_id`; every error names the path.
    pub fn claim(out: &Path, run_id: &str) -> anyhow::Result<Self> {
        let named = |what: &str, e: &dyn std::fmt::Display| anyhow::anyhow!("--out {}: {what}: {e}", out.display());
        std::fs::create_dir_all(out).map_err(|e| named("cannot create it", &e))?;
        let lock_path = out.join(".nestbench.lock");
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| named("cannot write there", &e))?;
        // SAFETY: flock on a file descriptor this function owns; no memory is involved.
        let try_lock = || unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) };
        // A lock this process just released can still be held for a moment by a child forked
        // meanwhile (it shares the descriptor until its exec closes it): retry for 200 ms
        // before calling it another bench, which holds it for minutes.
        let mut tries = 0;
        let mut held = try_lock() != 0;
        while held && tries < 40 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            tries += 1;
            held = try_lock() != 0;
        }
        if held {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            anyhow::bail!(
                "--out {}: another nestbench bench ({}) is writing there; wait for it or use another --out",
                out.display(),
                holder.trim()
            );
        }
        lock.set_len(0)
            .and_then(|()| write!(lock, "pid {}", std::process::id()))
            .map_err(|e| named("cannot write there", &e))?;
        let free = free_bytes(out).map_err(|e| named("cannot read its free space", &e))?;
        if free < MIN_FREE_BYTES {
            anyhow::bail!(
                "--out {}: {} MiB free, a bench wants at least {} MiB",
                out.display(),
                free >> 20,
                MIN_FREE_BYTES >> 20
            );
        }
        let journal_path = out.join(format!("{run_id}.journal.jsonl"));
        let journal = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&journal_path)
            .map_err(|e| named("cannot write there", &e))?;
        Ok(Self { journal: std::sync::Mutex::new(journal), journal_path, _lock: lock })
    }

    /// Append one JSON line to the journal and make it durable. A failure is reported on
    /// stderr and does not stop the bench (the run directory at the end is the result; the
    /// journal is what survives a crash).
    pub fn record(&self, line: &Value) {
        let mut f = self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = writeln!(f, "{line}").and_then(|()| f.sync_data()) {
            eprintln!("warning: journal {}: {e}", self.journal_path.display());
        }
    }

    /// The journal so far (for the run directory).
    #[must_use]
    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.journal_path).unwrap_or_default()
    }

    /// The run directory has everything: the journal outside it goes.
    pub fn finished(&self) {
        let _ = std::fs::remove_file(&self.journal_path);
    }
}

/// Free bytes for an unprivileged writer on the file system of `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero statvfs is a valid value for the kernel to overwrite.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Read a summary from a run directory or a `summary.json` path.
pub fn load(path: &Path) -> anyhow::Result<Summary> {
    let file = if path.is_dir() { path.join("summary.json") } else { path.to_owned() };
    let text = std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", file.display()))?;
    let version = v["schema_version"].as_u64();
    if version != Some(u64::from(SCHEMA_VERSION)) {
        anyhow::bail!(
            "{}: schema_version {} is not {SCHEMA_VERSION}, the version this nestbench reads",
            file.display(),
            v["schema_version"]
        );
    }
    serde_json::from_value(v).map_err(|e| anyhow::anyhow!("{}: not a nestbench summary: {e}", file.display()))
}

/// Every summary under `dir` (`dir/*/summary.json`, dot-directories skipped), oldest first
/// (by `started_at`). Unreadable ones are skipped.
#[must_use]
pub fn history(dir: &Path) -> Vec<Summary> {
    let mut v: Vec<Summary> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| load(&e.path()).ok())
        .collect();
    v.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.run_id.cmp(&b.run_id)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_state_cancels_the_boot_and_splits_one_reflected_exit_by_layer() {
        // A run of n iterations: 1 reflected exit per iteration plus the final one, 2 KVM exits
        // of L1's VM and 1 of L2's per reflected exit plus 150 at boot; wall 1 ms of boot plus
        // 3 us per iteration; per reflected exit L0 200 ns, L1 1000 ns, L2 300 ns (+ L1 set-up).
        let run = |n: u64, jitter: f64| {
            let reflected = n + 1;
            let rep = Repetition {
                iterations: n,
                mean: 0.0,
                min: 0,
                max: 0,
                total: 0,
                histogram_log2: vec![],
                wall_ns: Some(1_000_000 + 3_000 * n + jitter as u64),
                started_s: 0.0,
                exits: n,
                layers: Some(Layers {
                    l0_ns: 200.0 * reflected as f64 + jitter,
                    l1_ns: 1000.0 * reflected as f64 + 5_000.0,
                    l2_ns: 300.0 * reflected as f64,
                }),
            };
            let counts = PerLevel {
                l0_only: Some(4),
                reflected_to_l1: Some(reflected),
                l1_traps: Some(reflected),
                kvm_exits_l1_vm: Some(2 * reflected + 150),
                kvm_exits_l2_vm: Some(reflected),
            };
            (rep, counts)
        };
        let large: Vec<Repetition> = [0.0, 10.0, 20.0].iter().map(|j| run(1000, *j).0).collect();
        let small: Vec<(Repetition, PerLevel)> = [0.0, 10.0, 20.0].iter().map(|j| run(500, *j)).collect();
        let s = steady_state(&large, &run(1000, 0.0).1, &small).unwrap();
        assert_eq!((s.small, s.large, s.counts_stable), (500, 1000, true));
        assert_eq!((s.reflected_per_iteration, s.l0_only_per_iteration), (1.0, 0.0));
        let p = s.per_reflected_exit.unwrap();
        assert_eq!((p.kvm_exits_l1_vm, p.kvm_exits_l2_vm, p.l1_traps), (2.0, 1.0, 1.0));
        assert_eq!(p.layers, Some(Layers { l0_ns: 200.0, l1_ns: 1000.0, l2_ns: 300.0 }));
        // 3 (2 + 1) KVM exits per iteration's exit explain 3 * 1000; the rest is boot and the
        // end (the final DONE exit's 3).
        assert_eq!(s.boot_kvm_exits, Some(153.0));
        assert!((s.boot_ns.unwrap() - 1_000_010.0).abs() < 1.0, "{:?}", s.boot_ns);
        assert!((s.boot_share.unwrap() - 1_000_010.0 / 4_000_010.0).abs() < 1e-9);

        // A loop that reflects nothing: no per-exit figures, said so by the rate.
        let none = |n: u64| {
            let (mut r, mut c) = run(n, 0.0);
            r.layers = None;
            c.reflected_to_l1 = Some(1);
            (r, c)
        };
        let s = steady_state(&[none(1000).0], &none(1000).1, &[none(500)]).unwrap();
        assert_eq!((s.reflected_per_iteration, s.per_reflected_exit), (0.0, None));
        // Unequal counts among the smaller runs are said; equal sizes give nothing.
        let mut other = run(500, 0.0);
        other.1.l1_traps = Some(7);
        assert!(!steady_state(&large, &run(1000, 0.0).1, &[run(500, 0.0), other]).unwrap().counts_stable);
        assert_eq!(steady_state(&large, &run(1000, 0.0).1, &[run(1000, 0.0)]), None);
        // A layer whose half-size runs took longer than the repetitions: no split, counts kept.
        let mut slow = run(500, 0.0);
        slow.0.layers.as_mut().unwrap().l0_ns = 1e9;
        let s = steady_state(&large, &run(1000, 0.0).1, &[slow]).unwrap();
        let p = s.per_reflected_exit.unwrap();
        assert_eq!((p.layers, p.l1_traps), (None, 1.0));
    }

    #[test]
    fn exact_stats() {
        let s = stats(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.min, s.max, s.mean), (1.0, 4.0, 2.5));
        assert!((s.p50 - 2.5).abs() < 1e-12);
        assert!((s.p90 - 3.7).abs() < 1e-12);
        assert!((s.stddev - 1.290_994_448_735_805_6).abs() < 1e-12);
        assert_eq!(stats(&[7.0]).unwrap().stddev, 0.0);
        assert!(stats(&[]).is_none());
    }

    #[test]
    fn utc_formats() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(utc(t), ("2023-11-14T22:13:20Z".to_owned(), "20231114T221320Z".to_owned()));
        assert_eq!(utc(std::time::UNIX_EPOCH).0, "1970-01-01T00:00:00Z");
    }

    #[test]
    fn histograms_merge_and_latency_uses_buckets_within_and_exact_across() {
        let rep = |mean: f64, hist: Vec<[u64; 2]>| Repetition {
            iterations: hist.iter().map(|h| h[1]).sum(),
            mean,
            min: 1000,
            max: 5000,
            total: (mean * hist.iter().map(|h| h[1]).sum::<u64>() as f64) as u64,
            histogram_log2: hist,
            wall_ns: None,
            started_s: 0.0,
            exits: 0,
            layers: None,
        };
        let reps = [rep(1500.0, vec![[10, 8], [11, 2]]), rep(1700.0, vec![[10, 5], [12, 5]])];
        let l = latency(&reps, Some(0.5)).unwrap();
        assert_eq!(l.histogram_log2, vec![[10, 13], [11, 2], [12, 5]]);
        assert_eq!(l.iterations.p50, Bucket { lower: 1024.0, upper: 2048.0 });
        assert_eq!(l.iterations.p99, Bucket { lower: 4096.0, upper: 8192.0 });
        assert_eq!(l.repetitions.p50, 1600.0);
        assert_eq!(l.repetitions_ns.unwrap().p50, 800.0);
        assert_eq!(l.iteration_samples, 20);
    }

    #[test]
    fn an_out_dir_is_claimed_once_and_its_journal_survives() {
        let out = std::env::temp_dir().join(format!("nestbench-outdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let a = OutDir::claim(&out, "run-a").unwrap();
        let e = OutDir::claim(&out, "run-b").unwrap_err().to_string();
        assert!(e.contains("another nestbench bench (pid ") && e.contains(&out.display().to_string()), "{e}");
        a.record(&serde_json::json!({"kind": "repetition", "id": "soft/outl/shadowing-on"}));
        a.record(&serde_json::json!({"kind": "error", "id": "x", "error": "y"}));
        let text = std::fs::read_to_string(out.join("run-a.journal.jsonl")).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "each record is on disk at once: {text}");
        assert_eq!(a.contents(), text.as_bytes());
        a.finished();
        assert!(!out.join("run-a.journal.jsonl").exists());
        drop(a);
        let b = OutDir::claim(&out, "run-b").expect("the lock goes with the bench");
        drop(b);
        let file = out.join("a-file");
        std::fs::write(&file, "x").unwrap();
        let e = OutDir::claim(&file.join("runs"), "r").unwrap_err().to_string();
        assert!(e.starts_with(&format!("--out {}: cannot create it: ", file.join("runs").display())), "{e}");
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn run_dirs_appear_whole_with_a_partial_marker_when_partial() {
        let out = std::env::temp_dir().join(format!("nestbench-rd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let d = write_run_dir(&out, "r1", &[("summary.json", b"{}".to_vec())], true).unwrap();
        assert_eq!(d, out.join("r1"));
        assert!(d.join(PARTIAL_MARKER).exists());
        let d2 = write_run_dir(&out, "r1", &[("summary.json", b"{}".to_vec())], false).unwrap();
        assert_eq!(d2, out.join("r1-2"));
        assert!(!d2.join(PARTIAL_MARKER).exists());
        let names: Vec<String> =
            std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "no temporaries left: {names:?}");
        std::fs::remove_dir_all(&out).unwrap();
    }

    use serde_json::json;

    fn schema() -> Value {
        serde_json::from_str(include_str!("../../results/schema/summary.schema.json")).expect("the schema is JSON")
    }

    #[test]
    fn the_fixture_summary_validates_and_every_emitted_key_is_in_the_schema() {
        // additionalProperties is false on every object of fixed shape, so any key the code
        // emits and the schema lacks fails here.
        let s = crate::compare::tests::fixture();
        let v = serde_json::to_value(&s).unwrap();
        crate::schema::validate(&schema(), &v).unwrap_or_else(|e| panic!("{e:#?}"));
        let mut broken = v.clone();
        broken["results"][0]["latency"]["repetitions"]["surprise"] = json!(1);
        assert!(crate::schema::validate(&schema(), &broken).unwrap_err()[0].contains("surprise"));
        assert_eq!(schema()["properties"]["schema_version"]["const"], crate::results::SCHEMA_VERSION);
    }

    #[test]
    fn a_summary_with_every_optional_part_filled_validates() {
        let mut s = crate::compare::tests::fixture();
        s.partial = true;
        s.partial_reasons = vec!["x".into()];
        s.baseline = Some(crate::results::BaselineRef {
            path: "results/baseline".into(),
            run_id: "r".into(),
            same_host_class: true,
            regressions: 0,
            improvements: 1,
            compared: 9,
        });
        s.results[0].trace_drops = Some(0);
        s.bochs_models = vec![
            BochsModelRow {
                model: "corei7_sandy_bridge_2600k".into(),
                lacks: vec!["VMCS shadowing".into()],
                payload: "outl".into(),
                iterations: 50,
                instructions_per_iteration: Some(156.0),
                exits: Some(50),
                error: None,
            },
            BochsModelRow {
                model: "corei5_lynnfield_750".into(),
                lacks: vec![],
                payload: "hlt".into(),
                iterations: 50,
                instructions_per_iteration: None,
                exits: None,
                error: Some("e".into()),
            },
        ];
        s.emulated_hosts = vec![
            EmulatedHostRun {
                host: "bochs:corei7_skylake_x".into(),
                kernel: "6.1".into(),
                kernel_release: Some("6.1.0-57-cloud-amd64".into()),
                kvm_intel_params: "nested=1".into(),
                boot: Some(crate::hosts::emulated::BootFigures::default()),
                rows: vec![
                    crate::exact::ExactRow {
                        payload: "outl".into(),
                        n: 100,
                        min_round_trip: Some(1),
                        ..Default::default()
                    },
                    crate::exact::ExactRow {
                        payload: "hlt".into(),
                        n: 100,
                        error: Some("e".into()),
                        ..Default::default()
                    },
                ],
                error: None,
            },
            EmulatedHostRun {
                host: "bochs:corei7_ivy_bridge_3770k".into(),
                kernel: "6.12".into(),
                kernel_release: None,
                kvm_intel_params: "nested=1".into(),
                boot: None,
                rows: vec![],
                error: Some("did not boot".into()),
            },
        ];
        s.results[0].errors = vec!["e".into()];
        s.resumed_from = Some("r1 (out/r1.journal.jsonl)".into());
        let layers = Some(Layers { l0_ns: 1.0, l1_ns: 2.0, l2_ns: 3.0 });
        let large = Repetition { iterations: 64, layers, ..s.results[0].repetitions[0].clone() };
        let small = Repetition { iterations: 32, ..large.clone() };
        let counts = |n| PerLevel { reflected_to_l1: Some(n), kvm_exits_l1_vm: Some(n), ..PerLevel::default() };
        s.results[0].steady_state = steady_state(&[large], &counts(65), &[(small, counts(33))]);
        assert!(s.results[0].steady_state.as_ref().is_some_and(|x| x.per_reflected_exit.is_some()));
        s.tsc = None;
        s.results[0].iterations_from = "baseline".into();
        crate::schema::validate(&schema(), &serde_json::to_value(&s).unwrap()).unwrap_or_else(|e| panic!("{e:#?}"));
    }
}
