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

# Emulated hosts (--host bochs[:MODEL], --host qemu): Debian's cloud kernels, whose KVM offers
# nested VMX inside Bochs (booted from an isolinux ISO) and nested SVM inside QEMU TCG, with a
# busybox initramfs. Packages, then the
# kernels of orchestrator/kernels.list into the kernel cache. NESTBENCH_SKIP_KERNELS=1 skips
# this part (the emulated-host tests then skip, saying so).
if [ "${NESTBENCH_SKIP_KERNELS:-0}" != 1 ]; then
  need=()
  [ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need+=(busybox-static)
  [ -e /usr/lib/ISOLINUX/isolinux.bin ] || need+=(isolinux)
  [ -e /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || need+=(syslinux-common)
  command -v xorriso >/dev/null || need+=(xorriso)
  command -v xz >/dev/null || need+=(xz-utils)
  command -v strip >/dev/null || need+=(binutils)
  command -v file >/dev/null || need+=(file)
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing ${need[*]} (Debian packages, for the emulated hosts)"
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
      say "missing ${need[*]} and not root with apt-get: the emulated hosts (--host bochs) will not run"
    fi
  fi
  cache=${NESTBENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nestbench}
  mkdir -p "$cache/kernels"
  while read -r alias pkg; do
    case $alias in ''|'#'*) continue;; esac
    dir=$cache/kernels/$alias
    if [ -f "$dir/.package" ] && [ "$(cat "$dir/.package")" = "$pkg" ]; then continue; fi
    say "fetching kernel $alias ($pkg) into $dir"
    tmp=$(mktemp -d "$cache/kernels/.fetch-XXXXXX")
    if ( cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1 ) \
        || { apt-get update -qq >/dev/null && ( cd "$tmp" && apt-get download -qq "$pkg" ); }; then
      mkdir "$tmp/root" && dpkg-deb -x "$tmp"/*.deb "$tmp/root" && echo "$pkg" > "$tmp/root/.package"
      rm -rf "$dir" && mv "$tmp/root" "$dir"
    else
      say "could not fetch $pkg: kernel $alias is not available (the tests that need it skip, saying so)"
    fi
    rm -rf "$tmp"
  done < "$(dirname "$0")/orchestrator/kernels.list"
fi

if [ ! -e /dev/kvm ]; then
  echo "setup: /dev/kvm does not exist: nestbench needs KVM (load kvm_intel/kvm_amd, or run on a host with KVM)" >&2
  exit 1
fi
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
  echo "setup: /dev/kvm is not readable and writable by $(id -un): add yourself to the kvm group or run as root" >&2
  exit 1
fi
say "ready: $(just --version), $(rustc --version), /dev/kvm usable, bochs: $(command -v bochs || echo missing)"
