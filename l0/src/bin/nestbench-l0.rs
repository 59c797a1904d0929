//! `nestbench-l0`: boots L1 on KVM and writes the event stream (JSON lines, see
//! docs/event-stream.md) on stdout. Diagnostics go to stderr.
//!
//! Exit status: 0 when the guest exited with status 0, 1 when the run ended any other way
//! (guest failure, timeout, exception: see the `end` event), 2 when L0 itself could not run
//! it (bad image, no KVM, ...: see the `error` event).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use l0::bochs::BochsConfig;
use l0::events::{End, Engine, Event, Hello, RunReport};
use l0::machine::{EngineConfig, Image, Machine, MachineConfig, SoftConfig};
use l0::trace::TraceConfig;
use l0::x86_setup::Cpl;
use nestbench_abi::boot::Scenario;
use nestbench_protocol::request::{EngineRequest, RunRequest, TraceRequest};

#[derive(Parser)]
#[command(name = "nestbench-l0", version, about = "nestbench's L0: boots L1 on KVM and streams what happens")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot L1 (on KVM, or on Bochs), let it probe the CPU, and report.
    Boot(BootArgs),
    /// Run an L2 payload under L1 with the soft engine or on Bochs, or single-level (no L1).
    Run(RunArgs),
    /// Run one VM-entry conformance case (docs/vmentry.md) and report L1's verdict, or print
    /// the baseline VMCS the cases perturb.
    Vmentry(VmentryArgs),
    /// Inside an emulated host (started by the orchestrator's `--host`): load the KVM
    /// modules of the plan, report the host, run each planned invocation and frame what it
    /// prints onto a serial line (docs/emulated-hosts.md).
    Agent(AgentArgs),
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The plan (JSON, `l0::emulated::Plan`).
    #[arg(long, default_value = l0::emulated::PLAN_PATH)]
    plan: PathBuf,
    /// Where the frames go, and nothing else: a serial line (`/dev/ttyS1`) or `e9`, the
    /// emulator's debug port.
    #[arg(long, default_value = "/dev/ttyS1")]
    line: String,
}

#[derive(clap::Args)]
struct VmentryArgs {
    /// The case file (JSON, vmentry/case.schema.json).
    #[arg(long, required_unless_present = "baseline")]
    case: Option<PathBuf>,
    /// Print the baseline VMCS (every field, encoding and value) instead of running a case.
    #[arg(long, conflicts_with = "case")]
    baseline: bool,
    /// What provides VMX to L1.
    #[arg(long, value_enum, default_value_t = RunEngine::Soft)]
    engine: RunEngine,
    /// Bochs' CPU model (`--engine bochs`).
    #[arg(long, default_value = l0::bochs::DEFAULT_MODEL)]
    cpu_model: String,
    /// The L1 ELF image [default: the one built with this l0].
    #[arg(long)]
    l1: Option<PathBuf>,
    /// The KVM device.
    #[arg(long, default_value = "/dev/kvm")]
    kvm: PathBuf,
    /// Time budget of the run in milliseconds.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
}

/// Where `boot` runs L1.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum BootEngine {
    /// Directly on KVM.
    Kvm,
    /// On Bochs' emulated CPU, with its VMX (no KVM).
    Bochs,
}

/// What provides VMX to L1 in `run`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum RunEngine {
    /// L0 emulates VMX for L1 on KVM.
    Soft,
    /// Bochs' emulated VMX (no KVM).
    Bochs,
    /// The host kernel's nested VMX: L1 uses real VMX instructions on KVM (needs
    /// kvm_intel nested=1; refused with the reason elsewhere).
    Kvm,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The payload (`nestbench payloads` lists them).
    #[arg(long)]
    payload: String,
    /// Iterations of the payload's exiting instruction [default: the payload's].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    iterations: Option<u64>,
    /// VMCS shadowing: L1's VMREAD/VMWRITE of supported fields without traps.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    vmcs_shadowing: OnOff,
    /// Soft engine: keep at most N memslots in VM2, up to KVM's limit (smaller: the
    /// EPT-shadow eviction path) [default: 4096, l0::soft::l2vm::DEFAULT_MEMSLOT_BUDGET].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    memslot_limit: Option<u64>,
    /// Exit tracing (soft engine): L1 publishes a record per handled exit into a ring that
    /// L0 drains; batches stream as `trace` events (docs/event-stream.md "Traces").
    #[arg(long, conflicts_with = "single_level")]
    trace: bool,
    /// Ring capacity in records, a power of two (L1 carries at most 4096) [default: 4096].
    #[arg(long, requires = "trace", value_parser = l0::trace::parse_capacity)]
    trace_capacity: Option<u32>,
    /// Drain the ring only at the end of the run (so it overflows: tests of drop counting).
    #[arg(long, requires = "trace")]
    trace_drain_at_end: bool,
    /// The kvm engine: record KVM's nested tracepoints where tracefs is mounted (they add
    /// KVM instructions to every exit; `off` for instruction figures).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    kvm_tracepoints: OnOff,
    /// Run the payload directly in a VM of L0 (no L1): the single-level twin.
    #[arg(long, conflicts_with = "engine")]
    single_level: bool,
    /// What provides VMX to L1.
    #[arg(long, value_enum, default_value_t = RunEngine::Soft)]
    engine: RunEngine,
    /// Bochs' CPU model (`--engine bochs`); it must have EPT.
    #[arg(long, default_value = l0::bochs::DEFAULT_MODEL)]
    cpu_model: String,
    /// Keep the Bochs run directory (bochsrc, ROM, RAM images, log) (`--engine bochs`).
    #[arg(long)]
    keep_bochs_dir: bool,
    /// The L1 ELF image [default: the one built with this l0, or $NESTBENCH_L1_ELF].
    #[arg(long)]
    l1: Option<PathBuf>,
    /// The KVM device.
    #[arg(long, default_value = "/dev/kvm")]
    kvm: PathBuf,
    /// Time budget of the run in milliseconds.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScenarioArg {
    /// Probe the CPU and exit.
    Probe,
    /// Probe, then take a page fault (tests L1's exception reporting).
    PageFault,
}

impl From<ScenarioArg> for Scenario {
    fn from(a: ScenarioArg) -> Self {
        match a {
            ScenarioArg::Probe => Self::Probe,
            ScenarioArg::PageFault => Self::PageFault,
        }
    }
}

#[derive(clap::Args)]
struct BootArgs {
    /// The L1 ELF image [default: the one built with this l0, or $NESTBENCH_L1_ELF].
    #[arg(long)]
    l1: Option<PathBuf>,
    /// The KVM device.
    #[arg(long, default_value = "/dev/kvm")]
    kvm: PathBuf,
    /// Guest memory of the L1 VM, in MiB (at least 2).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(2..=65536))]
    mem_mib: u64,
    /// Time budget of the run in milliseconds; the watchdog stops the guest after it.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// What L1 does after booting.
    #[arg(long, value_enum, default_value_t = ScenarioArg::Probe)]
    scenario: ScenarioArg,
    /// Where L1 runs.
    #[arg(long, value_enum, default_value_t = BootEngine::Kvm)]
    engine: BootEngine,
    /// Bochs' CPU model (`--engine bochs`); it must have EPT.
    #[arg(long, default_value = l0::bochs::DEFAULT_MODEL)]
    cpu_model: String,
    /// Keep the Bochs run directory (bochsrc, ROM, RAM images, log) (`--engine bochs`).
    #[arg(long)]
    keep_bochs_dir: bool,
}

/// The stream's first line: this build's versions plus what `fill` adds.
fn emit_hello(timeout_ms: u64, fill: impl FnOnce(&mut Hello)) {
    let mut h = Hello::new(env!("CARGO_PKG_VERSION"), timeout_ms);
    fill(&mut h);
    emit(&Event::Hello(h));
}

/// One line of the stream, serialised straight onto stdout (trace batches are large).
fn emit(ev: &Event) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (the orchestrator went away) is not worth a panic: the run goes on
    // and the exit status still tells.
    let _ = serde_json::to_writer(&mut out, ev);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// The `end` line of a run with L1.
fn emit_end(report: RunReport) {
    emit(&Event::End(End { report: Some(Box::new(report)), single_level: None }));
}

fn boot(args: BootArgs) -> anyhow::Result<bool> {
    let l1 = args.l1.unwrap_or_else(l0::images::l1_elf);
    if args.engine == BootEngine::Bochs {
        let config = BochsConfig {
            model: args.cpu_model,
            mem_size: args.mem_mib << 20,
            timeout: Duration::from_millis(args.timeout_ms),
            scenario: args.scenario.into(),
            keep_dir: args.keep_bochs_dir,
            ..BochsConfig::default()
        };
        let model = l0::bochs::run::preflight(&config)?;
        emit_hello(args.timeout_ms, |h| {
            h.engine = Some(Engine::Bochs);
            h.cpu_model = Some(model.name.to_owned());
            h.l1_image = Some(l1.display().to_string());
            h.mem_size = Some(config.mem_size);
        });
        return run_bochs(&config, &l1);
    }
    let config = MachineConfig {
        kvm_path: args.kvm,
        mem_size: args.mem_mib << 20,
        timeout: Duration::from_millis(args.timeout_ms),
        cpl: Cpl::Kernel,
        scenario: args.scenario.into(),
        ..MachineConfig::default()
    };
    emit_hello(args.timeout_ms, |h| {
        h.l1_image = Some(l1.display().to_string());
        h.mem_size = Some(config.mem_size);
    });
    let machine = Machine::new(config, &Image::Elf(l1)).context("setting up the L1 VM")?;
    let report = machine.run(|ev| emit(&ev))?;
    let ok = report.outcome.is_success();
    emit_end(report);
    Ok(ok)
}

impl RunArgs {
    /// The run these flags ask for, checked: an option of another engine is refused here,
    /// once, with the reason.
    fn request(&self, manifest: &l2_payloads::Manifest) -> anyhow::Result<RunRequest> {
        let engine = match (self.single_level, self.engine) {
            (true, _) => EngineRequest::SingleLevel,
            (false, RunEngine::Soft) => EngineRequest::Soft {
                vmcs_shadowing: self.vmcs_shadowing == OnOff::On,
                trace: self
                    .trace
                    .then_some(TraceRequest { capacity: self.trace_capacity, drain_at_end: self.trace_drain_at_end }),
            },
            (false, RunEngine::Kvm) => EngineRequest::Kvm { tracepoints: self.kvm_tracepoints == OnOff::On },
            (false, RunEngine::Bochs) => EngineRequest::Bochs { cpu_model: self.cpu_model.clone() },
        };
        match engine {
            EngineRequest::Bochs { .. } => anyhow::ensure!(
                !self.trace,
                "--trace needs the soft engine: L0 drains L1's trace ring from L1's memory while L1 runs, \
                 and Bochs' memory is not L0's to read during a run"
            ),
            EngineRequest::Kvm { .. } => anyhow::ensure!(
                !self.trace,
                "--trace needs the soft engine (the kvm engine has KVM's tracepoints instead)"
            ),
            EngineRequest::Soft { .. } | EngineRequest::SingleLevel => {}
        }
        Ok(RunRequest {
            payload: manifest.name.to_owned(),
            iterations: manifest.iterations(self.iterations.unwrap_or(manifest.default_iterations)),
            timeout_ms: self.timeout_ms,
            engine,
        })
    }
}

fn run(args: RunArgs) -> anyhow::Result<bool> {
    let manifest = l2_payloads::find(&args.payload).with_context(|| {
        let names: Vec<&str> = l2_payloads::all().iter().map(|m| m.name).collect();
        format!("unknown payload {:?} (known: {})", args.payload, names.join(", "))
    })?;
    let req = args.request(manifest)?;
    let iterations = req.iterations;
    let elf = l0::images::payload_elf(manifest.name);
    let timeout = Duration::from_millis(req.timeout_ms);
    let l1 = args.l1.unwrap_or_else(l0::images::l1_elf);
    let kind = req.engine.engine();
    let (engine, trace) = match req.engine {
        EngineRequest::Bochs { cpu_model } => {
            let config = BochsConfig {
                model: cpu_model,
                timeout,
                payload: Some(l0::machine::PayloadSpec::of(manifest, iterations, 0)),
                keep_dir: args.keep_bochs_dir,
                ..BochsConfig::default()
            };
            let model = l0::bochs::run::preflight(&config)?;
            emit_hello(req.timeout_ms, |h| {
                h.engine = Some(Engine::Bochs);
                h.cpu_model = Some(model.name.to_owned());
                h.payload = Some(manifest.name.to_owned());
                h.iterations = Some(iterations);
            });
            return run_bochs(&config, &l1);
        }
        EngineRequest::SingleLevel => {
            emit_hello(req.timeout_ms, |h| {
                h.engine = Some(Engine::SingleLevel);
                h.payload = Some(manifest.name.to_owned());
                h.iterations = Some(iterations);
                h.vmcs_shadowing = Some(false);
                h.trace = Some(false);
            });
            let r = l0::single_level::run(&args.kvm, &elf, manifest.cpl, iterations, 0, timeout)
                .context("running the payload single-level")?;
            let ok = r.status == 0 && r.problem.is_none() && r.results.as_ref().is_some_and(|x| x.failures == 0);
            emit(&Event::End(End { report: None, single_level: Some(r) }));
            return Ok(ok);
        }
        EngineRequest::Soft { vmcs_shadowing, trace } => {
            if let l2_payloads::Support::Unsupported { reason } = manifest.soft_engine {
                anyhow::bail!("payload {} cannot run on the soft engine: {reason}", manifest.name);
            }
            (EngineConfig::Soft(SoftConfig { vmcs_shadowing }), trace)
        }
        EngineRequest::Kvm { tracepoints } => (EngineConfig::Kvm { tracepoints }, None),
    };
    emit_hello(req.timeout_ms, |h| {
        h.engine = Some(kind);
        h.payload = Some(manifest.name.to_owned());
        h.iterations = Some(iterations);
        h.vmcs_shadowing = Some(matches!(engine, EngineConfig::Soft(SoftConfig { vmcs_shadowing: true })));
        h.trace = Some(trace.is_some());
    });
    let config = MachineConfig {
        kvm_path: args.kvm,
        timeout,
        engine,
        payload: Some(l0::machine::PayloadSpec::of(manifest, iterations, 0)),
        memslot_limit: args.memslot_limit.map(|n| n as usize),
        trace: trace.map(|t| TraceConfig {
            capacity: t.capacity.unwrap_or(nestbench_abi::trace::L1_RING_CAPACITY),
            drain_at_end: t.drain_at_end,
        }),
        ..MachineConfig::default()
    };
    let machine = Machine::new(config, &Image::Elf(l1)).context("setting up the L1 VM")?;
    let mut payload_ok = false;
    let report = machine.run(|ev| {
        if let l0::events::Event::PayloadRun(p) = &ev {
            payload_ok = p.status == 0 && p.results.as_ref().is_some_and(|r| r.failures == 0);
        }
        emit(&ev);
    })?;
    let ok = report.outcome.is_success() && payload_ok;
    emit_end(report);
    Ok(ok)
}

/// One VM-entry case (or the baseline dump) on one engine. Success: L1 exited with status 0
/// (the verdict, not the status, is the result).
fn vmentry(args: VmentryArgs) -> anyhow::Result<bool> {
    let (scenario, case, name) = match &args.case {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let doc = l0::vmentry::parse(&path.display().to_string(), &text)?;
            let abi = doc.to_abi().map_err(anyhow::Error::msg)?;
            (Scenario::Vmentry, Some(abi), doc.name)
        }
        None => (Scenario::VmentryBaseline, None, "baseline".to_owned()),
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let l1 = args.l1.unwrap_or_else(l0::images::l1_elf);
    let engine = match args.engine {
        RunEngine::Soft => Engine::Soft,
        RunEngine::Bochs => Engine::Bochs,
        RunEngine::Kvm => Engine::Kvm,
    };
    if args.engine == RunEngine::Bochs {
        let config =
            BochsConfig { model: args.cpu_model, timeout, scenario, vmentry_case: case, ..BochsConfig::default() };
        let model = l0::bochs::run::preflight(&config)?;
        emit_hello(args.timeout_ms, |h| {
            h.engine = Some(engine);
            h.cpu_model = Some(model.name.to_owned());
            h.case = Some(name);
        });
        return run_bochs(&config, &l1);
    }
    let config = MachineConfig {
        kvm_path: args.kvm,
        timeout,
        scenario,
        engine: match args.engine {
            RunEngine::Soft => EngineConfig::Soft(SoftConfig { vmcs_shadowing: true }),
            RunEngine::Kvm => EngineConfig::Kvm { tracepoints: true },
            RunEngine::Bochs => unreachable!("Bochs cases returned above"),
        },
        vmentry_case: case,
        ..MachineConfig::default()
    };
    emit_hello(args.timeout_ms, |h| {
        h.engine = Some(engine);
        h.case = Some(name);
    });
    let machine = Machine::new(config, &Image::Elf(l1)).context("setting up the L1 VM")?;
    let report = machine.run(|ev| emit(&ev))?;
    let ok = report.outcome.is_success();
    emit_end(report);
    Ok(ok)
}

/// Run L1 on Bochs and stream its events and the report, as the soft engine does. Success:
/// L1 exited with status 0 and, with a payload, the payload succeeded.
fn run_bochs(config: &BochsConfig, l1: &std::path::Path) -> anyhow::Result<bool> {
    let mut payload_ok = None;
    let report = l0::bochs::run(config, &Image::Elf(l1.to_owned()), |ev| {
        if let l0::events::Event::PayloadRun(p) = &ev {
            payload_ok = Some(p.status == 0 && p.results.as_ref().is_some_and(|r| r.failures == 0));
        }
        emit(&ev);
    })
    .context("running L1 on Bochs")?;
    let payload_ok = if config.payload.is_some() { payload_ok == Some(true) } else { payload_ok != Some(false) };
    let ok = report.outcome.is_success() && payload_ok;
    emit_end(report);
    Ok(ok)
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Boot(args) => boot(args),
        Cmd::Run(args) => run(args),
        Cmd::Vmentry(args) => vmentry(args),
        Cmd::Agent(args) => l0::emulated::agent::run(&args.plan, &args.line).map(|()| true).map_err(Into::into),
    };
    match result {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            let message = format!("{e:#}");
            emit(&Event::Error { message: message.clone() });
            eprintln!("nestbench-l0: error: {message}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The orchestrator's side of the run request and this binary's are the same type: every
    /// engine's `args()` parses back into the request it came from.
    #[test]
    fn every_run_request_parses_back_to_itself() {
        let m = l2_payloads::find("outl").expect("outl");
        let trace = TraceRequest { capacity: Some(64), drain_at_end: true };
        for engine in [
            EngineRequest::Soft { vmcs_shadowing: true, trace: None },
            EngineRequest::Soft { vmcs_shadowing: false, trace: Some(trace) },
            EngineRequest::Soft { vmcs_shadowing: true, trace: Some(TraceRequest::default()) },
            EngineRequest::Kvm { tracepoints: false },
            EngineRequest::Kvm { tracepoints: true },
            EngineRequest::Bochs { cpu_model: "corei7_skylake_x".into() },
            EngineRequest::SingleLevel,
        ] {
            let req = RunRequest { payload: m.name.into(), iterations: m.iterations(123), timeout_ms: 4567, engine };
            let argv = std::iter::once("nestbench-l0".to_owned()).chain(req.args());
            let Cmd::Run(args) = Cli::try_parse_from(argv).expect("parses").cmd else { panic!("not a run") };
            assert_eq!(args.request(m).expect("valid"), req);
        }
    }

    #[test]
    fn a_trace_on_another_engine_is_refused_with_the_reason() {
        let m = l2_payloads::find("outl").expect("outl");
        for (engine, why) in [("kvm", "tracepoints"), ("bochs", "Bochs' memory")] {
            let argv = ["nestbench-l0", "run", "--payload", "outl", "--engine", engine, "--trace"];
            let Cmd::Run(args) = Cli::try_parse_from(argv).expect("parses").cmd else { panic!("not a run") };
            let e = args.request(m).expect_err("refused").to_string();
            assert!(e.starts_with("--trace needs the soft engine") && e.contains(why), "{e}");
        }
    }
}
