//! VM-exit dispatch: one handler per exit reason (barevisor / illusion-rs style), the guest
//! RIP advanced in one place ([`advance_rip`]), and the run's bookkeeping ([`RunState`]).
//!
//! The exit stub ([`crate::vmx::entry`]) calls [`l1_vmexit`], which picks the backend once
//! and runs the monomorphised [`dispatch`]: no dynamic dispatch on the exit path, and every
//! VMREAD/VMWRITE of a shadowed field is a few inlined instructions on the soft engine.

pub mod cpuid;
pub mod ept_misconfig;
pub mod ept_violation;
pub mod hlt;
pub mod interrupt_window;
pub mod io;
pub mod preemption_timer;
pub mod rdmsr;
pub mod remap;
pub mod triple_fault;
pub mod unexpected;
pub mod vmcall;
pub mod wrmsr;

use core::sync::atomic::Ordering;

use nestbench_abi::payload::{
    ExitRecord, HIST_BUCKETS, L2_IMAGE_BASE, MAX_EXIT_RECORDS, PayloadReport, PayloadResults,
};
use nestbench_abi::vmcs::{Field32, FieldNatural};
use nestbench_abi::vmx::ExitReason;

use crate::global::Global;
use crate::vmx::entry::{GuestRegs, USE_SOFT};
use crate::vmx::hw::HwVmx;
use crate::vmx::soft::SoftVmx;
use crate::vmx::{Vmcs, VmxBackend, VmxFail};

/// The hardware backend's state (the access counter).
pub static HW: Global<HwVmx> = Global::new(HwVmx::new());
/// The soft backend's state (current VMCS, access counter).
pub static SOFT: Global<SoftVmx> = Global::new(SoftVmx::new());
/// What the exit handlers need about the current run.
pub static RUN: Global<RunState> = Global::new(RunState::new());

/// Exit status: the payload ran and reported failure (status or checks).
pub const EXIT_PAYLOAD_FAILED: u64 = 1;
/// Exit status: no VMX on this vCPU (neither the soft engine nor CPUID.1:ECX.VMX).
pub const EXIT_NO_VMX: u64 = 0xB1;
/// Exit status: VMX could not be set up (capabilities, VMXON, VMCS, L2 memory).
pub const EXIT_VMX_SETUP_FAILED: u64 = 0xB2;
/// Exit status: L2 triple-faulted.
pub const EXIT_L2_TRIPLE_FAULT: u64 = 0xB3;
/// Exit status: an exit L1 does not handle (the VMCS was dumped on the console).
pub const EXIT_UNEXPECTED_EXIT: u64 = 0xB4;
/// Exit status: VMLAUNCH/VMRESUME failed.
pub const EXIT_ENTRY_FAILED: u64 = 0xB5;
/// Exit status: an EPT misconfiguration that L1 did not cause on purpose.
pub const EXIT_EPT_MISCONFIG: u64 = 0xB6;

/// What an exit is handled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Nothing runs yet.
    Idle,
    /// A payload: exits are handled per reason until it writes DONE_PORT.
    Payload,
    /// A must-fail scenario: the first exit decides the verdict.
    Scenario,
}

/// The run's bookkeeping, read and written by the exit handlers.
#[derive(Debug)]
pub struct RunState {
    /// What exits are for.
    pub mode: Mode,
    /// The report being filled.
    pub report: PayloadReport,
    /// VMREAD/VMWRITE count at the first entry (the report counts those of exit handling).
    pub accesses_at_launch: u32,
    /// L1-physical address of L2's results page.
    pub results_pa: u64,
    /// EPT12 pointer and L2's CR3, to reach L2 memory (INS).
    pub eptp: u64,
    /// L2's CR3.
    pub cr3: u64,
    /// The io_encodings check, when that payload runs.
    pub io_check: Option<io::IoCheck>,
    /// The MSRs L1 intercepts and emulates (RDMSR/WRMSR exits).
    pub msrs: rdmsr::EmulatedMsrs,
    /// The EPT payloads' pool and L1's frame allocator, when one of them runs.
    pub ept: Option<ept_violation::EptPool>,
    /// `ept_misconfig`: the L2 page whose EPT12 leaf L1 gave a reserved memory type, until
    /// its EPT-misconfiguration exit repairs it.
    pub misconfig: Option<u64>,
    /// `mmio`: the device register L1 emulates.
    pub mmio: Option<ept_violation::MmioDevice>,
    /// `ept_remap`, `pte_remap`: what L1 changes on each `out PAYLOAD_PORT`.
    pub remap: Option<remap::Remap>,
    /// The exit-trace ring's producer.
    pub trace: crate::trace::Producer,
}

impl RunState {
    /// Nothing recorded.
    #[must_use]
    pub const fn new() -> Self {
        const REC: ExitRecord = ExitRecord {
            reason: 0,
            insn_len: 0,
            qualification: 0,
            rip_offset: 0,
            insn_info: 0,
            reserved: 0,
            guest_linear: 0,
        };
        Self {
            mode: Mode::Idle,
            report: PayloadReport {
                status: 0,
                exits_by_reason: [0; 80],
                records: 0,
                vmx_accesses: 0,
                results: PayloadResults {
                    magic: 0,
                    iterations: 0,
                    total_cycles: 0,
                    min_cycles: 0,
                    max_cycles: 0,
                    failures: 0,
                    hist: [0; HIST_BUCKETS],
                },
                exit_records: [REC; MAX_EXIT_RECORDS],
            },
            accesses_at_launch: 0,
            results_pa: 0,
            eptp: 0,
            cr3: 0,
            io_check: None,
            msrs: rdmsr::EmulatedMsrs::new(),
            ept: None,
            misconfig: None,
            mmio: None,
            remap: None,
            trace: crate::trace::Producer::off(),
        }
    }

    /// Count an exit by basic reason and keep its record while there is room.
    #[inline(always)]
    pub fn record(&mut self, reason: u32, insn_len: u32, qualification: u64, rip: u64, insn_info: u32, linear: u64) {
        let r = &mut self.report;
        if let Some(c) = r.exits_by_reason.get_mut((reason & 0xFFFF) as usize) {
            *c += 1;
        }
        let n = r.records as usize;
        if n < MAX_EXIT_RECORDS {
            r.exit_records[n] = ExitRecord {
                reason,
                insn_len,
                qualification,
                rip_offset: rip.wrapping_sub(L2_IMAGE_BASE),
                insn_info,
                reserved: 0,
                guest_linear: linear,
            };
            r.records += 1;
        }
        self.trace.publish(crate::trace::RING.get(), reason, insn_len, qualification, rip);
    }
}

impl Default for RunState {
    fn default() -> Self {
        Self::new()
    }
}

/// A VMX instruction on the exit path failed: nothing sensible is left to do.
#[cold]
#[inline(never)]
pub fn fatal(what: &str, e: VmxFail) -> ! {
    crate::println!("l1: {what}: {e}");
    crate::hypercall::exit(EXIT_ENTRY_FAILED)
}

/// Unwrap a VMX result on the exit path.
#[inline(always)]
pub fn must<T>(r: Result<T, VmxFail>, what: &'static str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => fatal(what, e),
    }
}

/// The one place guest RIP moves: past the exiting instruction (SDM 28.2.4: the VM-exit
/// instruction length is the instruction's length in bytes).
#[inline(always)]
pub fn advance_rip<B: VmxBackend>(b: &mut B, rip: u64, insn_len: u32) {
    must(b.write_nat(FieldNatural::GuestRip, rip + u64::from(insn_len)), "VMWRITE guest RIP");
}

/// The Rust side of the exit stub: L2's GPRs are in `regs` (written back on return).
///
/// # Safety (for the stub)
/// Called only by the exit stub, on the exit stack, with a pointer to the saved registers.
pub extern "C" fn l1_vmexit(regs: &mut GuestRegs) {
    if USE_SOFT.load(Ordering::Relaxed) != 0 { dispatch(SOFT.get(), regs) } else { dispatch(HW.get(), regs) }
}

/// VMRESUME (or the resume doorbell) failed: report and stop.
pub extern "C" fn l1_resume_failed(rflags: u64) -> ! {
    let f = if USE_SOFT.load(Ordering::Relaxed) != 0 {
        resume_error(SOFT.get(), rflags)
    } else {
        resume_error(HW.get(), rflags)
    };
    crate::println!("l1: VMRESUME failed: {f:?} (RFLAGS {rflags:#x})");
    crate::hypercall::exit(EXIT_ENTRY_FAILED)
}

fn resume_error<B: VmxBackend>(b: &mut B, rflags: u64) -> Option<VmxFail> {
    crate::vmx::entry::entry_failure(rflags, || b.read32(Field32::VmInstructionError).unwrap_or(0))
}

/// Handle one exit (SDM 28.2: the basic exit reason selects the handler).
///
/// The exits the `soft` engine reflects every iteration (I/O, HLT) are tested first, with
/// one compare each; the other reasons only after them. One `match` over every reason would
/// become a jump table, which adds instructions to the HLT path, and each instruction on the
/// exit path costs ~0.5 us on the development hosts, where L1 is emulated.
#[inline(always)]
pub fn dispatch<B: VmxBackend>(b: &mut B, regs: &mut GuestRegs) {
    let run = RUN.get();
    run.trace.begin();
    let reason = must(b.read32(Field32::VmExitReason), "VMREAD exit reason");
    if run.mode != Mode::Payload {
        crate::scenarios::on_exit(b, regs, reason);
    }
    match reason {
        r if r == ExitReason::IoInstruction as u32 => io::handle(b, regs, run, reason),
        r if r == ExitReason::Hlt as u32 => hlt::handle(b, run, reason),
        _ => {
            // An empty asm statement: no instruction, but the compiler cannot merge the
            // compares below with the two above into one switch (a jump table).
            // SAFETY: it contains no instruction.
            unsafe { core::arch::asm!("", options(nomem, nostack, preserves_flags)) };
            match reason {
                r if r == ExitReason::Cpuid as u32 => cpuid::handle(b, regs, run, reason),
                r if r == ExitReason::Vmcall as u32 => vmcall::handle(b, regs, run, reason),
                r if r == ExitReason::TripleFault as u32 => triple_fault::handle(b, run, reason),
                r if r == ExitReason::Rdmsr as u32 => rdmsr::handle(b, regs, run, reason),
                r if r == ExitReason::Wrmsr as u32 => wrmsr::handle(b, regs, run, reason),
                r if r == ExitReason::EptViolation as u32 => ept_violation::handle(b, regs, run, reason),
                r if r == ExitReason::EptMisconfiguration as u32 => ept_misconfig::handle(b, run, reason),
                r if r == ExitReason::PreemptionTimer as u32 => preemption_timer::handle(b, run, reason),
                r if r == ExitReason::InterruptWindow as u32 => interrupt_window::handle(b, run, reason),
                _ => unexpected::handle(b, reason),
            }
        }
    }
}
