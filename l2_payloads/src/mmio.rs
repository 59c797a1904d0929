//! `mmio`: a device register that L1 emulates behind an L2-physical page EPT12 never maps.
//!
//! Each iteration writes `mmio_write_value(i)` to the register at `MMIO_GPA` and reads it
//! back, both with a fixed 7-byte `mov` on EAX (`MMIO_INSN_LEN`, the register convention
//! of `nestbench_abi::payload`): two EPT violations (reason 48; SDM Table 28-7
//! qualification: write, then read, EPT permissions 0, linear address valid, final
//! translation), each emulated by L1, which skips the instruction. The read must return
//! `mmio_read_value` of what was written (L1's answer; there is no memory behind it).
//! The write and the read are timed together.

use nestbench_abi::payload::Cpl;
#[cfg(target_arch = "x86_64")]
use nestbench_abi::payload::{MMIO_GPA, mmio_read_value, mmio_write_value};
use nestbench_abi::vmx::ExitReason;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};
use nestbench_abi::payload::{Setup, setup};

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "mmio",
    description: "write and read back a device register L1 emulates behind an unmapped L2 page, CPL 3: two EPT violations",
    cpl: Cpl::User,
    exits_per_iteration: &[(ExitReason::EptViolation, 2)],
    default_iterations: 64,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::Both,
    single_level: Twin::None {
        reason: "its device is L1's: single-level nothing emulates it at that GPA and every check fails",
    },
    setup: Setup::flags(setup::MMIO_DEVICE),
};

/// `mmio`'s body; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    const _: () = assert!(MMIO_GPA == 0x60_0000, "the disp32 in the template");
    for i in 0..iterations {
        let value = mmio_write_value(i);
        let got: u32;
        // SAFETY: MMIO_GPA is mapped in L2's paging and never in EPT12: both accesses exit
        // to L1, which emulates them; no memory is touched.
        let (before, after) = unsafe {
            crate::timed!(
                "mov eax, {v:e}",
                "mov dword ptr [0x600000], eax",
                "mov eax, dword ptr [0x600000]",
                "mov {g:e}, eax";
                v = in(reg) value,
                g = out(reg) got,
                options(nostack),
            )
        };
        recorder.record(before, after);
        if got != mmio_read_value(value) {
            recorder.fail();
        }
    }
}
