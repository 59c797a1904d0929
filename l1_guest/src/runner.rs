//! Running L2: pick the backend, enter VMX operation, build L2 and its VMCS, launch.
//!
//! Shared by the payload run ([`run_payload`]) and the must-fail scenarios
//! ([`crate::scenarios`]).

use nestbench_abi::boot::BootInfo;
use nestbench_abi::cpuid as hv;
use nestbench_abi::payload::{
    EPT_DATA_GPA, EPT_FETCH_CODE_OFFSET, EPT_MISCONFIG_MEMTYPE, EPT_MISCONFIG_PAGES, EPT_PATTERN_OFFSETS, L2_IMAGE_MAX,
    STAGING_GPA, Setup, ept_fetch_code, ept_pattern, setup as flag,
};

use crate::ept_builder::{EptBuilder, Format, FrameMemory};
use crate::exits::remap::Remap;
use crate::exits::{self, EXIT_NO_VMX, EXIT_VMX_SETUP_FAILED, RunState};
use crate::l2::{self, FRAMES_END, L1Frames, L2Space, SetupError};
use crate::vcpu::{GuestRegs, Vcpu};
use crate::vmx::caps::{CapsError, Controls, VmxCaps, compute_controls};
use crate::vmx::entry::{self, ExitFrame};
use crate::vmx::hw::{CR4_VMXE, HwVmx, MSR_FEATURE_CONTROL, feature_control_update};
use crate::vmx::msr_bitmap;
use crate::vmx::setup::{self, GUEST_CR0, GUEST_CR4, GuestConfig, HostConfig, Write, Writes};
use crate::vmx::soft::SoftVmx;
use crate::vmx::vcpu::VmxVcpu;
use crate::vmx::{BackendKind, VmxBackend, VmxFail, select_backend};
use crate::{svm, x86};
use nestbench_abi::svm::vmcb as off;

/// Where L1's own descriptor tables are (for the host-state area).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostTables {
    /// GDTR base.
    pub gdt_base: u64,
    /// IDTR base.
    pub idt_base: u64,
    /// L1's TSS (TR base).
    pub tss_base: u64,
}

/// Why L1 could not get L2 running.
#[derive(Clone, Copy, Debug)]
pub enum RunError {
    /// The capabilities do not allow L1's controls.
    Caps(CapsError),
    /// L2's address space could not be built.
    Setup(SetupError),
    /// A VMX instruction failed.
    Vmx(&'static str, VmxFail),
    /// A VMWRITE of the VMCS setup failed.
    VmcsWrite(Write, VmxFail),
    /// IA32_FEATURE_CONTROL is locked with VMXON disabled.
    FeatureControlLocked(u64),
    /// The payload or scenario cannot run here (the reason says why).
    Refused(&'static str),
    /// The exit frame was taken already (L1 runs one L2 per boot).
    FrameTaken,
    /// SVM could not be enabled.
    Svm(svm::EnableError),
}

impl core::fmt::Display for RunError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Caps(e) => write!(f, "capabilities: {e}"),
            Self::Setup(e) => write!(f, "L2 setup: {e:?}"),
            Self::Vmx(what, e) => write!(f, "{what}: {e}"),
            Self::VmcsWrite(w, e) => write!(f, "VMWRITE {w:?}: {e}"),
            Self::FeatureControlLocked(v) => write!(f, "IA32_FEATURE_CONTROL {v:#x} is locked with VMXON disabled"),
            Self::Refused(why) => f.write_str(why),
            Self::FrameTaken => f.write_str("the exit frame is taken: one L2 per boot"),
            Self::Svm(e) => write!(f, "SVM: {e}"),
        }
    }
}

impl From<CapsError> for RunError {
    fn from(e: CapsError) -> Self {
        Self::Caps(e)
    }
}

impl From<SetupError> for RunError {
    fn from(e: SetupError) -> Self {
        Self::Setup(e)
    }
}

/// Report a setup failure and exit.
pub fn fail(e: RunError) -> ! {
    crate::println!("l1: cannot run L2: {e}");
    crate::hypercall::exit(EXIT_VMX_SETUP_FAILED)
}

/// The VMX backend CPUID offers (docs/soft-engine.md "Discovery"), if any.
fn vmx_backend() -> Option<BackendKind> {
    let l1 = x86::cpuid(1);
    let sig = x86::cpuid(hv::LEAF_SIGNATURE);
    let ours = hv::signature_from_words(sig.ebx, sig.ecx, sig.edx) == hv::SIGNATURE;
    let features = if ours { x86::cpuid(hv::LEAF_INFO).ebx } else { 0 };
    select_backend(l1.ecx, ours, features)
}

/// Say that there is no VMX (and whether SVM is there instead) and exit with
/// [`EXIT_NO_VMX`].
fn no_vmx(what: &str) -> ! {
    crate::println!(
        "l1: no VMX: L0 does not advertise the soft engine (CPUID 0x4000_0001 EBX bit 1) and CPUID.1:ECX.VMX is clear{}",
        if svm::offered() { what } else { "" }
    );
    crate::hypercall::exit(EXIT_NO_VMX)
}

/// Pick the VMX backend from CPUID (docs/soft-engine.md "Discovery") for what only VMX runs
/// (the VM-entry cases, the must-fail scenarios); without one, say so and exit with
/// [`EXIT_NO_VMX`].
pub fn detect() -> BackendKind {
    vmx_backend().unwrap_or_else(|| no_vmx(" (the CPU offers SVM: this is a VMX-only run)"))
}

/// L1 in VMX operation with a current VMCS.
#[derive(Debug)]
pub struct Ready {
    /// The capabilities.
    pub caps: VmxCaps,
    /// The current VMCS (L1-physical).
    pub vmcs: u64,
    /// The VMXON region (L1-physical).
    pub vmxon: u64,
}

/// Enter VMX operation on `b` and make a fresh VMCS current (SDM 24.7, 24.11.3: VMXON
/// region and VMCS region start with the revision identifier; VMCLEAR, then VMPTRLD).
pub fn enter_vmx<B: VmxBackend>(b: &mut B, kind: BackendKind, mem: &mut L1Frames) -> Result<Ready, RunError> {
    let caps = VmxCaps::read(|m| x86::rdmsr_safe(m).unwrap_or(0));
    if kind == BackendKind::Hardware {
        enable_hw_vmx(&caps)?;
    }
    let out = || RunError::Setup(SetupError::OutOfFrames);
    let rev = u64::from(caps.basic.revision_id());
    let vmxon = mem.alloc_zeroed_page().ok_or_else(out)?;
    mem.write_u64(vmxon, rev);
    b.vmxon(vmxon).map_err(|e| RunError::Vmx("VMXON", e))?;
    let vmcs = mem.alloc_zeroed_page().ok_or_else(out)?;
    mem.write_u64(vmcs, rev);
    b.vmclear(vmcs).map_err(|e| RunError::Vmx("VMCLEAR", e))?;
    b.vmptrld(vmcs).map_err(|e| RunError::Vmx("VMPTRLD", e))?;
    Ok(Ready { caps, vmcs, vmxon })
}

/// Real VMX: lock IA32_FEATURE_CONTROL with VMXON outside SMX if the firmware (here: nobody)
/// left it unlocked (SDM 24.7), set CR0/CR4 to what VMX operation requires, CR4.VMXE
/// included (SDM 24.8, A.7, A.8).
fn enable_hw_vmx(caps: &VmxCaps) -> Result<(), RunError> {
    let fc = x86::rdmsr_safe(MSR_FEATURE_CONTROL).unwrap_or(0);
    match feature_control_update(fc) {
        // SAFETY: writing the lock and VMXON-enable bits of an unlocked IA32_FEATURE_CONTROL
        // is what SDM 24.7 prescribes; it affects nothing else.
        Ok(Some(v)) => unsafe { x86::wrmsr(MSR_FEATURE_CONTROL, v) },
        Ok(None) => {}
        Err(v) => return Err(RunError::FeatureControlLocked(v)),
    }
    // SAFETY: the fixed-bit MSRs only force bits VMX operation needs (PE, PG, NE; VMXE) and
    // clear bits the CPU does not support; L1 keeps running in long mode.
    unsafe {
        x86::write_cr0(caps.adjust_cr0(x86::read_cr0()));
        x86::write_cr4(caps.adjust_cr4(x86::read_cr4() | CR4_VMXE));
    }
    Ok(())
}

/// The controls, L2's address space and every VMWRITE of its VMCS; VM exits go to the exit
/// stub with HOST_RSP `host_rsp` ([`ExitFrame::host_rsp`]).
pub fn prepare(
    caps: &VmxCaps,
    mem: &mut L1Frames,
    image: &[u8],
    entry: u64,
    cpl: u8,
    host: HostTables,
    host_rsp: u64,
) -> Result<(Controls, L2Space, Writes), RunError> {
    let controls = compute_controls(caps, cpl == 0)?;
    let space = l2::build(mem, image, entry, Format::Ept)?;
    let guest = GuestConfig {
        cpl,
        cr0: caps.adjust_cr0(GUEST_CR0),
        cr3: space.cr3,
        cr4: caps.adjust_cr4(GUEST_CR4),
        gdt: space.gdt,
        tss: space.tss,
        rsp: space.stack_top,
        rip: entry,
    };
    let host = HostConfig {
        cr0: caps.adjust_cr0(x86::read_cr0()),
        cr3: x86::read_cr3(),
        cr4: caps.adjust_cr4(x86::read_cr4()),
        efer: x86::rdmsr_safe(x86::MSR_EFER).unwrap_or(0),
        tr_base: host.tss_base,
        gdtr_base: host.gdt_base,
        idtr_base: host.idt_base,
        rsp: host_rsp,
        rip: entry::exit_stub_address(),
    };
    // The MSR bitmap (SDM 25.6.9): a page of L1 memory, intercepting what L1 emulates.
    let msr_bitmap = if controls.uses_msr_bitmaps() {
        let pa = mem.alloc_zeroed_page().ok_or(RunError::Setup(SetupError::OutOfFrames))?;
        mem.write_bytes(pa, &msr_bitmap::BITMAP);
        pa
    } else {
        0
    };
    let writes = setup::vmcs_writes(&controls, space.ept.eptp(), msr_bitmap, &guest, &host);
    Ok((controls, space, writes))
}

/// The run's state for this L2 (the handlers read and fill it): where its results page and
/// paging are, and the VMREAD/VMWRITE count at the first entry.
fn run_state(space: &L2Space, accesses: u32, io_check: bool) -> RunState {
    RunState {
        results_pa: space.results_pa,
        eptp: space.ept.eptp(),
        cr3: space.cr3,
        accesses_at_launch: accesses,
        io_check: io_check.then(exits::io::IoCheck::default),
        ..RunState::new()
    }
}

/// Register the exit-trace ring when L0 asked for tracing ([`BootInfo::trace_capacity`]);
/// if L0 refuses it, say so and run untraced.
fn start_tracing(run: &mut RunState, capacity: u32) {
    if capacity == 0 {
        return;
    }
    let Some(ring) = crate::trace::RING.take() else { return };
    let cap = crate::trace::Producer::prepare(ring, capacity);
    match crate::hypercall::trace_ring(core::ptr::from_mut(ring) as u64, cap) {
        Some(nestbench_abi::hypercall::Status::Ok) => {
            run.trace.enable(cap);
            run.ring = Some(ring);
        }
        other => crate::println!("l1: the trace ring ({cap} records) was not accepted ({other:?}): tracing off"),
    }
}

/// Run the payload of `boot` to its end (the exit handlers report and exit): on VMX when
/// the CPU (or the soft engine) offers it, else on SVM.
pub fn run_payload(boot: &BootInfo, host: HostTables) -> ! {
    let r = match vmx_backend() {
        Some(kind) => {
            let Some(frame) = ExitFrame::take() else { fail(RunError::FrameTaken) };
            match kind {
                BackendKind::Soft => payload_on(SoftVmx::new(), kind, frame, boot, host),
                BackendKind::Hardware => payload_on(HwVmx::new(), kind, frame, boot, host),
            }
        }
        None if svm::offered() => payload_on_svm(boot),
        None => no_vmx(""),
    };
    fail(r)
}

/// The payload's CPL and image, checked.
fn payload_image(boot: &BootInfo) -> Result<(u8, &'static [u8]), RunError> {
    let p = boot.payload;
    let cpl = match p.cpl {
        0 => 0,
        3 => 3,
        _ => return Err(RunError::Refused("CPL is neither 0 nor 3")),
    };
    if p.size == 0 || p.size > L2_IMAGE_MAX {
        return Err(RunError::Refused("image size is 0 or above L2_IMAGE_MAX"));
    }
    if boot.mem_size < FRAMES_END {
        return Err(RunError::Refused("guest memory does not reach the end of L1's frame region"));
    }
    // SAFETY: L0 staged `size` bytes at STAGING_GPA (identity-mapped L1 memory, below the
    // frame region, size checked against L2_IMAGE_MAX above); nothing writes there.
    Ok((cpl, unsafe { core::slice::from_raw_parts(STAGING_GPA as *const u8, p.size as usize) }))
}

fn payload_on<B: VmxBackend>(
    mut b: B,
    kind: BackendKind,
    frame: &'static mut ExitFrame,
    boot: &BootInfo,
    host: HostTables,
) -> RunError {
    let p = boot.payload;
    let (cpl, image) = match payload_image(boot) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut mem = L1Frames::new();
    let result = (|| {
        let ready = enter_vmx(&mut b, kind, &mut mem)?;
        let (_, space, writes) = prepare(&ready.caps, &mut mem, image, p.entry, cpl, host, frame.host_rsp())?;
        writes.apply(&mut b).map_err(|(w, e)| RunError::VmcsWrite(w, e))?;
        Ok(space)
    })();
    let space = match result {
        Ok(s) => s,
        Err(e) => return e,
    };
    // What to set up comes from the payload's manifest (PayloadInfo::setup), never its name.
    let setup = Setup::from_raw(p.setup, p.pool_pages);
    let mut run = run_state(&space, b.accesses(), setup.has(flag::IO_CHECK));
    run.inject_events = setup.has(flag::INJECT_EVENTS);
    start_tracing(&mut run, boot.trace_capacity);
    if let Err(e) = nested_paging_setup(&mut run, mem, setup, boot, &space) {
        return e;
    }
    // `ept_misconfig`: one leaf gets a reserved memory type (SDM 29.3.3.1); the exit handler
    // repairs it (crate::exits::ept_misconfig).
    if setup.has(flag::EPT_MISCONFIG) {
        let page = EPT_DATA_GPA + p.arg % EPT_MISCONFIG_PAGES * 4096;
        let broken = run.ept.as_mut().is_some_and(|pool| {
            EptBuilder::from_eptp(space.ept.eptp()).set_memory_type(&mut pool.frames, page, EPT_MISCONFIG_MEMTYPE)
        });
        if !broken {
            return RunError::Refused("ept_misconfig: the data page to misconfigure is not mapped");
        }
        run.misconfig = Some(page);
    }
    // `preempt_timer`: the VMX-preemption timer, one exit per arm (crate::exits::preemption_timer).
    if setup.has(flag::PREEMPTION_TIMER) {
        let caps = VmxCaps::read(|m| x86::rdmsr_safe(m).unwrap_or(0));
        let value = exits::preemption_timer::value_of(p.arg);
        match exits::preemption_timer::arm(&mut b, &caps, p.iterations, value) {
            Ok(t) => run.timer = t,
            Err(exits::preemption_timer::ArmError::NotAllowed) => {
                return RunError::Refused("preempt_timer: 'activate VMX-preemption timer' may not be 1 here");
            }
            Err(exits::preemption_timer::ArmError::Vmx(e)) => return RunError::Vmx("preempt_timer setup", e),
        }
    }
    // `irq_window`: interrupt-window exiting with L2's RFLAGS.IF set, one exit per entry
    // (crate::exits::interrupt_window).
    if setup.has(flag::INTERRUPT_WINDOW) {
        let caps = VmxCaps::read(|m| x86::rdmsr_safe(m).unwrap_or(0));
        match exits::interrupt_window::arm(&mut b, &caps, p.iterations) {
            Ok(w) => run.window = w,
            Err(exits::interrupt_window::ArmError::NotAllowed) => {
                return RunError::Refused("irq_window: 'interrupt-window exiting' may not be 1 here");
            }
            Err(exits::interrupt_window::ArmError::Vmx(e)) => return RunError::Vmx("irq_window setup", e),
        }
    }
    // `cr3`: CR3-load/store exiting (crate::exits::cr_access).
    if setup.has(flag::CR3_EXITING) {
        let caps = VmxCaps::read(|m| x86::rdmsr_safe(m).unwrap_or(0));
        match exits::cr_access::arm(&mut b, &caps) {
            Ok(()) => {}
            Err(exits::cr_access::ArmError::NotAllowed) => {
                return RunError::Refused("cr3: 'CR3-load exiting' and 'CR3-store exiting' may not be 1 here");
            }
            Err(exits::cr_access::ArmError::Vmx(e)) => return RunError::Vmx("cr3 setup", e),
        }
    }
    frame.regs = GuestRegs { rdi: p.iterations, rsi: p.arg, ..GuestRegs::default() };
    // SAFETY: the current VMCS is complete (`writes`), HOST_RIP is the exit stub and HOST_RSP
    // this frame's (`prepare`), `b` made it current, and the frame is 'static.
    let mut vcpu = unsafe { VmxVcpu::new(b, frame) };
    exits::run_loop(&mut vcpu, &mut run)
}

/// What the payload's manifest asks of L2's nested paging (EPT12 or NPT12) and memory, the
/// same on both vendors: the EPT payloads' seeded pool of L1 pages for the data region,
/// mapped on demand (ept_touch) or before the launch (ept_fill); `ept_fetch`'s function in
/// every pool page; the `mmio` device; the remaps.
fn nested_paging_setup(
    run: &mut RunState,
    mem: L1Frames,
    setup: Setup,
    boot: &BootInfo,
    space: &L2Space,
) -> Result<(), RunError> {
    let p = boot.payload;
    if setup.has(flag::EPT_POOL) {
        let on_demand = setup.has(flag::EPT_ON_DEMAND) || (setup.has(flag::EPT_ON_DEMAND_IF_ARG_0) && p.arg == 0);
        let read_only = setup.has(flag::EPT_READ_ONLY);
        let pages = setup.pool_pages.pages(p.iterations);
        let pool = exits::ept_violation::EptPool::setup(mem, space.ept.eptp(), pages, on_demand, read_only)
            .map_err(|e| RunError::Setup(SetupError::Ept(e)))?;
        run.ept = Some(pool);
    }
    if setup.has(flag::EPT_FETCH_CODE)
        && let Some(pool) = run.ept.as_mut()
    {
        pool.fetch = true;
        for i in 0..pool.pages {
            let gpa = EPT_DATA_GPA + i * 4096;
            let pa = pool.frame_for(gpa).unwrap_or(0) + EPT_FETCH_CODE_OFFSET;
            pool.frames.write_bytes(pa, &ept_fetch_code(gpa));
        }
    }
    if setup.has(flag::MMIO_DEVICE) {
        run.mmio = Some(exits::ept_violation::MmioDevice::default());
    }
    run.remap = remap_setup(run, setup, space.ept.eptp(), space.cr3)?;
    Ok(())
}

/// The payload on SVM: enable it, build L2 with NPT12, fill the VMCB, run.
fn payload_on_svm(boot: &BootInfo) -> RunError {
    let p = boot.payload;
    let (cpl, image) = match payload_image(boot) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let setup = Setup::from_raw(p.setup, p.pool_pages);
    for (f, why) in [
        (flag::EPT_MISCONFIG, "ept_misconfig: an NPT entry has no memory type to misconfigure (VMX only)"),
        (flag::PREEMPTION_TIMER, "preempt_timer: SVM has no VMX-preemption timer (VMX only)"),
        (flag::CR3_EXITING, "cr3: CR3 intercepts on SVM are not built (VMX only)"),
        (flag::INJECT_EVENTS, "inject: SVM event injection is not checked yet (VMX only)"),
    ] {
        if setup.has(f) {
            return RunError::Refused(why);
        }
    }
    let mut mem = L1Frames::new();
    let out = RunError::Setup(SetupError::OutOfFrames);
    let Some(hsave) = mem.alloc_zeroed_page() else { return out };
    let features = match svm::enable(hsave) {
        Ok(f) => f,
        Err(e) => return RunError::Svm(e),
    };
    let Some(host_state) = mem.alloc_zeroed_page() else { return out };
    svm::save_host_state(host_state);
    let space = match l2::build(&mut mem, image, p.entry, Format::Npt) {
        Ok(s) => s,
        Err(e) => return e.into(),
    };
    // The permission maps: physically contiguous (15.10.1, 15.11); the allocator goes down,
    // so the last page of a run is the map's base.
    let Some(iopm) = contiguous(&mut mem, nestbench_abi::svm::IOPM_BYTES) else { return out };
    mem.write_bytes(iopm, &[0xFF; 4096]);
    mem.write_bytes(iopm + 4096, &[0xFF; 4096]);
    mem.write_bytes(iopm + 8192, &[0xFF; 4096]);
    let Some(msrpm) = contiguous(&mut mem, nestbench_abi::svm::MSRPM_BYTES) else { return out };
    mem.write_bytes(msrpm, &svm::setup::MSRPM);
    let Some(vmcb_pa) = mem.alloc_zeroed_page() else { return out };
    // SAFETY: a fresh page of L1's identity-mapped frame region, used only as this VMCB.
    let mut vmcb = unsafe { svm::vmcb::Vmcb::new(vmcb_pa as *mut u8) };
    svm::setup::fill(
        &mut vmcb,
        &svm::setup::VmcbConfig {
            cpl,
            cr3: space.cr3,
            gdt: space.gdt,
            tss: space.tss,
            rsp: space.stack_top,
            rip: p.entry,
            ncr3: space.ept.root(),
            iopm,
            msrpm,
            asid: 1,
        },
    );
    let mut run = run_state(&space, 0, false);
    // `irq_window`: the VINTR intercept with a pending V_IRQ (crate::svm::window).
    if setup.has(flag::INTERRUPT_WINDOW) {
        run.window = svm::window::arm(&mut vmcb, p.iterations);
    }
    run.io_check = setup.has(flag::IO_CHECK).then(|| exits::io::IoCheck::ignoring(exits::io::OPERAND_ENCODING));
    run.report.vendor = nestbench_abi::payload::Vendor::Svm as u32;
    start_tracing(&mut run, boot.trace_capacity);
    if let Err(e) = nested_paging_setup(&mut run, mem, setup, boot, &space) {
        return e;
    }
    // The VMRUN consistency checks (APM 15.5.1): one field broken on purpose.
    let broken = setup.has(flag::VMRUN_BAD_ASID) || setup.has(flag::VMRUN_BAD_EFER);
    if setup.has(flag::VMRUN_BAD_ASID) {
        vmcb.write32(off::GUEST_ASID, 0);
    }
    if setup.has(flag::VMRUN_BAD_EFER) {
        vmcb.write64(off::EFER, vmcb.read64(off::EFER) & !nestbench_abi::cr::EFER_SVME);
    }
    let regs = GuestRegs { rdi: p.iterations, rsi: p.arg, ..GuestRegs::default() };
    // SAFETY: the VMCB is complete (`fill`; one consistency check broken on purpose when
    // `broken`, which VMRUN answers with VMEXIT_INVALID), SVM is enabled with VM_HSAVE_PA
    // set, and `host_state` holds L1's VMSAVEd state.
    let mut vcpu = unsafe { svm::vcpu::SvmVcpu::new(vmcb, host_state, space.ept.root(), features, regs) };
    if broken {
        vmrun_must_fail(&mut vcpu, &mut run)
    }
    exits::run_loop(&mut vcpu, &mut run)
}

/// One VMRUN of a VMCB that breaks a consistency check: the #VMEXIT is recorded under the
/// kind of VMX's invalid-guest-state entry failure and the run reports it (one failure when
/// the VMRUN entered L2 or exited otherwise).
fn vmrun_must_fail(vcpu: &mut svm::vcpu::SvmVcpu, run: &mut RunState) -> ! {
    vcpu.enter();
    let v = vcpu.vmcb();
    let code = v.exit_code();
    let kind = nestbench_abi::vmx::ExitReason::EntryFailureGuestState as u32;
    run.record_as(
        kind,
        code,
        0,
        v.read64(off::EXITINFO1),
        v.read64(off::RIP),
        v.read32(off::EXITINTINFO),
        v.read64(off::EXITINFO2),
    );
    let invalid = code == nestbench_abi::svm::ExitCode::Invalid as u32;
    if !invalid {
        crate::println!("l1: the VMRUN with a broken VMCB did not fail: EXITCODE {code:#x}");
        vcpu.dump();
    }
    // L2 never runs, so L1 writes the results: one iteration (the VMRUN), failed unless it
    // gave VMEXIT_INVALID.
    let results = nestbench_abi::payload::PayloadResults {
        magic: nestbench_abi::payload::RESULTS_MAGIC,
        iterations: 1,
        failures: u64::from(!invalid),
        ..run.report.results
    };
    run.report_and_exit(0, results, 0)
}

/// `bytes` of physically contiguous, zeroed frames (the allocator hands out descending
/// frames: consecutive allocations are contiguous downwards); the lowest address.
fn contiguous(mem: &mut L1Frames, bytes: usize) -> Option<u64> {
    let mut low = mem.alloc_zeroed_page()?;
    for _ in 1..bytes.div_ceil(4096) {
        let next = mem.alloc_zeroed_page()?;
        if next + 4096 != low {
            return None;
        }
        low = next;
    }
    Some(low)
}

/// `ept_remap`: a second L1 frame for data page 0, seeded with the complement of the
/// first's words (crate::exits::remap). `pte_remap`: the L1-physical address of L2's PTE
/// for linear data page 0.
fn remap_setup(run: &mut RunState, setup: Setup, eptp: u64, cr3: u64) -> Result<Option<Remap>, RunError> {
    let Some(pool) = run.ept.as_mut() else { return Ok(None) };
    match (setup.has(flag::REMAP_EPT), setup.has(flag::REMAP_PTE)) {
        (true, _) => {
            let b = pool.frames.alloc_zeroed_page().ok_or(RunError::Setup(SetupError::OutOfFrames))?;
            for off in EPT_PATTERN_OFFSETS {
                pool.frames.write_u64(b + off, !ept_pattern(EPT_DATA_GPA, off));
            }
            Ok(Some(Remap::Ept { frames: [pool.first, b], current: 0, invepts: [0; 2] }))
        }
        (false, true) => {
            // PML4 -> PDPT -> PD -> PT: the PTE is the last table's entry for the linear page.
            let pte = l2::l2_linear_to_l1(&l2::Phys(&pool.frames), eptp, cr3, l2::L2_PT_DATA)
                .ok_or(RunError::Refused("pte_remap: L2's data page table is not mapped"))?;
            Ok(Some(Remap::Pte { pte: pte + (EPT_DATA_GPA >> 12 & 0x1FF) * 8, current: 0, changes: 0 }))
        }
        (false, false) => Ok(None),
    }
}
