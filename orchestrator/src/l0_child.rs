//! Supervising one `nestbench-l0` child: spawn it, read its event stream line by line as it
//! comes, stop it on timeout or Ctrl-C, and keep whatever it said.
//!
//! The child boundary is deliberate (docs/architecture.md): a crashing VM cannot take the
//! orchestrator down, and KVM_RUN never runs on a tokio worker thread.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nestbench_protocol::events::{End, Event, Hello, PayloadRun, Probe, RunReport};
use nestbench_protocol::single_level::SingleLevelRun;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Errors of supervising the child.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The `nestbench-l0` binary was not found.
    #[error("cannot find nestbench-l0 (looked at {0}); build it with `cargo build -p l0` or pass --l0 PATH")]
    NotFound(PathBuf),
    /// Spawning failed.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading its output failed.
    #[error("reading nestbench-l0's output: {0}")]
    Read(std::io::Error),
}

/// Why a child's stream ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interruption {
    /// The orchestrator's own deadline passed and the child was killed.
    Timeout,
    /// Ctrl-C: the child was killed.
    Interrupted,
}

/// Everything a child said.
#[derive(Clone, Debug, Default)]
pub struct ChildRun {
    /// Each stream line that parsed as a protocol event, in order.
    pub events: Vec<Event>,
    /// Lines that did not parse as an event, with the reason (kept, never dropped silently).
    pub malformed: Vec<String>,
    /// Its exit code (`None` if killed by a signal).
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Set when the orchestrator stopped it.
    pub interrupted: Option<Interruption>,
    /// What it wrote on stderr.
    pub stderr: String,
    /// `trace` batch lines received (handed to the caller, not kept in `events`).
    pub trace_batches: u64,
}

/// What the child said, as it arrives.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A control event (kept in [`ChildRun::events`] too).
    Event(&'a Event),
    /// A decoded `trace` batch (docs/event-stream.md "Traces"); not kept.
    Trace(crate::trace::Batch),
}

impl ChildRun {
    /// Take one line of the event stream: a trace batch is decoded and handed over (not
    /// kept), an event is handed over and kept, anything else is kept in `malformed` with
    /// the reason. The same for a local child and for a run inside an emulated host.
    pub fn take_line(&mut self, l: &str, on_event: &mut impl FnMut(Incoming<'_>)) {
        if l.starts_with(crate::trace::LINE_PREFIX) {
            match crate::trace::decode_line(l) {
                Ok(b) => {
                    self.trace_batches += 1;
                    on_event(Incoming::Trace(b));
                }
                Err(e) => self.malformed.push(format!("{e}: {}", l.chars().take(200).collect::<String>())),
            }
            return;
        }
        match serde_json::from_str::<Event>(l) {
            Ok(v) => {
                on_event(Incoming::Event(&v));
                self.events.push(v);
            }
            // A line that is JSON but not an event of this protocol version (a newer l0, a
            // renamed field) says why, instead of turning into nulls further on.
            Err(e) if serde_json::from_str::<serde_json::Value>(l).is_ok() => {
                self.malformed.push(format!("{e}: {}", l.chars().take(200).collect::<String>()));
            }
            Err(_) => self.malformed.push(l.to_owned()),
        }
    }

    /// The `hello` line.
    #[must_use]
    pub fn hello(&self) -> Option<&Hello> {
        self.events.iter().find_map(|e| if let Event::Hello(h) = e { Some(h) } else { None })
    }

    /// The `end` line.
    #[must_use]
    pub fn end(&self) -> Option<&End> {
        self.events.iter().find_map(|e| if let Event::End(x) = e { Some(x) } else { None })
    }

    /// The run report (`end` of a run with L1).
    #[must_use]
    pub fn report(&self) -> Option<&RunReport> {
        self.end().and_then(|e| e.report.as_deref())
    }

    /// A single-level run's result (`end` of a single-level run).
    #[must_use]
    pub fn single_level(&self) -> Option<&SingleLevelRun> {
        self.end().and_then(|e| e.single_level.as_ref())
    }

    /// L1's report on the payload.
    #[must_use]
    pub fn payload_run(&self) -> Option<&PayloadRun> {
        self.events.iter().find_map(|e| if let Event::PayloadRun(p) = e { Some(&**p) } else { None })
    }

    /// L1's CPU probe.
    #[must_use]
    pub fn probe(&self) -> Option<&Probe> {
        self.events.iter().find_map(|e| if let Event::Probe(p) = e { Some(p) } else { None })
    }

    /// The `error` line's message: l0 could not run.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        self.events.iter().find_map(|e| if let Event::Error { message } = e { Some(message.as_str()) } else { None })
    }

    /// L1's console lines.
    pub fn console(&self) -> impl Iterator<Item = &str> {
        self.events.iter().filter_map(|e| if let Event::Console { text } = e { Some(text.as_str()) } else { None })
    }

    /// Whether the stream is complete: it has an `end` or `error` event and nobody stopped it.
    #[must_use]
    pub fn complete(&self) -> bool {
        self.interrupted.is_none() && (self.end().is_some() || self.error().is_some())
    }

    /// Why the stream is not complete, for a person: how the child ended (stopped by
    /// nestbench, its exit status, the signal that killed it), the last event it sent, and the
    /// end of its stderr. `None` when it is complete.
    #[must_use]
    pub fn why_incomplete(&self) -> Option<String> {
        if self.complete() {
            return None;
        }
        let how = match (self.interrupted, self.exit_code, self.signal) {
            (Some(Interruption::Timeout), ..) => "outlived its deadline and was killed".to_owned(),
            (Some(Interruption::Interrupted), ..) => "was stopped (Ctrl-C)".to_owned(),
            (None, Some(c), _) => format!("exited with status {c}"),
            (None, None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
            (None, None, None) => "ended (status unknown)".to_owned(),
        };
        let last = self
            .events
            .last()
            .map_or_else(|| "it sent no event".to_owned(), |e| format!("its last event was `{}`", event_name(e)));
        let tail: Vec<&str> = self.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let stderr = match tail.len() {
            0 => "nothing on stderr".to_owned(),
            n => format!("its stderr ends: {}", tail[n.saturating_sub(5)..].join(" | ")),
        };
        let malformed = match self.malformed.first() {
            None => String::new(),
            Some(m) => format!("; {} line(s) were not events of this protocol, the first: {m}", self.malformed.len()),
        };
        Some(format!("nestbench-l0 {how} before its final event; {last}; {stderr}{malformed}"))
    }
}

/// An event's name on the stream (its `event` field).
#[must_use]
pub fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Console { .. } => "console",
        Event::Probe(_) => "probe",
        Event::Verdict { .. } => "verdict",
        Event::PayloadRun(_) => "payload_run",
        Event::CaseCapabilities { .. } => "case_capabilities",
        Event::Note { .. } => "note",
        Event::HypercallError { .. } => "hypercall_error",
        Event::TraceStart { .. } => "trace_start",
        Event::Trace(_) => "trace",
        Event::TraceError { .. } => "trace_error",
        Event::Hello(_) => "hello",
        Event::End(_) => "end",
        Event::Error { .. } => "error",
    }
}

/// A signal's name, for the common ones.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL: killed from outside, e.g. by the OOM killer",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT: an abort, e.g. a Rust panic in a no-unwind context",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        _ => "another signal",
    }
}

/// Where `nestbench-l0` is: `explicit`, else `$NESTBENCH_L0`, else next to this executable.
pub fn locate_l0(explicit: Option<&Path>) -> Result<PathBuf, ChildError> {
    let candidate = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("NESTBENCH_L0").map(PathBuf::from))
        .unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("nestbench-l0")))
                .unwrap_or_else(|| PathBuf::from("nestbench-l0"))
        });
    if candidate.is_file() { Ok(candidate) } else { Err(ChildError::NotFound(candidate)) }
}

/// Run `l0 args...`, calling `on_event` for each event and trace batch as it arrives. The
/// child is killed if it outlives `deadline` or on Ctrl-C; what it said until then is kept.
/// Trace lines are decoded here and handed over, not kept; one that does not decode is
/// kept in `malformed` with the reason.
pub async fn run_l0(
    l0: &Path,
    args: &[String],
    deadline: Duration,
    mut on_event: impl FnMut(Incoming<'_>),
) -> Result<ChildRun, ChildError> {
    let spawn = || {
        Command::new(l0)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
    };
    // ETXTBSY: the binary was just written (a fresh build, a test's fake l0) and another
    // thread's fork still holds a write descriptor to it until its exec closes it. It
    // clears within milliseconds; anything else, or a binary busy for 200 ms, is the error.
    let mut tries = 0;
    let mut child = loop {
        match spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 40 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            r => break r.map_err(|source| ChildError::Spawn { path: l0.to_owned(), source })?,
        }
    };
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
        s
    });
    let mut run = ChildRun::default();
    let sleep = tokio::time::sleep(deadline);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            line = lines.next_line() => match line.map_err(ChildError::Read)? {
                Some(l) => run.take_line(&l, &mut on_event),
                None => break,
            },
            () = &mut sleep => {
                run.interrupted = Some(Interruption::Timeout);
                break;
            }
            () = crate::interrupt::wait() => {
                run.interrupted = Some(Interruption::Interrupted);
                break;
            }
        }
    }
    if run.interrupted.is_some() {
        let _ = child.start_kill();
    }
    // Bounded wait: the child has closed stdout or been killed.
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    run.exit_code = match status {
        Ok(Ok(s)) => {
            run.signal = std::os::unix::process::ExitStatusExt::signal(&s);
            s.code()
        }
        _ => {
            let _ = child.start_kill();
            None
        }
    };
    run.stderr =
        tokio::time::timeout(Duration::from_secs(1), stderr_task).await.ok().and_then(Result::ok).unwrap_or_default();
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_past_its_deadline_is_killed_and_what_it_said_is_kept() {
        let script = r#"echo '{"event":"hello","stream_version":1,"abi_version":2,"l0_version":"0.1.0","timeout_ms":5}'; echo 'not json'; exec sleep 30"#;
        let args = ["-c".to_owned(), script.to_owned()];
        let start = std::time::Instant::now();
        let run = run_l0(Path::new("/bin/sh"), &args, Duration::from_millis(500), |_| {}).await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(10), "bounded shutdown");
        assert_eq!(run.interrupted, Some(Interruption::Timeout));
        assert!(!run.complete(), "partial");
        assert_eq!(run.events.len(), 1);
        assert_eq!(run.hello().unwrap().stream_version, 1);
        assert_eq!(run.malformed, ["not json"]);
        assert_eq!(run.exit_code, None, "killed by a signal");
    }

    #[tokio::test]
    async fn a_child_that_dies_without_a_final_event_is_incomplete() {
        let hello = r#"{"event":"hello","stream_version":1,"abi_version":2,"l0_version":"0.1.0","timeout_ms":5}"#;
        let args = ["-c".to_owned(), format!("echo '{hello}'; echo boom >&2; exit 3")];
        let run = run_l0(Path::new("/bin/sh"), &args, Duration::from_secs(10), |_| {}).await.unwrap();
        assert_eq!(run.interrupted, None);
        assert!(!run.complete());
        assert_eq!(run.exit_code, Some(3));
        assert_eq!(run.stderr.trim(), "boom");
        let why = run.why_incomplete().unwrap();
        assert_eq!(
            why,
            "nestbench-l0 exited with status 3 before its final event; its last event was `hello`; its stderr ends: boom"
        );
        assert!(crate::boot::render(&run).contains(&why), "{}", crate::boot::render(&run));
    }

    #[tokio::test]
    async fn a_killed_child_is_named_with_its_signal() {
        let args = ["-c".to_owned(), "kill -9 $$".to_owned()];
        let run = run_l0(Path::new("/bin/sh"), &args, Duration::from_secs(10), |_| {}).await.unwrap();
        assert_eq!(run.signal, Some(libc::SIGKILL));
        let why = run.why_incomplete().unwrap();
        assert!(why.starts_with("nestbench-l0 was killed by signal 9 (SIGKILL"), "{why}");
        assert!(why.contains("it sent no event; nothing on stderr"), "{why}");
    }
}
