#!/usr/bin/env bash
# Set up a fresh machine for nestbench: the bare-metal Rust target, `just`, and a check that
# /dev/kvm is usable. Idempotent; safe to run again. Needs rustup/cargo and python3 (pip).
set -euo pipefail

say() { printf 'setup: %s\n' "$*"; }

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust with rustup first" >&2; exit 1; }

if ! rustup target list --installed | grep -qx x86_64-unknown-none; then
  say "adding the rustup target x86_64-unknown-none (the guests are built for it)"
  rustup target add x86_64-unknown-none
fi

if ! command -v just >/dev/null; then
  say "installing just (PyPI package rust-just)"
  python3 -m pip install --quiet --disable-pip-version-check rust-just
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  if ! command -v just >/dev/null; then
    # pip put it where this shell does not look (pyenv shims not rehashed, ~/.local/bin ...).
    ln -sf "$scripts/just" /usr/local/bin/just 2>/dev/null || export PATH="$scripts:$PATH"
  fi
fi
command -v just >/dev/null || { echo "setup: just is still not on PATH" >&2; exit 1; }

# Bochs (the bochs engine: L1's real VMX path) from Debian's packages. Tests that need it
# skip with a printed reason when it is missing, so a machine without apt/root still works.
if ! command -v bochs >/dev/null || [ ! -e /usr/share/bochs/BIOS-bochs-latest ] || [ ! -e /usr/share/vgabios/vgabios.bin ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing bochs, bochsbios, vgabios (Debian packages)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bochs bochsbios vgabios >/dev/null
  else
    say "bochs is not installed and this is not root with apt-get: the bochs engine and its tests will be skipped"
  fi
fi
command -v unshare >/dev/null || say "unshare (util-linux) is missing: the bochs engine needs it to isolate Bochs' VNC listener"

if [ ! -e /dev/kvm ]; then
  echo "setup: /dev/kvm does not exist: nestbench needs KVM (load kvm_intel/kvm_amd, or run on a host with KVM)" >&2
  exit 1
fi
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
  echo "setup: /dev/kvm is not readable and writable by $(id -un): add yourself to the kvm group or run as root" >&2
  exit 1
fi
say "ready: $(just --version), $(rustc --version), /dev/kvm usable, bochs: $(command -v bochs || echo missing)"
