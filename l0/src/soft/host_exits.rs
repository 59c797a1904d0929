//! What this host's KVM leaves behind at a userspace exit, measured rather than assumed
//! (docs/kvm-exits.md). KVM implementations differ: upstream leaves RIP *at* an OUT until the
//! next KVM_RUN completes it (`kvm_fast_pio_out()` / `complete_fast_pio_out()`), kvm_pvm
//! exits with RIP already *past* it. The soft engine normalises by what it measured here.
//!
//! The probe is one guest instruction in a VM of its own (`mov al, 0x5a; out 0xE0, al;
//! hlt` at CPL 0), run once per process; about a millisecond.

use std::path::Path;
use std::sync::OnceLock;

use crate::vcpu::Exit;
use crate::x86_setup::Cpl;

/// Where the probe's code sits.
const CODE_GPA: u64 = 0x10_0000;
/// `mov al, 0x5a; out 0xE0, al; hlt`.
const CODE: [u8; 5] = [0xB0, 0x5A, 0xE6, 0xE0, 0xF4];
/// Offset of the OUT in [`CODE`], and its length.
const OUT_AT: u64 = 2;
const OUT_LEN: u64 = 2;

/// What an exit of this host leaves behind, as far as the soft engine's normalisation
/// depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostExits {
    /// After a non-string OUT exits to userspace, RIP is past the instruction (kvm_pvm: it
    /// is retired) rather than at it with the completion pending (upstream KVM).
    pub out_rip_past: bool,
}

impl HostExits {
    /// kvm_pvm's semantics (the development hosts; docs/kvm-exits.md rows 1-3).
    pub const KVM_PVM: Self = Self { out_rip_past: true };
    /// Upstream KVM's.
    pub const UPSTREAM: Self = Self { out_rip_past: false };
}

/// This host's semantics, measured once per process with the KVM device at `kvm_path`.
pub fn probe(kvm_path: &Path) -> Result<HostExits, String> {
    static PROBED: OnceLock<Result<HostExits, String>> = OnceLock::new();
    PROBED.get_or_init(|| measure(kvm_path)).clone()
}

fn measure(kvm_path: &Path) -> Result<HostExits, String> {
    let vm = crate::vm::Vm::new(kvm_path, 4 << 20).map_err(|e| format!("probing KVM's exit semantics: {e}"))?;
    vm.mem.write(CODE_GPA, &CODE).map_err(|e| format!("probing KVM's exit semantics: {e}"))?;
    let mut vcpu =
        vm.create_vcpu(Cpl::Kernel, CODE_GPA, CODE_GPA, 0).map_err(|e| format!("probing KVM's exit semantics: {e}"))?;
    let exit = vcpu.run().map_err(|e| format!("probing KVM's exit semantics: {e}"))?;
    let Exit::IoOut { port: 0xE0, size: 1, .. } = exit else {
        return Err(format!("probing KVM's exit semantics: `out 0xE0, al` gave {exit:?}, not an I/O exit"));
    };
    let rip = vcpu.regs().map_err(|e| format!("probing KVM's exit semantics: {e}"))?.rip;
    match rip.wrapping_sub(CODE_GPA) {
        OUT_AT => Ok(HostExits::UPSTREAM),
        x if x == OUT_AT + OUT_LEN => Ok(HostExits::KVM_PVM),
        _ => Err(format!(
            "probing KVM's exit semantics: after `out 0xE0, al` at {:#x} RIP is {rip:#x}, neither at nor past it",
            CODE_GPA + OUT_AT
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_is_probed_and_kvm_pvm_exits_past_an_out() {
        if !Path::new("/dev/kvm").exists() {
            println!("SKIP: no /dev/kvm");
            return;
        }
        let h = probe(Path::new("/dev/kvm")).unwrap();
        let pvm =
            std::fs::read_to_string("/proc/modules").unwrap_or_default().lines().any(|l| l.starts_with("kvm_pvm "));
        if pvm {
            assert_eq!(h, HostExits::KVM_PVM, "kvm_pvm retires an OUT before the exit (docs/kvm-exits.md row 1)");
        } else {
            println!("note: not kvm_pvm; this host's OUT semantics: {h:?}");
        }
    }
}
