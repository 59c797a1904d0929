//! nestbench's L0: a VMM on Linux KVM (kvm-ioctls, vm-memory, linux-loader) that boots the L1
//! hypervisor, serves its hypercalls, and reports what happened.
//!
//! * [`vm`], [`vcpu`], [`x86_setup`]: a VM in 64-bit mode; KVM_RUN as owned [`vcpu::Exit`]s;
//!   a race-free kick.
//! * [`machine`]: a guest run to completion on a dedicated vCPU thread, with hypercalls,
//!   a [`watchdog`], and KVM [`stats`].
//! * [`memory`], [`paging`], [`loader`]: bounds-checked guest memory, a guest page walk,
//!   and ELF loading. L1 is hostile input: nothing it passes can make L0 read or write
//!   outside guest memory.
//! * [`events`]: the run's events, outcome and report, as they go on the event stream.
//! * [`images`]: where the built guest images are.
//! * [`host`]: host facts for `nestbench doctor`.
//! * [`bochs`]: the `bochs` engine's runner (L1 on Bochs' emulated VMX, no KVM).
//! * [`emulated`]: the agent inside an emulated host (upstream KVM in Bochs or QEMU) and
//!   the framing of its serial line.
#![deny(missing_docs)]

pub mod bochs;
pub mod emulated;
pub mod events;
pub mod host;
pub mod images;
pub mod kvm_engine;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod msr_filter;
pub mod paging;
pub mod single_level;
pub mod soft;
pub mod stats;
pub mod trace;
pub mod vcpu;
pub mod vm;
pub mod vmentry;
pub mod watchdog;
pub mod x86_setup;
