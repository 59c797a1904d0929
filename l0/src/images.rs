//! Where the guest images are.
//!
//! `l0`'s build script builds the bare-metal guests (`l1_guest`, ...) for
//! `x86_64-unknown-none` into `target/guests/` and records their paths here at compile time.
//! `NESTBENCH_L1_ELF` in the environment overrides the L1 path at run time.

use std::path::PathBuf;

/// The L1 hypervisor image: `$NESTBENCH_L1_ELF` if set, else the one built with this L0.
#[must_use]
pub fn l1_elf() -> PathBuf {
    std::env::var_os("NESTBENCH_L1_ELF").map_or_else(|| PathBuf::from(env!("NESTBENCH_BUILT_L1_ELF")), PathBuf::from)
}
