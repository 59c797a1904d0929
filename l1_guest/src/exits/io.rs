//! I/O-instruction exits (basic reason 30; SDM 28.2.1 Table 28-5 qualification, 28.2.5
//! instruction information for INS/OUTS).
//!
//! * `out DONE_PORT, eax`: the payload is done. L1 reads L2's `PayloadResults` through its
//!   own mapping of the results page, fills the `PayloadReport` and exits (0 if the status
//!   and every check passed).
//! * `PAYLOAD_PORT` with the `INJECT_EVENTS` set-up (`inject`): L1 also injects the event
//!   `INJECTED_EVENTS[EAX % 4]` at the next entry.
//! * `PAYLOAD_PORT`: recorded, then emulated the way the instruction would have run: IN
//!   writes [`IN_VALUE`] into AL/AX (merged) or EAX (zero-extended into RAX, SDM 3.4.1.1);
//!   INS/OUTS do ONE iteration (RSI/RDI step by the size, down when RFLAGS.DF; INS stores the
//!   value into L2 memory through L2's paging and EPT12; REP decrements RCX), and RIP moves
//!   past the instruction only when it is complete (no REP, or RCX reached 0). So `rep outsb`
//!   with RCX = 2 exits exactly twice, as on hardware (SDM 28.1: an I/O exit happens before
//!   each iteration).

use nestbench_abi::Pod;
use nestbench_abi::payload::{DONE_PORT, IN_VALUE, INJECTED_EVENTS, IO_ENCODINGS, PAYLOAD_PORT, PayloadResults};
use nestbench_abi::vmx::{AddressSize, IoInstructionInfo, IoQualification};

use super::{RunState, advance_rip};
use crate::exit::Exit;
use crate::vcpu::{GuestRegs, Vcpu};

/// RFLAGS.DF (bit 10).
const RFLAGS_DF: u64 = 1 << 10;

/// A store INS makes into L2 memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsStore {
    /// L2-linear address (ES:RDI; ES's base is 0 in 64-bit mode).
    pub linear: u64,
    /// Bytes to store (the low `size` bytes of the value).
    pub size: u8,
    /// The value.
    pub value: u32,
}

/// What emulating one I/O exit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emulated {
    /// The instruction is complete: advance RIP.
    pub complete: bool,
    /// INS: what to store into L2 memory.
    pub store: Option<InsStore>,
}

/// Add `delta` to an address register at the instruction's address size: 64-bit wraps the
/// whole register, 32-bit writes the zero-extended low half, 16-bit only the low 16 bits
/// (SDM 3.3.7, 7.3.9 "String Operations").
#[must_use]
pub const fn step(reg: u64, delta: i64, asz: AddressSize) -> u64 {
    match asz {
        AddressSize::Bits64 => reg.wrapping_add(delta as u64),
        AddressSize::Bits32 => (reg as u32).wrapping_add(delta as u32) as u64,
        AddressSize::Bits16 => reg & !0xFFFF | (reg as u16).wrapping_add(delta as u16) as u64,
    }
}

/// The register's value at the address size.
const fn at_size(reg: u64, asz: AddressSize) -> u64 {
    match asz {
        AddressSize::Bits64 => reg,
        AddressSize::Bits32 => reg as u32 as u64,
        AddressSize::Bits16 => reg as u16 as u64,
    }
}

/// RAX after `in` of [`IN_VALUE`] with `size` bytes: 8- and 16-bit destinations keep RAX's
/// other bits, a 32-bit one zero-extends into RAX (SDM 3.4.1.1).
#[inline(always)]
#[must_use]
pub const fn in_result(rax: u64, size: u8) -> u64 {
    match size {
        1 => rax & !0xFF | (IN_VALUE & 0xFF) as u64,
        2 => rax & !0xFFFF | (IN_VALUE & 0xFFFF) as u64,
        _ => IN_VALUE as u64,
    }
}

/// Emulate one I/O exit on `regs`: `insn_info` is the VM-exit instruction information and
/// `rflags` guest RFLAGS (both used only for INS/OUTS).
#[must_use]
pub fn emulate(q: IoQualification, insn_info: u32, rflags: u64, regs: &mut GuestRegs) -> Emulated {
    let size = q.size_bytes().unwrap_or(1);
    if !q.string() {
        if q.is_in() {
            regs.rax = in_result(regs.rax, size);
        }
        return Emulated { complete: true, store: None };
    }
    let asz = IoInstructionInfo::from_raw(insn_info).address_size().unwrap_or(AddressSize::Bits64);
    if q.rep() && at_size(regs.rcx, asz) == 0 {
        return Emulated { complete: true, store: None };
    }
    let delta = if rflags & RFLAGS_DF != 0 { -i64::from(size) } else { i64::from(size) };
    let store = if q.is_in() {
        let s = InsStore { linear: at_size(regs.rdi, asz), size, value: IN_VALUE };
        regs.rdi = step(regs.rdi, delta, asz);
        Some(s)
    } else {
        regs.rsi = step(regs.rsi, delta, asz);
        None
    };
    let complete = if q.rep() {
        regs.rcx = step(regs.rcx, -1, asz);
        at_size(regs.rcx, asz) == 0
    } else {
        true
    };
    Emulated { complete, store }
}

/// A mismatch between an exit and the `io_encodings` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoMismatch {
    /// Index into `IO_ENCODINGS` (its length: an exit past the end, or a missing one).
    pub case: usize,
    /// Expected qualification and length (0, 0 past the end).
    pub expected: (u64, u32),
    /// Seen qualification and length (0, 0 for a missing exit).
    pub seen: (u64, u32),
}

/// Checks the `io_encodings` payload's PAYLOAD_PORT exits, in order, against
/// `IO_ENCODINGS`: qualification from `IoQualification::new`, length = the encoding's bytes,
/// REP forms `IO_REP_COUNT` times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCheck {
    case: usize,
    seen_in_case: u8,
    /// Mismatches so far.
    pub mismatches: u64,
    /// Qualification bits the vendor does not report, compared in neither.
    unreported: u64,
}

/// The qualification's operand-encoding bit (SDM Table 28-5, bit 6: immediate or DX), which
/// SVM's IOIO EXITINFO1 does not have (APM 15.10.2).
pub const OPERAND_ENCODING: u64 = 1 << 6;

impl IoCheck {
    /// A check that ignores the `unreported` qualification bits (SVM: [`OPERAND_ENCODING`]).
    #[must_use]
    pub const fn ignoring(unreported: u64) -> Self {
        Self { case: 0, seen_in_case: 0, mismatches: 0, unreported }
    }

    fn expected(case: usize) -> (u64, u32) {
        let c = IO_ENCODINGS[case];
        let q = IoQualification::new(c.size, c.is_in, c.string, c.rep, c.immediate, PAYLOAD_PORT);
        (q.map_or(0, IoQualification::raw), c.bytes.len() as u32)
    }

    /// Check the next exit; a mismatch is counted and returned.
    pub fn observe(&mut self, qualification: u64, insn_len: u32) -> Option<IoMismatch> {
        let seen = (qualification & !self.unreported, insn_len);
        let Some(c) = IO_ENCODINGS.get(self.case) else {
            self.mismatches += 1;
            return Some(IoMismatch { case: self.case, expected: (0, 0), seen });
        };
        let (q, len) = Self::expected(self.case);
        let expected = (q & !self.unreported, len);
        let case = self.case;
        self.seen_in_case += 1;
        if self.seen_in_case >= c.exits {
            self.case += 1;
            self.seen_in_case = 0;
        }
        if seen == expected {
            None
        } else {
            self.mismatches += 1;
            Some(IoMismatch { case, expected, seen })
        }
    }

    /// At the end of the payload: every expected exit must have been seen (the missing ones
    /// count as one mismatch).
    pub fn finish(&mut self) -> Option<IoMismatch> {
        if self.case < IO_ENCODINGS.len() {
            self.mismatches += 1;
            Some(IoMismatch { case: self.case, expected: Self::expected(self.case), seen: (0, 0) })
        } else {
            None
        }
    }
}

/// Handle an I/O exit whose facts are `q` (decoded with the exit, [`Exit::Io`]).
#[inline(always)]
pub fn handle<V: Vcpu>(vcpu: &mut V, run: &mut RunState, q: IoQualification) {
    let reason = Exit::Io(q).report_reason();
    if q.port() != PAYLOAD_PORT {
        if q.port() == DONE_PORT && !q.is_in() {
            finish(vcpu, run);
        }
        super::unexpected::handle(vcpu, reason);
    }
    let len = vcpu.insn_len();
    let rip = vcpu.rip();
    if !q.string() {
        vcpu.record(run, reason, len, q.raw(), rip, 0, 0);
        if let Some(check) = &mut run.io_check {
            check_one(check, q.raw(), len);
        }
        if q.is_in() {
            let regs = vcpu.regs();
            regs.rax = in_result(regs.rax, q.size_bytes().unwrap_or(1));
        } else if run.remap.is_some() {
            super::remap::on_port(vcpu, run);
        } else if run.inject_events {
            let i = vcpu.regs().rax as usize % INJECTED_EVENTS.len();
            vcpu.inject(INJECTED_EVENTS[i]);
        }
        advance_rip(vcpu, rip, len);
        return;
    }
    string_io(vcpu, run, reason, q, len, rip);
}

/// INS/OUTS: the instruction information, guest-linear address and RFLAGS.DF are needed.
#[inline(never)]
fn string_io<V: Vcpu>(vcpu: &mut V, run: &mut RunState, reason: u32, q: IoQualification, len: u32, rip: u64) {
    let s = vcpu.string_io();
    let rflags = vcpu.rflags();
    let info = s.info.raw();
    vcpu.record(run, reason, len, q.raw(), rip, info, s.linear);
    if let Some(check) = &mut run.io_check {
        check_one(check, q.raw(), len);
    }
    let e = emulate(q, info, rflags, vcpu.regs());
    if let Some(s) = e.store {
        store_into_l2(run, s);
    }
    if e.complete {
        advance_rip(vcpu, rip, len);
    }
}

#[cold]
fn check_one(check: &mut IoCheck, qualification: u64, len: u32) {
    let first = check.mismatches == 0;
    if let Some(m) = check.observe(qualification, len)
        && first
    {
        crate::println!("l1: io_encodings: first mismatch: {m:?}");
    }
}

/// Identity-mapped L1 memory as the nested-paging walker's reader (L1 runs 1:1 over all its
/// memory).
pub(crate) struct L1Phys;

impl nestbench_abi::ept::PhysRead for L1Phys {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        if pa % 8 != 0 || pa >= crate::l2::FRAMES_END {
            return None;
        }
        // SAFETY: an aligned address inside L1 memory, which is identity-mapped.
        Some(unsafe { (pa as *const u64).read_volatile() })
    }
}

/// INS: store the value byte by byte at its L2-linear address, translated through L2's
/// paging and EPT12 (a byte that does not translate is reported, not written).
fn store_into_l2(run: &RunState, s: InsStore) {
    for i in 0..u64::from(s.size) {
        match crate::l2::l2_linear_to_l1(&L1Phys, run.eptp, run.cr3, s.linear.wrapping_add(i)) {
            Some(pa) if pa < crate::l2::FRAMES_END => {
                // SAFETY: `pa` is an L1 frame EPT12 maps for L2 (identity-mapped in L1).
                unsafe { (pa as *mut u8).write_volatile((s.value >> (8 * i)) as u8) };
            }
            _ => crate::println!("l1: INS to unmapped L2 address {:#x}", s.linear + i),
        }
    }
}

/// `out DONE_PORT, eax`: send the PayloadReport and exit.
fn finish<V: Vcpu>(vcpu: &mut V, run: &mut RunState) -> ! {
    let mut mismatches = 0;
    if let Some(check) = &mut run.io_check {
        if let Some(m) = check.finish() {
            crate::println!("l1: io_encodings: exits missing from case {}: {m:?}", m.case);
        }
        mismatches = check.mismatches;
    }
    let msrs = run.msrs;
    if msrs.gs_base_writes > 0 {
        crate::println!(
            "l1: wrmsr: {} writes of MSR {:#x} checked, {} mismatches, last value {:#x}",
            msrs.gs_base_writes,
            super::rdmsr::IA32_KERNEL_GS_BASE,
            msrs.gs_base_mismatches,
            msrs.read(super::rdmsr::IA32_KERNEL_GS_BASE).unwrap_or(0)
        );
    }
    mismatches += msrs.gs_base_mismatches;
    // `irq_window`: every window L1 asked for must have been taken (a CPU that never takes
    // the VINTR intercept, as Bochs 2.7's SVM, fails here rather than passing with none).
    let w = run.window;
    if w.exits < w.target {
        crate::println!(
            "l1: irq_window: {} of {} interrupt-window exits: the CPU did not take the window",
            w.exits,
            w.target
        );
        mismatches += 1;
    }
    if let Some(remap) = &run.remap {
        super::remap::summary(remap);
    }
    // SAFETY: results_pa is the L1 frame behind L2's results page (a whole page).
    let page = unsafe { core::slice::from_raw_parts(run.results_pa as *const u8, size_of::<PayloadResults>()) };
    let mut results = PayloadResults::from_bytes(page).unwrap_or(run.report.results);
    results.failures = results.failures.saturating_add(mismatches);
    let accesses = vcpu.accesses().wrapping_sub(run.accesses_at_launch);
    run.report_and_exit(u64::from(vcpu.regs().rax as u32), results, accesses)
}

#[cfg(test)]
mod tests {
    use nestbench_abi::payload::{IO_REP_COUNT, IoCase};
    use nestbench_abi::vmx::SegmentRegister;

    use super::*;

    fn qual(c: &IoCase) -> IoQualification {
        IoQualification::new(c.size, c.is_in, c.string, c.rep, c.immediate, PAYLOAD_PORT).unwrap()
    }

    const INFO64_DS: u32 = (2 << 7) | (3 << 15);

    /// Run one case the way the exits would: emulate until complete, counting exits.
    fn run_case(c: &IoCase, regs: &mut GuestRegs, rflags: u64) -> (u8, std::vec::Vec<InsStore>) {
        let mut exits = 0;
        let mut stores = std::vec::Vec::new();
        loop {
            exits += 1;
            let e = emulate(qual(c), INFO64_DS, rflags, regs);
            stores.extend(e.store);
            if e.complete {
                return (exits, stores);
            }
            assert!(exits < 100);
        }
    }

    fn regs() -> GuestRegs {
        GuestRegs {
            rax: 0x1122_3344_5566_7788,
            rcx: u64::from(IO_REP_COUNT),
            rdx: u64::from(PAYLOAD_PORT),
            rsi: 0x40_8000,
            rdi: 0x40_9000,
            ..GuestRegs::default()
        }
    }

    #[test]
    fn every_io_encoding_is_emulated_as_hardware_would() {
        for c in &IO_ENCODINGS {
            let mut r = regs();
            let before = r;
            let (exits, stores) = run_case(c, &mut r, 0x2);
            assert_eq!(exits, c.exits, "{:02x?}: exits", c.bytes);
            let n = u64::from(c.exits) * u64::from(c.size);
            match (c.is_in, c.string) {
                (true, false) => {
                    let want = match c.size {
                        1 => 0x1122_3344_5566_7731,
                        2 => 0x1122_3344_5566_4C31,
                        _ => 0x4E42_4C31,
                    };
                    assert_eq!(r.rax, want, "{:02x?}: RAX", c.bytes);
                }
                (false, false) => assert_eq!(r, before, "{:02x?}: OUT changes no register", c.bytes),
                (false, true) => {
                    assert_eq!(r.rsi, before.rsi + n, "{:02x?}: RSI", c.bytes);
                    assert_eq!(r.rdi, before.rdi);
                    assert!(stores.is_empty());
                }
                (true, true) => {
                    assert_eq!(r.rdi, before.rdi + n, "{:02x?}: RDI", c.bytes);
                    assert_eq!(r.rsi, before.rsi);
                    let want: std::vec::Vec<_> = (0..u64::from(c.exits))
                        .map(|i| InsStore { linear: before.rdi + i * u64::from(c.size), size: c.size, value: IN_VALUE })
                        .collect();
                    assert_eq!(stores, want, "{:02x?}: stores", c.bytes);
                }
            }
            if c.rep {
                assert_eq!(r.rcx, 0, "{:02x?}: RCX counted down", c.bytes);
            } else {
                assert_eq!(r.rcx, before.rcx, "{:02x?}: RCX untouched without REP", c.bytes);
            }
            if !c.string {
                assert_eq!((r.rsi, r.rdi), (before.rsi, before.rdi));
            }
        }
    }

    #[test]
    fn string_io_steps_down_with_df_and_respects_the_address_size() {
        let outsb = IoQualification::new(1, false, true, false, false, PAYLOAD_PORT).unwrap();
        let mut r = GuestRegs { rsi: 0x1000, ..GuestRegs::default() };
        assert!(emulate(outsb, INFO64_DS, 0x2 | RFLAGS_DF, &mut r).complete);
        assert_eq!(r.rsi, 0xFFF);
        let info32 = IoInstructionInfo::new(AddressSize::Bits32, SegmentRegister::Ds).raw();
        let mut r = GuestRegs { rsi: 0xAAAA_BBBB_FFFF_FFFF, ..GuestRegs::default() };
        assert!(emulate(outsb, info32, 0x2, &mut r).complete);
        assert_eq!(r.rsi, 0, "32-bit address size: ESI wraps and RSI is zero-extended");
        let info16 = IoInstructionInfo::new(AddressSize::Bits16, SegmentRegister::Ds).raw();
        let mut r = GuestRegs { rsi: 0xAAAA_FFFF, ..GuestRegs::default() };
        assert!(emulate(outsb, info16, 0x2, &mut r).complete);
        assert_eq!(r.rsi, 0xAAAA_0000, "16-bit address size: only SI");
        // REP with RCX = 0 does nothing and completes.
        let rep = IoQualification::new(1, false, true, true, false, PAYLOAD_PORT).unwrap();
        let mut r = GuestRegs { rsi: 0x1000, rcx: 0, ..GuestRegs::default() };
        assert_eq!(emulate(rep, INFO64_DS, 0x2, &mut r), Emulated { complete: true, store: None });
        assert_eq!(r.rsi, 0x1000);
    }

    #[test]
    fn io_check_accepts_the_table_and_counts_each_deviation() {
        let mut check = IoCheck::default();
        for c in &IO_ENCODINGS {
            for _ in 0..c.exits {
                assert_eq!(check.observe(qual(c).raw(), c.bytes.len() as u32), None, "{:02x?}", c.bytes);
            }
        }
        assert_eq!(check.finish(), None);
        assert_eq!(check.mismatches, 0);
        assert!(check.observe(0, 1).is_some(), "an exit past the table");
        assert_eq!(check.mismatches, 1);
        // SVM: the same table through IOIO EXITINFO1, which has no operand-encoding bit.
        let mut svm = IoCheck::ignoring(OPERAND_ENCODING);
        for c in &IO_ENCODINGS {
            let info1 = (u64::from(PAYLOAD_PORT) << 16)
                | u64::from(c.size) << 4
                | u64::from(c.is_in)
                | u64::from(c.string) << 2
                | u64::from(c.rep) << 3;
            let q = crate::svm::decode::io(info1).unwrap();
            for _ in 0..c.exits {
                assert_eq!(svm.observe(q.raw(), c.bytes.len() as u32), None, "{:02x?}", c.bytes);
            }
        }
        assert_eq!((svm.finish(), svm.mismatches), (None, 0));

        // A wrong length on the second case, then one REP exit missing at the end.
        let mut check = IoCheck::default();
        let mut first = None;
        for (i, c) in IO_ENCODINGS.iter().enumerate() {
            let exits = if i == IO_ENCODINGS.len() - 1 { c.exits - 1 } else { c.exits };
            for _ in 0..exits {
                let len = if i == 1 { 2 } else { c.bytes.len() as u32 };
                if let Some(m) = check.observe(qual(c).raw(), len) {
                    first.get_or_insert(m);
                }
            }
        }
        let m = first.unwrap();
        assert_eq!((m.case, m.expected.1, m.seen.1), (1, 3, 2));
        assert!(check.finish().is_some());
        assert_eq!(check.mismatches, 2);
    }
}
