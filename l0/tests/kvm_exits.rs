//! What each KVM userspace exit leaves behind on this host's KVM, pinned with real guests.
//!
//! A KVM exit is not a VM exit (docs/DESIGN.md): when KVM_RUN returns, KVM may already have
//! moved RIP past the instruction, updated registers, or still hold a completion it runs at
//! the start of the next KVM_RUN. The soft engine must know exactly which, per exit kind and
//! per CPL, to present L1 a hardware-exact VM exit. Each test here boots a one-instruction
//! guest (at CPL 0, which this host's `kvm_pvm` backend emulates, and at CPL 3, which runs
//! natively, where the instruction is legal there) and asserts:
//!
//! * the exit KVM returns and its data,
//! * where RIP points at the exit (`at`: the instruction, `next`: past it),
//! * which registers/memory are already updated,
//! * what one KVM_RUN with `immediate_exit = 1` completes (it runs the pending completion,
//!   then returns EINTR without entering the guest),
//! * what a `set_regs` (RIP changed, or not) before that KVM_RUN does to the completion.
//!
//! The table and what the soft engine must do with each row are in docs/kvm-exits.md; every
//! row there names the test that pins it. Where this host differs from upstream KVM (or from
//! hardware), the assertion message says so, so a failure on another host reads as "this host
//! behaves like upstream here", not as a bug.
//!
//! Every guest runs under a [`Watchdog`], so no case can hang the test run.

use std::path::Path;
use std::time::Duration;

use iced_x86::BlockEncoderOptions;
use iced_x86::code_asm::*;
use kvm_bindings::kvm_regs;
use l0::stats::{StatsFd, delta};
use l0::vcpu::{Exit, Vcpu};
use l0::vm::Vm;
use l0::watchdog::Watchdog;
use l0::x86_setup::Cpl;

// ---------------------------------------------------------------------------------------------
// Harness: the only setup code in this file.
// ---------------------------------------------------------------------------------------------

const MEM: u64 = 2 << 20;
/// The instruction under test is the first one here.
const CODE: u64 = 0x10_0000;
const STACK: u64 = 0x8_0000;
/// A data buffer for string I/O.
const BUF: u64 = 0x9_0000;
/// Mapped by the boot page tables (identity, 2 MiB pages) but above guest memory: no memslot.
const NO_SLOT: u64 = 0x40_0000;
/// Port of the `out DONE_PORT, al` right after the instruction under test.
const DONE_PORT: u16 = 0xF4;
/// Port of the `out ALT_PORT, al` at `alt`, where tests move RIP.
const ALT_PORT: u16 = 0xF5;
/// A DX port inside the I/O bitmap range that the boot TSS (limit 0x67) covers, so that CPL 3
/// may use it on this host (see `cpl3_runs_with_iopl0_so_port_io_is_checked_against_the_tss_io_bitmap`).
const DX_PORT: u16 = 0x300;
/// A DX port outside that range.
const HIGH_PORT: u16 = 0x1234;
/// A register value no completion produces.
const MARK: u64 = 0xAAAA_AAAA_AAAA_AAAA;
/// What tests answer to IN / MMIO reads / RDMSR.
const DATA: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
const DATA_U64: u64 = 0x8877_6655_4433_2211;
const BUDGET: Duration = Duration::from_secs(5);

const CPLS: [Cpl; 2] = [Cpl::Kernel, Cpl::User];

/// One guest: the instruction under test at `at`, then `next: out DONE_PORT, al; jmp next`,
/// then `alt: out ALT_PORT, al; jmp alt`.
struct Guest {
    vm: Vm,
    vcpu: Vcpu,
    watchdog: Watchdog,
    cpl: Cpl,
    /// Address of the instruction under test.
    at: u64,
    /// Address of the instruction after it.
    next: u64,
    /// Address of the `out ALT_PORT, al`.
    alt: u64,
}

impl Guest {
    /// Boot `insn` at CPL `cpl` with the general registers `init` leaves (RIP/RSP set),
    /// after `setup` prepared memory (page tables, buffers, MSR filter).
    fn boot(
        cpl: Cpl,
        setup: impl FnOnce(&Vm),
        init: impl FnOnce(&mut kvm_regs),
        insn: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    ) -> Self {
        let vm = Vm::new(Path::new("/dev/kvm"), MEM).expect("creating the VM");
        setup(&vm);
        let mut a = CodeAssembler::new(64).unwrap();
        let (mut next, mut alt) = (a.create_label(), a.create_label());
        insn(&mut a).expect("assembling the instruction under test");
        a.set_label(&mut next).unwrap();
        a.out(u32::from(DONE_PORT), al).unwrap();
        a.jmp(next).unwrap();
        a.set_label(&mut alt).unwrap();
        a.out(u32::from(ALT_PORT), al).unwrap();
        a.jmp(alt).unwrap();
        let code = a.assemble_options(CODE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).unwrap();
        vm.mem.write(CODE, &code.inner.code_buffer).unwrap();
        let mut vcpu = vm.create_vcpu(cpl, CODE, STACK, 0).expect("creating the vCPU");
        let mut regs = vcpu.regs_now().unwrap();
        init(&mut regs);
        vcpu.set_regs_now(&regs).unwrap();
        let watchdog = Watchdog::arm(vcpu.bind_to_current_thread().unwrap(), BUDGET);
        let (next, alt) = (code.label_ip(&next).unwrap(), code.label_ip(&alt).unwrap());
        Self { vm, vcpu, watchdog, cpl, at: CODE, next, alt }
    }

    /// KVM_RUN until a real exit; `Exit::Interrupted` only if the watchdog fired (the guest
    /// did not exit within the budget).
    fn run(&mut self) -> Exit {
        loop {
            let exit = self.vcpu.run().expect("KVM_RUN");
            if exit != Exit::Interrupted || self.watchdog.fired() {
                return exit;
            }
        }
    }

    /// One KVM_RUN with `immediate_exit = 1`: runs KVM's pending completion, enters no guest.
    fn run_immediate(&mut self) {
        self.vcpu.set_immediate_exit(true);
        let exit = self.vcpu.run().expect("KVM_RUN");
        self.vcpu.set_immediate_exit(false);
        assert_eq!(exit, Exit::Interrupted, "{self}: KVM_RUN with immediate_exit must return EINTR");
    }

    /// The registers now (KVM_GET_REGS: never stale).
    fn regs(&self) -> kvm_regs {
        self.vcpu.regs_now().unwrap()
    }

    /// `regs` after applying `f`, through sync regs (`ioctl == false`) or KVM_SET_REGS.
    fn edit_regs(&mut self, ioctl: bool, f: impl FnOnce(&mut kvm_regs)) {
        let mut r = self.regs();
        f(&mut r);
        if ioctl { self.vcpu.set_regs_now(&r).unwrap() } else { self.vcpu.set_regs(&r).unwrap() }
    }

    /// Run to the `out DONE_PORT, al` after the instruction under test, i.e. the guest went on
    /// at `next`; returns the registers there.
    fn expect_done(&mut self) -> kvm_regs {
        let exit = self.run();
        assert!(
            matches!(exit, Exit::IoOut { port: DONE_PORT, .. }),
            "{self}: expected to continue at `next`, got {exit:?}"
        );
        let r = self.regs();
        assert_eq!(r.rip, self.next + 2, "{self}: RIP after `out DONE_PORT, al`");
        r
    }

    /// Run to the `out ALT_PORT, al`, i.e. the guest went on at `alt`.
    fn expect_alt(&mut self) -> kvm_regs {
        let exit = self.run();
        assert!(
            matches!(exit, Exit::IoOut { port: ALT_PORT, .. }),
            "{self}: expected to continue at `alt`, got {exit:?}"
        );
        self.regs()
    }

    /// How much the vCPU statistic `name` grows while `f` runs.
    fn stat(&mut self, stats: &StatsFd, name: &str, f: impl FnOnce(&mut Self)) -> u64 {
        let before = stats.snapshot().unwrap();
        f(self);
        *delta(&before, &stats.snapshot().unwrap()).counters.get(name).unwrap_or(&0)
    }
}

impl std::fmt::Display for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cpl = if self.cpl == Cpl::Kernel { 0 } else { 3 };
        write!(f, "CPL {cpl} (at={:#x} next={:#x} alt={:#x})", self.at, self.next, self.alt)
    }
}

type Insn = fn(&mut CodeAssembler) -> Result<(), IcedError>;
type Setup = fn(&Vm);

fn no_setup(_: &Vm) {}

fn msr_setup(vm: &Vm) {
    l0::msr_filter::exit_to_userspace(&vm.fd, &[0x10]).expect("MSR filter");
}

fn fill_buf(vm: &Vm) {
    vm.mem.write(BUF, &DATA).unwrap();
}

/// Little-endian value of the first `n` bytes of [`DATA`].
fn data(n: usize) -> u64 {
    DATA_U64 & if n == 8 { u64::MAX } else { (1u64 << (8 * n)) - 1 }
}

/// `old` with its low `n` bytes replaced by `v` (the x86 rule for 8/16-bit destinations);
/// 32-bit destinations zero-extend (`n == 4` returns `v`).
fn merge(old: u64, v: u64, n: usize) -> u64 {
    match n {
        4 | 8 => v,
        _ => (old & !((1u64 << (8 * n)) - 1)) | v,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. OUT
// ---------------------------------------------------------------------------------------------

/// (name, instruction, port, size) of the OUT forms.
fn out_forms() -> [(&'static str, Insn, u16, usize); 5] {
    [
        ("out 0x80, al", |a| a.out(0x80u32, al), 0x80, 1),
        ("out 0x80, eax", |a| a.out(0x80u32, eax), 0x80, 4),
        ("out dx, al", |a| a.out(dx, al), DX_PORT, 1),
        ("out dx, ax", |a| a.out(dx, ax), DX_PORT, 2),
        ("out dx, eax", |a| a.out(dx, eax), DX_PORT, 4),
    ]
}

fn out_regs(r: &mut kvm_regs) {
    r.rax = 0x1122_3344_5566_7788;
    r.rdx = u64::from(DX_PORT);
}

#[test]
fn out_exits_with_rip_already_past_and_nothing_pending() {
    for cpl in CPLS {
        for (name, insn, port, size) in out_forms() {
            let mut g = Guest::boot(cpl, no_setup, out_regs, insn);
            let exit = g.run();
            let want =
                Exit::IoOut { port, size: size as u8, count: 1, data: 0x5566_7788u32.to_le_bytes()[..size].to_vec() };
            assert_eq!(exit, want, "{g} {name}");
            assert_eq!(g.vcpu.regs().unwrap().rip, g.next, "{g} {name}: sync-regs RIP at the exit");
            assert_eq!(
                g.regs().rip,
                g.next,
                "{g} {name}: RIP at the OUT exit is already past the instruction on this host (upstream KVM: \
                 at the instruction, advanced by the pending completion in the next KVM_RUN)"
            );
            let before = g.regs();
            g.run_immediate();
            assert_eq!(
                g.regs(),
                before,
                "{g} {name}: nothing is pending after OUT; an immediate_exit run changes nothing"
            );
            let r = g.expect_done();
            assert_eq!(r.rax, 0x1122_3344_5566_7788, "{g} {name}");
        }
    }
}

#[test]
fn out_then_changed_rip_is_honoured() {
    for cpl in CPLS {
        for ioctl in [false, true] {
            let (name, insn, ..) = out_forms()[2];
            let mut g = Guest::boot(cpl, no_setup, out_regs, insn);
            assert!(matches!(g.run(), Exit::IoOut { .. }), "{g} {name}");
            let alt = g.alt;
            g.edit_regs(ioctl, |r| r.rip = alt);
            let r = g.expect_alt();
            assert_eq!(r.rip, g.alt + 2, "{g} {name} (set_regs by ioctl: {ioctl}): a new RIP after OUT is used as is");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. IN
// ---------------------------------------------------------------------------------------------

fn in_forms() -> [(&'static str, Insn, u16, usize); 5] {
    [
        ("in al, 0x80", |a| a.in_(al, 0x80u32), 0x80, 1),
        ("in eax, 0x80", |a| a.in_(eax, 0x80u32), 0x80, 4),
        ("in al, dx", |a| a.in_(al, dx), DX_PORT, 1),
        ("in ax, dx", |a| a.in_(ax, dx), DX_PORT, 2),
        ("in eax, dx", |a| a.in_(eax, dx), DX_PORT, 4),
    ]
}

fn in_regs(r: &mut kvm_regs) {
    r.rax = MARK;
    r.rdx = u64::from(DX_PORT);
}

#[test]
fn in_exits_at_the_instruction_and_immediate_exit_completes_it() {
    for cpl in CPLS {
        for (name, insn, port, size) in in_forms() {
            let mut g = Guest::boot(cpl, no_setup, in_regs, insn);
            assert_eq!(g.run(), Exit::IoIn { port, size: size as u8, count: 1 }, "{g} {name}");
            let r = g.regs();
            assert_eq!(r.rip, g.at, "{g} {name}: RIP at the IN exit is at the instruction");
            assert_eq!(r.rax, MARK, "{g} {name}: RAX is untouched at the IN exit");
            g.vcpu.set_in_data(&DATA);
            g.run_immediate();
            let r = g.regs();
            assert_eq!(r.rip, g.next, "{g} {name}: the immediate_exit run completes the IN and advances RIP");
            assert_eq!(
                r.rax,
                merge(MARK, data(size), size),
                "{g} {name}: 8/16-bit IN merges into RAX, 32-bit zero-extends"
            );
            assert_eq!(g.expect_done().rax, r.rax, "{g} {name}");
        }
    }
}

#[test]
fn in_completion_after_set_regs_drops_the_data_and_forces_rip_past() {
    for cpl in CPLS {
        for ioctl in [false, true] {
            for change_rip in [false, true] {
                let (name, insn, ..) = in_forms()[2];
                let mut g = Guest::boot(cpl, no_setup, in_regs, insn);
                assert!(matches!(g.run(), Exit::IoIn { .. }), "{g} {name}");
                g.vcpu.set_in_data(&DATA);
                let alt = g.alt;
                // Write back the registers exactly as they are, or with RIP moved to `alt`.
                g.edit_regs(ioctl, |r| {
                    if change_rip {
                        r.rip = alt;
                    }
                });
                g.run_immediate();
                let r = g.regs();
                let how = format!("{g} {name}, set_regs (ioctl: {ioctl}, RIP changed: {change_rip}) before completing");
                assert_eq!(
                    r.rax, MARK,
                    "{how}: on this host any set_regs between the IN exit and its completion drops the IN data \
                     (upstream KVM: data written unless RIP changed)"
                );
                assert_eq!(
                    r.rip, g.next,
                    "{how}: on this host the completion still moves RIP to the decoded next instruction, \
                     overriding a new RIP (upstream KVM: a changed RIP cancels the completion)"
                );
                g.expect_done();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. String I/O
// ---------------------------------------------------------------------------------------------

fn string_regs(r: &mut kvm_regs) {
    r.rsi = BUF;
    r.rdi = BUF;
    r.rcx = 4;
    r.rdx = u64::from(DX_PORT);
}

#[test]
fn rep_outsb_exits_once_per_byte_with_rip_at_the_instruction() {
    for cpl in CPLS {
        let mut g = Guest::boot(cpl, fill_buf, string_regs, |a| a.rep().outsb());
        for i in 0..4u64 {
            let exit = g.run();
            assert_eq!(
                exit,
                Exit::IoOut { port: DX_PORT, size: 1, count: 1, data: vec![DATA[i as usize]] },
                "{g} rep outsb: one exit per byte on this host (upstream KVM batches up to a page per exit)"
            );
            let r = g.regs();
            assert_eq!(r.rip, g.at, "{g} rep outsb, byte {i}: RIP stays at the instruction");
            assert_eq!(
                (r.rcx, r.rsi),
                (3 - i, BUF + i + 1),
                "{g} rep outsb, byte {i}: RCX/RSI already count the byte of this exit"
            );
            g.run_immediate();
            assert_eq!(g.regs(), r, "{g} rep outsb, byte {i}: nothing pending, the immediate_exit run changes nothing");
        }
        let r = g.expect_done();
        assert_eq!((r.rcx, r.rsi), (0, BUF + 4), "{g} rep outsb: after the last byte's exit the next run finishes it");
    }
}

#[test]
fn rep_outsb_then_changed_rip_is_honoured() {
    for cpl in CPLS {
        let mut g = Guest::boot(cpl, fill_buf, string_regs, |a| a.rep().outsb());
        assert!(matches!(g.run(), Exit::IoOut { .. }), "{g}");
        let alt = g.alt;
        g.edit_regs(false, |r| r.rip = alt);
        let r = g.expect_alt();
        assert_eq!((r.rcx, r.rsi), (3, BUF + 1), "{g} rep outsb: a new RIP stops the string op after its first byte");
    }
}

#[test]
fn rep_insb_exits_once_for_all_bytes_and_immediate_exit_completes_it() {
    for cpl in CPLS {
        let mut g = Guest::boot(cpl, no_setup, string_regs, |a| a.rep().insb());
        assert_eq!(g.run(), Exit::IoIn { port: DX_PORT, size: 1, count: 4 }, "{g} rep insb: one exit for all 4 bytes");
        let r = g.regs();
        assert_eq!((r.rip, r.rcx, r.rdi), (g.at, 4, BUF), "{g} rep insb: nothing done at the exit");
        g.vcpu.set_in_data(&DATA);
        g.run_immediate();
        let r = g.regs();
        assert_eq!(
            (r.rcx, r.rdi),
            (0, BUF + 4),
            "{g} rep insb: the immediate_exit run stores the bytes, advances RDI, RCX"
        );
        assert_eq!(
            r.rip, g.at,
            "{g} rep insb: RIP stays at the instruction after the completion; the next run executes it once more \
             with RCX = 0"
        );
        let mut buf = [0u8; 6];
        g.vm.mem.read(BUF, &mut buf).unwrap();
        assert_eq!(buf, [0x11, 0x22, 0x33, 0x44, 0, 0], "{g} rep insb: memory written by the completion");
        g.expect_done();
    }
}

#[test]
fn rep_insb_completion_after_set_regs_still_runs_and_keeps_rip_at_the_instruction() {
    for cpl in CPLS {
        let mut g = Guest::boot(cpl, no_setup, string_regs, |a| a.rep().insb());
        assert!(matches!(g.run(), Exit::IoIn { .. }), "{g}");
        g.vcpu.set_in_data(&DATA);
        let alt = g.alt;
        g.edit_regs(false, |r| r.rip = alt);
        g.run_immediate();
        let r = g.regs();
        assert_eq!(
            (r.rip, r.rcx, r.rdi),
            (g.at, 0, BUF + 4),
            "{g} rep insb: on this host the completion ignores a new RIP: bytes stored, RCX/RDI advanced, RIP back at \
             the instruction (upstream KVM: a changed RIP cancels it)"
        );
        g.expect_done();
    }
}

#[test]
fn outsd_without_rep_exits_with_rip_past_and_rsi_advanced() {
    for cpl in CPLS {
        let mut g = Guest::boot(cpl, fill_buf, string_regs, |a| a.outsd());
        assert_eq!(g.run(), Exit::IoOut { port: DX_PORT, size: 4, count: 1, data: DATA[..4].to_vec() }, "{g} outsd");
        let r = g.regs();
        assert_eq!((r.rip, r.rsi, r.rcx), (g.next, BUF + 4, 4), "{g} outsd: RIP past, RSI advanced, RCX untouched");
        g.run_immediate();
        assert_eq!(g.regs(), r, "{g} outsd: nothing pending");
        g.expect_done();
    }
}

#[test]
fn cpl3_runs_with_iopl0_so_port_io_is_checked_against_the_tss_io_bitmap() {
    // The boot TSS is at GPA 0 with limit 0x67 over zeroed memory: its I/O bitmap base (offset
    // 0x66) is 0, so ports below 0x340 have (clear) bitmap bits within the limit, higher ports
    // do not.
    let try_out = |cpl: Cpl, port: u16, bitmap: Option<(u64, u8)>, tr_limit: u32| {
        let mut g = Guest::boot(
            cpl,
            |vm| {
                if let Some((gpa, b)) = bitmap {
                    vm.mem.write(gpa, &[b]).unwrap();
                }
            },
            |r| r.rdx = u64::from(port),
            |a| a.out(dx, al),
        );
        let mut sregs = g.vcpu.sregs().unwrap();
        sregs.tr.limit = tr_limit;
        g.vcpu.set_sregs(&sregs).unwrap();
        let iopl_before = g.regs().rflags >> 12 & 3;
        let exit = g.run();
        let r = g.regs();
        if cpl == Cpl::User {
            assert_eq!(iopl_before, 3, "{g}: KVM_GET_REGS shows the IOPL 3 l0 set, before the first run");
            assert_eq!(
                r.rflags >> 12 & 3,
                0,
                "{g}: on this host native CPL 3 runs with IOPL 0 whatever KVM_SET_REGS said: after the first exit \
                 RFLAGS has IOPL 0 (upstream KVM and hardware keep IOPL 3)"
            );
        }
        (g.to_string(), exit, r.rip - g.at)
    };
    for port in [0x80, 0x338] {
        let (g, exit, rip) = try_out(Cpl::User, port, None, 0x67);
        assert_eq!((exit, rip), (Exit::IoOut { port, size: 1, count: 1, data: vec![0] }, 1), "{g}: port {port:#x}");
    }
    for port in [0x340, HIGH_PORT, 0xFFFF] {
        let (g, exit, rip) = try_out(Cpl::User, port, None, 0x67);
        assert_eq!(
            (exit, rip),
            (Exit::Shutdown, 0),
            "{g}: port {port:#x}: with IOPL 0 at CPL 3, a port beyond the TSS limit is a #GP (no IDT: triple fault); \
             on upstream KVM with IOPL 3 this is an IoOut exit"
        );
    }
    let (g, exit, _) = try_out(Cpl::User, HIGH_PORT, None, 0x67 + 0x2000);
    assert!(
        matches!(exit, Exit::IoOut { port: HIGH_PORT, .. }),
        "{g}: a TSS limit covering the port's (clear) bitmap bit allows it"
    );
    let (g, exit, _) = try_out(Cpl::User, 0x80, Some((0x80 / 8, 1)), 0x67);
    assert_eq!(exit, Exit::Shutdown, "{g}: a set bitmap bit for port 0x80 denies it at CPL 3 on this host (IOPL 0)");
    let (g, exit, _) = try_out(Cpl::Kernel, 0x80, Some((0x80 / 8, 1)), 0x67);
    assert!(matches!(exit, Exit::IoOut { port: 0x80, .. }), "{g}: CPL 0 ignores the bitmap");
    let (g, exit, _) = try_out(Cpl::Kernel, HIGH_PORT, None, 0x67);
    assert!(matches!(exit, Exit::IoOut { port: HIGH_PORT, .. }), "{g}: CPL 0 reaches any port");
}

// ---------------------------------------------------------------------------------------------
// 4. HLT
// ---------------------------------------------------------------------------------------------

#[test]
fn hlt_exits_with_rip_already_past_and_nothing_pending() {
    for ioctl in [false, true] {
        let mut g = Guest::boot(Cpl::Kernel, no_setup, |_| {}, |a| a.hlt());
        assert_eq!(g.run(), Exit::Hlt, "{g}");
        let r = g.regs();
        assert_eq!(r.rip, g.next, "{g} hlt: RIP is past HLT at the exit (as upstream KVM)");
        g.run_immediate();
        assert_eq!(g.regs(), r, "{g} hlt: nothing pending");
        let alt = g.alt;
        g.edit_regs(ioctl, |r| r.rip = alt);
        g.expect_alt();
    }
    let mut g = Guest::boot(Cpl::Kernel, no_setup, |_| {}, |a| a.hlt());
    assert_eq!(g.run(), Exit::Hlt, "{g}");
    g.expect_done();
}

#[test]
fn hlt_and_rdmsr_at_cpl3_are_gp_not_exits() {
    for (name, insn) in [("hlt", (|a: &mut CodeAssembler| a.hlt()) as Insn), ("rdmsr", |a| a.rdmsr())] {
        let mut g = Guest::boot(Cpl::User, msr_setup, |r| r.rcx = 0x10, insn);
        assert_eq!(g.run(), Exit::Shutdown, "{g} {name}: #GP at CPL 3 (no IDT: triple fault), no userspace exit");
        assert_eq!(g.regs().rip, g.at, "{g} {name}");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. RDMSR / WRMSR to userspace
// ---------------------------------------------------------------------------------------------

/// (name, instruction, MSR, is a write). 0x10 is denied by the filter; 0x480 is unknown here.
fn msr_forms() -> [(&'static str, Insn, u32, bool); 4] {
    [
        ("rdmsr 0x10 (filtered)", |a| a.rdmsr(), 0x10, false),
        ("rdmsr 0x480 (unknown)", |a| a.rdmsr(), 0x480, false),
        ("wrmsr 0x10 (filtered)", |a| a.wrmsr(), 0x10, true),
        ("wrmsr 0x480 (unknown)", |a| a.wrmsr(), 0x480, true),
    ]
}

fn msr_boot(insn: Insn, msr: u32, write: bool) -> Guest {
    Guest::boot(
        Cpl::Kernel,
        msr_setup,
        |r| {
            r.rcx = u64::from(msr);
            (r.rax, r.rdx) = if write { (0x5566_7788, 0x1122_3344) } else { (MARK, MARK) };
        },
        insn,
    )
}

fn msr_exit(msr: u32, write: bool) -> Exit {
    if write { Exit::WrMsr { index: msr, data: 0x1122_3344_5566_7788 } } else { Exit::RdMsr { index: msr } }
}

#[test]
fn msr_exits_at_the_instruction_and_immediate_exit_completes_it() {
    for (name, insn, msr, write) in msr_forms() {
        let mut g = msr_boot(insn, msr, write);
        assert_eq!(g.run(), msr_exit(msr, write), "{g} {name}");
        let r0 = g.regs();
        assert_eq!(
            r0.rip, g.at,
            "{g} {name}: RIP at an MSR exit is at the instruction (upstream KVM too; DESIGN.md said 'skipped before the \
             exit': it is not)"
        );
        if write {
            g.vcpu.set_wrmsr_result(true);
        } else {
            g.vcpu.set_rdmsr_result(Ok(DATA_U64));
        }
        g.run_immediate();
        let r = g.regs();
        assert_eq!(r.rip, g.next, "{g} {name}: the immediate_exit run completes it and advances RIP");
        let want = if write { (r0.rax, r0.rdx) } else { (DATA_U64 & 0xFFFF_FFFF, DATA_U64 >> 32) };
        assert_eq!((r.rax, r.rdx), want, "{g} {name}: RDMSR data in EDX:EAX, upper halves zeroed");
        g.expect_done();
    }
}

#[test]
fn msr_error_injects_gp_at_the_instruction_on_the_next_entry() {
    for (name, insn, msr, write) in msr_forms() {
        for change_rip in [false, true] {
            let mut g = msr_boot(insn, msr, write);
            assert_eq!(g.run(), msr_exit(msr, write), "{g} {name}");
            if write {
                g.vcpu.set_wrmsr_result(false);
            } else {
                g.vcpu.set_rdmsr_result(Err(()));
            }
            let alt = g.alt;
            if change_rip {
                g.edit_regs(false, |r| r.rip = alt);
            }
            g.run_immediate();
            let want_rip = if change_rip { g.alt } else { g.at };
            assert_eq!(g.regs().rip, want_rip, "{g} {name} error=1: RIP does not advance (RIP changed: {change_rip})");
            assert_eq!(
                g.run(),
                Exit::Shutdown,
                "{g} {name} error=1: #GP is delivered on the next entry (no IDT: triple fault)"
            );
            assert_eq!(g.regs().rip, want_rip, "{g} {name} error=1: the #GP faults at RIP as it stood");
        }
    }
}

#[test]
fn msr_completion_after_changed_rip_still_forces_rip_past() {
    for (name, insn, msr, write) in msr_forms() {
        for ioctl in [false, true] {
            let mut g = msr_boot(insn, msr, write);
            assert_eq!(g.run(), msr_exit(msr, write), "{g} {name}");
            if write {
                g.vcpu.set_wrmsr_result(true);
            } else {
                g.vcpu.set_rdmsr_result(Ok(DATA_U64));
            }
            let alt = g.alt;
            g.edit_regs(ioctl, |r| {
                r.rip = alt;
                r.rbx = 0xB;
            });
            g.run_immediate();
            let r = g.regs();
            assert_eq!(r.rbx, 0xB, "{g} {name}: the set_regs applies");
            assert_eq!(
                r.rip, g.next,
                "{g} {name} (ioctl: {ioctl}): on this host a successful MSR completion sets RIP to the instruction \
                 after the original one, overriding a new RIP (upstream KVM skips from the current RIP)"
            );
            if !write {
                assert_eq!(r.rax, DATA_U64 & 0xFFFF_FFFF, "{g} {name}: RDMSR data still written after set_regs");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6-7. MMIO
// ---------------------------------------------------------------------------------------------

fn mmio_reads() -> [(&'static str, Insn, usize); 4] {
    [
        ("mov rax, [rbx]", |a| a.mov(rax, qword_ptr(rbx)), 8),
        ("mov eax, [rbx]", |a| a.mov(eax, dword_ptr(rbx)), 4),
        ("mov ax, [rbx]", |a| a.mov(ax, word_ptr(rbx)), 2),
        ("mov al, [rbx]", |a| a.mov(al, byte_ptr(rbx)), 1),
    ]
}

fn mmio_regs(r: &mut kvm_regs) {
    r.rax = MARK;
    r.rbx = NO_SLOT;
}

#[test]
fn mmio_read_exits_at_the_instruction_and_immediate_exit_writes_the_destination() {
    for cpl in CPLS {
        for (name, insn, len) in mmio_reads() {
            let mut g = Guest::boot(cpl, no_setup, mmio_regs, insn);
            assert_eq!(g.run(), Exit::MmioRead { gpa: NO_SLOT, len: len as u32 }, "{g} {name}");
            let r = g.regs();
            assert_eq!((r.rip, r.rax), (g.at, MARK), "{g} {name}: RIP at the instruction, destination untouched");
            g.vcpu.set_mmio_data(&DATA);
            g.run_immediate();
            let r = g.regs();
            assert_eq!(r.rip, g.next, "{g} {name}: the immediate_exit run completes the load and advances RIP");
            assert_eq!(r.rax, merge(MARK, data(len), len), "{g} {name}: destination written by the completion");
            g.expect_done();
        }
    }
}

#[test]
fn mmio_read_completion_after_set_regs_drops_the_data_and_forces_rip_past() {
    for cpl in CPLS {
        for change_rip in [false, true] {
            let (name, insn, _) = mmio_reads()[0];
            let mut g = Guest::boot(cpl, no_setup, mmio_regs, insn);
            assert!(matches!(g.run(), Exit::MmioRead { .. }), "{g} {name}");
            g.vcpu.set_mmio_data(&DATA);
            let alt = g.alt;
            g.edit_regs(false, |r| {
                if change_rip {
                    r.rip = alt;
                }
            });
            g.run_immediate();
            let r = g.regs();
            assert_eq!(
                (r.rip, r.rax),
                (g.next, MARK),
                "{g} {name} (RIP changed: {change_rip}): on this host any set_regs before the MMIO read completion drops \
                 the data and the completion still moves RIP to the next instruction"
            );
        }
    }
}

#[test]
fn mmio_write_is_done_at_the_exit_with_rip_already_past() {
    for cpl in CPLS {
        for change_rip in [false, true] {
            let mut g = Guest::boot(
                cpl,
                no_setup,
                |r| {
                    r.rax = 0x1122_3344_5566_7788;
                    r.rbx = NO_SLOT;
                },
                |a| a.mov(qword_ptr(rbx), rax),
            );
            assert_eq!(
                g.run(),
                Exit::MmioWrite { gpa: NO_SLOT, data: 0x1122_3344_5566_7788u64.to_le_bytes().to_vec() },
                "{g}"
            );
            let r = g.regs();
            assert_eq!(r.rip, g.next, "{g} MMIO write: RIP already past the instruction at the exit (as upstream)");
            g.run_immediate();
            assert_eq!(g.regs(), r, "{g} MMIO write: nothing pending");
            if change_rip {
                let alt = g.alt;
                g.edit_regs(false, |r| r.rip = alt);
                g.expect_alt();
            } else {
                g.expect_done();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8-9. A GPA without a memslot under an instruction fetch or a page walk
// ---------------------------------------------------------------------------------------------

#[test]
fn fetch_from_a_gpa_without_memslot_is_an_emulation_failure_at_the_target() {
    for cpl in CPLS {
        let mut g = Guest::boot(cpl, no_setup, |r| r.rbx = NO_SLOT, |a| a.jmp(rbx));
        let stats = StatsFd::open(g.vcpu.fd()).unwrap();
        let mut exit = Exit::Interrupted;
        let fails = g.stat(&stats, "insn_emulation_fail", |g| exit = g.run());
        // internal.data: [flags = 0 (no instruction bytes), info1, info2, intr_info, error_code,
        // last_vmentry_cpu]; info1 is 0x1000 at CPL 0 and 0x2000 at CPL 3 on this host.
        let info1 = if cpl == Cpl::Kernel { 0x1000 } else { 0x2000 };
        assert_eq!(
            exit,
            Exit::InternalError { suberror: 1, data: vec![0, info1, 0, 0, 0, 0] },
            "{g}: a fetch from a GPA with no memslot is KVM_EXIT_INTERNAL_ERROR / emulation failure, not MMIO"
        );
        assert_eq!(fails, 1, "{g}: stat insn_emulation_fail counts it");
        assert_eq!(g.regs().rip, NO_SLOT, "{g}: RIP is the fetch target: the jump completed");
        assert_eq!(g.run(), exit, "{g}: running again fails the same way");
        let alt = g.alt;
        g.edit_regs(false, |r| r.rip = alt);
        g.expect_alt();
    }
}

#[test]
fn page_walk_through_a_gpa_without_memslot_is_a_fault_not_an_exit() {
    // PD entry 3 (linear 0x60_0000-0x80_0000) points to a page table at GPA 0x50_0000: no memslot.
    const LINEAR: u64 = 0x60_0000;
    const PT_GPA: u64 = 0x50_0000;
    for cpl in CPLS {
        let mut g = Guest::boot(
            cpl,
            |vm| vm.mem.write_u64(nestbench_abi::layout::BOOT_PD + 3 * 8, PT_GPA | 0b111).unwrap(),
            |r| {
                r.rax = MARK;
                r.rbx = LINEAR;
            },
            |a| a.mov(rax, qword_ptr(rbx)),
        );
        assert_eq!(
            g.run(),
            Exit::Shutdown,
            "{g}: a walk through a PTE at a GPA without memslot faults in the guest (#PF; no IDT: triple fault), no \
             MMIO exit"
        );
        let r = g.regs();
        assert_eq!((r.rip, r.rax), (g.at, MARK), "{g}: RIP at the faulting load");
        assert_eq!(g.vcpu.sregs().unwrap().cr2, LINEAR, "{g}: CR2 holds the linear address: it was a #PF");
        let alt = g.alt;
        g.edit_regs(false, |r| r.rip = alt);
        g.expect_alt();
    }
}

// ---------------------------------------------------------------------------------------------
// The soft engine's way out: flush KVM's completion, then restore the exit-time registers.
// ---------------------------------------------------------------------------------------------

#[test]
fn flush_with_immediate_exit_then_set_regs_restores_the_exit_state() {
    let in_al: Insn = |a| a.in_(al, dx);
    let load: Insn = |a| a.mov(rax, qword_ptr(rbx));
    let cases: [(&str, Cpl, Setup, Insn); 6] = [
        ("in al, dx", Cpl::Kernel, no_setup, in_al),
        ("in al, dx", Cpl::User, no_setup, in_al),
        ("MMIO load", Cpl::Kernel, no_setup, load),
        ("MMIO load", Cpl::User, no_setup, load),
        ("rdmsr 0x10", Cpl::Kernel, msr_setup, |a| a.rdmsr()),
        ("rep insb", Cpl::Kernel, no_setup, |a| a.rep().insb()),
    ];
    for (name, cpl, setup, insn) in cases {
        for ioctl in [false, true] {
            let mut g = Guest::boot(
                cpl,
                setup,
                |r| {
                    string_regs(r);
                    mmio_regs(r);
                    r.rcx = if name.starts_with("rdmsr") { 0x10 } else { 4 };
                },
                insn,
            );
            let first = g.run();
            let saved = g.vcpu.regs().unwrap();
            assert_eq!(saved.rip, g.at, "{g} {name}: exit at the instruction");
            // Flush: answer with zeroes (error = 0 for RDMSR: an error would queue a #GP).
            match first {
                Exit::IoIn { .. } => g.vcpu.set_in_data(&[]),
                Exit::MmioRead { .. } => g.vcpu.set_mmio_data(&[]),
                Exit::RdMsr { .. } => g.vcpu.set_rdmsr_result(Ok(0)),
                _ => {}
            }
            g.run_immediate();
            g.edit_regs(ioctl, |r| *r = saved);
            assert_eq!(
                g.run(),
                first,
                "{g} {name} (ioctl: {ioctl}): after the flush, set_regs sticks: the instruction runs again and exits the same way"
            );
            assert_eq!(g.regs(), saved, "{g} {name}: the same registers at the repeated exit");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Row K: a kick (the soft engine's VMX-preemption timer) out of a guest that never exits.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_kick_returns_eintr_at_an_instruction_boundary_with_nothing_pending() {
    for cpl in CPLS {
        // `l: add rbx, 1; jmp l`: the guest never exits on its own.
        let mut g = Guest::boot(
            cpl,
            no_setup,
            |r| r.rbx = 0,
            |a| {
                let mut l = a.create_label();
                a.set_label(&mut l)?;
                a.add(rbx, 1)?;
                a.jmp(l)
            },
        );
        let kicker = l0::vcpu::Kicker::current_thread().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            kicker.kick();
        });
        let exit = g.vcpu.run().expect("KVM_RUN");
        t.join().unwrap();
        assert_eq!(exit, Exit::Interrupted, "{g}: a kick is EINTR");
        assert!(!g.watchdog.fired(), "{g}: the kick, not the watchdog");
        let r = g.regs();
        let jmp = g.at + 4; // `add rbx, 1` is 48 83 C3 01.
        assert!(r.rip == g.at || r.rip == jmp, "{g}: RIP {:#x} at an instruction boundary of the loop", r.rip);
        assert!(r.rbx > 0, "{g}: the guest ran");
        assert_eq!(g.vcpu.regs().unwrap().rip, r.rip, "{g}: sync regs are stored at EINTR too");
        g.run_immediate();
        assert_eq!(g.regs(), r, "{g}: nothing pending after a kick");
        let alt = g.alt;
        g.edit_regs(false, |r| r.rip = alt);
        g.expect_alt();
    }
}

// ---------------------------------------------------------------------------------------------
// Row W: interrupt window and KVM_INTERRUPT on a VM without an in-kernel irqchip.
// ---------------------------------------------------------------------------------------------

fn irq_loop(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut l = a.create_label();
    a.set_label(&mut l)?;
    a.add(rbx, 1)?;
    a.jmp(l)
}

#[test]
fn interrupt_window_is_exact_at_cpl3_late_at_cpl0_and_kvm_interrupt_is_delivered() {
    for cpl in CPLS {
        let mut g = Guest::boot(cpl, no_setup, |r| r.rflags |= 0x200, irq_loop);
        g.vcpu.set_request_interrupt_window(true);
        let e = g.run();
        let r = g.regs();
        assert_eq!(e, Exit::Other(7), "{g}: KVM_EXIT_IRQ_WINDOW_OPEN");
        assert_eq!(g.vcpu.interrupt_readiness(), (true, true), "{g}: ready_for_interrupt_injection, if_flag");
        if cpl == Cpl::User {
            assert_eq!(r.rip, g.at, "{g}: RIP at the first instruction");
            assert_eq!(r.rbx, 0, "{g}: IF = 1 at entry: the window exit comes before any instruction");
        } else {
            assert!(r.rip == g.at || r.rip == g.at + 4, "{g}: RIP {:#x} at a boundary of the loop", r.rip);
            // kvm_pvm emulates CPL 0 in batches: the window exit usually comes after some of
            // the loop ran (upstream KVM and hardware exit before the first instruction), but
            // in about 1 run in 5 here it comes before the first instruction: either is
            // possible, only the instruction boundary is reliable. The soft engine does not
            // depend on it: it reflects an open window without running L2 at all.
            println!("{g}: interrupt-window exit after {} loop iterations", r.rbx);
        }
        g.vcpu.set_request_interrupt_window(false);
        g.vcpu.interrupt(0x20).unwrap();
        // No IDT in this guest: the delivered interrupt is a triple fault.
        assert_eq!(g.run(), Exit::Shutdown, "{g}: KVM_INTERRUPT is delivered at the next entry");
    }
    // IF = 0 at CPL 0, then `sti; add rcx, 1; add rcx, 1`: hardware opens the window after
    // the instruction in the STI shadow (RCX = 1); this host reports it one instruction later.
    let mut g = Guest::boot(
        Cpl::Kernel,
        no_setup,
        |r| r.rflags &= !0x200,
        |a| {
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            a.add(rbx, 1)?;
            a.cmp(rbx, 1000)?;
            a.jb(l)?;
            a.sti()?;
            a.add(rcx, 1)?;
            a.add(rcx, 1)?;
            let mut m = a.create_label();
            a.set_label(&mut m)?;
            a.jmp(m)
        },
    );
    g.vcpu.set_request_interrupt_window(true);
    assert_eq!(g.run(), Exit::Other(7), "{g}");
    let r = g.regs();
    assert_eq!((r.rbx, r.rcx), (1000, 2), "{g}: the window exit comes one instruction after hardware's");
}
