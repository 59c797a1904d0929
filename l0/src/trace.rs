//! L0's side of the exit-trace ring ([`nestbench_abi::trace`]): check the ring L1 registers,
//! stamp each exit delivered to L1 with L0's own times and counts ([`Stamps`]), drain L1's
//! records by reading its memory (no exit), merge the two, and hand out batches for the
//! event stream (docs/event-stream.md "Traces").
//!
//! L1 is hostile input: the registration is checked field by field, and a drain that finds
//! `head` behind `tail`, more than a ring ahead, or a sequence number that does not increase
//! stops tracing for the run with [`TraceError`] (reported as an event); no index read from
//! L1 memory is used unchecked.

pub use nestbench_protocol::trace::{L0Counters, TraceBatch, TraceStats};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nestbench_abi::Pod;
use nestbench_abi::layout::L1_IMAGE_BASE;
use nestbench_abi::trace::{RECORD_VERSION, RING_HEADER_SIZE, RING_MAGIC, RingHeader, TraceRecord, offset};

use crate::memory::GuestMem;

/// What the caller asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceConfig {
    /// Ring capacity in records (a power of two, at most [`nestbench_abi::trace::MAX_CAPACITY`];
    /// L1 clamps it to the ring it carries).
    pub capacity: u32,
    /// Drain only when the run ends (forces overflow: for testing drop accounting).
    pub drain_at_end: bool,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self { capacity: nestbench_abi::trace::L1_RING_CAPACITY, drain_at_end: false }
    }
}

/// Why a registration was refused (the hypercall's status says which kind).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    /// An argument is out of range (BadArgument).
    #[error("{0}")]
    Argument(String),
    /// The ring does not lie in L1's memory (BadAddress).
    #[error("{0}")]
    Address(String),
}

/// A drain found L1's ring in a state the protocol does not allow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    /// `head` moved backwards or more than a ring ahead of `tail`.
    #[error("ring head {head} with tail {tail} and capacity {capacity}: not a state L1 can publish")]
    Head {
        /// Read from L1.
        head: u64,
        /// L0's tail.
        tail: u64,
        /// The ring's capacity.
        capacity: u64,
    },
    /// A record's sequence number does not follow the previous one.
    #[error("record at ring index {index} has sequence number {seq}, after {last}")]
    Sequence {
        /// Ring index (head count).
        index: u64,
        /// Its `seq`.
        seq: u64,
        /// The previous record's.
        last: u64,
    },
    /// L1 memory could not be read or written (the ring was checked at registration).
    #[error("ring memory: {0}")]
    Memory(String),
}

/// L0's stamp of one exit delivered to L1 (a reflected exit or an entry failure).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// Host TSC when L2's exit reached L0.
    pub exit_tsc: u64,
    /// Host TSC when L2 ran again (0 until then).
    pub entry_tsc: u64,
    /// L1 exits while L1 handled it (set at the resume).
    pub l1_traps: u64,
    /// L0-only exits since the previous delivered exit.
    pub l0_only_exits: u64,
}

/// The most stamps kept waiting for their records (a ring drained only at the end, or an L1
/// that does not publish): the oldest go first, counted in [`TraceStats::stamps_lost`].
const MAX_STAMPS: usize = 1 << 20;

/// L0's stamps of delivered exits, by sequence number (the engine fills it; the
/// [`Tracer`] consumes it).
#[derive(Debug, Default)]
pub struct Stamps {
    on: bool,
    /// Sequence number of the front stamp.
    first_seq: u64,
    queue: VecDeque<Stamp>,
    /// The back stamp waits for its entry time.
    awaiting_entry: bool,
    l0_only_since: u64,
    lost: u64,
}

impl Stamps {
    /// Start stamping (the ring was registered): the next delivered exit is sequence 1.
    pub fn start(&mut self) {
        *self = Self { on: true, first_seq: 1, ..Self::default() };
    }

    /// Whether stamps are taken.
    #[must_use]
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// An L2 exit L0 handled alone.
    pub fn l0_only(&mut self) {
        self.l0_only_since += 1;
    }

    /// An exit delivered to L1 at host TSC `exit_tsc`.
    pub fn delivered(&mut self, exit_tsc: u64) {
        if !self.on {
            return;
        }
        if self.queue.len() == MAX_STAMPS {
            self.queue.pop_front();
            self.first_seq += 1;
            self.lost += 1;
        }
        let l0_only_exits = std::mem::take(&mut self.l0_only_since);
        self.queue.push_back(Stamp { exit_tsc, l0_only_exits, ..Stamp::default() });
        self.awaiting_entry = false;
    }

    /// L1 resumed from the last delivered exit after `l1_traps` exits of its own; its entry
    /// time follows with [`Stamps::entering`].
    pub fn resumed(&mut self, l1_traps: u64) {
        if let Some(s) = self.queue.back_mut().filter(|_| self.on) {
            s.l1_traps = l1_traps;
            self.awaiting_entry = true;
        }
    }

    /// L2 is about to run (or to take an exit before its first instruction) at host TSC `tsc`.
    pub fn entering(&mut self, tsc: u64) {
        if std::mem::take(&mut self.awaiting_entry) {
            if let Some(s) = self.queue.back_mut() {
                s.entry_tsc = tsc;
            }
        }
    }

    /// Take the stamp of sequence `seq` if it is complete (`final_drain`: complete or not);
    /// stamps of lower sequence numbers (their records were dropped) go.
    fn take(&mut self, seq: u64, final_drain: bool) -> Option<Option<Stamp>> {
        while self.first_seq < seq && !self.queue.is_empty() {
            self.queue.pop_front();
            self.first_seq += 1;
        }
        if self.first_seq != seq {
            return Some(None);
        }
        let front = *self.queue.front()?;
        if self.queue.len() == 1 && front.entry_tsc == 0 && !final_drain {
            // The latest delivered exit, not entered again yet: wait for its entry time.
            return None;
        }
        self.queue.pop_front();
        self.first_seq += 1;
        Some(Some(front))
    }
}

/// A batch is handed out at this many records, or after [`BATCH_INTERVAL`].
pub const BATCH_RECORDS: usize = 4096;
/// The longest a drained record waits before its batch is handed out.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(50);

/// The drain side of one run.
#[derive(Debug)]
pub struct Tracer {
    config: TraceConfig,
    ring: u64,
    capacity: u64,
    tail: u64,
    last_seq: u64,
    /// Guest TSC - host TSC of L1's vCPU.
    tsc_offset: i64,
    batch: Vec<TraceRecord>,
    last_flush: Instant,
    /// Counters.
    pub stats: TraceStats,
}

impl Tracer {
    /// A tracer for `config`, before L1 registers its ring.
    #[must_use]
    pub fn new(config: TraceConfig) -> Self {
        Self {
            config,
            ring: 0,
            capacity: 0,
            tail: 0,
            last_seq: 0,
            tsc_offset: 0,
            batch: Vec::new(),
            last_flush: Instant::now(),
            stats: TraceStats::default(),
        }
    }

    /// Whether a ring is registered and tracing has not failed.
    #[must_use]
    pub fn active(&self) -> bool {
        self.capacity != 0 && self.stats.error.is_none()
    }

    /// Whether drains happen at every VM entry (else only at the end).
    #[must_use]
    pub fn drains_per_entry(&self) -> bool {
        !self.config.drain_at_end
    }

    /// L1's `TraceRing` hypercall: check the ring at `gpa` with `capacity` records.
    /// `tsc_offset` is L1's guest TSC minus the host TSC.
    pub fn register(&mut self, mem: &GuestMem, gpa: u64, capacity: u64, tsc_offset: i64) -> Result<(), RegisterError> {
        let arg = |s: String| Err(RegisterError::Argument(s));
        if self.capacity != 0 {
            return arg("a trace ring is already registered".into());
        }
        if !nestbench_abi::trace::valid_capacity(capacity) || capacity > u64::from(self.config.capacity) {
            return arg(format!(
                "capacity {capacity} is not a power of two between 1 and the {} records L0 asked for",
                self.config.capacity
            ));
        }
        let bytes = nestbench_abi::trace::ring_bytes(capacity);
        if gpa % 4096 != 0 || gpa < L1_IMAGE_BASE || mem.check(gpa, bytes).is_err() {
            return Err(RegisterError::Address(format!(
                "ring {gpa:#x}+{bytes:#x} is not 4 KiB-aligned inside L1's memory above {L1_IMAGE_BASE:#x}"
            )));
        }
        let raw =
            mem.read_vec(gpa, size_of::<RingHeader>() as u64).map_err(|e| RegisterError::Address(e.to_string()))?;
        let h = RingHeader::from_bytes(&raw).expect("header-sized read");
        let expected = RingHeader {
            magic: RING_MAGIC,
            version: RECORD_VERSION,
            capacity: capacity as u32,
            ..RingHeader::default()
        };
        if (h.magic, h.version, h.capacity, h.head, h.tail, h.dropped)
            != (expected.magic, expected.version, expected.capacity, 0, 0, 0)
        {
            return arg(format!("ring header {h:?} is not a fresh version {RECORD_VERSION} ring of {capacity}"));
        }
        self.ring = gpa;
        self.capacity = capacity;
        self.tsc_offset = tsc_offset;
        self.stats.capacity = capacity;
        Ok(())
    }

    /// Copy what L1 published since the last drain, merge L0's stamps, and advance `tail`.
    /// `final_drain`: the run is over, take records whose stamps have no entry time.
    /// An error stops tracing (the caller reports it once).
    pub fn drain(&mut self, mem: &GuestMem, stamps: &mut Stamps, final_drain: bool) -> Result<(), TraceError> {
        if !self.active() {
            return Ok(());
        }
        let r = self.drain_inner(mem, stamps, final_drain);
        if let Err(e) = &r {
            self.stats.error = Some(e.to_string());
        }
        r
    }

    fn drain_inner(&mut self, mem: &GuestMem, stamps: &mut Stamps, final_drain: bool) -> Result<(), TraceError> {
        let rd = |gpa| mem.read_u64(gpa).map_err(|e| TraceError::Memory(e.to_string()));
        self.stats.drains += 1;
        let head = rd(self.ring + offset::HEAD)?;
        self.stats.dropped = rd(self.ring + offset::DROPPED)?;
        if head < self.tail || head - self.tail > self.capacity {
            return Err(TraceError::Head { head, tail: self.tail, capacity: self.capacity });
        }
        let mut raw = [0u8; size_of::<TraceRecord>()];
        while self.tail < head {
            let slot = self.ring + RING_HEADER_SIZE + (self.tail & (self.capacity - 1)) * raw.len() as u64;
            mem.read(slot, &mut raw).map_err(|e| TraceError::Memory(e.to_string()))?;
            let mut rec = TraceRecord::from_bytes(&raw).expect("record-sized read");
            if rec.seq <= self.last_seq {
                return Err(TraceError::Sequence { index: self.tail, seq: rec.seq, last: self.last_seq });
            }
            let Some(stamp) = stamps.take(rec.seq, final_drain) else { break };
            // L0's fields are L0's alone: whatever the ring slot holds there is replaced
            // (L1 does not spend stores on them).
            let s = stamp.unwrap_or_default();
            rec.exit_tsc = s.exit_tsc;
            rec.entry_tsc = s.entry_tsc;
            rec.l1_traps = u16::try_from(s.l1_traps).unwrap_or(u16::MAX);
            rec.l0_only_exits = u32::try_from(s.l0_only_exits).unwrap_or(u32::MAX);
            rec.l1_start_tsc = rec.l1_start_tsc.wrapping_sub(self.tsc_offset as u64);
            self.last_seq = rec.seq;
            self.batch.push(rec);
            self.tail += 1;
            self.stats.records += 1;
        }
        self.stats.stamps_lost = stamps.lost;
        mem.write_u64(self.ring + offset::TAIL, self.tail).map_err(|e| TraceError::Memory(e.to_string()))
    }

    /// The pending records as a batch, if there are enough, or they waited long enough, or
    /// `force` (the end of the run), with L0's counters as they are now (`l0` is asked only
    /// when a batch is cut, not at every drain).
    pub fn take_batch(&mut self, force: bool, l0: impl FnOnce() -> L0Counters) -> Option<TraceBatch> {
        let due = self.batch.len() >= BATCH_RECORDS || self.last_flush.elapsed() >= BATCH_INTERVAL;
        if self.batch.is_empty() || !(due || force) {
            return None;
        }
        self.last_flush = Instant::now();
        self.stats.batches += 1;
        Some(TraceBatch { records: std::mem::take(&mut self.batch), dropped_total: self.stats.dropped, l0: l0() })
    }
}

/// A trace ring capacity as a user gives it: a power of two from 1 to L1's maximum
/// ([`nestbench_abi::trace::L1_RING_CAPACITY`]). For both command lines, so the orchestrator
/// refuses what `nestbench-l0` would.
pub fn parse_capacity(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{s:?} is not a record count: {e}"))?;
    let max = nestbench_abi::trace::L1_RING_CAPACITY;
    if n == 0 || !n.is_power_of_two() || n > max {
        return Err(format!("{n} is not a power of two between 1 and {max}"));
    }
    Ok(n)
}

/// The host's TSC.
#[must_use]
pub fn host_tsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is available on every x86-64 CPU KVM runs on.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// L1's TSC minus the host's for `vcpu` (KVM applies a per-vCPU offset): IA32_TSC read
/// through KVM_GET_MSRS between two host RDTSCs, the narrowest of five brackets. `None` if
/// KVM does not answer.
#[must_use]
pub fn tsc_offset(vcpu: &kvm_ioctls::VcpuFd) -> Option<i64> {
    const IA32_TSC: u32 = 0x10;
    let mut best: Option<(u64, i64)> = None;
    for _ in 0..5 {
        let mut msrs =
            kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry { index: IA32_TSC, ..Default::default() }])
                .ok()?;
        let before = host_tsc();
        let n = vcpu.get_msrs(&mut msrs).ok()?;
        let after = host_tsc();
        if n != 1 {
            return None;
        }
        let width = after.wrapping_sub(before);
        let offset = msrs.as_slice()[0].data.wrapping_sub(before + width / 2) as i64;
        if best.is_none_or(|(w, _)| width < w) {
            best = Some((width, offset));
        }
    }
    best.map(|(_, o)| o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nestbench_abi::trace::ring_bytes;

    const RING: u64 = 0x20_0000;

    fn setup(cap: u32) -> (GuestMem, Tracer) {
        let mem = GuestMem::new(4 << 20).unwrap();
        let h = RingHeader { magic: RING_MAGIC, version: RECORD_VERSION, capacity: cap, ..RingHeader::default() };
        mem.write(RING, h.as_bytes()).unwrap();
        let mut t = Tracer::new(TraceConfig { capacity: 4096, drain_at_end: false });
        t.register(&mem, RING, u64::from(cap), 1000).unwrap();
        (mem, t)
    }

    /// What L1's producer does (l1_guest::trace), on the host.
    fn publish(mem: &GuestMem, cap: u64, seq: u64, start: u64) {
        let head = mem.read_u64(RING + offset::HEAD).unwrap();
        let rec = TraceRecord { seq, reason: 30, insn_len: 2, l1_start_tsc: start, ..TraceRecord::default() };
        mem.write(RING + RING_HEADER_SIZE + (head % cap) * 64, rec.as_bytes()).unwrap();
        mem.write_u64(RING + offset::HEAD, head + 1).unwrap();
    }

    #[test]
    fn batches_serialise_as_base64_records() {
        use base64::Engine as _;
        let records: Vec<TraceRecord> =
            (1..=3).map(|seq| TraceRecord { seq, reason: 30, ..TraceRecord::default() }).collect();
        let b = TraceBatch { records: records.clone(), dropped_total: 7, l0: L0Counters::default() };
        let v = serde_json::to_value(crate::events::Event::Trace(b)).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["first_seq"].as_u64(), v["count"].as_u64()),
            (Some("trace"), Some(1), Some(3))
        );
        let bytes = base64::engine::general_purpose::STANDARD.decode(v["records"].as_str().unwrap()).unwrap();
        assert_eq!(TraceBatch::records_from_bytes(&bytes), Some(records));
        assert_eq!(TraceBatch::records_from_bytes(&bytes[1..]), None);
    }

    #[test]
    fn registration_refuses_what_l1_must_not_do() {
        let mem = GuestMem::new(4 << 20).unwrap();
        let mut t = Tracer::new(TraceConfig { capacity: 64, drain_at_end: false });
        let bad = |t: &mut Tracer, gpa, cap| t.register(&mem, gpa, cap, 0).unwrap_err();
        assert!(matches!(bad(&mut t, RING, 3), RegisterError::Argument(_)), "not a power of two");
        assert!(matches!(bad(&mut t, RING, 128), RegisterError::Argument(_)), "more than asked for");
        assert!(matches!(bad(&mut t, RING + 8, 64), RegisterError::Address(_)), "unaligned");
        assert!(matches!(bad(&mut t, 0x1000, 64), RegisterError::Address(_)), "L0's area");
        assert!(matches!(bad(&mut t, (4 << 20) - 4096, 64), RegisterError::Address(_)), "past the end");
        assert!(matches!(bad(&mut t, !0xFFF, 64), RegisterError::Address(_)), "overflow");
        assert!(matches!(bad(&mut t, RING, 64), RegisterError::Argument(_)), "no header");
        let h =
            RingHeader { magic: RING_MAGIC, version: RECORD_VERSION, capacity: 64, head: 5, ..RingHeader::default() };
        mem.write(RING, h.as_bytes()).unwrap();
        assert!(matches!(bad(&mut t, RING, 64), RegisterError::Argument(_)), "not fresh");
        assert!(!t.active());
        assert!(ring_bytes(64) < 4 << 20);
    }

    #[test]
    fn drains_merge_stamps_and_count_drops() {
        let (mem, mut t) = setup(4);
        let mut s = Stamps::default();
        s.start();
        // Exit 1: delivered, L1 publishes, resumes, L2 enters; exit 2 delivered.
        s.delivered(100);
        publish(&mem, 4, 1, 1150);
        s.resumed(3);
        s.entering(200);
        s.l0_only();
        s.delivered(300);
        publish(&mem, 4, 2, 1350);
        t.drain(&mem, &mut s, false).unwrap();
        // Record 2 waits for its resume.
        assert_eq!(t.stats.records, 1);
        let b = t.take_batch(true, L0Counters::default).unwrap();
        assert_eq!(b.records.len(), 1);
        let r = b.records[0];
        assert_eq!(
            (r.seq, r.exit_tsc, r.entry_tsc, r.l1_traps, r.l0_only_exits, r.l1_start_tsc),
            (1, 100, 200, 3, 0, 150)
        );
        t.drain(&mem, &mut s, true).unwrap();
        let r = t.take_batch(true, L0Counters::default).unwrap().records[0];
        assert_eq!((r.seq, r.exit_tsc, r.entry_tsc, r.l0_only_exits), (2, 300, 0, 1));
        assert_eq!(mem.read_u64(RING + offset::TAIL).unwrap(), 2);
    }

    #[test]
    fn hostile_heads_and_sequences_stop_tracing() {
        let (mem, mut t) = setup(4);
        let mut s = Stamps::default();
        mem.write_u64(RING + offset::HEAD, 9).unwrap();
        assert!(matches!(t.drain(&mem, &mut s, true), Err(TraceError::Head { head: 9, .. })));
        assert!(!t.active() && t.stats.error.is_some());
        assert_eq!(t.drain(&mem, &mut s, true), Ok(()), "stopped: nothing more is read");

        let (mem, mut t) = setup(4);
        publish(&mem, 4, 5, 0);
        publish(&mem, 4, 5, 0);
        assert!(matches!(t.drain(&mem, &mut s, true), Err(TraceError::Sequence { seq: 5, last: 5, .. })));
    }
}
