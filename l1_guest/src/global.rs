//! A cell for L1's global state.

use core::cell::UnsafeCell;

/// A cell for L1's global state. L1 runs on one vCPU with interrupts disabled; the VM-exit
/// path and the exception path never run concurrently with the code they interrupt in a way
/// that overlaps a borrow (an exception is terminal unless it is a recoverable RDMSR, and a VM
/// exit only arrives while L1 is "inside" the VM entry instruction). So there is never
/// concurrent access.
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: see the type's comment: one vCPU, interrupts off, no re-entrancy.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// A cell holding `v`.
    pub const fn new(v: T) -> Self {
        Self(UnsafeCell::new(v))
    }

    /// The value. Callers must not hold two results of `get` on the same cell at once.
    #[allow(clippy::mut_from_ref)]
    pub fn get(&self) -> &mut T {
        // SAFETY: single-threaded, non-reentrant use (see `Global`).
        unsafe { &mut *self.0.get() }
    }

    /// A raw pointer to the value (for assembly).
    pub const fn as_ptr(&self) -> *mut T {
        self.0.get()
    }
}
