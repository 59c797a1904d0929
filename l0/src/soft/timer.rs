//! The VMX-preemption timer of the soft engine (docs/soft-engine.md "VMX-preemption timer").
//!
//! SDM 26.5.1 "VMX-Preemption Timer": "If the last VM entry was performed with the 1-setting
//! of 'activate VMX-preemption timer' VM-execution control, the VMX-preemption timer counts
//! down (from the value loaded by VM entry; see Section 27.7.4) in VMX non-root operation.
//! When the timer counts down to zero, it stops counting down and a VM exit occurs." "The
//! VMX-preemption timer counts down at rate proportional to that of the timestamp counter
//! (TSC). Specifically, the timer counts down by 1 every time bit X in the TSC changes due
//! to a TSC increment. The value of X is in the range 0-31 and can be determined by
//! consulting the VMX capability MSR IA32_VMX_MISC." And: "If the timer is activated with a
//! value of zero, a VM exit occurs before any instruction is executed in VMX non-root
//! operation" (also 27.7.4). SDM 25.6.1 (Table 25-5) defines the pin-based control, 25.7.1
//! (Table 25-13) "save VMX-preemption timer value".
//!
//! L0 has no hardware timer inside VM2, so it keeps the countdown itself, in TSC ticks of L2
//! time only: at VM entry the budget is `value << rate` ticks ([`super::caps::PREEMPTION_TIMER_RATE`]);
//! before every KVM_RUN of VM2 a host timer thread is armed for what is left (converted to
//! wall time with the TSC frequency of VM2's vCPU, KVM_GET_TSC_KHZ), after it the time spent
//! inside KVM_RUN is subtracted. Time in L0 and L1 never counts. When the thread's deadline
//! passes it kicks the vCPU thread ([`crate::vcpu::Kicker`]): KVM_RUN returns EINTR with
//! nothing pending (docs/kvm-exits.md row K), and the engine reflects basic reason 52 with
//! the RIP where L2 stopped. How far past the deadline the kick landed (the overshoot, in TSC
//! ticks) is measured and reported in [`TimerStats`], never asserted against wall time.
//!
//! Which kick is which: the watchdog keeps its own `fired` flag (a timeout), the timer thread
//! stores the arm's generation in [`Shared::fired`]; a kick that matches neither (a late
//! timer kick of an arm already over) is a spurious L0-only return.

pub use nestbench_protocol::soft::TimerStats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::vcpu::Kicker;

/// What the timer thread and the vCPU thread share.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<Armed>,
    wake: Condvar,
    /// The generation of the last arm whose deadline passed (its kick was sent).
    fired: AtomicU64,
}

#[derive(Debug, Default)]
struct Armed {
    /// Deadline, generation and the thread to kick.
    deadline: Option<(Instant, u64, Kicker)>,
    quit: bool,
}

/// The timer thread's loop: wait for a deadline, kick when it passes.
fn timer_thread(shared: &Shared) {
    // A 1 ns timer slack instead of the default 50 us: the overshoot is what we measure.
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_u64, 0_u64, 0_u64, 0_u64) };
    let mut g = shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        if g.quit {
            return;
        }
        match g.deadline {
            None => g = shared.wake.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner),
            Some((d, generation, kicker)) => {
                let now = Instant::now();
                if now >= d {
                    g.deadline = None;
                    shared.fired.store(generation, Ordering::SeqCst);
                    kicker.kick();
                } else {
                    g = shared.wake.wait_timeout(g, d - now).unwrap_or_else(std::sync::PoisonError::into_inner).0;
                }
            }
        }
    }
}

/// The preemption timer of VM2's vCPU.
#[derive(Debug)]
pub struct PreemptionTimer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    rate: u32,
    tsc_khz: u64,
    /// Generation of the current arm (one per VM entry with the timer active).
    generation: u64,
    /// This entry's budget and the L2 time spent against it, TSC ticks; `None` when
    /// inactive.
    budget: Option<(u64, u64)>,
    /// When the current KVM_RUN started.
    run_started: Option<Instant>,
    /// Counters.
    pub stats: TimerStats,
}

impl PreemptionTimer {
    /// A timer counting at TSC >> `rate`; its thread starts on the first arm.
    #[must_use]
    pub fn new(rate: u32) -> Self {
        Self {
            shared: Arc::default(),
            thread: None,
            rate,
            tsc_khz: 0,
            generation: 0,
            budget: None,
            run_started: None,
            stats: TimerStats::at_rate(rate),
        }
    }

    /// Set the TSC frequency (VM2's KVM_GET_TSC_KHZ).
    pub fn set_tsc_khz(&mut self, khz: u64) {
        self.tsc_khz = khz;
        self.stats.tsc_khz = khz;
    }

    /// Whether the TSC frequency is known.
    #[must_use]
    pub fn has_tsc_khz(&self) -> bool {
        self.tsc_khz != 0
    }

    /// At VM entry (SDM 27.7.4): load the timer from VMCS12's value when `active`. Returns
    /// true when the value is 0: the VM exit comes before L2's first instruction.
    pub fn enter(&mut self, active: bool, value: u32) -> bool {
        self.run_started = None;
        if !active {
            self.budget = None;
            return false;
        }
        self.generation += 1;
        self.stats.arms += 1;
        let ticks = u64::from(value) << self.rate;
        self.budget = Some((ticks, 0));
        value == 0
    }

    /// Whether the timer runs in this entry.
    #[must_use]
    pub const fn active(&self) -> bool {
        self.budget.is_some()
    }

    fn ticks_to_duration(&self, ticks: u64) -> Duration {
        // ticks / (kHz * 1000) s = ticks * 1e6 / kHz ns.
        let ns = u128::from(ticks) * 1_000_000 / u128::from(self.tsc_khz.max(1));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    fn duration_to_ticks(&self, d: Duration) -> u64 {
        u64::try_from(d.as_nanos() * u128::from(self.tsc_khz) / 1_000_000).unwrap_or(u64::MAX)
    }

    /// Before a KVM_RUN of VM2 on this thread: arm the host timer for what is left.
    pub fn before_run(&mut self, kicker: Kicker) {
        let Some((budget, spent)) = self.budget else { return };
        let left = budget.saturating_sub(spent);
        let now = Instant::now();
        self.run_started = Some(now);
        let deadline = now + self.ticks_to_duration(left);
        if self.thread.is_none() {
            let shared = self.shared.clone();
            self.thread = Some(
                std::thread::Builder::new()
                    .name("l0-vmx-timer".into())
                    .spawn(move || timer_thread(&shared))
                    .expect("spawning the preemption-timer thread"),
            );
        }
        let mut g = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.deadline = Some((deadline, self.generation, kicker));
        drop(g);
        self.shared.wake.notify_one();
    }

    /// After that KVM_RUN returned: disarm, take the L2 time off the budget. Returns true
    /// when the timer has expired (counted down to 0, or this arm's kick was sent).
    pub fn after_run(&mut self) -> bool {
        let Some((budget, spent)) = self.budget else { return false };
        let Some(started) = self.run_started.take() else { return false };
        let spent = spent.saturating_add(self.duration_to_ticks(started.elapsed()));
        let mut g = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.deadline = None;
        drop(g);
        self.budget = Some((budget, spent));
        spent >= budget || self.shared.fired.load(Ordering::SeqCst) == self.generation
    }

    /// A kick that is no timer expiry of this arm and no watchdog timeout.
    pub fn note_stale_kick(&mut self) {
        self.stats.stale_kicks += 1;
    }

    /// The timer exit is reflected: record the overshoot (L2 time minus the deadline) unless
    /// `zero` (no L2 time at all), and end the arm.
    pub fn on_timer_exit(&mut self, zero: bool) {
        self.stats.exits += 1;
        if zero {
            self.stats.zero_value_exits += 1;
        } else if let Some((budget, spent)) = self.budget {
            self.stats.overshoot(i64::try_from(i128::from(spent) - i128::from(budget)).unwrap_or(i64::MAX));
        }
        self.budget = None;
    }

    /// The value "save VMX-preemption timer value" stores at a VM exit (SDM 28.3.4): what
    /// is left, in timer ticks, rounded up (a timer that has not reached 0 saves at least 1);
    /// 0 after the timer exit. `None` when the timer is inactive.
    #[must_use]
    pub fn saved_value(&self) -> Option<u32> {
        let (budget, spent) = self.budget?;
        let left = budget.saturating_sub(spent);
        Some(u32::try_from(left.div_ceil(1 << self.rate)).unwrap_or(u32::MAX))
    }
}

impl Drop for PreemptionTimer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let mut g = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            g.quit = true;
            drop(g);
            self.shared.wake.notify_one();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_zero_expires_at_entry_and_inactive_never_expires() {
        let mut t = PreemptionTimer::new(5);
        assert!(!t.enter(false, 0));
        assert!(!t.active());
        assert!(!t.after_run());
        assert!(t.enter(true, 0));
        assert_eq!(t.saved_value(), Some(0));
        t.on_timer_exit(true);
        assert_eq!((t.stats.arms, t.stats.exits, t.stats.zero_value_exits), (1, 1, 1));
        assert_eq!(t.stats.overshoot_min_tsc, None);
    }

    #[test]
    fn the_budget_counts_only_time_between_before_and_after_run() {
        let mut t = PreemptionTimer::new(5);
        t.set_tsc_khz(1_000_000); // 1 GHz: one tick per ns.
        assert!(!t.enter(true, 1 << 20)); // 2^25 ticks = 33.5 ms of L2 time.
        assert_eq!(t.saved_value(), Some(1 << 20));
        // Time outside before_run/after_run (L0, L1) does not count.
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(t.saved_value(), Some(1 << 20));
        assert!(!t.after_run(), "no run started");
    }

    #[test]
    fn the_host_timer_kicks_this_thread_once_the_budget_is_spent() {
        let mut t = PreemptionTimer::new(5);
        t.set_tsc_khz(1_000_000);
        assert!(!t.enter(true, 1000)); // 32 us.
        // A kicker of this thread: the kick handler only sets a thread-local pointer, null
        // here, so the signal is harmless.
        let kicker = crate::vcpu::Kicker::current_thread().unwrap();
        t.before_run(kicker);
        let start = Instant::now();
        while t.shared.fired.load(Ordering::SeqCst) != t.generation {
            assert!(start.elapsed() < Duration::from_secs(5), "the timer thread never fired");
            std::thread::yield_now();
        }
        assert!(t.after_run());
        assert_eq!(t.saved_value(), Some(0));
        t.on_timer_exit(false);
        let o = t.stats.overshoot_min_tsc.unwrap();
        assert!(o >= 0, "the kick never comes before the deadline: {o}");
        assert_eq!(t.saved_value(), None);
    }
}
