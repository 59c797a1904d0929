//! An exit L1 has no handler for: dump every VMCS field of `nestbench_abi::vmcs::ALL`,
//! grouped by type as in SDM Appendix B (control, VM-exit information, guest state, host
//! state), in the manner of tandasat/barevisor, then exit.

use nestbench_abi::vmcs::{ALL, FieldKind};
use nestbench_abi::vmx::RawExitReason;

use super::EXIT_UNEXPECTED_EXIT;
use crate::vcpu::Vcpu;
use crate::vmx::VmxBackend;

/// Dump the vendor's state ([`Vcpu::dump`]) and exit with [`EXIT_UNEXPECTED_EXIT`]. `reason`
/// is the exit as the report names it ([`crate::exit::Exit::report_reason`]; for
/// [`crate::exit::Exit::Other`] the raw exit reason).
#[cold]
#[inline(never)]
pub fn handle<V: Vcpu>(vcpu: &mut V, reason: u32) -> ! {
    crate::println!("l1: unexpected VM exit: {}", RawExitReason::from_raw(reason));
    vcpu.dump();
    crate::hypercall::exit(EXIT_UNEXPECTED_EXIT)
}

/// VMX: print every VMCS field's value (or why it could not be read).
pub fn dump<B: VmxBackend>(b: &mut B) {
    for (kind, title) in [
        (FieldKind::Control, "control fields"),
        (FieldKind::ReadOnlyData, "VM-exit information fields"),
        (FieldKind::GuestState, "guest-state fields"),
        (FieldKind::HostState, "host-state fields"),
    ] {
        crate::println!("l1: VMCS {title}:");
        for f in ALL.iter().filter(|f| f.kind == kind) {
            match b.vmread(f.encoding) {
                Ok(v) => crate::println!("l1:   {:<40} {:#06x} = {v:#x}", f.name, f.encoding),
                Err(e) => crate::println!("l1:   {:<40} {:#06x}: {e}", f.name, f.encoding),
            }
        }
    }
}
