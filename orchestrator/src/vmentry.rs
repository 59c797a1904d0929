//! `nestbench vmentry`: run VM-entry conformance cases (docs/vmentry.md) on one engine, one
//! `nestbench-l0` child per case (a case that hangs or kills the guest costs only itself),
//! and report each verdict as the engine gave it; with `--allow-list`, whether each verdict
//! is the case's expectation as it applies on that engine ([`expectation_here`],
//! [`conformance`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nestbench_protocol::events::{Event, Outcome as RunOutcome};
use serde::{Deserialize, Serialize};

use l0::vmentry::{ExpectDoc, Num};

use crate::hosts::{EmulatedOptions, HostError, HostSpec, Invocation};
use crate::l0_child::{self, ChildRun, Interruption};

/// What one case produced on one engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `entered`, `fail_invalid`, `fail_valid`, `entry_failure`, `succeeded`, `skipped`, or
    /// what went wrong: `engine_unsupported`, `hung`, `guest_crashed`, `malformed_case`,
    /// `l0_error`.
    pub kind: String,
    /// VM-instruction error (fail_valid), or the missing need bits (skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<u64>,
    /// Exit reason (entered, entry_failure), bit 31 included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<u64>,
    /// Exit qualification (entry_failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qualification: Option<u64>,
    /// Why, for the kinds that are not verdicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Outcome {
    fn other(kind: &str, detail: String) -> Self {
        Self { kind: kind.into(), error: None, exit_reason: None, qualification: None, detail: Some(detail) }
    }

    /// Whether it is an architectural verdict (as opposed to a failure to get one).
    #[must_use]
    pub fn is_verdict(&self) -> bool {
        ["entered", "fail_invalid", "fail_valid", "entry_failure", "succeeded", "skipped"].contains(&self.kind.as_str())
    }

    /// One line: `fail_valid(7)`, `entry_failure(0x80000021, q=0x0)`, `entered(30)`.
    #[must_use]
    pub fn short(&self) -> String {
        match self.kind.as_str() {
            "fail_valid" => format!("fail_valid({})", self.error.unwrap_or(0)),
            "skipped" => {
                let missing = self.error.unwrap_or(0);
                let names: Vec<&str> = nestbench_abi::vmentry::need::NAMES
                    .iter()
                    .filter(|(bit, _)| missing & u64::from(*bit) != 0)
                    .map(|(_, n)| *n)
                    .collect();
                format!("skipped (needs {})", names.join(", "))
            }
            "entry_failure" => {
                format!("entry_failure({:#x}, q={:#x})", self.exit_reason.unwrap_or(0), self.qualification.unwrap_or(0))
            }
            "entered" => format!("entered({})", self.exit_reason.unwrap_or(0) & 0xFFFF),
            k if self.is_verdict() => k.to_owned(),
            k => format!("{k}: {}", self.detail.as_deref().unwrap_or("")),
        }
    }
}

/// Turn a finished child into an outcome.
#[must_use]
pub fn classify(child: &ChildRun) -> Outcome {
    let verdict = child.events.iter().find_map(|e| match e {
        Event::Verdict { kind, error, exit_reason, qualification, .. } => {
            Some((*kind, *error, *exit_reason, *qualification))
        }
        _ => None,
    });
    if let Some((kind, error, exit_reason, qualification)) = verdict {
        return Outcome {
            kind: kind.name().into(),
            error: error.map(u64::from),
            exit_reason: exit_reason.map(u64::from),
            qualification,
            detail: None,
        };
    }
    if child.interrupted == Some(Interruption::Timeout) {
        return Outcome::other("hung", "no verdict before the deadline; nestbench-l0 was killed".into());
    }
    if let Some(m) = child.error() {
        let m = m.to_owned();
        let kind = if m.contains("not a VM-entry case") || m.contains("writes[") || m.contains("steps") {
            "malformed_case"
        } else {
            "l0_error"
        };
        return Outcome::other(kind, m);
    }
    match child.report().map(|r| &r.outcome) {
        Some(RunOutcome::EngineUnsupported { what, why }) => {
            Outcome::other("engine_unsupported", format!("{what}: {why}"))
        }
        Some(o @ RunOutcome::Timeout { .. }) => Outcome::other("hung", crate::boot::describe_outcome(o)),
        Some(o) => Outcome::other("guest_crashed", crate::boot::describe_outcome(o)),
        None => Outcome::other(
            "guest_crashed",
            format!("nestbench-l0 ended without a verdict (exit code {:?})", child.exit_code),
        ),
    }
}

/// The Bochs log lines that name the failing check (`VMENTER FAIL: ...`, `VMFAIL: ...`).
#[must_use]
pub fn bochs_checks(child: &ChildRun) -> Vec<String> {
    child
        .report()
        .and_then(|r| r.bochs.as_ref())
        .map(|b| {
            b.log_lines
                .iter()
                .map(String::as_str)
                .filter(|l| l.contains("VMENTER FAIL") || l.contains("VMFAIL") || l.contains("VMEXIT: "))
                .map(|l| l.split_once("] ").map_or(l, |(_, t)| t).to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// One case's result.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// The file.
    pub file: String,
    /// Its name, family and SDM reference (when it parsed).
    pub name: Option<String>,
    /// Its check family.
    pub family: Option<String>,
    /// Its SDM reference.
    pub sdm: Option<String>,
    /// What the engine did.
    pub outcome: Outcome,
    /// What the case says the SDM expects, if it says.
    pub expect: Option<ExpectDoc>,
    /// The parts of the case's VMCS outside the engine's capability MSRs (L1's report).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outside_capabilities: Vec<String>,
    /// `expect` as it applies on this engine, when its capability MSRs change it
    /// ([`expectation_here`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_here: Option<ExpectDoc>,
    /// Whether the outcome is the expected verdict (`expect_here`, else `expect`); absent
    /// without an `expect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_expected: Option<bool>,
    /// On Bochs: the log lines naming the failing check.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bochs_checks: Vec<String>,
}

impl CaseResult {
    /// Take the verdict from what the case's child said.
    fn take(&mut self, child: &ChildRun) {
        self.outcome = classify(child);
        self.bochs_checks = bochs_checks(child);
        self.outside_capabilities = child
            .events
            .iter()
            .find_map(|e| match e {
                Event::CaseCapabilities { outside } => Some(outside.clone()),
                _ => None,
            })
            .unwrap_or_default();
        // A skipped case (a capability its `needs` name is missing) ran nothing to judge.
        if let Some(e) = self.expect.as_ref().filter(|_| self.outcome.kind != "skipped") {
            let here = expectation_here(e, &self.outside_capabilities);
            self.as_expected = Some(meets(&self.outcome, &here));
            self.expect_here = (here != *e).then_some(here);
        }
    }
}

/// The case's `expect` on an engine whose capability MSRs leave `outside` (L1's
/// `case_capabilities` report) outside: a control they do not allow fails the entry with
/// VMfailValid 7 (SDM 27.2.1.1, before the host-state and guest-state checks), and an
/// activity state IA32_VMX_MISC does not list fails it with reason 33, qualification 0
/// (27.3.1.5). Only verdicts of the entry checks change: 27.1's (VMfailValid 4, 5, ...) and
/// the other instructions' come first or do not check; but a VMWRITE to a read-only field
/// (VMfailValid 13) succeeds where IA32_VMX_MISC[29] grants it (`vmwrite_any_field`).
#[must_use]
pub fn expectation_here(expect: &ExpectDoc, outside: &[String]) -> ExpectDoc {
    let entry_check = match expect.kind.as_str() {
        "entered" | "entry_failure" => true,
        "fail_valid" => matches!(expect.error, Some(7 | 8)),
        _ => false,
    };
    let is = |names: &[&str]| outside.iter().any(|o| names.contains(&o.as_str()));
    let controls: Vec<&str> = nestbench_abi::vmentry::outside::NAMES
        .iter()
        .filter(|(bit, _)| bit & nestbench_abi::vmentry::outside::CONTROLS != 0)
        .map(|(_, n)| *n)
        .collect();
    if entry_check && is(&controls) {
        return ExpectDoc { kind: "fail_valid".into(), error: Some(7), exit_reason: None, qualification: None };
    }
    // 31.3 VMWRITE: error 13 is for "VMWRITE to read-only VMCS component" only where
    // IA32_VMX_MISC[29] is 0.
    if expect.kind == "fail_valid" && expect.error == Some(13) && is(&["vmwrite_any_field"]) {
        return ExpectDoc { kind: "succeeded".into(), error: None, exit_reason: None, qualification: None };
    }
    if expect.kind == "entered" && is(&["guest_activity_state"]) {
        return ExpectDoc {
            kind: "entry_failure".into(),
            error: None,
            exit_reason: Some(Num::Int(0x8000_0021)),
            qualification: Some(Num::Int(0)),
        };
    }
    expect.clone()
}

/// One line for an expectation, in [`Outcome::short`]'s words.
#[must_use]
pub fn describe(e: &ExpectDoc) -> String {
    Outcome {
        kind: e.kind.clone(),
        error: e.error.map(u64::from),
        exit_reason: e.exit_reason.map(Num::get),
        qualification: e.qualification.map(Num::get),
        detail: None,
    }
    .short()
}

/// Whether `o` is the verdict `e` describes (the fields `e` leaves out are not compared).
#[must_use]
pub fn meets(o: &Outcome, e: &ExpectDoc) -> bool {
    o.kind == e.kind
        && e.error.is_none_or(|x| o.error == Some(u64::from(x)))
        && e.exit_reason.is_none_or(|x| o.exit_reason == Some(x.get()))
        && e.qualification.is_none_or(|x| o.qualification == Some(x.get()))
}

/// The case files of `dir`, sorted.
pub fn case_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    Ok(v)
}

/// How to run the children.
#[derive(Clone, Debug)]
pub struct CaseRunner {
    /// nestbench-l0.
    pub l0: PathBuf,
    /// `soft`, `bochs`, `kvm`.
    pub engine: String,
    /// Bochs' CPU model.
    pub cpu_model: String,
    /// The guest's budget per case.
    pub timeout_ms: u64,
}

impl CaseRunner {
    fn args(&self, extra: &[String]) -> Vec<String> {
        let mut a = vec!["vmentry".to_owned(), "--engine".into(), self.engine.clone()];
        a.extend(["--timeout-ms".into(), self.timeout_ms.to_string(), "--cpu-model".into(), self.cpu_model.clone()]);
        a.extend_from_slice(extra);
        a
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.timeout_ms) + Duration::from_secs(10)
    }

    /// Run case files on `host`, in order: one child per case locally, one boot for all of
    /// them on an emulated host. `each` sees every result as it is known (locally, as each
    /// case ends; on an emulated host, after the session).
    pub async fn run_all(
        &self,
        host: &HostSpec,
        host_opts: &EmulatedOptions,
        files: &[PathBuf],
        mut each: impl FnMut(&CaseResult),
    ) -> Result<Vec<CaseResult>, HostError> {
        let mut results: Vec<CaseResult> = files.iter().map(|f| self.parse(f)).collect();
        let runnable: Vec<usize> = (0..results.len()).filter(|&i| results[i].name.is_some()).collect();
        let invocation = |shown: String| Invocation {
            args: self.args(&["--case".into(), shown.clone()]),
            deadline: Duration::from_millis(self.timeout_ms),
            files: vec![(PathBuf::from(&shown), shown)],
        };
        if *host == HostSpec::Local {
            for r in &mut results {
                if r.name.is_some() {
                    let inv = invocation(r.file.clone());
                    match l0_child::run_l0(&self.l0, &inv.args, self.deadline(), |_| {}).await {
                        Ok(child) => r.take(&child),
                        Err(e) => r.outcome = Outcome::other("l0_error", e.to_string()),
                    }
                }
                each(r);
            }
            return Ok(results);
        }
        let invocations: Vec<Invocation> = runnable.iter().map(|&i| invocation(results[i].file.clone())).collect();
        let runs = match crate::hosts::run_all(host, host_opts, &self.l0, &invocations, |_, _| {}).await {
            Ok(s) => s.runs,
            Err(HostError::Stopped { partial, why, .. }) => {
                eprintln!("nestbench vmentry: the emulated host {why}; the cases it did not finish have no verdict");
                partial.runs
            }
            Err(e) => return Err(e),
        };
        for (&i, child) in runnable.iter().zip(&runs) {
            results[i].take(child);
        }
        results.iter().for_each(&mut each);
        Ok(results)
    }

    /// A case file, parsed (its outcome `malformed_case` when it does not parse).
    fn parse(&self, file: &Path) -> CaseResult {
        let shown = file.display().to_string();
        let doc = std::fs::read_to_string(file)
            .map_err(|e| format!("{shown}: {e}"))
            .and_then(|t| l0::vmentry::parse(&shown, &t).map_err(|e| e.to_string()));
        let mut r = CaseResult {
            file: shown,
            name: None,
            family: None,
            sdm: None,
            outcome: Outcome::other("malformed_case", String::new()),
            expect: None,
            outside_capabilities: Vec::new(),
            expect_here: None,
            as_expected: None,
            bochs_checks: Vec::new(),
        };
        match doc {
            Ok(doc) => {
                r.name = Some(doc.name.clone());
                r.family = Some(doc.family.clone());
                r.sdm = Some(doc.sdm.clone());
                r.expect.clone_from(&doc.expect);
            }
            Err(e) => r.outcome = Outcome::other("malformed_case", e),
        }
        r
    }

    /// The baseline VMCS as (encoding, value or why not, name).
    pub async fn baseline(&self) -> Result<Vec<(String, String, String)>, String> {
        let child = l0_child::run_l0(&self.l0, &self.args(&["--baseline".into()]), self.deadline(), |_| {})
            .await
            .map_err(|e| e.to_string())?;
        let rows: Vec<(String, String, String)> = child
            .console()
            .filter_map(|t| {
                let t = t.strip_prefix("vmcs ")?;
                let mut it = t.splitn(3, ' ');
                Some((it.next()?.to_owned(), it.next()?.to_owned(), it.next().unwrap_or("").to_owned()))
            })
            .collect();
        if rows.is_empty() {
            return Err(format!("no baseline from the {} engine: {}", self.engine, classify(&child).short()));
        }
        Ok(rows)
    }
}

/// The cases where an engine's verdict may depart from the case's expectation
/// (`vmentry/allow-list.json`), each with the SDM text and what the engine does.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowList {
    /// What the list is.
    pub description: String,
    /// The entries.
    pub entries: Vec<AllowEntry>,
}

/// One allowed departure.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    /// The case's file name.
    pub case: String,
    /// The engine (`soft`, `bochs`, `kvm`).
    pub engine: String,
    /// `departure` (the engine departs from the SDM), `implementation` (the SDM leaves the
    /// choice to the implementation) or `unsupported` (the soft engine refuses a valid
    /// setting as `engine_unsupported`).
    pub kind: String,
    /// The SDM text that decides the case.
    pub sdm: String,
    /// What the engine does instead.
    pub observed: String,
}

impl AllowList {
    /// Read and check a list: every `kind` known, every `engine` one of the three.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let list: Self = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for e in &list.entries {
            if !["departure", "implementation", "unsupported"].contains(&e.kind.as_str())
                || !["soft", "bochs", "kvm"].contains(&e.engine.as_str())
            {
                return Err(format!(
                    "{}: entry {}: kind {:?} or engine {:?} unknown",
                    path.display(),
                    e.case,
                    e.kind,
                    e.engine
                ));
            }
        }
        Ok(list)
    }

    fn find(&self, engine: &str, file: &str) -> Option<&AllowEntry> {
        self.entries.iter().find(|e| e.engine == engine && e.case == file)
    }
}

/// How an engine's verdicts on a case directory measure up to the cases' expectations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Conformance {
    /// Cases with an expectation that gave it.
    pub as_expected: usize,
    /// Cases the engine skipped (a capability their `needs` name is missing).
    pub skipped: usize,
    /// Allow-listed cases that departed, as the list says they do.
    pub allowed: Vec<String>,
    /// What is wrong: a case that departed without an entry, an entry whose case no longer
    /// departs (the list cannot go stale), an entry whose case is not in the directory.
    pub problems: Vec<String>,
}

/// Judge `results` (of `engine`) against their expectations and `allow`; `whole_directory`:
/// the results are the whole case directory, so every entry's case must be among them.
#[must_use]
pub fn conformance(engine: &str, results: &[CaseResult], allow: &AllowList, whole_directory: bool) -> Conformance {
    let mut c = Conformance::default();
    let file =
        |r: &CaseResult| Path::new(&r.file).file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    for r in results {
        let f = file(r);
        let entry = allow.find(engine, &f);
        match (r.outcome.kind.as_str(), r.as_expected, entry) {
            ("skipped", _, None) => c.skipped += 1,
            (_, None, _) => {}
            (_, Some(true), None) => c.as_expected += 1,
            (_, Some(true), Some(_)) => {
                c.problems.push(format!(
                    "{f}: allow-listed for {engine}, but it now gives its expectation: remove the entry"
                ));
            }
            (_, Some(false), Some(_)) => c.allowed.push(f),
            (_, Some(false), None) => c.problems.push(format!(
                "{f}: {engine} gave {}, expected {}, and it is not allow-listed",
                r.outcome.short(),
                r.expect_here.as_ref().or(r.expect.as_ref()).map_or_else(String::new, describe)
            )),
        }
    }
    for e in allow.entries.iter().filter(|e| whole_directory && e.engine == engine) {
        if !results.iter().any(|r| file(r) == e.case) {
            c.problems.push(format!("{}: allow-listed for {engine}, but not among the cases run", e.case));
        }
    }
    c
}

/// Verdict counts per kind.
#[must_use]
pub fn counts(results: &[CaseResult]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in results {
        *m.entry(r.outcome.kind.clone()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn expect(kind: &str, error: Option<u32>, reason: Option<u64>, q: Option<u64>) -> ExpectDoc {
        ExpectDoc { kind: kind.into(), error, exit_reason: reason.map(Num::Int), qualification: q.map(Num::Int) }
    }

    #[test]
    fn the_expectation_follows_the_engines_capability_msrs() {
        let guest = expect("entry_failure", None, Some(0x8000_0021), Some(0));
        let proc2 = vec!["secondary_proc_based_vm_exec_control".to_owned()];
        assert_eq!(expectation_here(&guest, &[]), guest);
        assert_eq!(expectation_here(&guest, &proc2), expect("fail_valid", Some(7), None, None));
        let host = expect("fail_valid", Some(8), None, None);
        assert_eq!(expectation_here(&host, &proc2), expect("fail_valid", Some(7), None, None));
        // VMX-instruction errors come before the entry checks.
        let launched = expect("fail_valid", Some(4), None, None);
        assert_eq!(expectation_here(&launched, &proc2), launched);
        let activity = vec!["guest_activity_state".to_owned()];
        let entered = expect("entered", None, Some(30), None);
        assert_eq!(expectation_here(&entered, &activity), expect("entry_failure", None, Some(0x8000_0021), Some(0)));
        assert_eq!(expectation_here(&host, &activity), host, "host state is checked before the guest's");
        let read_only = expect("fail_valid", Some(13), None, None);
        assert_eq!(expectation_here(&read_only, &[]), read_only);
        let any_field = ["vmwrite_any_field".to_owned()];
        assert_eq!(expectation_here(&read_only, &any_field), expect("succeeded", None, None, None));
        assert_eq!(expectation_here(&host, &any_field), host);
    }

    fn result(file: &str, kind: &str, as_expected: Option<bool>) -> CaseResult {
        CaseResult {
            file: format!("cases/{file}"),
            name: Some(file.into()),
            family: None,
            sdm: None,
            outcome: Outcome { kind: kind.into(), error: None, exit_reason: None, qualification: None, detail: None },
            expect: Some(expect("entered", None, Some(30), None)),
            outside_capabilities: Vec::new(),
            expect_here: None,
            as_expected,
            bochs_checks: Vec::new(),
        }
    }

    #[test]
    fn conformance_counts_departures_against_the_allow_list_and_finds_stale_entries() {
        let entry = |case: &str| AllowEntry {
            case: case.into(),
            engine: "bochs".into(),
            kind: "departure".into(),
            sdm: String::new(),
            observed: String::new(),
        };
        let allow = AllowList { description: String::new(), entries: vec![entry("b.json"), entry("c.json")] };
        let results = vec![
            result("a.json", "entered", Some(true)),
            result("b.json", "fail_valid", Some(false)),
            result("c.json", "entered", Some(true)),
            result("d.json", "fail_valid", Some(false)),
            result("e.json", "skipped", None),
        ];
        let c = conformance("bochs", &results, &allow, true);
        assert_eq!((c.as_expected, c.skipped, c.allowed.clone()), (1, 1, vec!["b.json".to_owned()]));
        assert_eq!(c.problems.len(), 2, "{:?}", c.problems);
        assert!(c.problems[0].contains("c.json") && c.problems[0].contains("remove the entry"), "{:?}", c.problems);
        assert!(c.problems[1].contains("d.json") && c.problems[1].contains("not allow-listed"), "{:?}", c.problems);
        // Another engine's entries do not apply; a missing case is a problem only for a whole directory.
        assert_eq!(conformance("soft", &results[..1], &allow, true).problems, Vec::<String>::new());
        assert_eq!(conformance("bochs", &results[..1], &allow, false).problems, Vec::<String>::new());
        assert_eq!(conformance("bochs", &results[..1], &allow, true).problems.len(), 2);
    }

    #[test]
    fn an_outcome_meets_the_fields_its_expectation_names() {
        let o = Outcome {
            kind: "entry_failure".into(),
            error: None,
            exit_reason: Some(0x8000_0021),
            qualification: Some(2),
            detail: None,
        };
        assert!(meets(&o, &expect("entry_failure", None, Some(0x8000_0021), Some(2))));
        assert!(meets(&o, &expect("entry_failure", None, Some(0x8000_0021), None)));
        assert!(!meets(&o, &expect("entry_failure", None, Some(0x8000_0021), Some(0))));
        assert!(!meets(&o, &expect("fail_valid", Some(7), None, None)));
    }

    fn child(events: Vec<Value>, interrupted: Option<Interruption>) -> ChildRun {
        let events = events.into_iter().map(|e| serde_json::from_value(e).expect("a protocol event")).collect();
        ChildRun { events, interrupted, ..ChildRun::default() }
    }

    /// An `end` line whose report has `outcome` and nothing else of note.
    fn end(outcome: Value) -> Value {
        serde_json::json!({"event": "end", "report": {"outcome": outcome, "kvm_exits": {}, "kvm_exits_total": 0,
            "hypercalls": {}, "wall_ns": 0, "kvm_stats": null}})
    }

    #[test]
    fn outcomes_from_what_the_child_said() {
        let v = classify(&child(
            vec![serde_json::json!({"event": "verdict", "scenario": "Vmentry", "kind": "fail_valid", "error": 7})],
            None,
        ));
        assert_eq!(v.short(), "fail_valid(7)");
        let v = classify(&child(
            vec![
                serde_json::json!({"event": "verdict", "scenario": "Vmentry", "kind": "entry_failure", "exit_reason": 0x8000_0021u64, "qualification": 4}),
            ],
            None,
        ));
        assert_eq!(v.short(), "entry_failure(0x80000021, q=0x4)");
        assert_eq!(classify(&child(vec![], Some(Interruption::Timeout))).kind, "hung");
        let unsupported =
            end(serde_json::json!({"kind": "engine_unsupported", "what": "vm_entry_msr_load_count", "why": "no"}));
        let u = classify(&child(vec![unsupported], None));
        assert_eq!((u.kind.as_str(), u.detail.as_deref()), ("engine_unsupported", Some("vm_entry_msr_load_count: no")));
        let regs = serde_json::to_value(nestbench_protocol::events::Gprs::default()).unwrap();
        let crash =
            end(serde_json::json!({"kind": "triple_fault", "regs": regs, "cr0": 0, "cr3": 0, "cr4": 0, "idt": [0, 0]}));
        assert_eq!(classify(&child(vec![crash], None)).kind, "guest_crashed");
    }
}
