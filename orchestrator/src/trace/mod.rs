//! Exit traces on the orchestrator's side: decode the `trace` batches of an l0 stream
//! ([`decode_line`]), check their sequence ([`Aggregate`]: records, gaps, drops, per-reason
//! figures, exit rate over time), and write them to disk as they arrive ([`writer`]).
//! `nestbench top` ([`top`]) shows the aggregate live.

pub mod top;
pub mod writer;

use std::collections::BTreeMap;

pub use nestbench_protocol::trace::L0Counters;
use nestbench_protocol::trace::{BatchError, TraceBatch, WireBatch};
use serde::Serialize;

/// The prefix every trace batch line starts with (l0 writes `event` first).
pub const LINE_PREFIX: &str = r#"{"event":"trace","#;

/// One decoded batch (the protocol's [`TraceBatch`]).
pub type Batch = TraceBatch;

/// A trace line that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not the documented JSON.
    #[error("trace line is not the documented JSON: {0}")]
    Json(String),
    /// Its records do not decode.
    #[error(transparent)]
    Records(#[from] BatchError),
}

/// Decode one `trace` line of the l0 stream (docs/event-stream.md "Traces") with the
/// protocol's decoding, borrowing the base64 text instead of copying it.
pub fn decode_line(line: &str) -> Result<Batch, DecodeError> {
    let w: WireBatch<'_> = serde_json::from_str(line).map_err(|e| DecodeError::Json(e.to_string()))?;
    Ok(TraceBatch::try_from(w)?)
}

pub use nestbench_protocol::reason_name;

/// Figures of one exit reason.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ReasonFigures {
    /// Records.
    pub count: u64,
    /// Sum of L1's handler cycles.
    pub l1_cycles: u64,
    /// Sum of exit-to-entry cycles (records with an entry time).
    pub round_trip_cycles: u64,
    /// Records with an entry time.
    pub round_trips: u64,
    /// Sum of L1 traps.
    pub l1_traps: u64,
    /// Sum of the L0-only exits before them.
    pub l0_only_exits: u64,
}

/// Width of a bucket of [`Aggregate::rate`], in TSC cycles per millisecond units: 100 ms.
pub const RATE_BUCKET_MS: u64 = 100;

/// What the records of one run add up to, checked as they arrive.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Aggregate {
    /// Host TSC rate (from `trace_start`), 0 if unknown.
    pub tsc_khz: u64,
    /// Records received.
    pub records: u64,
    /// Sequence numbers missing between received records (each is a record L1 dropped).
    pub gaps: u64,
    /// L1's drop count, as last reported.
    pub dropped: u64,
    /// Records whose sequence number did not increase (never expected; counted, not fixed).
    pub out_of_order: u64,
    /// The last sequence number.
    pub last_seq: u64,
    /// Exit TSC of the first record.
    pub first_exit_tsc: u64,
    /// Exit TSC of the last record.
    pub last_exit_tsc: u64,
    /// Per exit reason (full reason value).
    pub by_reason: BTreeMap<u32, ReasonFigures>,
    /// Exits per [`RATE_BUCKET_MS`] bucket since the first record (needs `tsc_khz`).
    pub rate: Vec<u64>,
    /// L0's counters from the latest batch.
    pub l0: L0Counters,
}

/// The most rate buckets kept (an hour at 100 ms).
const MAX_RATE_BUCKETS: usize = 36_000;

impl Aggregate {
    /// Add a batch.
    pub fn add(&mut self, b: &Batch) {
        self.dropped = self.dropped.max(b.dropped_total);
        self.l0 = b.l0;
        for r in &b.records {
            if r.seq <= self.last_seq {
                self.out_of_order += 1;
                continue;
            }
            self.gaps += r.seq - self.last_seq - 1;
            self.last_seq = r.seq;
            if self.records == 0 {
                self.first_exit_tsc = r.exit_tsc;
            }
            self.records += 1;
            self.last_exit_tsc = self.last_exit_tsc.max(r.exit_tsc);
            let f = self.by_reason.entry(r.reason).or_default();
            f.count += 1;
            f.l1_cycles += u64::from(r.l1_cycles);
            if r.entry_tsc > r.exit_tsc {
                f.round_trip_cycles += r.entry_tsc - r.exit_tsc;
                f.round_trips += 1;
            }
            f.l1_traps += u64::from(r.l1_traps);
            f.l0_only_exits += u64::from(r.l0_only_exits);
            if self.tsc_khz > 0 && r.exit_tsc >= self.first_exit_tsc {
                let bucket = ((r.exit_tsc - self.first_exit_tsc) / (self.tsc_khz * RATE_BUCKET_MS)) as usize;
                if bucket < MAX_RATE_BUCKETS {
                    if self.rate.len() <= bucket {
                        self.rate.resize(bucket + 1, 0);
                    }
                    self.rate[bucket] += 1;
                }
            }
        }
    }

    /// Cycles to microseconds at the TSC rate (`None` without one).
    #[must_use]
    pub fn us(&self, cycles: f64) -> Option<f64> {
        (self.tsc_khz > 0).then(|| cycles * 1000.0 / self.tsc_khz as f64)
    }

    /// The figures as JSON for `run --json` and results (reasons by name).
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let reasons: serde_json::Map<String, serde_json::Value> = self
            .by_reason
            .iter()
            .map(|(r, f)| {
                let n = f.count.max(1) as f64;
                let v = serde_json::json!({
                    "count": f.count,
                    "mean_l1_handler_cycles": f.l1_cycles as f64 / n,
                    "mean_round_trip_cycles": (f.round_trips > 0).then(|| f.round_trip_cycles as f64 / f.round_trips as f64),
                    "l1_traps_per_exit": f.l1_traps as f64 / n,
                    "l0_only_exits": f.l0_only_exits,
                });
                (reason_name(*r), v)
            })
            .collect();
        serde_json::json!({
            "records": self.records,
            "dropped": self.dropped,
            "gaps": self.gaps,
            "out_of_order": self.out_of_order,
            "tsc_khz": self.tsc_khz,
            "by_reason": reasons,
            "l0": self.l0,
            "rate_bucket_ms": RATE_BUCKET_MS,
            "exits_per_bucket": self.rate,
        })
    }
}

/// What a traced run does with what arrives: aggregate it and, with a file, write it.
#[derive(Debug, Default)]
pub struct Sink {
    /// The figures so far.
    pub agg: Aggregate,
    writer: Option<writer::TraceWriter>,
    /// The first write error (the run goes on; the trace is reported incomplete).
    pub write_error: Option<String>,
}

impl Sink {
    /// A sink that writes to `writer` when given.
    #[must_use]
    pub fn new(writer: Option<writer::TraceWriter>) -> Self {
        Self { agg: Aggregate::default(), writer, write_error: None }
    }

    /// Take what the child said. Returns true when a batch arrived.
    pub fn on(&mut self, incoming: crate::l0_child::Incoming<'_>) -> bool {
        match incoming {
            crate::l0_child::Incoming::Event(e) => {
                if let nestbench_protocol::Event::TraceStart { tsc_khz, .. } = e {
                    self.agg.tsc_khz = *tsc_khz;
                    if let Some(w) = &mut self.writer {
                        w.set_tsc_khz(self.agg.tsc_khz);
                    }
                }
                false
            }
            crate::l0_child::Incoming::Trace(b) => {
                self.agg.add(&b);
                if let (Some(w), None) = (&mut self.writer, &self.write_error) {
                    if let Err(e) = w.write(&b) {
                        self.write_error = Some(e.to_string());
                    }
                }
                true
            }
        }
    }

    /// The run is over: close the file with what is known about completeness. Returns the
    /// end record (also in the file) and where the file is.
    pub fn finish(
        mut self,
        run: &crate::l0_child::ChildRun,
    ) -> (serde_json::Value, Option<std::path::PathBuf>, Aggregate) {
        let report_trace = run.report().and_then(|r| r.trace.as_ref());
        let complete = run.complete() && self.write_error.is_none() && report_trace.is_none_or(|t| t.error.is_none());
        let end = serde_json::json!({
            "complete": complete,
            "interrupted": run.interrupted,
            "exit_code": run.exit_code,
            "records": self.agg.records,
            "dropped": self.agg.dropped.max(report_trace.map_or(0, |t| t.dropped)),
            "gaps": self.agg.gaps,
            "l0": report_trace,
            "write_error": self.write_error,
        });
        let path = self.writer.take().and_then(|w| match w.finish(&end) {
            Ok(p) => Some(p),
            Err(e) => {
                self.write_error.get_or_insert(e.to_string());
                None
            }
        });
        (end, path, self.agg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nestbench_abi::trace::TraceRecord;

    fn rec(seq: u64, reason: u32, exit: u64) -> TraceRecord {
        TraceRecord {
            seq,
            reason,
            exit_tsc: exit,
            entry_tsc: exit + 50,
            l1_cycles: 10,
            l1_traps: 1,
            ..TraceRecord::default()
        }
    }

    #[test]
    fn lines_from_l0_decode_to_the_same_records() {
        let records = vec![rec(1, 30, 100), rec(2, 12, 200)];
        let l0c =
            l0::trace::L0Counters { l1_vm_kvm_exits: 9, l2_vm_kvm_exits: 8, l0_only_exits: 1, reflected_exits: 7 };
        let ev =
            l0::events::Event::Trace(l0::trace::TraceBatch { records: records.clone(), dropped_total: 3, l0: l0c });
        let line = serde_json::to_string(&ev).unwrap();
        assert!(line.starts_with(LINE_PREFIX), "{line}");
        let l0 = L0Counters { l1_vm_kvm_exits: 9, l2_vm_kvm_exits: 8, l0_only_exits: 1, reflected_exits: 7 };
        assert_eq!(decode_line(&line), Ok(Batch { dropped_total: 3, l0, records }));
        assert!(matches!(
            decode_line(r#"{"event":"trace","count":1,"dropped_total":0,"records":"AAAA"}"#),
            Err(DecodeError::Records(BatchError::Length { .. }))
        ));
        assert!(matches!(
            decode_line(r#"{"event":"trace","count":0,"dropped_total":0,"records":"!"}"#),
            Err(DecodeError::Records(BatchError::Base64(_)))
        ));
        assert!(matches!(decode_line(r#"{"event":"trace"}"#), Err(DecodeError::Json(_))));
    }

    #[test]
    fn aggregate_counts_gaps_reasons_and_rate() {
        let mut a = Aggregate { tsc_khz: 1000, ..Aggregate::default() };
        a.add(&Batch { dropped_total: 0, l0: L0Counters::default(), records: vec![rec(1, 30, 0), rec(2, 30, 50_000)] });
        a.add(&Batch {
            dropped_total: 2,
            l0: L0Counters { reflected_exits: 4, ..L0Counters::default() },
            records: vec![rec(5, 12, 150_000), rec(5, 12, 150_001)],
        });
        assert_eq!((a.records, a.gaps, a.dropped, a.out_of_order), (3, 2, 2, 1));
        assert_eq!(a.l0.reflected_exits, 4, "the latest batch's counters");
        assert_eq!(a.by_reason[&30].count, 2);
        assert_eq!(a.by_reason[&30].round_trip_cycles, 100);
        assert_eq!(a.rate, [2, 1], "100 ms buckets at 1 MHz: 100,000 cycles each");
        assert_eq!(reason_name(30), "IO_INSTRUCTION");
        assert_eq!(reason_name(33 | 1 << 31), "INVALID_STATE (VM-entry failure)");
        let j = a.to_json();
        assert_eq!(j["by_reason"]["IO_INSTRUCTION"]["count"], 2);
    }
}
