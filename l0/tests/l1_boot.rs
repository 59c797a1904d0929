//! Boots the real L1 image on /dev/kvm and asserts on what it reported.

use std::path::PathBuf;

use l0::events::{Event, Outcome, Probe};
use l0::machine::{Image, Machine, MachineConfig};
use nestbench_abi::boot::Scenario;
use nestbench_abi::layout::IDENTITY_MAP_SIZE;

fn boot(scenario: Scenario) -> (Vec<Event>, l0::events::RunReport) {
    let config = MachineConfig { scenario, ..Default::default() };
    let machine = Machine::new(config, &Image::Elf(l0::images::l1_elf())).expect("L1 VM set up");
    let mut events = Vec::new();
    let report = machine.run(|e| events.push(e)).expect("L1 ran");
    (events, report)
}

fn probe(events: &[Event]) -> &Probe {
    events
        .iter()
        .find_map(|e| match e {
            Event::Probe(p) => Some(p),
            _ => None,
        })
        .expect("L1 sent a probe report")
}

#[test]
fn l1_boots_probes_and_exits_cleanly() {
    let (events, report) = boot(Scenario::Probe);
    assert_eq!(report.outcome, Outcome::Exited { status: 0 });

    let console: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Console { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let kvm = l0::host::kvm_facts(&PathBuf::from("/dev/kvm"));
    let vmx_line = format!("l1: VMX {}, L0 is nestbench", if kvm.offers_vmx { "offered" } else { "not offered" });
    let hello = format!("nestbench L1: hello from L1, ABI v{}, 32 MiB", nestbench_abi::ABI_VERSION);
    assert_eq!(console, [hello.as_str(), vmx_line.as_str()]);

    let p = probe(&events);
    assert!(p.nestbench_l0, "hypervisor leaf signature: {}", p.hypervisor_signature);
    assert_eq!(p.hypervisor_signature, "NESTBENCH-L0");
    assert_eq!(p.l0_abi_version, nestbench_abi::ABI_VERSION);
    assert_eq!(p.l0_hypercall_port, u32::from(nestbench_abi::hypercall::PORT));
    assert!(p.hypervisor_bit);
    assert_eq!(p.mtrr_def_type.status, "ok");
    assert_eq!(p.mtrr_def_type.value, Some(0x806), "MTRRs enabled, default type write-back");
    assert_eq!(p.efer & 0x500, 0x500, "long mode active");

    // What KVM offers decides what L1 sees: VMX exactly when KVM offers it, and the VMX
    // capability MSRs are read only then.
    assert_eq!(p.vmx, kvm.offers_vmx);
    assert_eq!(p.vmx_msrs.len(), 18);
    if !kvm.offers_vmx {
        println!("note: this host's KVM offers no VMX; L1 reports the VMX MSRs as not read");
        assert!(p.vmx_msrs.iter().all(|m| m.status == "not_read"));
        assert_eq!(p.vmx_msrs[0].index, 0x480);
    }

    // One KVM exit per hypercall: two console lines, the report, the exit.
    assert_eq!(report.hypercalls.values().sum::<u64>(), 4, "{:?}", report.hypercalls);
    assert_eq!(report.kvm_exits.get("io_out"), Some(&4));
    assert_eq!(report.kvm_exits_total, 4);
    match &report.kvm_stats {
        Some(s) => {
            assert!(s.vcpu.counters["exits"] >= 4, "KVM counts at least the exits L0 saw: {:?}", s.vcpu.counters);
            assert!(s.vcpu.counters.contains_key("insn_emulation"));
        }
        None => println!("SKIP stats assertions: this host has no KVM_GET_STATS_FD"),
    }
}

#[test]
fn l1_reports_its_own_page_fault_with_vector_error_code_and_cr2() {
    let (events, report) = boot(Scenario::PageFault);
    // The probe still happened before the fault.
    assert!(probe(&events).nestbench_l0);
    match report.outcome {
        Outcome::GuestException { vector, name, error_code, cr2, rip, .. } => {
            assert_eq!((vector, name.as_str()), (14, "#PF"));
            assert_eq!(cr2, IDENTITY_MAP_SIZE, "the first unmapped linear address");
            assert_eq!(error_code, 0, "not-present read from CPL 0");
            assert!((0x10_0000..0x20_0000).contains(&rip), "RIP {rip:#x} inside the L1 image");
        }
        other => panic!("expected L1's #PF report, got {other:?}"),
    }
}
