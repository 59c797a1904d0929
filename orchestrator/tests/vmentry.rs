//! `nestbench vmentry` through the real binaries: the whole case directory on the soft engine
//! and on Bochs (a CPU that really executes VMX), each giving every case the SDM's verdict for
//! its capability MSRs but the documented allow-list (`--allow-list`), every case valid against
//! its schema, malformed cases refused by name, and a batch that goes on past a case that hangs
//! or kills its guest.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn nestbench(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nestbench")).args(args).output().expect("nestbench runs");
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn run_dir(engine: &str, dir: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["vmentry", "--engine", engine, "--cases", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = nestbench(&args);
    (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}")))
}

fn bochs_here() -> bool {
    if Path::new("/usr/bin/bochs").exists() || which("bochs") {
        return true;
    }
    eprintln!("SKIP: bochs is not installed (./setup.sh installs it): the soft engine ran alone");
    false
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

#[test]
fn every_case_is_schema_valid_and_one_per_family_exists() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("vmentry/case.schema.json")).unwrap()).unwrap();
    let mut families = std::collections::BTreeSet::new();
    for f in orchestrator::vmentry::case_files(&repo().join("vmentry/cases")).unwrap() {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        orchestrator::schema::validate(&schema, &v).unwrap_or_else(|e| panic!("{}: {e:?}", f.display()));
        assert!(v["sdm"].as_str().unwrap().len() > 10, "{}: the SDM section it tests", f.display());
        families.insert(v["family"].as_str().unwrap().to_owned());
    }
    assert_eq!(families.len(), l0::vmentry::FAMILIES.len(), "a case per check family: {families:?}");
}

/// Run the case directory on `engine` with the allow-list and return its conformance.
fn conformance(engine: &str) -> Value {
    let dir = repo().join("vmentry/cases");
    let allow = repo().join("vmentry/allow-list.json");
    let (code, doc) = run_dir(engine, &dir, &["--allow-list", allow.to_str().unwrap()]);
    let c = doc["conformance"].clone();
    assert_eq!(c["problems"], serde_json::json!([]), "{engine}: {c:#}");
    assert_eq!(code, Some(0), "{engine}: every case got a verdict: {:#}", doc["counts"]);
    println!(
        "vmentry on {engine}: {} as expected, {} skipped, {} allow-listed",
        c["as_expected"],
        c["skipped"],
        c["allowed"].as_array().unwrap().len()
    );
    c
}

#[test]
fn soft_gives_every_case_its_sdm_verdict() {
    // No allow-listed departure for soft but its engine_unsupported gaps, each listed.
    let c = conformance("soft");
    let allow: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("vmentry/allow-list.json")).unwrap()).unwrap();
    for e in allow["entries"].as_array().unwrap().iter().filter(|e| e["engine"] == "soft") {
        assert_eq!(e["kind"], "unsupported", "soft follows the SDM where it runs a case: {e}");
    }
    assert!(c["as_expected"].as_u64().unwrap() >= 150, "{c}");
}

#[test]
fn bochs_gives_every_case_its_sdm_verdict_but_the_allow_list() {
    if !bochs_here() {
        return;
    }
    conformance("bochs");
}

#[test]
fn malformed_cases_are_named_and_the_batch_goes_on() {
    let dir = std::env::temp_dir().join(format!("nestbench-vmentry-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read_to_string(repo().join("vmentry/cases/70-guest-rflags-bit1.json")).unwrap();
    std::fs::write(dir.join("a-not-json.json"), "{ nope").unwrap();
    std::fs::write(
        dir.join("b-unknown-field.json"),
        r#"{"name":"x","family":"guest_state","sdm":"s","steps":["vmlaunch"],"writes":[{"field":"0x1234","value":0}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("c-read-only.json"),
        r#"{"name":"x","family":"guest_state","sdm":"s","steps":["vmlaunch"],"writes":[{"field":"0x4402","value":0}]}"#,
    )
    .unwrap();
    std::fs::write(dir.join("d-good.json"), good).unwrap();
    let (code, doc) = run_dir("soft", &dir, &[]);
    assert_eq!(code, Some(1), "malformed cases make the batch fail: {doc:#}");
    let cases = doc["cases"].as_array().unwrap();
    let detail = |i: usize| format!("{} {}", cases[i]["outcome"]["kind"], cases[i]["outcome"]["detail"]);
    assert!(detail(0).contains("malformed_case") && detail(0).contains("not a VM-entry case"), "{}", detail(0));
    assert!(detail(1).contains("0x1234 is not a VMCS field"), "{}", detail(1));
    assert!(detail(2).contains("read-only"), "{}", detail(2));
    assert_eq!(cases[3]["outcome"]["kind"], "entry_failure", "the good case still ran");
    // A case whose guest runs out of time is reported as hung, and the batch goes on.
    let (_, doc) = run_dir("soft", &dir, &["--timeout-ms", "1"]);
    assert_eq!(doc["cases"][3]["outcome"]["kind"], "hung", "{doc:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_baseline_vmcs_is_printed_field_by_field() {
    let (code, out, err) = nestbench(&["vmentry", "--baseline", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let fields = v["fields"].as_array().unwrap();
    assert_eq!(fields.len(), nestbench_abi::vmcs::ALL.len());
    let rflags = fields.iter().find(|f| f["name"] == "guest_rflags").unwrap();
    assert_eq!((rflags["encoding"].as_str(), rflags["value"].as_str()), (Some("0x6820"), Some("0x2")));
    let link = fields.iter().find(|f| f["name"] == "vmcs_link_pointer").unwrap();
    assert_eq!(link["value"], "0xffffffffffffffff");
}
