//! The Bochs engine against real Bochs (Debian's 2.7). Every test that needs Bochs skips
//! loudly when `/usr/bin/bochs`, the BIOS or the VGA BIOS is missing.

use std::path::Path;
use std::time::Duration;

use iced_x86::code_asm::{
    CodeAssembler, al, ax, bl, byte_ptr, cr0, cr4, cs, dx, ebx, ecx, ptr, rax, rbx, rdi, rsi, rsp,
};
use l0::bochs::{BochsConfig, BochsError, run};
use l0::events::{Event, Outcome, RunReport};
use l0::machine::Image;
use nestbench_abi::layout::{BOOT_INFO, BOOT_STACK_TOP, L1_IMAGE_BASE};

const BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";

/// Whether Bochs can run here; prints why not.
fn bochs_here(test: &str) -> bool {
    let c = BochsConfig::default();
    for (what, p) in
        [("bochs", c.bochs.as_path()), ("the Bochs BIOS", Path::new(BIOS)), ("the VGA BIOS", c.vgabios.as_path())]
    {
        if !p.is_file() {
            println!("SKIP: {test}: {what} not found at {} (apt-get install bochs bochsbios vgabios)", p.display());
            return false;
        }
    }
    if let Err(e) = l0::bochs::run::netns_options() {
        println!("SKIP: {test}: {e}");
        return false;
    }
    true
}

fn run_raw(code: Vec<u8>, timeout: Duration) -> (RunReport, Vec<Event>) {
    let config =
        BochsConfig { timeout, keep_dir: std::env::var_os("NESTBENCH_BOCHS_KEEP").is_some(), ..BochsConfig::default() };
    let mut events = Vec::new();
    let report = run(&config, &Image::Raw { gpa: L1_IMAGE_BASE, bytes: code }, |e| events.push(e)).expect("bochs run");
    (report, events)
}

/// 64-bit code that checks the state the ROM hands over (the soft engine's), writes
/// "@@NB1 exit <bits of what was wrong>" on port 0xE9 and stops at the magic breakpoint.
fn state_check_code() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut msg = a.create_label();
    let mut digits = a.create_label();
    let mut l = [(); 5].map(|()| a.create_label());
    a.xor(ebx, ebx).unwrap();
    a.mov(rax, BOOT_INFO).unwrap();
    a.cmp(rdi, rax).unwrap();
    a.je(l[0]).unwrap();
    a.or(bl, 1).unwrap();
    a.set_label(&mut l[0]).unwrap();
    a.mov(rax, BOOT_STACK_TOP).unwrap();
    a.cmp(rsp, rax).unwrap();
    a.je(l[1]).unwrap();
    a.or(bl, 2).unwrap();
    a.set_label(&mut l[1]).unwrap();
    a.mov(ax, cs).unwrap();
    a.cmp(ax, 8).unwrap();
    a.je(l[2]).unwrap();
    a.or(bl, 4).unwrap();
    a.set_label(&mut l[2]).unwrap();
    a.mov(rax, cr0).unwrap();
    a.mov(rsi, 0x8001_0033u64).unwrap();
    a.cmp(rax, rsi).unwrap();
    a.je(l[3]).unwrap();
    a.or(bl, 8).unwrap();
    a.set_label(&mut l[3]).unwrap();
    a.mov(rax, cr4).unwrap();
    a.cmp(rax, 0x20).unwrap();
    a.je(l[4]).unwrap();
    a.or(bl, 8).unwrap();
    a.set_label(&mut l[4]).unwrap();
    a.mov(dx, 0xE9).unwrap();
    a.lea(rsi, ptr(msg)).unwrap();
    a.mov(ecx, 11).unwrap();
    a.rep().outsb().unwrap();
    a.lea(rsi, ptr(digits)).unwrap();
    a.mov(al, byte_ptr(rsi + rbx)).unwrap();
    a.out(dx, al).unwrap();
    a.mov(al, b'\n' as u32).unwrap();
    a.out(dx, al).unwrap();
    a.db(&[0x66, 0x87, 0xDB]).unwrap(); // xchg bx, bx: Bochs' magic breakpoint
    let mut spin = a.create_label();
    a.set_label(&mut spin).unwrap();
    a.jmp(spin).unwrap();
    a.set_label(&mut msg).unwrap();
    a.db(b"@@NB1 exit ").unwrap();
    a.set_label(&mut digits).unwrap();
    a.db(b"0123456789abcdef").unwrap();
    a.assemble(L1_IMAGE_BASE).unwrap()
}

#[test]
fn rom_hands_over_the_soft_engines_boot_state_deterministically() {
    if !bochs_here("rom_hands_over_the_soft_engines_boot_state_deterministically") {
        return;
    }
    let (r1, ev) = run_raw(state_check_code(), Duration::from_secs(20));
    assert_eq!(r1.outcome, Outcome::Exited { status: 0 }, "{ev:?} {:#?}", r1.bochs);
    let b1 = r1.bochs.clone().unwrap();
    assert_eq!(b1.exit_status, Some(0), "{b1:?}");
    assert!(!b1.timed_out);
    assert_eq!(b1.model, "corei7_skylake_x");
    assert_eq!(r1.hypercalls["Exit"], 1);
    let n = b1.instructions.expect("the instruction count");
    assert!(n > 20 && n < 1000, "{n}");
    let (r2, _) = run_raw(state_check_code(), Duration::from_secs(20));
    assert_eq!(r2.bochs.unwrap().instructions, Some(n), "deterministic instruction count");
}

#[test]
fn a_guest_that_spins_gets_the_timeout_outcome_with_registers() {
    if !bochs_here("a_guest_that_spins_gets_the_timeout_outcome_with_registers") {
        return;
    }
    let t = std::time::Instant::now();
    let (r, _) = run_raw(vec![0xEB, 0xFE], Duration::from_millis(1500)); // jmp $
    assert!(t.elapsed() < Duration::from_secs(10), "stopped promptly: {:?}", t.elapsed());
    match &r.outcome {
        Outcome::Timeout { budget_ms: 1500, regs, disassembly } => {
            assert_eq!(regs.rip, L1_IMAGE_BASE, "{r:?}");
            assert_eq!(regs.rdi, BOOT_INFO);
            assert!(disassembly.starts_with("jmp"), "{disassembly}");
        }
        other => panic!("{other:?} {:#?}", r.bochs),
    }
    let b = r.bochs.unwrap();
    assert!(b.timed_out);
    assert!(b.instructions.is_some_and(|n| n > 1000), "{b:?}");
}

#[test]
fn bochs_dying_without_an_exit_line_is_a_clear_outcome() {
    if !bochs_here("bochs_dying_without_an_exit_line_is_a_clear_outcome") {
        return;
    }
    // lidt with a zero limit, then int3: #GP, #DF, triple fault; with reset_on_triple_fault=0
    // Bochs panics and exits 1.
    let mut a = CodeAssembler::new(64).unwrap();
    let mut idtr = a.create_label();
    a.lidt(ptr(idtr)).unwrap();
    a.int3().unwrap();
    a.set_label(&mut idtr).unwrap();
    a.db(&[0; 10]).unwrap();
    let (r, _) = run_raw(a.assemble(L1_IMAGE_BASE).unwrap(), Duration::from_secs(20));
    match &r.outcome {
        Outcome::EngineStopped { engine, why } => {
            assert_eq!(engine, "bochs");
            assert!(why.starts_with("Bochs exited with status 1 without an exit or exception line"), "{why}");
            assert!(why.contains("exception with no resolution"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    let b = r.bochs.unwrap();
    assert_eq!(b.exit_status, Some(1));
    assert!(b.log_lines.iter().any(|l| l.contains("PANIC")), "{b:?}");
}

#[test]
fn unknown_models_and_models_without_ept_are_refused() {
    for (model, want) in [
        ("core2_penryn_t9600", "core2_penryn_t9600 has no EPT; models with EPT: corei5_lynnfield_750,"),
        ("pentium", "pentium has no VMX; models with EPT:"),
        ("i9_9900k", "unknown Bochs CPU model \"i9_9900k\"; models with EPT:"),
    ] {
        let config = BochsConfig { model: model.into(), ..BochsConfig::default() };
        let e = run(&config, &Image::Raw { gpa: L1_IMAGE_BASE, bytes: vec![0xF4] }, |_| {}).unwrap_err();
        assert!(matches!(e, BochsError::Config(_)), "{e:?}");
        assert!(e.to_string().starts_with(want), "{model}: {e}");
        assert!(e.to_string().contains("corei7_skylake_x"), "{e}");
        assert!(e.to_string().contains("models with SVM: phenom_8650_toliman, zambezi, trinity_apu, ryzen"), "{e}");
    }
}

#[test]
fn hello_l1_boots_on_bochs_and_probes_real_vmx() {
    if !bochs_here("hello_l1_boots_on_bochs_and_probes_real_vmx") {
        return;
    }
    let l1 = l0::images::l1_elf();
    let config = BochsConfig { timeout: Duration::from_secs(60), ..BochsConfig::default() };
    let mut events = Vec::new();
    let r = run(&config, &Image::Elf(l1), |e| events.push(e)).expect("bochs run");
    if events.is_empty() && matches!(r.outcome, Outcome::Timeout { .. }) {
        println!(
            "SKIP: hello_l1_boots_on_bochs_and_probes_real_vmx: L1 wrote nothing on port 0xE9 (its 0xE9 transport is not in this build)"
        );
        return;
    }
    let probe = events
        .iter()
        .find_map(|e| if let Event::Probe(p) = e { Some(p) } else { None })
        .unwrap_or_else(|| panic!("no probe: {events:#?} {r:#?}"));
    assert!(probe.vmx, "{probe:?}");
    assert!(!probe.nestbench_l0, "no nestbench leaf on Bochs: {probe:?}");
    assert_eq!(probe.vendor, "GenuineIntel");
    let basic = &probe.vmx_msrs[0];
    assert_eq!((basic.index, basic.status.name()), (0x480, "ok"), "{probe:?}");
    assert!(basic.value.is_some_and(|v| v != 0));
    assert_eq!(r.outcome, Outcome::Exited { status: 0 }, "{events:#?} {:#?}", r.bochs);
    let b = r.bochs.unwrap();
    assert_eq!(b.exit_status, Some(0));
    assert!(b.instructions.is_some());
}
