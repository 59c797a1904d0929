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

# Every payload on every engine this host can run (VMCS shadowing on and off, the single-level
# twin, Bochs), calibrated, warmed up, repeated; writes results/runs/<timestamp>-<host>/
# (summary.json, report.md, dashboard.html) and compares against results/baseline/<profile>/.
# The nested benchmark (`nestbench bench`); `just bench-nested --quick` is the CI profile.
bench-nested *ARGS:
    cargo build --quiet --workspace --release
    ./target/release/nestbench bench {{ARGS}}

# BASE and NEW: directories under results/runs/ or summary.json files.
# Compare two runs: a noise-aware verdict per metric; exits 1 on a significant regression.
compare BASE NEW *ARGS:
    cargo run --quiet --release -p orchestrator -- compare {{BASE}} {{NEW}} {{ARGS}}

# The in-process nested table of l0's cargo bench (no orchestrator, no repetitions).
bench-nested-table *ARGS:
    cargo bench --quiet -p l0 --bench nested -- {{ARGS}}

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
