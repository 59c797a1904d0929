//! Trace files, written as batches arrive: JSON lines (one record per line, between a
//! header line and an `end` line) or the Chrome trace-event format, which the Perfetto UI
//! and chrome://tracing open, with L0, L1 and L2 as separate tracks.
//!
//! Atomicity: everything goes to `FILE.partial`, renamed to `FILE` by [`TraceWriter::finish`]
//! once the closing part (with `complete` true or false and the drop counts) is on disk. A
//! `FILE.partial` left behind means the orchestrator itself died mid-run; a `FILE` whose end
//! says `"complete": false` means the l0 child was stopped and the trace holds what arrived.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use nestbench_abi::trace::TraceRecord;
use serde_json::{Value, json};

use super::{Batch, reason_name};

/// Version of the JSON-lines trace file.
pub const TRACE_FILE_VERSION: u32 = 1;

/// The file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// JSON lines: a header, one object per record, an `end` object.
    Jsonl,
    /// Chrome trace-event JSON (Perfetto UI, chrome://tracing): L0, L1, L2 tracks.
    Chrome,
}

/// A trace file being written.
#[derive(Debug)]
pub struct TraceWriter {
    format: Format,
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    header: Value,
    started: bool,
    tsc_khz: u64,
    t0: Option<u64>,
    prev_entry: Option<u64>,
    records: u64,
    /// Span names per exit reason, built once.
    names: std::collections::HashMap<u32, String>,
    reflect_names: std::collections::HashMap<u32, String>,
}

/// Where a trace is written until it is complete.
#[must_use]
pub fn partial_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

impl TraceWriter {
    /// Start writing `path` (as `path.partial`); `header` describes the run.
    pub fn create(path: &Path, format: Format, header: Value) -> io::Result<Self> {
        let tmp = partial_path(path);
        let out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        Ok(Self {
            format,
            path: path.to_owned(),
            tmp,
            out,
            header,
            started: false,
            tsc_khz: 0,
            t0: None,
            prev_entry: None,
            records: 0,
            names: std::collections::HashMap::new(),
            reflect_names: std::collections::HashMap::new(),
        })
    }

    /// The host TSC rate the record times are in (from `trace_start`).
    pub fn set_tsc_khz(&mut self, khz: u64) {
        self.tsc_khz = khz;
    }

    fn start(&mut self) -> io::Result<()> {
        if std::mem::replace(&mut self.started, true) {
            return Ok(());
        }
        match self.format {
            Format::Jsonl => {
                let mut h = json!({ "nestbench_trace": TRACE_FILE_VERSION, "tsc_khz": self.tsc_khz });
                if let (Some(h), Some(extra)) = (h.as_object_mut(), self.header.as_object()) {
                    h.extend(extra.clone());
                }
                writeln!(self.out, "{h}")
            }
            Format::Chrome => {
                let name = format!("nestbench {}", self.header["payload"].as_str().unwrap_or("run"));
                write!(
                    self.out,
                    "{{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n{}",
                    json!({"ph": "M", "pid": 1, "name": "process_name", "args": {"name": name}})
                )?;
                for (tid, track) in [(1, "L0 (nestbench-l0)"), (2, "L1 (exit handler)"), (3, "L2 (payload)")] {
                    let m = json!({"ph": "M", "pid": 1, "tid": tid, "name": "thread_name", "args": {"name": track}});
                    let order = json!({"ph": "M", "pid": 1, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}});
                    write!(self.out, ",\n{m},\n{order}")?;
                }
                Ok(())
            }
        }
    }

    /// Append a batch.
    pub fn write(&mut self, b: &Batch) -> io::Result<()> {
        self.start()?;
        for r in &b.records {
            match self.format {
                Format::Jsonl => self.jsonl(r)?,
                Format::Chrome => self.chrome(r)?,
            }
            self.records += 1;
        }
        Ok(())
    }

    fn jsonl(&mut self, r: &TraceRecord) -> io::Result<()> {
        // By hand: this is the orchestrator's ingest hot path (see benches/ingest.rs).
        writeln!(
            self.out,
            "{{\"seq\":{},\"reason\":{},\"insn_len\":{},\"qualification\":{},\"guest_rip\":{},\"exit_tsc\":{},\"l1_start_tsc\":{},\"l1_cycles\":{},\"entry_tsc\":{},\"l1_traps\":{},\"l0_only_exits\":{}}}",
            r.seq,
            r.reason,
            r.insn_len,
            r.qualification,
            r.guest_rip,
            r.exit_tsc,
            r.l1_start_tsc,
            r.l1_cycles,
            r.entry_tsc,
            r.l1_traps,
            r.l0_only_exits
        )
    }

    /// TSC -> nanoseconds since the first exit (cycles when the rate is unknown).
    fn ns(&self, tsc: u64) -> u64 {
        let d = u128::from(tsc.saturating_sub(self.t0.unwrap_or(tsc)));
        if self.tsc_khz > 0 { (d * 1_000_000 / u128::from(self.tsc_khz)) as u64 } else { d as u64 }
    }

    /// One complete event; `ts` and `dur` are microseconds with three decimals, written
    /// from integer nanoseconds (float formatting would halve the write rate).
    fn span(&mut self, tid: u32, name: &str, from: u64, to: u64, args: &str) -> io::Result<()> {
        let (ts, end) = (self.ns(from), self.ns(to));
        let dur = end.saturating_sub(ts);
        write!(
            self.out,
            ",\n{{\"ph\":\"X\",\"pid\":1,\"tid\":{tid},\"name\":\"{name}\",\"ts\":{}.{:03},\"dur\":{}.{:03}{args}}}",
            ts / 1000,
            ts % 1000,
            dur / 1000,
            dur % 1000
        )
    }

    fn chrome(&mut self, r: &TraceRecord) -> io::Result<()> {
        let exit = r.exit_tsc;
        self.t0.get_or_insert(exit);
        let entry = (r.entry_tsc > exit).then_some(r.entry_tsc);
        // L1's times come from its own TSC reads: keep them inside L0's exit..entry window.
        let l1_start = r.l1_start_tsc.clamp(exit, entry.unwrap_or(u64::MAX));
        let l1_end = (l1_start + u64::from(r.l1_cycles)).min(entry.unwrap_or(u64::MAX));
        let reason = self.names.entry(r.reason).or_insert_with(|| reason_name(r.reason)).clone();
        if let Some(prev) = self.prev_entry.filter(|&p| p <= exit) {
            self.span(3, "L2 runs", prev, exit, "")?;
        }
        let reflect = self.reflect_names.entry(r.reason).or_insert_with(|| format!("reflect: {reason}")).clone();
        self.span(1, &reflect, exit, l1_start, "")?;
        let args = format!(
            ",\"args\":{{\"seq\":{},\"qualification\":\"{:#x}\",\"guest_rip\":\"{:#x}\",\"insn_len\":{}}}",
            r.seq, r.qualification, r.guest_rip, r.insn_len
        );
        self.span(2, &reason, l1_start, l1_end, &args)?;
        if let Some(entry) = entry {
            let args =
                format!(",\"args\":{{\"l1_traps\":{},\"l0_only_exits_before\":{}}}", r.l1_traps, r.l0_only_exits);
            self.span(1, "resume", l1_end, entry, &args)?;
        }
        self.prev_entry = entry;
        Ok(())
    }

    /// Close the file with `end` (completeness, counts) and move it to its name. Returns
    /// the path.
    pub fn finish(mut self, end: &Value) -> io::Result<PathBuf> {
        self.start()?;
        match self.format {
            Format::Jsonl => writeln!(self.out, "{}", json!({ "end": end, "records_written": self.records }))?,
            Format::Chrome => {
                let meta = json!({ "nestbench": self.header, "end": end, "records_written": self.records, "tsc_khz": self.tsc_khz });
                writeln!(self.out, "\n],\"metadata\":{meta}}}")?;
            }
        }
        let file = self.out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        let r = |seq, exit: u64| TraceRecord {
            seq,
            reason: 30,
            insn_len: 2,
            qualification: 0xE0_0043,
            guest_rip: 0x40_01D7,
            exit_tsc: exit,
            l1_start_tsc: exit + 100,
            l1_cycles: 50,
            entry_tsc: exit + 300,
            l1_traps: 1,
            ..TraceRecord::default()
        };
        Batch { dropped_total: 0, l0: crate::trace::L0Counters::default(), records: vec![r(1, 1000), r(2, 2000)] }
    }

    #[test]
    fn jsonl_has_header_records_and_end_and_appears_only_when_finished() {
        let dir = std::env::temp_dir().join(format!("nb-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        let mut w = TraceWriter::create(&path, Format::Jsonl, json!({"payload": "outl"})).unwrap();
        w.set_tsc_khz(1000);
        w.write(&batch()).unwrap();
        assert!(!path.exists() && partial_path(&path).exists());
        w.finish(&json!({"complete": true})).unwrap();
        assert!(path.exists() && !partial_path(&path).exists());
        let lines: Vec<Value> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!((lines[0]["nestbench_trace"].as_u64(), lines[0]["payload"].as_str()), (Some(1), Some("outl")));
        assert_eq!((lines[2]["seq"].as_u64(), lines[2]["qualification"].as_u64()), (Some(2), Some(0xE0_0043)));
        assert_eq!(lines[3]["end"]["complete"], true);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chrome_is_one_json_document_with_three_tracks() {
        let dir = std::env::temp_dir().join(format!("nb-chrome-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.json");
        let mut w = TraceWriter::create(&path, Format::Chrome, json!({"payload": "outl"})).unwrap();
        w.set_tsc_khz(1000);
        w.write(&batch()).unwrap();
        w.finish(&json!({"complete": false})).unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let ev = doc["traceEvents"].as_array().unwrap();
        let spans: Vec<&Value> = ev.iter().filter(|e| e["ph"] == "X").collect();
        // Two records: reflect + handler + resume each, and one L2 span between them.
        assert_eq!(spans.len(), 7);
        assert_eq!(spans.iter().filter(|e| e["tid"] == 3).count(), 1);
        let l1 = spans.iter().find(|e| e["tid"] == 2).unwrap();
        assert_eq!(
            (l1["name"].as_str(), l1["ts"].as_f64(), l1["dur"].as_f64()),
            (Some("IO_INSTRUCTION"), Some(100.0), Some(50.0))
        );
        assert_eq!(doc["metadata"]["end"]["complete"], false);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
