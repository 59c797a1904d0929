//! The kvm engine. Its host-independent parts run everywhere, on recorded or constructed
//! fixtures (`tests/fixtures/kvm/`, each file says where it came from): the VMX
//! pass-through, the tracepoint arithmetic, the statistics attribution. What needs nested
//! VMX skips with the reason `nestbench doctor` gives, loudly.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kvm_bindings::kvm_cpuid_entry2;
use l0::kvm_engine::{attribution, caps, tracefs, tracepoints};
use nestbench_abi::cpuid as hv;
use serde_json::Value;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kvm").join(name)).unwrap()
}

fn recorded_cpuid() -> Vec<kvm_cpuid_entry2> {
    let v: Value = serde_json::from_str(&fixture("amd-epyc-kvm-pvm-supported-cpuid.json")).unwrap();
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let f = |k: &str| e[k].as_u64().unwrap() as u32;
            kvm_cpuid_entry2 {
                function: f("function"),
                index: f("index"),
                flags: f("flags"),
                eax: f("eax"),
                ebx: f("ebx"),
                ecx: f("ecx"),
                edx: f("edx"),
                ..Default::default()
            }
        })
        .collect()
}

fn recorded_vmx_msrs() -> Vec<(u32, u64)> {
    let v: Value = serde_json::from_str(&fixture("bochs-skylake-x-vmx-msrs.json")).unwrap();
    v["vmx_msrs"].as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_u64().unwrap())).collect()
}

/// Whether this host can run the kvm engine, and if not why (what `doctor` says).
fn kvm_engine_here() -> Result<(), String> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    let supported = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(|e| e.to_string())?;
    let msrs = caps::read_vmx_feature_msrs(&kvm).map_err(|e| e.to_string())?;
    caps::plan(supported.as_slice(), &msrs).map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn the_recorded_amd_host_is_refused_with_the_reason() {
    let e = caps::plan(&recorded_cpuid(), &recorded_vmx_msrs()).unwrap_err();
    assert!(e.to_string().contains("CPUID.1:ECX.VMX and CPUID 8000_0001h:ECX.SVM clear"), "{e}");
}

#[test]
fn vmx_passes_through_to_l1_and_l1_can_build_its_controls_from_it() {
    // The recorded CPUID with VMX as an Intel host's KVM with nested=1 reports it, and the
    // capability MSRs recorded on Bochs' Skylake-X.
    let mut cpuid = recorded_cpuid();
    cpuid.iter_mut().filter(|e| e.function == 1).for_each(|e| e.ecx |= hv::CPUID1_ECX_VMX);
    let msrs = recorded_vmx_msrs();
    let mut shuffled = msrs.clone();
    shuffled.reverse();
    shuffled.push((0x10, 1)); // not a VMX MSR: not passed
    let plan = caps::plan(&cpuid, &shuffled).unwrap();
    assert_eq!(plan.vmx_msrs, msrs, "every VMX capability MSR, in index order, nothing else");
    // Upstream KVM derives the non-TRUE controls and CR0/CR4_FIXED1 and refuses a host write
    // of them (vmx_set_vmx_msr(), arch/x86/kvm/vmx/nested.c): they are read back, not written.
    let written: Vec<u32> = plan.writes().iter().map(|(i, _)| *i).collect();
    assert_eq!(written, [0x480, 0x485, 0x486, 0x488, 0x48A, 0x48B, 0x48C, 0x48D, 0x48E, 0x48F, 0x490, 0x491]);
    assert_eq!(plan.writes()[0], msrs[0], "IA32_VMX_BASIC first, with its value");
    let leaf = |f: u32| plan.cpuid.iter().find(|e| e.function == f).copied();
    assert_ne!(leaf(1).unwrap().ecx & hv::CPUID1_ECX_VMX, 0, "CPUID.1:ECX.VMX for L1");
    let sig = leaf(hv::LEAF_SIGNATURE).unwrap();
    assert_eq!(
        hv::signature_from_words(sig.ebx, sig.ecx, sig.edx),
        hv::SIGNATURE,
        "nestbench's leaf, not KVM's PV one"
    );
    let features = leaf(hv::LEAF_INFO).unwrap().ebx;
    assert_eq!(features & hv::FEATURE_SOFT_VMX, 0, "no soft VMX: L1 takes its hardware backend");
    assert_eq!(l1::vmx::select_backend(leaf(1).unwrap().ecx, true, features), Some(l1::vmx::BackendKind::Hardware));
    // L1 adapts its controls to exactly these MSRs (as it does on Bochs and on hardware).
    let by_index: BTreeMap<u32, u64> = plan.vmx_msrs.iter().copied().collect();
    let l1_caps = l1::vmx::caps::VmxCaps::read(|m| by_index.get(&m).copied().unwrap_or(0));
    for cpl0 in [true, false] {
        l1::vmx::caps::compute_controls(&l1_caps, cpl0).expect("L1's controls fit the passed-through MSRs");
    }
}

#[test]
fn tracepoints_split_l2_exits_into_l0_handled_and_reflected() {
    let text = fixture("nested-outl-x3.trace");
    let c = tracepoints::count(&text, Some(4242));
    assert_eq!((c.kvm_exit, c.nested_vmexit, c.nested_vmexit_inject, c.nested_vmenter), (11, 4, 3, 4));
    assert_eq!((c.l0_handled(), c.l1_exits()), (1, 7));
    assert_eq!(c.l1_exits_per_reflected(), Some(7.0 / 3.0));
    assert_eq!(c.reflected_by_reason, BTreeMap::from([("IO_INSTRUCTION".to_owned(), 3)]));
    assert_eq!(c.l2_exits_by_reason.get("EPT_VIOLATION"), Some(&1));
    let l1: Vec<(&str, u64)> = c.l1_exits_by_reason.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(l1, [("CPUID", 1), ("IO_INSTRUCTION", 1), ("MSR_READ", 1), ("VMLAUNCH", 1), ("VMRESUME", 3)]);
    assert_eq!(c.other_lines, 0);
    // Another VM's thread is not ours.
    let all = tracepoints::count(&text, None);
    assert_eq!((all.kvm_exit, all.nested_vmexit), (12, 5));
}

#[test]
fn statistics_attribute_kvm_exits_to_reflected_exits() {
    let counters = BTreeMap::from([("exits".to_owned(), 2_011u64), ("nested_run".to_owned(), 1_001)]);
    let a = attribution::attribute(&counters, 1_000, (9, 2));
    assert_eq!((a.kvm_exits, a.nested_runs, a.reflected_exits), (Some(2_011), Some(1_001), 1_000));
    assert_eq!(a.kvm_exits_per_reflected_exit, Some(2.011));
    assert_eq!((a.userspace_exits_l1, a.userspace_exits_l2), (9, 2));
    let none = attribution::attribute(&BTreeMap::new(), 0, (0, 0));
    assert_eq!((none.kvm_exits, none.kvm_exits_per_reflected_exit), (None, None));
}

#[test]
fn a_tracefs_capture_session_runs_on_this_host() {
    let Some(root) = tracefs::root() else {
        eprintln!("SKIP: tracefs with KVM's events is not mounted here (mount -t tracefs nodev /sys/kernel/tracing)");
        return;
    };
    let capture = match tracefs::Capture::start(&root) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIP: tracefs is mounted but not usable: {why}");
            return;
        }
    };
    // A real run while the instance records (on hosts without nested VMX no nested event
    // fires; the session itself is what is under test).
    let out = Command::new(env!("CARGO_BIN_EXE_nestbench-l0")).arg("boot").output().unwrap();
    assert!(out.status.success());
    let text = capture.finish().unwrap();
    assert!(text.starts_with("# tracer: nop"), "{text}");
    let c = tracepoints::count(&text, None);
    assert_eq!(c.nested_vmexit_inject, 0);
    let instances = std::fs::read_dir(root.join("instances")).unwrap();
    assert!(
        instances.filter_map(Result::ok).all(|e| e.file_name() != format!("nestbench-{}", std::process::id()).as_str()),
        "the instance is removed"
    );
}

#[test]
fn the_kvm_engine_runs_payloads_or_says_why_not() {
    let out = Command::new(env!("CARGO_BIN_EXE_nestbench-l0"))
        .args(["run", "--engine", "kvm", "--payload", "outl", "--iterations", "50"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    match kvm_engine_here() {
        Err(why) => {
            eprintln!("SKIP: the kvm engine cannot run here: {why}");
            assert_eq!(out.status.code(), Some(2), "refused, not failed: {stdout}");
            let err = events.iter().find(|e| e["event"] == "error").expect("an error event");
            assert!(err["message"].as_str().unwrap().contains(&why), "{err} vs {why}");
        }
        Ok(()) => {
            assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
            let run = events.iter().find(|e| e["event"] == "payload_run").unwrap();
            assert_eq!(run["exits"]["I/O instruction"], 50, "{run}");
            let end = events.iter().find(|e| e["event"] == "end").unwrap();
            let k = &end["report"]["kvm_engine"];
            assert!(k["attribution"]["nested_runs"].as_u64().unwrap_or(0) >= 50, "{k}");
            assert_eq!(k["kvm_intel_params"]["nested"].as_str().map(|s| s.starts_with('Y') || s == "1"), Some(true));
        }
    }
}
