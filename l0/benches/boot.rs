//! Boot-to-exit of the hello L1: wall time from the first KVM_RUN to L1's Exit hypercall,
//! measured over repeated boots, plus the exact counts of one boot (KVM exits, instructions
//! KVM emulated), which are the same on every boot and are checked to be.
//!
//! `cargo bench -p l0 --bench boot [-- --samples N]` (or `just bench-boot`).

use std::time::Instant;

use l0::machine::{Image, Machine, MachineConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let samples: usize = args
        .iter()
        .position(|a| a == "--samples")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let image = Image::Elf(l0::images::l1_elf());
    let boot = || {
        let m = Machine::new(MachineConfig::default(), &image).expect("L1 VM");
        let setup = Instant::now();
        let r = m.run(|_| {}).expect("L1 run");
        assert!(r.outcome.is_success(), "{:?}", r.outcome);
        let emulated = r.kvm_stats.as_ref().and_then(|s| s.vcpu.counters.get("insn_emulation").copied());
        let kvm_exits = r.kvm_exits_total;
        (r.wall_ns, setup.elapsed().as_nanos() as u64, kvm_exits, emulated)
    };
    for _ in 0..5 {
        boot();
    }
    let mut wall = Vec::with_capacity(samples);
    let mut total = Vec::with_capacity(samples);
    let first = boot();
    for _ in 0..samples {
        let s = boot();
        assert_eq!((s.2, s.3), (first.2, first.3), "the counts of a boot are deterministic");
        wall.push(s.0 as f64 / 1e3);
        total.push(s.1 as f64 / 1e3);
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        format!(
            "min {:8.1}  median {:8.1}  mean {:8.1} ± {:6.1}  max {:8.1} us",
            v[0],
            v[v.len() / 2],
            mean,
            sd,
            v[v.len() - 1]
        )
    };
    println!("boot-to-exit of the hello L1, {samples} samples after 5 warm-up boots");
    println!("  vCPU run (first KVM_RUN to Exit)  {}", stats(&mut wall));
    println!("  run incl. vCPU thread + stats     {}", stats(&mut total));
    println!("  KVM exits per boot                {}", first.2);
    match first.3 {
        Some(n) => println!(
            "  KVM insn_emulation per boot       {n}  (~{:.2} us per emulated instruction)",
            wall[wall.len() / 2] / n as f64
        ),
        None => println!("  KVM insn_emulation per boot       not offered by this host's KVM stats"),
    }
}
