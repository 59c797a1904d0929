# nestbench tasks. `./setup.sh` installs what these need (rustup target, just).

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Build everything (host crates, and the bare-metal guests through l0's build script).
build:
    cargo build --workspace --release

# The test suite: unit tests and integration tests that boot real VMs on /dev/kvm.
test:
    cargo test --workspace

# Which engines this host can run, and why not the others.
doctor:
    cargo run --quiet --release -p orchestrator -- doctor

# Boot L1 and show what it reported plus the KVM statistics deltas.
boot *ARGS:
    cargo run --quiet --release -p orchestrator -- boot {{ARGS}}

# The nested benchmark: the host (doctor), the payloads, then every payload nested on the
# soft engine (VMCS shadowing on and off) against its single-level twin, and L1's boot.
bench-nested *ARGS:
    cargo build --quiet --workspace --release
    ./target/release/nestbench doctor
    @echo
    ./target/release/nestbench payloads
    cargo bench --quiet -p l0 --bench nested -- {{ARGS}}
    @echo
    cargo bench --quiet -p l0 --bench boot

# One payload on the soft engine, e.g. `just run --payload outl --iterations 1000`.
run *ARGS:
    cargo run --quiet --release -p orchestrator -- run {{ARGS}}

# Boot-to-exit benchmark of the hello L1.
bench-boot *ARGS:
    cargo bench -p l0 --bench boot -- {{ARGS}}

# Formatting and lints.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
