//! The soft engine on the real stack: L0 boots L1 on /dev/kvm, L1 runs each payload with
//! VMX (the soft backend), L2 runs in VM2. The assertions are on what L1 saw in its VMCS
//! (the exit records it reports), on L0's counters, and on the payload's own results.

use std::time::Duration;

use l0::events::{Event, ExitRecord, Outcome, PayloadRun, RunReport};
use l0::machine::{EngineConfig, Image, Machine, MachineConfig, PayloadSpec, SoftConfig};
use l0::soft::engine::SoftStats;
use nestbench_abi::boot::Scenario;
use nestbench_abi::payload::{IO_ENCODINGS, IO_REP_COUNT, PAYLOAD_PORT};
use nestbench_abi::vmx::{ExitReason, IoQualification};

struct Nested {
    report: RunReport,
    payload: PayloadRun,
    events: Vec<Event>,
}

impl Nested {
    fn soft(&self) -> &SoftStats {
        self.report.soft.as_ref().expect("the soft engine ran")
    }
}

fn run_nested(payload: &str, iterations: u64, shadowing: bool) -> Nested {
    run_nested_with(payload, iterations, 0, SoftConfig { vmcs_shadowing: shadowing })
}

fn run_nested_with(payload: &str, iterations: u64, arg: u64, soft: SoftConfig) -> Nested {
    run_nested_config(payload, iterations, arg, soft, None)
}

fn run_nested_config(
    payload: &str,
    iterations: u64,
    arg: u64,
    soft: SoftConfig,
    memslot_limit: Option<usize>,
) -> Nested {
    let m = l2_payloads::find(payload).expect("a known payload");
    let config = MachineConfig {
        timeout: Duration::from_secs(60),
        engine: EngineConfig::Soft(soft),
        payload: Some(PayloadSpec::of(m, m.iterations(iterations), arg)),
        memslot_limit,
        ..MachineConfig::default()
    };
    let mut events = Vec::new();
    let report = Machine::new(config, &Image::Elf(l0::images::l1_elf())).unwrap().run(|e| events.push(e)).unwrap();
    let payload = events
        .iter()
        .find_map(|e| match e {
            Event::PayloadRun(p) => Some((**p).clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("L1 reported no payload run; outcome {:?}, events {events:?}", report.outcome));
    assert_eq!(report.outcome, Outcome::Exited { status: 0 }, "{events:?}");
    assert_eq!(payload.status, 0);
    let results = payload.results.as_ref().expect("the payload wrote its results page");
    assert_eq!(results.failures, 0, "payload checks failed: {events:?}");
    assert_eq!(results.iterations, m.iterations(iterations));
    Nested { report, payload, events }
}

fn io_qual(size: u8, is_in: bool, string: bool, rep: bool, immediate: bool) -> u64 {
    IoQualification::new(size, is_in, string, rep, immediate, PAYLOAD_PORT).expect("valid size").raw()
}

/// The L2 exits of one reason that L1 handled (the final DONE exit is not counted).
fn exits(n: &Nested, reason: ExitReason) -> u64 {
    n.payload.exits.get(reason.kernel_name()).copied().unwrap_or(0)
}

fn assert_all_records(records: &[ExitRecord], reason: ExitReason, qualification: u64, insn_len: u32) {
    assert!(!records.is_empty());
    let rip = records[0].rip_offset;
    for r in records {
        assert_eq!(
            (r.reason, r.qualification, r.insn_len, r.rip_offset),
            (reason as u32, qualification, insn_len, rip),
            "{r:?}"
        );
    }
}

#[test]
fn outl_gives_exactly_n_io_exits_with_port_size_direction_rip_and_length() {
    let n = run_nested("outl", 50, true);
    assert_eq!(exits(&n, ExitReason::IoInstruction), 50);
    assert_eq!(n.payload.exits.len(), 1, "nothing but I/O exits: {:?}", n.payload.exits);
    assert_eq!(n.payload.exit_records.len(), 50);
    // `out 0xE0, eax`: E7 E0, 4 bytes, OUT, immediate port.
    assert_all_records(&n.payload.exit_records, ExitReason::IoInstruction, io_qual(4, false, false, false, true), 2);
    let s = n.soft();
    assert_eq!(s.reflected_total, 51, "50 measured exits and the final DONE exit");
    // The only L0-only exits are lazy EPT-shadow fills (first touches of data pages).
    assert_eq!(s.l0_only_exits, s.ept.fills);
    assert_eq!(s.l2_kvm_exits, s.reflected_total + s.l0_only_exits, "every other KVM exit of VM2 was reflected");
}

#[test]
fn inl_receives_the_value_l1_supplies() {
    let n = run_nested("inl", 40, true);
    assert_eq!(exits(&n, ExitReason::IoInstruction), 40);
    assert_all_records(&n.payload.exit_records, ExitReason::IoInstruction, io_qual(4, true, false, false, true), 2);
    // The payload counts a wrong EAX as a failure; run_nested asserted there were none.
}

#[test]
fn io_encodings_pass_l1s_per_encoding_checks() {
    let n = run_nested("io_encodings", 1, true);
    let expected: Vec<(u64, u32)> = IO_ENCODINGS
        .iter()
        .flat_map(|c| {
            let q = io_qual(c.size, c.is_in, c.string, c.rep, c.immediate);
            std::iter::repeat_n((q, c.bytes.len() as u32), usize::from(c.exits))
        })
        .collect();
    assert_eq!(expected.len(), 16 + 2 * usize::from(IO_REP_COUNT));
    let got: Vec<(u64, u32)> = n.payload.exit_records.iter().map(|r| (r.qualification, r.insn_len)).collect();
    assert_eq!(got, expected, "qualification and length of every encoding, in order");
    for (r, c) in n
        .payload
        .exit_records
        .iter()
        .zip(IO_ENCODINGS.iter().flat_map(|c| std::iter::repeat_n(c, usize::from(c.exits))))
    {
        if c.string {
            assert_ne!(r.guest_linear, 0, "INS/OUTS report the guest-linear address: {r:?}");
            assert_ne!(r.insn_info, 0, "and instruction information (64-bit address size): {r:?}");
        }
    }
}

#[test]
fn hlt_at_cpl0_exits_once_per_iteration() {
    let n = run_nested("hlt", 30, true);
    assert_eq!(exits(&n, ExitReason::Hlt), 30);
    assert_all_records(&n.payload.exit_records, ExitReason::Hlt, 0, 1);
}

#[test]
fn compute_has_no_exits_but_the_final_one() {
    let n = run_nested("compute", 20, true);
    assert!(n.payload.exits.is_empty(), "{:?}", n.payload.exits);
    assert_eq!(n.soft().reflected_total, 1, "the DONE exit only");
    assert!(n.payload.results.as_ref().unwrap().total_cycles > 0);
}

#[test]
fn shadowing_on_costs_exactly_one_l1_trap_per_reflected_exit() {
    let n = run_nested("outl", 30, true);
    let s = n.soft();
    assert_eq!(s.reflected_resumed, 30, "every measured exit was resumed from");
    assert_eq!(s.l1_traps, s.reflected_resumed, "the VMRESUME doorbell, nothing else");
    assert_eq!(s.l1_traps_per_reflected_exit(), Some(1.0));
    assert_eq!(s.vmx_rw_after_first_entry, 0, "no VMREAD/VMWRITE hypercall after the first entry");
    assert!(n.payload.vmx_accesses > 0, "L1 did read and write its VMCS, without traps");
    assert!(!s.vmx_hypercalls.contains_key("VmRead"), "{:?}", s.vmx_hypercalls);
}

#[test]
fn shadowing_off_costs_one_trap_plus_one_per_vmread_and_vmwrite() {
    let n = run_nested("outl", 30, false);
    let s = n.soft();
    assert_eq!(s.reflected_resumed, 30);
    // Every trap of L1's exit path is the doorbell or a VMREAD/VMWRITE hypercall...
    assert_eq!(s.l1_traps, s.reflected_resumed + s.l1_vmx_traps);
    // ... and L0 saw exactly the VMREAD/VMWRITE executions L1 counted.
    assert_eq!(s.vmx_rw_after_first_entry, u64::from(n.payload.vmx_accesses));
    let per_exit = s.l1_vmx_traps / s.reflected_resumed;
    assert_eq!(s.l1_vmx_traps % s.reflected_resumed, 0, "the same handler path every time");
    assert_eq!(s.l1_traps_per_reflected_exit(), Some(1.0 + per_exit as f64));
    assert!(per_exit >= 2, "at least exit reason and RIP: {per_exit}");
    println!("shadowing off: {} L1 traps per reflected exit", 1 + per_exit);
}

#[test]
fn the_single_level_twin_runs_the_same_payloads() {
    for (name, iterations, port_exits) in [("outl", 25, 25), ("inl", 25, 25), ("compute", 10, 0)] {
        let m = l2_payloads::find(name).unwrap();
        let r = l0::single_level::run(
            std::path::Path::new("/dev/kvm"),
            &l0::images::payload_elf(name),
            m.cpl,
            iterations,
            0,
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!((r.status, r.problem.as_deref()), (0, None), "{name}");
        let res = r.results.as_ref().expect("results written");
        assert_eq!((res.iterations, res.failures), (iterations, 0), "{name}");
        let kvm_io: u64 = r.kvm_exits.iter().filter(|(k, _)| k.starts_with("io_")).map(|(_, v)| v).sum();
        assert_eq!(kvm_io, port_exits + 1, "{name}: one KVM exit per iteration plus DONE");
    }
}

fn verdict(scenario: Scenario) -> Event {
    let config = MachineConfig {
        scenario,
        engine: EngineConfig::Soft(SoftConfig { vmcs_shadowing: true }),
        ..MachineConfig::default()
    };
    let mut events = Vec::new();
    let report = Machine::new(config, &Image::Elf(l0::images::l1_elf())).unwrap().run(|e| events.push(e)).unwrap();
    assert_eq!(report.outcome, Outcome::Exited { status: 0 }, "{scenario:?}: {events:?}");
    events
        .into_iter()
        .find(|e| matches!(e, Event::Verdict { .. }))
        .unwrap_or_else(|| panic!("{scenario:?}: no verdict"))
}

#[test]
fn must_fail_cases_get_the_architectural_result() {
    let fail_valid = |error| (Some("fail_valid"), Some(error), None, None);
    let cases = [
        (Scenario::FailControl, fail_valid(7)),
        (Scenario::FailHostState, fail_valid(8)),
        (Scenario::FailGuestState, (Some("entry_failure"), None, Some(33 | 1 << 31), Some(0))),
        (Scenario::FailResumeBeforeLaunch, fail_valid(5)),
        (Scenario::FailLaunchLaunched, fail_valid(4)),
        (Scenario::FailVmptrldUnaligned, fail_valid(9)),
        (Scenario::FailRevision, fail_valid(11)),
        (Scenario::FailWriteReadOnly, fail_valid(13)),
    ];
    for (scenario, want) in cases {
        match verdict(scenario) {
            Event::Verdict { kind, error, exit_reason, qualification, .. } => {
                assert_eq!((Some(kind.name()), error, exit_reason, qualification), want, "{scenario:?}");
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn a_payload_run_leaves_no_hypercall_errors() {
    let n = run_nested("io_encodings", 1, false);
    let errors: Vec<_> =
        n.events.iter().filter(|e| matches!(e, Event::HypercallError { .. } | Event::Note { .. })).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

/// A minimal static ELF: `code` at `nestbench_abi::payload::L2_IMAGE_BASE`, entered there.
fn tiny_elf(code: &[u8]) -> std::path::PathBuf {
    let base = nestbench_abi::payload::L2_IMAGE_BASE;
    let mut f = Vec::new();
    // ELF header (64 bytes): 64-bit, little-endian, EXEC, x86-64, one program header at 64.
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // e_machine x86-64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&base.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    // PT_LOAD, R+X, file offset 120, at `base`.
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&5u32.to_le_bytes());
    for v in [120u64, base, base, code.len() as u64, code.len() as u64, 0x1000] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(code);
    let path = std::env::temp_dir().join(format!("nestbench-tiny-{}.elf", std::process::id()));
    std::fs::write(&path, f).unwrap();
    path
}

#[test]
fn an_l2_triple_fault_is_reflected_as_exit_reason_2() {
    // ud2 with no IDT in L2: #UD -> #DF -> triple fault, a VM exit (SDM 26.2).
    let elf = tiny_elf(&[0x0F, 0x0B]);
    let config = MachineConfig {
        engine: EngineConfig::Soft(SoftConfig { vmcs_shadowing: true }),
        payload: Some(PayloadSpec {
            name: "ud2".into(),
            elf: elf.clone(),
            cpl: nestbench_abi::payload::Cpl::User,
            iterations: 1,
            arg: 0,
            setup: nestbench_abi::payload::Setup::NONE,
        }),
        ..MachineConfig::default()
    };
    let mut events = Vec::new();
    let report = Machine::new(config, &Image::Elf(l0::images::l1_elf())).unwrap().run(|e| events.push(e)).unwrap();
    std::fs::remove_file(elf).ok();
    let soft = report.soft.as_ref().unwrap();
    assert_eq!(soft.reflected_exits.get(ExitReason::TripleFault.kernel_name()), Some(&1), "{:?}", soft.reflected_exits);
    assert_eq!(soft.reflected_total, 1);
    let console: Vec<&str> = events
        .iter()
        .filter_map(|e| if let Event::Console { text } = e { Some(text.as_str()) } else { None })
        .collect();
    assert!(console.iter().any(|l| l.contains("L2 triple fault at RIP 0x400000 (image offset 0x0)")), "{console:?}");
    assert!(
        matches!(report.outcome, Outcome::Exited { status } if status != 0),
        "L1 stops with its triple-fault status: {:?}",
        report.outcome
    );
}

#[test]
fn ept_touch_gives_exactly_one_reflected_violation_per_page_and_none_on_the_second_pass() {
    use nestbench_abi::payload::EPT_DATA_GPA;
    let pages = 40;
    let n = run_nested("ept_touch", pages, true);
    // The payload reads every page twice (and checks the seeded words each time): exactly
    // one violation per page means the second pass caused none.
    assert_eq!(exits(&n, ExitReason::EptViolation), pages);
    assert_eq!(n.payload.exits.len(), 1, "nothing but EPT violations: {:?}", n.payload.exits);
    for (i, r) in n.payload.exit_records.iter().enumerate() {
        // SDM Table 28-7: read (bit 0), EPT12 entry not present (bits 5:3 = 0), linear
        // address valid (bit 7), final translation (bit 8).
        assert_eq!((r.reason, r.qualification), (48, 0x181), "{r:?}");
        assert_eq!(r.guest_linear, EPT_DATA_GPA + i as u64 * 4096, "{r:?}");
        assert_eq!(r.rip_offset, n.payload.exit_records[0].rip_offset, "the same load every time");
    }
    let s = n.soft();
    assert_eq!(s.reflected_exits.get(ExitReason::EptViolation.kernel_name()), Some(&pages));
    assert_eq!(s.reflected_total, pages + 1, "and the DONE exit");
    assert!(s.ept.fills >= pages, "each resolved page is filled once after L1 maps it: {:?}", s.ept);
    assert_eq!(s.l0_only_exits, s.ept.fills, "fills are the only L0-only exits");
    assert_eq!(s.ept.evictions, 0);
    println!("ept_touch {pages}: {:?}", s.ept);
}

#[test]
fn ept_fill_has_no_reflected_exit_and_one_l0_only_fill_per_page() {
    let pages = 40;
    let baseline = run_nested("ept_fill", 1, true);
    let n = run_nested("ept_fill", pages, true);
    assert!(n.payload.exits.is_empty(), "{:?}", n.payload.exits);
    let (s, b) = (n.soft(), baseline.soft());
    assert_eq!(s.reflected_total, 1, "the DONE exit only");
    // Every data page is filled exactly once, on its first touch; the rest of L2's pages
    // (stack, results) are the same as in a one-page run.
    assert_eq!(s.ept.fills - b.ept.fills, pages - 1, "{:?} vs {:?}", s.ept, b.ept);
    assert_eq!(s.l0_only_exits, s.ept.fills);
    assert_eq!(s.l2_kvm_exits, s.reflected_total + s.l0_only_exits);
    assert!(s.ept.memslots <= s.ept.memslot_limit);
    let per_fill_ns = s.ept.fill_ns / s.ept.fills.max(1);
    let r = n.payload.results.as_ref().unwrap();
    println!(
        "ept_fill {pages}: {} fills, {} ns of L0 time per fill, L2 sees {} cycles per first touch (min {}); {:?}",
        s.ept.fills,
        per_fill_ns,
        r.total_cycles / r.iterations.max(1),
        r.min_cycles,
        s.ept
    );
}

/// The bytes of payload `name`'s image at `rip_offset` from its base.
fn image_bytes(name: &str, rip_offset: u64, len: u64) -> Vec<u8> {
    let base = nestbench_abi::payload::L2_IMAGE_BASE;
    let mem = l0::memory::GuestMem::new(base + nestbench_abi::payload::L2_IMAGE_MAX).unwrap();
    l0::loader::stage_flat(&mem, &l0::images::payload_elf(name), base, nestbench_abi::payload::L2_IMAGE_MAX, base)
        .unwrap();
    mem.read_vec(base + rip_offset, len).unwrap()
}

fn console(n: &Nested) -> Vec<&str> {
    n.events.iter().filter_map(|e| if let Event::Console { text } = e { Some(text.as_str()) } else { None }).collect()
}

#[test]
fn rdmsr_at_cpl0_exits_once_per_iteration_and_receives_l1s_value() {
    let n = run_nested("rdmsr", 40, true);
    assert_eq!(exits(&n, ExitReason::Rdmsr), 40);
    assert_eq!(n.payload.exits.len(), 1, "nothing but RDMSR exits: {:?}", n.payload.exits);
    assert_eq!(n.payload.exit_records.len(), 40);
    // SDM 28.2.1/28.2.4: no qualification, length 2, RIP at the instruction (0F 32).
    assert_all_records(&n.payload.exit_records, ExitReason::Rdmsr, 0, 2);
    let r = &n.payload.exit_records[0];
    assert_eq!((r.insn_info, r.guest_linear), (0, 0));
    assert_eq!(image_bytes("rdmsr", r.rip_offset, 2), [0x0F, 0x32], "RIP at the RDMSR");
    let s = n.soft();
    assert_eq!(s.reflected_exits.get(ExitReason::Rdmsr.kernel_name()), Some(&40), "{:?}", s.reflected_exits);
    assert_eq!(s.reflected_total, 41, "40 measured exits and the final DONE exit");
    // The value round trip (L1 -> EDX:EAX -> payload) is the payload's check: run_nested
    // asserted it counted no failure.
}

#[test]
fn wrmsr_at_cpl0_exits_once_per_iteration_and_l1_receives_every_value() {
    let n = run_nested("wrmsr", 40, true);
    assert_eq!(exits(&n, ExitReason::Wrmsr), 40);
    assert_eq!(n.payload.exits.len(), 1, "nothing but WRMSR exits: {:?}", n.payload.exits);
    assert_all_records(&n.payload.exit_records, ExitReason::Wrmsr, 0, 2);
    let r = &n.payload.exit_records[0];
    assert_eq!(image_bytes("wrmsr", r.rip_offset, 2), [0x0F, 0x30], "RIP at the WRMSR");
    // The value round trip (payload EDX:EAX -> L1): L1 checked all 40 against the sequence.
    let last = l2_payloads::wrmsr::value(39);
    let want = format!("l1: wrmsr: 40 writes of MSR 0xc0000102 checked, 0 mismatches, last value {last:#x}");
    assert!(console(&n).iter().any(|l| l.contains(&want)), "{:?}", console(&n));
    assert_eq!(n.soft().reflected_total, 41);
}

#[test]
fn the_single_level_twin_answers_rdmsr_and_wrmsr_like_l1() {
    for (name, kind) in [("rdmsr", "rdmsr"), ("wrmsr", "wrmsr")] {
        let m = l2_payloads::find(name).unwrap();
        let r = l0::single_level::run(
            std::path::Path::new("/dev/kvm"),
            &l0::images::payload_elf(name),
            m.cpl,
            30,
            0,
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!((r.status, r.problem.as_deref()), (0, None), "{name}");
        let res = r.results.as_ref().expect("results written");
        assert_eq!((res.iterations, res.failures), (30, 0), "{name}: values checked on both sides");
        assert_eq!(r.kvm_exits.get(kind), Some(&30), "{name}: {:?}", r.kvm_exits);
    }
}

#[test]
fn ept_ro_write_is_a_violation_with_the_write_bit_and_the_retry_succeeds() {
    use nestbench_abi::payload::EPT_DATA_GPA;
    let pages = 10;
    let n = run_nested("ept_ro", pages, true);
    assert_eq!(exits(&n, ExitReason::EptViolation), pages);
    for (i, r) in n.payload.exit_records.iter().enumerate() {
        // SDM Table 28-7: write (bit 1), EPT12 allows R only (bits 5:3 = 001), linear
        // address valid (bit 7) and final translation (bit 8).
        assert_eq!((r.reason, r.qualification), (48, 0x18A), "{r:?}");
        assert_eq!(r.guest_linear, EPT_DATA_GPA + i as u64 * 4096, "{r:?}");
    }
    // RIP at the store (KVM had retired it past; L0 decoded backwards): `mov [reg], reg`
    // with REX.W is 3 bytes, 48 89 /r.
    let r = &n.payload.exit_records[0];
    let image = std::fs::read(l0::images::payload_elf("ept_ro")).unwrap();
    assert!(image.windows(2).any(|w| w == [0x48, 0x89]), "a 64-bit store in the image");
    assert_ne!(r.rip_offset, 0);
    let s = n.soft();
    assert_eq!(s.reflected_total, pages + 1);
    assert_eq!(s.l0_only_exits, s.ept.fills);
    // The payload checked that each page held L1's seed (the read) and then its own value
    // (the write went through after L1 granted write, and not before: the check would see
    // it anyway, so the exact count of violations is the proof).
}

#[test]
fn ept_misconfig_is_one_exit_49_with_the_gpa_and_l1_repairs_it() {
    use nestbench_abi::payload::{EPT_DATA_GPA, EPT_MISCONFIG_PAGES};
    for arg in [0, 2, EPT_MISCONFIG_PAGES + 3] {
        let n = run_nested_with("ept_misconfig", 1, arg, SoftConfig { vmcs_shadowing: true });
        let gpa = EPT_DATA_GPA + arg % EPT_MISCONFIG_PAGES * 4096;
        assert_eq!(n.payload.exits.len(), 1, "nothing but the misconfiguration: {:?}", n.payload.exits);
        assert_eq!(exits(&n, ExitReason::EptMisconfiguration), 1);
        let r = &n.payload.exit_records[0];
        // SDM 28.2.1: qualification cleared; the guest-linear address is not reported.
        assert_eq!((r.reason, r.qualification, r.insn_len, r.guest_linear), (49, 0, 0, 0), "{r:?}");
        // `mov reg, qword ptr [reg]` (REX.W, maybe .R/.B, then 8B /r): RIP at the load,
        // which retried after the repair.
        let insn = image_bytes("ept_misconfig", r.rip_offset, 2);
        assert_eq!((insn[0] & 0xFA, insn[1]), (0x48, 0x8B), "{r:?}: {insn:x?}");
        // GUEST_PHYSICAL_ADDRESS as L1 read it from its VMCS: the page L1 broke, offset 0.
        let want = format!("l1: EPT misconfiguration at guest-physical {gpa:#x}, qualification 0x0: repaired");
        assert!(console(&n).iter().any(|l| l.contains(&want)), "{:?}", console(&n));
        let s = n.soft();
        assert_eq!(s.reflected_exits.get(ExitReason::EptMisconfiguration.kernel_name()), Some(&1));
        assert_eq!(s.reflected_total, 2, "the misconfiguration and DONE");
        assert_eq!(s.l0_only_exits, s.ept.fills);
    }
}

#[test]
fn mmio_register_is_emulated_by_l1_with_exactly_two_violations_per_iteration() {
    use nestbench_abi::payload::{MMIO_GPA, MMIO_INSN_LEN};
    let iterations = 25;
    let n = run_nested("mmio", iterations, true);
    assert_eq!(n.payload.exits.len(), 1, "nothing but EPT violations: {:?}", n.payload.exits);
    assert_eq!(exits(&n, ExitReason::EptViolation), 2 * iterations);
    assert_eq!(n.payload.exit_records.len(), 50);
    let (w, r) = (&n.payload.exit_records[0], &n.payload.exit_records[1]);
    // SDM Table 28-7: write (bit 1) / read (bit 0), EPT12 entry not present (bits 5:3 = 0),
    // linear address valid (bit 7), final translation (bit 8).
    assert_eq!((w.reason, w.qualification, w.guest_linear), (48, 0x182, MMIO_GPA), "{w:?}");
    assert_eq!((r.reason, r.qualification, r.guest_linear), (48, 0x181, MMIO_GPA), "{r:?}");
    assert_eq!(r.rip_offset, w.rip_offset + u64::from(MMIO_INSN_LEN), "the load right after the store");
    assert_eq!(image_bytes("mmio", w.rip_offset, 14), [0x89, 4, 0x25, 0, 0, 0x60, 0, 0x8B, 4, 0x25, 0, 0, 0x60, 0]);
    for pair in n.payload.exit_records.chunks(2) {
        assert_eq!(
            pair.iter().map(|x| (x.qualification, x.rip_offset)).collect::<Vec<_>>(),
            [(0x182, w.rip_offset), (0x181, r.rip_offset)]
        );
    }
    let s = n.soft();
    assert_eq!(s.reflected_exits.get(ExitReason::EptViolation.kernel_name()), Some(&(2 * iterations)));
    assert_eq!(s.reflected_total, 2 * iterations + 1, "and DONE");
    assert_eq!(s.l0_only_exits, s.ept.fills, "the register page is never filled");
    // Each read returned L1's value (the payload's check; run_nested asserted no failure).
}

/// `preempt_timer` with payload argument `arg` (nestbench_abi::payload::PREEMPT_VALUE_GIVEN
/// and a timer value, or 0 for the default value).
fn run_preempt_timer(iterations: u64, arg: u64) -> Nested {
    run_nested_with("preempt_timer", iterations, arg, SoftConfig { vmcs_shadowing: true })
}

#[test]
fn preempt_timer_gives_exactly_n_timer_exits_with_qualification_0_and_reports_the_overshoot() {
    let n = run_preempt_timer(30, 0);
    assert_eq!(exits(&n, ExitReason::PreemptionTimer), 30, "{:?}", n.payload.exits);
    let other: u64 =
        n.payload.exits.iter().filter(|(k, _)| *k != ExitReason::PreemptionTimer.kernel_name()).map(|(_, v)| v).sum();
    assert_eq!(other, 0, "nothing but timer exits: {:?}", n.payload.exits);
    for r in &n.payload.exit_records {
        assert_eq!((r.reason, r.qualification, r.insn_len), (ExitReason::PreemptionTimer as u32, 0, 0), "{r:?}");
    }
    let t = &n.soft().preemption_timer;
    assert_eq!((t.rate, t.arms, t.exits, t.zero_value_exits), (5, 30, 30, 0), "{t:?}");
    assert!(t.tsc_khz > 0);
    // The overshoot is reported, not asserted against wall time: only its sign is checked
    // (the kick never lands before the deadline; a timer exit taken at an L0-only return
    // after the budget ran out has a non-negative overshoot too).
    let (min, max, mean) = (t.overshoot_min_tsc.unwrap(), t.overshoot_max_tsc.unwrap(), t.overshoot_mean_tsc.unwrap());
    assert!(min >= 0 && min <= max, "{t:?}");
    println!(
        "preempt_timer: 30 timer exits, overshoot min {min} / mean {mean:.0} / max {max} TSC ticks at {} kHz, {} stale kicks",
        t.tsc_khz, t.stale_kicks
    );
}

#[test]
fn preempt_timer_value_0_exits_before_l2s_first_instruction() {
    let n = run_preempt_timer(5, nestbench_abi::payload::PREEMPT_VALUE_GIVEN);
    assert_eq!(exits(&n, ExitReason::PreemptionTimer), 5);
    // Every arm had value 0: each exit came before L2 executed anything, so RIP is the
    // image's entry point every time, and VM2 never ran for them.
    let image = std::fs::read(l0::images::payload_elf("preempt_timer")).unwrap();
    let entry = u64::from_le_bytes(image[24..32].try_into().unwrap()) - nestbench_abi::payload::L2_IMAGE_BASE;
    assert_eq!(n.payload.exit_records.len(), 5);
    for r in &n.payload.exit_records {
        assert_eq!((r.reason, r.qualification, r.rip_offset), (ExitReason::PreemptionTimer as u32, 0, entry), "{r:?}");
    }
    let t = &n.soft().preemption_timer;
    assert_eq!((t.arms, t.exits, t.zero_value_exits), (5, 5, 5), "{t:?}");
    assert_eq!(t.overshoot_min_tsc, None, "no L2 time, no overshoot");
}

#[test]
fn ept_remap_with_invept_of_both_types_shows_l2_the_new_page() {
    let iterations = 10;
    let n = run_nested("ept_remap", iterations, true);
    assert_eq!(n.payload.exits.len(), 1, "{:?}", n.payload.exits);
    assert_eq!(exits(&n, ExitReason::IoInstruction), iterations);
    let want = "l1: ept_remap: 10 remaps, INVEPT single-context 5, all-context 5";
    assert!(console(&n).iter().any(|l| l.contains(want)), "{:?}", console(&n));
    let s = n.soft();
    assert_eq!(s.vmx_hypercalls.get("InvEpt"), Some(&iterations), "{:?}", s.vmx_hypercalls);
    // Every INVEPT drops VM2's slots before the next entry; the first entry builds them.
    assert_eq!(s.ept_shadow_builds, iterations + 1);
    assert_eq!(s.ept.resets, iterations + 1);
    // The payload checked the page's word after every remap (run_nested: no failure): the
    // new page each time, alternating.
}

#[test]
fn pte_remap_l1s_edit_of_an_l2_pte_is_seen_at_the_next_entry() {
    let iterations = 10;
    let n = run_nested("pte_remap", iterations, true);
    assert_eq!(n.payload.exits.len(), 1, "{:?}", n.payload.exits);
    assert_eq!(exits(&n, ExitReason::IoInstruction), iterations);
    assert!(console(&n).iter().any(|l| l.contains("l1: pte_remap: 10 L2 PTE changes")), "{:?}", console(&n));
    let s = n.soft();
    // Each change is found at the next entry and the page table's slot re-created.
    assert_eq!(s.ept.table_resyncs, iterations, "{:?}", s.ept);
    assert!(s.ept.table_resync_slots >= iterations, "{:?}", s.ept);
    assert_eq!(s.ept.resets, 1, "no INVEPT: the EPT12 shadow stays");
}

#[test]
fn ept_touch_passes_under_a_small_memslot_limit_with_evictions_counted() {
    let pages = 40;
    let full = run_nested("ept_touch", pages, true);
    let peak = full.soft().ept.memslots_peak;
    let limit = 20;
    assert!(peak > limit as u64, "the limit must bite: peak {peak} without one");
    let n = run_nested_config("ept_touch", pages, 0, SoftConfig { vmcs_shadowing: true }, Some(limit));
    // The same exits, exactly, as without a limit; the payload's checks passed (run_nested).
    assert_eq!(exits(&n, ExitReason::EptViolation), pages);
    assert_eq!(n.payload.exits.len(), 1, "{:?}", n.payload.exits);
    let s = n.soft();
    assert_eq!(s.ept.memslot_limit, limit as u64);
    assert!(s.ept.memslots_peak <= limit as u64, "never above the limit: {:?}", s.ept);
    assert!(s.ept.evictions > 0, "{:?}", s.ept);
    // An evicted page is filled again on its next touch: more fills than without a limit.
    assert!(s.ept.fills > full.soft().ept.fills, "{:?} vs {:?}", s.ept, full.soft().ept);
    assert_eq!(s.l0_only_exits, s.ept.fills);
    assert_eq!(s.reflected_total, pages + 1);
    println!("ept_touch {pages} with {limit} memslots: {:?} (peak without a limit {peak})", s.ept);
}

#[test]
fn the_cli_memslot_limit_knob_reaches_the_ept_shadow() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nestbench-l0"))
        .args(["run", "--payload", "ept_touch", "--iterations", "40", "--memslot-limit", "20"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let end: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "end")
        .expect("an end event");
    let ept = &end["report"]["soft"]["ept"];
    assert_eq!(ept["memslot_limit"], 20, "{ept}");
    assert!(ept["memslots_peak"].as_u64().unwrap() <= 20, "{ept}");
    assert!(ept["evictions"].as_u64().unwrap() > 0, "{ept}");
}

#[test]
fn ept_fetch_from_an_unmapped_page_is_a_fetch_violation_or_an_l0_only_fill() {
    use nestbench_abi::payload::{EPT_DATA_GPA, EPT_FETCH_CODE_OFFSET};
    let pages = 12;
    // arg 0: EPT12 maps nothing: one violation on the instruction fetch per page.
    let n = run_nested("ept_fetch", pages, true);
    assert_eq!(n.payload.exits.len(), 1, "{:?}", n.payload.exits);
    assert_eq!(exits(&n, ExitReason::EptViolation), pages);
    for (i, r) in n.payload.exit_records.iter().enumerate() {
        let f = EPT_DATA_GPA + i as u64 * 4096 + EPT_FETCH_CODE_OFFSET;
        // SDM Table 28-7: fetch (bit 2), not present (bits 5:3 = 0), bits 7 and 8; RIP at the
        // called function (the fetch faulted, not the call).
        assert_eq!((r.reason, r.qualification, r.guest_linear), (48, 0x184, f), "{r:?}");
        assert_eq!(r.rip_offset, f.wrapping_sub(nestbench_abi::payload::L2_IMAGE_BASE), "{r:?}");
    }
    let s = n.soft();
    assert_eq!(s.reflected_total, pages + 1);
    assert_eq!(s.l0_only_exits, s.ept.fills);
    // arg 1: EPT12 maps every page before the launch: L0 fills each on its first fetch.
    let m = run_nested_with("ept_fetch", pages, 1, SoftConfig { vmcs_shadowing: true });
    assert!(m.payload.exits.is_empty(), "{:?}", m.payload.exits);
    let t = m.soft();
    assert_eq!(t.reflected_total, 1, "DONE only");
    assert!(t.ept.fills >= pages, "{:?}", t.ept);
    assert_eq!(t.l0_only_exits, t.ept.fills);
}

#[test]
fn irq_window_exits_before_l2s_first_instruction_once_per_entry() {
    let n = run_nested("irq_window", 10, true);
    assert_eq!(exits(&n, ExitReason::InterruptWindow), 10, "{:?}", n.payload.exits);
    let image = std::fs::read(l0::images::payload_elf("irq_window")).unwrap();
    let entry = u64::from_le_bytes(image[24..32].try_into().unwrap()) - nestbench_abi::payload::L2_IMAGE_BASE;
    assert_eq!(n.payload.exit_records.len(), 10);
    for r in &n.payload.exit_records {
        assert_eq!(
            (r.reason, r.qualification, r.insn_len, r.rip_offset),
            (ExitReason::InterruptWindow as u32, 0, 0, entry),
            "{r:?}"
        );
    }
    // VM2 ran only after the last window exit (the compute loop to the DONE exit).
    assert_eq!(n.soft().reflected_exits.get("INTERRUPT_WINDOW").copied(), Some(10), "{:?}", n.soft().reflected_exits);
}
