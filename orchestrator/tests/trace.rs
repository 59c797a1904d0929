//! Exit traces through the real stack: `nestbench` supervising `nestbench-l0`, L1 publishing
//! into its ring on /dev/kvm, L0 draining and stamping, the orchestrator writing the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn nestbench(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nestbench")).args(args).output().expect("nestbench runs");
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nestbench-trace-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every line of a JSON-lines trace, parsed (a line that does not parse fails the test).
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: corrupt line {l:?}: {e}", path.display())))
        .collect()
}

#[test]
fn a_trace_of_n_outl_iterations_has_exactly_n_records_in_sequence() {
    let dir = scratch("n");
    let file = dir.join("outl.jsonl");
    let n = 300u64;
    let (code, out, err) = nestbench(&[
        "run",
        "--payload",
        "outl",
        "--iterations",
        &n.to_string(),
        "--trace",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["trace"]["end"]["complete"], true, "{j:#}");
    assert_eq!(j["trace"]["figures"]["by_reason"]["IO_INSTRUCTION"]["count"], n);
    let l = lines(&file);
    assert_eq!(l[0]["nestbench_trace"], 1);
    assert!(l[0]["tsc_khz"].as_u64().unwrap() > 0, "{}", l[0]);
    let records = &l[1..l.len() - 1];
    assert_eq!(records.len() as u64, n, "one record per iteration");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "in sequence: {r}");
        // What L1 saw: OUT DX, EAX to port 0xE0 (SDM Table 28-5 qualification), 2 bytes.
        assert_eq!(
            (r["reason"].as_u64(), r["qualification"].as_u64(), r["insn_len"].as_u64()),
            (Some(30), Some(0xE0_0043), Some(2))
        );
        assert_eq!(r["guest_rip"], records[0]["guest_rip"], "the same OUT every time");
        // What L0 stamped: L1's handler inside the exit..entry window, one trap (the resume).
        let (exit, start, entry) =
            (r["exit_tsc"].as_u64().unwrap(), r["l1_start_tsc"].as_u64().unwrap(), r["entry_tsc"].as_u64().unwrap());
        assert!(exit < entry, "{r}");
        assert!(r["l1_cycles"].as_u64().unwrap() > 0 && r["l1_traps"] == 1, "{r}");
        // L1's TSC is converted into the host's within the calibration error (a few us).
        assert!(start + 50_000 > exit && start < entry + 50_000, "{r}");
    }
    let end = &l[l.len() - 1];
    assert_eq!(
        (end["end"]["complete"].as_bool(), end["end"]["dropped"].as_u64(), end["end"]["gaps"].as_u64()),
        (Some(true), Some(0), Some(0))
    );
    assert!(!dir.join("outl.jsonl.partial").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_forced_ring_overflow_is_reported_as_drops_with_the_right_count() {
    let dir = scratch("overflow");
    let file = dir.join("t.jsonl");
    // A 16-record ring that L0 drains only at the end: the first 16 exits fit, every later
    // one is a drop L1 counts.
    let (code, out, err) = nestbench(&[
        "run",
        "--payload",
        "outl",
        "--iterations",
        "100",
        "--trace",
        file.to_str().unwrap(),
        "--trace-capacity",
        "16",
        "--trace-drain-at-end",
        "--json",
    ]);
    assert_eq!(code, Some(0), "drops are reported, not a failure: {out}\n{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    let end = &j["trace"]["end"];
    assert_eq!((end["records"].as_u64(), end["dropped"].as_u64()), (Some(16), Some(84)), "{j:#}");
    assert_eq!(end["l0"]["dropped"], 84);
    let l = lines(&file);
    assert_eq!(l.len(), 18);
    assert_eq!(l[16]["seq"], 16);
    assert_eq!(l[17]["end"]["dropped"], 84);
    // The text output says it too.
    let (_, text, _) = nestbench(&[
        "run",
        "--payload",
        "outl",
        "--iterations",
        "40",
        "--trace",
        file.to_str().unwrap(),
        "--trace-capacity",
        "8",
        "--trace-drain-at-end",
    ]);
    assert!(text.contains("trace: 8 records, 32 dropped by L1 (ring full)"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The nestbench-l0 children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let f = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(f).unwrap_or_default().split_whitespace().filter_map(|s| s.parse().ok()).collect()
}

#[test]
fn a_killed_l0_child_leaves_a_complete_file_marked_partial() {
    let dir = scratch("killed");
    let file = dir.join("storm.jsonl");
    let partial = dir.join("storm.jsonl.partial");
    let orch = Command::new(env!("CARGO_BIN_EXE_nestbench"))
        .args(["run", "--payload", "outl", "--iterations", "10000000", "--trace", file.to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until records are arriving, then SIGKILL the l0 child mid-storm.
    let start = Instant::now();
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < 4096 {
        assert!(start.elapsed() < Duration::from_secs(60), "no records arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kids = children(orch.id());
    assert_eq!(kids.len(), 1, "one nestbench-l0 child");
    // SAFETY: plain kill(2) of our own grandchild.
    assert_eq!(unsafe { libc_kill(kids[0] as i32, 9) }, 0);
    let out = orch.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a killed child is a failed run");
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["complete"], false, "{j:#}");
    assert_eq!(j["trace"]["end"]["complete"], false);
    assert!(file.exists() && !partial.exists(), "finished atomically even so");
    let l = lines(&file);
    let end = &l[l.len() - 1]["end"];
    assert_eq!(end["complete"], false);
    let records = l.len() as u64 - 2;
    assert!(records > 0 && end["records"] == records, "{end}");
    for (i, r) in l[1..l.len() - 1].iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn chrome_format_opens_as_one_document_with_l0_l1_l2_tracks() {
    let dir = scratch("chrome");
    let file = dir.join("t.json");
    let (code, out, err) = nestbench(&[
        "run",
        "--payload",
        "hlt",
        "--iterations",
        "25",
        "--trace",
        file.to_str().unwrap(),
        "--format",
        "chrome",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let ev = doc["traceEvents"].as_array().unwrap();
    let names: Vec<&str> =
        ev.iter().filter(|e| e["name"] == "thread_name").map(|e| e["args"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["L0 (nestbench-l0)", "L1 (exit handler)", "L2 (payload)"]);
    let handler: Vec<&Value> = ev.iter().filter(|e| e["ph"] == "X" && e["tid"] == 2).collect();
    assert_eq!(handler.len(), 25, "one L1 span per HLT exit");
    assert!(handler.iter().all(|e| e["name"] == "HLT" && e["dur"].as_f64().unwrap() > 0.0));
    assert_eq!(ev.iter().filter(|e| e["ph"] == "X" && e["tid"] == 3).count(), 24, "L2 runs between exits");
    assert_eq!(doc["metadata"]["end"]["complete"], true);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn top_shows_per_reason_rates_and_the_final_count() {
    let (code, out, err) = nestbench(&["top", "--payload", "outl", "--iterations", "400", "--interval-ms", "200"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let tables: Vec<&str> = out.split("nestbench top: outl x400").skip(1).collect();
    assert!(!tables.is_empty(), "{out}");
    let last = tables[tables.len() - 1];
    assert!(last.contains("records 400  dropped 0  gaps 0"), "{out}");
    let row = last.lines().find(|l| l.starts_with("IO_INSTRUCTION")).expect("a row per reason");
    assert!(row.contains(" 400 ") && row.contains("100.0%"), "{row}");
}

#[test]
fn trace_flags_are_refused_where_they_cannot_apply() {
    let (code, _, err) = nestbench(&["run", "--payload", "outl", "--single-level", "--trace", "/tmp/x.jsonl"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--trace needs the soft engine"), "{err}");
    let (code, _, err) = nestbench(&["run", "--payload", "outl", "--trace-capacity", "16"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("only apply with --trace"), "{err}");
    let (code, _, err) = nestbench(&["run", "--payload", "outl", "--trace", "/nonexistent-dir/t.jsonl"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot create the trace file /nonexistent-dir/t.jsonl.partial"), "{err}");
    let (code, _, err) =
        nestbench(&["run", "--payload", "outl", "--trace", "/tmp/nb-x.jsonl", "--trace-capacity", "12"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("12 is not a power of two"), "{err}");
}
