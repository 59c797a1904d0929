//! The soft engine's EPT figures, one run (closing note of "soft engine part 2"):
//!
//! * (a) `ept_touch` and `ept_fill` nested (soft engine, VMCS shadowing on) vs their
//!   single-level twin: cycles per first-touched page, from the payload's own LFENCE;RDTSC
//!   timing of each page's first read, and the ratio.
//! * (b) `ept_fill` over 1 MiB .. 1 GiB of L2 data memory: pages touched, VM2's memslot
//!   peak, evictions, L0-only fills, cycles per page, and the per-page cost relative to the
//!   1 MiB row (target: flat within 1.5x); the sizes run round-robin R times and each keeps
//!   its cheapest round, since other tenants' load on a shared host moves single runs by
//!   2-4x. L2 data pages beyond L1's 512-page pool alias its pages in EPT12
//!   (`nestbench_abi::payload::ept_alias`), so 1 GiB of L2 memory needs 2 MiB of L1 memory;
//!   every L2 page is still its own 4 KiB EPT12 leaf, hence its own memslot,
//!   within the soft engine's memslot budget (evicted in batches beyond it).
//! * (c) `ept_remap`: cycles per remap + INVEPT round trip (one reflected I/O exit in which
//!   L1 swaps an EPT12 leaf and executes INVEPT), with `outl` (the same I/O round trip
//!   without remap and INVEPT) beside it. This is the soft engine's INVEPT (every memslot of
//!   VM2 deleted, refilled on the next touches), not hardware's.
//!
//! * (d) what (b)'s growth is made of: the latency of one KVM_SET_USER_MEMORY_REGION
//!   (create, then delete) of a 4 KiB slot in a bare VM that already holds 256 .. 32,000
//!   such slots (no vCPU, no L0 code around it): the host kernel's own cost per memslot
//!   operation as the slot count grows.
//!
//! `cargo bench -p l0 --bench ept [-- --iterations N --rounds R]` (N: `ept_remap`/`outl`
//! iterations, default 500; R: rounds over the sizes of (b), default 3)

use std::path::Path;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::Kvm;
use l0::events::{Event, RunReport};
use l0::machine::{EngineConfig, Image, Machine, MachineConfig, PayloadSpec, SoftConfig};
use l0::soft::engine::SoftStats;
use nestbench_abi::payload::{EPT_DATA_PAGES, EPT_POOL_PAGES};

/// What a nested run measured.
struct Nested {
    /// Mean cycles per iteration (the payload's timing).
    per_iter: f64,
    iterations: u64,
    report: RunReport,
    wall: Duration,
}

impl Nested {
    fn soft(&self) -> &SoftStats {
        self.report.soft.as_ref().expect("a soft-engine run")
    }
}

fn nested(name: &str, iterations: u64) -> Nested {
    let m = l2_payloads::find(name).expect("a payload");
    let config = MachineConfig {
        timeout: Duration::from_secs(600),
        engine: EngineConfig::Soft(SoftConfig { vmcs_shadowing: true }),
        payload: Some(PayloadSpec::of(m, iterations, 0)),
        ..MachineConfig::default()
    };
    let mut got = (0.0, 0);
    let start = Instant::now();
    let report = Machine::new(config, &Image::Elf(l0::images::l1_elf()))
        .expect("machine")
        .run(|e| {
            if let Event::PayloadRun(p) = e {
                let r = p.results.as_ref().expect("results");
                assert_eq!((p.status, r.failures), (0, 0), "{name} {iterations}");
                got = (r.total_cycles as f64 / r.iterations.max(1) as f64, r.iterations);
            }
        })
        .expect("run");
    assert!(report.outcome.is_success(), "{name} {iterations}: {:?}", report.outcome);
    assert_eq!(got.1, iterations, "{name}: iterations done");
    Nested { per_iter: got.0, iterations: got.1, report, wall: start.elapsed() }
}

fn single(name: &str, iterations: u64) -> f64 {
    let m = l2_payloads::find(name).expect("a payload");
    let r = l0::single_level::run(
        Path::new("/dev/kvm"),
        &l0::images::payload_elf(name),
        m.cpl,
        iterations,
        0,
        Duration::from_secs(300),
    )
    .expect("single-level run");
    assert_eq!(r.status, 0, "{name} single-level: {:?}", r.problem);
    let res = r.results.expect("results");
    assert_eq!((res.failures, res.iterations), (0, iterations), "{name} single-level");
    res.total_cycles as f64 / res.iterations as f64
}

fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 30 { format!("{} GiB", bytes >> 30) } else { format!("{} MiB", bytes >> 20) }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .iter()
        .position(|a| a == "--iterations")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let rounds: u32 = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);

    // (a) First touch, nested vs single-level. The single-level twin's VM seeds the pool's
    // pages only, so both run on EPT_POOL_PAGES (2 MiB) pages.
    let pages = EPT_POOL_PAGES;
    println!(
        "(a) cycles per first-touched page, {pages} pages ({} KiB), soft engine (shadowing on) vs single-level",
        pages * 4
    );
    println!(
        "{:<10} {:>12} {:>12} {:>9} {:>10} {:>10} {:>10}",
        "payload", "single", "nested", "ratio", "reflected", "L0 fills", "L0 us/fill"
    );
    for name in ["ept_touch", "ept_fill"] {
        let s = single(name, pages);
        let r = nested(name, pages);
        let soft = r.soft();
        println!(
            "{:<10} {:>12.0} {:>12.0} {:>8.1}x {:>10} {:>10} {:>10.1}",
            name,
            s,
            r.per_iter,
            r.per_iter / s,
            soft.reflected_total,
            soft.ept.fills,
            soft.ept.fill_ns as f64 / 1e3 / soft.ept.fills.max(1) as f64,
        );
    }
    println!(
        "    ept_touch: one reflected EPT violation per page (L1 maps it), then an L0 fill; ept_fill: EPT12 maps every"
    );
    println!("    page before the launch, so each first touch is one L0-only fill (no exit on hardware)");

    // (b) Scaling of ept_fill with L2 data memory.
    println!();
    println!(
        "(b) ept_fill, L2 data memory 1 MiB .. {} (pages beyond the {EPT_POOL_PAGES}-page L1 pool alias it; 4 KiB EPT12 leaves)",
        size_label(EPT_DATA_PAGES * 4096)
    );
    println!(
        "{:<8} {:>8} {:>9} {:>8} {:>10} {:>9} {:>10} {:>9} {:>10} {:>8}",
        "L2 mem", "pages", "slot lim", "peak", "evictions", "fills", "cyc/page", "vs 1 MiB", "L0 us/fill", "wall s"
    );
    // Round-robin over the sizes, `rounds` times, keeping each size's cheapest round: a burst
    // of load from other tenants hits one round of a few sizes, not one size every time.
    let sizes: Vec<u64> = [1u64 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20, 1 << 30]
        .into_iter()
        .filter(|b| {
            let inside = b / 4096 <= EPT_DATA_PAGES;
            if !inside {
                println!("{:<8} beyond the data region ({EPT_DATA_PAGES} pages)", size_label(*b));
            }
            inside
        })
        .collect();
    let mut best: Vec<Option<Nested>> = sizes.iter().map(|_| None).collect();
    for _ in 0..rounds {
        for (i, bytes) in sizes.iter().enumerate() {
            let r = nested("ept_fill", bytes / 4096);
            if best[i].as_ref().is_none_or(|b| r.per_iter < b.per_iter) {
                best[i] = Some(r);
            }
        }
    }
    let mut worst: f64 = 1.0;
    let base = best[0].as_ref().map_or(1.0, |b| b.per_iter);
    for (bytes, r) in sizes.iter().zip(&best) {
        let r = r.as_ref().expect("every size ran");
        let e = &r.soft().ept;
        let rel = r.per_iter / base;
        worst = worst.max(rel);
        println!(
            "{:<8} {:>8} {:>9} {:>8} {:>10} {:>9} {:>10.0} {:>8.2}x {:>10.1} {:>8.1}",
            size_label(*bytes),
            r.iterations,
            e.memslot_limit,
            e.memslots_peak,
            e.evictions,
            e.fills,
            r.per_iter,
            rel,
            e.fill_ns as f64 / 1e3 / e.fills.max(1) as f64,
            r.wall.as_secs_f64(),
        );
    }
    let rows = sizes.len();
    println!(
        "    per-page cost over {rows} sizes: at most {worst:.2}x the 1 MiB row: {} the 1.5x target",
        if worst <= 1.5 { "within" } else { "NOT within" }
    );
    println!("    each row: the cheapest of {rounds} rounds over all sizes; fills count both passes (timed first");
    println!("    touches and the untimed re-read, which refills evicted pages)");

    // (c) INVEPT round trip.
    println!();
    let remap = nested("ept_remap", n);
    let outl = nested("outl", n);
    let s = remap.soft();
    println!("(c) ept_remap, {n} iterations: this engine's INVEPT cost (memslot deletion and refill), not hardware's");
    println!(
        "    {:.0} cycles per remap+INVEPT round trip (I/O exit to L1, EPT12 leaf swap, INVEPT single/all alternating, resume)",
        remap.per_iter
    );
    println!(
        "    {:.0} cycles per outl round trip (the same I/O exit, no remap, no INVEPT): INVEPT and refill add {:.0} cycles ({:.1}x)",
        outl.per_iter,
        remap.per_iter - outl.per_iter,
        remap.per_iter / outl.per_iter
    );
    let per = |v: u64| v as f64 / n as f64;
    println!(
        "    per round trip: {:.2} slot resets, {:.2} KVM_SET_USER_MEMORY_REGION calls, {:.2} L0 fills, {:.2} premapped leaves",
        per(s.ept.resets),
        per(s.ept.slot_ioctls),
        per(s.ept.fills),
        per(s.ept.premapped)
    );

    // (d) The host's memslot operation latency against the slot count.
    println!();
    memslot_latency();
}

/// Median create and delete latency (us) of a 4 KiB memslot in a bare VM that holds `n`
/// others, for growing `n`, printed as (d).
fn memslot_latency() {
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let limit = kvm.get_nr_memslots().saturating_sub(8).min(32_000);
    let mem = l0::memory::GuestMem::new(limit as u64 * 4096 + 4096).expect("memory");
    let region = |slot: u32, size: u64| kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: u64::from(slot) * 4096,
        memory_size: size,
        userspace_addr: mem.host_base() + u64::from(slot) * 4096,
    };
    // SAFETY: every region lies inside `mem`, which outlives `vm`; slots never overlap
    // (slot k maps page k).
    let set = |slot: u32, size: u64| unsafe { vm.set_user_memory_region(region(slot, size)) }.expect("memslot");
    println!("(d) KVM_SET_USER_MEMORY_REGION latency in a bare VM against its slot count (host kernel cost)");
    println!("{:>8} {:>12} {:>12}", "slots", "create us", "delete us");
    let mut held = 0u32;
    for target in [256u32, 1024, 4096, 16_384, limit as u32] {
        while held < target {
            set(held, 4096);
            held += 1;
        }
        let (mut create, mut delete) = (Vec::new(), Vec::new());
        for _ in 0..64 {
            let t = Instant::now();
            set(held, 4096);
            create.push(t.elapsed());
            let t = Instant::now();
            set(held, 0);
            delete.push(t.elapsed());
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1e6
        };
        println!("{:>8} {:>12.1} {:>12.1}", held, median(&mut create), median(&mut delete));
    }
}
