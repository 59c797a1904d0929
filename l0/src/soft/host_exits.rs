//! What this host's KVM leaves behind at each userspace exit the soft engine handles,
//! measured rather than assumed (docs/kvm-exits.md). KVM implementations differ: upstream
//! leaves RIP *at* an OUT until the next KVM_RUN completes it (`kvm_fast_pio_out()` /
//! `complete_fast_pio_out()`), kvm_pvm exits with RIP already *past* it; a page walk through
//! a table without memslot is an MMIO read of the table on upstream and a #PF in the guest on
//! kvm_pvm; a kick does not return a spinning guest's KVM_RUN on Bochs-hosted KVM. The soft
//! engine normalises by what it measured here and refuses an exit whose row it cannot
//! normalise ([`HostExits::gaps`]).
//!
//! The probe boots one instruction per row in a VM of its own at CPL 0 (L2 payloads run at
//! CPL 0; the CPL 3 rows are pinned on kvm_pvm by `l0/tests/kvm_exits.rs`), each under a
//! watchdog, once per process: 14 small VMs, about 30 ms on kvm_pvm.

pub use nestbench_protocol::host::{HostExits, Kick, NoSlot, REP_COUNT, RepString, Rip};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use iced_x86::code_asm::{CodeAssembler, IcedError, al, dword_ptr, eax, ebx, rbx};
use kvm_bindings::kvm_regs;

use crate::vcpu::{Exit, Vcpu};
use crate::vm::Vm;
use crate::watchdog::Watchdog;
use crate::x86_setup::Cpl;

const MEM: u64 = 2 << 20;
/// Where the instruction under test sits.
const CODE: u64 = 0x10_0000;
const STACK: u64 = 0x8_0000;
/// The source of OUTS and destination of INS.
const BUF: u64 = 0x9_0000;
/// Identity-mapped by the boot page tables (2 MiB pages) but above guest memory: no memslot.
const NO_SLOT: u64 = 0x40_0000;
/// A linear address whose page table (PD entry 3) the walk probe puts at a GPA without memslot.
const WALK_LINEAR: u64 = 0x60_0000;
const WALK_PT: u64 = 0x50_0000;
const PORT: u16 = 0xE0;
/// The port of the `out` after the instruction under test (CPL 3 may use both with l0's
/// boot TSS: docs/kvm-exits.md row 3d).
const DONE_PORT: u16 = 0xF4;
/// IA32_TIME_STAMP_COUNTER, filtered to userspace for the MSR probes.
const MSR: u32 = 0x10;
/// How long a probe's guest may take to exit.
const BUDGET: Duration = Duration::from_secs(2);
/// When the kick probe's watchdog kicks.
const KICK_AFTER: Duration = Duration::from_millis(5);
/// How long the kick probe's guest spins unless kicked, in its TSC cycles.
const KICK_LOOP_TSC: i32 = 1 << 27;

/// This host's semantics, measured once per process with the KVM device at `kvm_path`.
pub fn probe(kvm_path: &Path) -> Result<HostExits, String> {
    static PROBED: OnceLock<Result<HostExits, String>> = OnceLock::new();
    PROBED.get_or_init(|| measure(kvm_path).map_err(|e| format!("probing KVM's exit semantics: {e}"))).clone()
}

/// One probe guest: the instruction under test at [`CODE`], then `out DONE_PORT, al; hlt`.
struct Probe {
    vcpu: Vcpu,
    watchdog: Watchdog,
    /// The address after the instruction under test.
    next: u64,
    /// Kept alive for the vCPU.
    _vm: Vm,
}

type Asm = fn(&mut CodeAssembler) -> Result<(), IcedError>;

impl Probe {
    fn boot(
        kvm_path: &Path,
        what: &str,
        cpl: Cpl,
        setup: impl FnOnce(&Vm) -> Result<(), String>,
        init: impl FnOnce(&mut kvm_regs),
        insn: Asm,
        budget: Duration,
    ) -> Result<Self, String> {
        let e = |x: &dyn std::fmt::Display| format!("{what}: {x}");
        let vm = Vm::new(kvm_path, MEM).map_err(|x| e(&x))?;
        setup(&vm).map_err(|x| e(&x))?;
        let mut a = CodeAssembler::new(64).map_err(|x| e(&x))?;
        let mut next = a.create_label();
        insn(&mut a).map_err(|x| e(&x))?;
        a.set_label(&mut next).map_err(|x| e(&x))?;
        a.out(u32::from(DONE_PORT), al).map_err(|x| e(&x))?;
        a.hlt().map_err(|x| e(&x))?;
        let code = a
            .assemble_options(CODE, iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
            .map_err(|x| e(&x))?;
        let next = code.label_ip(&next).map_err(|x| e(&x))?;
        vm.mem.write(CODE, &code.inner.code_buffer).map_err(|x| e(&x))?;
        let mut vcpu = vm.create_vcpu(cpl, CODE, STACK, 0).map_err(|x| e(&x))?;
        let mut regs = vcpu.regs_now().map_err(|x| e(&x))?;
        init(&mut regs);
        vcpu.set_regs_now(&regs).map_err(|x| e(&x))?;
        let watchdog = Watchdog::arm(vcpu.bind_to_current_thread().map_err(|x| e(&x))?, budget);
        Ok(Self { vcpu, watchdog, next, _vm: vm })
    }

    /// KVM_RUN to the first exit; `Interrupted` only when the watchdog fired.
    fn run(&mut self) -> Result<Exit, String> {
        loop {
            let exit = self.vcpu.run().map_err(|e| e.to_string())?;
            if exit != Exit::Interrupted || self.watchdog.fired() {
                return Ok(exit);
            }
        }
    }

    fn regs(&self) -> Result<kvm_regs, String> {
        self.vcpu.regs_now().map_err(|e| e.to_string())
    }

    /// Where RIP is: at [`CODE`] or at the next instruction.
    fn rip(&self, what: &str, exit: &Exit) -> Result<Rip, String> {
        match self.regs()?.rip {
            CODE => Ok(Rip::At),
            r if r == self.next => Ok(Rip::Past),
            r => Err(format!("{what}: after {exit:?} RIP is {r:#x}, neither at {CODE:#x} nor past ({:#x})", self.next)),
        }
    }

    /// Run `what` to its exit, which `expect` must accept, and say where RIP is.
    fn exit_rip(&mut self, what: &str, expect: impl Fn(&Exit) -> bool) -> Result<(Exit, Rip), String> {
        let exit = self.run()?;
        if !expect(&exit) {
            return Err(format!("{what}: unexpected exit {exit:?}"));
        }
        let rip = self.rip(what, &exit)?;
        Ok((exit, rip))
    }
}

fn string_regs(r: &mut kvm_regs) {
    r.rsi = BUF;
    r.rdi = BUF;
    r.rdx = u64::from(PORT);
    r.rcx = REP_COUNT;
}

fn no_setup(_: &Vm) -> Result<(), String> {
    Ok(())
}

fn msr_setup(vm: &Vm) -> Result<(), String> {
    crate::msr_filter::exit_to_userspace(&vm.fd, &[MSR]).map_err(|e| e.to_string())
}

fn measure(kvm: &Path) -> Result<HostExits, String> {
    let simple = |what: &str, setup: fn(&Vm) -> Result<(), String>, init: fn(&mut kvm_regs), insn: Asm| {
        let mut p = Probe::boot(kvm, what, Cpl::Kernel, setup, init, insn, BUDGET)?;
        p.exit_rip(what, |_| true).map(|(exit, rip)| (p, exit, rip))
    };
    let io = |what: &str, is_out: bool, insn: Asm| -> Result<(Rip, Exit, kvm_regs), String> {
        let (p, exit, rip) = simple(what, no_setup, string_regs, insn)?;
        let ok = match exit {
            Exit::IoOut { port, .. } => is_out && port == PORT,
            Exit::IoIn { port, .. } => !is_out && port == PORT,
            _ => false,
        };
        if !ok {
            return Err(format!("`{what}` gave {exit:?}, not its I/O exit"));
        }
        Ok((rip, exit, p.regs()?))
    };
    let rep = |what: &str, is_out: bool, insn: Asm| -> Result<RepString, String> {
        let (rip, exit, regs) = io(what, is_out, insn)?;
        let (Exit::IoOut { count, .. } | Exit::IoIn { count, .. }) = exit else { unreachable!("checked by io") };
        Ok(RepString { per_exit: count, rip, rcx: regs.rcx })
    };
    let out = io("out 0xE0, al", true, |a| a.out(u32::from(PORT), al))?.0;
    let outs = io("outsd", true, |a| a.outsd())?.0;
    let rep_outs = rep("rep outsb", true, |a| a.rep().outsb())?;
    let r#in = io("in al, 0xE0", false, |a| a.in_(al, u32::from(PORT)))?.0;
    let rep_ins = rep("rep insb", false, |a| a.rep().insb())?;
    let hlt = simple("hlt", no_setup, |_| {}, |a| a.hlt())?;
    let hlt = if hlt.1 == Exit::Hlt { hlt.2 } else { return Err(format!("`hlt` gave {:?}", hlt.1)) };
    let msr = |what: &str, insn: Asm, write: bool| -> Result<Rip, String> {
        let (_, exit, rip) = simple(what, msr_setup, |r| r.rcx = u64::from(MSR), insn)?;
        match exit {
            Exit::RdMsr { index: MSR } if !write => Ok(rip),
            Exit::WrMsr { index: MSR, .. } if write => Ok(rip),
            other => Err(format!("`{what}` of the filtered MSR {MSR:#x} gave {other:?}")),
        }
    };
    let rdmsr = msr("rdmsr", |a| a.rdmsr(), false)?;
    let wrmsr = msr("wrmsr", |a| a.wrmsr(), true)?;
    let mmio = |what: &str, insn: Asm, write: bool| -> Result<Rip, String> {
        let (_, exit, rip) = simple(what, no_setup, |r| r.rbx = NO_SLOT, insn)?;
        match exit {
            Exit::MmioRead { gpa: NO_SLOT, .. } if !write => Ok(rip),
            Exit::MmioWrite { gpa: NO_SLOT, .. } if write => Ok(rip),
            other => Err(format!("`{what}` at GPA {NO_SLOT:#x} (no memslot) gave {other:?}")),
        }
    };
    let mmio_read = mmio("mov eax, [no slot]", |a| a.mov(eax, dword_ptr(rbx)), false)?;
    let mmio_write = mmio("mov [no slot], eax", |a| a.mov(dword_ptr(rbx), eax), true)?;
    Ok(HostExits {
        out,
        outs,
        rep_outs,
        r#in,
        rep_ins,
        hlt,
        rdmsr,
        wrmsr,
        mmio_read,
        mmio_write,
        fetch_no_slot: fetch_no_slot(kvm, Cpl::Kernel)?,
        fetch_no_slot_cpl3: fetch_no_slot(kvm, Cpl::User)?,
        exit_on_emulation_failure: Vm::new(kvm, MEM)
            .and_then(|vm| vm.exit_on_emulation_failure())
            .map_err(|e| format!("KVM_CAP_EXIT_ON_EMULATION_FAILURE: {e}"))?,
        walk_no_slot: walk_no_slot(kvm)?,
        kick: kick(kvm)?,
        single_step: single_step(kvm)?,
    })
}

/// Row S: `nop` single-stepped (KVM_GUESTDBG_SINGLESTEP): a KVM_EXIT_DEBUG with RIP past it
/// before any other exit, or the host does not step and the guest runs on to its `out`.
/// Bochs-hosted KVM gives a few KVM_EXIT_DEBUGs with RIP still at the `nop` first (measured:
/// 4); the engine takes those as L0-only exits, so up to `STEP_TRIES` are allowed here.
fn single_step(kvm: &Path) -> Result<bool, String> {
    const STEP_TRIES: usize = 16;
    let mut p = Probe::boot(kvm, "single-stepped nop", Cpl::Kernel, no_setup, |_| {}, |a| a.nop(), BUDGET)?;
    p.vcpu.set_single_step(true).map_err(|e| e.to_string())?;
    for _ in 0..STEP_TRIES {
        match (p.run()?, p.regs()?.rip) {
            (Exit::Debug, rip) if rip == p.next => return Ok(true),
            (Exit::Debug, CODE) => {}
            _ => return Ok(false),
        }
    }
    Ok(false)
}

/// Row 8: `jmp rbx` to a GPA without memslot at `cpl`, in a VM set up as the soft engine
/// sets up VM2 ([`crate::vm::exit_on_emulation_failure`]).
fn fetch_no_slot(kvm: &Path, cpl: Cpl) -> Result<NoSlot, String> {
    let setup = |vm: &Vm| vm.exit_on_emulation_failure().map(|_| ()).map_err(|e| e.to_string());
    let mut p = Probe::boot(kvm, "jmp [no slot]", cpl, setup, |r| r.rbx = NO_SLOT, |a| a.jmp(rbx), BUDGET)?;
    let exit = p.run()?;
    let Exit::InternalError { suberror: 1, .. } = exit else {
        return Ok(NoSlot::Other { seen: format!("{exit:?} with RIP {:#x}", p.regs()?.rip) });
    };
    let rip_is_target = p.regs()?.rip == NO_SLOT;
    let queued_exception = p.vcpu.queued_exception().map_err(|e| e.to_string())?;
    // What the soft engine does next: drop the queued exception, go on elsewhere.
    p.vcpu.clear_queued_exception().map_err(|e| e.to_string())?;
    let mut r = p.regs()?;
    r.rip = p.next;
    p.vcpu.set_regs_now(&r).map_err(|e| e.to_string())?;
    match p.run()? {
        Exit::IoOut { port: DONE_PORT, .. } => Ok(NoSlot::EmulationFailure { rip_is_target, queued_exception }),
        other => Ok(NoSlot::Other {
            seen: format!(
                "emulation failure with vector {queued_exception:?} queued; after dropping it and moving RIP on, {other:?}"
            ),
        }),
    }
}

/// Row 9: a load at [`WALK_LINEAR`], whose page table is at a GPA without memslot.
fn walk_no_slot(kvm: &Path) -> Result<NoSlot, String> {
    let setup =
        |vm: &Vm| vm.mem.write_u64(nestbench_abi::layout::BOOT_PD + 3 * 8, WALK_PT | 0b111).map_err(|e| e.to_string());
    let mut p = Probe::boot(
        kvm,
        "walk [no slot]",
        Cpl::Kernel,
        setup,
        |r| r.rbx = WALK_LINEAR,
        |a| a.mov(eax, dword_ptr(rbx)),
        BUDGET,
    )?;
    let exit = p.run()?;
    let cr2 = p.vcpu.sregs_now().map_err(|e| e.to_string())?.cr2;
    let rip = p.regs()?.rip;
    Ok(if exit == Exit::Shutdown && cr2 == WALK_LINEAR && rip == CODE {
        NoSlot::GuestPageFault
    } else if matches!(exit, Exit::MmioRead { gpa, len: 4 } if gpa & !0xFFF == WALK_PT) && rip == CODE {
        NoSlot::MmioReadOfTable
    } else {
        NoSlot::Other { seen: format!("{exit:?} with RIP {rip:#x}, CR2 {cr2:#x}") }
    })
}

/// Row K: a loop of [`KICK_LOOP_TSC`] TSC cycles, then `hlt`, kicked by a watchdog after
/// [`KICK_AFTER`]. Bounded, so that a host that does not deliver the kick (Bochs-hosted KVM)
/// is not wedged by the probe: about 50 ms of guest time on hardware and on kvm_pvm, where
/// the kick lands after 5 ms.
fn kick(kvm: &Path) -> Result<Kick, String> {
    let spin: Asm = |a| {
        let mut l = a.create_label();
        a.rdtsc()?;
        a.mov(ebx, eax)?;
        a.set_label(&mut l)?;
        a.rdtsc()?;
        a.sub(eax, ebx)?;
        a.cmp(eax, KICK_LOOP_TSC)?;
        a.jb(l)
    };
    let mut p = Probe::boot(kvm, "kick", Cpl::Kernel, no_setup, |_| {}, spin, KICK_AFTER)?;
    let exit = p.vcpu.run().map_err(|e| e.to_string())?;
    let rip = p.regs()?.rip;
    // The loop starts after `rdtsc; mov ebx, eax` (0F 31, 89 C3).
    Ok(match exit {
        Exit::Interrupted if (CODE + 4..p.next).contains(&rip) => Kick::Eintr,
        Exit::IoOut { port: DONE_PORT, .. } => Kick::NotKicked,
        other => Kick::Other { seen: format!("{other:?} with RIP {rip:#x}") },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_is_probed_row_by_row_and_kvm_pvm_is_what_docs_say() {
        if !Path::new("/dev/kvm").exists() {
            println!("SKIP: no /dev/kvm");
            return;
        }
        let h = probe(Path::new("/dev/kvm")).unwrap();
        let pvm =
            std::fs::read_to_string("/proc/modules").unwrap_or_default().lines().any(|l| l.starts_with("kvm_pvm "));
        if pvm {
            assert_eq!(h, HostExits::kvm_pvm(), "kvm_pvm's row of docs/kvm-exits.md");
        } else {
            println!("note: not kvm_pvm; this host's exits: {h:?}");
        }
        assert_eq!(h.gaps(), Vec::<String>::new(), "the soft engine normalises every row here");
    }

    #[test]
    fn a_row_the_engine_cannot_normalise_is_named() {
        let mut h = HostExits::upstream();
        assert!(h.gaps().is_empty());
        h.rep_outs.per_exit = 4;
        h.hlt = Rip::At;
        let g = h.gaps();
        assert_eq!(g.len(), 2, "{g:?}");
        assert!(g[0].starts_with("REP OUTS: this KVM exits with RepString { per_exit: 4"), "{g:?}");
        assert!(g[1].contains("HLT: this KVM exits with RIP at it; the soft engine needs RIP past it"), "{g:?}");
    }
}
