//! `nestbench compare BASE NEW`: a noise-aware verdict per metric.
//!
//! * **Latency** (cycles per iteration; one sample per repetition): a change is significant
//!   when the two sets of repetitions do not overlap at all (LKP's rule, at least
//!   [`MIN_SAMPLES`] each) **and** the median moved by more than the noise threshold. With 5
//!   or more repetitions, the fastest and slowest fifth of each side are set aside first: the
//!   repetitions are interleaved over the whole bench, so a burst of host load lands in one
//!   repetition of every configuration, and one such sample must not hide a real shift. The
//!   threshold is rustc-perf's: Q3 + 3 × IQR of this configuration's past run-to-run changes
//!   when the history has at least [`MIN_HISTORY`] of them, never below [`MIN_THRESHOLD`];
//!   without history [`NO_HISTORY_THRESHOLD`], or the range of the baseline's kept
//!   repetitions where that is more ([`threshold`]: measured). A configuration whose repetitions within one run
//!   spread over [`MAX_SPREAD`] is not gated on latency at all (inconclusive, said so).
//! * **Counts** (L2 exits per reason, reflected exits, L0-only exits, L1 traps, KVM exits
//!   per VM, instructions KVM emulated in L1; Bochs' instructions per iteration) are
//!   compared exactly, when both runs did the same iterations and the count was the same in
//!   every repetition of both; more is a regression, fewer an improvement. Counts that depend on
//!   the host's KVM ([`HOST_COUNTS`]) are compared only between runs of one host context.
//! * **Configurations**: one that worked in BASE and failed in NEW, or is missing from a NEW
//!   that is partial or skipped its engine on the same host, is a regression, named.
//! * **Comparable runs**: latencies are compared only between runs of one *context*: host
//!   class (CPU model, KVM backend, CPUs), kernel release and profile ([`context`]); across
//!   contexts they are "not comparable", in one summary line, never a regression.
//!
//! Exit status of `nestbench compare` ([`Comparison::exit_code`]): 0 no regression, 1 a
//! regression, 2 nothing could be compared (or an input was unreadable).

use std::fmt::Write;

use serde::Serialize;
use serde_json::{Value, json};

use crate::results::{Config, ConfigResult, Summary};

/// Version of `compare --json`.
pub const COMPARE_VERSION: u32 = 1;
/// The smallest relative latency change ever called significant (run-to-run drift of the
/// shared 2-core development machines reaches several percent).
pub const MIN_THRESHOLD: f64 = 0.10;
/// The threshold without history, at least: two runs of one build move further than one
/// run's repetitions show (measured on kvm_pvm over 5 pairs of same-build quick benches:
/// medians of configurations whose kept repetitions did not overlap moved up to +14.7%).
pub const NO_HISTORY_THRESHOLD: f64 = 0.15;
/// Past deltas needed before the history sets the threshold.
pub const MIN_HISTORY: usize = 4;
/// Repetitions each side needs for a latency verdict.
pub const MIN_SAMPLES: usize = 3;
/// A configuration whose repetitions within one run spread wider than this (slowest /
/// fastest, the outer fifth set aside) is not gated on latency: its samples are bimodal or unstable (measured:
/// `ept_remap` on kvm_pvm alternates between ~1.2 M and ~10 M cycles per iteration from one
/// repetition to the next), so two runs of one build can fail to overlap by chance.
pub const MAX_SPREAD: f64 = 2.0;

/// A verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Significantly worse.
    Regression,
    /// Significantly better.
    Improvement,
    /// No significant change.
    Unchanged,
    /// Not enough data to say (too few repetitions, a count that varies, a failed run).
    Inconclusive,
    /// Not comparable (different iterations, missing on one side).
    Incomparable,
}

/// One metric's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// The configuration (`soft/outl/shadowing-on`).
    pub id: String,
    /// The metric.
    pub metric: String,
    /// `latency` or `count`.
    pub kind: &'static str,
    /// Base value (median for latency).
    pub base: Value,
    /// New value.
    pub new: Value,
    /// Relative change in percent.
    pub delta_pct: Option<f64>,
    /// The verdict.
    pub verdict: Kind,
    /// Which rule decided, and how sure.
    pub why: String,
    /// For a verdict that is neither a regression nor an improvement nor unchanged: why, in
    /// a few words shared by every metric it applies to (render groups them).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub group: &'static str,
}

impl Verdict {
    fn not_compared(mut self, verdict: Kind, group: &'static str, why: String) -> Self {
        self.verdict = verdict;
        self.group = group;
        self.why = why;
        self
    }
}

/// The comparison of two runs.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// [`COMPARE_VERSION`].
    pub compare_version: u32,
    /// Base run id.
    pub base: String,
    /// New run id.
    pub new: String,
    /// Both runs are of the same host class.
    pub same_host_class: bool,
    /// Base host class.
    pub base_host_class: String,
    /// New host class.
    pub new_host_class: String,
    /// Base run's context ([`context`]).
    pub base_context: String,
    /// New run's context.
    pub new_context: String,
    /// The contexts are equal: latencies and host-dependent counts were compared.
    pub same_context: bool,
    /// Either run is partial.
    pub partial: bool,
    /// How far the single-level twins' latencies moved (median, %), when that was more than
    /// [`HOST_DRIFT`]: then no latency was judged ([`host_drift`]).
    pub host_drift_pct: Option<f64>,
    /// Per metric.
    pub verdicts: Vec<Verdict>,
}

/// The single-level twins are a control group: no L1 and no nested path runs in them, only
/// L0's plain path and the host's KVM. When their latencies moved by more than this (median
/// relative change, one context), the host itself moved between the runs, and latency
/// verdicts would judge the host: none is given. Measured on this development machine: two
/// quick benches of one build 20 minutes apart, every configuration, single-level included,
/// 15-27% slower in the second (the same with the build before the change under test).
pub const HOST_DRIFT: f64 = 0.075;

/// Withdraw the latency verdicts when the single-level twins moved more than [`HOST_DRIFT`];
/// the drift (%), if so.
fn host_drift(verdicts: &mut [Verdict]) -> Option<f64> {
    let deltas: Vec<f64> = verdicts
        .iter()
        .filter(|v| v.kind == "latency" && v.id.starts_with("single_level/"))
        .filter_map(|v| v.delta_pct)
        .collect();
    if deltas.len() < 2 {
        return None;
    }
    let drift = median(&deltas);
    if drift.abs() <= HOST_DRIFT * 100.0 {
        return None;
    }
    for v in verdicts.iter_mut().filter(|v| v.kind == "latency" && v.group.is_empty()) {
        let why = format!(
            "the single-level twins moved {drift:+.1}% (median of {}): the host (or L0's plain path) changed between \
             the runs; rerun both on a quiet host, or compare with --history",
            deltas.len()
        );
        *v = v.clone().not_compared(Kind::Incomparable, "latencies while the host drifted", why);
    }
    Some(drift)
}

impl Comparison {
    /// Significant regressions.
    #[must_use]
    pub fn regressions(&self) -> usize {
        self.verdicts.iter().filter(|v| v.verdict == Kind::Regression).count()
    }

    /// Significant improvements.
    #[must_use]
    pub fn improvements(&self) -> usize {
        self.verdicts.iter().filter(|v| v.verdict == Kind::Improvement).count()
    }

    /// Metrics that got a verdict (regression, improvement or unchanged).
    #[must_use]
    pub fn compared(&self) -> usize {
        self.verdicts
            .iter()
            .filter(|v| matches!(v.verdict, Kind::Regression | Kind::Improvement | Kind::Unchanged))
            .count()
    }

    /// What was not compared, counted per reason in one line (`None`: everything was).
    #[must_use]
    pub fn not_compared(&self) -> Option<String> {
        let mut groups: Vec<(&str, usize)> = Vec::new();
        for v in self.verdicts.iter().filter(|v| !v.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == v.group) {
                Some((_, n)) => *n += 1,
                None => groups.push((v.group, 1)),
            }
        }
        (!groups.is_empty()).then(|| groups.iter().map(|(g, n)| format!("{n} {g}")).collect::<Vec<_>>().join(", "))
    }

    /// `nestbench compare`'s exit status: 1 on a regression, 2 when nothing was comparable,
    /// 0 otherwise.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        if self.regressions() > 0 {
            1
        } else if self.compared() == 0 {
            2
        } else {
            0
        }
    }
}

/// What latencies and host-dependent counts are comparable within: host class (CPU model,
/// KVM backend, CPUs), kernel release, profile.
#[must_use]
pub fn context(s: &Summary) -> String {
    context_of(&s.host_class, s.host.get("kernel").and_then(Value::as_str).unwrap_or("unknown"), &s.profile.name)
}

/// [`context`] from its parts.
#[must_use]
pub fn context_of(host_class: &str, kernel: &str, profile: &str) -> String {
    format!("{host_class}, kernel {kernel}, {profile} profile")
}

/// Counts that depend on the host's KVM rather than on the payload and the engine alone:
/// how many exits KVM takes for them and how many instructions its emulator runs. Compared
/// only within one [`context`].
pub const HOST_COUNTS: [&str; 3] = ["kvm_exits_l1_vm", "kvm_exits_l2_vm", "kvm_insn_emulation_l1"];

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    crate::results::quantile(&s, 0.5)
}

/// The samples sorted, without the fastest and slowest fifth (none below 5 samples).
fn inner(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let trim = s.len() / 5;
    s[trim..s.len() - trim].to_vec()
}

/// The noise threshold for `id` from the history: Q3 + 3 × IQR of the relative changes of
/// its median between consecutive runs, at least [`MIN_THRESHOLD`]; with its source. Without
/// enough history: [`NO_HISTORY_THRESHOLD`], or the range the baseline's kept repetitions
/// span (slowest - fastest of those the rule keeps, relative to their median) where that is
/// more. A run's repetitions see the noise within one run; between two runs a configuration
/// moves further. Measured on kvm_pvm over 5 pairs of same-build `bench --quick` runs: with a
/// 10% threshold the gate flagged 3 same-build changes (ept_fill +14.7%, ept_fetch +12.6% and
/// +10.0%), with this rule none; a 20% slowdown injected into outl, hlt and rdmsr (shadowing
/// on), outl (off), single-level hlt and outl, and ept_touch was flagged in 31 of 35 cases
/// (the misses: ept_touch, whose repetitions still overlapped).
#[must_use]
pub fn threshold(id: &str, history: &[Summary], base_means: &[f64]) -> (f64, String) {
    let medians: Vec<f64> = history
        .iter()
        .filter(|s| !s.partial)
        .filter_map(|s| s.result(id)?.latency.as_ref().map(|l| l.repetitions.p50))
        .filter(|v| *v > 0.0)
        .collect();
    let mut deltas: Vec<f64> = medians.windows(2).map(|w| (w[1] / w[0] - 1.0).abs()).collect();
    if deltas.len() < MIN_HISTORY {
        let kept = inner(base_means);
        let m = median(base_means);
        let range = match (kept.first(), kept.last()) {
            (Some(lo), Some(hi)) if m > 0.0 => (hi - lo) / m,
            _ => 0.0,
        };
        if range > NO_HISTORY_THRESHOLD {
            return (
                range,
                format!(
                    "threshold {:.1}% = the range of the baseline's kept repetitions (over the default {:.0}%)",
                    range * 100.0,
                    NO_HISTORY_THRESHOLD * 100.0
                ),
            );
        }
        return (NO_HISTORY_THRESHOLD, format!("the default threshold {:.0}%", NO_HISTORY_THRESHOLD * 100.0));
    }
    deltas.sort_by(f64::total_cmp);
    let q1 = crate::results::quantile(&deltas, 0.25);
    let q3 = crate::results::quantile(&deltas, 0.75);
    let t = (q3 + 3.0 * (q3 - q1)).max(MIN_THRESHOLD);
    (
        t,
        format!(
            "threshold {:.1}% = max({:.0}%, Q3 + 3 IQR of {} past run-to-run changes)",
            t * 100.0,
            MIN_THRESHOLD * 100.0,
            deltas.len()
        ),
    )
}

fn latency_verdict(id: &str, b: &ConfigResult, n: &ConfigResult, history: &[Summary]) -> Verdict {
    let (bs, ns) = (
        b.latency.as_ref().map(|l| l.repetition_means.clone()).unwrap_or_default(),
        n.latency.as_ref().map(|l| l.repetition_means.clone()).unwrap_or_default(),
    );
    let metric = format!("latency_{}_per_iteration", b.unit);
    let mut v = Verdict {
        id: id.into(),
        metric,
        kind: "latency",
        base: json!(if bs.is_empty() { None } else { Some(median(&bs)) }),
        new: json!(if ns.is_empty() { None } else { Some(median(&ns)) }),
        delta_pct: None,
        verdict: Kind::Inconclusive,
        why: String::new(),
        group: "",
    };
    if bs.len() < MIN_SAMPLES || ns.len() < MIN_SAMPLES {
        let why = format!("{} vs {} repetitions; the rule needs at least {MIN_SAMPLES} each", bs.len(), ns.len());
        return v.not_compared(Kind::Inconclusive, "too few repetitions", why);
    }
    let spread = |v: &[f64]| {
        let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        if lo > 0.0 { hi / lo } else { f64::INFINITY }
    };
    // Over the repetitions the rule below keeps (the outer fifth set aside): one burst of
    // host load in one repetition does not make a configuration ungated.
    let (sb, sn) = (spread(&inner(&bs)), spread(&inner(&ns)));
    if sb > MAX_SPREAD || sn > MAX_SPREAD {
        let why = format!(
            "the repetitions of one run span {sb:.1}x (base) and {sn:.1}x (new), over {MAX_SPREAD}x: too unstable to gate"
        );
        return v.not_compared(Kind::Inconclusive, "latencies too unstable to gate", why);
    }
    let (mb, mn) = (median(&bs), median(&ns));
    let delta = if mb > 0.0 { mn / mb - 1.0 } else { 0.0 };
    v.delta_pct = Some(delta * 100.0);
    let (t, tsrc) = threshold(id, history, &bs);
    let (ib, in_) = (inner(&bs), inner(&ns));
    let slower = in_[0] > ib[ib.len() - 1];
    let faster = in_[in_.len() - 1] < ib[0];
    let trimmed = if ib.len() < bs.len() || in_.len() < ns.len() {
        format!(" (the fastest and slowest {} and {} set aside)", (bs.len() - ib.len()) / 2, (ns.len() - in_.len()) / 2)
    } else {
        String::new()
    };
    let sure = format!(
        "no overlap of {} vs {} repetitions{trimmed} and |{:+.1}%| > {tsrc}",
        ib.len(),
        in_.len(),
        delta * 100.0
    );
    (v.verdict, v.why) = if slower && delta > t {
        (Kind::Regression, sure)
    } else if faster && -delta > t {
        (Kind::Improvement, sure)
    } else if slower || faster {
        (Kind::Unchanged, format!("no overlap, but {:+.1}% is within the noise ({tsrc})", delta * 100.0))
    } else {
        (Kind::Unchanged, format!("the repetitions overlap ({:+.1}%)", delta * 100.0))
    };
    v
}

/// An exit reason as summaries key it now: the kernel's name. Summaries written before
/// (schema 1 of an older nestbench) keyed by the SDM's name; both compare as one.
fn reason_key(k: &str) -> String {
    nestbench_abi::vmx::ExitReason::from_name(k).map_or_else(|| k.to_owned(), |r| r.kernel_name().to_owned())
}

fn counts(r: &ConfigResult) -> Vec<(String, Option<u64>)> {
    let mut v = Vec::new();
    if let Some(e) = &r.exits {
        for (k, n) in &e.l2_by_reason {
            v.push((format!("l2_exits[{}]", reason_key(k)), Some(*n)));
        }
        let p = &e.per_level;
        for (name, x) in [
            ("l0_only_exits", p.l0_only),
            ("reflected_to_l1", p.reflected_to_l1),
            ("l1_traps", p.l1_traps),
            ("kvm_exits_l1_vm", p.kvm_exits_l1_vm),
            ("kvm_exits_l2_vm", p.kvm_exits_l2_vm),
        ] {
            if x.is_some() {
                v.push((name.into(), x));
            }
        }
    }
    if r.kvm_insn_emulation.is_some() {
        v.push(("kvm_insn_emulation_l1".into(), r.kvm_insn_emulation));
    }
    if r.config == Config::Bochs {
        v.push(("instructions_total".into(), r.repetitions.first().map(|rep| rep.total)));
    }
    v
}

fn count_verdicts(id: &str, b: &ConfigResult, n: &ConfigResult, same_context: bool, out: &mut Vec<Verdict>) {
    let bc = counts(b);
    let nc = counts(n);
    let stable = |r: &ConfigResult| r.exits.as_ref().is_none_or(|e| e.stable_across_repetitions);
    let mut names: Vec<&String> = bc.iter().chain(nc.iter()).map(|(k, _)| k).collect();
    names.sort();
    names.dedup();
    for name in names {
        let get = |c: &[(String, Option<u64>)]| c.iter().find(|(k, _)| k == name).and_then(|(_, v)| *v);
        let (x, y) = (get(&bc), get(&nc));
        let v = Verdict {
            id: id.into(),
            metric: name.clone(),
            kind: "count",
            base: json!(x),
            new: json!(y),
            delta_pct: None,
            verdict: Kind::Unchanged,
            why: String::new(),
            group: "",
        };
        let (x, y) = match (x, y) {
            (Some(x), Some(y)) => (x, y),
            _ => {
                out.push(v.not_compared(
                    Kind::Incomparable,
                    "counted on one side only",
                    "present on one side only".into(),
                ));
                continue;
            }
        };
        let mut v = Verdict { delta_pct: (x > 0).then(|| (y as f64 / x as f64 - 1.0) * 100.0), ..v };
        if b.iterations != n.iterations {
            let why = format!(
                "iterations differ ({} vs {}): counts are compared exactly only at equal iterations",
                b.iterations, n.iterations
            );
            v = v.not_compared(Kind::Incomparable, "counts at different iterations", why);
        } else if !same_context && HOST_COUNTS.contains(&name.as_str()) {
            let why = "a count of the host's KVM, and the runs' hosts or kernels differ".to_owned();
            v = v.not_compared(Kind::Incomparable, "host counts of another host or kernel", why);
        } else if name == "instructions_total" || stable(b) && stable(n) {
            (v.verdict, v.why) = match y.cmp(&x) {
                std::cmp::Ordering::Greater => (Kind::Regression, format!("exact count: {:+}", y as i128 - x as i128)),
                std::cmp::Ordering::Less => (Kind::Improvement, format!("exact count: {:+}", y as i128 - x as i128)),
                std::cmp::Ordering::Equal => (Kind::Unchanged, "exact count: equal".into()),
            };
        } else {
            v = v.not_compared(
                Kind::Inconclusive,
                "counts that varied between repetitions",
                "the count varied between repetitions of one run".into(),
            );
        }
        out.push(v);
    }
}

/// Emulated-host figures that are means over the timed loop: exact only between sessions
/// that booted the same medium (`BootFigures::boot_medium`).
const MEAN_METRICS: [&str; 2] = ["instructions_per_round_trip", "tracepoint_instructions_per_round_trip"];

/// The emulated-host figures that are cycles (instructions under Bochs and QEMU `-icount`).
const CYCLE_METRICS: [&str; 3] =
    ["instructions_per_round_trip", "min_round_trip", "tracepoint_instructions_per_round_trip"];

/// How far QEMU `-icount` cycle figures may move between two runs of one build, as a
/// fraction: the band compare calls unchanged. Measured: a single run's mean repeats to
/// 0.0004 % (docs/emulated-hosts.md), but the steady-state figure (the difference of an N and
/// a 2N run) moved 0.54 % (115 of 21,564 instructions, `outl` on 6.1) between two quick
/// benches of one build; the exit counts stayed exact.
const QEMU_CYCLE_JITTER: f64 = 0.02;

/// How far a QEMU row's per-reflected-exit counts may move between two runs of one build:
/// an emulated timer interrupt lands in the N or the 2N run or in neither (measured: `hlt`
/// on 6.1 had 0.01 `interrupt` L1 exits per reflected exit in one bench and none in the next,
/// and KVM exits 5.00 vs 4.99). Two such exits of N = 100.
const QEMU_COUNT_JITTER: f64 = 0.02;

/// The kvm engine's exact figures on emulated hosts, matched on host, kernel release,
/// kvm_intel parameters and payload: they are deterministic (the same on every boot), so
/// any change is a verdict; a row that worked in BASE and failed in NEW is a regression.
fn emulated_verdicts(base: &Summary, new: &Summary, out: &mut Vec<Verdict>) {
    for b in &base.emulated_hosts {
        for br in b.rows.iter().filter(|r| r.error.is_none()) {
            let id = format!("kvm/{}/{}", br.payload, b.key());
            let verdict = |metric: &str, x: Value, y: Value, verdict: Kind, why: String| Verdict {
                id: id.clone(),
                metric: metric.into(),
                kind: "count",
                base: x,
                new: y,
                delta_pct: None,
                verdict,
                why,
                group: match verdict {
                    Kind::Incomparable | Kind::Inconclusive => "emulated-host figures not comparable",
                    _ => "",
                },
            };
            let Some(n) = new.emulated_hosts.iter().find(|n| n.key() == b.key()) else {
                out.push(verdict(
                    "configuration",
                    Value::Null,
                    Value::Null,
                    Kind::Incomparable,
                    "host not in the new run".into(),
                ));
                continue;
            };
            let nr = n.rows.iter().find(|r| r.payload == br.payload && r.n == br.n);
            if nr.is_none() && n.error.is_none() && !new.partial {
                // The host ran to its end without this payload: the new run did not select it.
                let v = verdict("configuration", json!("ok"), Value::Null, Kind::Incomparable, String::new());
                out.push(v.not_compared(
                    Kind::Incomparable,
                    "not selected in the new run",
                    "not in the new run".into(),
                ));
                continue;
            }
            let Some(nr) = nr.filter(|r| r.error.is_none()) else {
                let why = nr
                    .and_then(|r| r.error.clone())
                    .or_else(|| n.error.clone())
                    .unwrap_or_else(|| "missing in the new run".into());
                out.push(verdict(
                    "configuration",
                    json!("ok"),
                    json!("failed"),
                    Kind::Regression,
                    format!("worked in the base run, not in the new one: {why}"),
                ));
                continue;
            };
            let mut metrics = vec![
                ("instructions_per_round_trip", br.instructions_per_round_trip, nr.instructions_per_round_trip),
                ("min_round_trip", br.min_round_trip.unwrap_or(0) as f64, nr.min_round_trip.unwrap_or(0) as f64),
                (
                    "tracepoint_instructions_per_round_trip",
                    br.tracepoint_instructions_per_round_trip,
                    nr.tracepoint_instructions_per_round_trip,
                ),
                ("kvm_exits_per_reflected", br.kvm_exits_per_reflected, nr.kvm_exits_per_reflected),
                ("nested_runs_per_reflected", br.nested_runs_per_reflected, nr.nested_runs_per_reflected),
                ("l0_handled_per_reflected", br.l0_handled_per_reflected, nr.l0_handled_per_reflected),
            ];
            let mut reasons: Vec<&String> =
                br.l1_exits_per_reflected.keys().chain(nr.l1_exits_per_reflected.keys()).collect();
            reasons.sort();
            reasons.dedup();
            let l1: Vec<(String, f64, f64)> = reasons
                .iter()
                .map(|k| {
                    let g = |r: &crate::exact::ExactRow| r.l1_exits_per_reflected.get(*k).copied().unwrap_or(0.0);
                    (format!("l1_exits_per_reflected.{k}"), g(br), g(nr))
                })
                .collect();
            metrics.extend(l1.iter().map(|(k, x, y)| (k.as_str(), *x, *y)));
            let medium = |e: &crate::results::EmulatedHostRun| e.boot.as_ref().map(|b| b.boot_medium.clone());
            let same_medium = medium(b).is_some() && medium(b) == medium(n);
            for (metric, x, y) in metrics {
                if !same_medium && MEAN_METRICS.contains(&metric) {
                    let why = "boot media differ (another l0 build or set of runs): the mean moves with where the \
                               emulated host's timer interrupts land; min_round_trip and the exit counts are compared"
                        .to_owned();
                    out.push(verdict(metric, json!(x), json!(y), Kind::Incomparable, why));
                    continue;
                }
                // QEMU's `-icount` cycles repeat to within a few in 10^6, not exactly
                // (docs/emulated-hosts.md): within QEMU_CYCLE_JITTER they are unchanged.
                let qemu = b.host == "qemu";
                let cycles = CYCLE_METRICS.contains(&metric);
                if qemu && cycles && (y - x).abs() <= x.abs() * QEMU_CYCLE_JITTER {
                    let why = format!("{:+} is within -icount's jitter ({}%)", y - x, QEMU_CYCLE_JITTER * 100.0);
                    out.push(verdict(metric, json!(x), json!(y), Kind::Unchanged, why));
                    continue;
                }
                if qemu && !cycles && (y - x).abs() <= QEMU_COUNT_JITTER + 1e-9 {
                    let why = format!(
                        "{:+} per reflected exit is within QEMU's timer-interrupt jitter ({QEMU_COUNT_JITTER})",
                        y - x
                    );
                    out.push(verdict(metric, json!(x), json!(y), Kind::Unchanged, why));
                    continue;
                }
                let (kind, why) = match y.partial_cmp(&x) {
                    Some(std::cmp::Ordering::Greater) => (Kind::Regression, format!("exact count: {:+}", y - x)),
                    Some(std::cmp::Ordering::Less) => (Kind::Improvement, format!("exact count: {:+}", y - x)),
                    _ => (Kind::Unchanged, "exact count: equal".into()),
                };
                let mut v = verdict(metric, json!(x), json!(y), kind, why);
                v.delta_pct = (x > 0.0).then(|| (y / x - 1.0) * 100.0);
                out.push(v);
            }
        }
    }
}

/// Whether `r` ran completely without errors.
fn worked(r: &ConfigResult) -> bool {
    r.complete && r.errors.is_empty()
}

/// The verdict on a configuration of `base` that `new` has no result for: a regression when
/// it worked in BASE and NEW is partial, or skipped its whole engine on the same host
/// context; otherwise not comparable (NEW did not select it, or dropped it from its matrix).
fn missing_verdict(b: &ConfigResult, new: &Summary, same_context: bool) -> Verdict {
    let v = Verdict {
        id: b.id.clone(),
        metric: "configuration".into(),
        kind: "configuration",
        base: json!(if worked(b) { "ok" } else { "failed" }),
        new: Value::Null,
        delta_pct: None,
        verdict: Kind::Regression,
        why: String::new(),
        group: "",
    };
    let skipped =
        new.skipped.iter().find(|k| k.engine == b.engine && k.payload.as_deref().is_none_or(|p| p == b.payload));
    match (worked(b), new.partial, skipped) {
        (true, true, _) => Verdict {
            why: format!(
                "worked in the base run, missing from the new one, which is partial: {}",
                new.partial_reasons.join("; ")
            ),
            ..v
        },
        // The whole engine skipped on the same host: it stopped working there. A payload
        // skipped on its own is a change of the matrix (e.g. a twin found unlike), not one.
        (true, false, Some(k)) if same_context && k.payload.is_none() => Verdict {
            why: format!("worked in the base run; the new run skipped its engine on the same host: {}", k.reason),
            ..v
        },
        (_, _, Some(k)) => v.not_compared(Kind::Incomparable, "skipped in the new run", k.reason.clone()),
        _ => v.not_compared(Kind::Incomparable, "not selected in the new run", "not in the new run".into()),
    }
}

/// Compare `new` against `base`; `history` (oldest first) sets the latency noise threshold.
#[must_use]
pub fn compare(base: &Summary, new: &Summary, history: &[Summary]) -> Comparison {
    let (base_context, new_context) = (context(base), context(new));
    let same_context = base_context == new_context;
    let mut verdicts = Vec::new();
    for b in &base.results {
        let Some(n) = new.result(&b.id) else {
            verdicts.push(missing_verdict(b, new, same_context));
            continue;
        };
        if worked(b) && !worked(n) {
            verdicts.push(Verdict {
                id: b.id.clone(),
                metric: "configuration".into(),
                kind: "configuration",
                base: json!("ok"),
                new: json!("failed"),
                delta_pct: None,
                verdict: Kind::Regression,
                why: format!("worked in the base run, failed in the new one: {}", n.errors.join("; ")),
                group: "",
            });
            continue;
        }
        if b.unit == "cycles" {
            let v = latency_verdict(&b.id, b, n, history);
            verdicts.push(if same_context {
                v
            } else {
                let why = format!("latency of {base_context} vs {new_context}");
                v.not_compared(Kind::Incomparable, "latencies of another host, kernel or profile", why)
            });
        }
        count_verdicts(&b.id, b, n, same_context, &mut verdicts);
    }
    for n in new.results.iter().filter(|n| base.result(&n.id).is_none()) {
        verdicts.push(Verdict {
            id: n.id.clone(),
            metric: "configuration".into(),
            kind: "configuration",
            base: Value::Null,
            new: json!(if worked(n) { "ok" } else { "failed" }),
            delta_pct: None,
            verdict: Kind::Incomparable,
            why: "not in the base run".into(),
            group: "new configurations",
        });
    }
    emulated_verdicts(base, new, &mut verdicts);
    let host_drift_pct = if same_context { host_drift(&mut verdicts) } else { None };
    Comparison {
        compare_version: COMPARE_VERSION,
        base: base.run_id.clone(),
        new: new.run_id.clone(),
        same_host_class: base.host_class == new.host_class,
        base_host_class: base.host_class.clone(),
        new_host_class: new.host_class.clone(),
        base_context,
        new_context,
        same_context,
        partial: base.partial || new.partial,
        host_drift_pct,
        verdicts,
    }
}

/// The comparison for a terminal: what it compared, each regression and improvement, what
/// was not compared in one line per reason, then a one-line verdict.
#[must_use]
pub fn render(c: &Comparison) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "compare {} (base) -> {} (new)", c.base, c.new);
    if c.same_context {
        let _ = writeln!(s, "both runs: {}", c.base_context);
    } else {
        let _ =
            writeln!(s, "not comparable for latency and host counts: base {}, new {}", c.base_context, c.new_context);
    }
    if c.partial {
        let _ = writeln!(s, "note: a partial run is involved");
    }
    if let Some(d) = c.host_drift_pct {
        let _ =
            writeln!(s, "host drift: the single-level twins moved {d:+.1}%, so no latency was judged (counts were)");
    }
    for v in c.verdicts.iter().filter(|v| matches!(v.verdict, Kind::Regression | Kind::Improvement)) {
        let _ = writeln!(
            s,
            "  {:<12} {:<32} {:<28} {} -> {}{}  ({})",
            format!("{:?}", v.verdict).to_lowercase(),
            v.id,
            v.metric,
            fmt_val(&v.base),
            fmt_val(&v.new),
            v.delta_pct.map_or_else(String::new, |d| format!(" ({d:+.1}%)")),
            v.why
        );
    }
    if let Some(line) = c.not_compared() {
        let _ = writeln!(s, "not compared: {line}");
    }
    let unchanged = c.verdicts.iter().filter(|v| v.verdict == Kind::Unchanged).count();
    let _ = writeln!(
        s,
        "{} metrics: {} regressions, {} improvements, {unchanged} unchanged, {} not compared",
        c.verdicts.len(),
        c.regressions(),
        c.improvements(),
        c.verdicts.len() - c.compared()
    );
    let _ = writeln!(
        s,
        "{}",
        match c.exit_code() {
            1 => "verdict: REGRESSION",
            2 => "verdict: NOT COMPARABLE (no metric could be compared)",
            _ => "verdict: ok",
        }
    );
    s
}

/// A number for humans.
#[must_use]
pub fn fmt_val(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{f:.0}"),
        Some(f) => format!("{f:.1}"),
        None => "-".into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A summary with outl nested (shadowing on) and its single-level twin.
    pub(crate) fn fixture() -> Summary {
        serde_json::from_str(include_str!("../tests/fixtures/summary.json")).expect("the fixture parses")
    }

    fn scale_latency(s: &mut Summary, id: &str, k: f64) {
        let r = s.results.iter_mut().find(|r| r.id == id).unwrap();
        for rep in &mut r.repetitions {
            rep.mean *= k;
        }
        r.latency = crate::results::latency(&r.repetitions, Some(1e6 / 2_596_000.0));
    }

    fn emulated(instructions: f64, error: Option<&str>) -> crate::results::EmulatedHostRun {
        crate::results::EmulatedHostRun {
            host: "bochs:corei7_skylake_x".into(),
            kernel: "6.1".into(),
            kernel_release: Some("6.1.0-57-cloud-amd64".into()),
            kvm_intel_params: "nested=1".into(),
            boot: Some(crate::hosts::emulated::BootFigures { boot_medium: "0badcafe".into(), ..Default::default() }),
            rows: vec![crate::exact::ExactRow {
                payload: "outl".into(),
                n: 100,
                reflected: 100,
                instructions_per_round_trip: instructions,
                min_round_trip: Some(16_942),
                tracepoint_instructions_per_round_trip: 3_000.0,
                kvm_exits_per_reflected: 2.0,
                nested_runs_per_reflected: 1.0,
                l0_handled_per_reflected: 0.0,
                l1_exits_per_reflected: [("VMRESUME".to_owned(), 1.0)].into(),
                error: error.map(Into::into),
            }],
            error: None,
        }
    }

    #[test]
    fn emulated_host_figures_are_exact_and_a_row_that_stops_working_is_a_regression() {
        let mut base = fixture();
        base.emulated_hosts = vec![emulated(17_622.8, None)];
        let same = compare(&base, &base, &[]);
        assert_eq!(same.regressions(), 0, "{}", render(&same));
        let v = same.verdicts.iter().find(|v| v.metric == "l1_exits_per_reflected.VMRESUME").unwrap();
        assert_eq!(
            (v.id.as_str(), v.verdict),
            ("kvm/outl/bochs:corei7_skylake_x/6.1.0-57-cloud-amd64/nested=1", Kind::Unchanged)
        );
        let mut new = base.clone();
        new.emulated_hosts = vec![emulated(17_623.8, None)];
        let c = compare(&base, &new, &[]);
        assert_eq!(c.regressions(), 1, "{}", render(&c));
        assert!(c.verdicts.iter().any(|v| v.metric == "instructions_per_round_trip" && v.why == "exact count: +1"));
        // Another boot medium (another l0 build): the mean is not compared, the rest is.
        new.emulated_hosts[0].boot.as_mut().unwrap().boot_medium = "feedf00d".into();
        let c = compare(&base, &new, &[]);
        assert_eq!(c.regressions(), 0, "{}", render(&c));
        let v = c.verdicts.iter().find(|v| v.metric == "instructions_per_round_trip").unwrap();
        assert_eq!(v.verdict, Kind::Incomparable, "{}", v.why);
        assert!(c.verdicts.iter().any(|v| v.metric == "min_round_trip" && v.verdict == Kind::Unchanged));
        new.emulated_hosts = vec![emulated(0.0, Some("KVM refused"))];
        let c = compare(&base, &new, &[]);
        let v = c.verdicts.iter().find(|v| v.metric == "configuration").unwrap();
        assert_eq!(v.verdict, Kind::Regression);
        assert!(v.why.contains("KVM refused"), "{}", v.why);
        new.emulated_hosts = vec![emulated(17_622.8, None)];
        new.emulated_hosts[0].rows.clear();
        let c = compare(&base, &new, &[]);
        let v = c.verdicts.iter().find(|v| v.metric == "configuration").unwrap();
        assert_eq!(
            (v.verdict, v.group),
            (Kind::Incomparable, "not selected in the new run"),
            "a payload the new run did not select on a host that ran to its end: {}",
            v.why
        );
        new.partial = true;
        let c = compare(&base, &new, &[]);
        assert_eq!(c.regressions(), 1, "the same payload missing from a partial run: {}", render(&c));
        new.partial = false;
        new.emulated_hosts.clear();
        let c = compare(&base, &new, &[]);
        assert_eq!(c.regressions(), 0, "a host the new run did not measure is not comparable, not a regression");
    }

    #[test]
    fn qemu_rows_are_judged_within_their_measured_jitter() {
        let mut base = fixture();
        base.emulated_hosts = vec![emulated(21_461.6, None)];
        base.emulated_hosts[0].host = "qemu".into();
        let mut new = base.clone();
        let r = &mut new.emulated_hosts[0].rows[0];
        r.instructions_per_round_trip = 21_466.7;
        r.kvm_exits_per_reflected += 0.01;
        let c = compare(&base, &new, &[]);
        assert_eq!(c.regressions(), 0, "{}", render(&c));
        let r = &mut new.emulated_hosts[0].rows[0];
        r.instructions_per_round_trip *= 1.05;
        r.kvm_exits_per_reflected += 1.0;
        let c = compare(&base, &new, &[]);
        assert_eq!(c.regressions(), 2, "5% more instructions and one more KVM exit per reflected exit: {}", render(&c));
    }

    #[test]
    fn a_baseline_keyed_by_sdm_exit_names_compares_with_kernel_names() {
        let new = fixture();
        let mut base = new.clone();
        for r in &mut base.results {
            if let Some(e) = r.exits.as_mut() {
                if let Some(n) = e.l2_by_reason.remove("IO_INSTRUCTION") {
                    e.l2_by_reason.insert("I/O instruction".into(), n);
                }
            }
        }
        let c = compare(&base, &new, &[]);
        assert_eq!(c.regressions(), 0, "{}", render(&c));
        let v = c.verdicts.iter().find(|v| v.metric == "l2_exits[IO_INSTRUCTION]").expect("compared under one name");
        assert_eq!(v.verdict, Kind::Unchanged);
    }

    #[test]
    fn identical_runs_pass() {
        let s = fixture();
        let c = compare(&s, &s, &[]);
        assert_eq!(c.regressions(), 0, "{}", render(&c));
        assert_eq!(c.improvements(), 0);
        assert!(c.verdicts.iter().any(|v| v.kind == "latency" && v.verdict == Kind::Unchanged));
        assert!(c.verdicts.iter().any(|v| v.kind == "count" && v.verdict == Kind::Unchanged));
        assert!(render(&c).contains("verdict: ok"));
    }

    #[test]
    fn an_injected_20_percent_latency_regression_is_flagged() {
        let base = fixture();
        let mut new = fixture();
        scale_latency(&mut new, "soft/outl/shadowing-on", 1.2);
        let c = compare(&base, &new, &[]);
        let v = c.verdicts.iter().find(|v| v.id == "soft/outl/shadowing-on" && v.kind == "latency").unwrap();
        assert_eq!(v.verdict, Kind::Regression, "{}", render(&c));
        assert!((v.delta_pct.unwrap() - 20.0).abs() < 1e-6);
        assert!(v.why.contains("no overlap"), "{}", v.why);
        assert_eq!(c.regressions(), 1, "only that one: {}", render(&c));
        assert!(render(&c).contains("verdict: REGRESSION"));
        // And 20% faster is an improvement, not a regression.
        let mut faster = fixture();
        scale_latency(&mut faster, "soft/outl/shadowing-on", 1.0 / 1.2);
        assert_eq!(compare(&base, &faster, &[]).improvements(), 1);
    }

    #[test]
    fn small_shifts_and_overlapping_samples_are_noise() {
        let base = fixture();
        let mut new = fixture();
        scale_latency(&mut new, "soft/outl/shadowing-on", 1.08);
        let c = compare(&base, &new, &[]);
        assert_eq!(c.regressions(), 0, "8% is below the 10% floor: {}", render(&c));
        // A noisy history raises the threshold: 20% is then within the noise.
        let mut history = Vec::new();
        for k in [1.0, 1.3, 1.0, 1.35, 0.95, 1.3] {
            let mut h = fixture();
            scale_latency(&mut h, "soft/outl/shadowing-on", k);
            history.push(h);
        }
        let (t, why) = threshold("soft/outl/shadowing-on", &history, &[1.0, 1.01, 1.02]);
        assert!(t > 0.2, "{t} {why}");
        let mut new = fixture();
        scale_latency(&mut new, "soft/outl/shadowing-on", 1.2);
        assert_eq!(compare(&base, &new, &history).regressions(), 0);
    }

    #[test]
    fn without_history_same_build_drift_is_not_a_regression() {
        // Two runs of one build measured on kvm_pvm (ept_fill, shadowing off): the medians
        // moved +14.7% and the kept repetitions do not overlap.
        let base = [511_262.0, 613_074.0, 618_018.0, 620_847.0, 642_448.0, 694_113.0, 634_190.0];
        let new = [690_258.0, 712_386.0, 763_601.0, 820_672.0, 713_864.0, 629_659.0, 663_757.0];
        let mut b = fixture();
        let mut n = fixture();
        for (s, means) in [(&mut b, &base), (&mut n, &new)] {
            let r = s.results.iter_mut().find(|r| r.id == "soft/outl/shadowing-on").unwrap();
            r.repetitions =
                means.iter().map(|m| crate::results::Repetition { mean: *m, ..r.repetitions[0].clone() }).collect();
            r.latency = crate::results::latency(&r.repetitions, None);
        }
        let c = compare(&b, &n, &[]);
        let v = c.verdicts.iter().find(|v| v.id == "soft/outl/shadowing-on" && v.kind == "latency").unwrap();
        assert_eq!(v.verdict, Kind::Unchanged, "{}", v.why);
        assert!(v.why.contains("within the noise (the default threshold 15%)"), "{}", v.why);
        // Kept repetitions that spread wider than 15% raise the threshold to their range.
        let (t, why) = threshold("x", &[], &[1.0, 1.3, 1.1, 1.2, 5.0]);
        assert!((t - 0.2 / 1.2).abs() < 1e-9 && why.contains("kept repetitions"), "{t} {why}");
    }

    #[test]
    fn when_the_single_level_twins_move_the_host_moved_and_no_latency_is_judged() {
        let base = fixture();
        let mut new = fixture();
        for id in ["single_level/outl", "single_level/compute", "soft/outl/shadowing-on", "soft/outl/shadowing-off"] {
            scale_latency(&mut new, id, 1.2);
        }
        let c = compare(&base, &new, &[]);
        assert_eq!(c.regressions(), 0, "{}", render(&c));
        assert!(c.host_drift_pct.is_some_and(|d| (d - 20.0).abs() < 1e-6), "{:?}", c.host_drift_pct);
        assert!(render(&c).contains("host drift: the single-level twins moved +20.0%"), "{}", render(&c));
        assert!(c.verdicts.iter().filter(|v| v.kind == "latency").all(|v| v.verdict == Kind::Incomparable));
        assert!(c.verdicts.iter().any(|v| v.kind == "count" && v.verdict == Kind::Unchanged), "counts still judged");
        // Only the nested path slower: a regression, not drift.
        let mut new = fixture();
        scale_latency(&mut new, "soft/outl/shadowing-on", 1.2);
        let c = compare(&base, &new, &[]);
        assert_eq!((c.host_drift_pct, c.regressions()), (None, 1));
    }

    #[test]
    fn counts_are_compared_exactly() {
        let base = fixture();
        let mut new = fixture();
        let r = new.results.iter_mut().find(|r| r.id == "soft/outl/shadowing-on").unwrap();
        r.exits.as_mut().unwrap().per_level.l1_traps = r.exits.as_ref().unwrap().per_level.l1_traps.map(|n| n + 1);
        let c = compare(&base, &new, &[]);
        let v = c.verdicts.iter().find(|v| v.metric == "l1_traps" && v.id == "soft/outl/shadowing-on").unwrap();
        assert_eq!(v.verdict, Kind::Regression, "one more trap is a regression");
        assert_eq!(v.why, "exact count: +1");
        // Different iterations: not comparable, never a false verdict.
        let mut other = fixture();
        other.results.iter_mut().for_each(|r| r.iterations *= 2);
        let c = compare(&base, &other, &[]);
        assert!(c.verdicts.iter().filter(|v| v.kind == "count").all(|v| v.verdict == Kind::Incomparable));
    }

    #[test]
    fn one_noisy_repetition_does_not_hide_a_shift() {
        let mut base = fixture();
        let r = base.results.iter_mut().find(|r| r.id == "soft/outl/shadowing-on").unwrap();
        for (rep, m) in r.repetitions.iter_mut().zip([100.0, 101.0, 99.0, 150.0, 100.5]) {
            rep.mean = m;
        }
        r.latency = crate::results::latency(&r.repetitions, None);
        let mut new = base.clone();
        scale_latency(&mut new, "soft/outl/shadowing-on", 1.2);
        let c = compare(&base, &new, &[]);
        let v = c.verdicts.iter().find(|v| v.id == "soft/outl/shadowing-on" && v.kind == "latency").unwrap();
        assert_eq!(v.verdict, Kind::Regression, "{}", render(&c));
        assert!(v.why.contains("set aside"), "{}", v.why);
        assert_eq!(inner(&[5.0, 1.0, 3.0, 2.0, 4.0]), [2.0, 3.0, 4.0]);
        assert_eq!(inner(&[3.0, 1.0, 2.0]), [1.0, 2.0, 3.0]);
    }

    #[test]
    fn a_configuration_that_worked_and_now_fails_or_is_lost_is_a_regression() {
        let base = fixture();
        let id = "soft/outl/shadowing-on";
        let mut new = fixture();
        let r = new.results.iter_mut().find(|r| r.id == id).unwrap();
        r.complete = false;
        r.errors = vec!["the payload reported status 0 with 3 failures".into()];
        let c = compare(&base, &new, &[]);
        let v = c.verdicts.iter().find(|v| v.id == id && v.metric == "configuration").unwrap();
        assert_eq!(v.verdict, Kind::Regression, "{}", render(&c));
        assert!(v.why.contains("3 failures"), "{}", v.why);
        assert_eq!(c.exit_code(), 1);
        assert!(render(&c).contains(id) && render(&c).contains("verdict: REGRESSION"));
        // Gone from a partial run: a regression; gone from a run that did not select it: not compared.
        let mut partial = fixture();
        partial.results.retain(|r| r.id != id);
        partial.partial = true;
        partial.partial_reasons = vec!["interrupted (Ctrl-C)".into()];
        let c = compare(&base, &partial, &[]);
        assert!(c.verdicts.iter().any(|v| v.id == id && v.verdict == Kind::Regression), "{}", render(&c));
        partial.partial = false;
        let c = compare(&base, &partial, &[]);
        let v = c.verdicts.iter().find(|v| v.id == id).unwrap();
        assert_eq!((v.verdict, v.group), (Kind::Incomparable, "not selected in the new run"));
        // A payload dropped from the matrix (a twin found unlike): not a regression.
        partial.skipped.push(crate::results::Skipped {
            engine: nestbench_protocol::Engine::Soft,
            payload: Some("outl".into()),
            reason: "no twin".into(),
        });
        let c = compare(&base, &partial, &[]);
        assert!(c.verdicts.iter().any(|v| v.id == id && v.verdict == Kind::Incomparable), "{}", render(&c));
        // Its engine skipped on the same host (it stopped working there): a regression.
        partial.skipped = vec![crate::results::Skipped {
            engine: nestbench_protocol::Engine::Soft,
            payload: None,
            reason: "KVM is not usable".into(),
        }];
        let c = compare(&base, &partial, &[]);
        assert!(c.verdicts.iter().any(|v| v.id == id && v.verdict == Kind::Regression && v.why.contains("not usable")));
    }

    #[test]
    fn another_kernel_or_profile_is_not_comparable_for_latency_and_never_a_regression() {
        let base = fixture();
        for (what, edit) in [
            ("kernel", (|s: &mut Summary| s.host["kernel"] = json!("6.18.99")) as fn(&mut Summary)),
            ("profile", |s: &mut Summary| s.profile.name = "full".into()),
            ("host class", |s: &mut Summary| s.host_class = "Other CPU / kvm_intel / 64 cpus".into()),
        ] {
            let mut new = fixture();
            edit(&mut new);
            scale_latency(&mut new, "soft/outl/shadowing-on", 1.5);
            let r = new.results.iter_mut().find(|r| r.id == "soft/outl/shadowing-on").unwrap();
            r.kvm_insn_emulation = r.kvm_insn_emulation.map(|n| n + 2);
            let c = compare(&base, &new, &[]);
            assert!(!c.same_context, "{what}");
            assert_eq!(c.regressions(), 0, "{what}: {}", render(&c));
            let v = c.verdicts.iter().find(|v| v.kind == "latency").unwrap();
            assert_eq!(v.verdict, Kind::Incomparable, "{what}");
            let text = render(&c);
            assert!(text.contains("not comparable for latency and host counts: base "), "{what}: {text}");
            assert!(text.contains("latencies of another host, kernel or profile"), "{what}: {text}");
            assert_eq!(text.lines().filter(|l| l.contains("incomparable")).count(), 0, "one line, not a row each");
            // Guest-level counts are still compared exactly: the gate still says something.
            assert!(c.verdicts.iter().any(|v| v.metric == "l1_traps" && v.verdict == Kind::Unchanged), "{what}");
            assert_eq!(c.exit_code(), 0, "{what}");
        }
    }

    #[test]
    fn a_bimodal_configuration_is_not_gated_on_latency() {
        // ept_remap's repetitions as two same-build runs measured them (cycles per iteration).
        let mut base = fixture();
        let id = "soft/outl/shadowing-on";
        let set = |s: &mut Summary, means: [f64; 7]| {
            let r = s.results.iter_mut().find(|r| r.id == id).unwrap();
            r.repetitions =
                means.iter().map(|m| crate::results::Repetition { mean: *m, ..r.repetitions[0].clone() }).collect();
            r.latency = crate::results::latency(&r.repetitions, None);
        };
        set(&mut base, [7_378_174.0, 1_721_911.0, 9_538_057.0, 2_551_240.0, 1_657_570.0, 8_710_327.0, 1_673_780.0]);
        let mut new = fixture();
        set(&mut new, [2_436_380.0, 8_968_193.0, 9_964_490.0, 11_008_797.0, 12_507_716.0, 8_811_534.0, 9_518_709.0]);
        let c = compare(&base, &new, &[]);
        let v = c.verdicts.iter().find(|v| v.id == id && v.kind == "latency").unwrap();
        assert_eq!((v.verdict, v.group), (Kind::Inconclusive, "latencies too unstable to gate"), "{}", v.why);
        assert!(v.why.contains("5.2x (base)"), "{}", v.why);
    }

    #[test]
    fn nothing_comparable_exits_2() {
        let base = fixture();
        let mut other = fixture();
        other.results.clear();
        let c = compare(&base, &other, &[]);
        assert_eq!((c.compared(), c.exit_code()), (0, 2), "{}", render(&c));
        assert!(render(&c).contains("verdict: NOT COMPARABLE"));
    }

    #[test]
    fn too_few_repetitions_is_inconclusive() {
        let base = fixture();
        let mut new = fixture();
        scale_latency(&mut new, "soft/outl/shadowing-on", 1.5);
        let r = new.results.iter_mut().find(|r| r.id == "soft/outl/shadowing-on").unwrap();
        r.repetitions.truncate(2);
        r.latency = crate::results::latency(&r.repetitions, None);
        let v = compare(&base, &new, &[])
            .verdicts
            .into_iter()
            .find(|v| v.id == "soft/outl/shadowing-on" && v.kind == "latency")
            .unwrap();
        assert_eq!(v.verdict, Kind::Inconclusive);
    }
}
