//! The orchestrator's trace ingest rate (target: at least 1 M records/s): `trace` lines as
//! nestbench-l0 writes them (4096-record batches, base64 inside JSON), pushed through the
//! real path: a supervised child's stdout (`cat` of a stream file, so the producer costs
//! nothing), line splitting, decoding, the sequence and per-reason aggregate, and the trace
//! file written as it arrives (JSON lines, then Chrome). Also the in-process decode rate
//! without the pipe. Each figure is the best of three runs.
//!
//! `cargo bench -p orchestrator --bench ingest [-- --records N]`

use std::path::Path;
use std::time::{Duration, Instant};

use l0::events::Event;
use l0::trace::{BATCH_RECORDS, TraceBatch};
use nestbench_abi::trace::TraceRecord;
use orchestrator::l0_child::{Incoming, run_l0};
use orchestrator::trace::writer::{Format, TraceWriter};
use orchestrator::trace::{Sink, decode_line};

fn stream(records: u64) -> String {
    let mut out = String::new();
    let mut seq = 0;
    while seq < records {
        let n = (records - seq).min(BATCH_RECORDS as u64);
        let batch: Vec<TraceRecord> = (seq + 1..=seq + n)
            .map(|s| TraceRecord {
                seq: s,
                reason: if s % 7 == 0 { 12 } else { 30 },
                insn_len: 2,
                l1_traps: 1,
                qualification: 0xE0_0043,
                guest_rip: 0x40_01D7,
                l1_start_tsc: s * 1000 + 300,
                l1_cycles: 120_000,
                l0_only_exits: 0,
                exit_tsc: s * 1000,
                entry_tsc: s * 1000 + 900,
            })
            .collect();
        seq += n;
        out.push_str(
            &serde_json::to_string(&Event::Trace(TraceBatch {
                records: batch,
                dropped_total: 0,
                l0: Default::default(),
            }))
            .unwrap(),
        );
        out.push('\n');
    }
    out
}

fn best_of_three(mut f: impl FnMut() -> (u64, Duration)) -> f64 {
    (0..3)
        .map(|_| {
            let (n, t) = f();
            n as f64 / t.as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = args
        .iter()
        .position(|a| a == "--records")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let dir = std::env::temp_dir().join(format!("nestbench-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = stream(records);
    let input = dir.join("stream.jsonl");
    std::fs::write(&input, &text).unwrap();
    println!(
        "trace ingest, {records} records in {BATCH_RECORDS}-record batches ({:.1} MB of stream, {:.0} bytes per record)",
        text.len() as f64 / 1e6,
        text.len() as f64 / records as f64
    );

    let in_process = best_of_three(|| {
        let start = Instant::now();
        let n: u64 = text.lines().map(|l| decode_line(l).unwrap().records.len() as u64).sum();
        (n, start.elapsed())
    });
    println!("{:<58} {:>8.2} M records/s", "decode only (in process)", in_process / 1e6);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for (label, format) in [("no file", None), ("jsonl", Some(Format::Jsonl)), ("chrome", Some(Format::Chrome))] {
        let rate = best_of_three(|| {
            let out = dir.join("trace.out");
            let writer = format.map(|f| TraceWriter::create(&out, f, serde_json::json!({"payload": "bench"})).unwrap());
            let mut sink = Sink::new(writer);
            let start = Instant::now();
            let cat = [input.display().to_string()];
            let run = rt
                .block_on(run_l0(Path::new("/bin/cat"), &cat, Duration::from_secs(600), |i: Incoming<'_>| {
                    sink.on(i);
                }))
                .unwrap();
            let (end, _, agg) = sink.finish(&run);
            let t = start.elapsed();
            assert_eq!((agg.records, agg.gaps, run.malformed.len()), (records, 0, 0), "{end}");
            (agg.records, t)
        });
        println!("{:<58} {:>8.2} M records/s", format!("child stdout -> decode -> aggregate -> {label}"), rate / 1e6);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
