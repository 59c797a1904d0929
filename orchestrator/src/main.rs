//! `nestbench`: the orchestrator's command line.

mod boot;
mod doctor;
mod l0_child;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

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
    },
    /// Boot L1 through nestbench-l0 and print what L1 reported plus the KVM statistics deltas.
    Boot(BootArgs),
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let deadline = Duration::from_millis(a.timeout_ms) + Duration::from_secs(5);
    let run = rt.block_on(l0_child::run_l0(&l0, &args, deadline, |_| {}))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&boot::to_json(&run))?);
    } else {
        print!("{}", boot::render(&run));
    }
    let ok = run.complete()
        && run
            .event("end")
            .is_some_and(|e| e["report"]["outcome"]["kind"] == "exited" && e["report"]["outcome"]["status"] == 0);
    Ok(if ok {
        0
    } else if run.event("error").is_some() {
        2
    } else {
        1
    })
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let code = match Cli::parse().cmd {
        Cmd::Doctor { json, kvm } => {
            // Blocking work (it boots a probe guest on its own vCPU thread); no runtime needed.
            let d = doctor::doctor(l0::host::gather(&kvm));
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", doctor::render(&d));
            }
            0
        }
        Cmd::Boot(a) => boot(a)?,
    };
    std::process::exit(code);
}
