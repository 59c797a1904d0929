//! EPT-misconfiguration exits (basic reason 49; SDM 29.3.3.1 "EPT Misconfigurations": a
//! present EPT paging-structure entry with a reserved bit set, write without read,
//! execute-only where not supported, or a leaf memory type of 2, 3 or 7). SDM 28.2.1: the
//! exit qualification is cleared; GUEST_PHYSICAL_ADDRESS (0x2400) holds the address whose
//! translation hit the entry. Like an EPT violation it is fault-like: guest RIP is at the
//! instruction, which retries after the resume.
//!
//! L1's design: it records the exit and prints the guest-physical address; if that is the
//! page L1 itself broke for the `ept_misconfig` payload ([`RunState::misconfig`]) it repairs
//! the leaf (memory type write-back) and resumes, exactly once. Any other misconfiguration
//! is a bug in L1's EPT12: L1 stops with [`EXIT_EPT_MISCONFIG`], which no other exit uses.

use nestbench_abi::ept::MEMTYPE_WB;
use nestbench_abi::vmcs::FieldNatural;

use super::{EXIT_EPT_MISCONFIG, RunState, must};
use crate::ept_builder::EptBuilder;
use crate::exit::Exit;
use crate::vmx::{Vmcs, VmxBackend};

/// Record the exit at guest-physical `gpa` (decoded with the exit, [`Exit::EptMisconfig`]);
/// repair the leaf L1 broke on purpose; stop on anything else.
pub fn handle<B: VmxBackend>(b: &mut B, run: &mut RunState, gpa: u64) {
    let q = must(b.read_nat(FieldNatural::ExitQualification), "VMREAD exit qualification");
    let rip = must(b.read_nat(FieldNatural::GuestRip), "VMREAD guest RIP");
    // SDM 28.2.4: the instruction length is undefined here (not read); the guest-linear
    // address field is not written for this exit (recorded as 0).
    run.record(Exit::EptMisconfig { gpa }.report_reason(), 0, q, rip, 0, 0);
    let page = gpa & !0xFFF;
    let expected = run.misconfig.take_if(|p| *p == page).is_some();
    let eptp = run.eptp;
    let repaired = expected
        && run
            .ept
            .as_mut()
            .is_some_and(|p| EptBuilder::from_eptp(eptp).set_memory_type(&mut p.frames, page, MEMTYPE_WB));
    if repaired {
        crate::println!("l1: EPT misconfiguration at guest-physical {gpa:#x}, qualification {q:#x}: repaired");
        return;
    }
    crate::println!(
        "l1: EPT misconfiguration L1 did not cause: guest-physical {gpa:#x}, qualification {q:#x}, RIP {rip:#x}"
    );
    crate::hypercall::exit(EXIT_EPT_MISCONFIG)
}
