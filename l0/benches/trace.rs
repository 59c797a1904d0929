//! What exit tracing costs, in one run: an `outl` exit storm with the trace ring on and off,
//! alternating (off, on, off, on, ...) so that host noise hits both alike.
//!
//! * Throughput: reflected exits per second of wall time (median of the repetitions), and
//!   the payload's own cycles per iteration, traced / untraced.
//! * Exact cost in L1: instructions KVM emulated in L1 per reflected exit (`insn_emulation`
//!   of L1's vCPU, the difference between runs of N and 2N iterations so boot and setup
//!   cancel), traced minus untraced: what the ring costs per exit, instruction for
//!   instruction (L1 runs emulated at ~0.5 us per instruction on the development hosts).
//!
//! `cargo bench -p l0 --bench trace [-- --iterations N --repetitions R]`

use std::time::{Duration, Instant};

use l0::events::{Event, RunReport};
use l0::machine::{EngineConfig, Image, Machine, MachineConfig, PayloadSpec, SoftConfig};
use l0::trace::TraceConfig;

struct Run {
    cycles_per_iter: f64,
    exits_per_s: f64,
    records: u64,
    report: RunReport,
}

fn outl(iterations: u64, traced: bool) -> Run {
    let m = l2_payloads::find("outl").unwrap();
    let config = MachineConfig {
        timeout: Duration::from_secs(600),
        engine: EngineConfig::Soft(SoftConfig { vmcs_shadowing: true }),
        payload: Some(PayloadSpec::of(m, iterations, 0)),
        trace: traced.then(TraceConfig::default),
        ..MachineConfig::default()
    };
    let (mut cycles, mut records) = (0.0, 0u64);
    let start = Instant::now();
    let report = Machine::new(config, &Image::Elf(l0::images::l1_elf()))
        .unwrap()
        .run(|e| match e {
            Event::PayloadRun(p) => {
                let r = p.results.as_ref().expect("results");
                assert_eq!((p.status, r.failures), (0, 0));
                cycles = r.total_cycles as f64 / r.iterations.max(1) as f64;
            }
            Event::Trace(b) => records += b.records.len() as u64,
            _ => {}
        })
        .unwrap();
    let wall = start.elapsed().as_secs_f64();
    assert!(report.outcome.is_success(), "{:?}", report.outcome);
    if traced {
        let t = report.trace.as_ref().expect("trace stats");
        assert_eq!((records, t.dropped), (iterations, 0), "every exit traced, none dropped");
    }
    let reflected = report.soft.as_ref().unwrap().reflected_total;
    Run { cycles_per_iter: cycles, exits_per_s: reflected as f64 / wall, records, report }
}

fn l1_insns(r: &RunReport) -> u64 {
    r.kvm_stats.as_ref().and_then(|s| s.vcpu.counters.get("insn_emulation").copied()).unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() {
    let n = arg("--iterations", 2000);
    let reps = arg("--repetitions", 5).max(1);
    println!("tracing overhead: outl x{n}, soft engine, VMCS shadowing on, {reps} repetitions each, alternating");
    let (mut off_rate, mut on_rate, mut off_cyc, mut on_cyc) = (vec![], vec![], vec![], vec![]);
    let mut records = 0;
    for _ in 0..reps {
        let off = outl(n, false);
        let on = outl(n, true);
        off_rate.push(off.exits_per_s);
        on_rate.push(on.exits_per_s);
        off_cyc.push(off.cycles_per_iter);
        on_cyc.push(on.cycles_per_iter);
        records += on.records;
    }
    let (r_off, r_on) = (median(off_rate), median(on_rate));
    let (c_off, c_on) = (median(off_cyc), median(on_cyc));
    println!("{:<34} {:>14} {:>14} {:>9}", "", "untraced", "traced", "ratio");
    println!("{:<34} {:>14.0} {:>14.0} {:>8.3}x", "reflected exits per second (median)", r_off, r_on, r_on / r_off);
    println!("{:<34} {:>14.0} {:>14.0} {:>8.3}x", "payload cycles per iteration (median)", c_off, c_on, c_on / c_off);
    println!("    {records} records streamed over the traced repetitions, 0 dropped (asserted)");

    // Exact: L1 instructions per reflected exit, traced vs untraced (2N minus N cancels boot).
    let per_exit = |traced: bool| {
        let a = outl(n, traced);
        let b = outl(2 * n, traced);
        (l1_insns(&b.report) - l1_insns(&a.report)) as f64 / n as f64
    };
    let (i_off, i_on) = (per_exit(false), per_exit(true));
    println!();
    println!(
        "L1 instructions emulated per reflected exit (KVM insn_emulation, {n} vs {} iterations): untraced {i_off:.2}, traced {i_on:.2}, tracing adds {:.2}",
        2 * n,
        i_on - i_off
    );
}
