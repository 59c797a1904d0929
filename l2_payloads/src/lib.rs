//! nestbench's L2 payloads: small `no_std` programs that L1 runs with VMX, each with a
//! manifest (which exits it causes, how many, how it times itself).
//!
//! No payload exists yet: they arrive with the soft engine (L1's VMX hypervisor), which is
//! what runs them. This crate is the place in the workspace they go; it builds for the host
//! and, like `l1_guest`, will build its bare-metal images for `x86_64-unknown-none`.
#![no_std]
#![deny(missing_docs)]
