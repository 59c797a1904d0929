//! Bad input gets a clear error or a reported outcome; nothing crashes L0.
//!
//! Bad images and devices are [`MachineError`]s naming what is wrong; guest misbehaviour
//! (triple fault, emulation failure, a guest that never exits, hypercalls with hostile
//! arguments) is an [`Outcome`] or a `hypercall_error` event on real VMs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use iced_x86::code_asm::*;
use l0::events::{Event, Outcome, RunReport};
use l0::loader::LoadError;
use l0::machine::{Image, Machine, MachineConfig, MachineError};
use l0::vm::VmError;
use nestbench_abi::hypercall::{Call, PORT, Status};

const CODE: u64 = 0x10_0000;

fn l1_with(config: MachineConfig) -> Result<Machine, MachineError> {
    Machine::new(config, &Image::Elf(l0::images::l1_elf()))
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("nestbench-test-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Assemble `build` at [`CODE`] and run it at CPL 0 with a short budget.
fn run_code(
    budget: Duration,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (Vec<Event>, RunReport) {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    let bytes = a.assemble(CODE).unwrap();
    let config = MachineConfig { mem_size: 4 << 20, timeout: budget, ..Default::default() };
    let mut events = Vec::new();
    let report = Machine::new(config, &Image::Raw { gpa: CODE, bytes }).unwrap().run(|e| events.push(e)).unwrap();
    (events, report)
}

fn cpl0_emulated() -> bool {
    l0::host::probe_cpl0(&PathBuf::from("/dev/kvm")).map(|p| p.emulated).unwrap_or(false)
}

#[test]
fn missing_image_names_the_path() {
    let e = Machine::new(MachineConfig::default(), &Image::Elf("/nonexistent/l1.elf".into())).unwrap_err();
    assert!(matches!(e, MachineError::Load(LoadError::Io { .. })), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/l1.elf"), "{e}");
}

#[test]
fn non_elf_image_is_refused() {
    let p = temp_file("not-elf", b"#!/bin/sh\necho this is not an ELF\n");
    let e = Machine::new(MachineConfig::default(), &Image::Elf(p.clone())).unwrap_err();
    std::fs::remove_file(&p).ok();
    assert!(matches!(e, MachineError::Load(LoadError::NotElf { .. })), "{e:?}");
    assert!(e.to_string().contains("not an x86-64 ELF"), "{e}");
    let empty = temp_file("empty", b"");
    let e = Machine::new(MachineConfig::default(), &Image::Elf(empty.clone())).unwrap_err();
    std::fs::remove_file(&empty).ok();
    assert!(e.to_string().contains("shorter than an ELF header"), "{e}");
}

#[test]
fn elf_segments_outside_guest_memory_are_refused() {
    // The real L1 is linked at 1 MiB: with 1 MiB of guest memory none of it fits.
    let e = l1_with(MachineConfig { mem_size: 1 << 20, ..Default::default() }).unwrap_err();
    match &e {
        MachineError::Load(LoadError::SegmentOutside { start, mem_end, .. }) => {
            assert_eq!(*mem_end, 1 << 20);
            assert!(*start >= 0x10_0000);
        }
        other => panic!("expected SegmentOutside, got {other:?}"),
    }
    assert!(e.to_string().contains("outside the L1 area"), "{e}");
}

#[test]
fn missing_or_wrong_kvm_device_is_a_clear_error() {
    let cfg = |p: &str| MachineConfig { kvm_path: p.into(), ..Default::default() };
    let e = l1_with(cfg("/nonexistent/kvm")).unwrap_err();
    assert!(matches!(e, MachineError::Vm(VmError::Open { .. })), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/kvm") && e.to_string().contains("no KVM on this host"), "{e}");
    let e = l1_with(cfg("/dev/null")).unwrap_err();
    assert!(matches!(e, MachineError::Vm(VmError::NotKvm { .. })), "{e:?}");
    assert!(e.to_string().contains("/dev/null is not a KVM device"), "{e}");
}

#[test]
fn triple_fault_reports_rip_and_registers() {
    // No IDT (limit 0): the #UD cannot be delivered -> #DF -> triple fault.
    let (_, r) = run_code(Duration::from_secs(5), |a| {
        a.mov(rbx, 0x1234_5678_u64)?;
        a.ud2()
    });
    match r.outcome {
        Outcome::TripleFault { regs, idt, .. } => {
            assert_eq!(regs.rbx, 0x1234_5678);
            assert_eq!(regs.rip, CODE + 10, "RIP at the ud2 after the 10-byte mov");
            assert_eq!(idt.1, 0);
        }
        other => panic!("expected a triple fault, got {other:?}"),
    }
}

#[test]
fn emulation_failure_reports_rip_and_instruction_bytes() {
    if !cpl0_emulated() {
        println!("SKIP: guest CPL 0 runs natively on this host, so POPCNT does not hit KVM's emulator");
        return;
    }
    let (_, r) = run_code(Duration::from_secs(5), |a| {
        a.nop()?;
        a.popcnt(rax, rbx)
    });
    match r.outcome {
        Outcome::EmulationFailure { rip, insn_bytes, disassembly } => {
            assert_eq!(rip, CODE + 1);
            assert_eq!(insn_bytes[..5], [0xF3, 0x48, 0x0F, 0xB8, 0xC3]);
            assert_eq!(disassembly, "popcnt rax,rbx");
        }
        other => panic!("expected an emulation failure, got {other:?}"),
    }
}

#[test]
fn guest_that_never_exits_is_stopped_by_the_watchdog() {
    let (_, r) = run_code(Duration::from_millis(300), |a| {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.jmp(l)
    });
    match r.outcome {
        Outcome::Timeout { budget_ms, regs, disassembly } => {
            assert_eq!(budget_ms, 300);
            assert_eq!(regs.rip, CODE);
            assert!(disassembly.starts_with("jmp"), "{disassembly}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(r.wall_ns >= 300_000_000);
}

#[test]
fn vmcall_hang_is_stopped_by_the_watchdog() {
    // On the development hosts' KVM a VMCALL hangs the vCPU inside KVM_RUN; elsewhere KVM
    // treats it as a KVM hypercall and returns. The loop after it makes both end in a
    // timeout, at the VMCALL or at the loop.
    let (_, r) = run_code(Duration::from_millis(300), |a| {
        let mut l = a.create_label();
        a.vmcall()?;
        a.set_label(&mut l)?;
        a.jmp(l)
    });
    match r.outcome {
        Outcome::Timeout { regs, disassembly, .. } => {
            assert!(regs.rip == CODE || regs.rip == CODE + 3, "RIP {:#x}", regs.rip);
            if regs.rip == CODE {
                assert_eq!(disassembly, "vmcall");
                println!("the vCPU hung at the VMCALL (as HOST-NOTES says of this host)");
            }
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

fn status_of(r: &RunReport) -> u64 {
    match r.outcome {
        Outcome::Exited { status } => status,
        ref o => panic!("expected an exit, got {o:?}"),
    }
}

#[test]
fn hypercalls_with_hostile_arguments_get_an_error_status_not_a_crash() {
    let cases: [(u32, [u64; 3], Status, &str); 7] = [
        (Call::ConsoleWrite as u32, [0xFFFF_FFFF_F000, 16, 0], Status::BadAddress, "outside guest memory"),
        (Call::ConsoleWrite as u32, [u64::MAX - 4, 16, 0], Status::BadAddress, "outside guest memory"),
        (Call::ConsoleWrite as u32, [0x1000, 1 << 20, 0], Status::BadArgument, "exceeds"),
        (Call::Report as u32, [1, 0x1000, 7], Status::BadArgument, "is not the"),
        (Call::Report as u32, [99, 0x1000, 8], Status::BadArgument, "unknown report kind"),
        (0xDEAD, [0; 3], Status::UnknownCall, "unknown hypercall number"),
        (Call::Exception as u32, [0xFFFF_FFFF_0000, 0, 0], Status::BadAddress, "outside guest memory"),
    ];
    for (call, args, want, detail) in cases {
        // The status comes back in RAX; the guest passes it to Exit (RDI) unchanged.
        let (events, r) = run_code(Duration::from_secs(5), |a| {
            a.mov(eax, call)?;
            a.mov(rdi, args[0])?;
            a.mov(rsi, args[1])?;
            a.mov(r8, args[2])?;
            a.mov(dx, u32::from(PORT))?;
            a.out(dx, eax)?;
            a.mov(rdi, rax)?;
            a.mov(eax, Call::Exit as u32)?;
            a.out(dx, eax)
        });
        assert_eq!(status_of(&r), want as u64, "call {call:#x} {args:x?}");
        let errs: Vec<_> = events.iter().filter(|e| matches!(e, Event::HypercallError { .. })).collect();
        assert_eq!(errs.len(), 1, "{events:?}");
        match errs[0] {
            Event::HypercallError { call: c, detail: d, rip, .. } => {
                assert_eq!(*c, call);
                assert!(d.contains(detail), "{d}");
                assert!(*rip >= CODE);
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn l0_binary_exits_2_with_an_error_event_for_a_missing_image() {
    let out = Command::new(env!("CARGO_BIN_EXE_nestbench-l0"))
        .args(["boot", "--l1", "/nonexistent/l1.elf"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "error");
    assert!(last["message"].as_str().unwrap().contains("/nonexistent/l1.elf"), "{last}");
    let bad_flag = Command::new(env!("CARGO_BIN_EXE_nestbench-l0")).args(["boot", "--mem-mib", "0"]).output().unwrap();
    assert_eq!(bad_flag.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_flag.stderr).contains("--mem-mib"));
}
