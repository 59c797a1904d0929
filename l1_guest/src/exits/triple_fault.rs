//! Triple-fault exits (basic reason 2). L2 has no IDT (IDTR limit 0), so any exception in
//! L2 escalates to a triple fault, which is a VM exit (SDM 26.2 "Other Causes of VM Exits":
//! "Triple fault"). L1 reports where L2 was and stops.

use super::{EXIT_L2_TRIPLE_FAULT, RunState};
use crate::exit::Exit;
use crate::vcpu::Vcpu;

/// Report the triple fault (guest RIP, RSP, CR2-less: the SDM saves no fault address) and exit.
pub fn handle<V: Vcpu>(vcpu: &mut V, run: &mut RunState) -> ! {
    let rip = vcpu.rip();
    let rsp = vcpu.rsp();
    vcpu.record(run, Exit::TripleFault.report_reason(), 0, 0, rip, 0, 0);
    crate::println!(
        "l1: L2 triple fault at RIP {rip:#x} (image offset {:#x}), RSP {rsp:#x}, after {} recorded exits",
        rip.wrapping_sub(nestbench_abi::payload::L2_IMAGE_BASE),
        run.report.records
    );
    crate::hypercall::exit(EXIT_L2_TRIPLE_FAULT)
}
