//! `nestbench doctor` and `nestbench boot` on this host, through the real binaries.

use std::process::Command;

use serde_json::Value;

fn nestbench(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nestbench")).args(args).output().expect("nestbench runs");
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn engine<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["engines"].as_array().unwrap().iter().find(|e| e["engine"] == name).unwrap()
}

#[test]
fn doctor_json_reports_host_and_engines() {
    let (code, out, err) = nestbench(&["doctor", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["doctor_version"], 1);
    let host = &d["host"];
    assert!(host["kernel"].as_str().unwrap().len() > 2);
    assert_eq!(host["kvm"]["usable"], true, "these tests need /dev/kvm");
    assert!(host["kvm_modules"].as_object().unwrap().contains_key("kvm"));

    assert_eq!(engine(&d, "soft")["can_run"], true);
    assert_eq!(engine(&d, "soft")["implemented"], true);
    let offers_vmx = host["kvm"]["offers_vmx"].as_bool().unwrap();
    let kvm = engine(&d, "kvm");
    if offers_vmx {
        println!("note: this host's KVM offers VMX; kvm engine: {}", kvm["reason"]);
    } else {
        assert_eq!(kvm["can_run"], false);
        assert!(kvm["reason"].as_str().unwrap().contains("neither VMX nor SVM"), "{}", kvm["reason"]);
    }
    // The CPL 0 probe ran a real guest and read insn_emulation.
    let cpl0 = &host["cpl0"];
    assert_eq!(cpl0["guest_instructions"], 2005);
    if host["kvm_modules"].as_object().unwrap().contains_key("kvm_pvm") {
        assert_eq!(cpl0["emulated"], true, "kvm_pvm emulates CPL 0: {cpl0}");
        assert!(cpl0["insn_emulation"].as_u64().unwrap() >= 2000);
    }
    // bochs: available exactly when the binary and its BIOS files are here.
    let installed = l0::host::which("bochs").is_some()
        && std::path::Path::new("/usr/share/bochs/BIOS-bochs-latest").exists()
        && std::path::Path::new("/usr/share/vgabios/vgabios.bin").exists();
    assert_eq!(engine(&d, "bochs")["can_run"], installed, "{}", engine(&d, "bochs")["reason"]);
}

#[test]
fn doctor_text_names_every_engine() {
    let (code, out, _) = nestbench(&["doctor"]);
    assert_eq!(code, Some(0));
    for e in ["soft", "kvm", "bochs"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(e)), "{e} missing:\n{out}");
    }
}

#[test]
fn boot_json_carries_l1_report_and_kvm_stats() {
    let (code, out, err) = nestbench(&["boot", "--json"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let b: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b["complete"], true);
    assert_eq!(
        b["console"][0],
        format!("nestbench L1: hello from L1, ABI v{}, 32 MiB", nestbench_abi::ABI_VERSION).as_str()
    );
    assert_eq!(b["probe"]["nestbench_l0"], true);
    assert_eq!(b["probe"]["l0_abi_version"], nestbench_abi::ABI_VERSION);
    assert_eq!(b["report"]["outcome"]["kind"], "exited");
    assert_eq!(b["report"]["kvm_exits_total"], 4);
    assert!(b["report"]["kvm_stats"]["vcpu"]["counters"]["exits"].as_u64().unwrap() >= 4);
}

#[test]
fn boot_text_shows_the_page_fault_and_fails() {
    let (code, out, _) = nestbench(&["boot", "--scenario", "page-fault"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("L1 took #PF (vector 14)"), "{out}");
    assert!(out.contains("CR2 0x40000000"), "{out}");
}

#[test]
fn boot_with_a_missing_image_is_a_clear_error() {
    let (code, out, _) = nestbench(&["boot", "--l1", "/nonexistent/l1.elf"]);
    assert_eq!(code, Some(2));
    assert!(out.contains("error") && out.contains("/nonexistent/l1.elf"), "{out}");
}

#[test]
fn boot_with_a_missing_l0_binary_names_it() {
    let (code, _, err) = nestbench(&["boot", "--l0", "/nonexistent/nestbench-l0"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("cannot find nestbench-l0") && err.contains("/nonexistent/nestbench-l0"), "{err}");
}

#[test]
fn run_json_has_the_documented_keys_and_exact_counts() {
    let (code, out, err) = nestbench(&["run", "--engine", "soft", "--payload", "outl", "--iterations", "20", "--json"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    for key in [
        "engine",
        "payload",
        "iterations",
        "vmcs_shadowing",
        "exits",
        "reflected_exits",
        "l0_only_exits",
        "kvm_exits",
        "l1_traps",
        "l1_traps_per_reflected_exit",
        "l0_vmx_hypercalls",
        "latency_cycles",
        "kvm_stats",
    ] {
        assert!(!j[key].is_null(), "missing {key}: {j:#}");
    }
    assert_eq!(j["engine"], "soft");
    assert_eq!(j["vmcs_shadowing"], true);
    assert_eq!(j["exits"]["IO_INSTRUCTION"], 20);
    assert_eq!(j["reflected_exits"], 21, "20 and the DONE exit");
    assert_eq!(j["l1_traps_per_reflected_exit"], 1.0);
    assert!(j["latency_cycles"]["mean"].as_f64().unwrap() > 0.0);
    assert!(
        j["latency_cycles"]["p50"]["upper"].as_u64().unwrap() > j["latency_cycles"]["p50"]["lower"].as_u64().unwrap()
    );
    assert_eq!(j["l0_vmx_hypercalls"].get("VmRead"), None);
}

#[test]
fn run_single_level_and_shadowing_off() {
    let (code, out, _) = nestbench(&["run", "--payload", "inl", "--iterations", "10", "--single-level", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["engine"], "single_level");
    assert_eq!(j["kvm_exits"]["io_in"], 10);
    let (code, out, _) =
        nestbench(&["run", "--payload", "outl", "--iterations", "10", "--vmcs-shadowing", "off", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert!(j["l1_traps_per_reflected_exit"].as_f64().unwrap() > 1.0);
    assert!(j["l0_vmx_hypercalls"]["VmRead"].as_u64().unwrap() > 0);
}

#[test]
fn run_refuses_bad_input_clearly() {
    let (code, _, err) = nestbench(&["run", "--payload", "nope"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("unknown payload \"nope\"") && err.contains("outl"), "{err}");
    let (code, _, err) = nestbench(&["run", "--engine", "kvm", "--payload", "outl", "--single-level"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("does not combine with --engine bochs or kvm"), "{err}");
    let (code, out, err) =
        nestbench(&["run", "--engine", "bochs", "--payload", "outl", "--cpu-model", "core2_penryn_t9600"]);
    assert_ne!(code, Some(0));
    assert!(format!("{out}{err}").contains("no EPT"), "{out}{err}");
    let (code, _, err) = nestbench(&["run", "--payload", "outl", "--iterations", "0"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--iterations"), "{err}");
    // Refused by the orchestrator before any emulated host boots: there is no Bochs inside one.
    let (code, _, err) = nestbench(&["run", "--engine", "bochs", "--host", "qemu", "--payload", "outl"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("does not combine with --host qemu"), "{err}");
}

#[test]
fn payloads_lists_every_payload_with_its_engines() {
    let (code, out, _) = nestbench(&["payloads", "--json"]);
    assert_eq!(code, Some(0));
    let j: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = j["payloads"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    let all: Vec<&str> = l2_payloads::all().iter().map(|m| m.name).collect();
    assert_eq!(names, all);
    assert_eq!(&names[..7], ["outl", "inl", "io_encodings", "hlt", "compute", "cpuid", "vmcall"]);
    // The soft engine's memslot limits (docs/architecture.md) are stated with the payloads.
    let limits = j["soft_engine_memslot_limits"].as_array().unwrap();
    assert!(limits.iter().any(|l| l.as_str().unwrap().contains("execute-only")), "{limits:?}");
    assert!(limits.iter().any(|l| l.as_str().unwrap().contains("read-only flag")), "{limits:?}");
    let svm_only = ["vmmcall", "vmrun_bad_asid", "vmrun_bad_efer"];
    let vmx_only = ["ept_misconfig", "preempt_timer", "inject", "cr3", "vmcall"];
    for p in j["payloads"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let soft_runs = !matches!(name, "cpuid" | "vmcall") && !svm_only.contains(&name);
        assert_eq!(p["engines"]["soft"]["runs"], soft_runs, "{p}");
        if !soft_runs {
            assert!(p["engines"]["soft"]["reason"].as_str().unwrap().len() > 20, "a reason: {p}");
        }
        // Per vendor: `bochs` and `kvm` are the VMX engines here, `kvm_svm` nested SVM.
        assert_eq!(p["engines"]["bochs"]["runs"], !svm_only.contains(&name), "{p}");
        assert_eq!(p["engines"]["kvm"]["runs"], !svm_only.contains(&name), "{p}");
        assert_eq!(p["engines"]["kvm_svm"]["runs"], !vmx_only.contains(&name), "{p}");
        for e in ["bochs", "kvm", "kvm_svm"] {
            if p["engines"][e]["runs"] == false {
                assert!(p["engines"][e]["reason"].as_str().unwrap().len() > 20, "a reason: {p}");
            }
        }
    }
}

#[test]
fn run_on_bochs_reports_instructions_per_exit() {
    if !std::path::Path::new("/usr/bin/bochs").exists() {
        println!("SKIP: bochs is not installed");
        return;
    }
    let (code, out, err) =
        nestbench(&["run", "--engine", "bochs", "--payload", "cpuid", "--iterations", "50", "--json"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["engine"], "bochs");
    assert_eq!(j["cpu_model"], "corei7_skylake_x");
    assert_eq!(j["exits"]["CPUID"], 50);
    assert!(j["instructions_per_iteration"]["mean"].as_f64().unwrap() > 50.0);
}

#[path = "../src/schema.rs"]
#[allow(dead_code)]
mod schema;

/// A real `nestbench bench --quick` of one payload on the soft engine: the run directory
/// appears whole, summary.json validates against results/schema/summary.schema.json, and
/// `compare` passes the run against itself and flags an injected 20% latency regression.
#[test]
fn bench_quick_writes_a_valid_run_and_compare_judges_it() {
    let tmp = std::env::temp_dir().join(format!("nestbench-cli-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let runs = tmp.join("runs");
    let (code, out, err) = nestbench(&[
        "bench",
        "--quick",
        "--payloads",
        "outl",
        "--engines",
        "soft",
        "--out",
        runs.to_str().unwrap(),
        "--baseline",
        "none",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let printed: Value = serde_json::from_str(&out).unwrap();
    let dirs: Vec<_> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name() != Some(std::ffi::OsStr::new(".nestbench.lock")))
        .collect();
    assert_eq!(dirs.len(), 1, "one run directory (and the bench lock), no temporaries, no journal left: {dirs:?}");
    let dir = &dirs[0];
    assert_eq!(dir.file_name().unwrap().to_str().unwrap(), printed["run_id"].as_str().unwrap());
    assert!(!dir.join("PARTIAL").exists());
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let schema_doc: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../results/schema/summary.schema.json"))
            .unwrap(),
    )
    .unwrap();
    schema::validate(&schema_doc, &summary).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(summary["partial"], false);
    let ids: Vec<&str> = summary["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["single_level/outl", "soft/outl/shadowing-on", "soft/outl/shadowing-off"]);
    for r in summary["results"].as_array().unwrap() {
        assert_eq!(r["complete"], true, "{}", r["errors"]);
        assert_eq!(r["repetitions"].as_array().unwrap().len(), 7, "the quick profile");
        assert!(r["latency"]["repetitions"]["p50"].as_f64().unwrap() > 0.0);
    }
    let on = &summary["results"][1];
    assert_eq!(on["exits"]["l2_by_reason"]["IO_INSTRUCTION"], on["iterations"], "one exit per iteration");
    assert_eq!(on["exit_multiplication"]["l1_traps_per_reflected_exit"], 1.0);
    // Steady state: 3 runs at half the iterations; one reflected exit per iteration, one L1
    // trap (the VMRESUME doorbell) per reflected exit with shadowing, six without; each
    // layer's time is there, and the boot is a share of a repetition.
    for (r, traps) in [(on, 1.0), (&summary["results"][2], 6.0)] {
        let st = &r["steady_state"];
        assert_eq!(st["small_runs"].as_array().unwrap().len(), 3, "{st}");
        assert_eq!(
            (st["small"].as_u64().unwrap() * 2, st["counts_stable"].as_bool()),
            (r["iterations"].as_u64().unwrap(), Some(true))
        );
        assert_eq!(st["reflected_per_iteration"], 1.0, "{st}");
        assert_eq!(st["per_reflected_exit"]["l1_traps"], traps, "{st}");
        for layer in ["l0_ns", "l1_ns", "l2_ns"] {
            assert!(st["per_reflected_exit"]["layers"][layer].as_f64().unwrap() > 0.0, "{layer}: {st}");
        }
        // A share, clamped: at the quick profile's 16 iterations the boot is nearly all of a
        // repetition's wall time, and the noise of two medians can put it at 1 (seen on a
        // fresh clone's test run).
        assert!((0.0..=1.0).contains(&st["boot_share"].as_f64().unwrap()), "{st}");
    }
    assert!(on["nested_over_single"].as_f64().unwrap() > 1.0);
    assert!(summary["engines"].as_array().unwrap().iter().any(|e| e["engine"] == "bochs" && e["benched"] == false));
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("| outl |") && report.contains("| outl | on | 1.00 |"), "{report}");
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert!(junit.contains(r#"<testsuite name="configurations" tests="3" failures="0""#), "{junit}");
    let journal = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
    assert_eq!(journal.lines().filter(|l| l.contains(r#""kind":"repetition""#)).count(), 3 * 7, "{journal}");
    assert_eq!(journal.lines().filter(|l| l.contains(r#""kind":"steady_run""#)).count(), 2 * 3, "{journal}");

    // The same build benched again against the first run: its iterations are the baseline's,
    // and no count differs (the counts compared exactly are deterministic).
    let (code, _, err) = nestbench(&[
        "bench",
        "--quick",
        "--payloads",
        "outl",
        "--engines",
        "soft",
        "--out",
        runs.to_str().unwrap(),
        "--baseline",
        dir.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let second = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir() && p != dir)
        .expect("a second run directory");
    let c: Value = serde_json::from_str(&std::fs::read_to_string(second.join("compare.json")).unwrap()).unwrap();
    let counts: Vec<&Value> = c["verdicts"].as_array().unwrap().iter().filter(|v| v["kind"] == "count").collect();
    assert!(counts.len() >= 3 * 5, "counts compared: {counts:?}");
    let moved: Vec<&&Value> = counts.iter().filter(|v| v["verdict"] != "unchanged").collect();
    assert!(moved.is_empty(), "same build, counts that moved: {moved:?}");
    let html = std::fs::read_to_string(dir.join("dashboard.html")).unwrap();
    assert!(html.contains("<svg") && html.trim_end().ends_with("</html>"));

    // compare: the same run passes; an injected 20% latency regression fails.
    let d = dir.to_str().unwrap();
    let (code, out, _) = nestbench(&["compare", d, d]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("verdict: ok"), "{out}");
    // The statistics are unit-tested on a fixture (compare.rs); here the command's plumbing:
    // a base whose repetitions are tight (debug builds on a busy 2-core machine are noisy)
    // and the same 20% slower.
    let p50 = summary["results"][1]["latency"]["repetitions"]["p50"].as_f64().unwrap();
    let with_means = |k: f64| {
        let mut s = summary.clone();
        s["results"][1]["latency"]["repetition_means"] =
            serde_json::json!([0.99, 1.0, 1.0, 1.005, 1.01].map(|x: f64| x * p50 * k));
        s
    };
    let write = |name: &str, s: &Value| {
        let d = tmp.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("summary.json"), serde_json::to_string(s).unwrap()).unwrap();
        d.to_str().unwrap().to_owned()
    };
    let (tight, slower) = (write("tight", &with_means(1.0)), write("slower", &with_means(1.2)));
    let (code, out, _) = nestbench(&["compare", &tight, &tight]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out, _) = nestbench(&["compare", &tight, &slower, "--json"]);
    assert_eq!(code, Some(1), "{out}");
    let c: Value = serde_json::from_str(&out).unwrap();
    let regressions: Vec<&Value> =
        c["verdicts"].as_array().unwrap().iter().filter(|v| v["verdict"] == "regression").collect();
    assert_eq!(regressions.len(), 1, "{regressions:?}");
    assert_eq!(regressions[0]["id"], "soft/outl/shadowing-on");

    // A configuration that worked and now fails is a regression, named; the gate exits 1.
    let mut failed = with_means(1.0);
    failed["results"][1]["complete"] = false.into();
    failed["results"][1]["errors"] = serde_json::json!(["the payload reported status 0 with 5 failures"]);
    let failed = write("failed", &failed);
    let (code, out, _) = nestbench(&["compare", &tight, &failed]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("soft/outl/shadowing-on") && out.contains("5 failures"), "{out}");
    // Input that cannot be compared: exit 2, naming the path.
    for args in
        [vec!["compare", &tight, "/nonexistent-run"], vec!["compare", &tight, &tight, "--history", "/nonexistent-runs"]]
    {
        let (code, _, err) = nestbench(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("/nonexistent-run"), "{args:?}: {err}");
    }
    // A baseline the user names must exist: refused before anything is measured.
    let start = std::time::Instant::now();
    let (code, _, err) = nestbench(&["bench", "--quick", "--baseline", "/nonexistent-baseline", "--out", d]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--baseline /nonexistent-baseline"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(5), "before measuring: {:?}", start.elapsed());

    // Exports.
    let (code, om, _) = nestbench(&["export", d, "--format", "openmetrics"]);
    assert_eq!(code, Some(0));
    assert!(om.ends_with("# EOF\n") && om.contains("nestbench_latency_cycles{"), "{om}");
    let (code, b, _) = nestbench(&["export", d, "--format", "bencher"]);
    assert_eq!(code, Some(0));
    let b: Value = serde_json::from_str(&b).unwrap();
    assert!(b["soft/outl/shadowing-on"]["latency"]["value"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn run_on_the_kvm_engine_runs_or_names_what_the_host_lacks() {
    let (code, out, err) = nestbench(&["run", "--engine", "kvm", "--payload", "outl", "--iterations", "20", "--json"]);
    let j: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let (_, doctor, _) = nestbench(&["doctor", "--json"]);
    let d: Value = serde_json::from_str(&doctor).unwrap();
    let kvm = engine(&d, "kvm");
    assert_eq!(kvm["implemented"], true);
    if kvm["can_run"] == true {
        assert_eq!(code, Some(0), "{out}\n{err}");
        // Nested VMX names the exit IO_INSTRUCTION, nested SVM (an AMD host) io.
        let io = if kvm["svm"] == true { "io" } else { "IO_INSTRUCTION" };
        assert_eq!(j["exits"][io], 20, "{j}");
    } else {
        eprintln!("SKIP: the kvm engine cannot run here: {}", kvm["reason"]);
        assert_eq!(code, Some(2), "refused with l0's error: {out}");
        let why = j["error"].as_str().unwrap();
        assert!(why.contains("the kvm engine needs KVM to offer nested virtualization (VMX or SVM)"), "{j}");
    }
}

/// A read-only or nearly full `--out` is refused before anything is measured, naming the
/// path (a tmpfs mounted for the test; root only, as on CI).
#[test]
fn a_read_only_or_full_out_dir_fails_at_once_naming_it() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: mounting a read-only tmpfs needs root");
        return;
    }
    let base = std::env::temp_dir().join(format!("nestbench-cli-out-{}", std::process::id()));
    for (opts, want) in
        [("ro,size=1m", "Read-only file system"), ("size=1m", "MiB free, a bench wants at least 64 MiB")]
    {
        let _ = std::fs::create_dir_all(&base);
        let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", opts, "tmpfs"]).arg(&base).status().unwrap();
        assert!(mounted.success(), "mount -o {opts}");
        let out = base.join("runs");
        let start = std::time::Instant::now();
        let (code, _, err) =
            nestbench(&["bench", "--quick", "--payloads", "outl", "--engines", "soft", "--out", out.to_str().unwrap()]);
        let took = start.elapsed();
        let _ = Command::new("umount").arg(&base).status();
        assert_ne!(code, Some(0), "{opts}");
        assert!(err.contains(&format!("--out {}", out.display())) && err.contains(want), "{opts}: {err}");
        assert!(took < std::time::Duration::from_secs(2), "{opts}: refused before measuring, took {took:?}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// A bench killed mid-run (SIGKILL: no chance to clean up) leaves every calibration and
/// repetition it finished in its journal, one JSON line each.
#[test]
fn a_killed_bench_leaves_what_it_measured_in_its_journal() {
    let out = std::env::temp_dir().join(format!("nestbench-cli-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut child = Command::new(env!("CARGO_BIN_EXE_nestbench"))
        .args(["bench", "--quick", "--payloads", "outl,hlt", "--engines", "soft", "--baseline", "none", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = || -> Option<(std::path::PathBuf, Vec<Value>)> {
        let p = std::fs::read_dir(&out)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "jsonl"))?;
        // Only whole lines: the bench may be writing the last one right now.
        let text = std::fs::read_to_string(&p).ok()?;
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        let lines = whole.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        Some((p, lines))
    };
    let start = std::time::Instant::now();
    while journal().is_none_or(|(_, l)| !l.iter().any(|e| e["kind"] == "repetition")) {
        assert!(start.elapsed() < std::time::Duration::from_secs(120), "no repetition journaled");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let (path, lines) = journal().unwrap();
    assert!(lines.iter().any(|e| e["kind"] == "calibrated" && e["iterations"].as_u64() > Some(0)), "{lines:?}");
    let rep = lines.iter().find(|e| e["kind"] == "repetition").unwrap();
    assert!(rep["repetition"]["mean"].as_f64().unwrap() > 0.0, "{rep}");
    assert!(path.file_name().unwrap().to_str().unwrap().ends_with(".journal.jsonl"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn an_interrupted_run_keeps_what_it_had_and_exits_130() {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_nestbench"))
        .args(["run", "--payload", "hlt", "--iterations", "100000000", "--timeout-ms", "600000", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let L1 boot and L2 run, then one SIGINT to nestbench alone (not to its l0 child).
    std::thread::sleep(std::time::Duration::from_secs(3));
    // SAFETY: a signal to the child process this test spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    rx.recv_timeout(std::time::Duration::from_secs(30)).expect("nestbench ends within 30 s of the signal");
    let out = waiter.join().unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{stderr}");
    let j: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(j["complete"], false, "{j}");
    assert!(j["incomplete"].as_str().unwrap_or("").contains("was stopped (Ctrl-C)"), "{j}");
}
