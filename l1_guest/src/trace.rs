//! The exit-trace ring's producer ([`nestbench_abi::trace`]): one 64-byte record per handled
//! L2 exit, published with plain stores into L1's own memory, which L0 reads without any exit.
//!
//! Cost when tracing is off: one load and one branch per exit. When on: one RDTSC at the
//! handler's start ([`Producer::begin`]) and, at [`Producer::publish`], one RDTSC, the full
//! check, seven stores and the head store (the tracing-overhead benchmark counts the
//! emulated instructions this adds per exit).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{Ordering, compiler_fence};

use nestbench_abi::trace::{L1_RING_CAPACITY, RECORD_VERSION, RING_MAGIC, RingHeader, TraceRecord};

use crate::static_cell::TakeOnce;

/// The ring: header, then the records (4 KiB-aligned, in L1's image, identity-mapped, so its
/// linear address is its guest-physical address).
#[repr(C, align(4096))]
#[derive(Debug)]
pub struct Ring {
    /// The header L0 checks and reads `head`/`dropped` from and writes `tail` to.
    pub header: RingHeader,
    /// The records.
    pub records: [TraceRecord; L1_RING_CAPACITY as usize],
}

const EMPTY_RECORD: TraceRecord = TraceRecord {
    seq: 0,
    reason: 0,
    insn_len: 0,
    l1_traps: 0,
    qualification: 0,
    guest_rip: 0,
    l1_start_tsc: 0,
    l1_cycles: 0,
    l0_only_exits: 0,
    exit_tsc: 0,
    entry_tsc: 0,
};

/// L1's ring, at a fixed address L0 is told once (taken by the payload run that registers
/// it, [`crate::runner`]).
pub static RING: TakeOnce<Ring> = TakeOnce::new(Ring {
    header: RingHeader { magic: 0, version: 0, capacity: 0, head: 0, tail: 0, dropped: 0, reserved: [0; 3] },
    records: [EMPTY_RECORD; L1_RING_CAPACITY as usize],
});

/// The TSC, without serialisation (the handler's own instructions are what is timed).
#[inline(always)]
#[must_use]
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let v: u64;
        // SAFETY: RDTSC reads the time-stamp counter into EDX:EAX and touches nothing else.
        unsafe {
            core::arch::asm!("rdtsc", "shl rdx, 32", "or rax, rdx", out("rax") v, out("rdx") _, options(nomem, nostack));
        }
        v
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

/// The producer's state (in [`crate::exits::RunState`]).
#[derive(Debug)]
pub struct Producer {
    /// Capacity - 1; meaningful only when `on`.
    mask: u64,
    /// Whether tracing is on (L0 asked for it and accepted the ring).
    on: bool,
    /// The last sequence number handed out.
    seq: u64,
    /// TSC at the current handler's start.
    start: u64,
}

impl Producer {
    /// Tracing off.
    #[must_use]
    pub const fn off() -> Self {
        Self { mask: 0, on: false, seq: 0, start: 0 }
    }

    /// Initialise `ring` for `capacity` records (a power of two, at most what the ring
    /// holds, else clamped down to one) and return the capacity to register with L0;
    /// tracing starts with [`Producer::enable`] once L0 accepted it.
    pub fn prepare(ring: &mut Ring, capacity: u32) -> u32 {
        let mut cap = capacity.min(L1_RING_CAPACITY);
        if !cap.is_power_of_two() {
            cap = if cap == 0 { 0 } else { 1 << (31 - cap.leading_zeros()) };
        }
        ring.header = RingHeader {
            magic: RING_MAGIC,
            version: RECORD_VERSION,
            capacity: cap,
            head: 0,
            tail: 0,
            dropped: 0,
            reserved: [0; 3],
        };
        cap
    }

    /// Publish into a ring of `capacity` records from now on.
    pub fn enable(&mut self, capacity: u32) {
        self.mask = u64::from(capacity.max(1)) - 1;
        self.seq = 0;
        self.on = capacity != 0;
    }

    /// A handler starts.
    #[inline(always)]
    pub fn begin(&mut self) {
        if self.on {
            self.start = rdtsc();
        }
    }

    /// Publish the record of the exit being handled, or count it as dropped when the ring is
    /// full (never overwrite what L0 has not drained).
    #[inline(always)]
    pub fn publish(&mut self, ring: &mut Ring, reason: u32, insn_len: u32, qualification: u64, rip: u64) {
        if !self.on {
            return;
        }
        let now = rdtsc();
        self.seq += 1;
        let h = addr_of_mut!(ring.header);
        // SAFETY: `h` points to the ring's header in L1's memory; L0 writes `tail` from the
        // host between L1's instructions, so it is read with a volatile load, and `head` and
        // `dropped`, which L0 reads, are written with volatile stores.
        unsafe {
            let head = read_volatile(addr_of!((*h).head));
            let tail = read_volatile(addr_of!((*h).tail));
            if head.wrapping_sub(tail) > self.mask {
                write_volatile(addr_of_mut!((*h).dropped), read_volatile(addr_of!((*h).dropped)) + 1);
                return;
            }
            // Only L1's fields: L0 writes its own (times, traps) into its copy when it
            // drains, so storing zeros here would be instructions for nothing. The index is
            // masked by the array's own size too, which spares a bounds check.
            let slot = addr_of_mut!(ring.records[(head & self.mask & (L1_RING_CAPACITY as u64 - 1)) as usize]);
            (*slot).seq = self.seq;
            (*slot).reason = reason;
            (*slot).insn_len = insn_len as u16;
            (*slot).qualification = qualification;
            (*slot).guest_rip = rip;
            (*slot).l1_start_tsc = self.start;
            (*slot).l1_cycles = now.wrapping_sub(self.start) as u32;
            // The record before the head that publishes it (x86 keeps stores in order).
            compiler_fence(Ordering::Release);
            write_volatile(addr_of_mut!((*h).head), head + 1);
        }
    }
}

impl Default for Producer {
    fn default() -> Self {
        Self::off()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::boxed::Box;

    use super::*;

    fn ring() -> Box<Ring> {
        Box::new(Ring { header: RingHeader::default(), records: [EMPTY_RECORD; L1_RING_CAPACITY as usize] })
    }

    #[test]
    fn publishes_in_order_then_drops_when_full() {
        let mut r = ring();
        let mut p = Producer::off();
        p.publish(&mut r, 30, 1, 0, 0);
        assert_eq!(r.header.head, 0, "off: nothing published");
        let cap = Producer::prepare(&mut r, 4);
        assert_eq!((cap, r.header.magic, r.header.capacity), (4, RING_MAGIC, 4));
        p.enable(cap);
        for i in 0..6u64 {
            p.begin();
            p.publish(&mut r, 30, 2, 0xE0_0043, 0x40_0000 + i);
        }
        assert_eq!((r.header.head, r.header.dropped), (4, 2));
        assert_eq!(r.records[..4].iter().map(|x| x.seq).collect::<std::vec::Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!((r.records[3].guest_rip, r.records[3].insn_len, r.records[3].reason), (0x40_0003, 2, 30));
        // L0 drains two: two more fit, with the sequence going on past the drops.
        r.header.tail = 2;
        p.publish(&mut r, 12, 1, 0, 0);
        assert_eq!((r.header.head, r.records[0].seq, r.header.dropped), (5, 7, 2));
    }

    #[test]
    fn capacity_is_clamped_to_a_power_of_two() {
        let mut r = ring();
        assert_eq!(Producer::prepare(&mut r, 1000), 512);
        assert_eq!(Producer::prepare(&mut r, u32::MAX), L1_RING_CAPACITY);
        assert_eq!(Producer::prepare(&mut r, 0), 0);
    }
}
