//! The exit-trace ring: L1 publishes one [`TraceRecord`] per L2 exit it handles into a
//! single-producer ring in its own memory, and L0 drains it by reading that memory, without
//! any exit (docs/event-stream.md "Traces").
//!
//! The ring is a [`RingHeader`] followed by `capacity` records (a power of two). L1 is the
//! only writer of `head`, of `dropped` and of the records; L0 is the only writer of `tail`.
//! Publishing (L1): when `head - tail == capacity` the ring is full and L1 only increments
//! `dropped` (never overwrites); otherwise it writes the record at `head % capacity`, then
//! stores `head + 1` (a release store: x86 keeps stores in order, a compiler fence keeps the
//! compiler from reordering). Draining (L0): read `head` (acquire), copy the records
//! `tail..head`, store `tail = head`. L0 checks every value it reads: a `head` behind `tail`
//! or more than `capacity` ahead, or a record whose `seq` is not the next one, stops tracing
//! for the run with an error event; it never trusts an index.
//!
//! L1 fills the fields it knows; L0 fills the rest (`exit_tsc`, `entry_tsc`, `l1_traps`,
//! `l0_only_exits`) in its copy when it drains, and converts L1's TSC values into the host's
//! TSC domain. All times are TSC values.

/// "NBTRACE1" as a little-endian u64: [`RingHeader::magic`].
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"NBTRACE1");
/// The record layout version ([`RingHeader::version`]).
pub const RECORD_VERSION: u32 = 1;
/// The largest ring L0 accepts, in records.
pub const MAX_CAPACITY: u32 = 1 << 16;
/// The ring L1 carries in its image, in records (L0 may ask for fewer: [`crate::boot::BootInfo::trace_capacity`]).
pub const L1_RING_CAPACITY: u32 = 4096;

/// The ring's header, at the start of the ring (4 KiB-aligned); records follow at offset
/// [`RING_HEADER_SIZE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingHeader {
    /// [`RING_MAGIC`].
    pub magic: u64,
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// Records in the ring, a power of two, at most [`MAX_CAPACITY`].
    pub capacity: u32,
    /// Records published so far (L1 writes).
    pub head: u64,
    /// Records drained so far (L0 writes).
    pub tail: u64,
    /// Records L1 could not publish because the ring was full (L1 writes).
    pub dropped: u64,
    /// Reserved, zero.
    pub reserved: [u64; 3],
}
const _: () = assert!(size_of::<RingHeader>() == 64);
// SAFETY: `RingHeader` is `#[repr(C)]`, integers only, and the assertion of its size next to
// this implementation rules out padding.
unsafe impl crate::Pod for RingHeader {}

/// Byte offsets of the header fields L1 and L0 access one by one.
pub mod offset {
    /// [`super::RingHeader::head`].
    pub const HEAD: u64 = 16;
    /// [`super::RingHeader::tail`].
    pub const TAIL: u64 = 24;
    /// [`super::RingHeader::dropped`].
    pub const DROPPED: u64 = 32;
}

/// Where the records start, from the ring's start.
pub const RING_HEADER_SIZE: u64 = 64;

/// One handled L2 exit. 64 bytes, little-endian, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// 1 for the first exit L1 handles, then +1 per exit (dropped ones included), so a gap
    /// in a drained sequence is a drop.
    pub seq: u64,
    /// The full exit reason (SDM 25.9.1: basic reason in bits 15:0, bit 31 entry failure).
    pub reason: u32,
    /// The VM-exit instruction length, 0 where the exit has none.
    pub insn_len: u16,
    /// (L0) exits of L1's VM while L1 handled this exit, the resuming doorbell included:
    /// the traps this L2 exit multiplied into. Saturates.
    pub l1_traps: u16,
    /// The exit qualification.
    pub qualification: u64,
    /// L2's RIP at the exit.
    pub guest_rip: u64,
    /// L1's TSC when its handler started (L0 converts it to the host's TSC).
    pub l1_start_tsc: u64,
    /// TSC cycles from the handler's start to the record's publication.
    pub l1_cycles: u32,
    /// (L0) L2 exits L0 handled alone (EPT-shadow fills, kicks) since the previous
    /// reflected exit. Saturates.
    pub l0_only_exits: u32,
    /// (L0) host TSC when L2's exit reached L0.
    pub exit_tsc: u64,
    /// (L0) host TSC when L0 entered L2 again (0: the run ended first).
    pub entry_tsc: u64,
}
const _: () = assert!(size_of::<TraceRecord>() == 64);
// SAFETY: `TraceRecord` is `#[repr(C)]`, integers only, and the assertion of its size next to
// this implementation rules out padding.
unsafe impl crate::Pod for TraceRecord {}

/// Whether `capacity` is a ring size L0 accepts.
#[must_use]
pub const fn valid_capacity(capacity: u64) -> bool {
    capacity != 0 && capacity <= MAX_CAPACITY as u64 && capacity.is_power_of_two()
}

/// The ring's size in bytes for `capacity` records.
#[must_use]
pub const fn ring_bytes(capacity: u64) -> u64 {
    RING_HEADER_SIZE + capacity * size_of::<TraceRecord>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pod;

    #[test]
    fn header_offsets_match_the_struct() {
        let h = RingHeader { head: 0x1111, tail: 0x2222, dropped: 0x3333, ..RingHeader::default() };
        let b = h.as_bytes();
        let at = |o: u64| u64::from_le_bytes(b[o as usize..o as usize + 8].try_into().unwrap());
        assert_eq!((at(offset::HEAD), at(offset::TAIL), at(offset::DROPPED)), (0x1111, 0x2222, 0x3333));
    }

    #[test]
    fn capacities() {
        assert!(valid_capacity(1) && valid_capacity(4096) && valid_capacity(u64::from(MAX_CAPACITY)));
        assert!(!valid_capacity(0) && !valid_capacity(3) && !valid_capacity(u64::from(MAX_CAPACITY) * 2));
        assert!(valid_capacity(u64::from(L1_RING_CAPACITY)));
        assert_eq!(ring_bytes(4), 64 + 256);
    }
}
