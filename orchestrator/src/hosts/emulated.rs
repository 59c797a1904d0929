//! Emulated hosts: an emulator boots an upstream kernel whose KVM offers nested
//! virtualization (Bochs with a VMX CPU model: `kvm_intel nested=1`; QEMU TCG `-cpu max`:
//! `kvm_amd nested=1 npt=1`); `nestbench-l0 agent` runs the plan inside and frames what each
//! run prints onto the debug port 0xE9, which the emulator copies to its stdout and nothing
//! else inside writes to (the console is COM1).
//!
//! Supervision: the emulator's stdout is read line by line as it comes; the console is a file
//! it appends to, read as it grows. A kernel panic on the console, a boot that does not report
//! in time, a run that outlives its budget, Ctrl-C or the emulator ending before the plan is
//! done stop the machine (its whole process group) and come back as [`HostError::Stopped`]
//! with what the finished runs said, marked partial, and the machine's files kept for a look.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use l0::emulated::PlannedRun;
use l0::emulated::frame::{self, AgentFailure, Kind, RunExit};

use super::machine::{self, Carried};
use super::{EmulatedOptions, HostError, Invocation, Session, kernel};
use crate::l0_child::{ChildRun, Incoming, Interruption};

/// Payloads that wedge a Bochs-hosted emulated host on the kvm engine (QEMU-hosted KVM runs
/// them), with what was seen: `preempt_timer`'s L2 runs a compute loop that only a timer ends
/// (the VMX-preemption timer KVM emulates with a host hrtimer), and on Bochs-hosted KVM 6.1
/// (Skylake-X) that loop is never interrupted: the whole emulated machine stops, its output
/// stops mid-line and the agent's own deadline never fires. The soft engine's probe measures
/// the same thing with a bounded loop (a kick is not delivered, docs/kvm-exits.md row K) and
/// refuses the timer there instead of wedging. `nestbench payloads` says so, and the tests do
/// not run them there on the kvm engine.
pub const BOCHS_HOST_WEDGES: [(&str, &str); 1] = [(
    "preempt_timer",
    "its L2 loop only ends on a timer, and on Bochs-hosted KVM nothing interrupts a guest that does not exit: the \
     whole emulated host stops (seen with the kvm engine on Skylake-X; its output stops, the agent's deadline never \
     fires; QEMU-hosted KVM runs it). The soft engine measures it (docs/kvm-exits.md row K: a kick is not \
     delivered) and refuses the VMX-preemption timer there instead",
)];

/// The default wall-clock budget of a boot, until the host has reported (measured: ~15 s).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// How an emulated host's boot and session went.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BootFigures {
    /// `bochs:<model>`.
    pub host: String,
    /// The kernel release inside.
    pub kernel_release: String,
    /// Its version string.
    pub kernel_version: String,
    /// Where it came from (`6.1`, or a path).
    pub kernel_spec: String,
    /// The vendor KVM module (`kvm_intel`, `kvm_amd`).
    pub kvm_module: String,
    /// Its parameters as given.
    pub kvm_module_params: String,
    /// The kernel command line.
    pub cmdline: String,
    /// QEMU's `-icount shift`, when the virtual clock counted instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icount: Option<u8>,
    /// CRC-32 of what the machine boots (kernel, initramfs with l0, the images and the plan,
    /// command line, CPU model): two sessions with the same value execute the same
    /// instructions. Another l0 build or another set of runs shifts where the emulated host's
    /// timer interrupts land, which moves the mean round trip by a few instructions (not the
    /// cheapest one, nor any exit count).
    #[serde(default)]
    pub boot_medium: String,
    /// Wall seconds to build the boot medium.
    pub stage_s: f64,
    /// Wall seconds from Bochs' start to the host's report (modules loaded, /dev/kvm up).
    pub boot_to_ready_s: Option<f64>,
    /// Wall seconds of the whole session.
    pub session_s: f64,
    /// Emulated seconds from the kernel's start to the agent's (the kernel's uptime then).
    #[serde(default)]
    pub emulated_boot_to_agent_s: Option<f64>,
    /// Each KVM module's load time inside, in emulated milliseconds.
    #[serde(default)]
    pub module_load_ms: Vec<(String, u64)>,
    /// Per module, the ftrace call sites written as the NOPs the kernel would write at load
    /// (`hosts::ftrace_nop`: same module text, no ftrace function tracing of it).
    #[serde(default)]
    pub module_ftrace_sites_nopped: Vec<(String, usize)>,
    /// Frames lost on the line (gaps in their sequence).
    pub frames_lost: u64,
    /// Frames that arrived garbled.
    pub frames_garbled: u64,
    /// Lines on the line that were not frames.
    pub noise_lines: u64,
    /// The emulator's exit status.
    pub emulator_exit: Option<i32>,
    /// The machine's directory, when kept.
    pub dir: Option<String>,
}

/// A file Bochs appends to, read as it grows, line by line.
struct Tail {
    file: Option<std::fs::File>,
    path: PathBuf,
    pending: Vec<u8>,
    /// The last lines (for messages).
    last: std::collections::VecDeque<String>,
}

impl Tail {
    fn new(path: PathBuf) -> Self {
        Self { file: None, path, pending: Vec::new(), last: std::collections::VecDeque::new() }
    }

    /// New complete lines since the last call.
    fn lines(&mut self) -> Vec<String> {
        if self.file.is_none() {
            self.file = std::fs::File::open(&self.path).ok();
        }
        let Some(f) = self.file.as_mut() else { return Vec::new() };
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        self.pending.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(at) = self.pending.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = self.pending.drain(..=at).collect();
            let s = String::from_utf8_lossy(&l).trim_end_matches(['\n', '\r']).to_owned();
            self.last.push_back(s.clone());
            if self.last.len() > 40 {
                self.last.pop_front();
            }
            out.push(s);
        }
        out
    }

    fn tail(&self) -> String {
        let mut v: Vec<&str> = self.last.iter().map(String::as_str).collect();
        let rest = String::from_utf8_lossy(&self.pending);
        if !rest.trim().is_empty() {
            v.push(&rest);
        }
        v.join("\n")
    }
}

/// SIGKILL the emulator's process group (it was started with `process_group(0)`).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        l0::bochs::run::signal_group(pid, libc::SIGKILL);
    }
}

/// What emulates the host machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulator {
    /// Bochs with this Intel CPU model (VMX): upstream `kvm_intel nested=1`.
    Bochs(&'static str),
    /// QEMU TCG `-cpu max` (AMD SVM with NPT): upstream `kvm_amd nested=1 npt=1`.
    Qemu,
}

impl Emulator {
    /// The `--host` name.
    #[must_use]
    pub fn name(self) -> String {
        match self {
            Self::Bochs(model) => format!("bochs:{model}"),
            Self::Qemu => "qemu".into(),
        }
    }

    /// The vendor KVM module and the parameters it always gets.
    #[must_use]
    pub const fn vendor_module(self) -> (&'static str, &'static str) {
        match self {
            Self::Bochs(_) => ("kvm_intel", "nested=1"),
            Self::Qemu => ("kvm_amd", "nested=1 npt=1"),
        }
    }

    /// The vendor module's parameters for a boot: its fixed ones, then `--kvm-param`s.
    #[must_use]
    pub fn module_params(self, opts: &EmulatedOptions) -> String {
        std::iter::once(self.vendor_module().1.to_owned())
            .chain(opts.kvm_params.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Check that an emulated host can boot here with `opts`' kernel: the emulator (Bochs and
/// its BIOS files, or QEMU), what the boot medium is built from, and a kernel with the
/// vendor KVM module. Returns the emulator's binary and the kernel.
pub fn preflight(emulator: Emulator, opts: &EmulatedOptions) -> Result<(PathBuf, kernel::Kernel), HostError> {
    let mut needed: Vec<(&'static str, &str)> = vec![("busybox (Debian package busybox-static)", "/bin/busybox")];
    let binary = match emulator {
        Emulator::Bochs(_) => {
            needed.extend([
                ("the Bochs BIOS (Debian package bochsbios)", "/usr/share/bochs/BIOS-bochs-latest"),
                ("the VGA BIOS (Debian package vgabios)", "/usr/share/vgabios/vgabios.bin"),
                ("isolinux (Debian package isolinux)", machine::ISOLINUX_BIN),
                ("ldlinux.c32 (Debian package syslinux-common)", machine::LDLINUX_C32),
            ]);
            if l0::host::which("xorriso").is_none() {
                return Err(HostError::Missing { what: "xorriso (Debian package xorriso)", path: "xorriso".into() });
            }
            l0::host::which("bochs")
                .ok_or(HostError::Missing { what: "Bochs (Debian package bochs)", path: "bochs".into() })?
        }
        Emulator::Qemu => l0::host::which("qemu-system-x86_64").ok_or(HostError::Missing {
            what: "QEMU (Debian package qemu-system-x86)",
            path: "qemu-system-x86_64".into(),
        })?,
    };
    for (what, p) in needed {
        if !Path::new(p).is_file() {
            return Err(HostError::Missing { what, path: p.into() });
        }
    }
    let kernel =
        kernel::resolve(opts.kernel.as_deref().unwrap_or(kernel::DEFAULT_KERNEL), opts.kernel_modules.as_deref())?;
    let (module, _) = emulator.vendor_module();
    if kernel.modules.vendor(module).is_none() {
        return Err(HostError::Kernel(kernel::KernelError::NoKvmModule {
            release: kernel.release.clone(),
            dir: kernel.modules.kvm.clone(),
            module,
        }));
    }
    Ok((binary, kernel))
}

/// Run `invocations` in one boot of `emulator`.
pub async fn run_all(
    emulator: Emulator,
    opts: &EmulatedOptions,
    l0: &Path,
    invocations: &[Invocation],
    mut on: impl FnMut(usize, Incoming<'_>),
) -> Result<Session, HostError> {
    let host = emulator.name();
    let (binary, kernel) = preflight(emulator, opts)?;
    let netns = l0::bochs::run::netns_options().map_err(|e| HostError::Tool { tool: "unshare", why: e.to_string() })?;
    let (module, _) = emulator.vendor_module();
    let params = emulator.module_params(opts);
    let started = Instant::now();
    let dir =
        l0::bochs::config::RunDir::create(true).map_err(|e| HostError::Tool { tool: "mkdir", why: e.to_string() })?;
    let work = dir.path().to_owned();
    let mut carried = Vec::new();
    let mut plan = Vec::new();
    for (i, inv) in invocations.iter().enumerate() {
        let mut args = inv.args.clone();
        for (n, (here, inside)) in inv.files.iter().enumerate() {
            let guest = format!(
                "/nestbench/files/{i}-{n}-{}",
                here.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()
            );
            let bytes = std::fs::read(here).map_err(|source| HostError::Io { path: here.clone(), source })?;
            carried.push(Carried { guest: guest.clone(), bytes, mode: 0o644 });
            args.iter_mut().filter(|a| a.as_str() == inside).for_each(|a| a.clone_from(&guest));
        }
        // The guest's own budget plus margin, in emulated time; the agent enforces it.
        let deadline_ms = u64::try_from(inv.deadline.as_millis()).unwrap_or(u64::MAX).saturating_add(10_000);
        plan.push(PlannedRun { args, deadline_ms });
    }
    let staged = machine::initramfs(&kernel, module, &params, l0, plan, &carried, &work)?;
    let cmdline = machine::cmdline(emulator, &opts.cmdline, opts.icount.is_some());
    let medium = {
        let mut h = crc32fast::Hasher::new();
        h.update(
            &std::fs::read(&kernel.bzimage).map_err(|source| HostError::Io { path: kernel.bzimage.clone(), source })?,
        );
        h.update(&staged.cpio);
        h.update(cmdline.as_bytes());
        h.update(host.as_bytes());
        if let Some(shift) = opts.icount {
            h.update(format!("-icount shift={shift}").as_bytes());
        }
        format!("{:08x}", h.finalize())
    };
    let console_path = work.join("console.log");
    std::fs::write(&console_path, b"").map_err(|source| HostError::Io { path: console_path.clone(), source })?;
    let mut command = tokio::process::Command::new("unshare");
    command.args(netns).arg(&binary);
    match emulator {
        Emulator::Bochs(model) => {
            let iso = machine::iso(&kernel, &staged.cpio, &cmdline, &work)?;
            let rc = work.join("bochsrc");
            std::fs::write(&rc, machine::bochsrc(model, &iso, &console_path, &work.join("bochs.log")))
                .map_err(|source| HostError::Io { path: rc.clone(), source })?;
            let script = work.join("debugger.rc");
            std::fs::write(&script, "c\nquit\n").map_err(|source| HostError::Io { path: script.clone(), source })?;
            command.args(["-q", "-f"]).arg(&rc).arg("-rc").arg(&script);
        }
        Emulator::Qemu => {
            let initrd = work.join("initrd");
            std::fs::write(&initrd, &staged.cpio).map_err(|source| HostError::Io { path: initrd.clone(), source })?;
            command.args(machine::qemu_args(&kernel.bzimage, &initrd, &cmdline, &console_path, opts.icount));
        }
    }

    let mut figures = BootFigures {
        host: host.clone(),
        kernel_release: kernel.release.clone(),
        kernel_version: kernel.version.clone(),
        kernel_spec: kernel.spec.clone(),
        kvm_module: module.to_owned(),
        kvm_module_params: params.clone(),
        cmdline,
        stage_s: started.elapsed().as_secs_f64(),
        module_ftrace_sites_nopped: staged.ftrace_sites_nopped,
        boot_medium: medium,
        icount: opts.icount,
        ..BootFigures::default()
    };
    let boot_start = Instant::now();
    let mut child = command
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HostError::Tool { tool: "emulator", why: format!("starting {}: {e}", binary.display()) })?;
    let pid = child.id();
    // The frames arrive on Bochs' stdout (the debug port), with Bochs' own banner and
    // debugger lines among them; a copy goes to `stream` in the machine's directory.
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    let copy_path = work.join("stream");
    let stdout_task = tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut copy = std::fs::File::create(copy_path).ok();
        let mut lines = tokio::io::BufReader::new(stdout).split(b'\n');
        while let Ok(Some(l)) = lines.next_segment().await {
            if let Some(f) = copy.as_mut() {
                let _ = std::io::Write::write_all(f, &l).and_then(|()| std::io::Write::write_all(f, b"\n"));
            }
            if line_tx.send(String::from_utf8_lossy(&l).into_owned()).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_task = tokio::spawn(async move {
        let mut s = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut s).await;
        String::from_utf8_lossy(&s).into_owned()
    });

    let mut session = Session { runs: vec![ChildRun::default(); invocations.len()], ..Session::default() };
    let mut reader = frame::Reader::default();
    let mut console = Tail::new(console_path);
    let mut stream_open = true;
    let boot_timeout = opts.boot_timeout.unwrap_or(BOOT_TIMEOUT);
    let mut current: Option<(usize, Instant)> = None;
    let mut done = false;
    let mut failure: Option<AgentFailure> = None;
    let mut stop: Option<String> = None;
    let ctrl_c = crate::interrupt::wait();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let exit_status = loop {
        let mut arrived = Vec::new();
        let exited = tokio::select! {
            // Bochs' exit counts once its stdout is read to the end (no frame left behind).
            s = child.wait(), if !stream_open => Some(s.ok()),
            l = line_rx.recv(), if stream_open => {
                match l {
                    Some(l) => arrived.push(l),
                    None => stream_open = false,
                }
                None
            }
            () = &mut ctrl_c, if stop.is_none() => {
                stop = Some(format!("was stopped by {}", crate::interrupt::describe()));
                if let Some((i, _)) = current { session.runs[i].interrupted = Some(Interruption::Interrupted); }
                None
            }
            _ = tick.tick() => None,
        };
        while let Ok(l) = line_rx.try_recv() {
            arrived.push(l);
        }
        for l in arrived {
            let Some(f) = reader.line(&l) else { continue };
            let idx = (f.run as usize).checked_sub(1).filter(|&i| i < session.runs.len());
            match (f.kind, idx) {
                (Kind::Host, _) => {
                    figures.boot_to_ready_s = Some(boot_start.elapsed().as_secs_f64());
                    if let Ok(r) = serde_json::from_str::<l0::emulated::HostReport>(&f.payload) {
                        figures.emulated_boot_to_agent_s = Some(r.uptime_at_agent_s);
                        figures.module_load_ms = r.module_load_ms;
                        session.host = Some(r.facts);
                    }
                }
                (Kind::Fail, _) => {
                    failure = serde_json::from_str(&f.payload)
                        .ok()
                        .or(Some(AgentFailure { message: f.payload.clone(), dmesg: String::new() }))
                }
                (Kind::Bye, _) => done = true,
                (Kind::Start, Some(i)) => current = Some((i, Instant::now())),
                (Kind::Out, Some(i)) => session.runs[i].take_line(&f.payload, &mut |e| on(i, e)),
                (Kind::Err, Some(i)) => {
                    session.runs[i].stderr.push_str(&f.payload);
                    session.runs[i].stderr.push('\n');
                }
                (Kind::Exit, Some(i)) => {
                    let x: RunExit = serde_json::from_str(&f.payload).unwrap_or_default();
                    session.runs[i].exit_code = x.code;
                    if x.timed_out {
                        session.runs[i].interrupted = Some(Interruption::Timeout);
                    }
                    current = None;
                }
                (_, None) => {}
            }
        }
        for l in console.lines() {
            if l.contains("Kernel panic") && stop.is_none() {
                stop = Some(format!("panicked: {}", l.trim()));
            }
        }
        if stop.is_none() {
            if figures.boot_to_ready_s.is_none() && failure.is_none() && boot_start.elapsed() > boot_timeout {
                stop = Some(format!("did not report within {} s of starting (hung in boot?)", boot_timeout.as_secs()));
            } else if let Some((i, since)) = current {
                // Emulated time runs at ~2/3 of wall time on a 2-core host: allow 4x + a minute.
                let budget = invocations[i].deadline * 4 + Duration::from_secs(60);
                if since.elapsed() > budget {
                    stop = Some(format!("hung: run {} did not end within {} s of wall time", i + 1, budget.as_secs()));
                    session.runs[i].interrupted = Some(Interruption::Timeout);
                }
            }
        }
        if let Some(s) = exited {
            break s;
        }
        if stop.is_some() {
            kill_group(pid);
            break child.wait().await.ok();
        }
    };
    stdout_task.abort();
    kill_group(pid);
    let bochs_stderr =
        tokio::time::timeout(Duration::from_secs(2), stderr_task).await.ok().and_then(Result::ok).unwrap_or_default();
    figures.session_s = started.elapsed().as_secs_f64();
    figures.emulator_exit = exit_status.and_then(|s| s.code());
    figures.frames_lost = reader.lost;
    figures.frames_garbled = reader.garbled_count;
    figures.noise_lines = reader.noise;
    if !reader.clean() {
        for r in &mut session.runs {
            r.malformed.push(format!(
                "the serial line lost {} and garbled {} frames in this session: {}",
                reader.lost,
                reader.garbled_count,
                reader.garbled.join("; ")
            ));
        }
    }
    if let Some(f) = failure {
        return Err(HostError::Agent { message: f.message, dmesg: f.dmesg });
    }
    let ok = done && stop.is_none();
    // The directory is kept (RunDir::create(true)) unless the session went well and the
    // user did not ask for it.
    if ok && !opts.keep_dir {
        let _ = std::fs::remove_dir_all(dir.path());
    } else {
        figures.dir = Some(work.display().to_string());
    }
    session.boot = Some(figures);
    if ok {
        return Ok(session);
    }
    for r in &mut session.runs {
        if r.exit_code.is_none() && r.interrupted.is_none() {
            r.interrupted = Some(Interruption::Interrupted);
        }
    }
    let why = stop.unwrap_or_else(|| {
        let msgs = l0::bochs::run::stderr_messages(&bochs_stderr);
        format!(
            "ended (emulator exit status {:?}) before it finished the plan{}",
            exit_status.and_then(|s| s.code()),
            if msgs.is_empty() { String::new() } else { format!(": {}", msgs.join("; ")) }
        )
    });
    Err(HostError::Stopped { host, why, console: console.tail(), dir: Some(work), partial: Box::new(session) })
}
