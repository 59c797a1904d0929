//! `nestbench`: the orchestrator's command line.

use orchestrator::{
    bench, boot, compare, doctor, exact, export, hosts, l0_child, report, results, run, trace, vmentry,
};

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use nestbench_protocol::request::{EngineRequest, RunRequest, TraceRequest};

#[derive(Parser)]
#[command(
    name = "nestbench",
    version,
    about = "Nested-virtualization test bench: what an L2 exit costs on this host, and who pays"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Report the host (CPU, kernel, KVM modules and parameters, what KVM offers guests) and
    /// which engines can run here, and why not the others.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The KVM device.
        #[arg(long, default_value = "/dev/kvm")]
        kvm: PathBuf,
        #[command(flatten)]
        host: HostArgs,
        /// The nestbench-l0 binary an emulated host runs [default: $NESTBENCH_L0, else next
        /// to this executable].
        #[arg(long)]
        l0: Option<PathBuf>,
    },
    /// Boot L1 through nestbench-l0 and print what L1 reported plus the KVM statistics deltas.
    Boot(BootArgs),
    /// Run one L2 payload on one engine and report its exits, traps and latency.
    Run(RunArgs),
    /// Run a payload as an exit storm with tracing and show a live per-reason exit-rate
    /// table (like `perf kvm stat live`); `--trace FILE` keeps the trace too.
    Top(TopArgs),
    /// Run VM-entry conformance cases (one VMCS perturbation each, docs/vmentry.md) and print
    /// the architectural verdict the engine gives, or the baseline VMCS the cases perturb.
    Vmentry(VmentryArgs),
    /// List the payloads and which engines run each (with the reason where one cannot).
    Payloads {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The nested benchmark: every payload on every engine this host can run (VMCS shadowing
    /// on and off, the single-level twin, Bochs), calibrated, warmed up and repeated; writes
    /// results/runs/<timestamp>-<host>/ (summary.json, report.md, dashboard.html, exports)
    /// and compares against results/baseline/<profile>/ when there is one.
    Bench(BenchArgs),
    /// Compare two runs (run directories or summary.json files): a noise-aware verdict per
    /// metric; exits 1 on a significant regression (a configuration that worked in BASE and
    /// fails in NEW is one), 2 on unreadable input or when nothing could be compared.
    Compare {
        /// The base run.
        base: PathBuf,
        /// The new run.
        new: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Runs whose run-to-run changes set the noise threshold (rustc-perf's Q3 + 3 IQR),
        /// e.g. results/runs.
        #[arg(long)]
        history: Option<PathBuf>,
    },
    /// Exact figures of the kvm engine on an emulated host, per reflected L2 exit in steady
    /// state (N and 2N iterations in one boot): instructions per nested round trip, KVM
    /// exits, nested_run, L0-handled exits and L1's exits by reason.
    Exact(ExactArgs),
    /// Print a run in a form other tools ingest.
    Export {
        /// The run directory or its summary.json.
        run: PathBuf,
        /// OpenMetrics text (Prometheus) or Bencher Metric Format JSON.
        #[arg(long, value_enum)]
        format: ExportFormat,
    },
}

#[derive(clap::Args)]
struct ExactArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Payloads [default: outl, hlt, cpuid, rdmsr, ept_touch].
    #[arg(long, value_delimiter = ',')]
    payloads: Option<Vec<String>>,
    /// N: each payload runs with N and 2N iterations.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    iterations: u64,
    /// Each run's time budget in (emulated) milliseconds.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: u64,
    /// The nestbench-l0 binary [default: $NESTBENCH_L0, else next to this executable].
    #[arg(long)]
    l0: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// OpenMetrics text exposition (Prometheus).
    Openmetrics,
    /// Bencher Metric Format JSON.
    Bencher,
    /// report.md again, from summary.json (without the baseline comparison).
    Markdown,
    /// JUnit XML (a test case per configuration).
    Junit,
    /// dashboard.html again, from summary.json (without the baseline verdict and history).
    Html,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The CI profile: shorter loops, fewer repetitions.
    #[arg(long)]
    quick: bool,
    /// Where run directories go.
    #[arg(long, default_value = "results/runs")]
    out: PathBuf,
    /// The baseline to compare against, or `none` [default: results/baseline/full, or
    /// results/baseline/quick with --quick, when it has a summary.json]. Compared only when host class, kernel and profile match; a baseline
    /// named here must exist.
    #[arg(long, value_name = "DIR")]
    baseline: Option<PathBuf>,
    /// Engines to bench [default: every one this host can run].
    #[arg(long, value_delimiter = ',')]
    engines: Option<Vec<String>>,
    /// Payloads to bench [default: all].
    #[arg(long, value_delimiter = ',')]
    payloads: Option<Vec<String>>,
    /// Print summary.json on stdout instead of the tables.
    #[arg(long)]
    json: bool,
    /// Exit 3 when the baseline comparison finds a significant regression.
    #[arg(long)]
    fail_on_regression: bool,
    /// The nestbench-l0 binary [default: $NESTBENCH_L0, else next to this executable].
    #[arg(long)]
    l0: Option<PathBuf>,
    /// The KVM device.
    #[arg(long, default_value = "/dev/kvm")]
    kvm: PathBuf,
    /// Each run's time budget in milliseconds [default: 10000 with --quick, else 120000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: Option<u64>,
    /// Bochs' CPU model.
    #[arg(long, default_value = "corei7_skylake_x", value_parser = parse_cpu_model)]
    cpu_model: String,
    /// Emulated hosts to measure the kvm engine on, exactly (`bochs[:MODEL]@KERNEL`, comma
    /// separated), or `none` [default: Skylake-X and Ivy Bridge with each kernel of
    /// orchestrator/kernels.list; with --quick, Skylake-X with 6.1; those that cannot boot
    /// here are skipped with the reason].
    #[arg(long, value_delimiter = ',', value_name = "HOST@KERNEL")]
    emulated_hosts: Option<Vec<String>>,
    /// Finish a bench that was killed or interrupted: its journal (`OUT/<run id>.journal.jsonl`,
    /// or a partial run directory). Its calibrations, repetitions and steady-state runs are
    /// reused, the rest is measured, and a new run directory is written; the profile, engines
    /// and payloads are the journal's.
    #[arg(long, value_name = "JOURNAL")]
    resume: Option<PathBuf>,
    /// Bench one emulated host only (`--host bochs[:MODEL]`, with its --kernel and
    /// --kvm-param): the kvm engine's exact table there, no local engines.
    #[command(flatten)]
    host: HostArgs,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Engine {
    /// L0 provides VMX to L1 in userspace.
    Soft,
    /// Bochs' emulated VMX: L1 on a CPU that really executes VMX (conformance; slow).
    Bochs,
    /// The host kernel's nested VMX or SVM (kvm_intel or kvm_amd with nested=1).
    Kvm,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The engine.
    #[arg(long, value_enum, default_value_t = Engine::Soft)]
    engine: Engine,
    /// The payload (see `nestbench payloads`).
    #[arg(long)]
    payload: String,
    /// Iterations [default: the payload's].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    iterations: Option<u64>,
    /// VMCS shadowing (soft engine).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    vmcs_shadowing: OnOff,
    /// Run the payload directly as a KVM guest of L0, without L1 (the single-level twin).
    #[arg(long)]
    single_level: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The nestbench-l0 binary [default: $NESTBENCH_L0, else next to this executable].
    #[arg(long)]
    l0: Option<PathBuf>,
    /// The guest's time budget in milliseconds.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: u64,
    /// Bochs' CPU model (`--engine bochs`); it must have EPT.
    #[arg(long, default_value = "corei7_skylake_x", value_parser = parse_cpu_model)]
    cpu_model: String,
    #[command(flatten)]
    trace: TraceArgs,
    #[command(flatten)]
    host: HostArgs,
}

/// Where l0 runs (docs/emulated-hosts.md).
#[derive(clap::Args, Clone)]
struct HostArgs {
    /// `local` (this machine's /dev/kvm), `bochs[:CPU_MODEL]`: an upstream kernel with
    /// `kvm_intel nested=1` booted in Bochs (default model corei7_skylake_x), or `qemu`: one
    /// with `kvm_amd nested=1` booted in QEMU TCG (nested SVM).
    #[arg(long, default_value = "local", value_name = "HOST")]
    host: String,
    /// The emulated host's kernel: `6.1` or `6.12` (fetched by ./setup.sh), a linux-image
    /// .deb, an unpacked kernel tree, or a bzImage (with --kernel-modules) [default: 6.1].
    #[arg(long, value_name = "KERNEL")]
    kernel: Option<String>,
    /// The modules of a bzImage given to --kernel: its lib/modules/<release> directory or
    /// a tree that has one (make modules_install INSTALL_MOD_PATH=DIR).
    #[arg(long, value_name = "DIR", requires = "kernel")]
    kernel_modules: Option<PathBuf>,
    /// A parameter of the emulated host's vendor module (kvm_intel on Bochs, kvm_amd on
    /// QEMU), e.g. `enable_shadow_vmcs=0` or `ept=0` (repeatable; `nested=1` is always set
    /// first).
    #[arg(long = "kvm-param", value_name = "NAME=VALUE")]
    kvm_params: Vec<String>,
    /// Extra words for the emulated host's kernel command line (e.g.
    /// `transparent_hugepage=never`).
    #[arg(long, value_name = "WORDS", default_value = "")]
    kernel_cmdline: String,
    /// Wall-clock seconds the emulated host may take to boot and report.
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=3600))]
    boot_timeout_s: Option<u64>,
    /// Keep the emulated machine's files (ISO, bochsrc, console, stream, Bochs log).
    #[arg(long)]
    keep_host_dir: bool,
    /// `--host qemu` only: run QEMU with `-icount shift=SHIFT,sleep=off`, a virtual clock
    /// that counts instructions (2^SHIFT ns each) instead of following the host's.
    #[arg(long, value_name = "SHIFT", value_parser = clap::value_parser!(u8).range(0..=10))]
    icount: Option<u8>,
}

impl HostArgs {
    /// The host, checked, and how to set it up when it is an emulated one.
    fn resolve(&self) -> anyhow::Result<(hosts::HostSpec, hosts::EmulatedOptions)> {
        let spec = hosts::HostSpec::parse(&self.host)?;
        if spec == hosts::HostSpec::Local
            && (self.kernel.is_some()
                || !self.kvm_params.is_empty()
                || self.keep_host_dir
                || !self.kernel_cmdline.is_empty()
                || self.boot_timeout_s.is_some()
                || self.icount.is_some())
        {
            anyhow::bail!(
                "--kernel, --kvm-param, --kernel-cmdline, --boot-timeout-s, --keep-host-dir and --icount apply to an \
                 emulated host (--host bochs[:MODEL] or qemu)"
            );
        }
        for p in &self.kvm_params {
            let ok = p.split_once('=').is_some_and(|(k, v)| {
                !k.is_empty()
                    && !v.is_empty()
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !v.contains(char::is_whitespace)
            });
            anyhow::ensure!(ok, "--kvm-param {p:?}: expected NAME=VALUE, e.g. enable_shadow_vmcs=0");
        }
        let opts = hosts::EmulatedOptions {
            kernel: self.kernel.clone(),
            kernel_modules: self.kernel_modules.clone(),
            kvm_params: self.kvm_params.clone(),
            cmdline: self.kernel_cmdline.clone(),
            keep_dir: self.keep_host_dir,
            boot_timeout: self.boot_timeout_s.map(Duration::from_secs),
            icount: self.icount,
        };
        if self.icount.is_some() && spec.emulator().is_some_and(|e| e != hosts::emulated::Emulator::Qemu) {
            anyhow::bail!("--icount is QEMU's: it applies to --host qemu, not --host {}", spec.name());
        }
        Ok((spec, opts))
    }
}

/// A Bochs CPU model L1 can run on (VMX with EPT), checked before any child starts.
fn parse_cpu_model(s: &str) -> Result<String, String> {
    l0::bochs::config::l1_cpu_model(s).map(|m| m.name.to_owned()).map_err(|e| e.to_string())
}

/// Run `invocations` on a host under a runtime of our own, handing what arrives to `on`.
fn on_host(
    host: &hosts::HostSpec,
    opts: &hosts::EmulatedOptions,
    l0: &std::path::Path,
    invocations: &[hosts::Invocation],
    on: impl FnMut(usize, l0_child::Incoming<'_>),
) -> anyhow::Result<hosts::Session> {
    let rt = runtime()?;
    Ok(rt.block_on(hosts::run_all(host, opts, l0, invocations, on))?)
}

#[derive(clap::Args)]
struct TraceArgs {
    /// Write the exit trace (one record per L2 exit L1 handled) to FILE as it arrives
    /// (soft engine). FILE.partial until the run ends.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// The trace file's format: JSON lines, or Chrome trace-event JSON for the Perfetto UI
    /// (L0, L1 and L2 tracks).
    #[arg(long, value_enum, default_value_t = trace::writer::Format::Jsonl, requires = "trace")]
    format: trace::writer::Format,
    /// Trace ring capacity in records (a power of two, at most 4096).
    #[arg(long, value_name = "N", value_parser = l0::trace::parse_capacity)]
    trace_capacity: Option<u32>,
    /// Let L0 drain the ring only at the end of the run, so that it overflows and L1 counts
    /// drops (tests of drop accounting).
    #[arg(long)]
    trace_drain_at_end: bool,
}

impl TraceArgs {
    /// The trace to ask l0 for (`on`: trace even without a file).
    fn request(&self, on: bool) -> Option<TraceRequest> {
        (on || self.trace.is_some())
            .then_some(TraceRequest { capacity: self.trace_capacity, drain_at_end: self.trace_drain_at_end })
    }
}

#[derive(clap::Args)]
struct VmentryArgs {
    /// What provides VMX to L1.
    #[arg(long, value_enum, default_value_t = Engine::Soft)]
    engine: Engine,
    /// One case file.
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["cases", "baseline"], required_unless_present_any = ["cases", "baseline"])]
    case: Option<PathBuf>,
    /// Every `*.json` case of a directory, in name order (the batch goes on past a case that
    /// hangs, crashes or does not parse).
    #[arg(long, value_name = "DIR", conflicts_with = "baseline")]
    cases: Option<PathBuf>,
    /// Print the baseline VMCS (every field, encoding and value) the cases' writes apply to.
    #[arg(long)]
    baseline: bool,
    /// Judge the verdicts against the cases' expectations and this allow-list of known
    /// departures (vmentry/allow-list.json): exit status 1 when a case departs without an
    /// entry or an entry no longer departs.
    #[arg(long, value_name = "FILE.json", conflicts_with = "baseline")]
    allow_list: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Bochs' CPU model (`--engine bochs`).
    #[arg(long, default_value = "corei7_skylake_x", value_parser = parse_cpu_model)]
    cpu_model: String,
    /// The nestbench-l0 binary [default: $NESTBENCH_L0, else next to this executable].
    #[arg(long)]
    l0: Option<PathBuf>,
    /// Each case's time budget in milliseconds.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    #[command(flatten)]
    host: HostArgs,
}

#[derive(clap::Args)]
struct TopArgs {
    /// The payload to run as the exit storm (see `nestbench payloads`).
    #[arg(long, default_value = "outl")]
    payload: String,
    /// Iterations [default: 10x the payload's].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    iterations: Option<u64>,
    /// VMCS shadowing.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    vmcs_shadowing: OnOff,
    /// Refresh interval in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    interval_ms: u64,
    /// The nestbench-l0 binary [default: $NESTBENCH_L0, else next to this executable].
    #[arg(long)]
    l0: Option<PathBuf>,
    /// The guest's time budget in milliseconds.
    #[arg(long, default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: u64,
    #[command(flatten)]
    trace: TraceArgs,
    #[command(flatten)]
    host: HostArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// Probe the CPU and exit.
    Probe,
    /// Probe, then take a page fault (shows L1's exception reporting).
    PageFault,
}

#[derive(clap::Args)]
struct BootArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The nestbench-l0 binary [default: $NESTBENCH_L0, else next to this executable].
    #[arg(long)]
    l0: Option<PathBuf>,
    /// The L1 ELF image [default: the one built with nestbench-l0].
    #[arg(long)]
    l1: Option<PathBuf>,
    /// The KVM device.
    #[arg(long, default_value = "/dev/kvm")]
    kvm: PathBuf,
    /// Guest memory of the L1 VM in MiB.
    #[arg(long, default_value_t = 32)]
    mem_mib: u64,
    /// The guest's time budget in milliseconds (l0's watchdog). The orchestrator gives the
    /// child this plus 5 s before it kills it.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: u64,
    /// What L1 does after booting.
    #[arg(long, value_enum, default_value_t = Scenario::Probe)]
    scenario: Scenario,
    #[command(flatten)]
    host: HostArgs,
}

/// A tokio runtime of our own (KVM_RUN happens in the children, never on its threads).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Run `nestbench-l0 args` to completion under a tokio runtime of our own (KVM_RUN happens
/// in the child, never on a runtime thread), killing it after `deadline`.
fn supervise(l0: &std::path::Path, args: &[String], deadline: Duration) -> anyhow::Result<l0_child::ChildRun> {
    let rt = runtime()?;
    Ok(rt.block_on(l0_child::run_l0(l0, args, deadline, |_| {}))?)
}

/// [`supervise`], handing what arrives to `on`.
fn supervise_with(
    l0: &std::path::Path,
    args: &[String],
    deadline: Duration,
    on: impl FnMut(l0_child::Incoming<'_>),
) -> anyhow::Result<l0_child::ChildRun> {
    let rt = runtime()?;
    Ok(rt.block_on(l0_child::run_l0(l0, args, deadline, on))?)
}

/// The trace file of a run, if one was asked for (the header names the run).
fn trace_writer(t: &TraceArgs, header: serde_json::Value) -> anyhow::Result<Option<trace::writer::TraceWriter>> {
    t.trace
        .as_deref()
        .map(|p| {
            trace::writer::TraceWriter::create(p, t.format, header)
                .with_context(|| format!("cannot create the trace file {}", trace::writer::partial_path(p).display()))
        })
        .transpose()
}

fn boot(a: BootArgs) -> anyhow::Result<i32> {
    let l0 = l0_child::locate_l0(a.l0.as_deref())?;
    let mut args = vec![
        "boot".to_owned(),
        "--kvm".to_owned(),
        a.kvm.display().to_string(),
        "--mem-mib".to_owned(),
        a.mem_mib.to_string(),
        "--timeout-ms".to_owned(),
        a.timeout_ms.to_string(),
        "--scenario".to_owned(),
        match a.scenario {
            Scenario::Probe => "probe",
            Scenario::PageFault => "page-fault",
        }
        .to_owned(),
    ];
    if let Some(l1) = &a.l1 {
        args.extend(["--l1".to_owned(), l1.display().to_string()]);
    }
    let (host, host_opts) = a.host.resolve()?;
    let (run, session_host) = if host == hosts::HostSpec::Local {
        (supervise(&l0, &args, Duration::from_millis(a.timeout_ms) + Duration::from_secs(5))?, None)
    } else {
        if a.l1.is_some() || a.kvm != std::path::Path::new("/dev/kvm") {
            anyhow::bail!(
                "--l1 and --kvm name files of this machine; with --host {} l0 uses the emulated host's",
                host.name()
            );
        }
        let inv = hosts::Invocation { args, deadline: Duration::from_millis(a.timeout_ms), files: Vec::new() };
        let s = on_host(&host, &host_opts, &l0, std::slice::from_ref(&inv), |_, _| {})?;
        let doc = hosts::HostDoc::of(&host, &s);
        (s.runs.into_iter().next().unwrap_or_default(), Some(doc))
    };
    if a.json {
        let mut j = boot::to_json(&run);
        j.host = session_host.clone();
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        if let Some(h) = &session_host {
            println!("host           {}", h.summary());
        }
        print!("{}", boot::render(&run));
    }
    let ok = run.complete() && run.report().is_some_and(|r| r.outcome.is_success());
    Ok(if ok {
        0
    } else if run.error().is_some() {
        2
    } else {
        1
    })
}

fn run_payload(a: RunArgs) -> anyhow::Result<i32> {
    if a.trace.trace.is_some() && (a.engine != Engine::Soft || a.single_level) {
        anyhow::bail!(
            "--trace needs the soft engine with L1: the trace is L1's record of the exits it handles, drained by L0 from L1's memory"
        );
    }
    if (a.trace.trace_capacity.is_some() || a.trace.trace_drain_at_end) && a.trace.trace.is_none() {
        anyhow::bail!("--trace-capacity and --trace-drain-at-end only apply with --trace FILE");
    }
    if a.engine != Engine::Soft && a.single_level {
        anyhow::bail!(
            "--single-level runs the payload on KVM without L1; it does not combine with --engine bochs or kvm"
        );
    }
    let Some(m) = l2_payloads::find(&a.payload) else {
        let names: Vec<&str> = l2_payloads::all().iter().map(|m| m.name).collect();
        anyhow::bail!("unknown payload {:?}; known payloads: {}", a.payload, names.join(", "));
    };
    if let (true, l2_payloads::Twin::None { reason }) = (a.single_level, m.single_level) {
        anyhow::bail!("{} has no single-level twin: {reason}", m.name);
    }
    let iterations = m.iterations(a.iterations.unwrap_or(m.default_iterations));
    let l0 = l0_child::locate_l0(a.l0.as_deref())?;
    let engine = match a.engine {
        Engine::Bochs => EngineRequest::Bochs { cpu_model: a.cpu_model.clone() },
        Engine::Kvm => EngineRequest::Kvm { tracepoints: true },
        Engine::Soft if a.single_level => EngineRequest::SingleLevel,
        Engine::Soft => {
            EngineRequest::Soft { vmcs_shadowing: a.vmcs_shadowing == OnOff::On, trace: a.trace.request(false) }
        }
    };
    let req = RunRequest { payload: m.name.into(), iterations, timeout_ms: a.timeout_ms, engine };
    let args = req.args();
    let (host, host_opts) = a.host.resolve()?;
    if host != hosts::HostSpec::Local && a.engine == Engine::Bochs {
        anyhow::bail!(
            "--engine bochs runs L1 on Bochs on this machine, not on a KVM host: it does not combine with --host {} \
             (on an emulated host, L1 runs on its KVM: --engine kvm)",
            host.name()
        );
    }
    if host != hosts::HostSpec::Local && a.trace.trace.is_some() {
        anyhow::bail!(
            "--trace is not available with --host {}: nestbench does not carry trace batches out of an emulated host yet",
            host.name()
        );
    }
    let header = serde_json::json!({
        "engine": "soft", "payload": m.name, "iterations": iterations,
        "vmcs_shadowing": a.vmcs_shadowing == OnOff::On,
    });
    let mut sink = trace::Sink::new(trace_writer(&a.trace, header)?);
    let inv = hosts::Invocation { args, deadline: Duration::from_millis(a.timeout_ms), files: Vec::new() };
    let session = on_host(&host, &host_opts, &l0, std::slice::from_ref(&inv), |_, i| {
        sink.on(i);
    })?;
    let host_doc = (host != hosts::HostSpec::Local).then(|| hosts::HostDoc::of(&host, &session));
    let child = session.runs.into_iter().next().unwrap_or_default();
    let traced = a.trace.trace.is_some().then(|| sink.finish(&child));
    let mut j = run::RunDoc::of(&child, req.engine.engine(), m.name, iterations, a.vmcs_shadowing == OnOff::On);
    j.host = host_doc;
    let mut trace_ok = true;
    if let Some((end, path, agg)) = &traced {
        trace_ok = end["complete"] == true && path.is_some();
        j.trace = Some(serde_json::json!({
            "file": path.as_ref().map(|p| p.display().to_string()),
            "format": format!("{:?}", a.trace.format).to_lowercase(),
            "end": end,
            "figures": agg.to_json(),
        }));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        print!("{}", run::render(&j));
        if !child.stderr.is_empty() && child.exit_code != Some(0) {
            eprint!("{}", child.stderr);
        }
        if let Some((end, path, agg)) = &traced {
            print!("{}", run::render_trace(end, path.as_deref(), agg));
        }
    }
    Ok(match child.exit_code {
        Some(0) if child.complete() && trace_ok => 0,
        Some(2) => 2,
        _ => 1,
    })
}

fn top(a: TopArgs) -> anyhow::Result<i32> {
    use std::io::IsTerminal;
    let (host, _) = a.host.resolve()?;
    if host != hosts::HostSpec::Local {
        anyhow::bail!(
            "top streams the soft engine's exit trace live, which nestbench does not carry out of an emulated host \
             yet (docs/emulated-hosts.md); use `nestbench exact --host {}` for the kvm engine's exits by reason there",
            host.name()
        );
    }
    let Some(m) = l2_payloads::find(&a.payload) else {
        let names: Vec<&str> = l2_payloads::all().iter().map(|m| m.name).collect();
        anyhow::bail!("unknown payload {:?}; known payloads: {}", a.payload, names.join(", "));
    };
    if let l2_payloads::Support::Unsupported { reason } = m.soft_engine {
        anyhow::bail!("payload {} cannot run on the soft engine: {reason}", m.name);
    }
    let iterations = m.iterations(a.iterations.unwrap_or(m.default_iterations.saturating_mul(10)));
    let l0 = l0_child::locate_l0(a.l0.as_deref())?;
    let shadowing = a.vmcs_shadowing == OnOff::On;
    let engine = EngineRequest::Soft { vmcs_shadowing: shadowing, trace: a.trace.request(true) };
    let args = RunRequest { payload: m.name.into(), iterations, timeout_ms: a.timeout_ms, engine }.args();
    let header =
        serde_json::json!({"engine": "soft", "payload": m.name, "iterations": iterations, "vmcs_shadowing": shadowing});
    let mut sink = trace::Sink::new(trace_writer(&a.trace, header)?);
    let title = format!(
        "nestbench top: {} x{iterations}, soft engine, VMCS shadowing {}",
        m.name,
        if shadowing { "on" } else { "off" }
    );
    let mut view = trace::top::Top::new(title, Duration::from_millis(a.interval_ms));
    let tty = std::io::stdout().is_terminal();
    let show = |t: String| {
        if tty {
            print!("\x1b[H\x1b[2J{t}");
        } else {
            println!("{t}");
        }
    };
    let deadline = Duration::from_millis(a.timeout_ms) + Duration::from_secs(10);
    let child = supervise_with(&l0, &args, deadline, |i| {
        if sink.on(i) {
            if let Some(t) = view.tick(&sink.agg, false) {
                show(t);
            }
        }
    })?;
    let (end, path, agg) = sink.finish(&child);
    show(view.tick(&agg, true).unwrap_or_default());
    print!("{}", run::render_trace(&end, path.as_deref(), &agg));
    if !child.complete() || child.exit_code != Some(0) {
        eprintln!("nestbench top: the run did not complete (exit code {:?}); the figures are partial", child.exit_code);
        eprint!("{}", child.stderr);
        return Ok(1);
    }
    Ok(0)
}

fn vmentry_cmd(a: VmentryArgs) -> anyhow::Result<i32> {
    let engine = match a.engine {
        Engine::Soft => "soft",
        Engine::Bochs => "bochs",
        Engine::Kvm => "kvm",
    };
    let runner = vmentry::CaseRunner {
        l0: l0_child::locate_l0(a.l0.as_deref())?,
        engine: engine.into(),
        cpu_model: a.cpu_model.clone(),
        timeout_ms: a.timeout_ms,
    };
    let rt = runtime()?;
    if a.baseline {
        let rows = rt.block_on(runner.baseline()).map_err(anyhow::Error::msg)?;
        if a.json {
            let v: Vec<serde_json::Value> =
                rows.iter().map(|(e, v, n)| serde_json::json!({"encoding": e, "value": v, "name": n})).collect();
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"engine": engine, "fields": v}))?);
        } else {
            println!("baseline VMCS on {engine} ({} fields; a case's writes apply on top of these)", rows.len());
            for (e, v, n) in rows {
                println!("  {e}  {v:<20} {n}");
            }
        }
        return Ok(0);
    }
    let files = match (&a.case, &a.cases) {
        (Some(f), _) => vec![f.clone()],
        (None, Some(d)) => {
            vmentry::case_files(d).with_context(|| format!("reading the case directory {}", d.display()))?
        }
        (None, None) => unreachable!("clap requires one"),
    };
    anyhow::ensure!(
        !files.is_empty(),
        "no *.json case files in {}",
        a.cases.as_deref().unwrap_or(std::path::Path::new("")).display()
    );
    let allow = a.allow_list.as_deref().map(vmentry::AllowList::load).transpose().map_err(anyhow::Error::msg)?;
    let (host, host_opts) = a.host.resolve()?;
    if host != hosts::HostSpec::Local {
        eprintln!("nestbench vmentry: {} cases on {} in one boot ...", files.len(), host.name());
    }
    let print = |r: &vmentry::CaseResult| {
        if !a.json {
            let differs = match (r.as_expected, r.expect_here.as_ref().or(r.expect.as_ref())) {
                (Some(false), Some(e)) => format!("  (expected {})", vmentry::describe(e)),
                _ => String::new(),
            };
            println!(
                "{:<44} {:<20} {}{differs}",
                r.name.as_deref().unwrap_or(&r.file),
                r.family.as_deref().unwrap_or("-"),
                r.outcome.short()
            );
            if r.expect_here.is_some() {
                println!(
                    "{:<44} {:<20}   this engine's capability MSRs decide: {} (the SDM's verdict follows them)",
                    "",
                    "",
                    r.outside_capabilities.join(", ")
                );
            }
            for c in &r.bochs_checks {
                println!("{:<44} {:<20}   bochs: {c}", "", "");
            }
        }
    };
    let results = rt.block_on(runner.run_all(&host, &host_opts, &files, print))?;
    let counts = vmentry::counts(&results);
    let failed = results.iter().filter(|r| !r.outcome.is_verdict() && r.outcome.kind != "engine_unsupported").count();
    let conformance = allow.as_ref().map(|l| vmentry::conformance(engine, &results, l, a.cases.is_some()));
    if a.json {
        let doc = serde_json::json!({"engine": engine, "cases": results, "counts": counts, "conformance": conformance});
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let c: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let judged = results.iter().filter(|r| r.as_expected.is_some()).count();
        let met = results.iter().filter(|r| r.as_expected == Some(true)).count();
        println!(
            "{} cases on {engine}: {}; {met} of {judged} with an expectation gave it",
            results.len(),
            c.join(", ")
        );
        if let Some(c) = &conformance {
            println!(
                "conformance: {} as expected, {} skipped (capabilities missing), {} allow-listed departures ({}), {} \
                 problems",
                c.as_expected,
                c.skipped,
                c.allowed.len(),
                c.allowed.join(", "),
                c.problems.len()
            );
            for p in &c.problems {
                println!("  problem: {p}");
            }
        }
    }
    // With an allow-list, a case without a verdict is a problem unless listed; without one,
    // any case without a verdict fails the batch.
    Ok(i32::from(conformance.map_or(failed > 0, |c| !c.problems.is_empty())))
}

fn exact_cmd(a: ExactArgs) -> anyhow::Result<i32> {
    let (host, opts) = a.host.resolve()?;
    anyhow::ensure!(
        host != hosts::HostSpec::Local,
        "exact figures need an emulated host (--host bochs[:MODEL], or --host qemu --icount 0), where the TSC counts \
         instructions and every run is the same"
    );
    let names: Vec<String> =
        a.payloads.clone().unwrap_or_else(|| exact::DEFAULT_PAYLOADS.iter().map(|s| (*s).to_owned()).collect());
    let mut payloads = Vec::new();
    for n in &names {
        let m = l2_payloads::find(n).ok_or_else(|| {
            let known: Vec<&str> = l2_payloads::all().iter().map(|m| m.name).collect();
            anyhow::anyhow!("unknown payload {n:?}; known payloads: {}", known.join(", "))
        })?;
        payloads.push(m);
    }
    let l0 = l0_child::locate_l0(a.l0.as_deref())?;
    let names: Vec<&str> = payloads.iter().map(|m| m.name).collect();
    eprintln!("nestbench exact: {} runs on {} in one boot ...", exact::RUNS_PER_PAYLOAD * names.len(), host.name());
    let rt = runtime()?;
    let (session, rows) =
        rt.block_on(exact::measure(&host, &opts, &l0, &names, a.iterations, Duration::from_millis(a.timeout_ms)))?;
    let boot = session.boot.clone().unwrap_or_default();
    if a.json {
        let doc = serde_json::json!({ "host": host.name(), "boot": boot, "facts": session.host, "rows": rows });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let title = format!(
            "KVM nested {}, exact: {} kernel {}, {} {}, per reflected exit in steady state ({} vs {} iterations)",
            if host == hosts::HostSpec::Qemu { "SVM" } else { "VMX" },
            host.name(),
            boot.kernel_release,
            boot.kvm_module,
            boot.kvm_module_params,
            a.iterations,
            2 * a.iterations
        );
        print!("{}", exact::render(&title, &rows));
        eprintln!(
            "boot to ready {:.1} s, session {:.1} s wall",
            boot.boot_to_ready_s.unwrap_or(f64::NAN),
            boot.session_s
        );
    }
    Ok(i32::from(rows.iter().any(|r| r.error.is_some())))
}

fn bench_cmd(mut a: BenchArgs) -> anyhow::Result<i32> {
    let resume = a.resume.as_deref().map(orchestrator::journal::Resumed::read).transpose()?;
    if let Some(j) = &resume {
        anyhow::ensure!(
            !a.quick && a.engines.is_none() && a.payloads.is_none(),
            "--resume takes --quick, --engines and --payloads from the journal ({}: {}{}{})",
            j.path.display(),
            if j.quick { "--quick" } else { "the full profile" },
            j.engines.as_ref().map_or_else(String::new, |e| format!(", --engines {}", e.join(","))),
            j.payloads.as_ref().map_or_else(String::new, |p| format!(", --payloads {}", p.join(",")))
        );
        a.quick = j.quick;
        a.engines.clone_from(&j.engines);
        a.payloads.clone_from(&j.payloads);
    }
    let (host, host_opts) = a.host.resolve()?;
    let one_host = (host != hosts::HostSpec::Local).then_some(bench::EmulatedTarget { host, opts: host_opts });
    if one_host.is_some() && (a.emulated_hosts.is_some() || a.engines.is_some()) {
        anyhow::bail!("--host benches one emulated host; it does not combine with --emulated-hosts or --engines");
    }
    let cfg = bench::BenchConfig {
        quick: a.quick,
        out: a.out,
        baseline: match &a.baseline {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some((p.clone(), true)),
            // One baseline per profile: a quick run never compares with a full one.
            None => Some((PathBuf::from("results/baseline").join(if a.quick { "quick" } else { "full" }), false)),
        },
        engines: if one_host.is_some() { Some(Vec::new()) } else { a.engines },
        payloads: a.payloads,
        runner: bench::Runner {
            l0: l0_child::locate_l0(a.l0.as_deref())?,
            timeout_ms: a.timeout_ms.unwrap_or(if a.quick { 10_000 } else { 120_000 }),
            cpu_model: a.cpu_model,
        },
        kvm: a.kvm,
        quiet: a.json,
        emulated: match &a.emulated_hosts {
            None if one_host.is_some() => one_host.into_iter().collect(),
            None => bench::default_emulated(a.quick),
            Some(v) if v.iter().any(|s| s == "none") => Vec::new(),
            Some(v) => v.iter().map(|s| bench::EmulatedTarget::parse(s)).collect::<anyhow::Result<_>>()?,
        },
        resume,
    };
    let o = bench::bench(&cfg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&o.summary)?);
    } else {
        print!("{}", report::headline_table(&o.summary));
        for k in &o.summary.skipped {
            println!("skipped: {} {}: {}", k.engine, k.payload.as_deref().unwrap_or("(engine)"), k.reason);
        }
        for f in &o.summary.failures {
            println!("FAILED: {f}");
        }
        if let Some(c) = &o.comparison {
            print!("{}", compare::render(c));
        }
        println!("{}", o.baseline_line);
    }
    eprintln!(
        "{}wrote {} ({:.0} s): summary.json, report.md, dashboard.html",
        if o.summary.partial { "PARTIAL run: " } else { "" },
        o.dir.display(),
        o.summary.wall_s
    );
    Ok(if o.summary.partial {
        1
    } else if a.fail_on_regression && o.comparison.as_ref().is_some_and(|c| c.regressions() > 0) {
        3
    } else {
        0
    })
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    // One SIGINT/SIGTERM listener for the whole process: supervision loops watch it, keep what
    // they had, and the command exits 128 + the signal (130 after Ctrl-C).
    orchestrator::interrupt::install();
    // The error and its causes, without a backtrace (RUST_BACKTRACE is for nestbench's
    // developers, not for a message about the user's input).
    let code = main_code(Cli::parse()).unwrap_or_else(|e| {
        eprintln!("Error: {e:#}");
        1
    });
    std::process::exit(orchestrator::interrupt::exit_status().unwrap_or(code));
}

fn main_code(cli: Cli) -> anyhow::Result<i32> {
    let code = match cli.cmd {
        Cmd::Doctor { json, kvm, host, l0 } => {
            let (spec, opts) = host.resolve()?;
            let d = if spec == hosts::HostSpec::Local {
                // Blocking work (it boots a probe guest on its own vCPU thread); no runtime.
                doctor::doctor(l0::host::gather(&kvm))
            } else {
                let l0 = l0_child::locate_l0(l0.as_deref())?;
                let session = on_host(&spec, &opts, &l0, &[], |_, _| {})?;
                let facts = session.host.context("the emulated host booted but sent no host report")?;
                doctor::doctor_emulated(spec.name(), facts, session.boot)
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", doctor::render(&d));
            }
            0
        }
        Cmd::Boot(a) => boot(a)?,
        Cmd::Run(a) => run_payload(a)?,
        Cmd::Top(a) => top(a)?,
        Cmd::Vmentry(a) => vmentry_cmd(a)?,
        Cmd::Bench(a) => bench_cmd(a)?,
        Cmd::Exact(a) => exact_cmd(a)?,
        Cmd::Compare { base, new, json, history } => {
            // Exit 2 for input that cannot be compared, 1 only for a regression.
            let inputs = || -> anyhow::Result<_> {
                let b = results::load(&base)?;
                let n = results::load(&new)?;
                let h = match history.as_deref() {
                    Some(p) if !p.is_dir() => anyhow::bail!("--history {}: no such directory of runs", p.display()),
                    Some(p) => results::history(p),
                    None => Vec::new(),
                };
                Ok((b, n, h))
            };
            let (b, n, h) = match inputs() {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    return Ok(2);
                }
            };
            let c = compare::compare(&b, &n, &h);
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", compare::render(&c));
            }
            c.exit_code()
        }
        Cmd::Export { run, format } => {
            let s = results::load(&run)?;
            match format {
                ExportFormat::Openmetrics => print!("{}", export::openmetrics(&s)),
                ExportFormat::Bencher => println!("{}", serde_json::to_string_pretty(&export::bencher(&s))?),
                ExportFormat::Markdown => print!("{}", report::markdown(&s, None)),
                ExportFormat::Junit => print!("{}", export::junit(&s, None)),
                ExportFormat::Html => print!("{}", orchestrator::dashboard::html(&s, &[], None)),
            }
            0
        }
        Cmd::Payloads { json } => {
            print!("{}", run::payloads(json));
            if json {
                println!();
            }
            0
        }
    };
    Ok(code)
}
