//! A watchdog that kicks a vCPU out of KVM_RUN when it exceeds its time budget.
//!
//! A guest that never exits (a tight loop, or a VMCALL, which hangs the vCPU inside KVM_RUN
//! on the development hosts' KVM) would otherwise hold its thread forever. Once the budget is
//! spent the watchdog marks itself fired and kicks, and keeps kicking every
//! [`REKICK`] until disarmed, so a vCPU that was between two KVM_RUNs is caught as well.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::vcpu::Kicker;

/// How often a fired watchdog repeats its kick.
pub const REKICK: Duration = Duration::from_millis(10);

/// An armed watchdog; dropping it disarms it.
#[derive(Debug)]
pub struct Watchdog {
    fired: Arc<AtomicBool>,
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Kick `kicker`'s thread once `budget` has passed.
    #[must_use]
    pub fn arm(kicker: Kicker, budget: Duration) -> Self {
        let fired = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<()>();
        let f = fired.clone();
        let thread = std::thread::Builder::new()
            .name("l0-watchdog".into())
            .spawn(move || {
                if rx.recv_timeout(budget) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
                f.store(true, Ordering::SeqCst);
                loop {
                    kicker.kick();
                    if rx.recv_timeout(REKICK) != Err(mpsc::RecvTimeoutError::Timeout) {
                        return;
                    }
                }
            })
            .expect("spawning the watchdog thread");
        Self { fired, disarm: Some(tx), thread: Some(thread) }
    }

    /// Whether the budget ran out.
    #[must_use]
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
