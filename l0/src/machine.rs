//! A machine: a VM with a loaded guest, run to completion on a dedicated vCPU thread while
//! L0 serves its hypercalls, with a watchdog and KVM statistics.
//!
//! The vCPU thread owns the [`Vcpu`] for its whole life (the kick handler's thread-local
//! pointer must outlive nothing), streams [`Event`]s to the caller over a channel, and
//! returns the [`RunReport`]. The caller's thread only forwards events.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nestbench_abi::boot::{BOOT_MAGIC, BootInfo, Scenario};
use nestbench_abi::hypercall::{CONSOLE_MAX, Call, PORT, Status};
use nestbench_abi::layout::{BOOT_INFO, BOOT_STACK_TOP, IDENTITY_MAP_SIZE};
use nestbench_abi::report::ExceptionReport;
use nestbench_abi::{ABI_VERSION, Pod};

use crate::events::{Event, KvmStats, Outcome, RunReport};
use crate::kvm_engine::caps::KvmVmxMsr;
use crate::loader::{self, LoadError};
use crate::memory::GuestMem;
use crate::paging;
use crate::soft::engine::{EntryOutcome, SoftVmx};
use crate::stats::{self, StatsFd};
use crate::trace::{TraceConfig, Tracer};
use crate::vcpu::{Exit, Vcpu, VcpuError};
use crate::vm::{Vm, VmError};
use crate::watchdog::Watchdog;
use crate::x86_setup::Cpl;

/// KVM_INTERNAL_ERROR_EMULATION.
const SUBERROR_EMULATION: u32 = 1;
/// KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES.
const EMULATION_FLAG_INSN_BYTES: u64 = 1;

/// Errors that stop a machine before or while it runs (guest misbehaviour is an
/// [`Outcome`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Creating or setting up the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The image could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A vCPU ioctl failed while running.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A raw image does not fit guest memory.
    #[error("raw image of {len} bytes at {gpa:#x} does not fit in {mem:#x} bytes of guest memory")]
    RawImage {
        /// Where it was to go.
        gpa: u64,
        /// Its length.
        len: usize,
        /// Guest memory size.
        mem: u64,
    },
    /// Setting up an engine failed.
    #[error("setting up the engine: {0}")]
    Setup(String),
    /// The kvm engine cannot run on this host.
    #[error(transparent)]
    NoNesting(#[from] crate::kvm_engine::caps::NoNesting),
    /// The vCPU thread panicked (a bug in L0).
    #[error("the vCPU thread panicked: {0}")]
    VcpuThreadPanicked(String),
}

/// What to run.
#[derive(Clone, Debug)]
pub enum Image {
    /// An L1 ELF, entered in 64-bit mode at CPL 0 with RDI = the boot info.
    Elf(PathBuf),
    /// Raw code bytes placed at `gpa` and entered there (for host-behaviour tests).
    Raw {
        /// Load address (= linear address, identity-mapped).
        gpa: u64,
        /// The code.
        bytes: Vec<u8>,
    },
}

/// How to build and run the machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// The KVM device.
    pub kvm_path: PathBuf,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// Time budget of the run; the watchdog stops the guest after it.
    pub timeout: Duration,
    /// Privilege level at entry.
    pub cpl: Cpl,
    /// Scenario passed to L1 in the boot info.
    pub scenario: Scenario,
    /// The engine that gives L1 VMX, with its settings.
    pub engine: EngineConfig,
    /// The L2 payload L1 should run.
    pub payload: Option<PayloadSpec>,
    /// Soft engine: keep at most this many memslots in VM2 (below KVM's own limit), so
    /// that the EPT12 shadow evicts (`ept.evictions`); `None`: KVM's limit.
    pub memslot_limit: Option<usize>,
    /// Exit tracing (soft engine): L1 publishes a record per handled exit, L0 drains and
    /// streams them as [`Event::Trace`] batches.
    pub trace: Option<TraceConfig>,
    /// A VM-entry case for [`Scenario::Vmentry`], written at its fixed address.
    pub vmentry_case: Option<nestbench_abi::vmentry::Case>,
}

/// The engine that gives L1 VMX: one value carrying its own settings, so that two engines
/// at once cannot be written. A new engine is one more variant, and the compiler lists every
/// `match` that must handle it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineConfig {
    /// None: L1 runs without VMX (boot checks, single-level twins).
    #[default]
    NoVmx,
    /// The soft engine: L0 provides VMX to L1 in userspace.
    Soft(SoftConfig),
    /// The kvm engine: KVM's VMX passed through to L1, which runs L2 on the host kernel's
    /// nested VMX.
    Kvm {
        /// Record KVM's nested tracepoints (L1 exits by reason, reflected vs L0-handled
        /// exits). They add KVM instructions to every exit, so exact instruction figures
        /// come from runs without them.
        tracepoints: bool,
    },
}

impl EngineConfig {
    /// The soft engine's settings, when it is the engine.
    #[must_use]
    pub const fn soft(self) -> Option<SoftConfig> {
        match self {
            Self::Soft(s) => Some(s),
            Self::NoVmx | Self::Kvm { .. } => None,
        }
    }

    /// Whether the kvm engine runs (KVM's VMX passed through).
    #[must_use]
    pub const fn is_kvm(self) -> bool {
        matches!(self, Self::Kvm { .. })
    }
}

/// Settings of the soft engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftConfig {
    /// VMCS shadowing: L1's VMREAD/VMWRITE of supported fields do not trap.
    pub vmcs_shadowing: bool,
}

/// An L2 payload to hand to L1.
#[derive(Clone, Debug)]
pub struct PayloadSpec {
    /// Its name (for reports).
    pub name: String,
    /// Its ELF image, linked at `nestbench_abi::payload::L2_IMAGE_BASE`.
    pub elf: PathBuf,
    /// The CPL it runs at.
    pub cpl: nestbench_abi::payload::Cpl,
    /// Iterations (RDI at its entry).
    pub iterations: u64,
    /// Its argument (RSI).
    pub arg: u64,
    /// What L1 sets up for it (its manifest's).
    pub setup: nestbench_abi::payload::Setup,
}

impl PayloadSpec {
    /// The built payload `m` (its image from [`crate::images::payload_elf`]) with exactly
    /// `iterations` and `arg` (callers clamp with `Manifest::iterations` where they want it).
    #[must_use]
    pub fn of(m: &l2_payloads::Manifest, iterations: u64, arg: u64) -> Self {
        Self {
            name: m.name.into(),
            elf: crate::images::payload_elf(m.name),
            cpl: m.cpl,
            iterations,
            arg,
            setup: m.setup,
        }
    }
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            kvm_path: PathBuf::from("/dev/kvm"),
            mem_size: nestbench_abi::layout::DEFAULT_MEM_SIZE,
            timeout: Duration::from_secs(10),
            cpl: Cpl::Kernel,
            scenario: Scenario::Probe,
            engine: EngineConfig::NoVmx,
            payload: None,
            memslot_limit: None,
            trace: None,
            vmentry_case: None,
        }
    }
}

/// A VM with its guest loaded, ready to run.
#[derive(Debug)]
pub struct Machine {
    vm: Vm,
    vcpu: Vcpu,
    config: MachineConfig,
    /// The kvm engine's VMX MSRs, when it runs.
    nested_msrs: Option<Vec<KvmVmxMsr>>,
}

impl Machine {
    /// Create the VM, load `image`, write the boot info and set up vCPU 0.
    pub fn new(config: MachineConfig, image: &Image) -> Result<Self, MachineError> {
        let mut vm = Vm::new(&config.kvm_path, config.mem_size)?;
        if let EngineConfig::Soft(soft) = config.engine {
            vm.l0_features |= nestbench_abi::cpuid::FEATURE_SOFT_VMX;
            // The capability MSRs come to L0 (RDMSR exits), whatever KVM knows of them.
            let first = nestbench_abi::report::VMX_MSR_FIRST;
            let count = nestbench_abi::report::VMX_MSR_COUNT as u32;
            crate::msr_filter::exit_ranges_to_userspace(&vm.fd, &[(first, count)])
                .map_err(|e| MachineError::Setup(e.to_string()))?;
            crate::soft::engine::publish_bitmaps(&vm.mem, soft.vmcs_shadowing).map_err(VmError::from)?;
        }
        let entry = match image {
            Image::Elf(path) => loader::load_elf(&vm.mem, path)?.entry,
            Image::Raw { gpa, bytes } => {
                vm.mem.write(*gpa, bytes).map_err(|_| MachineError::RawImage {
                    gpa: *gpa,
                    len: bytes.len(),
                    mem: vm.mem.size(),
                })?;
                *gpa
            }
        };
        let boot = BootInfo {
            magic: BOOT_MAGIC,
            abi_version: ABI_VERSION,
            scenario: config.scenario as u32,
            mem_size: vm.mem.size(),
            identity_map_size: IDENTITY_MAP_SIZE,
            trace_capacity: match (config.engine, &config.trace) {
                (EngineConfig::Soft(_), Some(t)) => t.capacity,
                _ => 0,
            },
            reserved0: 0,
            reserved: [0; 3],
            payload: match &config.payload {
                Some(p) => stage_payload(&vm.mem, p)?,
                None => nestbench_abi::payload::PayloadInfo::default(),
            },
        };
        vm.mem.write(BOOT_INFO, boot.as_bytes()).map_err(VmError::from)?;
        if let Some(c) = &config.vmentry_case {
            vm.mem.write(nestbench_abi::vmentry::CASE_GPA, c.as_bytes()).map_err(VmError::from)?;
        }
        let vcpu = vm.create_vcpu(config.cpl, entry, BOOT_STACK_TOP, BOOT_INFO)?;
        let nested_msrs = if config.engine.is_kvm() { Some(pass_vmx_through(&vm, &vcpu)?) } else { None };
        Ok(Self { vm, vcpu, config, nested_msrs })
    }

    /// Guest memory (for tests that inspect it after a run).
    #[must_use]
    pub fn mem(&self) -> &GuestMem {
        &self.vm.mem
    }

    /// Run to completion. `on_event` sees every event as it happens, on the caller's thread.
    pub fn run(self, mut on_event: impl FnMut(Event)) -> Result<RunReport, MachineError> {
        let Self { vm, vcpu, config, nested_msrs } = self;
        let vm_stats = vm.stats().ok();
        let vm_before = vm_stats.as_ref().and_then(|s| s.snapshot().ok());
        let (tx, rx) = mpsc::channel();
        let mem = vm.mem.clone();
        let thread = std::thread::Builder::new()
            .name("l0-vcpu0".into())
            .spawn(move || VcpuThread::new(vcpu, mem, config, nested_msrs, tx).run())
            .expect("spawning the vCPU thread");
        for ev in rx {
            on_event(ev);
        }
        let (mut report, vcpu_stats) =
            thread.join().map_err(|p| MachineError::VcpuThreadPanicked(panic_text(&*p)))??;
        let vm_delta = match (vm_stats, vm_before) {
            (Some(s), Some(before)) => s.snapshot().ok().map(|after| stats::delta(&before, &after)),
            _ => None,
        };
        report.kvm_stats = match (vm_delta, vcpu_stats) {
            (Some(vm), Some(vcpu)) => Some(KvmStats { vm, vcpu }),
            _ => None,
        };
        Ok(report)
    }
}

/// The kvm engine: check that KVM offers VMX or SVM; on VMX write the VMX capability MSRs
/// KVM lets a host restore on L1's vCPU (its CPUID already carries KVM's VMX or SVM bit:
/// `x86_setup::guest_cpuid`), and read back every one of them as L1 will see it.
fn pass_vmx_through(vm: &Vm, vcpu: &Vcpu) -> Result<Vec<KvmVmxMsr>, MachineError> {
    use crate::kvm_engine::caps;
    let supported = vm
        .kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| caps::NoNesting(format!("KVM_GET_SUPPORTED_CPUID failed: {e}")))?;
    let feature_msrs = caps::read_vmx_feature_msrs(&vm.kvm)?;
    let plan = caps::plan(supported.as_slice(), &feature_msrs)?;
    if plan.vmx_msrs.is_empty() {
        // SVM: nothing beyond the CPUID (`caps::plan`).
        return Ok(Vec::new());
    }
    let writes = plan.writes();
    let entries: Vec<kvm_bindings::kvm_msr_entry> =
        writes.iter().map(|&(index, data)| kvm_bindings::kvm_msr_entry { index, data, ..Default::default() }).collect();
    let msrs = kvm_bindings::Msrs::from_entries(&entries).map_err(|e| MachineError::Setup(format!("{e:?}")))?;
    let n = vcpu.fd().set_msrs(&msrs).map_err(|e| MachineError::Setup(format!("KVM_SET_MSRS (VMX MSRs): {e}")))?;
    if n != entries.len() {
        return Err(MachineError::Setup(format!(
            "KVM refused VMX capability MSR {:#x} = {:#x} for L1's vCPU (KVM_SET_MSRS set {n} of {}: {})",
            entries[n].index,
            entries[n].data,
            entries.len(),
            writes.iter().map(|(i, _)| format!("{i:#x}")).collect::<Vec<_>>().join(" ")
        )));
    }
    let reads: Vec<kvm_bindings::kvm_msr_entry> =
        plan.vmx_msrs.iter().map(|&(index, _)| kvm_bindings::kvm_msr_entry { index, ..Default::default() }).collect();
    let mut back = kvm_bindings::Msrs::from_entries(&reads).map_err(|e| MachineError::Setup(format!("{e:?}")))?;
    let n = vcpu.fd().get_msrs(&mut back).map_err(|e| MachineError::Setup(format!("KVM_GET_MSRS (VMX MSRs): {e}")))?;
    if n != reads.len() {
        return Err(MachineError::Setup(format!(
            "KVM listed VMX capability MSR {:#x} as a feature MSR but L1's vCPU does not report it (KVM_GET_MSRS read {n} of {})",
            reads[n].index,
            reads.len()
        )));
    }
    Ok(plan
        .vmx_msrs
        .iter()
        .zip(back.as_slice())
        .map(|(&(index, system), seen)| KvmVmxMsr {
            index,
            value: seen.data,
            written: caps::kvm_restores(index),
            system_value: (system != seen.data).then_some(system),
        })
        .collect())
}

/// Stage `p`'s image in L1 memory and describe it for the boot info (the soft engine and
/// the Bochs engine's RAM image).
pub(crate) fn stage_payload(
    mem: &GuestMem,
    p: &PayloadSpec,
) -> Result<nestbench_abi::payload::PayloadInfo, MachineError> {
    use nestbench_abi::payload::{L2_IMAGE_BASE, L2_IMAGE_MAX, PayloadInfo, STAGING_GPA};
    let staged = loader::stage_flat(mem, &p.elf, L2_IMAGE_BASE, L2_IMAGE_MAX, STAGING_GPA)?;
    let mut name = [0u8; 16];
    let n = p.name.len().min(16);
    name[..n].copy_from_slice(&p.name.as_bytes()[..n]);
    Ok(PayloadInfo {
        present: 1,
        cpl: p.cpl as u32,
        size: staged.end,
        entry: staged.entry,
        iterations: p.iterations,
        arg: p.arg,
        name,
        setup: p.setup.flags,
        pool_pages: p.setup.pool_pages.raw(),
    })
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Disassemble the first instruction of `bytes` at `rip` (Intel syntax), or "" if none.
#[must_use]
pub fn disassemble_one(bytes: &[u8], rip: u64) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    if !d.can_decode() {
        return String::new();
    }
    let insn = d.decode();
    if insn.is_invalid() {
        return "(invalid instruction)".into();
    }
    let mut out = String::new();
    IntelFormatter::new().format(&insn, &mut out);
    out
}

/// What the hypercall handler tells the run loop.
enum Flow {
    Continue,
    Stop(Outcome),
}

struct VcpuThread {
    vcpu: Vcpu,
    mem: GuestMem,
    config: MachineConfig,
    tx: mpsc::Sender<Event>,
    exits: BTreeMap<String, u64>,
    hypercalls: BTreeMap<String, u64>,
    /// The soft engine, with a KVM handle for VM2.
    soft: Option<(SoftVmx, kvm_ioctls::Kvm)>,
    /// The exit trace's drain side, when tracing was asked for.
    tracer: Option<Tracer>,
    /// The kvm engine: the VMX capability MSRs passed to L1.
    nested_msrs: Option<Vec<KvmVmxMsr>>,
    /// The kvm engine: KVM_RUN returns from L1 and from L2 (guest mode).
    userspace_exits: (u64, u64),
    /// L2 exits L1 handled, from its payload report.
    l1_handled_exits: u64,
}

impl VcpuThread {
    fn new(
        vcpu: Vcpu,
        mem: GuestMem,
        config: MachineConfig,
        nested_msrs: Option<Vec<KvmVmxMsr>>,
        tx: mpsc::Sender<Event>,
    ) -> Self {
        let tracer = config.trace.filter(|_| config.engine.soft().is_some()).map(Tracer::new);
        Self {
            vcpu,
            mem,
            config,
            tx,
            exits: BTreeMap::new(),
            hypercalls: BTreeMap::new(),
            soft: None,
            tracer,
            nested_msrs,
            userspace_exits: (0, 0),
            l1_handled_exits: 0,
        }
    }

    fn emit(&self, ev: Event) {
        // The receiver lives until the thread ends; a send error only means the caller is
        // gone, and then nobody wants the event.
        let _ = self.tx.send(ev);
    }

    fn run(mut self) -> Result<(RunReport, Option<stats::StatsDelta>), MachineError> {
        if let Some(cfg) = self.config.engine.soft() {
            let kvm = crate::vm::open_kvm(&self.config.kvm_path)?;
            let mut soft = SoftVmx::new(cfg.vmcs_shadowing);
            soft.set_memslot_limit(self.config.memslot_limit);
            // L1's CPUID is KVM's supported set (x86_setup::guest_cpuid keeps leaf 80000008H).
            let supported = kvm
                .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .map_err(|e| MachineError::Setup(format!("KVM_GET_SUPPORTED_CPUID (L1's MAXPHYADDR): {e}")))?;
            soft.set_maxphyaddr(crate::x86_setup::maxphyaddr(&supported));
            // Before binding L1's vCPU: the probe's vCPUs bind to this thread too.
            let host = crate::soft::host_exits::probe(&self.config.kvm_path).map_err(MachineError::Setup)?;
            soft.set_host_exits(host);
            self.soft = Some((soft, kvm));
        }
        let kicker = self.vcpu.bind_to_current_thread()?;
        let stats_fd = StatsFd::open(self.vcpu.fd()).ok();
        let before = stats_fd.as_ref().and_then(|s| s.snapshot().ok());
        let capture = match self.config.engine {
            EngineConfig::Kvm { tracepoints: true } => Some(start_capture()),
            EngineConfig::Kvm { tracepoints: false } => {
                Some(Err("not recorded (--kvm-tracepoints off: tracepoints add KVM instructions to every exit)".into()))
            }
            EngineConfig::NoVmx | EngineConfig::Soft(_) => None,
        };
        let watchdog = Watchdog::arm(kicker, self.config.timeout);
        let start = Instant::now();
        let outcome = loop {
            let t = Instant::now();
            let exit = self.vcpu.run()?;
            if let Some((soft, _)) = &mut self.soft {
                soft.note_l1_exit(t.elapsed());
            }
            if self.config.engine.is_kvm() {
                if self.vcpu.in_guest_mode() {
                    self.userspace_exits.1 += 1;
                } else {
                    self.userspace_exits.0 += 1;
                }
            }
            *self.exits.entry(exit_kind(&exit).to_owned()).or_default() += 1;
            if let Flow::Stop(o) = self.handle(exit, &watchdog)? {
                break o;
            }
        };
        let wall_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        drop(watchdog);
        self.drain_trace(true);
        let vcpu_delta = match (stats_fd, before) {
            (Some(s), Some(b)) => s.snapshot().ok().map(|a| stats::delta(&b, &a)),
            _ => None,
        };
        let kvm_engine = capture.map(|c| self.kvm_engine_section(c, vcpu_delta.as_ref().map(|d| &d.counters)));
        let report = RunReport {
            outcome,
            kvm_exits_total: self.exits.values().sum(),
            kvm_exits: self.exits,
            hypercalls: self.hypercalls,
            wall_ns,
            kvm_stats: None,
            soft: self.soft.map(|(s, _)| s.stats),
            bochs: None,
            trace: self.tracer.map(|t| t.stats),
            kvm_engine,
        };
        Ok((report, vcpu_delta))
    }

    fn rip(&self) -> u64 {
        self.vcpu.regs_now().map(|r| r.rip).unwrap_or(0)
    }

    /// The bytes at the guest's current RIP, through its page tables.
    fn bytes_at(&self, rip: u64) -> Vec<u8> {
        let cr3 = self.vcpu.sregs().map(|s| s.cr3).unwrap_or(0);
        paging::read_linear(&self.mem, cr3, rip, 15)
    }

    fn handle(&mut self, exit: Exit, watchdog: &Watchdog) -> Result<Flow, MachineError> {
        Ok(match exit {
            Exit::IoOut { port: PORT, size: 4, count: 1, data } => {
                let nr = u32::from_le_bytes(data[..4].try_into().expect("4-byte OUT"));
                self.hypercall(nr)?
            }
            Exit::MmioWrite { gpa: nestbench_abi::softvmx::DOORBELL_GPA, data } if self.soft.is_some() => {
                let (soft, kvm) = self.soft.as_mut().expect("checked by the guard");
                let fired = || watchdog.fired();
                match soft.doorbell(data.first().copied().unwrap_or(0), &mut self.vcpu, &self.mem, kvm, &fired) {
                    Ok(EntryOutcome::Resume) => {
                        if self.tracer.as_ref().is_some_and(Tracer::drains_per_entry) {
                            self.drain_trace(false);
                        }
                        Flow::Continue
                    }
                    Ok(EntryOutcome::Unsupported { what, why }) => Flow::Stop(Outcome::EngineUnsupported { what, why }),
                    Ok(EntryOutcome::Timeout { regs }) => {
                        let budget_ms = u64::try_from(self.config.timeout.as_millis()).unwrap_or(u64::MAX);
                        Flow::Stop(Outcome::Timeout {
                            budget_ms,
                            regs: crate::events::gprs(&regs),
                            disassembly: "(in L2)".into(),
                        })
                    }
                    Err(e) => Flow::Stop(Outcome::EngineUnsupported { what: "soft engine".into(), why: e.to_string() }),
                }
            }
            Exit::RdMsr { index } if self.soft.is_some() => {
                let (soft, _) = self.soft.as_mut().expect("checked by the guard");
                // A capability MSR, or #GP like any MSR this VM does not have.
                self.vcpu.set_rdmsr_result(soft.rdmsr(index).ok_or(()));
                Flow::Continue
            }
            Exit::WrMsr { .. } if self.soft.is_some() => {
                // The capability MSRs are read-only (SDM A.1): WRMSR is #GP.
                self.vcpu.set_wrmsr_result(false);
                Flow::Continue
            }
            Exit::IoIn { port: PORT, .. } => {
                // An IN from the hypercall port: the IN's data becomes RAX, so the status
                // goes there.
                self.vcpu.set_in_data(&(Status::BadAccess as u32).to_le_bytes());
                Flow::Continue
            }
            Exit::Interrupted if watchdog.fired() => {
                let regs = self.vcpu.regs_now()?;
                let disassembly = disassemble_one(&self.bytes_at(regs.rip), regs.rip);
                let budget_ms = u64::try_from(self.config.timeout.as_millis()).unwrap_or(u64::MAX);
                Flow::Stop(Outcome::Timeout { budget_ms, regs: crate::events::gprs(&regs), disassembly })
            }
            // A stray signal: go back in.
            Exit::Interrupted => Flow::Continue,
            Exit::Shutdown => {
                let regs = self.vcpu.regs_now()?;
                let s = self.vcpu.sregs()?;
                Flow::Stop(Outcome::TripleFault {
                    regs: crate::events::gprs(&regs),
                    cr0: s.cr0,
                    cr3: s.cr3,
                    cr4: s.cr4,
                    idt: (s.idt.base, s.idt.limit),
                })
            }
            Exit::InternalError { suberror: SUBERROR_EMULATION, data } => {
                let rip = self.rip();
                // struct emulation_failure (include/uapi/linux/kvm.h): data[0] = flags; with
                // KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES the next 16 bytes are
                // insn_size then insn_bytes[15]. Without the flag, read them ourselves.
                let insn_bytes = match data.as_slice() {
                    [flags, w1, w2, ..] if flags & EMULATION_FLAG_INSN_BYTES != 0 => {
                        let raw: Vec<u8> = [w1, w2].iter().flat_map(|w| w.to_le_bytes()).collect();
                        let n = usize::from(raw[0]).min(15);
                        raw[1..=n].to_vec()
                    }
                    _ => self.bytes_at(rip),
                };
                let disassembly = disassemble_one(&insn_bytes, rip);
                Flow::Stop(Outcome::EmulationFailure { rip, insn_bytes, disassembly })
            }
            Exit::InternalError { suberror, data } => {
                Flow::Stop(Outcome::InternalError { suberror, data, rip: self.rip() })
            }
            Exit::Hlt => Flow::Stop(Outcome::Halted { rip: self.rip() }),
            Exit::FailEntry { reason } => Flow::Stop(Outcome::EntryFailed { reason }),
            other => Flow::Stop(Outcome::UnhandledExit { exit: format!("{other:?}"), rip: self.rip() }),
        })
    }

    /// Serve hypercall `nr` (EAX) with arguments from the registers; write the status to RAX.
    fn hypercall(&mut self, nr: u32) -> Result<Flow, MachineError> {
        let mut regs = self.vcpu.regs()?;
        let (a0, a1, a2) = (regs.rdi, regs.rsi, regs.r8);
        let call = Call::from_raw(nr);
        *self.hypercalls.entry(call.map_or_else(|| format!("unknown({nr})"), |c| format!("{c:?}"))).or_default() += 1;
        let result: Result<Flow, (Status, String)> = match call {
            None => Err((Status::UnknownCall, format!("unknown hypercall number {nr}"))),
            Some(Call::Exit) => Ok(Flow::Stop(Outcome::Exited { status: a0 })),
            Some(Call::ConsoleWrite) => self.console_write(a0, a1).map(|()| Flow::Continue),
            Some(Call::Report) => self.report(a0, a1, a2).map(|()| Flow::Continue),
            Some(Call::Exception) => self
                .read_pod::<ExceptionReport>(a0, size_of::<ExceptionReport>() as u64)
                .map(|r| Flow::Stop(Outcome::from_exception(&r))),
            Some(Call::TraceRing) => self.register_trace(a0, a1),
            Some(Call::Vmx) => {
                let done = self.soft.as_mut().map(|(soft, _)| soft.vmx_hypercall(&self.mem, a0, a1, a2));
                match done {
                    Some((word, value, note)) => {
                        regs.rdi = word;
                        regs.rsi = value;
                        if let Some(text) = note {
                            self.emit(Event::Note { text });
                        }
                        Ok(Flow::Continue)
                    }
                    None => Err((
                        Status::UnknownCall,
                        "Vmx hypercall, but this L0 does not provide soft VMX (no FEATURE_SOFT_VMX)".into(),
                    )),
                }
            }
        };
        let (status, flow) = match result {
            Ok(flow) => (Status::Ok, flow),
            Err((status, detail)) => {
                self.emit(Event::HypercallError { call: nr, status: format!("{status:?}"), detail, rip: regs.rip });
                (status, Flow::Continue)
            }
        };
        regs.rax = status as u64;
        self.vcpu.set_regs(&regs)?;
        Ok(flow)
    }

    /// The kvm engine's section: module parameters, the VMX MSRs L1 got, the attribution
    /// from the vCPU's KVM statistics `counters` and the userspace exits by level, and the
    /// tracepoint counts of this vCPU thread.
    fn kvm_engine_section(
        &mut self,
        capture: Result<crate::kvm_engine::tracefs::Capture, String>,
        counters: Option<&BTreeMap<String, u64>>,
    ) -> crate::events::KvmEngineSection {
        // SAFETY: gettid has no preconditions.
        let tid = u32::try_from(unsafe { libc::gettid() }).ok();
        let (tracepoints, tracepoints_unavailable) = match capture.and_then(crate::kvm_engine::tracefs::Capture::finish)
        {
            Ok(text) => (Some(crate::kvm_engine::tracepoints::count(&text, tid)), None),
            Err(why) => (None, Some(why)),
        };
        crate::events::KvmEngineSection {
            kvm_intel_params: crate::host::module_params("kvm_intel").unwrap_or_default(),
            kvm_amd_params: crate::host::module_params("kvm_amd").unwrap_or_default(),
            vmx_msrs: self.nested_msrs.take().unwrap_or_default(),
            attribution: crate::kvm_engine::attribution::attribute(
                counters.unwrap_or(&BTreeMap::new()),
                self.l1_handled_exits,
                self.userspace_exits,
            ),
            tracepoints,
            tracepoints_unavailable,
        }
    }

    /// Drain the trace ring and emit what is due (everything at the end of the run).
    fn drain_trace(&mut self, at_end: bool) {
        let (Some(tracer), Some((soft, _))) = (self.tracer.as_mut(), self.soft.as_mut()) else { return };
        if let Err(e) = tracer.drain(&self.mem, &mut soft.stamps, at_end) {
            let _ = self.tx.send(Event::TraceError { message: e.to_string() });
        }
        let exits = &self.exits;
        let l0 = || crate::trace::L0Counters {
            l1_vm_kvm_exits: exits.values().sum(),
            l2_vm_kvm_exits: soft.stats.l2_kvm_exits,
            l0_only_exits: soft.stats.l0_only_exits,
            reflected_exits: soft.stats.reflected_total,
        };
        if let Some(batch) = tracer.take_batch(at_end, l0) {
            let _ = self.tx.send(Event::Trace(batch));
        }
    }

    /// L1's `TraceRing` hypercall.
    fn register_trace(&mut self, gpa: u64, capacity: u64) -> Result<Flow, (Status, String)> {
        let (Some(tracer), Some((soft, _))) = (self.tracer.as_mut(), self.soft.as_mut()) else {
            return Err((Status::BadArgument, "TraceRing, but tracing was not asked for (no --trace)".into()));
        };
        let offset = crate::trace::tsc_offset(self.vcpu.fd()).unwrap_or(0);
        tracer.register(&self.mem, gpa, capacity, offset).map_err(|e| match e {
            crate::trace::RegisterError::Argument(m) => (Status::BadArgument, m),
            crate::trace::RegisterError::Address(m) => (Status::BadAddress, m),
        })?;
        soft.stamps.start();
        let tsc_khz = self.vcpu.fd().get_tsc_khz().map_or(0, u64::from);
        self.emit(Event::TraceStart { capacity, ring_gpa: gpa, tsc_khz, tsc_offset: offset });
        Ok(Flow::Continue)
    }

    fn read_pod<T: Pod>(&self, gpa: u64, len: u64) -> Result<T, (Status, String)> {
        if len != size_of::<T>() as u64 {
            return Err((
                Status::BadArgument,
                format!("length {len} is not the {} bytes of the structure", size_of::<T>()),
            ));
        }
        let bytes = self.mem.read_vec(gpa, len).map_err(|e| (Status::BadAddress, e.to_string()))?;
        Ok(T::from_bytes(&bytes).expect("length checked above"))
    }

    fn console_write(&mut self, gpa: u64, len: u64) -> Result<(), (Status, String)> {
        if len > CONSOLE_MAX {
            return Err((Status::BadArgument, format!("console write of {len} bytes exceeds {CONSOLE_MAX}")));
        }
        let bytes = self.mem.read_vec(gpa, len).map_err(|e| (Status::BadAddress, e.to_string()))?;
        let text = String::from_utf8_lossy(&bytes);
        self.emit(Event::Console { text: text.strip_suffix('\n').unwrap_or(&text).to_owned() });
        Ok(())
    }

    fn report(&mut self, kind: u64, gpa: u64, len: u64) -> Result<(), (Status, String)> {
        // The checks in the order L1 has always seen them: kind, length, address; the
        // decoding is the one the Bochs engine shares (`Event::from_report`).
        let expected = crate::events::report_len(kind)
            .ok_or_else(|| (Status::BadArgument, format!("unknown report kind {kind}")))?;
        if len != expected as u64 {
            return Err((Status::BadArgument, format!("length {len} is not the {expected} bytes of the structure")));
        }
        let bytes = self.mem.read_vec(gpa, len).map_err(|e| (Status::BadAddress, e.to_string()))?;
        let ev = Event::from_report(kind, &bytes).map_err(|e| (Status::BadArgument, e.to_string()))?;
        if let Event::PayloadRun(p) = &ev {
            self.l1_handled_exits = p.exits.values().sum();
        }
        self.emit(ev);
        Ok(())
    }
}

/// Start capturing KVM's nested tracepoints for the kvm engine, or say why not.
fn start_capture() -> Result<crate::kvm_engine::tracefs::Capture, String> {
    let root = crate::kvm_engine::tracefs::root()
        .ok_or("tracefs with KVM's events is not mounted (mount -t tracefs nodev /sys/kernel/tracing, as root)")?;
    crate::kvm_engine::tracefs::Capture::start(&root)
}

/// A short name for an exit, for the per-kind counts.
#[must_use]
pub fn exit_kind(e: &Exit) -> &'static str {
    match e {
        Exit::IoOut { .. } => "io_out",
        Exit::IoIn { .. } => "io_in",
        Exit::MmioRead { .. } => "mmio_read",
        Exit::MmioWrite { .. } => "mmio_write",
        Exit::Hlt => "hlt",
        Exit::Shutdown => "shutdown",
        Exit::RdMsr { .. } => "rdmsr",
        Exit::WrMsr { .. } => "wrmsr",
        Exit::InternalError { .. } => "internal_error",
        Exit::FailEntry { .. } => "fail_entry",
        Exit::Debug => "debug",
        Exit::Interrupted => "interrupted",
        Exit::Other(_) => "other",
    }
}
