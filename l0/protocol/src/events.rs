//! What a run produces: events while it runs, an [`Outcome`] and a [`RunReport`] at the end.
//! All of it serializes to the JSON event stream `nestbench-l0` writes on stdout
//! (see `docs/event-stream.md`; version [`STREAM_VERSION`]).

use std::collections::BTreeMap;

use nestbench_abi::cpuid as hv;
use nestbench_abi::report::{ExceptionReport, MsrProbe, MsrStatus, ProbeReport, exception_name};
use serde::{Deserialize, Serialize};

use crate::stats::StatsDelta;

/// Version of the l0 -> orchestrator event stream (2: the `case_capabilities` event).
pub const STREAM_VERSION: u32 = 2;

/// Something L1 or L0 said during a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A line (or a full buffer) of L1 console output.
    Console {
        /// The text, without a trailing newline.
        text: String,
    },
    /// L1's CPU probe.
    Probe(Probe),
    /// L1's verdict on the VMX instruction of a must-fail scenario.
    Verdict {
        /// The scenario, by name.
        scenario: String,
        /// What the instruction did.
        kind: VerdictKind,
        /// VM-instruction error (fail_valid).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<u32>,
        /// Exit reason (entered, entry_failure).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_reason: Option<u32>,
        /// Exit qualification (entry_failure).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        qualification: Option<u64>,
    },
    /// L1's report on the payload it ran.
    PayloadRun(Box<PayloadRun>),
    /// Before a VM-entry case's steps: the parts of its VMCS the engine's capability MSRs do
    /// not allow (`nestbench_abi::vmentry::outside`, by name; empty: none).
    CaseCapabilities {
        /// The VMCS fields outside the capability MSRs.
        outside: Vec<String>,
    },
    /// Something L0 noted about the guest that is not an error (for example a VMX
    /// instruction that would have been #UD on hardware).
    Note {
        /// What.
        text: String,
    },
    /// A hypercall L0 refused; the guest got `status` in RAX and went on.
    HypercallError {
        /// The call number (EAX).
        call: u32,
        /// The status returned, by name.
        status: String,
        /// What was wrong.
        detail: String,
        /// Guest RIP of the OUT.
        rip: u64,
    },
    /// L0 accepted L1's exit-trace ring; `trace` batches follow.
    TraceStart {
        /// Records in the ring.
        capacity: u64,
        /// Its L1-physical address.
        ring_gpa: u64,
        /// The host TSC's rate (every time in a record is a host TSC value), or 0 if KVM
        /// does not say.
        tsc_khz: u64,
        /// L1's TSC minus the host's, which L0 subtracted from L1's times.
        tsc_offset: i64,
    },
    /// Records drained from the ring ([`crate::trace::TraceBatch`]).
    Trace(crate::trace::TraceBatch),
    /// Tracing stopped because L1's ring broke the protocol (or could not be read).
    TraceError {
        /// What was wrong.
        message: String,
    },
    /// The stream's first line: versions and what runs.
    Hello(Hello),
    /// The stream's last line after a run: its report.
    End(End),
    /// The stream's last line when l0 could not run (bad flags, set-up failure).
    Error {
        /// What went wrong, with its causes.
        message: String,
    },
}

/// Where L1 (or, single-level, the payload) runs: the engine axis (docs/architecture.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// L0 provides VMX to L1 in userspace (docs/soft-engine.md).
    Soft,
    /// L1 on the host kernel's nested VMX (docs/kvm-engine.md).
    Kvm,
    /// L1 as the root hypervisor on Bochs' emulated CPU (docs/bochs-engine.md).
    Bochs,
    /// No L1: the payload as a plain KVM guest, the twin of a nested run.
    SingleLevel,
}

impl Engine {
    /// Every engine, in the order results list them.
    pub const ALL: [Self; 4] = [Self::Soft, Self::Kvm, Self::Bochs, Self::SingleLevel];

    /// The name on the command line and in every result.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Soft => "soft",
            Self::Kvm => "kvm",
            Self::Bochs => "bochs",
            Self::SingleLevel => "single_level",
        }
    }

    /// The engine named `s`.
    #[must_use]
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == s)
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The `hello` line: the stream and ABI versions, then what this invocation runs (each
/// field only where the subcommand has it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`STREAM_VERSION`].
    pub stream_version: u32,
    /// `nestbench_abi::ABI_VERSION`.
    pub abi_version: u32,
    /// nestbench-l0's version.
    pub l0_version: String,
    /// The engine (absent: a boot on the host's KVM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// Bochs' CPU model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// The payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Its iterations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u64>,
    /// VMCS shadowing (soft engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmcs_shadowing: Option<bool>,
    /// Whether the exit trace is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<bool>,
    /// The VM-entry case (`vmentry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
    /// L1's image (`boot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l1_image: Option<String>,
    /// L1's memory, bytes (`boot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size: Option<u64>,
    /// The run's time budget.
    pub timeout_ms: u64,
}

impl Hello {
    /// The versions of this build, nothing else yet.
    #[must_use]
    pub fn new(l0_version: &str, timeout_ms: u64) -> Self {
        Self {
            stream_version: STREAM_VERSION,
            abi_version: nestbench_abi::ABI_VERSION,
            l0_version: l0_version.to_owned(),
            timeout_ms,
            ..Self::default()
        }
    }
}

/// The `end` line: the report of a nested run (or a boot), or a single-level run's result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct End {
    /// A run with L1 (every engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Box<RunReport>>,
    /// A single-level run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_level: Option<crate::single_level::SingleLevelRun>,
}

/// What L1's VMX instruction did in a must-fail scenario or VM-entry case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// VM entry succeeded (the exit reason says which exit followed).
    Entered,
    /// VMfailInvalid.
    FailInvalid,
    /// VMfailValid (with its error number).
    FailValid,
    /// A VM exit with bit 31 set: VM-entry failure (with reason and qualification).
    EntryFailure,
    /// A step that must succeed did.
    Succeeded,
    /// The case was skipped (its error says why).
    Skipped,
    /// L1 reported a kind this L0 does not know.
    Invalid,
}

impl VerdictKind {
    /// Its name on the stream.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Entered => "entered",
            Self::FailInvalid => "fail_invalid",
            Self::FailValid => "fail_valid",
            Self::EntryFailure => "entry_failure",
            Self::Succeeded => "succeeded",
            Self::Skipped => "skipped",
            Self::Invalid => "invalid",
        }
    }
}

/// Whether L1 could read an MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MsrState {
    /// Read; the value is there.
    Ok,
    /// RDMSR raised #GP.
    Gp,
    /// Not read.
    NotRead,
    /// L1 reported a status this L0 does not know.
    Invalid,
}

impl MsrState {
    /// Its name on the stream.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Gp => "gp",
            Self::NotRead => "not_read",
            Self::Invalid => "invalid",
        }
    }
}

/// Compared with its name on the stream (`"ok"`, `"gp"`, `"not_read"`).
impl PartialEq<&str> for MsrState {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

impl Event {
    /// Decode L1's verdict report.
    #[must_use]
    pub fn from_verdict(v: &nestbench_abi::report::Verdict) -> Self {
        use nestbench_abi::report::VerdictKind as Abi;
        let scenario = nestbench_abi::boot::Scenario::from_raw(v.scenario)
            .map_or_else(|| format!("unknown({})", v.scenario), |s| format!("{s:?}"));
        let kind = Abi::from_raw(v.kind);
        Self::Verdict {
            scenario,
            kind: match kind {
                Some(Abi::Entered) => VerdictKind::Entered,
                Some(Abi::FailInvalid) => VerdictKind::FailInvalid,
                Some(Abi::FailValid) => VerdictKind::FailValid,
                Some(Abi::EntryFailure) => VerdictKind::EntryFailure,
                Some(Abi::Succeeded) => VerdictKind::Succeeded,
                Some(Abi::Skipped) => VerdictKind::Skipped,
                None => VerdictKind::Invalid,
            },
            error: matches!(kind, Some(Abi::FailValid | Abi::Skipped)).then_some(v.error),
            exit_reason: matches!(kind, Some(Abi::Entered | Abi::EntryFailure)).then_some(v.exit_reason),
            qualification: (kind == Some(Abi::EntryFailure)).then_some(v.qualification),
        }
    }
}

/// Why the bytes of a structured report could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportDecodeError {
    /// The `ReportKind` number is not one this L0 knows.
    #[error("unknown report kind {0}")]
    UnknownKind(u64),
    /// The bytes are not the size of the structure the kind names.
    #[error("length {len} is not the {expected} bytes of the structure")]
    Length {
        /// Bytes received.
        len: u64,
        /// Bytes of the structure.
        expected: usize,
    },
}

/// The size in bytes of the structure a report of `kind` carries (`None`: unknown kind).
#[must_use]
pub fn report_len(kind: u64) -> Option<usize> {
    use nestbench_abi::report::ReportKind;
    Some(match ReportKind::from_raw(kind)? {
        ReportKind::Probe => size_of::<ProbeReport>(),
        ReportKind::PayloadRun => size_of::<nestbench_abi::payload::PayloadReport>(),
        ReportKind::Verdict => size_of::<nestbench_abi::report::Verdict>(),
        ReportKind::CaseCapabilities => size_of::<nestbench_abi::vmentry::CaseCapabilities>(),
    })
}

impl Event {
    /// Decode the structure of an L1 report (a `Report` hypercall's buffer on the KVM
    /// engines, the hex of an `@@NB1 report` line on Bochs) into its event: the one
    /// decoding every engine shares.
    pub fn from_report(kind: u64, bytes: &[u8]) -> Result<Self, ReportDecodeError> {
        use nestbench_abi::Pod;
        use nestbench_abi::report::ReportKind;
        let expected = report_len(kind).ok_or(ReportDecodeError::UnknownKind(kind))?;
        if bytes.len() != expected {
            return Err(ReportDecodeError::Length { len: bytes.len() as u64, expected });
        }
        let exact = "length checked above";
        Ok(match ReportKind::from_raw(kind).ok_or(ReportDecodeError::UnknownKind(kind))? {
            ReportKind::Probe => Self::Probe(Probe::from(&ProbeReport::from_bytes(bytes).expect(exact))),
            ReportKind::Verdict => Self::from_verdict(&nestbench_abi::report::Verdict::from_bytes(bytes).expect(exact)),
            ReportKind::CaseCapabilities => {
                let c = nestbench_abi::vmentry::CaseCapabilities::from_bytes(bytes).expect(exact);
                let outside = nestbench_abi::vmentry::outside::NAMES
                    .iter()
                    .filter(|(bit, _)| c.outside & bit != 0)
                    .map(|(_, name)| (*name).to_owned())
                    .collect();
                Self::CaseCapabilities { outside }
            }
            ReportKind::PayloadRun => Self::PayloadRun(Box::new(PayloadRun::from(
                &nestbench_abi::payload::PayloadReport::from_bytes(bytes).expect(exact),
            ))),
        })
    }
}

/// One L2 exit as L1 saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit reason (full 32 bits).
    pub reason: u32,
    /// Its name.
    pub reason_name: String,
    /// Exit qualification.
    pub qualification: u64,
    /// Guest RIP, as an offset into the payload image.
    pub rip_offset: u64,
    /// VM-exit instruction length.
    pub insn_len: u32,
    /// VM-exit instruction information.
    pub insn_info: u32,
    /// Guest-linear address.
    pub guest_linear: u64,
}

/// What the payload measured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadResults {
    /// Iterations done.
    pub iterations: u64,
    /// Sum of per-iteration cycles.
    pub total_cycles: u64,
    /// Smallest per-iteration cycles.
    pub min_cycles: u64,
    /// Largest per-iteration cycles.
    pub max_cycles: u64,
    /// Failed payload checks.
    pub failures: u64,
    /// Log2 histogram of per-iteration cycles: `(bucket, count)` for non-empty buckets;
    /// bucket b counts [2^b, 2^(b+1)).
    pub hist: Vec<(usize, u64)>,
}

/// L1's report on a payload run, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRun {
    /// The payload's status (0 = ok).
    pub status: u64,
    /// L2 exits L1 handled, by reason name.
    pub exits: BTreeMap<String, u64>,
    /// L1's VMREAD/VMWRITE executions while handling exits.
    pub vmx_accesses: u32,
    /// The payload's results page (`None` if the payload never wrote it).
    pub results: Option<PayloadResults>,
    /// The first exit records.
    pub exit_records: Vec<ExitRecord>,
    /// The virtualization extension L1 ran L2 with: `vmx` or `svm` (absent in results of
    /// builds before SVM: `vmx`).
    #[serde(default = "vmx")]
    pub vendor: String,
}

fn vmx() -> String {
    "vmx".into()
}

impl From<&nestbench_abi::payload::PayloadResults> for PayloadResults {
    fn from(r: &nestbench_abi::payload::PayloadResults) -> Self {
        Self {
            iterations: r.iterations,
            total_cycles: r.total_cycles,
            min_cycles: r.min_cycles,
            max_cycles: r.max_cycles,
            failures: r.failures,
            hist: r.hist.iter().copied().enumerate().filter(|(_, c)| *c > 0).collect(),
        }
    }
}

/// The name of a raw exit-reason field in every output: the kernel's
/// ([`ExitReason::kernel_name`](nestbench_abi::vmx::ExitReason::kernel_name), as the `kvm_exit`
/// tracepoint and `perf kvm stat` print it), `reason N` for a number the SDM does not define,
/// and ` (VM-entry failure)` after it when bit 31 is set.
#[must_use]
pub fn reason_name(reason: u32) -> String {
    let basic = (reason & 0xFFFF) as u16;
    let name = nestbench_abi::vmx::ExitReason::from_raw(basic)
        .map_or_else(|| format!("reason {basic}"), |r| r.kernel_name().to_owned());
    if reason & (1 << 31) != 0 { format!("{name} (VM-entry failure)") } else { name }
}

/// The name of an SVM EXITCODE (low 32 bits) in every output: the kernel's
/// (`SVM_EXIT_REASONS`, as `kvm_exit` prints it on AMD hosts), `exit code 0xN` for one the
/// ABI does not name.
#[must_use]
pub fn svm_code_name(code: u32) -> String {
    nestbench_abi::svm::code_name(code).to_string()
}

impl From<&nestbench_abi::payload::PayloadReport> for PayloadRun {
    fn from(r: &nestbench_abi::payload::PayloadReport) -> Self {
        use nestbench_abi::payload::Vendor;
        let n = (r.records as usize).min(r.exit_records.len());
        let res = &r.results;
        let svm = Vendor::from_raw(r.vendor) == Some(Vendor::Svm);
        // On SVM the counts are by kind (the VMX reason of the same event), named by the
        // kind's SVM exit code: RDMSR and WRMSR add up under `msr`.
        let kind_name = |kind: usize| {
            if svm {
                nestbench_abi::svm::code_of_kind(kind as u16)
                    .map_or_else(|| format!("kind {kind}"), |c| c.kernel_name().to_owned())
            } else {
                reason_name(kind as u32)
            }
        };
        let mut exits = BTreeMap::new();
        for (kind, c) in r.exits_by_reason.iter().enumerate().filter(|(_, c)| **c > 0) {
            *exits.entry(kind_name(kind)).or_default() += u64::from(*c);
        }
        Self {
            status: r.status,
            exits,
            vendor: if svm { "svm" } else { "vmx" }.into(),
            vmx_accesses: r.vmx_accesses,
            results: (res.magic == nestbench_abi::payload::RESULTS_MAGIC).then(|| PayloadResults::from(res)),
            exit_records: r.exit_records[..n]
                .iter()
                .map(|e| ExitRecord {
                    reason: e.reason,
                    reason_name: if svm { svm_code_name(e.reason) } else { reason_name(e.reason) },
                    qualification: e.qualification,
                    rip_offset: e.rip_offset,
                    insn_len: e.insn_len,
                    insn_info: e.insn_info,
                    guest_linear: e.guest_linear,
                })
                .collect(),
        }
    }
}

/// One MSR as L1 read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msr {
    /// MSR index.
    pub index: u32,
    /// Whether it was read.
    pub status: MsrState,
    /// The value, when read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
}

impl From<MsrProbe> for Msr {
    fn from(m: MsrProbe) -> Self {
        let (status, value) = match MsrStatus::from_raw(m.status) {
            Some(MsrStatus::Ok) => (MsrState::Ok, Some(m.value)),
            Some(MsrStatus::GeneralProtection) => (MsrState::Gp, None),
            Some(MsrStatus::NotRead) => (MsrState::NotRead, None),
            None => (MsrState::Invalid, None),
        };
        Self { index: m.index, status, value }
    }
}

/// L1's CPU probe, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// CPUID vendor string.
    pub vendor: String,
    /// CPUID.1:EAX.
    pub family_model_stepping: u32,
    /// CPUID.1:ECX.VMX.
    pub vmx: bool,
    /// CPUID.8000_0001:ECX.SVM.
    pub svm: bool,
    /// CPUID.1:ECX.hypervisor.
    pub hypervisor_bit: bool,
    /// CPUID.4000_0000 signature.
    pub hypervisor_signature: String,
    /// Whether that signature is nestbench's L0.
    pub nestbench_l0: bool,
    /// CPUID.4000_0000:EAX.
    pub hypervisor_max_leaf: u32,
    /// CPUID.4000_0001:EAX.
    pub l0_abi_version: u32,
    /// CPUID.4000_0001:EBX.
    pub l0_features: u32,
    /// CPUID.4000_0001:ECX.
    pub l0_hypercall_port: u32,
    /// CR0 / CR4 / EFER as L1 runs.
    pub cr0: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def_type: Msr,
    /// IA32_FEATURE_CONTROL.
    pub feature_control: Msr,
    /// IA32_VMX_BASIC .. IA32_VMX_VMFUNC.
    pub vmx_msrs: Vec<Msr>,
}

fn ascii(b: &[u8]) -> String {
    b.iter().map(|&c| if c.is_ascii_graphic() || c == b' ' { c as char } else { '.' }).collect()
}

impl From<&ProbeReport> for Probe {
    fn from(r: &ProbeReport) -> Self {
        Self {
            vendor: ascii(&r.vendor),
            family_model_stepping: r.cpuid1_eax,
            vmx: r.cpuid1_ecx & hv::CPUID1_ECX_VMX != 0,
            svm: r.ext1_ecx & hv::CPUID_EXT1_ECX_SVM != 0,
            hypervisor_bit: r.cpuid1_ecx & hv::CPUID1_ECX_HYPERVISOR != 0,
            hypervisor_signature: ascii(&r.hv_signature),
            nestbench_l0: r.hv_signature == hv::SIGNATURE,
            hypervisor_max_leaf: r.hv_max_leaf,
            l0_abi_version: r.hv_abi_version,
            l0_features: r.hv_features,
            l0_hypercall_port: r.hv_hypercall_port,
            cr0: r.cr0,
            cr4: r.cr4,
            efer: r.efer,
            mtrr_def_type: r.mtrr_def_type.into(),
            feature_control: r.feature_control.into(),
            vmx_msrs: r.vmx_msrs.iter().copied().map(Msr::from).collect(),
        }
    }
}

/// General registers, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Gprs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The guest made the Exit hypercall.
    Exited {
        /// Its status (0 = success).
        status: u64,
    },
    /// L1 caught an exception it did not expect and reported it.
    GuestException {
        /// Vector.
        vector: u64,
        /// Mnemonic (#PF, #GP, ...).
        name: String,
        /// Error code (0 when the vector has none).
        error_code: u64,
        /// RIP of the fault.
        rip: u64,
        /// CR2 at the fault.
        cr2: u64,
        /// RSP at the fault.
        rsp: u64,
        /// RFLAGS at the fault.
        rflags: u64,
        /// RAX..R15 at the fault.
        gprs: Vec<u64>,
    },
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault {
        /// Registers at the shutdown.
        regs: Gprs,
        /// CR0.
        cr0: u64,
        /// CR3.
        cr3: u64,
        /// CR4.
        cr4: u64,
        /// IDT base and limit.
        idt: (u64, u16),
    },
    /// KVM could not emulate an instruction.
    EmulationFailure {
        /// Guest RIP.
        rip: u64,
        /// The instruction bytes at RIP (from KVM when it supplies them, else read by L0
        /// through the guest's page tables).
        insn_bytes: Vec<u8>,
        /// Those bytes disassembled.
        disassembly: String,
    },
    /// Another KVM internal error.
    InternalError {
        /// internal.suberror.
        suberror: u32,
        /// internal.data.
        data: Vec<u64>,
        /// Guest RIP.
        rip: u64,
    },
    /// The watchdog stopped a guest that exceeded its time budget (or hung in KVM_RUN).
    Timeout {
        /// The budget, in milliseconds.
        budget_ms: u64,
        /// Registers when it was stopped.
        regs: Gprs,
        /// The instruction at RIP, disassembled (empty if unreadable).
        disassembly: String,
    },
    /// The guest halted with nothing to wake it.
    Halted {
        /// RIP after the HLT.
        rip: u64,
    },
    /// An exit this VM does not serve (I/O to another port, MMIO, ...).
    UnhandledExit {
        /// The exit, described.
        exit: String,
        /// Guest RIP.
        rip: u64,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    EntryFailed {
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// An engine that runs L1 in another program (Bochs) stopped before L1 said how its
    /// run ended (no exit or exception line).
    EngineStopped {
        /// The engine (`bochs`).
        engine: String,
        /// What happened to it (exit status or signal, and what it said).
        why: String,
    },
    /// The engine met a valid setting or an L2 event it cannot honour (never a fake VMfail).
    EngineUnsupported {
        /// The VMCS field or event.
        what: String,
        /// Why.
        why: String,
    },
}

impl Outcome {
    /// An exception L1 reported.
    #[must_use]
    pub fn from_exception(r: &ExceptionReport) -> Self {
        Self::GuestException {
            vector: r.vector,
            name: exception_name(r.vector).to_owned(),
            error_code: r.error_code,
            rip: r.rip,
            cr2: r.cr2,
            rsp: r.rsp,
            rflags: r.rflags,
            gprs: r.gprs.to_vec(),
        }
    }

    /// Whether this is a clean exit with status 0.
    #[must_use]
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Exited { status: 0 })
    }
}

/// KVM statistics deltas over a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmStats {
    /// The VM's statistics.
    pub vm: StatsDelta,
    /// vCPU 0's statistics.
    pub vcpu: StatsDelta,
}

/// The end of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// How it ended.
    pub outcome: Outcome,
    /// KVM_RUN returns L0 saw ("KVM exits"), by kind.
    pub kvm_exits: BTreeMap<String, u64>,
    /// Their total.
    pub kvm_exits_total: u64,
    /// Hypercalls served, by call.
    pub hypercalls: BTreeMap<String, u64>,
    /// Wall-clock time from the first KVM_RUN to the end of the run, in nanoseconds.
    pub wall_ns: u64,
    /// KVM binary statistics deltas (`None` when the host has no KVM_GET_STATS_FD).
    pub kvm_stats: Option<KvmStats>,
    /// The soft engine's counters, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft: Option<crate::soft::SoftStats>,
    /// What the Bochs engine saw, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bochs: Option<crate::bochs::BochsSection>,
    /// The exit trace's counters, when tracing was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::TraceStats>,
    /// The kvm engine's attribution, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm_engine: Option<KvmEngineSection>,
}

/// What the kvm engine saw (docs/kvm-engine.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KvmEngineSection {
    /// kvm_intel's `nested`, `ept`, `enable_shadow_vmcs` (and the rest of its parameters),
    /// so a result says which Turtles ablation it is.
    pub kvm_intel_params: BTreeMap<String, String>,
    /// kvm_amd's parameters (`nested`, `npt`, `nrips`, `vgif`, `avic`, `lbrv`, `vls`, ...)
    /// on an AMD host: empty where kvm_amd is not loaded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kvm_amd_params: BTreeMap<String, String>,
    /// The VMX capability MSRs as L1's vCPU reports them after the pass-through, each
    /// saying whether L0 wrote it or KVM derived it.
    pub vmx_msrs: Vec<crate::kvm_engine::KvmVmxMsr>,
    /// From KVM's statistics and the exits L0 saw.
    pub attribution: crate::kvm_engine::KvmAttribution,
    /// From KVM's tracepoints, where tracefs could be used.
    pub tracepoints: Option<crate::kvm_engine::NestedCounts>,
    /// Why there are no tracepoint figures, when there are none.
    pub tracepoints_unavailable: Option<String>,
}
