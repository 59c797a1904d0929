//! `nestbench top`: a live per-reason view of a traced run's exits, refreshed every
//! interval, like `perf kvm stat live`: exits per second in the last interval, the total,
//! the share, and per exit L1's handler time, the exit-to-entry round trip and the L1 traps
//! it multiplied into.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use super::{Aggregate, reason_name};

/// The live view's state between refreshes.
#[derive(Debug)]
pub struct Top {
    interval: Duration,
    last: Instant,
    last_counts: BTreeMap<u32, u64>,
    last_l0: super::L0Counters,
    title: String,
}

impl Top {
    /// A view titled `title`, refreshed every `interval`.
    #[must_use]
    pub fn new(title: String, interval: Duration) -> Self {
        Self {
            interval,
            last: Instant::now(),
            last_counts: BTreeMap::new(),
            last_l0: super::L0Counters::default(),
            title,
        }
    }

    /// The table if an interval has passed since the last one (`force`: now).
    pub fn tick(&mut self, agg: &Aggregate, force: bool) -> Option<String> {
        let secs = self.last.elapsed().as_secs_f64();
        if !force && secs < self.interval.as_secs_f64() {
            return None;
        }
        let mut out = render(&self.title, agg, &self.last_counts, secs);
        out.push_str(&render_l0(&agg.l0, &self.last_l0, secs));
        self.last_l0 = agg.l0;
        self.last = Instant::now();
        self.last_counts = agg.by_reason.iter().map(|(r, f)| (*r, f.count)).collect();
        Some(out)
    }
}

/// L0's level: KVM exits of both VMs, L0-only and reflected exits, as totals and rates since
/// the last refresh, and KVM exits per reflected exit.
#[must_use]
pub fn render_l0(now: &super::L0Counters, prev: &super::L0Counters, secs: f64) -> String {
    let rate = |a: u64, b: u64| if secs > 0.0 { a.saturating_sub(b) as f64 / secs } else { 0.0 };
    let per = if now.reflected_exits > 0 {
        format!("{:.2}", (now.l1_vm_kvm_exits + now.l2_vm_kvm_exits) as f64 / now.reflected_exits as f64)
    } else {
        "-".into()
    };
    format!(
        "L0: KVM exits L1 VM {} ({:.1}/s), L2 VM {} ({:.1}/s); L0-only {}; reflected {}; KVM exits per reflected exit {per}\n",
        now.l1_vm_kvm_exits,
        rate(now.l1_vm_kvm_exits, prev.l1_vm_kvm_exits),
        now.l2_vm_kvm_exits,
        rate(now.l2_vm_kvm_exits, prev.l2_vm_kvm_exits),
        now.l0_only_exits,
        now.reflected_exits,
    )
}

/// The table: one row per exit reason, busiest first. `prev` holds the counts at the last
/// refresh, `secs` the time since.
#[must_use]
pub fn render(title: &str, agg: &Aggregate, prev: &BTreeMap<u32, u64>, secs: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{title}    records {}  dropped {}  gaps {}{}",
        agg.records,
        agg.dropped,
        agg.gaps,
        if agg.tsc_khz == 0 { "  (no TSC rate: times in cycles)" } else { "" }
    );
    let unit = if agg.tsc_khz > 0 { "us" } else { "cyc" };
    let _ = writeln!(
        s,
        "{:<44} {:>10} {:>10} {:>7} {:>12} {:>14} {:>9}",
        "exit reason",
        "exits/s",
        "total",
        "%",
        format!("L1 handler {unit}"),
        format!("round trip {unit}"),
        "L1 traps"
    );
    let mut rows: Vec<_> = agg.by_reason.iter().collect();
    rows.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    let time = |c: f64| agg.us(c).unwrap_or(c);
    for (reason, f) in rows {
        let n = f.count.max(1) as f64;
        let recent = f.count - prev.get(reason).copied().unwrap_or(0);
        let rt = if f.round_trips > 0 {
            format!("{:.1}", time(f.round_trip_cycles as f64 / f.round_trips as f64))
        } else {
            "-".into()
        };
        let _ = writeln!(
            s,
            "{:<44} {:>10.1} {:>10} {:>6.1}% {:>12.1} {:>14} {:>9.2}",
            reason_name(*reason),
            if secs > 0.0 { recent as f64 / secs } else { 0.0 },
            f.count,
            100.0 * f.count as f64 / agg.records.max(1) as f64,
            time(f.l1_cycles as f64 / n),
            rt,
            f.l1_traps as f64 / n,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Batch;
    use nestbench_abi::trace::TraceRecord;

    #[test]
    fn l0_line_has_rates_and_multiplication() {
        let now = crate::trace::L0Counters {
            l1_vm_kvm_exits: 30,
            l2_vm_kvm_exits: 20,
            l0_only_exits: 2,
            reflected_exits: 25,
        };
        let prev = crate::trace::L0Counters { l1_vm_kvm_exits: 10, ..now };
        let l = render_l0(&now, &prev, 2.0);
        assert!(l.contains("L1 VM 30 (10.0/s)") && l.contains("per reflected exit 2.00"), "{l}");
    }

    #[test]
    fn rows_show_rates_since_the_last_refresh_busiest_first() {
        let mut agg = Aggregate { tsc_khz: 1000, ..Aggregate::default() };
        let rec = |seq, reason| TraceRecord {
            seq,
            reason,
            exit_tsc: seq * 10,
            entry_tsc: seq * 10 + 2000,
            l1_cycles: 1000,
            l1_traps: 1,
            ..TraceRecord::default()
        };
        agg.add(&Batch {
            dropped_total: 0,
            l0: crate::trace::L0Counters::default(),
            records: vec![rec(1, 12), rec(2, 30), rec(3, 30), rec(4, 30)],
        });
        let prev = BTreeMap::from([(30u32, 1u64)]);
        let t = render("top", &agg, &prev, 2.0);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("records 4"), "{t}");
        assert!(lines[2].starts_with("IO_INSTRUCTION") && lines[2].contains(" 1.0 "), "{t}");
        assert!(lines[2].contains("75.0%") && lines[2].contains("2000.0"), "2000 cycles at 1 MHz = 2000 us: {t}");
        assert!(lines[3].starts_with("HLT") && lines[3].contains(" 0.5 "), "{t}");
    }
}
