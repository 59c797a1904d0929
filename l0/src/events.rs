//! What a run produces: events while it runs, an [`Outcome`] and a [`RunReport`] at the end.
//! All of it serializes to the JSON event stream `nestbench-l0` writes on stdout
//! (see `docs/event-stream.md`; version [`STREAM_VERSION`]).

use std::collections::BTreeMap;

use kvm_bindings::kvm_regs;
use nestbench_abi::cpuid as hv;
use nestbench_abi::report::{ExceptionReport, MsrProbe, MsrStatus, ProbeReport, exception_name};
use serde::Serialize;

use crate::stats::StatsDelta;

/// Version of the l0 -> orchestrator event stream.
pub const STREAM_VERSION: u32 = 1;

/// Something L1 or L0 said during a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
        /// `entered`, `fail_invalid`, `fail_valid` or `entry_failure`.
        kind: &'static str,
        /// VM-instruction error (fail_valid).
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<u32>,
        /// Exit reason (entered, entry_failure).
        #[serde(skip_serializing_if = "Option::is_none")]
        exit_reason: Option<u32>,
        /// Exit qualification (entry_failure).
        #[serde(skip_serializing_if = "Option::is_none")]
        qualification: Option<u64>,
    },
    /// L1's report on the payload it ran.
    PayloadRun(Box<PayloadRun>),
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
}

impl Event {
    /// Decode L1's verdict report.
    #[must_use]
    pub fn from_verdict(v: &nestbench_abi::report::Verdict) -> Self {
        use nestbench_abi::report::VerdictKind;
        let scenario = nestbench_abi::boot::Scenario::from_raw(v.scenario)
            .map_or_else(|| format!("unknown({})", v.scenario), |s| format!("{s:?}"));
        let kind = VerdictKind::from_raw(v.kind);
        Self::Verdict {
            scenario,
            kind: match kind {
                Some(VerdictKind::Entered) => "entered",
                Some(VerdictKind::FailInvalid) => "fail_invalid",
                Some(VerdictKind::FailValid) => "fail_valid",
                Some(VerdictKind::EntryFailure) => "entry_failure",
                Some(VerdictKind::Succeeded) => "succeeded",
                Some(VerdictKind::Skipped) => "skipped",
                None => "invalid",
            },
            error: matches!(kind, Some(VerdictKind::FailValid | VerdictKind::Skipped)).then_some(v.error),
            exit_reason: matches!(kind, Some(VerdictKind::Entered | VerdictKind::EntryFailure))
                .then_some(v.exit_reason),
            qualification: (kind == Some(VerdictKind::EntryFailure)).then_some(v.qualification),
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
            ReportKind::PayloadRun => Self::PayloadRun(Box::new(PayloadRun::from(
                &nestbench_abi::payload::PayloadReport::from_bytes(bytes).expect(exact),
            ))),
        })
    }
}

/// One L2 exit as L1 saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

impl From<&nestbench_abi::payload::PayloadReport> for PayloadRun {
    fn from(r: &nestbench_abi::payload::PayloadReport) -> Self {
        let n = (r.records as usize).min(r.exit_records.len());
        let res = &r.results;
        Self {
            status: r.status,
            exits: r
                .exits_by_reason
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(reason, c)| (reason_name(reason as u32), u64::from(*c)))
                .collect(),
            vmx_accesses: r.vmx_accesses,
            results: (res.magic == nestbench_abi::payload::RESULTS_MAGIC).then(|| PayloadResults::from(res)),
            exit_records: r.exit_records[..n]
                .iter()
                .map(|e| ExitRecord {
                    reason: e.reason,
                    reason_name: reason_name(e.reason),
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Msr {
    /// MSR index.
    pub index: u32,
    /// `ok`, `gp` (RDMSR raised #GP) or `not_read`.
    pub status: &'static str,
    /// The value, when read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
}

impl From<MsrProbe> for Msr {
    fn from(m: MsrProbe) -> Self {
        let (status, value) = match MsrStatus::from_raw(m.status) {
            Some(MsrStatus::Ok) => ("ok", Some(m.value)),
            Some(MsrStatus::GeneralProtection) => ("gp", None),
            Some(MsrStatus::NotRead) => ("not_read", None),
            None => ("invalid", None),
        };
        Self { index: m.index, status, value }
    }
}

/// L1's CPU probe, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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

impl From<&kvm_regs> for Gprs {
    fn from(r: &kvm_regs) -> Self {
        Self {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rbp: r.rbp,
            rsp: r.rsp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
        name: &'static str,
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
            name: exception_name(r.vector),
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KvmStats {
    /// The VM's statistics.
    pub vm: StatsDelta,
    /// vCPU 0's statistics.
    pub vcpu: StatsDelta,
}

/// The end of a run.
#[derive(Clone, Debug, Serialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft: Option<crate::soft::engine::SoftStats>,
    /// What the Bochs engine saw, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bochs: Option<crate::bochs::BochsSection>,
    /// The exit trace's counters, when tracing was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::TraceStats>,
    /// The kvm engine's attribution, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kvm_engine: Option<KvmEngineSection>,
}

/// What the kvm engine saw (docs/kvm-engine.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KvmEngineSection {
    /// kvm_intel's `nested`, `ept`, `enable_shadow_vmcs` (and the rest of its parameters),
    /// so a result says which Turtles ablation it is.
    pub kvm_intel_params: BTreeMap<String, String>,
    /// The VMX capability MSRs as L1's vCPU reports them after the pass-through, each
    /// saying whether L0 wrote it or KVM derived it.
    pub vmx_msrs: Vec<crate::kvm_engine::caps::KvmVmxMsr>,
    /// From KVM's statistics and the exits L0 saw.
    pub attribution: crate::kvm_engine::attribution::KvmAttribution,
    /// From KVM's tracepoints, where tracefs could be used.
    pub tracepoints: Option<crate::kvm_engine::tracepoints::NestedCounts>,
    /// Why there are no tracepoint figures, when there are none.
    pub tracepoints_unavailable: Option<String>,
}
