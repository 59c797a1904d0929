//! `nestbench-l0 agent`: the emulated host's side. Loads the KVM modules of the [`Plan`],
//! reports the host, runs each planned l0 invocation as a child of its own and frames what
//! it prints onto its line: the emulator's debug port (`--line e9`) or a serial line.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::frame::{self, AgentFailure, Kind, RunExit};
use super::{ModuleLoad, Plan};

/// Errors that stop the agent (reported on stderr, the console of the emulated machine).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The plan could not be read.
    #[error("reading the plan {path}: {message}")]
    Plan {
        /// Where it was looked for.
        path: String,
        /// Why it could not be used.
        message: String,
    },
    /// The line could not be opened or written.
    #[error("the stream line {path}: {source}")]
    Line {
        /// Its device.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where frames go: a serial line (a tty, or any file), or an emulator's debug port.
enum Sink {
    /// A device or file.
    File(std::fs::File),
    /// An I/O port the emulator copies to its output byte by byte (Bochs' `port_e9_hack`,
    /// QEMU's `-debugcon`): no UART, no interrupts, no baud rate.
    Port(u16),
}

/// The debug port that `--line e9` names.
pub const DEBUG_PORT: u16 = 0xE9;

/// The framed line, shared by the threads that read a run's stdout and stderr.
#[derive(Clone)]
struct Line {
    inner: Arc<Mutex<(Sink, u64)>>,
    path: String,
}

impl Line {
    fn open(path: &str) -> Result<Self, AgentError> {
        let err = |source| AgentError::Line { path: path.to_owned(), source };
        let sink = if path == "e9" {
            // SAFETY: ioperm(2) only changes this process's I/O permission bitmap.
            if unsafe { libc::ioperm(u64::from(DEBUG_PORT), 1, 1) } != 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
            Sink::Port(DEBUG_PORT)
        } else {
            let f = std::fs::OpenOptions::new().write(true).open(path).map_err(err)?;
            raw_115200(&f);
            Sink::File(f)
        };
        Ok(Self { inner: Arc::new(Mutex::new((sink, 0))), path: path.to_owned() })
    }

    fn send(&self, run: u32, kind: Kind, payload: &str) -> Result<(), AgentError> {
        let mut g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let line = frame::encode(g.1, run, kind, payload);
        g.1 += 1;
        match &mut g.0 {
            Sink::File(f) => {
                f.write_all(line.as_bytes()).map_err(|source| AgentError::Line { path: self.path.clone(), source })
            }
            Sink::Port(port) => {
                out_bytes(*port, line.as_bytes());
                Ok(())
            }
        }
    }

    /// Wait until the UART has sent everything (the machine powers off right after).
    fn drain(&self) {
        let g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Sink::File(f) = &g.0 {
            // SAFETY: tcdrain on a file descriptor we own; an error (not a tty) is ignored.
            unsafe { libc::tcdrain(f.as_raw_fd()) };
        }
    }
}

/// `rep outsb` of `bytes` to `port` (granted by ioperm in [`Line::open`]).
fn out_bytes(port: u16, bytes: &[u8]) {
    // SAFETY: this process holds the I/O permission for `port` (ioperm), `rep outsb` reads
    // exactly `bytes.len()` bytes from `bytes` (RSI, RCX; DF is clear as the ABI requires)
    // and writes no memory.
    unsafe {
        std::arch::asm!(
            "rep outsb",
            in("dx") port,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(nostack, preserves_flags, readonly)
        );
    }
}

/// Put a tty into raw mode at 115200 baud (a no-op on anything else).
fn raw_115200(f: &std::fs::File) {
    let fd = f.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it or fails (not a tty), and then we
    // leave the file as it is.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &raw mut t) != 0 {
            return;
        }
        libc::cfmakeraw(&raw mut t);
        libc::cfsetispeed(&raw mut t, libc::B115200);
        libc::cfsetospeed(&raw mut t, libc::B115200);
        libc::tcsetattr(fd, libc::TCSANOW, &raw const t);
    }
}

/// Run the agent: `plan_path` inside the emulated machine, frames to `line_path`.
pub fn run(plan_path: &Path, line_path: &str) -> Result<(), AgentError> {
    let plan_err = |message: String| AgentError::Plan { path: plan_path.display().to_string(), message };
    let text = std::fs::read_to_string(plan_path).map_err(|e| plan_err(e.to_string()))?;
    let plan: Plan = serde_json::from_str(&text).map_err(|e| plan_err(e.to_string()))?;
    let line = Line::open(line_path)?;
    let result = serve(&plan, &line);
    line.drain();
    result
}

/// The kernel's uptime in seconds (/proc/uptime), 0 where unreadable.
fn uptime_s() -> f64 {
    std::fs::read_to_string("/proc/uptime").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0.0)
}

fn serve(plan: &Plan, line: &Line) -> Result<(), AgentError> {
    let uptime_at_agent_s = uptime_s();
    let mut module_load_ms = Vec::new();
    for m in &plan.modules {
        let t = Instant::now();
        let loaded = load_module(m);
        module_load_ms.push((m.name.clone(), u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)));
        if let Err(message) = loaded {
            let f = AgentFailure { message, dmesg: dmesg_tail(40) };
            line.send(0, Kind::Fail, &serde_json::to_string(&f).unwrap_or_default())?;
            return line.send(0, Kind::Bye, "{\"runs\":0}");
        }
    }
    for (path, value) in &plan.sysfs {
        if let Err(e) = std::fs::write(path, value) {
            let f = AgentFailure { message: format!("writing {value:?} to {path}: {e}"), dmesg: String::new() };
            line.send(0, Kind::Fail, &serde_json::to_string(&f).unwrap_or_default())?;
            return line.send(0, Kind::Bye, "{\"runs\":0}");
        }
    }
    let report =
        super::HostReport { facts: crate::host::gather(Path::new("/dev/kvm")), uptime_at_agent_s, module_load_ms };
    line.send(0, Kind::Host, &serde_json::to_string(&report).unwrap_or_default())?;
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    for (i, r) in plan.runs.iter().enumerate() {
        let run = u32::try_from(i + 1).unwrap_or(u32::MAX);
        line.send(run, Kind::Start, &serde_json::to_string(&r.args).unwrap_or_default())?;
        let exit = run_one(&exe, &r.args, Duration::from_millis(r.deadline_ms), run, line)?;
        line.send(run, Kind::Exit, &serde_json::to_string(&exit).unwrap_or_default())?;
    }
    line.send(0, Kind::Bye, &format!("{{\"runs\":{}}}", plan.runs.len()))
}

/// Run one invocation, framing its stdout and stderr lines as they come.
fn run_one(exe: &Path, args: &[String], deadline: Duration, run: u32, line: &Line) -> Result<RunExit, AgentError> {
    let start = Instant::now();
    let mut child =
        match Command::new(exe).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
            Ok(c) => c,
            Err(e) => {
                line.send(run, Kind::Err, &format!("agent: cannot start {}: {e}", exe.display()))?;
                return Ok(RunExit { code: None, signal: None, wall_ms: 0, timed_out: false });
            }
        };
    let pump = |r: Box<dyn std::io::Read + Send>, kind: Kind| {
        let line = line.clone();
        std::thread::spawn(move || -> Result<(), AgentError> {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => line.send(run, kind, String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']))?,
                }
            }
        })
    };
    let out = pump(Box::new(child.stdout.take().expect("piped")), Kind::Out);
    let err = pump(Box::new(child.stderr.take().expect("piped")), Kind::Err);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() > deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break None,
        }
    };
    for t in [out, err] {
        t.join().unwrap_or(Ok(()))?;
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(RunExit {
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        wall_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        timed_out,
    })
}

/// Load one module (finit_module(2)), naming it and the kernel's error on failure.
fn load_module(m: &ModuleLoad) -> Result<(), String> {
    let f = std::fs::File::open(&m.path).map_err(|e| format!("module {} ({}): {e}", m.name, m.path))?;
    let params = CString::new(m.params.clone()).map_err(|_| format!("module {}: parameters contain NUL", m.name))?;
    // SAFETY: finit_module reads the module from an open fd and a NUL-terminated string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(format!("loading module {} ({}) with parameters {:?} failed: {e}", m.name, m.path, m.params))
}

/// The last `lines` lines of the kernel log.
fn dmesg_tail(lines: usize) -> String {
    let mut buf = vec![0u8; 1 << 17];
    // SAFETY: klogctl(SYSLOG_ACTION_READ_ALL = 3) writes at most buf.len() bytes into buf.
    let n = unsafe { libc::klogctl(3, buf.as_mut_ptr().cast(), i32::try_from(buf.len()).unwrap_or(i32::MAX)) };
    let Ok(n) = usize::try_from(n) else { return "(dmesg unreadable)".into() };
    let text = String::from_utf8_lossy(&buf[..n.min(buf.len())]);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
