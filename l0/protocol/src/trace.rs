//! The exit trace on the stream: `trace` batches of L1's records merged with L0's stamps
//! (docs/event-stream.md "Traces") and the counters of a traced run.

use nestbench_abi::Pod;
use nestbench_abi::trace::TraceRecord;
use serde::{Deserialize, Serialize};

/// Counters of one traced run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TraceStats {
    /// The ring's capacity (records), 0 if L1 never registered one.
    pub capacity: u64,
    /// Records drained.
    pub records: u64,
    /// Records L1 could not publish (ring full), as L1 counted them.
    pub dropped: u64,
    /// Batches handed out.
    pub batches: u64,
    /// Drains.
    pub drains: u64,
    /// Stamps L0 discarded because their records never came (bounded queue).
    pub stamps_lost: u64,
    /// Why tracing stopped early, if it did.
    pub error: Option<String>,
}

/// One batch of records for the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceBatch {
    /// The records, merged with L0's stamps, times in the host's TSC.
    pub records: Vec<TraceRecord>,
    /// L1's drop count so far.
    pub dropped_total: u64,
    /// L0's own level when the batch was cut, cumulative since the run began.
    pub l0: L0Counters,
}

/// L0's counters carried by every batch (cumulative), so a consumer sees exit rates per
/// level as the run goes: KVM exits of L1's VM and of VM2, L0-only exits, reflected exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct L0Counters {
    /// KVM_RUN returns of L1's VM.
    pub l1_vm_kvm_exits: u64,
    /// KVM_RUN returns of VM2 (L2).
    pub l2_vm_kvm_exits: u64,
    /// L2 exits L0 handled alone.
    pub l0_only_exits: u64,
    /// L2 exits reflected to L1.
    pub reflected_exits: u64,
}

impl TraceBatch {
    /// The records as their ABI bytes, back to back.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.records.iter().flat_map(|r| r.as_bytes().iter().copied()).collect()
    }

    /// Records from ABI bytes (a whole number of records, else `None`).
    #[must_use]
    pub fn records_from_bytes(bytes: &[u8]) -> Option<Vec<TraceRecord>> {
        let size = size_of::<TraceRecord>();
        if bytes.len() % size != 0 {
            return None;
        }
        bytes.chunks_exact(size).map(TraceRecord::from_bytes).collect()
    }
}

/// On the stream: `{"event": "trace", "first_seq", "count", "dropped_total", "l0", "records"}`
/// with `records` the records' bytes in standard base64 (docs/event-stream.md "Traces"):
/// JSON framing for one line per batch, binary records inside it.
impl Serialize for TraceBatch {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        use serde::ser::SerializeStruct;
        let mut st = ser.serialize_struct("TraceBatch", 5)?;
        st.serialize_field("first_seq", &self.records.first().map_or(0, |r| r.seq))?;
        st.serialize_field("count", &self.records.len())?;
        st.serialize_field("dropped_total", &self.dropped_total)?;
        st.serialize_field("l0", &self.l0)?;
        st.serialize_field("records", &base64::engine::general_purpose::STANDARD.encode(self.to_bytes()))?;
        st.end()
    }
}

/// A `trace` line whose records do not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// `records` is not base64.
    #[error("trace records are not base64: {0}")]
    Base64(String),
    /// Not `count` whole records.
    #[error("trace batch says {count} records but carries {bytes} bytes")]
    Length {
        /// `count`.
        count: usize,
        /// Decoded bytes.
        bytes: usize,
    },
}

/// A `trace` line as it is on the wire, before its records are decoded.
#[derive(Deserialize)]
pub struct WireBatch<'a> {
    /// Records in the batch.
    pub count: usize,
    /// L1's drop count so far.
    pub dropped_total: u64,
    /// L0's counters (absent from streams before they were added).
    #[serde(default)]
    pub l0: L0Counters,
    /// The records' bytes, standard base64.
    #[serde(borrow)]
    pub records: &'a str,
}

impl TryFrom<WireBatch<'_>> for TraceBatch {
    type Error = BatchError;

    fn try_from(w: WireBatch<'_>) -> Result<Self, BatchError> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(w.records)
            .map_err(|e| BatchError::Base64(e.to_string()))?;
        match Self::records_from_bytes(&bytes) {
            Some(records) if records.len() == w.count => Ok(Self { records, dropped_total: w.dropped_total, l0: w.l0 }),
            _ => Err(BatchError::Length { count: w.count, bytes: bytes.len() }),
        }
    }
}

impl<'de> Deserialize<'de> for TraceBatch {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Owned {
            count: usize,
            dropped_total: u64,
            #[serde(default)]
            l0: L0Counters,
            records: String,
        }
        let o = Owned::deserialize(de)?;
        let w = WireBatch { count: o.count, dropped_total: o.dropped_total, l0: o.l0, records: &o.records };
        Self::try_from(w).map_err(serde::de::Error::custom)
    }
}
