//! L1's way out: the hypercalls of nestbench's L0 ([`nestbench_abi::hypercall`]) or, where no
//! nestbench L0 runs L1 (Bochs), the port-0xE9 lines of [`nestbench_abi::e9`].
//!
//! The choice is made once, from CPUID ([`select_transport`]: nestbench's signature at
//! 0x4000_0000 means L0 serves hypercalls), and lives only here: the rest of L1 calls
//! [`console_write`], [`report`], [`exception`] and [`exit`] and never asks which transport
//! is in use. The transport is used for console text, reports and the end of the run only,
//! never on the VM-exit path (the soft backend's VMX hypercalls are its own, in
//! [`crate::vmx::soft`]).
//!
//! With the 0xE9 transport every call is one `rep outsb` of one line (Bochs executes string
//! I/O to its debug port as one instruction): console text as it is; a report or exception
//! as `@@NB1 report <kind> <hex>` / `@@NB1 exception <hex>`, hex-encoded into a line buffer
//! first; the exit as `@@NB1 exit <status hex>`, then `xchg bx, bx` (Bochs' magic breakpoint)
//! and a halt loop. A structured line always starts a line of its own: if the console text
//! before it did not end with a newline, one is written first.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use nestbench_abi::cpuid as hv;
use nestbench_abi::hypercall::{Call, PORT, Status};
use nestbench_abi::payload::PayloadReport;
use nestbench_abi::report::{ExceptionReport, ReportKind};

use crate::static_cell::TryLock;

/// How L1 talks to whoever runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Transport {
    /// nestbench's L0 serves the hypercall port.
    Nestbench = 1,
    /// No nestbench L0 (Bochs): lines on port 0xE9 ([`nestbench_abi::e9`]).
    E9 = 2,
}

/// The transport for the words CPUID leaf 0x4000_0000 returned in EBX, ECX, EDX: nestbench's
/// hypercalls when they spell [`hv::SIGNATURE`], port 0xE9 otherwise (no hypervisor, another
/// hypervisor's signature, or whatever a CPU returns for a leaf past its maximum).
#[must_use]
pub fn select_transport(sig_ebx: u32, sig_ecx: u32, sig_edx: u32) -> Transport {
    if hv::signature_from_words(sig_ebx, sig_ecx, sig_edx) == hv::SIGNATURE {
        Transport::Nestbench
    } else {
        Transport::E9
    }
}

/// The chosen transport (0 until [`init`] or the first call decides).
static TRANSPORT: AtomicU8 = AtomicU8::new(0);

/// Decide the transport from this CPU's CPUID and remember it. L1 calls this first thing at
/// boot; any call before that decides on first use.
pub fn init() -> Transport {
    let sig = crate::x86::cpuid(hv::LEAF_SIGNATURE);
    let t = select_transport(sig.ebx, sig.ecx, sig.edx);
    TRANSPORT.store(t as u8, Ordering::Relaxed);
    t
}

/// The transport in use.
#[must_use]
pub fn transport() -> Transport {
    match TRANSPORT.load(Ordering::Relaxed) {
        1 => Transport::Nestbench,
        2 => Transport::E9,
        _ => init(),
    }
}

/// Issue nestbench hypercall `call` with up to four arguments. Returns L0's status word (RAX)
/// and the value L0 left in RDI. Only for a nestbench L0: use the functions below, which pick
/// the transport.
pub fn hypercall(call: Call, a0: u64, a1: u64, a2: u64, a3: u64) -> (u64, u64) {
    let status: u64;
    let ret: u64;
    // SAFETY: a 32-bit OUT to the hypercall port. L0 handles it and only writes RAX and RDI,
    // which are declared as outputs. Arguments that are guest addresses are validated by L0.
    unsafe {
        asm!(
            "out dx, eax",
            in("dx") PORT,
            inout("rax") call as u64 => status,
            inout("rdi") a0 => ret,
            in("rsi") a1,
            in("r8") a2,
            in("r9") a3,
            options(nostack),
        );
    }
    (status, ret)
}

/// Write console text: one `ConsoleWrite` hypercall, or the bytes as they are on port 0xE9.
/// The bytes live in L1 memory, which is identity-mapped, so their linear address is their
/// guest-physical address.
pub fn console_write(bytes: &[u8]) -> Option<Status> {
    match transport() {
        Transport::Nestbench => {
            let (st, _) = hypercall(Call::ConsoleWrite, bytes.as_ptr() as u64, bytes.len() as u64, 0, 0);
            Status::from_raw(st)
        }
        Transport::E9 => {
            if let Some(&last) = bytes.last() {
                AT_LINE_START.store(last == b'\n', Ordering::Relaxed);
            }
            e9_out(bytes);
            Some(Status::Ok)
        }
    }
}

/// Send a structured report (`bytes` is the structure `kind` names).
pub fn report(kind: ReportKind, bytes: &[u8]) -> Option<Status> {
    match transport() {
        Transport::Nestbench => {
            let (st, _) = hypercall(Call::Report, kind as u64, bytes.as_ptr() as u64, bytes.len() as u64, 0);
            Status::from_raw(st)
        }
        Transport::E9 => e9_line(|w| e9::report_line(w, kind as u64, bytes)),
    }
}

/// Register the exit-trace ring at `pa` with `capacity` records (`Call::TraceRing`).
/// `None` on port 0xE9, where nobody could drain it.
pub fn trace_ring(pa: u64, capacity: u32) -> Option<Status> {
    match transport() {
        Transport::Nestbench => Status::from_raw(hypercall(Call::TraceRing, pa, u64::from(capacity), 0, 0).0),
        Transport::E9 => None,
    }
}

/// Report an exception L1 did not expect. On nestbench's L0 this is terminal (L0 stops the
/// vCPU); on port 0xE9 it returns, and the caller goes on to [`exit`].
pub fn exception(r: &ExceptionReport) {
    match transport() {
        Transport::Nestbench => {
            hypercall(Call::Exception, core::ptr::from_ref(r) as u64, 0, 0, 0);
        }
        Transport::E9 => {
            e9_line(|w| e9::exception_line(w, nestbench_abi::Pod::as_bytes(r)));
        }
    }
}

/// The run is over with `status` (0 = success). Does not return: L0 stops the vCPU, or
/// Bochs stops at the magic breakpoint.
pub fn exit(status: u64) -> ! {
    match transport() {
        Transport::Nestbench => {
            hypercall(Call::Exit, status, 0, 0, 0);
            // L0 never resumes the vCPU after Exit; if it ever did, stay put without exits.
            loop {
                core::hint::spin_loop();
            }
        }
        Transport::E9 => {
            e9_line(|w| e9::exit_line(w, status));
            // SAFETY: `xchg bx, bx` exchanges BX with itself: no register or flag changes. On
            // Bochs with `magic_break: enabled=1` it stops the emulation (its magic breakpoint).
            unsafe { asm!("xchg bx, bx", options(nomem, nostack, preserves_flags)) };
            // Bochs quits at the breakpoint; if it went on (or this is not Bochs), halt for good.
            loop {
                // SAFETY: interrupts off, then halt: L1 stops here (an NMI comes back to the loop).
                unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
            }
        }
    }
}

/// The longest structured 0xE9 line: the largest report (a [`PayloadReport`]) in hex, with
/// the prefix, kind, leading and trailing newline.
pub const E9_LINE_MAX: usize = 2 * size_of::<PayloadReport>() + 64;

/// Whether the last console byte written to port 0xE9 ended a line (true before any).
static AT_LINE_START: AtomicBool = AtomicBool::new(true);

/// The buffer structured 0xE9 lines are built in.
static E9_LINE: TryLock<[u8; E9_LINE_MAX]> = TryLock::new([0; E9_LINE_MAX]);

/// Build a structured line with `fill` (after a newline if console text left a line open)
/// and write it with one `rep outsb`. A line that does not fit is not written (BadArgument),
/// nor is one asked for while another is being built (an exception handler's report while a
/// line was half built: BadArgument too).
fn e9_line(fill: impl FnOnce(&mut e9::LineWriter<'_>) -> Option<()>) -> Option<Status> {
    E9_LINE
        .with(|buf| {
            let mut w = e9::LineWriter::new(buf);
            if !AT_LINE_START.load(Ordering::Relaxed) {
                w.push(b"\n")?;
            }
            if fill(&mut w).is_none() {
                return Some(Status::BadArgument);
            }
            let len = w.len();
            e9_out(&buf[..len]);
            AT_LINE_START.store(true, Ordering::Relaxed);
            Some(Status::Ok)
        })
        .unwrap_or(Some(Status::BadArgument))
}

/// All of `bytes` to port 0xE9 with one `rep outsb`.
fn e9_out(bytes: &[u8]) {
    // SAFETY: OUTSB reads `bytes.len()` bytes from DS:RSI = `bytes` (L1's flat data segment,
    // DF clear per the ABI) and writes them to port 0xE9, Bochs' debug port (on anything else
    // an unclaimed port). RSI and RCX are consumed; nothing else changes.
    unsafe {
        asm!(
            "rep outsb",
            in("dx") nestbench_abi::e9::PORT,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(nostack, readonly, preserves_flags),
        );
    }
}

/// The 0xE9 line formats, as pure functions over a buffer (host-tested).
pub mod e9 {
    use nestbench_abi::e9::{PREFIX, hex_digit};

    /// Appends to a byte buffer; every `push` fails (None) instead of overflowing it.
    #[derive(Debug)]
    pub struct LineWriter<'a> {
        buf: &'a mut [u8],
        len: usize,
    }

    impl<'a> LineWriter<'a> {
        /// An empty line in `buf`.
        pub fn new(buf: &'a mut [u8]) -> Self {
            Self { buf, len: 0 }
        }

        /// Bytes written so far.
        #[must_use]
        pub const fn len(&self) -> usize {
            self.len
        }

        /// Whether nothing is written yet.
        #[must_use]
        pub const fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// Append `bytes` as they are.
        pub fn push(&mut self, bytes: &[u8]) -> Option<()> {
            let end = self.len.checked_add(bytes.len())?;
            self.buf.get_mut(self.len..end)?.copy_from_slice(bytes);
            self.len = end;
            Some(())
        }

        /// Append `bytes` as lowercase hex, two digits per byte, in memory order.
        pub fn push_hex_bytes(&mut self, bytes: &[u8]) -> Option<()> {
            let end = self.len.checked_add(bytes.len().checked_mul(2)?)?;
            let out = self.buf.get_mut(self.len..end)?;
            for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
                pair[0] = hex_digit(b >> 4);
                pair[1] = hex_digit(b);
            }
            self.len = end;
            Some(())
        }

        /// Append `v` in lowercase hex without leading zeros ("0" for zero).
        pub fn push_hex_u64(&mut self, v: u64) -> Option<()> {
            let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
            for i in (0..digits).rev() {
                self.push(&[hex_digit((v >> (4 * i)) as u8)])?;
            }
            Some(())
        }

        /// Append `v` in decimal.
        pub fn push_decimal(&mut self, v: u64) -> Option<()> {
            let mut digits = [0u8; 20];
            let mut n = digits.len();
            let mut v = v;
            loop {
                n -= 1;
                digits[n] = b'0' + (v % 10) as u8;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            self.push(&digits[n..])
        }
    }

    /// `@@NB1 report <kind decimal> <hex>\n`.
    pub fn report_line(w: &mut LineWriter<'_>, kind: u64, bytes: &[u8]) -> Option<()> {
        w.push(PREFIX.as_bytes())?;
        w.push(b"report ")?;
        w.push_decimal(kind)?;
        w.push(b" ")?;
        w.push_hex_bytes(bytes)?;
        w.push(b"\n")
    }

    /// `@@NB1 exception <hex>\n`.
    pub fn exception_line(w: &mut LineWriter<'_>, bytes: &[u8]) -> Option<()> {
        w.push(PREFIX.as_bytes())?;
        w.push(b"exception ")?;
        w.push_hex_bytes(bytes)?;
        w.push(b"\n")
    }

    /// `@@NB1 exit <status hex>\n`.
    pub fn exit_line(w: &mut LineWriter<'_>, status: u64) -> Option<()> {
        w.push(PREFIX.as_bytes())?;
        w.push(b"exit ")?;
        w.push_hex_u64(status)?;
        w.push(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use nestbench_abi::Pod;
    use nestbench_abi::e9::decode_hex;
    use nestbench_abi::payload::{ExitRecord, PayloadResults};
    use nestbench_abi::report::{MsrProbe, ProbeReport, VMX_MSR_COUNT};

    use super::e9::{LineWriter, exception_line, exit_line, report_line};
    use super::*;

    fn line(fill: impl FnOnce(&mut LineWriter<'_>) -> Option<()>) -> String {
        let mut buf = std::vec![0u8; E9_LINE_MAX];
        let mut w = LineWriter::new(&mut buf);
        fill(&mut w).expect("fits");
        let n = w.len();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// Split a report line into (kind, decoded bytes), as a runner would.
    fn parse_report(l: &str) -> (u64, std::vec::Vec<u8>) {
        let rest = l.strip_prefix("@@NB1 report ").unwrap().strip_suffix('\n').unwrap();
        let (kind, hex) = rest.split_once(' ').unwrap();
        let mut out = std::vec![0u8; hex.len() / 2];
        assert_eq!(decode_hex(hex, &mut out), Some(out.len()));
        (kind.parse().unwrap(), out)
    }

    fn payload_report() -> PayloadReport {
        let mut exits_by_reason = [0u32; 80];
        exits_by_reason[30] = 1000;
        exits_by_reason[10] = 0xDEAD_BEEF;
        let mut exit_records = [ExitRecord::default(); 64];
        for (i, r) in exit_records.iter_mut().enumerate() {
            *r = ExitRecord {
                reason: 30,
                insn_len: 2,
                qualification: 0xE0_0003 + i as u64,
                rip_offset: 0x1234 + i as u64,
                insn_info: 0,
                reserved: 0,
                guest_linear: u64::MAX - i as u64,
            };
        }
        PayloadReport {
            status: 0x0102_0304_0506_0708,
            exits_by_reason,
            records: 64,
            vmx_accesses: 4321,
            vendor: 1,
            reserved: 0,
            results: PayloadResults {
                magic: nestbench_abi::payload::RESULTS_MAGIC,
                iterations: 1000,
                total_cycles: 123_456_789,
                min_cycles: 100,
                max_cycles: 99_999,
                failures: 0,
                hist: core::array::from_fn(|i| i as u64 * 0x1_0001),
            },
            exit_records,
        }
    }

    #[test]
    fn transport_follows_the_nestbench_signature() {
        let (b, c, d) = hv::signature_words();
        assert_eq!(select_transport(b, c, d), Transport::Nestbench);
        // Bare metal / Bochs: leaf 0x4000_0000 is past the maximum, so the CPU returns the
        // highest basic leaf's data, or zeros.
        assert_eq!(select_transport(0, 0, 0), Transport::E9);
        assert_eq!(select_transport(0x0000_0000, 0x0000_0000, 0x0000_0100), Transport::E9);
        // Another hypervisor (KVM's "KVMKVMKVM\0\0\0") does not serve our hypercalls.
        let kvm = *b"KVMKVMKVM\0\0\0";
        let w = |i: usize| u32::from_le_bytes([kvm[i], kvm[i + 1], kvm[i + 2], kvm[i + 3]]);
        assert_eq!(select_transport(w(0), w(4), w(8)), Transport::E9);
        // One byte off is not ours.
        assert_eq!(select_transport(b ^ 1, c, d), Transport::E9);
        assert_eq!(select_transport(b, c, d ^ 0x100), Transport::E9);
    }

    #[test]
    fn a_payload_report_line_decodes_back_to_the_same_bytes() {
        let r = payload_report();
        let l = line(|w| report_line(w, ReportKind::PayloadRun as u64, r.as_bytes()));
        assert!(l.starts_with("@@NB1 report 2 0807060504030201"), "{}", &l[..40]);
        assert_eq!(l.len(), "@@NB1 report 2 \n".len() + 2 * size_of::<PayloadReport>());
        assert_eq!(l.matches('\n').count(), 1, "one line");
        let (kind, bytes) = parse_report(&l);
        assert_eq!(kind, 2);
        assert_eq!(bytes, r.as_bytes());
        assert_eq!(PayloadReport::from_bytes(&bytes), Some(r));
        assert!(l.len() < E9_LINE_MAX, "the largest report fits the line buffer");
    }

    #[test]
    fn a_probe_report_line_decodes_back_to_the_same_bytes() {
        let r = ProbeReport {
            max_basic_leaf: 0x16,
            cpuid1_eax: 0x50654,
            cpuid1_ecx: 0x7FFA_FBBF,
            cpuid1_edx: 0xBFEB_FBFF,
            ext1_ecx: 0x121,
            hv_max_leaf: 0,
            vendor: *b"GenuineIntel",
            hv_signature: [0; 12],
            hv_abi_version: 0,
            hv_features: 0,
            hv_hypercall_port: 0,
            reserved0: 0,
            cr0: 0x8000_0031,
            cr4: 0x2020,
            efer: 0xD01,
            mtrr_def_type: MsrProbe { index: 0x2FF, status: 0, value: 0xC06 },
            feature_control: MsrProbe { index: 0x3A, status: 0, value: 5 },
            vmx_msrs: core::array::from_fn(|i| MsrProbe {
                index: 0x480 + i as u32,
                status: 0,
                value: 0xDA04_0000_0000_0001 ^ (i as u64) << 40,
            }),
        };
        assert_eq!(r.vmx_msrs.len(), VMX_MSR_COUNT);
        let l = line(|w| report_line(w, ReportKind::Probe as u64, r.as_bytes()));
        let (kind, bytes) = parse_report(&l);
        assert_eq!(kind, ReportKind::Probe as u64);
        assert_eq!(ProbeReport::from_bytes(&bytes), Some(r));
        assert_eq!(bytes.len(), size_of::<ProbeReport>());
    }

    #[test]
    fn exception_and_exit_lines() {
        let e = ExceptionReport { vector: 14, error_code: 2, rip: 0x20_1234, cr2: 0x4000_0000, ..Default::default() };
        let l = line(|w| exception_line(w, e.as_bytes()));
        let hex = l.strip_prefix("@@NB1 exception ").unwrap().strip_suffix('\n').unwrap();
        let mut out = [0u8; size_of::<ExceptionReport>()];
        assert_eq!(decode_hex(hex, &mut out), Some(out.len()));
        assert_eq!(ExceptionReport::from_bytes(&out), Some(e));

        assert_eq!(line(|w| exit_line(w, 0)), "@@NB1 exit 0\n");
        assert_eq!(line(|w| exit_line(w, 0xB4)), "@@NB1 exit b4\n");
        assert_eq!(line(|w| exit_line(w, 0xEE)), "@@NB1 exit ee\n");
        assert_eq!(line(|w| exit_line(w, u64::MAX)), "@@NB1 exit ffffffffffffffff\n");
        for s in [0, 1, 0xF, 0x10, 0xB5, 0x1234_5678_9ABC] {
            let l = line(|w| exit_line(w, s));
            let hex = l.strip_prefix("@@NB1 exit ").unwrap().trim_end();
            assert_eq!(u64::from_str_radix(hex, 16), Ok(s));
        }
    }

    #[test]
    fn decimal_kinds_and_overflow() {
        assert_eq!(line(|w| w.push_decimal(0)), "0");
        assert_eq!(line(|w| w.push_decimal(1234567890)), "1234567890");
        assert_eq!(line(|w| w.push_decimal(u64::MAX)), u64::MAX.to_string());
        let mut small = [0u8; 20];
        let mut w = LineWriter::new(&mut small);
        assert_eq!(report_line(&mut w, 1, &[0xAB; 4]), None, "does not fit: refused, not truncated silently");
        let mut w = LineWriter::new(&mut small);
        assert_eq!(w.push_hex_bytes(&[0xAB; 11]), None);
        assert!(w.is_empty(), "a failed push writes nothing");
        assert_eq!(w.push_hex_bytes(&[0xAB; 10]), Some(()));
        assert_eq!(&small[..], b"abababababababababab");
    }
}
