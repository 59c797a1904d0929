//! The nestbench ABI: everything that L0 (the KVM VMM), L1 (the bare-metal hypervisor) and
//! L2 (the payloads) must agree on, in one versioned `no_std` crate.
//!
//! * [`cpuid`]: the hypervisor CPUID leaves through which a guest finds nestbench's L0.
//! * [`hypercall`]: the L1 -> L0 call convention (port I/O, never VMCALL: VMCALL hangs the
//!   vCPU on the development hosts' KVM), call numbers and status codes.
//! * [`layout`]: the fixed guest-physical layout of the L1 VM.
//! * [`boot`]: the boot information block L0 hands L1.
//! * [`report`]: the structured reports L1 sends back (CPU probe, exception).
//! * VMX, shared by L1 and the soft engine: [`vmcs`] (field encodings), [`vmcs12`] (the
//!   VMCS12 page layout), [`vmx`] (exit reasons, instruction errors, qualifications),
//!   [`controls`] (control bits and the capability-MSR rule), [`ept`] (entry format and
//!   walk), [`softvmx`] (how L1 reaches L0's userspace VMX).
//! * AMD SVM, for L1's SVM backend and L0's reading of its reports: [`svm`] (exit codes,
//!   VMCB offsets, intercepts, EXITINFO1 encodings).
//! * [`cr`]: control-register and IA32_EFER bits.
//! * [`msr`]: the MSRs L1 (and L0's single-level twin) intercepts and emulates for L2.
//! * [`trace`]: the exit-trace ring L1 fills and L0 drains.
//! * [`vmentry`]: a VM-entry conformance case L0 hands L1.
//!
//! Every structure that crosses a level is `#[repr(C)]`, built only from integers, and has
//! its size pinned by a compile-time assertion. Any incompatible change bumps [`ABI_VERSION`].
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

/// An ABI enum: `#[repr]`, the usual derives, and `from_raw`, which decodes a raw value or
/// returns `None` for one this ABI version does not define (values come from another level,
/// so they are never trusted to be in range).
macro_rules! abi_enum {
    ($(#[$meta:meta])* pub enum $name:ident: $repr:ty {
        $($(#[$vmeta:meta])* $variant:ident = $value:expr,)*
    }) => {
        $(#[$meta])*
        #[repr($repr)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $name {
            /// Decode a raw value, or `None` if this ABI version does not define it.
            #[must_use]
            pub const fn from_raw(v: $repr) -> Option<Self> {
                $(if v == $value { return Some(Self::$variant); })*
                None
            }
        }
    };
}

pub mod boot;
pub mod controls;
pub mod cpuid;
pub mod cr;
pub mod e9;
pub mod ept;
pub mod hypercall;
pub mod layout;
pub mod msr;
pub mod payload;
pub mod report;
pub mod softvmx;
pub mod svm;
pub mod trace;
pub mod vmcs;
pub mod vmcs12;
pub mod vmentry;
pub mod vmx;

/// Version of this ABI. L0 publishes it in CPUID leaf [`cpuid::LEAF_INFO`] and in
/// [`boot::BootInfo::abi_version`]; L1 refuses to run on a different version.
pub const ABI_VERSION: u32 = 3;

/// Reinterpret a plain-old-data ABI structure as bytes.
///
/// # Safety
///
/// Implement it only for `#[repr(C)]` structures built from integers (and arrays of them)
/// with no padding: the default methods read every byte of a value and build a value from
/// any bytes. Each implementation in this crate states why its type qualifies, next to the
/// compile-time assertion of its size.
pub unsafe trait Pod: Copy + Sized {
    /// The structure's bytes, in guest (little-endian) order.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: implementors are `#[repr(C)]` structures of integers with no padding
        // (asserted by their size checks), so every byte is initialised, and the slice
        // borrows `self` for its whole lifetime.
        unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }

    /// Build the structure from bytes (any bit pattern is a valid value), or `None` when
    /// `bytes` is too short.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked above; implementors are integer-only, so every bit
        // pattern is a valid value; `read_unaligned` has no alignment requirement.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}
