//! The run loop and one handler per exit kind (barevisor / illusion-rs style): [`run_loop`]
//! enters L2 through the vendor layer ([`Vcpu::run`]), gets the vendor-neutral [`Exit`] back,
//! and hands it with `&mut` to the run's state ([`RunState`]) to its handler; the guest RIP is
//! advanced in one place ([`advance_rip`]).
//!
//! Everything is monomorphised for the one vendor and backend in use and inlined into the
//! loop: no dynamic dispatch on the exit path, and every VMREAD/VMWRITE of a shadowed field
//! is a few inlined instructions on the soft engine.

pub mod cpuid;
pub mod cr_access;
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

use nestbench_abi::payload::{
    ExitRecord, HIST_BUCKETS, L2_IMAGE_BASE, MAX_EXIT_RECORDS, PayloadReport, PayloadResults,
};

use crate::exit::Exit;
use crate::vcpu::Vcpu;
use crate::vmx::VmxFail;

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

/// The run's bookkeeping, read and written by the exit handlers.
#[derive(Debug)]
pub struct RunState {
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
    /// `inject`: inject an event on each `out PAYLOAD_PORT` (`setup::INJECT_EVENTS`).
    pub inject_events: bool,
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
    /// `preempt_timer`: the timer's run.
    pub timer: preemption_timer::TimerRun,
    /// `irq_window`: the interrupt-window exits' run.
    pub window: interrupt_window::WindowRun,
    /// The exit-trace ring's producer.
    pub trace: crate::trace::Producer,
    /// The exit-trace ring, when L0 accepted it ([`crate::trace::RING`]).
    pub ring: Option<&'static mut crate::trace::Ring>,
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
            report: PayloadReport {
                status: 0,
                exits_by_reason: [0; 80],
                records: 0,
                vmx_accesses: 0,
                vendor: nestbench_abi::payload::Vendor::Vmx as u32,
                reserved: 0,
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
            inject_events: false,
            msrs: rdmsr::EmulatedMsrs::new(),
            ept: None,
            misconfig: None,
            mmio: None,
            remap: None,
            timer: preemption_timer::TimerRun { target: 0, value: 0, exits: 0, save: false },
            window: interrupt_window::WindowRun { target: 0, exits: 0 },
            trace: crate::trace::Producer::off(),
            ring: None,
        }
    }

    /// A handler starts (the trace ring's timing, [`crate::trace::Producer::begin`]).
    #[inline(always)]
    pub fn begin(&mut self) -> &mut Self {
        self.trace.begin();
        self
    }

    /// Count an exit by basic reason and keep its record while there is room ([`Self::record_as`]
    /// with the reason as its own kind).
    #[inline(always)]
    pub fn record(&mut self, reason: u32, insn_len: u32, qualification: u64, rip: u64, insn_info: u32, linear: u64) {
        self.record_as(reason, reason, insn_len, qualification, rip, insn_info, linear);
    }

    /// Send the payload report with the payload's `status` and `results` and L1's control-
    /// structure `accesses`, and exit (0 when the status and every check passed).
    pub fn report_and_exit(&mut self, status: u64, results: PayloadResults, accesses: u32) -> ! {
        let r = &mut self.report;
        r.status = status;
        r.results = results;
        r.vmx_accesses = accesses;
        crate::hypercall::report(nestbench_abi::report::ReportKind::PayloadRun, nestbench_abi::Pod::as_bytes(r));
        let ok = r.status == 0 && r.results.failures == 0;
        crate::println!(
            "l1: payload done: status {}, failures {}, {} exits",
            r.status,
            r.results.failures,
            r.exits_by_reason.iter().sum::<u32>()
        );
        crate::hypercall::exit(if ok { 0 } else { EXIT_PAYLOAD_FAILED })
    }

    /// Count an exit under its vendor-neutral `kind` (the ABI's exit-reason number) and keep
    /// the vendor's record of it ([`ExitRecord`]: VMX's exit information, or SVM's EXITCODE,
    /// nRIP - RIP, EXITINFO1, EXITINTINFO, EXITINFO2), also for the trace ring.
    #[allow(clippy::too_many_arguments)] // one record's fields, as the ABI lays them out
    #[inline(always)]
    pub fn record_as(
        &mut self,
        kind: u32,
        reason: u32,
        insn_len: u32,
        qualification: u64,
        rip: u64,
        insn_info: u32,
        linear: u64,
    ) {
        let r = &mut self.report;
        if let Some(c) = r.exits_by_reason.get_mut((kind & 0xFFFF) as usize) {
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
        if let Some(ring) = self.ring.as_deref_mut() {
            self.trace.publish(ring, reason, insn_len, qualification, rip);
        }
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

/// The one place guest RIP moves past the exiting instruction (SDM 28.2.4: the VM-exit
/// instruction length is the instruction's length in bytes).
#[inline(always)]
pub fn advance_rip<V: Vcpu>(vcpu: &mut V, rip: u64, insn_len: u32) {
    vcpu.set_rip(rip + u64::from(insn_len));
}

/// Run L2 until a handler ends the run: enter, handle the exit, enter again.
///
/// The exits the `soft` engine reflects every iteration (I/O, HLT) come first (the vendor
/// decodes them first too); the payload ends at its `out DONE_PORT` ([`io`]), any other end
/// is a handler's verdict.
#[inline(always)]
pub fn run_loop<V: Vcpu>(vcpu: &mut V, run: &mut RunState) -> ! {
    loop {
        let exit = vcpu.run();
        // Each arm starts the handler's trace timing itself (`begin`): a test between the
        // decode and this match would keep the compiler from threading the vendor's decode
        // straight into the arm (it would build the enum and jump through a table instead).
        match exit {
            Exit::Io(q) => io::handle(vcpu, run.begin(), q),
            Exit::Hlt => hlt::handle(vcpu, run.begin()),
            Exit::Cpuid => cpuid::handle(vcpu, run.begin()),
            Exit::Hypercall => vmcall::handle(vcpu, run.begin()),
            Exit::MsrRead { msr } => rdmsr::handle(vcpu, run.begin(), msr),
            Exit::MsrWrite { msr, value } => wrmsr::handle(vcpu, run.begin(), msr, value),
            Exit::NestedPageFault(f) => ept_violation::handle(vcpu, run.begin(), f),
            Exit::TripleFault => triple_fault::handle(vcpu, run.begin()),
            // Rebuilt in each arm, so that no other arm keeps the exit in memory for them.
            Exit::EptMisconfig { gpa } => vcpu.vendor_exit(Exit::EptMisconfig { gpa }, run.begin()),
            Exit::ControlRegister(access) => cr_access::handle(vcpu, run.begin(), access),
            Exit::PreemptionTimer => vcpu.vendor_exit(Exit::PreemptionTimer, run.begin()),
            Exit::InterruptWindow => vcpu.vendor_exit(Exit::InterruptWindow, run.begin()),
            Exit::Other(raw) => unexpected::handle(vcpu, raw),
        }
    }
}
