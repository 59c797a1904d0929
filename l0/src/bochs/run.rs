//! Running L1 on Bochs: write the run's files, start Bochs in a network namespace of its
//! own, stream its stdout through [`StdoutParser`], stop it at the time budget, and build
//! the same [`RunReport`] the soft engine gives, with a `bochs` section.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nestbench_abi::boot::Scenario;

use super::BochsSection;
use super::config::{self, ConfigError, CpuModel, RcFiles, RunDir};
use super::image::{self, ImageError};
use super::parse::StdoutParser;
use super::rom::{self, RomError};
use crate::events::{Event, Gprs, Outcome, RunReport};
use crate::machine::{Image, PayloadSpec};

/// Debian's Bochs (a wrapper script that execs `bochs-bin -q`).
pub const DEFAULT_BOCHS: &str = "/usr/bin/bochs";
/// The VGA BIOS Bochs needs even headless (package vgabios).
pub const DEFAULT_VGABIOS: &str = "/usr/share/vgabios/vgabios.bin";
/// How long Bochs gets after the SIGINT of a timeout to print the instruction count and
/// registers before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// Most log lines kept in the report.
pub const MAX_LOG_LINES: usize = 200;

/// How to run L1 on Bochs.
#[derive(Clone, Debug)]
pub struct BochsConfig {
    /// The CPU model (`cpu: model=`), see [`config::CPU_MODELS`].
    pub model: String,
    /// Guest memory in bytes (whole MiB).
    pub mem_size: u64,
    /// Wall-clock budget; Bochs is stopped after it.
    pub timeout: Duration,
    /// Scenario passed to L1 in the boot info.
    pub scenario: Scenario,
    /// The L2 payload L1 should run.
    pub payload: Option<PayloadSpec>,
    /// A VM-entry case for [`Scenario::Vmentry`], written at its fixed address.
    pub vmentry_case: Option<nestbench_abi::vmentry::Case>,
    /// The Bochs executable.
    pub bochs: PathBuf,
    /// The VGA BIOS image.
    pub vgabios: PathBuf,
    /// Keep the run directory (bochsrc, ROM, RAM images, log) after the run.
    pub keep_dir: bool,
}

impl Default for BochsConfig {
    fn default() -> Self {
        Self {
            model: config::DEFAULT_MODEL.into(),
            mem_size: nestbench_abi::layout::DEFAULT_MEM_SIZE,
            timeout: Duration::from_secs(60),
            scenario: Scenario::Probe,
            payload: None,
            vmentry_case: None,
            bochs: DEFAULT_BOCHS.into(),
            vgabios: DEFAULT_VGABIOS.into(),
            keep_dir: false,
        }
    }
}

/// Errors that stop a Bochs run before or while it runs (L1 misbehaving, or Bochs dying, is
/// an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum BochsError {
    /// The model, memory size or run directory.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Building L1's memory.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Building the reset ROM.
    #[error(transparent)]
    Rom(#[from] RomError),
    /// A file Bochs needs is not there.
    #[error("{what} not found at {path} (Debian: apt-get install bochs bochsbios vgabios)")]
    Missing {
        /// What it is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// No network namespace for Bochs: its VNC listener must not open on the host network.
    #[error(
        "cannot give Bochs a network namespace of its own (`unshare -n` needs CAP_SYS_ADMIN, \
         `unshare -r -n` unprivileged user namespaces); refusing to run its VNC listener on the host \
         network: {0}"
    )]
    NoNetNamespace(String),
    /// Starting Bochs failed.
    #[error("starting Bochs: {0}")]
    Spawn(std::io::Error),
    /// Waiting for Bochs failed.
    #[error("waiting for Bochs: {0}")]
    Wait(std::io::Error),
}

/// The `unshare` options that give a child a network namespace here: `-n` where this
/// process may (CAP_SYS_ADMIN), else `-r -n` (a user namespace first).
pub fn netns_options() -> Result<&'static [&'static str], BochsError> {
    let mut why = Vec::new();
    for opts in [&["-n"][..], &["-r", "-n"][..]] {
        match Command::new("unshare").args(opts).arg("true").stdin(Stdio::null()).stdout(Stdio::null()).output() {
            Ok(o) if o.status.success() => return Ok(opts),
            Ok(o) => why.push(format!("unshare {}: {}", opts.join(" "), String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => why.push(format!("unshare: {e}")),
        }
    }
    Err(BochsError::NoNetNamespace(why.join("; ")))
}

fn require(what: &'static str, path: &Path) -> Result<(), BochsError> {
    if path.is_file() { Ok(()) } else { Err(BochsError::Missing { what, path: path.to_owned() }) }
}

/// Check the model (refusing unknown ones and those without EPT) and the Bochs files.
pub fn preflight(config: &BochsConfig) -> Result<&'static CpuModel, BochsError> {
    let model = config::l1_cpu_model(&config.model)?;
    require("Bochs", &config.bochs)?;
    require("the VGA BIOS", &config.vgabios)?;
    Ok(model)
}

/// Send `sig` to the process group `pgid` (an emulator started with `process_group(0)`).
pub fn signal_group(pgid: u32, sig: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return };
    // SAFETY: kill(2) with a negative pid signals that process group; the group is the one
    // emulator was started in (`process_group(0)`: its pgid is its pid) and nothing else.
    // Failure (the group is already gone) is harmless.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// The lines of Bochs' log worth a report: failed VM entries and VMX instructions, aborts,
/// errors and panics (`<ticks><level>[<module>]`, level `e` or `p`).
#[must_use]
pub fn interesting_log_lines(log: &str) -> Vec<String> {
    let level = |l: &str| l.trim_start_matches(|c: char| c.is_ascii_digit()).chars().next();
    log.lines()
        .filter(|l| {
            l.contains("VMENTER FAIL")
                || l.contains("VMFAIL")
                || l.contains("VMABORT")
                || l.contains("PANIC")
                || matches!(level(l), Some('e' | 'p'))
        })
        .take(MAX_LOG_LINES)
        .map(str::to_owned)
        .collect()
}

/// What Bochs said on stderr that matters: the "Bochs is exiting with the following message"
/// block and lines that are not its info log.
#[must_use]
pub fn stderr_messages(stderr: &str) -> Vec<String> {
    let info = |l: &str| {
        let rest = l.trim_start_matches(|c: char| c.is_ascii_digit());
        rest.len() < l.len() && rest.starts_with("i[")
    };
    stderr
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !info(l) && !l.starts_with("====") && !l.contains("Bochs is exiting with"))
        .take(MAX_LOG_LINES)
        .map(str::to_owned)
        .collect()
}

/// Run L1 (`image`) on Bochs. `on_event` sees every event as it is parsed, on the caller's
/// thread.
pub fn run(config: &BochsConfig, image: &Image, mut on_event: impl FnMut(Event)) -> Result<RunReport, BochsError> {
    let model = preflight(config)?;
    let netns = netns_options()?;
    let ram =
        image::build(config.mem_size, config.scenario, image, config.payload.as_ref(), config.vmentry_case.as_ref())?;
    let rom = rom::build(ram.entry)?;
    let dir = RunDir::create(config.keep_dir)?;
    let mut ram_images = Vec::new();
    for (i, r) in ram.regions.iter().enumerate() {
        ram_images.push((dir.write(&format!("ram{i}.bin"), &r.bytes)?, r.gpa));
    }
    let files = RcFiles {
        rom: dir.write("rom.bin", &rom)?,
        vgabios: config.vgabios.clone(),
        ram_images,
        log: dir.path().join("bochs.log"),
    };
    let rc = dir.write("bochsrc", config::bochsrc(model, config.mem_size, &files)?.as_bytes())?;
    let script = dir.write("debugger.rc", config::DEBUGGER_SCRIPT.as_bytes())?;

    let start = Instant::now();
    let mut child = Command::new("unshare")
        .args(netns)
        .arg(&config.bochs)
        .arg("-q")
        .arg("-f")
        .arg(&rc)
        .arg("-rc")
        .arg(&script)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(BochsError::Spawn)?;
    let pgid = child.id();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.by_ref().take(1 << 20).read_to_end(&mut s);
        // Drain the rest so Bochs never blocks on a full pipe.
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        String::from_utf8_lossy(&s).into_owned()
    });

    let mut parser = StdoutParser::new();
    let deadline = start + config.timeout;
    let mut timed_out = false;
    let mut killed = false;
    loop {
        let now = Instant::now();
        let until = if timed_out { deadline + STOP_GRACE } else { deadline };
        match rx.recv_timeout(until.saturating_duration_since(now)) {
            Ok(chunk) => parser.feed(&chunk).into_iter().for_each(&mut on_event),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if !timed_out => {
                // Like Ctrl-C at Bochs' debugger: the emulation stops, the debugger prints
                // the instruction count, runs the script's `r` and `quit`.
                timed_out = true;
                signal_group(pgid, libc::SIGINT);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                killed = true;
                signal_group(pgid, libc::SIGKILL);
                break;
            }
        }
    }
    parser.finish().into_iter().for_each(&mut on_event);
    if killed {
        // The reader thread ends when the pipe closes.
        let _ = child.kill();
    }
    let status = child.wait().map_err(BochsError::Wait)?;
    let _ = reader.join();
    let stderr_text = err_reader.join().unwrap_or_default();
    let wall_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);

    let log_lines =
        std::fs::read(&files.log).map(|b| interesting_log_lines(&String::from_utf8_lossy(&b))).unwrap_or_default();
    let mut messages = stderr_messages(&stderr_text);
    messages.extend(parser.bochs_lines.iter().cloned());
    use std::os::unix::process::ExitStatusExt;
    let section = BochsSection {
        model: model.name.to_owned(),
        lacks: model.lacks().into_iter().map(str::to_owned).collect(),
        instructions: parser.instructions,
        exit_status: status.code(),
        signal: status.signal(),
        timed_out,
        log_lines,
        messages,
        output_after_end: parser.after_end.clone(),
        run_dir: dir.kept().then(|| dir.path().display().to_string()),
    };
    let outcome = if timed_out {
        Outcome::Timeout {
            budget_ms: u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX),
            regs: parser.regs.clone().unwrap_or_default(),
            disassembly: parser.stop_disassembly.clone().unwrap_or_default(),
        }
    } else if let Some(o) = parser.outcome.take() {
        o
    } else {
        Outcome::EngineStopped { engine: "bochs".into(), why: stopped_why(&section, parser.regs.as_ref()) }
    };
    Ok(RunReport {
        outcome,
        kvm_exits: Default::default(),
        kvm_exits_total: 0,
        hypercalls: parser.hypercalls,
        wall_ns,
        kvm_stats: None,
        soft: None,
        bochs: Some(section),
        trace: None,
        kvm_engine: None,
    })
}

/// Why Bochs stopped when L1 never said how its run ended.
fn stopped_why(s: &BochsSection, regs: Option<&Gprs>) -> String {
    let how = match (s.exit_status, s.signal) {
        (Some(c), _) => format!("Bochs exited with status {c}"),
        (None, Some(sig)) => format!("Bochs was killed by signal {sig}"),
        (None, None) => "Bochs ended".to_owned(),
    };
    let mut why = format!("{how} without an exit or exception line from L1");
    if let Some(m) = s.messages.first() {
        why += &format!(": {m}");
    }
    if let Some(l) = s.log_lines.iter().rev().find(|l| l.contains("PANIC") || l.contains("VMENTER FAIL")) {
        why += &format!(" (log: {l})");
    }
    if let Some(r) = regs {
        why += &format!(" (rip {:#x})", r.rip);
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_and_stderr_keep_what_matters() {
        let log = "00000000000i[      ] using log file x\n\
                   00000001234e[VMX   ] VMENTER FAIL: VMCS guest incorrect TR type\n\
                   00000000002e[CPU0  ] interrupt(real mode) vector > idtr.limit\n\
                   00000000002p[CPU0  ] >>PANIC<< exception(): 3rd (13) exception with no resolution\n\
                   00000000002i[CPU0  ] | EIP=00000005 (00000005)\n";
        let l = interesting_log_lines(log);
        assert_eq!(l.len(), 3);
        assert!(l[0].contains("VMENTER FAIL: VMCS guest incorrect TR type"));
        let err = "00000000000i[      ] reading configuration from rc\n\
                   ========================================================================\n\
                   Bochs is exiting with the following message:\n\
                   [CPU0  ] exception(): 3rd (13) exception with no resolution\n\
                   ========================================================================\n";
        assert_eq!(stderr_messages(err), ["[CPU0  ] exception(): 3rd (13) exception with no resolution"]);
    }
}
