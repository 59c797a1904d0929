//! The `irq_window` payload on SVM: a pending virtual interrupt and the VINTR intercept (APM
//! Vol. 2, 15.21.4 "Virtual interrupt intercept"), SVM's counterpart of VMX's
//! interrupt-window exiting (`crate::exits::interrupt_window`).
//!
//! L1 sets V_IRQ with V_IGN_TPR in the VMCB's virtual-interrupt control, the VINTR intercept
//! and L2's RFLAGS.IF (V_INTR_MASKING stays 0, so L2's IF masks the virtual interrupt): at
//! every VMRUN L2 can take it at once, and the processor exits with VMEXIT_VINTR before L2's
//! first instruction, RIP unchanged. After the run's exit count L1 clears V_IRQ, the
//! intercept and IF, and L2 runs.

use nestbench_abi::svm::{intercept3, vintr, vmcb as off};

use super::vcpu::SvmVcpu;
use super::vmcb::Vmcb;
use crate::exit::Exit;
use crate::exits::RunState;
use crate::exits::interrupt_window::WindowRun;
use crate::vcpu::Vcpu;

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;
/// Clean bits L1 dirties here: intercepts (bit 0) and TPR (bit 3, the virtual-interrupt
/// control; APM 15.15.3).
const DIRTY: u32 = 1 << 0 | 1 << 3;

/// Request the window for `target` exits (none for 0).
pub fn arm(v: &mut Vmcb, target: u64) -> WindowRun {
    if target > 0 {
        v.write64(off::VINTR, v.read64(off::VINTR) | vintr::V_IRQ | vintr::V_IGN_TPR);
        v.write32(off::INTERCEPT3, v.read32(off::INTERCEPT3) | intercept3::VINTR);
        v.write64(off::RFLAGS, v.read64(off::RFLAGS) | RFLAGS_IF);
    }
    WindowRun { target, exits: 0 }
}

/// Record the exit; after the last one withdraw the virtual interrupt. RIP is not advanced:
/// no instruction caused the exit.
pub fn handle(vcpu: &mut SvmVcpu, run: &mut RunState) {
    let rip = vcpu.rip();
    vcpu.record(run, Exit::InterruptWindow.report_reason(), 0, 0, rip, 0, 0);
    let w = &mut run.window;
    w.exits += 1;
    if w.exits >= w.target {
        let v = vcpu.vmcb();
        v.write64(off::VINTR, v.read64(off::VINTR) & !(vintr::V_IRQ | vintr::V_IGN_TPR));
        v.write32(off::INTERCEPT3, v.read32(off::INTERCEPT3) & !intercept3::VINTR);
        v.write64(off::RFLAGS, v.read64(off::RFLAGS) & !RFLAGS_IF);
        vcpu.dirty(DIRTY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svm::vmcb::page;

    #[test]
    fn arming_sets_a_pending_virtual_interrupt_its_intercept_and_if() {
        let (_p, mut v) = page::fresh();
        assert_eq!(arm(&mut v, 0), WindowRun { target: 0, exits: 0 });
        assert_eq!((v.read64(off::VINTR), v.read32(off::INTERCEPT3), v.read64(off::RFLAGS)), (0, 0, 0), "0: nothing");
        assert_eq!(arm(&mut v, 3), WindowRun { target: 3, exits: 0 });
        assert_eq!(v.read64(off::VINTR), vintr::V_IRQ | vintr::V_IGN_TPR);
        assert_eq!(v.read32(off::INTERCEPT3), intercept3::VINTR);
        assert_eq!(v.read64(off::RFLAGS), RFLAGS_IF);
    }
}
