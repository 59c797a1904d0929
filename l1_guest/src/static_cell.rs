//! The two ways L1 keeps state in a `static`, both without a safe `&self -> &mut T`:
//!
//! * [`TakeOnce`]: state whose address must be fixed for the whole run (the exit frame that
//!   HOST_RSP points into, the trace ring L0 reads, the descriptor tables the CPU reads). It
//!   hands out one `&'static mut` to its value, once; from then on the owner passes that
//!   reference down like any other `&mut`.
//! * [`TryLock`]: state every part of L1 may reach, the exception handler included (the console
//!   line buffer, the 0xE9 line). A borrow lasts one closure; a second borrow while the first
//!   is alive (an exception inside a `println!`) gets `None` instead of an aliasing `&mut`.
//!
//! L1 runs on one vCPU with interrupts off; the flags are atomics anyway, so that the types
//! are sound without that argument.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A static whose value can be borrowed mutably once, for the rest of the program.
pub struct TakeOnce<T> {
    taken: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reachable only through the one `&'static mut` that `take` hands out
// (the atomic flag makes that exclusive), which moves with its owner like any `&mut T`; that
// is sound across threads whenever `T: Send`.
unsafe impl<T: Send> Sync for TakeOnce<T> {}

impl<T> TakeOnce<T> {
    /// A cell holding `value`, not taken yet.
    pub const fn new(value: T) -> Self {
        Self { taken: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// The value, the first time; `None` ever after.
    // A `&mut` from `&self` is what this type is for; the flag makes it the only one.
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::Acquire) {
            return None;
        }
        // SAFETY: the flag was clear, so no reference to the value exists, and it is now set
        // for good, so no other will: this `&mut` is the only way to the value.
        Some(unsafe { &mut *self.value.get() })
    }
}

/// A static that lends `&mut` to its value for the length of a closure, and refuses a
/// second, nested borrow.
pub struct TryLock<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: `with` gives out at most one `&mut` at a time (the atomic flag), and only for the
// closure's duration; that is sound across threads whenever `T: Send`.
unsafe impl<T: Send> Sync for TryLock<T> {}

impl<T> TryLock<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self { busy: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// Run `f` on the value, or return `None` without running it when the value is already
    /// borrowed (by the code an exception interrupted). A panic inside `f` leaves it
    /// borrowed.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self.busy.swap(true, Ordering::Acquire) {
            return None;
        }
        // SAFETY: the flag was clear, so no other `&mut` to the value is alive; it stays set
        // until `f` has returned and this one is gone.
        let r = f(unsafe { &mut *self.value.get() });
        self.busy.store(false, Ordering::Release);
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_once_hands_out_one_reference() {
        static CELL: TakeOnce<u32> = TakeOnce::new(7);
        let v = CELL.take().expect("the first take");
        *v += 1;
        assert!(CELL.take().is_none(), "never a second one");
        assert_eq!(*v, 8);
    }

    #[test]
    fn try_lock_refuses_a_nested_borrow() {
        static CELL: TryLock<u32> = TryLock::new(1);
        let inner = CELL.with(|v| {
            *v += 1;
            CELL.with(|w| *w += 100)
        });
        assert_eq!(inner, Some(None), "the nested borrow is refused");
        assert_eq!(CELL.with(|v| *v), Some(2), "and the lock is free again");
    }
}
