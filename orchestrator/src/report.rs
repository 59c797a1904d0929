//! `report.md`: the tables a user pastes into a bug report.

use std::fmt::Write;

use crate::compare::{Comparison, Kind};
use crate::results::{Config, ConfigResult, Summary};

/// A number with thousands separators and no decimals (or `-`).
#[must_use]
pub fn num(x: Option<f64>) -> String {
    let Some(x) = x.filter(|x| x.is_finite()) else { return "-".into() };
    if x.abs() < 100.0 && x.fract() != 0.0 {
        return format!("{x:.2}");
    }
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

fn p50(r: Option<&ConfigResult>) -> Option<f64> {
    r?.latency.as_ref().map(|l| l.repetitions.p50)
}

/// Per reflected exit in steady state (the boot cancelled: N vs N/2).
pub(crate) fn per_exit(r: Option<&ConfigResult>) -> Option<&crate::results::PerReflectedExit> {
    r?.steady_state.as_ref()?.per_reflected_exit.as_ref()
}

pub(crate) fn traps(r: Option<&ConfigResult>) -> String {
    per_exit(r).map_or("-".into(), |p| format!("{:.2}", p.l1_traps))
}

/// Whether a nested configuration's timed loop (between the payload's two RDTSCs) holds the
/// exits its iterations take, judged by what was measured: an iteration of the loop that
/// costs under a quarter of its exits' steady-state time (L0 + L1 + L2) does not contain them
/// (`irq_window`'s exits come at VM entry, after the loop's second RDTSC).
#[must_use]
pub fn loop_holds_its_exits(r: &ConfigResult) -> Option<bool> {
    let st = r.steady_state.as_ref()?;
    if st.reflected_per_iteration == 0.0 {
        return Some(false);
    }
    let exit_ns = st.per_reflected_exit.as_ref()?.layers?.total() * st.reflected_per_iteration;
    let loop_ns = r.latency.as_ref()?.repetitions_ns.as_ref()?.p50;
    Some(loop_ns >= exit_ns / 4.0)
}

/// What a reader must know before reading a row's ratio: the timed loop takes no exit L1
/// sees or does not contain the exits, or the payload's work is fixed (no steady state: its
/// figures include the boot).
pub(crate) fn row_note(r: Option<&ConfigResult>) -> &'static str {
    let Some(r) = r else { return "" };
    let manifest = l2_payloads::find(&r.payload);
    if manifest.is_some_and(|m| m.fixed_iterations.is_some()) {
        return "fixed work: boot included";
    }
    // docs/soft-engine.md, "CR3-load and CR3-store exiting".
    if manifest.is_some_and(|m| m.setup.has(nestbench_abi::payload::setup::CR3_EXITING)) {
        return "L0 single-steps L2: a KVM exit per L2 instruction";
    }
    match (
        r.steady_state.as_ref().map(|s| (s.reflected_per_iteration, s.l0_only_per_iteration)),
        loop_holds_its_exits(r),
    ) {
        (Some((0.0, 0.0)), _) => "timed loop takes no exit",
        (Some((0.0, _)), _) => "its exits stay in L0",
        (_, Some(false)) => "exits outside the timed loop",
        _ => "",
    }
}

fn host_line(s: &Summary) -> String {
    let h = &s.host;
    format!(
        "{} ({}, {} cpus{}), kernel {}",
        h["cpu_model"].as_str().unwrap_or("?"),
        h["cpu_vendor"].as_str().unwrap_or("?"),
        h["cpus"],
        h["microcode"].as_str().map_or_else(String::new, |m| format!(", microcode {m}")),
        h["kernel"].as_str().unwrap_or("?")
    )
}

/// The nested-vs-single table (also printed by `nestbench bench`).
#[must_use]
pub fn headline_table(s: &Summary) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| payload | single-level | nested, shadowing on | ratio | nested, shadowing off | ratio | KVM exits per reflected exit (on / off) | L1 traps per reflected exit (on / off) | note |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for p in s.payloads() {
        let on = s.result(&format!("soft/{p}/shadowing-on"));
        let off = s.result(&format!("soft/{p}/shadowing-off"));
        let single = s.result(&format!("single_level/{p}"));
        if on.is_none() && off.is_none() && single.is_none() {
            continue;
        }
        let ratio =
            |r: Option<&ConfigResult>| r.and_then(|r| r.nested_over_single).map_or("-".into(), |x| format!("{x:.1}x"));
        // A payload whose twin would not do the same operation has none: no ratio (its reason is
        // under "Skipped").
        let no_twin = l2_payloads::find(p).is_some_and(|m| matches!(m.single_level, l2_payloads::Twin::None { .. }));
        let kvm = |r| per_exit(r).map_or("-".into(), |p| format!("{:.2}", p.kvm_exits_l1_vm + p.kvm_exits_l2_vm));
        let _ = writeln!(
            t,
            "| {p} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} |",
            if single.is_none() && no_twin { "no twin".to_owned() } else { num(p50(single)) },
            num(p50(on)),
            ratio(on),
            num(p50(off)),
            ratio(off),
            kvm(on),
            kvm(off),
            traps(on),
            traps(off),
            row_note(on.or(off))
        );
    }
    t
}

/// "Which layer pays": per reflected exit in steady state, the time in L0, L1 and L2 (as
/// `perf kvm stat report`'s Time%, but per layer), KVM exits and L1 traps, and the share of a
/// repetition that is boot and set-up.
#[must_use]
pub fn layers_table(s: &Summary) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| payload | shadowing | reflected exits per iteration | L0 (ns, %) | L1 (ns, %) | L2 (ns, %) | sum (ns) | KVM exits, L1 VM + L2 VM | L1 traps | boot share of a repetition |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in s.results.iter().filter(|r| r.config == Config::Nested) {
        let Some(st) = &r.steady_state else { continue };
        let shadowing = if r.vmcs_shadowing == Some(false) { "off" } else { "on" };
        let share = st.boot_share.map_or("-".into(), |b| format!("{:.0}%", b * 100.0));
        let Some(p) = &st.per_reflected_exit else {
            let _ = writeln!(
                t,
                "| {} | {shadowing} | {:.2} | - | - | - | - | - | - | {share} |",
                r.payload, st.reflected_per_iteration
            );
            continue;
        };
        let cell = |v: f64, sum: f64| {
            if sum > 0.0 { format!("{} ({:.0}%)", num(Some(v)), v / sum * 100.0) } else { num(Some(v)) }
        };
        let (l0, l1, l2, sum) = p.layers.map_or(("-".into(), "-".into(), "-".into(), "too noisy".into()), |l| {
            (cell(l.l0_ns, l.total()), cell(l.l1_ns, l.total()), cell(l.l2_ns, l.total()), num(Some(l.total())))
        });
        let _ = writeln!(
            t,
            "| {} | {shadowing} | {:.2} | {l0} | {l1} | {l2} | {sum} | {:.2} + {:.2} | {:.2} | {share} |",
            r.payload, st.reflected_per_iteration, p.kvm_exits_l1_vm, p.kvm_exits_l2_vm, p.l1_traps
        );
    }
    t
}

/// The exit reasons a summary names, each with the SDM's name and number.
fn reason_legend(s: &Summary) -> String {
    let mut seen: Vec<nestbench_abi::vmx::ExitReason> = Vec::new();
    for e in s.results.iter().filter(|r| r.config != Config::SingleLevel).filter_map(|r| r.exits.as_ref()) {
        for k in e.l2_by_reason.keys().chain(e.reflected_by_reason.keys()) {
            if let Some(r) = nestbench_abi::vmx::ExitReason::from_name(k.trim_end_matches(" (VM-entry failure)")) {
                if !seen.contains(&r) {
                    seen.push(r);
                }
            }
        }
    }
    seen.sort_by_key(|r| *r as u16);
    let names: Vec<String> =
        seen.iter().map(|r| format!("`{}` = {} ({})", r.kernel_name(), r.name(), *r as u16)).collect();
    format!(
        "Exit reasons are the kernel's names (arch/x86/include/uapi/asm/vmx.h; what `perf kvm stat` and the `kvm_exit` \
         tracepoint print); SDM names: {}. Single-level rows count KVM_RUN returns of the payload's VM by kind.\n",
        if names.is_empty() { "none here".to_owned() } else { names.join(", ") }
    )
}

fn config_name(r: &ConfigResult) -> String {
    match r.config {
        Config::Nested => {
            format!("{} nested, shadowing {}", r.payload, if r.vmcs_shadowing == Some(false) { "off" } else { "on" })
        }
        Config::SingleLevel => format!("{} single-level", r.payload),
        Config::Bochs => format!("{} on Bochs", r.payload),
    }
}

/// The report's first line: the baseline verdict and what it compared.
pub(crate) fn verdict_line(cmp: Option<&Comparison>) -> String {
    let Some(c) = cmp else {
        return "**Verdict: none.** No baseline of this host class, kernel and profile was compared.".into();
    };
    let scope = format!("against {} ({})", c.base, c.base_context);
    let drift = c.host_drift_pct.map_or_else(String::new, |d| {
        format!(" Latency not judged: the single-level twins moved {d:+.1}% between the runs (the host drifted).")
    });
    match c.exit_code() {
        1 => {
            let ids: Vec<String> = c
                .verdicts
                .iter()
                .filter(|v| v.verdict == Kind::Regression)
                .take(5)
                .map(|v| format!("{} {}", v.id, v.metric))
                .collect();
            format!("**Verdict: REGRESSION** {scope}: {} regressions ({}).{drift}", c.regressions(), ids.join(", "))
        }
        2 => format!("**Verdict: not comparable** {scope}: no metric could be compared."),
        _ => format!(
            "**Verdict: ok** {scope}: {} metrics compared, no regression, {} improvements, {} not compared.{drift}",
            c.compared(),
            c.improvements(),
            c.verdicts.len() - c.compared()
        ),
    }
}

/// The whole report: the verdict and the headline table first, failures second, details after.
#[must_use]
pub fn markdown(s: &Summary, cmp: Option<&Comparison>) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# nestbench bench {}\n", s.run_id);
    let _ = writeln!(m, "{}\n", verdict_line(cmp));
    if s.partial {
        let _ = writeln!(m, "> **PARTIAL RUN.** It did not finish:");
        for r in &s.partial_reasons {
            let _ = writeln!(m, "> - {r}");
        }
        let _ = writeln!(m);
    }
    if s.results.iter().any(|r| r.config != Config::Bochs) {
        let _ = writeln!(m, "## Nested vs single-level (soft engine)\n");
        let _ = writeln!(
            m,
            "Cycles per iteration of the payload's own LFENCE;RDTSC loop: median over repetitions. KVM exits and L1 traps per reflected exit are steady-state figures (boot cancelled, below). \
             The ratio is nested / single-level (the same image as a plain KVM guest of L0), only where that \
             twin performs the same operation; \"no twin\": it would not (the reason is under Skipped).\n"
        );
        m.push_str(&headline_table(s));
        let _ = writeln!(m);
    }

    if !s.failures.is_empty() {
        let _ = writeln!(m, "**Failed configurations** (the run finished; these did not):\n");
        for f in &s.failures {
            let _ = writeln!(m, "- {f}");
        }
        let _ = writeln!(m);
    }
    if s.results.iter().any(|r| r.steady_state.is_some()) {
        let _ = writeln!(m, "## Which layer pays (per reflected exit, steady state)\n");
        let _ = writeln!(
            m,
            "Each nested configuration also ran {} times at half its iterations; per reflected exit = (repetitions' \
             median - those runs' median) / the reflected exits between them, so boot and set-up cancel. L0: l0's \
             userspace between a reflected exit and the next entry; L1: inside L1's KVM_RUN in that time (L1's \
             handler and KVM's handling of L1's exits); L2: inside L2's KVM_RUN (L2's code and KVM's entries and \
             exits of L2's VM). Counts are exact. Boot share: the part of a repetition's wall time its iterations \
             do not explain. \"too noisy\": a layer's difference came out negative (a fixed cost that varies between \
             runs more than the cost per exit); each repetition's layer times are in summary.json. The sum is \
             below the measured round trip: l0's work outside the three windows (exits it handles without L1, \
             serving L1's VMREAD/VMWRITE hypercalls with shadowing off, draining the trace) is in no column.\n",
            crate::bench::STEADY_RUNS
        );
        m.push_str(&layers_table(s));
        let _ = writeln!(m);
    }
    let _ = writeln!(m, "| | |\n|---|---|");
    let _ = writeln!(m, "| host | {} |", host_line(s));
    let _ = writeln!(m, "| host class | {} |", s.host_class);
    if let Some(r) = &s.resumed_from {
        let _ = writeln!(m, "| resumed | from {r}: its calibrations and repetitions are in this run |");
    }
    for (module, params) in &s.kvm_module_params {
        let p: Vec<String> = ["nested", "enable_shadow_vmcs", "ept", "unrestricted_guest", "npt", "tdp_mmu"]
            .iter()
            .filter_map(|k| params.get(*k).map(|v| format!("{k}={v}")))
            .collect();
        let _ = writeln!(m, "| module {module} | {} |", if p.is_empty() { "loaded".into() } else { p.join(" ") });
    }
    let _ = writeln!(
        m,
        "| TSC | {} |",
        s.tsc.as_ref().map_or_else(
            || "unknown: cycles only".into(),
            |t| format!("{} kHz ({})", num(Some(t.khz as f64)), t.source)
        )
    );
    let _ = writeln!(
        m,
        "| profile | {}: iterations doubled until a run's loop spans 2^{} cycles (Bochs: 2^{} instructions), {} repetitions after warm-up |",
        s.profile.name, s.profile.target_log2_cycles, s.profile.target_log2_instructions, s.profile.repetitions
    );
    for e in &s.engines {
        let _ = writeln!(
            m,
            "| engine {} | {} |",
            e.engine,
            if e.benched { format!("benched ({})", e.reason) } else { format!("not benched: {}", e.reason) }
        );
    }
    let _ = writeln!(
        m,
        "| run | nestbench {}, {} to {} ({:.0} s) |\n",
        s.nestbench_version, s.started_at, s.finished_at, s.wall_s
    );

    let _ = writeln!(m, "## Latency per configuration\n");
    let _ = writeln!(
        m,
        "min, median, p90, max, mean ± σ: exact, over each repetition's mean per iteration. \
         Per-iteration p50/p99: log2-bucket bounds over all iterations (the payloads keep log2 histograms).\n"
    );
    let _ = writeln!(
        m,
        "| configuration | unit | reps × iterations | min | median | p90 | max | mean ± σ | median (ns) | per-iteration p50 | per-iteration p99 | per-iteration max |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &s.results {
        let Some(l) = &r.latency else {
            let _ =
                writeln!(m, "| {} | {} | FAILED: {} | | | | | | | | | |", config_name(r), r.unit, r.errors.join("; "));
            continue;
        };
        let st = &l.repetitions;
        let _ = writeln!(
            m,
            "| {}{} | {} | {} × {} | {} | {} | {} | {} | {} ± {} | {} | [{}, {}) | [{}, {}) | {} |",
            config_name(r),
            if r.complete { "" } else { " (incomplete)" },
            r.unit,
            l.repetition_samples,
            r.iterations,
            num(Some(st.min)),
            num(Some(st.p50)),
            num(Some(st.p90)),
            num(Some(st.max)),
            num(Some(st.mean)),
            num(Some(st.stddev)),
            num(l.repetitions_ns.as_ref().map(|x| x.p50)),
            num(Some(l.iterations.p50.lower)),
            num(Some(l.iterations.p50.upper)),
            num(Some(l.iterations.p99.lower)),
            num(Some(l.iterations.p99.upper)),
            num(Some(l.iterations.max)),
        );
    }
    let _ = writeln!(m);

    let _ = writeln!(m, "## Exits per reason and level (one repetition)\n");
    let _ = writeln!(m, "{}", reason_legend(s));
    let _ = writeln!(
        m,
        "| configuration | iterations | L2 exits by reason | reflected to L1 | L0-only | L1 traps | KVM exits, L1 VM | KVM exits, L2 VM | KVM insn emulated (L1) | same in every repetition |"
    );
    let _ = writeln!(m, "|---|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for r in &s.results {
        let Some(e) = &r.exits else { continue };
        let reasons: Vec<String> = e.l2_by_reason.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let o = |x: Option<u64>| num(x.map(|v| v as f64));
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            config_name(r),
            r.iterations,
            if reasons.is_empty() { "none".into() } else { reasons.join(", ") },
            o(e.per_level.reflected_to_l1),
            o(e.per_level.l0_only),
            o(e.per_level.l1_traps),
            o(e.per_level.kvm_exits_l1_vm),
            o(e.per_level.kvm_exits_l2_vm),
            o(r.kvm_insn_emulation),
            if e.stable_across_repetitions { "yes" } else { "no" }
        );
    }
    let _ = writeln!(m);
    let traced: Vec<(&str, u64)> = s.results.iter().filter_map(|r| Some((r.id.as_str(), r.trace_drops?))).collect();
    let dropped: Vec<String> = traced.iter().filter(|(_, d)| *d > 0).map(|(id, d)| format!("{id}: {d}")).collect();
    let _ = writeln!(
        m,
        "Trace drops (one traced run per soft-engine configuration): {}\n",
        if traced.is_empty() {
            "no traced runs".to_owned()
        } else if dropped.is_empty() {
            format!("none in {} traced configurations", traced.len())
        } else {
            dropped.join(", ")
        }
    );

    let bochs: Vec<&ConfigResult> = s.results.iter().filter(|r| r.config == Config::Bochs).collect();
    if !bochs.is_empty() {
        let _ = writeln!(m, "## Bochs: L1 instructions per exit (not a nested cost)\n");
        let _ = writeln!(
            m,
            "On Bochs, L1 is the root hypervisor and Bochs' TSC counts instructions: the payload's \
             loop measures instructions between its two RDTSCs (exit, L1's handler, entry).\n"
        );
        let _ = writeln!(m, "| payload | instructions per iteration | iterations | L2 exits (L1) |");
        let _ = writeln!(m, "|---|---:|---:|---|");
        for r in bochs {
            let reasons: Vec<String> = r
                .exits
                .as_ref()
                .map(|e| e.l2_by_reason.iter().map(|(k, v)| format!("{k}: {v}")).collect())
                .unwrap_or_default();
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} |",
                r.payload,
                r.latency.as_ref().map_or_else(
                    || format!("FAILED: {}", r.errors.join("; ")),
                    |l| format!("{:.2}", l.repetitions.p50)
                ),
                r.iterations,
                if reasons.is_empty() { "none".into() } else { reasons.join(", ") }
            );
        }
        let _ = writeln!(m);
    }

    if !s.bochs_models.is_empty() {
        let _ = writeln!(m, "## Bochs CPU generations: L1 instructions per iteration\n");
        let mut models: Vec<&str> = Vec::new();
        for r in &s.bochs_models {
            if !models.contains(&r.model.as_str()) {
                models.push(&r.model);
            }
        }
        let lacks = |model: &str| {
            let l = s.bochs_models.iter().find(|r| r.model == model).map(|r| r.lacks.join(", ")).unwrap_or_default();
            if l.is_empty() { "full set".to_owned() } else { format!("no {l}") }
        };
        let header: Vec<String> = models.iter().map(|m| format!("{m} ({})", lacks(m))).collect();
        let _ = writeln!(m, "| payload | {} |", header.join(" | "));
        let _ = writeln!(m, "|---|{}", "---:|".repeat(models.len()));
        let mut payloads: Vec<&str> = Vec::new();
        for r in &s.bochs_models {
            if !payloads.contains(&r.payload.as_str()) {
                payloads.push(&r.payload);
            }
        }
        for p in payloads {
            let cells: Vec<String> = models
                .iter()
                .map(|model| {
                    s.bochs_models.iter().find(|r| r.payload == p && r.model == *model).map_or_else(
                        || "-".to_owned(),
                        |r| r.instructions_per_iteration.map_or_else(|| "FAILED".to_owned(), |v| format!("{v:.1}")),
                    )
                })
                .collect();
            let _ = writeln!(m, "| {p} | {} |", cells.join(" | "));
        }
        let _ = writeln!(
            m,
            "\n({} iterations per cell; instruction counts are exact.)\n",
            crate::bench::BOCHS_GENERATION_ITERATIONS
        );
    }

    if !s.emulated_hosts.is_empty() {
        m.push_str(&emulated_hosts_markdown(&s.emulated_hosts));
    }

    if !s.skipped.is_empty() {
        let _ = writeln!(m, "## Skipped\n");
        for k in &s.skipped {
            let _ = writeln!(m, "- {} {}: {}", k.engine, k.payload.as_deref().unwrap_or("(engine)"), k.reason);
        }
        let _ = writeln!(m);
    }

    if let Some(c) = cmp {
        let _ = writeln!(m, "## Against the baseline {}\n", c.base);
        if c.same_context {
            let _ = writeln!(m, "Both runs: {}.\n", c.base_context);
        } else {
            let _ = writeln!(
                m,
                "Latencies and host counts are not comparable: the baseline is {}, this run {}.\n",
                c.base_context, c.new_context
            );
        }
        let _ = writeln!(
            m,
            "{} metrics: **{} regressions**, {} improvements, {} not compared. Latency: LKP non-overlap of the \
             repetitions and a change above the noise threshold; counts: exact; a configuration that worked in the \
             baseline and fails here: a regression.\n",
            c.verdicts.len(),
            c.regressions(),
            c.improvements(),
            c.verdicts.len() - c.compared()
        );
        if let Some(line) = c.not_compared() {
            let _ = writeln!(m, "Not compared: {line}.\n");
        }
        let notable: Vec<_> =
            c.verdicts.iter().filter(|v| matches!(v.verdict, Kind::Regression | Kind::Improvement)).collect();
        if !notable.is_empty() {
            let _ = writeln!(m, "| verdict | configuration | metric | baseline | this run | change | why |");
            let _ = writeln!(m, "|---|---|---|---:|---:|---:|---|");
            for v in notable {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    format!("{:?}", v.verdict).to_lowercase(),
                    v.id,
                    v.metric,
                    crate::compare::fmt_val(&v.base),
                    crate::compare::fmt_val(&v.new),
                    v.delta_pct.map_or("-".into(), |d| format!("{d:+.1}%")),
                    v.why
                );
            }
            let _ = writeln!(m);
        }
    }
    m
}

/// What report.md may hold: a GitHub comment takes 65,536 characters; this leaves room for a
/// line of context around a paste.
pub const REPORT_LIMIT: usize = 60_000;

/// report.md, and `report-details.md` when the whole report would pass [`REPORT_LIMIT`]:
/// the verdict, headline, failures, layers and the host table stay in report.md, which links
/// the details (latency, exits, Bochs, emulated hosts, skipped, the baseline's table).
#[must_use]
pub fn report_files(s: &Summary, cmp: Option<&Comparison>) -> Vec<(&'static str, String)> {
    let whole = markdown(s, cmp);
    let cut = whole.find("## Latency per configuration").unwrap_or(whole.len());
    if whole.chars().count() <= REPORT_LIMIT || cut == whole.len() {
        return vec![("report.md", whole)];
    }
    let (head, details) = whole.split_at(cut);
    let head = format!(
        "{head}The details ({} characters: latency per configuration, exits per reason and level, the rest) are in \
         [report-details.md](report-details.md), so that this file stays under {} characters.\n",
        details.chars().count(),
        num(Some(REPORT_LIMIT as f64))
    );
    vec![("report.md", head), ("report-details.md", format!("# nestbench bench {}: details\n\n{details}", s.run_id))]
}

/// "KVM nested VMX, exact": per emulated host (CPU model x kernel) and payload, the
/// steady-state figures per reflected exit, then how each host booted.
#[must_use]
pub fn emulated_hosts_markdown(runs: &[crate::results::EmulatedHostRun]) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "## KVM nested VMX, exact (upstream KVM in Bochs)\n");
    let _ = writeln!(
        m,
        "Per reflected L2 exit in steady state: each payload ran N and 2N times in one boot and every figure is \
         the difference over N. On Bochs the TSC counts instructions, so a round trip is the instructions KVM's \
         nested code, L1 and L2 execute together; the counts are the same on every boot. QEMU rows are nested SVM \
         (kvm_amd, L1's SVM backend) under `-icount 0`: cycles are instructions of the emulated machine, \
         repeating to within a few in a million.\n"
    );
    let _ = writeln!(
        m,
        "| host | kernel | KVM module | payload | instructions per round trip | min | + tracepoints | KVM exits | nested_run | L0-handled | L1 exits by reason |"
    );
    let _ = writeln!(m, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|");
    for e in runs {
        let kernel = e.kernel_release.as_deref().unwrap_or(&e.kernel);
        // VMX rows (Bochs-hosted kvm_intel) and SVM rows (QEMU-hosted kvm_amd) side by side.
        let module = if e.host.starts_with("qemu") { "kvm_amd" } else { "kvm_intel" };
        let e = &crate::results::EmulatedHostRun {
            kvm_intel_params: format!("{module} {}", e.kvm_intel_params),
            ..e.clone()
        };
        if let Some(err) = &e.error {
            let first = err.lines().next().unwrap_or_default();
            let _ =
                writeln!(m, "| {} | {kernel} | {} | all | FAILED: {first} | | | | | | |", e.host, e.kvm_intel_params);
            continue;
        }
        for r in &e.rows {
            if let Some(err) = &r.error {
                let _ = writeln!(
                    m,
                    "| {} | {kernel} | {} | {} | FAILED: {err} | | | | | | |",
                    e.host, e.kvm_intel_params, r.payload
                );
                continue;
            }
            let l1: Vec<String> = r.l1_exits_per_reflected.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
            let _ = writeln!(
                m,
                "| {} | {kernel} | {} | {} | {:.1} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {} |",
                e.host,
                e.kvm_intel_params,
                r.payload,
                r.instructions_per_round_trip,
                r.min_round_trip.map_or("-".into(), |v| v.to_string()),
                r.tracepoint_instructions_per_round_trip,
                r.kvm_exits_per_reflected,
                r.nested_runs_per_reflected,
                r.l0_handled_per_reflected,
                l1.join(", ")
            );
        }
    }
    let _ = writeln!(
        m,
        "\n| host | kernel | boot to ready (s wall) | session (s wall) | runs | per run (s wall) | frames lost / garbled |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---|");
    for e in runs {
        if let Some(b) = &e.boot {
            let runs = crate::exact::RUNS_PER_PAYLOAD * e.rows.len();
            let ready = b.boot_to_ready_s.unwrap_or(f64::NAN);
            let per_run = if runs > 0 { (b.session_s - b.stage_s - ready) / runs as f64 } else { f64::NAN };
            let _ = writeln!(
                m,
                "| {} | {} | {ready:.1} | {:.1} | {runs} | {per_run:.2} | {} / {} |",
                e.host, b.kernel_release, b.session_s, b.frames_lost, b.frames_garbled
            );
        }
    }
    let _ = writeln!(m);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(Some(1_234_567.4)), "1,234,567");
        assert_eq!(num(Some(999.0)), "999");
        assert_eq!(num(Some(1.5)), "1.50");
        assert_eq!(num(None), "-");
    }

    #[test]
    fn a_report_over_the_limit_links_its_details() {
        let mut s = crate::compare::tests::fixture();
        assert_eq!(report_files(&s, None).len(), 1, "the fixture's report fits");
        s.skipped = (0..2000)
            .map(|i| crate::results::Skipped {
                engine: nestbench_protocol::Engine::Soft,
                payload: Some(format!("p{i}")),
                reason: "a long reason ".repeat(4),
            })
            .collect();
        let files = report_files(&s, None);
        assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), ["report.md", "report-details.md"]);
        assert!(
            files[0].1.chars().count() < REPORT_LIMIT && files[0].1.contains("[report-details.md](report-details.md)")
        );
        assert!(files[0].1.contains("| outl |") && files[1].1.contains("## Latency per configuration"));
    }

    #[test]
    fn the_layer_table_and_the_notes_follow_the_steady_state() {
        use crate::results::{Layers, PerLevel, Repetition, steady_state};
        let mut s = crate::compare::tests::fixture();
        let run = |r: &Repetition, n: u64, per_exit_ns: f64| {
            let layers = Layers {
                l0_ns: per_exit_ns * 0.2 * n as f64,
                l1_ns: per_exit_ns * 0.5 * n as f64,
                l2_ns: per_exit_ns * 0.3 * n as f64,
            };
            let counts = PerLevel {
                reflected_to_l1: Some(n + 1),
                kvm_exits_l1_vm: Some(n + 40),
                kvm_exits_l2_vm: Some(n),
                l1_traps: Some(n),
                l0_only: Some(0),
            };
            (Repetition { iterations: n, layers: Some(layers), wall_ns: Some(1_000 * n + 50_000), ..r.clone() }, counts)
        };
        let r = s.results.iter_mut().find(|r| r.id == "soft/outl/shadowing-on").unwrap();
        let n = r.iterations;
        let rep0 = r.repetitions[0].clone();
        let loop_ns = r.latency.as_ref().unwrap().repetitions_ns.as_ref().unwrap().p50;
        let large: Vec<Repetition> = (0..3).map(|_| run(&rep0, n, loop_ns).0).collect();
        r.repetitions = large.clone();
        r.steady_state = steady_state(&large, &run(&rep0, n, loop_ns).1, &[run(&rep0, n / 2, loop_ns)]);
        let md = markdown(&s, None);
        assert!(md.contains("## Which layer pays (per reflected exit, steady state)"), "{md}");
        let row = md.lines().find(|l| l.starts_with("| outl | on |")).expect("a layer row");
        assert!(
            row.contains("(20%)") && row.contains("(50%)") && row.contains("(30%)") && row.contains("| 1.00 + 1.00 |"),
            "{row}"
        );
        assert!(
            md.lines().any(|l| l.starts_with("| outl |") && l.contains("| 2.00 / - |")),
            "steady KVM exits in the headline:\n{md}"
        );
        assert!(md.contains("`IO_INSTRUCTION` = I/O instruction (30)"), "the legend names the SDM's reason");
        assert_eq!(loop_holds_its_exits(s.result("soft/outl/shadowing-on").unwrap()), Some(true));
        // The same exits, ten times as costly as the loop: they are not in it.
        let r = s.results.iter_mut().find(|r| r.id == "soft/outl/shadowing-on").unwrap();
        r.repetitions = (0..3).map(|_| run(&rep0, n, loop_ns * 10.0).0).collect();
        r.steady_state = steady_state(&r.repetitions, &run(&rep0, n, 0.0).1, &[run(&rep0, n / 2, loop_ns * 10.0)]);
        assert_eq!(loop_holds_its_exits(s.result("soft/outl/shadowing-on").unwrap()), Some(false));
        assert!(markdown(&s, None).contains("| exits outside the timed loop |"));
    }

    #[test]
    fn the_report_of_the_fixture_has_every_table() {
        let s = crate::compare::tests::fixture();
        let md = markdown(&s, None);
        for needle in [
            "# nestbench bench",
            "## Nested vs single-level (soft engine)",
            "| outl |",
            "## Latency per configuration",
            "outl nested, shadowing off",
            "## Exits per reason and level",
            "IO_INSTRUCTION",
            "TSC",
        ] {
            assert!(md.contains(needle), "{needle} missing:\n{md}");
        }
        assert!(!md.contains("PARTIAL"));
        // Every table row has as many cells as its header.
        for table in md.split("\n\n").filter(|b| b.starts_with('|')) {
            let cells: Vec<usize> = table.lines().map(|l| l.matches('|').count()).collect();
            assert!(cells.iter().all(|&c| c == cells[0]), "ragged table:\n{table}");
        }
        let mut p = s.clone();
        p.partial = true;
        p.partial_reasons = vec!["soft/outl/shadowing-on: nestbench-l0 was killed by a signal".into()];
        assert!(markdown(&p, None).contains("**PARTIAL RUN.**"));
        let c = crate::compare::compare(&s, &s, &[]);
        let md = markdown(&s, Some(&c));
        assert!(md.contains("## Against the baseline"));
        // The verdict comes first, then the headline table, then the failures.
        let second = md.lines().nth(2).unwrap();
        assert!(second.starts_with("**Verdict: ok** against "), "{second}");
        let mut failed = s.clone();
        failed.failures = vec!["single_level/mmio: 25 failures".into()];
        let md = markdown(&failed, None);
        let at = |n: &str| md.find(n).unwrap_or_else(|| panic!("{n}"));
        assert!(
            at("**Verdict: none.**") < at("## Nested vs single-level")
                && at("| outl |") < at("**Failed configurations**")
        );
        assert!(at("**Failed configurations**") < at("## Latency per configuration"));
    }
}
