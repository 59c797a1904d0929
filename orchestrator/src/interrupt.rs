//! One interrupt listener for the whole process, nextest's dispatcher shape: SIGINT and
//! SIGTERM are caught once, at start, into a flag that every supervision loop watches (an
//! l0 child, an emulated host, the bench's round-robin). A loop that registered its own
//! listener each pass lost a signal that arrived between two passes; this flag keeps it.
//! After an interrupt the command keeps what it had (a partial result, said so) and exits
//! with 128 + the signal's number: 130 after Ctrl-C, 143 after SIGTERM. A second signal
//! while the first is being handled ends the process at once.

use std::sync::Once;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// The first signal caught (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// How often [`wait`] looks at the flag.
const POLL: Duration = Duration::from_millis(20);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: an atomic exchange, and _exit on a second signal.
    if CAUGHT.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        // SAFETY: _exit is async-signal-safe; the user asked twice, so nothing more is kept.
        unsafe { libc::_exit(128 + sig) };
    }
}

/// Catch SIGINT and SIGTERM for the rest of the process (idempotent). Until it is called, a
/// signal has its default effect.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler
            // is an `extern "C" fn(c_int)` that does only async-signal-safe work; `sigaction`
            // reads the struct and writes nothing back (old action: null).
            let rc = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&raw mut action.sa_mask);
                libc::sigaction(sig, &raw const action, std::ptr::null_mut())
            };
            if rc != 0 {
                tracing::warn!("cannot catch signal {sig}: {}", std::io::Error::last_os_error());
            }
        }
    });
}

/// The signal caught, if any.
#[must_use]
pub fn caught() -> Option<i32> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The exit status after an interrupt: 128 + the signal's number.
#[must_use]
pub fn exit_status() -> Option<i32> {
    caught().map(|s| 128 + s)
}

/// Completes once a signal has been caught (at once if one was).
pub async fn wait() {
    while caught().is_none() {
        tokio::time::sleep(POLL).await;
    }
}

/// Words for a report: "Ctrl-C" or the signal's name.
#[must_use]
pub fn describe() -> &'static str {
    match caught() {
        Some(libc::SIGTERM) => "SIGTERM",
        _ => "Ctrl-C",
    }
}
