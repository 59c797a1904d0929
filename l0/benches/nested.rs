//! Nested vs single-level, one run: every payload the soft engine runs, with VMCS shadowing
//! on and off, against its single-level twin (the same image as a plain KVM guest of L0).
//! Reports per-iteration latency (cycles, from the payload's own LFENCE;RDTSC timing), the
//! nested/single ratio, KVM exits and L1 traps per reflected exit, and the exact number of
//! instructions KVM emulated in L1 per reflected exit (the `insn_emulation` delta between a
//! run of N and one of 2N iterations, so boot and setup cancel out).
//!
//! `cargo bench -p l0 --bench nested [-- --iterations N]`

use std::path::Path;
use std::time::Duration;

use l0::events::{Event, RunReport};
use l0::machine::{EngineConfig, Image, Machine, MachineConfig, PayloadSpec, SoftConfig};

struct Nested {
    mean_cycles: f64,
    report: RunReport,
}

fn nested(name: &str, iterations: u64, shadowing: bool) -> Nested {
    let m = l2_payloads::find(name).unwrap();
    let config = MachineConfig {
        timeout: Duration::from_secs(300),
        engine: EngineConfig::Soft(SoftConfig { vmcs_shadowing: shadowing }),
        payload: Some(PayloadSpec::of(m, iterations, 0)),
        ..MachineConfig::default()
    };
    let mut mean = 0.0;
    let report = Machine::new(config, &Image::Elf(l0::images::l1_elf()))
        .unwrap()
        .run(|e| {
            if let Event::PayloadRun(p) = e {
                let r = p.results.as_ref().expect("results");
                assert_eq!((p.status, r.failures), (0, 0), "{name}");
                mean = r.total_cycles as f64 / r.iterations.max(1) as f64;
            }
        })
        .unwrap();
    assert!(report.outcome.is_success(), "{name}: {:?}", report.outcome);
    Nested { mean_cycles: mean, report }
}

/// The single-level twin's cycles per iteration, or why there is none (a payload whose
/// exits only mean something under L1, such as an EPT violation L1 resolves).
fn single(name: &str, iterations: u64) -> Result<f64, String> {
    let m = l2_payloads::find(name).unwrap();
    let r = l0::single_level::run(
        Path::new("/dev/kvm"),
        &l0::images::payload_elf(name),
        m.cpl,
        iterations,
        0,
        Duration::from_secs(300),
    )
    .map_err(|e| e.to_string())?;
    if let Some(problem) = r.problem {
        return Err(problem);
    }
    let res = r.results.filter(|r| r.failures == 0).ok_or_else(|| "no valid results page".to_owned())?;
    Ok(res.total_cycles as f64 / res.iterations.max(1) as f64)
}

fn l1_insns(r: &RunReport) -> u64 {
    r.kvm_stats.as_ref().and_then(|s| s.vcpu.counters.get("insn_emulation").copied()).unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .iter()
        .position(|a| a == "--iterations")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    println!("nested (soft engine) vs single-level, {n} iterations each, cycles per iteration (mean)");
    println!(
        "{:<13} {:>12} {:>12} {:>10} {:>12} {:>8} {:>12} {:>12}",
        "payload", "single", "nested", "ratio", "nested-off", "ratio", "KVM ex/refl", "L1 traps"
    );
    for m in l2_payloads::all() {
        if let l2_payloads::Support::Unsupported { reason } = m.soft_engine {
            println!("{:<13} skipped on soft: {reason}", m.name);
            continue;
        }
        let iters = m.iterations(n);
        let s = single(m.name, iters);
        let on = nested(m.name, iters, true);
        let off = nested(m.name, iters, false);
        let soft = on.report.soft.as_ref().unwrap();
        let kvm_per = (on.report.kvm_exits_total + soft.l2_kvm_exits) as f64 / soft.reflected_total as f64;
        let traps = |r: &RunReport| {
            r.soft
                .as_ref()
                .and_then(|s| s.l1_traps_per_reflected_exit())
                .map_or_else(|| "-".to_owned(), |t| format!("{t:.2}"))
        };
        let (single, ratio_on, ratio_off) = match &s {
            Ok(s) => (format!("{s:.0}"), format!("{:.1}x", on.mean_cycles / s), format!("{:.1}x", off.mean_cycles / s)),
            Err(_) => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:<13} {:>12} {:>12.0} {:>10} {:>12.0} {:>8} {:>12.2} {:>5} / {:<5}",
            m.name,
            single,
            on.mean_cycles,
            ratio_on,
            off.mean_cycles,
            ratio_off,
            kvm_per,
            traps(&on.report),
            traps(&off.report),
        );
        if let Err(why) = s {
            println!("    {}: no single-level twin: {why}", m.name);
        }
    }
    // Exact L1 cost of one reflected outl exit: the difference of two runs cancels boot,
    // setup and the final exit.
    let a = nested("outl", n, true);
    let b = nested("outl", 2 * n, true);
    let per_exit = (l1_insns(&b.report) - l1_insns(&a.report)) as f64 / n as f64;
    let kvm = (b.report.kvm_exits_total - a.report.kvm_exits_total) as f64 / n as f64;
    println!();
    println!(
        "outl, shadowing on: {per_exit:.2} instructions emulated in L1 per reflected exit (KVM insn_emulation, {n} vs {} iterations)",
        2 * n
    );
    println!("outl, shadowing on: {kvm:.2} exits of L1's VM per reflected exit (the same difference)");
    let s = b.report.soft.as_ref().unwrap();
    println!(
        "outl, shadowing on, {} iterations: time per reflected exit L0 {:.1} us, L1 {:.1} us, L2 {:.1} us",
        2 * n,
        s.l0_ns as f64 / 1e3 / s.reflected_total as f64,
        s.l1_ns as f64 / 1e3 / s.reflected_total as f64,
        s.l2_ns as f64 / 1e3 / s.reflected_total as f64
    );
}
