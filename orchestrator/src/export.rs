//! `nestbench export RUN --format openmetrics|bencher`: a run in forms other tools ingest.
//!
//! * OpenMetrics text (Prometheus' exposition format, for a textfile collector or a
//!   pushgateway): gauges, one sample per statistic, labels `engine`, `payload`, `config`,
//!   `vmcs_shadowing`; the run's identity in `nestbench_run_info`; terminated by `# EOF`.
//! * Bencher Metric Format (BMF) JSON: `{benchmark: {measure: {value, lower_value,
//!   upper_value}}}`, benchmark = the configuration id; `latency` is in nanoseconds (Bencher's
//!   built-in measure), `cycles` and `instructions` are custom measures.

use std::fmt::Write;

use serde_json::{Map, Value, json};

use crate::results::{ConfigResult, Summary};

fn label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn labels(r: &ConfigResult) -> String {
    format!(
        r#"engine="{}",payload="{}",config="{}",vmcs_shadowing="{}""#,
        label(r.engine.name()),
        label(&r.payload),
        match r.config {
            crate::results::Config::Nested => "nested",
            crate::results::Config::SingleLevel => "single_level",
            crate::results::Config::Bochs => "bochs",
        },
        match r.vmcs_shadowing {
            Some(true) => "on",
            Some(false) => "off",
            None => "na",
        }
    )
}

fn family(out: &mut String, name: &str, kind: &str, unit: Option<&str>, help: &str, samples: &[String]) {
    if samples.is_empty() {
        return;
    }
    let _ = writeln!(out, "# TYPE {name} {kind}");
    if let Some(u) = unit {
        let _ = writeln!(out, "# UNIT {name} {u}");
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    for s in samples {
        let _ = writeln!(out, "{s}");
    }
}

fn f(x: f64) -> String {
    if x.is_finite() { format!("{x}") } else { "NaN".into() }
}

/// OpenMetrics text exposition of a run.
#[must_use]
pub fn openmetrics(s: &Summary) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "nestbench_run",
        "info",
        None,
        "The run: id, host, host class, profile.",
        &[format!(
            r#"nestbench_run_info{{run_id="{}",host="{}",host_class="{}",profile="{}",nestbench_version="{}",schema_version="{}"}} 1"#,
            label(&s.run_id),
            label(&s.hostname),
            label(&s.host_class),
            label(&s.profile.name),
            label(&s.nestbench_version),
            s.schema_version
        )],
    );
    family(
        &mut out,
        "nestbench_run_partial",
        "gauge",
        None,
        "1 when the run did not finish.",
        &[format!("nestbench_run_partial {}", u8::from(s.partial))],
    );
    let stats = |unit: &str, pick: &dyn Fn(&ConfigResult) -> Option<crate::results::Stats>, k: f64, name: &str| {
        let mut v = Vec::new();
        for r in s.results.iter().filter(|r| r.unit == unit) {
            if let Some(st) = pick(r) {
                for (stat, x) in [
                    ("min", st.min),
                    ("p50", st.p50),
                    ("p90", st.p90),
                    ("p99", st.p99),
                    ("max", st.max),
                    ("mean", st.mean),
                    ("stddev", st.stddev),
                ] {
                    v.push(format!(r#"{name}{{{},stat="{stat}"}} {}"#, labels(r), f(x * k)));
                }
            }
        }
        v
    };
    family(
        &mut out,
        "nestbench_latency_cycles",
        "gauge",
        Some("cycles"),
        "TSC cycles per iteration of the payload's loop; statistics over the repetitions' means.",
        &stats("cycles", &|r| Some(r.latency.as_ref()?.repetitions.clone()), 1.0, "nestbench_latency_cycles"),
    );
    family(
        &mut out,
        "nestbench_latency_seconds",
        "gauge",
        Some("seconds"),
        "The same latency in seconds (cycles / TSC frequency).",
        &stats("cycles", &|r| r.latency.as_ref()?.repetitions_ns.clone(), 1e-9, "nestbench_latency_seconds"),
    );
    family(
        &mut out,
        "nestbench_bochs_instructions_per_iteration",
        "gauge",
        None,
        "Bochs: instructions per iteration (exit, L1 handler, entry); not a nested cost.",
        &stats(
            "instructions",
            &|r| Some(r.latency.as_ref()?.repetitions.clone()),
            1.0,
            "nestbench_bochs_instructions_per_iteration",
        ),
    );
    let mut exits = Vec::new();
    let mut per_level = Vec::new();
    let mut mult = Vec::new();
    let mut ratio = Vec::new();
    for r in &s.results {
        if let Some(e) = &r.exits {
            for (reason, n) in &e.l2_by_reason {
                exits.push(format!(r#"nestbench_l2_exits{{{},reason="{}"}} {n}"#, labels(r), label(reason)));
            }
            let p = &e.per_level;
            for (level, x) in [
                ("l0_only", p.l0_only),
                ("reflected_to_l1", p.reflected_to_l1),
                ("l1_traps", p.l1_traps),
                ("kvm_exits_l1_vm", p.kvm_exits_l1_vm),
                ("kvm_exits_l2_vm", p.kvm_exits_l2_vm),
            ] {
                if let Some(x) = x {
                    per_level.push(format!(r#"nestbench_exits_per_level{{{},level="{level}"}} {x}"#, labels(r)));
                }
            }
        }
        if let Some(m) = &r.exit_multiplication {
            for (what, x) in [
                ("kvm_exits_per_reflected_exit", m.kvm_exits_per_reflected_exit),
                ("l1_traps_per_reflected_exit", m.l1_traps_per_reflected_exit),
            ] {
                if let Some(x) = x {
                    mult.push(format!(r#"nestbench_exit_multiplication{{{},what="{what}"}} {}"#, labels(r), f(x)));
                }
            }
        }
        if let Some(x) = r.nested_over_single {
            ratio.push(format!("nestbench_nested_over_single_ratio{{{}}} {}", labels(r), f(x)));
        }
    }
    family(&mut out, "nestbench_l2_exits", "gauge", None, "L2 exits per reason in one repetition.", &exits);
    family(&mut out, "nestbench_exits_per_level", "gauge", None, "Exits per level in one repetition.", &per_level);
    family(
        &mut out,
        "nestbench_exit_multiplication",
        "gauge",
        None,
        "KVM exits and L1 traps per reflected L2 exit.",
        &mult,
    );
    family(
        &mut out,
        "nestbench_nested_over_single_ratio",
        "gauge",
        None,
        "Nested median latency / single-level median.",
        &ratio,
    );
    out.push_str("# EOF\n");
    out
}

/// Bencher Metric Format JSON of a run.
#[must_use]
pub fn bencher(s: &Summary) -> Value {
    let mut root = Map::new();
    for r in &s.results {
        let Some(l) = &r.latency else { continue };
        let mut m = Map::new();
        let st = |x: &crate::results::Stats| json!({ "value": x.p50, "lower_value": x.min, "upper_value": x.max });
        if r.unit == "cycles" {
            m.insert("cycles".into(), st(&l.repetitions));
            if let Some(ns) = &l.repetitions_ns {
                m.insert("latency".into(), st(ns));
            }
        } else {
            m.insert("instructions".into(), st(&l.repetitions));
        }
        if let Some(t) = r.exit_multiplication.as_ref().and_then(|x| x.l1_traps_per_reflected_exit) {
            m.insert("l1-traps-per-exit".into(), json!({ "value": t }));
        }
        if let Some(x) = r.nested_over_single {
            m.insert("nested-over-single".into(), json!({ "value": x }));
        }
        root.insert(r.id.clone(), Value::Object(m));
    }
    Value::Object(root)
}

fn xml(v: &str) -> String {
    v.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// JUnit XML for CI systems (`junit.xml` in the run directory): suite `configurations`, one
/// case per configuration (a failed one fails with its errors, a skipped one is skipped with
/// its reason), and suite `baseline`, one case per regression against the baseline (or one
/// passing case with the verdict when there is none).
#[must_use]
pub fn junit(s: &Summary, c: Option<&crate::compare::Comparison>) -> String {
    let mut cases = String::new();
    let mut failures = 0;
    for r in &s.results {
        let wall: f64 = r.repetitions.iter().filter_map(|x| x.wall_ns).map(|n| n as f64 / 1e9).sum();
        let _ = write!(
            cases,
            r#"    <testcase classname="nestbench.{}" name="{}" time="{wall:.3}""#,
            xml(r.engine.name()),
            xml(&r.id)
        );
        if r.complete && r.errors.is_empty() {
            cases.push_str("/>\n");
        } else {
            failures += 1;
            let msg = if r.errors.is_empty() { "incomplete".to_owned() } else { r.errors.join("; ") };
            let _ = writeln!(cases, ">\n      <failure message=\"{}\"/>\n    </testcase>", xml(&msg));
        }
    }
    for k in &s.skipped {
        let name = format!("{}/{}", k.engine, k.payload.as_deref().unwrap_or("(engine)"));
        let _ = writeln!(
            cases,
            "    <testcase classname=\"nestbench.{}\" name=\"{}\">\n      <skipped message=\"{}\"/>\n    </testcase>",
            xml(k.engine.name()),
            xml(&name),
            xml(&k.reason)
        );
    }
    let tests = s.results.len() + s.skipped.len();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(out, "<testsuites name=\"nestbench bench {}\">", xml(&s.run_id));
    let _ = writeln!(
        out,
        "  <testsuite name=\"configurations\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{}\">",
        s.skipped.len()
    );
    out.push_str(&cases);
    out.push_str("  </testsuite>\n");
    if let Some(c) = c {
        let regressions: Vec<_> = c.verdicts.iter().filter(|v| v.verdict == crate::compare::Kind::Regression).collect();
        let _ = writeln!(
            out,
            "  <testsuite name=\"baseline\" tests=\"{}\" failures=\"{}\">",
            regressions.len().max(1),
            regressions.len()
        );
        for v in &regressions {
            let _ = writeln!(
                out,
                "    <testcase classname=\"nestbench.baseline\" name=\"{} {}\">\n      <failure message=\"{}\"/>\n    </testcase>",
                xml(&v.id),
                xml(&v.metric),
                xml(&v.why)
            );
        }
        if regressions.is_empty() {
            let _ = writeln!(
                out,
                "    <testcase classname=\"nestbench.baseline\" name=\"no regression against {}\"/>",
                xml(&c.base)
            );
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_has_a_case_per_configuration_and_fails_what_failed() {
        let mut s = crate::compare::tests::fixture();
        let x = junit(&s, None);
        assert!(x.starts_with("<?xml") && x.trim_end().ends_with("</testsuites>"), "{x}");
        let n = s.results.len();
        assert!(
            x.contains(&format!(r#"<testsuite name="configurations" tests="{}" failures="0""#, n + s.skipped.len())),
            "{x}"
        );
        assert_eq!(x.matches("<testcase ").count(), n + s.skipped.len());
        s.results[0].complete = false;
        s.results[0].errors = vec!["status 0 with 3 failures <&>".into()];
        let c = crate::compare::compare(&crate::compare::tests::fixture(), &s, &[]);
        let x = junit(&s, Some(&c));
        assert!(x.contains(r#"failures="1""#), "{x}");
        assert!(x.contains("status 0 with 3 failures &lt;&amp;&gt;"), "escaped: {x}");
        assert!(x.contains(r#"<testsuite name="baseline" tests="1" failures="1">"#), "{x}");
    }

    #[test]
    fn openmetrics_is_well_formed() {
        let s = crate::compare::tests::fixture();
        let t = openmetrics(&s);
        assert!(t.ends_with("# EOF\n"));
        let mut declared = std::collections::HashSet::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(declared.insert(name.to_owned()), "{name} declared twice");
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                declared.iter().any(|d| name == d || name == format!("{d}_info")),
                "sample {name} of an undeclared family"
            );
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert_eq!(line.matches('"').count() % 2, 0, "{line}");
        }
        assert!(t.contains(
            r#"nestbench_latency_cycles{engine="soft",payload="outl",config="nested",vmcs_shadowing="on",stat="p50"}"#
        ));
        assert!(t.contains("# UNIT nestbench_latency_seconds seconds"));
    }

    #[test]
    fn bencher_json_has_a_benchmark_per_configuration() {
        let s = crate::compare::tests::fixture();
        let b = bencher(&s);
        let on = &b["soft/outl/shadowing-on"];
        assert!(on["cycles"]["value"].as_f64().unwrap() > 0.0);
        assert!(on["latency"]["lower_value"].as_f64().unwrap() <= on["latency"]["value"].as_f64().unwrap());
        assert!(on["l1-traps-per-exit"]["value"].as_f64().is_some());
    }
}
