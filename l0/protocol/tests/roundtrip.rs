//! Every line nestbench-l0 writes parses back into the same value: a field that one side
//! skips when empty and the other requires is caught here, not as a malformed line at run
//! time.

use std::collections::BTreeMap;

use nestbench_protocol::events::{End, Event, Gprs, Hello, KvmEngineSection, KvmStats, Outcome, RunReport};
use nestbench_protocol::single_level::SingleLevelRun;

fn roundtrip(e: &Event) {
    let line = serde_json::to_string(e).unwrap();
    let back: Event = serde_json::from_str(&line).unwrap_or_else(|err| panic!("{err}: {line}"));
    assert_eq!(&back, e, "{line}");
}

fn outcomes() -> Vec<Outcome> {
    vec![
        Outcome::Exited { status: 0 },
        Outcome::GuestException {
            vector: 14,
            name: "#PF".into(),
            error_code: 2,
            rip: 1,
            cr2: 2,
            rsp: 3,
            rflags: 2,
            gprs: vec![1; 15],
        },
        Outcome::TripleFault { regs: Gprs::default(), cr0: 1, cr3: 2, cr4: 3, idt: (0, 0xfff) },
        Outcome::EmulationFailure { rip: 1, insn_bytes: vec![0x0f, 0x0b], disassembly: "ud2".into() },
        Outcome::InternalError { suberror: 1, data: vec![1, 2], rip: 3 },
        Outcome::Timeout { budget_ms: 10, regs: Gprs::default(), disassembly: String::new() },
        Outcome::Halted { rip: 1 },
        Outcome::UnhandledExit { exit: "io_out port 0x80".into(), rip: 1 },
        Outcome::EntryFailed { reason: 33 },
        Outcome::EngineStopped { engine: "bochs".into(), why: "exit status 1".into() },
        Outcome::EngineUnsupported { what: "a field".into(), why: "why".into() },
    ]
}

#[test]
fn every_outcome_and_every_report_section_survives_the_wire() {
    for outcome in outcomes() {
        let bare = RunReport {
            outcome,
            kvm_exits: BTreeMap::from([("io".into(), 3)]),
            kvm_exits_total: 3,
            hypercalls: BTreeMap::new(),
            wall_ns: 5,
            kvm_stats: None,
            soft: None,
            bochs: None,
            trace: None,
            kvm_engine: None,
        };
        roundtrip(&Event::End(End { report: Some(Box::new(bare.clone())), single_level: None }));
        let full = RunReport {
            kvm_stats: Some(KvmStats::default()),
            soft: Some(Default::default()),
            bochs: Some(Default::default()),
            trace: Some(Default::default()),
            kvm_engine: Some(KvmEngineSection::default()),
            ..bare
        };
        roundtrip(&Event::End(End { report: Some(Box::new(full)), single_level: None }));
    }
    let single = SingleLevelRun { status: 0, kvm_exits: BTreeMap::new(), results: None, wall_ns: 1, problem: None };
    roundtrip(&Event::End(End { report: None, single_level: Some(single) }));
    roundtrip(&Event::Hello(Hello::new("0.1.0", 100)));
    roundtrip(&Event::Error { message: "no".into() });
    roundtrip(&Event::CaseCapabilities { outside: vec![] });
}

#[test]
fn case_capabilities_decode_into_field_names() {
    use nestbench_abi::Pod;
    use nestbench_abi::vmentry::{CaseCapabilities, outside};
    let c = CaseCapabilities { outside: outside::PROC2_CONTROLS | outside::ACTIVITY_STATE, reserved: 0 };
    let e = Event::from_report(nestbench_abi::report::ReportKind::CaseCapabilities as u64, c.as_bytes()).unwrap();
    assert_eq!(
        e,
        Event::CaseCapabilities {
            outside: vec!["secondary_proc_based_vm_exec_control".into(), "guest_activity_state".into()]
        }
    );
    roundtrip(&e);
}
