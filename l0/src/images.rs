//! Where the guest images are.
//!
//! `l0`'s build script builds the bare-metal guests (`l1_guest` and the `l2_payloads`
//! images) for `x86_64-unknown-none` into `target/guests/` and records their paths here at
//! compile time. At run time `NESTBENCH_L1_ELF` overrides the L1 image and
//! `NESTBENCH_PAYLOAD_DIR` the directory of the payload images.

use std::path::PathBuf;

/// The L1 hypervisor image: `$NESTBENCH_L1_ELF` if set, else the one built with this L0.
#[must_use]
pub fn l1_elf() -> PathBuf {
    std::env::var_os("NESTBENCH_L1_ELF").map_or_else(|| PathBuf::from(env!("NESTBENCH_BUILT_L1_ELF")), PathBuf::from)
}

/// The image of L2 payload `name` (a manifest name of the `l2_payloads` crate, e.g.
/// `"outl"`; each payload's image is the binary of the same name):
/// `$NESTBENCH_PAYLOAD_DIR/<name>` if that variable is set, else the one built with this L0.
/// A static ELF linked at `nestbench_abi::payload::L2_IMAGE_BASE`. The path is not checked:
/// an unknown name gives a path that does not exist, so look the name up first.
#[must_use]
pub fn payload_elf(name: &str) -> PathBuf {
    std::env::var_os("NESTBENCH_PAYLOAD_DIR")
        .map_or_else(|| PathBuf::from(env!("NESTBENCH_BUILT_GUEST_DIR")), PathBuf::from)
        .join(name)
}
