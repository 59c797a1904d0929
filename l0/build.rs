//! Build the bare-metal guests (L1 and every L2 payload) for `x86_64-unknown-none` and tell
//! the crate where they are.
//!
//! A nested cargo with its own target directory (`target/guests`), so it never waits on the
//! outer build's lock. Set `NESTBENCH_SKIP_GUEST_BUILD=1` to skip (the image path is then
//! only valid if the guests were built before).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("l0 lives in the workspace root").to_owned();
    let target_dir = root.join("target").join("guests");
    let built = target_dir.join("x86_64-unknown-none/release");
    println!("cargo:rustc-env=NESTBENCH_BUILT_L1_ELF={}", built.join("l1_guest").display());
    // Every L2 payload image (one per `l2_payloads` manifest, named like it) lies here.
    println!("cargo:rustc-env=NESTBENCH_BUILT_GUEST_DIR={}", built.display());
    for dir in ["l1_guest", "l0/abi", "l2_payloads"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join(".cargo/config.toml").display());
    println!("cargo:rerun-if-env-changed=NESTBENCH_SKIP_GUEST_BUILD");
    if std::env::var_os("NESTBENCH_SKIP_GUEST_BUILD").is_some() {
        return;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Only what a cargo needs: the outer build's variables (encoded rustflags, jobserver,
    // target, profile) must not leak into the guest build.
    cmd.env_clear();
    for var in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_NET_OFFLINE",
        "CARGO_REGISTRIES_CRATES_IO_PROTOCOL",
    ] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd.current_dir(&root).args([
        "build",
        "--release",
        "--offline",
        "--target",
        "x86_64-unknown-none",
        "-p",
        "l1_guest",
        "-p",
        "l2_payloads",
        "--features",
        "l1_guest/bare-metal,l2_payloads/bare-metal",
    ]);
    cmd.arg("--target-dir").arg(&target_dir);
    let out = cmd.output().expect("running cargo to build the guests");
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("x86_64-unknown-none") && stderr.contains("target may not be installed") {
            "\nhint: rustup target add x86_64-unknown-none"
        } else {
            ""
        };
        panic!("building the bare-metal guests failed:\n{stderr}{hint}");
    }
}
