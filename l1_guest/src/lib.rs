//! nestbench's L1: the host-testable library under the bare-metal `l1_guest` binary.
//!
//! The binary (`src/main.rs`, built with `--features bare-metal --target
//! x86_64-unknown-none`) holds only the entry point, the exception stubs, the panic handler
//! and the boot flow; everything that can be tested on the host lives here.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

pub mod console;
pub mod descriptors;
pub mod ept_builder;
pub mod exit;
pub mod exits;
pub mod hypercall;
pub mod l2;
pub mod runner;
pub mod scenarios;
pub mod static_cell;
pub mod svm;
pub mod trace;
pub mod vcpu;
pub mod vmentry;
pub mod vmx;
pub mod x86;
