//! Bochs' stdout, turned into the soft engine's events: L1's port-0xE9 lines
//! ([`nestbench_abi::e9`]) become [`Event`]s and the run's [`Outcome`]; what Bochs' debugger
//! prints (instruction count, registers) goes to the report.
//!
//! Bochs' stdout has three parts. Before the emulation starts the debugger prints a banner,
//! `Next at t=0` and the disassembly of the reset vector (`(0) [0x0000fffffff0] ...`).
//! Then every byte L1 writes to port 0xE9 appears as it is (`port_e9_hack`). When the
//! emulation stops (L1's `xchg bx, bx` with `magic_break: enabled=1`, or a SIGINT from the
//! runner's timeout) the debugger prints `(0) Magic breakpoint` (magic break only),
//! `Next at t=N` (N = instructions executed, deterministic with `clock: sync=none`), the
//! disassembly at RIP, and then the output of the script's `r` command (registers).
//! Bochs' own lines can start in the middle of an unfinished line of L1's, so they are
//! found by their markers, not only at line starts.

use std::collections::BTreeMap;

use nestbench_abi::Pod;
use nestbench_abi::e9::{PREFIX, decode_hex};
use nestbench_abi::hypercall::{Call, Status};
use nestbench_abi::report::ExceptionReport;

use crate::events::{Event, Gprs, Outcome};

/// Where the debugger's output after the emulation stopped starts.
const STOP_MARKERS: [&str; 2] = ["(0) Magic breakpoint", "Next at t="];
/// A line the debugger prints about an event while the emulation goes on, e.g.
/// `(0).[43481] ??? (physical address not available)` when L2 triple-faults under L1 (a VM
/// exit, after which L1 still reports its verdict): kept aside, not a stop. After a stop the
/// debugger prints the same form for the instruction at RIP.
const EVENT_MARKER: &str = "(0).[";
/// The longest line kept as one (longer ones are cut: L1's longest structured line is
/// about 6 KiB).
pub const MAX_LINE: usize = 64 * 1024;
/// Most lines kept of each kind of leftover output.
pub const MAX_KEPT_LINES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The debugger's banner, before the emulation starts.
    Preamble,
    /// L1's output.
    Guest,
    /// The debugger, after the emulation stopped.
    Stopped,
}

/// Incremental parser of Bochs' stdout.
#[derive(Debug)]
pub struct StdoutParser {
    state: State,
    line: Vec<u8>,
    /// The first terminal line's outcome (exception or exit); later lines are not events.
    pub outcome: Option<Outcome>,
    /// Instructions executed when the emulation stopped (`Next at t=N`).
    pub instructions: Option<u64>,
    /// Registers from the debugger's `r` after the stop.
    pub regs: Option<Gprs>,
    /// The instruction at RIP when the emulation stopped, as Bochs disassembled it.
    pub stop_disassembly: Option<String>,
    /// L1's lines by hypercall they stand for (`ConsoleWrite`, `Report`, ...).
    pub hypercalls: BTreeMap<String, u64>,
    /// Bochs' own lines after the stop that were not understood (at most
    /// [`MAX_KEPT_LINES`]).
    pub bochs_lines: Vec<String>,
    /// L1's lines after its terminal line (at most [`MAX_KEPT_LINES`]).
    pub after_end: Vec<String>,
}

impl Default for StdoutParser {
    fn default() -> Self {
        Self::new()
    }
}

fn keep(v: &mut Vec<String>, s: String) {
    if v.len() < MAX_KEPT_LINES {
        v.push(s);
    }
}

fn bad_line(call: Call, detail: String) -> Event {
    // There is no guest RIP on this transport: 0.
    Event::HypercallError { call: call as u32, status: format!("{:?}", Status::BadArgument), detail, rip: 0 }
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let mut out = vec![0; s.len() / 2];
    let n = decode_hex(s, &mut out)?;
    out.truncate(n);
    Some(out)
}

impl StdoutParser {
    /// A parser at the start of Bochs' output.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: State::Preamble,
            line: Vec::new(),
            outcome: None,
            instructions: None,
            regs: None,
            stop_disassembly: None,
            hypercalls: BTreeMap::new(),
            bochs_lines: Vec::new(),
            after_end: Vec::new(),
        }
    }

    /// Feed bytes as they come; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.line_done(&String::from_utf8_lossy(&line), &mut events);
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        events
    }

    /// The end of the output: an unfinished last line counts as a line.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&String::from_utf8_lossy(&line), &mut events);
        }
        events
    }

    fn line_done(&mut self, line: &str, events: &mut Vec<Event>) {
        match self.state {
            State::Preamble => {
                // The disassembly of the reset vector is the last line before the emulation.
                if line.starts_with("(0) [") {
                    self.state = State::Guest;
                }
            }
            State::Guest => match STOP_MARKERS.iter().filter_map(|m| line.find(m)).min() {
                Some(at) => {
                    if at > 0 {
                        self.guest_line(&line[..at], events);
                    }
                    self.state = State::Stopped;
                    self.stopped_line(&line[at..]);
                }
                None => match line.find(EVENT_MARKER) {
                    Some(at) => {
                        if at > 0 {
                            self.guest_line(&line[..at], events);
                        }
                        keep(&mut self.bochs_lines, line[at..].to_owned());
                    }
                    None => self.guest_line(line, events),
                },
            },
            State::Stopped => self.stopped_line(line),
        }
    }

    fn count(&mut self, call: Call) {
        *self.hypercalls.entry(format!("{call:?}")).or_default() += 1;
    }

    fn guest_line(&mut self, line: &str, events: &mut Vec<Event>) {
        if self.outcome.is_some() {
            keep(&mut self.after_end, line.to_owned());
            return;
        }
        let Some(rest) = line.strip_prefix(PREFIX) else {
            self.count(Call::ConsoleWrite);
            events.push(Event::Console { text: line.to_owned() });
            return;
        };
        let words: Vec<&str> = rest.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["report", kind, hex] => {
                self.count(Call::Report);
                let decoded = kind
                    .parse::<u64>()
                    .map_err(|_| format!("report kind {kind:?} is not a decimal number"))
                    .and_then(|kind| {
                        let bytes = hex_bytes(hex).ok_or_else(|| "report bytes are not hex".to_owned())?;
                        Event::from_report(kind, &bytes).map_err(|e| e.to_string())
                    });
                events.push(decoded.unwrap_or_else(|e| bad_line(Call::Report, format!("{line:.80}: {e}"))));
            }
            ["exception", hex] => {
                self.count(Call::Exception);
                match hex_bytes(hex).filter(|b| b.len() == size_of::<ExceptionReport>()) {
                    Some(b) => {
                        let r = ExceptionReport::from_bytes(&b).expect("length checked");
                        self.outcome = Some(Outcome::from_exception(&r));
                    }
                    None => events.push(bad_line(
                        Call::Exception,
                        format!("exception line is not the hex of {} bytes", size_of::<ExceptionReport>()),
                    )),
                }
            }
            ["exit", hex] => {
                self.count(Call::Exit);
                match u64::from_str_radix(hex, 16) {
                    Ok(status) => self.outcome = Some(Outcome::Exited { status }),
                    Err(_) => events.push(bad_line(Call::Exit, format!("exit status {hex:?} is not hex"))),
                }
            }
            _ => events.push(bad_line(Call::ConsoleWrite, format!("malformed {PREFIX}line: {line:.80}"))),
        }
    }

    fn stopped_line(&mut self, line: &str) {
        let line = line.trim_end_matches('\r');
        if let Some(t) = line.strip_prefix("Next at t=") {
            if self.instructions.is_none() {
                self.instructions = t.trim().parse().ok();
            }
        } else if line.starts_with("(0) Magic breakpoint") || line == "CPU0:" {
        } else if let Some(rest) = line.strip_prefix("(0) [") {
            // `(0) [0x000000100000] 0008:0000000000100000 (unk. ctxt): jmp .-2 ; ebfe`
            if self.stop_disassembly.is_none() {
                let text = rest.split_once("): ").map_or(rest, |(_, t)| t);
                let text = text.rsplit_once(" ; ").map_or(text, |(t, _)| t);
                self.stop_disassembly = Some(text.trim().to_owned());
            }
        } else if line.starts_with("(0).[") {
        } else if !self.register_line(line) {
            keep(&mut self.bochs_lines, line.to_owned());
        }
    }

    /// `rax: 00000000_00000000` or `eflags 0x00000002: ...` from the debugger's `r`.
    fn register_line(&mut self, line: &str) -> bool {
        let (name, value) = if let Some(v) = line.strip_prefix("eflags 0x") {
            ("rflags", v.split(':').next().unwrap_or(""))
        } else if let Some((n, v)) = line.split_once(':') {
            (n.trim(), v.trim())
        } else {
            return false;
        };
        let Ok(v) = u64::from_str_radix(&value.replace('_', ""), 16) else {
            return false;
        };
        let r = self.regs.get_or_insert_with(Gprs::default);
        let slot = match name {
            "rax" => &mut r.rax,
            "rbx" => &mut r.rbx,
            "rcx" => &mut r.rcx,
            "rdx" => &mut r.rdx,
            "rsi" => &mut r.rsi,
            "rdi" => &mut r.rdi,
            "rbp" => &mut r.rbp,
            "rsp" => &mut r.rsp,
            "r8" => &mut r.r8,
            "r9" => &mut r.r9,
            "r10" => &mut r.r10,
            "r11" => &mut r.r11,
            "r12" => &mut r.r12,
            "r13" => &mut r.r13,
            "r14" => &mut r.r14,
            "r15" => &mut r.r15,
            "rip" => &mut r.rip,
            "rflags" => &mut r.rflags,
            // CET's shadow-stack pointer (tigerlake): not in the report's registers.
            "ssp" => return true,
            _ => return false,
        };
        *slot = v;
        true
    }
}

#[cfg(test)]
mod tests {
    use nestbench_abi::report::{ProbeReport, ReportKind};

    use super::*;

    const BANNER: &str = "========================================================================\n\
                        \x20                       Bochs x86 Emulator 2.7\n\
                        ========================================================================\n\
                        Next at t=0\n\
                        (0) [0x0000fffffff0] f000:fff0 (unk. ctxt): jmp .+65040  (0xffff_fe00)   ; e90dfe\n";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn parse_all(chunks: &[&[u8]]) -> (StdoutParser, Vec<Event>) {
        let mut p = StdoutParser::new();
        let mut ev = Vec::new();
        for c in chunks {
            ev.extend(p.feed(c));
        }
        ev.extend(p.finish());
        (p, ev)
    }

    /// A run as L1 writes it, split at awkward places.
    #[test]
    fn recorded_run_gives_console_probe_exit_and_the_count() {
        let mut probe = ProbeReport { vendor: *b"GenuineIntel", cpuid1_ecx: 1 << 5, ..unsafe_zeroed() };
        probe.vmx_msrs[0] = nestbench_abi::report::MsrProbe { index: 0x480, status: 0, value: 0xd8_1000_0000_002b };
        let out = format!(
            "{BANNER}nestbench L1: hello\nno nestbench leaf: port 0xE9\n@@NB1 report {} {}\n@@NB1 exit 0\n(0) Magic breakpoint\n\
             Next at t=1234567\n(0) [0x000000101234] 0008:0000000000101234 (unk. ctxt): jmp .-2 (0x101234) ; ebfe\nCPU0:\n\
             rax: 00000000_00000001\nrdi: 00000000_00006000\nrip: 00000000_00101234\n\
             eflags 0x00000046: id vip vif ac vm rf nt IOPL=0 of df if tf sf ZF af PF cf\n<bochs:3> quit\n",
            ReportKind::Probe as u64,
            hex(probe.as_bytes())
        );
        let b = out.as_bytes();
        let (p, ev) = parse_all(&[&b[..300], &b[300..301], &b[301..]]);
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert_eq!(ev[0], Event::Console { text: "nestbench L1: hello".into() });
        let Event::Probe(pr) = &ev[2] else { panic!("{ev:?}") };
        assert!(pr.vmx && !pr.nestbench_l0);
        assert_eq!(pr.vmx_msrs[0].status, "ok");
        assert_eq!(pr.vmx_msrs[0].value, Some(0xd8_1000_0000_002b));
        assert_eq!(p.outcome, Some(Outcome::Exited { status: 0 }));
        assert_eq!(p.instructions, Some(1_234_567));
        let regs = p.regs.clone().unwrap();
        assert_eq!((regs.rax, regs.rdi, regs.rip, regs.rflags), (1, 0x6000, 0x10_1234, 0x46));
        assert_eq!(p.stop_disassembly.as_deref(), Some("jmp .-2 (0x101234)"));
        assert_eq!(p.hypercalls["ConsoleWrite"], 2);
        assert_eq!(p.hypercalls["Report"], 1);
        assert_eq!(p.hypercalls["Exit"], 1);
        assert_eq!(p.bochs_lines, ["<bochs:3> quit"]);
    }

    fn unsafe_zeroed() -> ProbeReport {
        ProbeReport::from_bytes(&[0u8; size_of::<ProbeReport>()]).unwrap()
    }

    #[test]
    fn exception_line_ends_the_run_and_later_lines_are_kept_aside() {
        let r = ExceptionReport { vector: 14, error_code: 2, rip: 0x10_2000, cr2: 0xdead_0000, ..Default::default() };
        let out = format!("{BANNER}@@NB1 exception {}\n@@NB1 exit b0\n", hex(r.as_bytes()));
        let (p, ev) = parse_all(&[out.as_bytes()]);
        assert!(ev.is_empty(), "{ev:?}");
        match p.outcome {
            Some(Outcome::GuestException { vector: 14, ref name, cr2: 0xdead_0000, rip: 0x10_2000, .. })
                if name == "#PF" => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(p.after_end, ["@@NB1 exit b0"]);
    }

    #[test]
    fn unfinished_console_line_before_the_magic_breakpoint_is_split_off() {
        let out = format!("{BANNER}partial(0) Magic breakpoint\nNext at t=99\n");
        let (p, ev) = parse_all(&[out.as_bytes()]);
        assert_eq!(ev, [Event::Console { text: "partial".into() }]);
        assert_eq!(p.instructions, Some(99));
        assert_eq!(p.outcome, None);
    }

    #[test]
    fn malformed_lines_are_hypercall_errors_not_panics() {
        let out = format!(
            "{BANNER}@@NB1 report 9 00\n@@NB1 report 1 0g\n@@NB1 report 1 00\n@@NB1 exit zz\n@@NB1 exception 00\n@@NB1 bogus\n"
        );
        let (p, ev) = parse_all(&[out.as_bytes()]);
        assert_eq!(ev.len(), 6, "{ev:?}");
        for e in &ev {
            assert!(matches!(e, Event::HypercallError { status, .. } if status == "BadArgument"), "{e:?}");
        }
        let Event::HypercallError { detail, .. } = &ev[0] else { unreachable!() };
        assert!(detail.ends_with("unknown report kind 9"), "{detail}");
        let Event::HypercallError { detail, .. } = &ev[2] else { unreachable!() };
        assert!(detail.contains("length 1 is not the"), "{detail}");
        assert_eq!(p.outcome, None);
    }

    #[test]
    fn a_debugger_line_while_l1_runs_does_not_end_l1s_output() {
        // Recorded: L2 triple-faults after an injected #UD (no IDT); Bochs' debugger prints
        // the event, then L1 reports its verdict (exit reason 2) and exits.
        let out = format!(
            "{BANNER}l1: VMX offered, L0 unknown\n(0).[43481] ??? (physical address not available)\n\
             l1: verdict for Vmentry: kind 0, error 0, exit reason 0x2, qualification 0x0\n@@NB1 exit 0\n\
             (0) Magic breakpoint\nNext at t=46923\n"
        );
        let (p, ev) = parse_all(&[out.as_bytes()]);
        assert_eq!(p.outcome, Some(Outcome::Exited { status: 0 }));
        assert_eq!(ev.len(), 2, "both console lines are L1's: {ev:?}");
        assert_eq!(p.bochs_lines, ["(0).[43481] ??? (physical address not available)"]);
        assert_eq!(p.instructions, Some(46_923));
    }

    #[test]
    fn a_timeout_stop_without_magic_breakpoint_still_gives_count_and_registers() {
        let out = format!(
            "{BANNER}working\nNext at t=91439864\n(0) [0x0000000f0000] f000:0000 (unk. ctxt): jmp .-2  (0x000f0000)     ; ebfe\n\
             CPU0:\nrip: 00000000_00100000\n(0).[91439864] [0x0000000f0000] f000:0000 (unk. ctxt): jmp .-2 ; ebfe\n"
        );
        let (p, ev) = parse_all(&[out.as_bytes()]);
        assert_eq!(ev, [Event::Console { text: "working".into() }]);
        assert_eq!(p.instructions, Some(91_439_864));
        assert_eq!(p.regs.unwrap().rip, 0x10_0000);
        assert!(p.bochs_lines.is_empty(), "{:?}", p.bochs_lines);
    }
}
