//! VM-entry conformance cases (`nestbench vmentry`, docs/vmentry.md): L1's valid baseline
//! VMCS for a 64-bit L2 with EPT (the must-fail scenarios' set-up), the case's writes on top
//! of it in order, then its VMX instructions; the verdict is what the CPU (or L0) gave.
//! Each case runs in its own boot, so a case that hangs or kills the guest cannot touch the
//! next one.

use nestbench_abi::boot::Scenario;
use nestbench_abi::controls::{pin, proc2};
use nestbench_abi::report::{Verdict, VerdictKind};
use nestbench_abi::vmcs::{self, Field32, Field64};
use nestbench_abi::vmentry::{CASE_GPA, Case, Step, WriteOp, apply, need};

use crate::ept_builder::FrameMemory;
use crate::l2::L1Frames;
use crate::runner::{self, HostTables, RunError};
use crate::scenarios::{enter_or_judge, exited, send, verdict_of};
use crate::vmx::caps::VmxCaps;
use crate::vmx::entry::ExitFrame;
use crate::vmx::hw::HwVmx;
use crate::vmx::soft::SoftVmx;
use crate::vmx::vcpu::VmxVcpu;
use crate::vmx::{BackendKind, Vmcs, VmxBackend};

/// The verdicts name this scenario.
const SCENARIO: Scenario = Scenario::Vmentry;

/// The [`need`] bits `caps` lacks.
#[must_use]
pub fn missing_needs(needs: u32, caps: &VmxCaps) -> u32 {
    let has = |bit: u32, ok: bool| if needs & bit != 0 && !ok { bit } else { 0 };
    has(need::UNRESTRICTED_GUEST, caps.proc2.may_be_one & proc2::UNRESTRICTED_GUEST != 0)
        | has(need::VMCS_SHADOWING, caps.proc2.may_be_one & proc2::VMCS_SHADOWING != 0)
        | has(need::PREEMPTION_TIMER, caps.pin.may_be_one & pin::PREEMPTION_TIMER != 0)
}

/// Run the case L0 placed at [`CASE_GPA`] (or, `baseline_only`, print the baseline VMCS).
/// Never returns.
pub fn run(host: HostTables, baseline_only: bool) -> ! {
    let kind = runner::detect();
    let Some(frame) = ExitFrame::take() else { runner::fail(RunError::FrameTaken) };
    let e = match kind {
        BackendKind::Soft => run_on(SoftVmx::new(), kind, frame, host, baseline_only),
        BackendKind::Hardware => run_on(HwVmx::new(), kind, frame, host, baseline_only),
    };
    runner::fail(e)
}

fn run_on<B: VmxBackend>(
    mut b: B,
    kind: BackendKind,
    frame: &'static mut ExitFrame,
    host: HostTables,
    baseline_only: bool,
) -> RunError {
    // SAFETY: CASE_GPA is identity-mapped L1 memory that L0 wrote before the boot; the read
    // copies plain integers, and the case is checked before use.
    let case = unsafe { core::ptr::read_volatile(CASE_GPA as *const Case) };
    if !baseline_only && !case.well_formed() {
        return RunError::Refused("the VM-entry case at CASE_GPA is malformed (magic, counts, steps or ops)");
    }
    let mut mem = L1Frames::new();
    let (ready, _, writes) = match crate::scenarios::baseline(&mut b, kind, host, frame, &mut mem) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if let Err((w, e)) = writes.apply(&mut b) {
        return RunError::VmcsWrite(w, e);
    }
    if baseline_only {
        for f in vmcs::ALL {
            match b.vmread(f.encoding) {
                Ok(v) => crate::println!("vmcs {:#06x} {v:#x} {}", f.encoding, f.name),
                Err(e) => crate::println!("vmcs {:#06x} unreadable {} ({e})", f.encoding, f.name),
            }
        }
        crate::hypercall::exit(0);
    }
    let missing = missing_needs(case.needs, &ready.caps);
    if missing != 0 {
        send(SCENARIO, Verdict { kind: VerdictKind::Skipped as u32, error: missing, ..Verdict::default() });
    }
    let out = || RunError::Setup(crate::l2::SetupError::OutOfFrames);
    if case.n_msr_loads > 0 {
        // SDM 25.8.2: the VM-entry MSR-load area, 16 bytes per entry.
        let Some(area) = mem.alloc_zeroed_page() else { return out() };
        for (i, m) in case.msr_loads[..case.n_msr_loads as usize].iter().enumerate() {
            let at = area + 16 * i as u64;
            mem.write_u64(at, u64::from(m.index) | u64::from(m.reserved) << 32);
            mem.write_u64(at + 8, m.value);
        }
        let set = b
            .write32(Field32::VmEntryMsrLoadCount, case.n_msr_loads)
            .and_then(|()| b.write64(Field64::VmEntryMsrLoadAddr, area));
        if let Err(e) = set {
            verdict_of(SCENARIO, Err(e));
        }
    }
    for w in &case.writes[..case.n_writes as usize] {
        let op = WriteOp::from_raw(w.op).expect("checked by well_formed");
        let base = b.vmread(w.encoding).unwrap_or(0);
        if let Err(e) = b.vmwrite(w.encoding, apply(op, base, w.value)) {
            crate::println!("l1: VMWRITE of field {:#x} failed: {e}", w.encoding);
            verdict_of(SCENARIO, Err(e));
        }
    }
    // A region with the wrong revision identifier, for VmPtrLdBadRevision (SDM 31.3 VMPTRLD).
    let Some(bad_revision) = mem.alloc_zeroed_page() else { return out() };
    mem.write_u64(bad_revision, u64::from(ready.caps.basic.revision_id() ^ 1));
    // SAFETY: the VMCS is the baseline's with the case's writes (which may make it invalid:
    // that is what the case tests), HOST_RIP/RSP are the exit stub and this 'static frame,
    // and `b` made it current.
    let mut vcpu = unsafe { VmxVcpu::new(b, frame) };
    let (vmcs, vmxon) = (ready.vmcs, ready.vmxon);
    // The steps in order; the last one's result (or the first failure) is the verdict. An
    // entry that exits ends the case at an entry failure, else the next step runs, or the
    // exit's reason is the verdict after the last.
    let n = case.n_steps as usize;
    for (i, raw) in case.steps[..n].iter().enumerate() {
        let last = i + 1 >= n;
        let step = Step::from_raw(*raw).expect("checked by well_formed");
        let r = match step {
            Step::VmLaunch | Step::VmResume => {
                let reason = enter_or_judge(&mut vcpu, SCENARIO, step == Step::VmResume);
                if reason & 1 << 31 != 0 || last {
                    exited(&mut vcpu, SCENARIO, reason)
                }
                Ok(())
            }
            Step::VmClear => vcpu.backend().vmclear(vmcs),
            Step::VmPtrLd => vcpu.backend().vmptrld(vmcs),
            Step::VmPtrLdUnaligned => vcpu.backend().vmptrld(vmcs + 8),
            Step::VmPtrLdVmxon => vcpu.backend().vmptrld(vmxon),
            Step::VmPtrLdBadRevision => vcpu.backend().vmptrld(bad_revision),
        };
        if r.is_err() || last {
            verdict_of(SCENARIO, r);
        }
    }
    verdict_of(SCENARIO, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::caps::fixtures;

    #[test]
    fn needs_are_checked_against_the_capability_msrs() {
        let caps = VmxCaps::read(fixtures::kvm_nested_skylake);
        assert_eq!(missing_needs(need::ALL, &caps) & need::PREEMPTION_TIMER, 0);
        let mut none = caps;
        none.proc2.may_be_one = 0;
        assert_eq!(
            missing_needs(need::UNRESTRICTED_GUEST | need::VMCS_SHADOWING, &none),
            need::UNRESTRICTED_GUEST | need::VMCS_SHADOWING
        );
        assert_eq!(missing_needs(0, &none), 0);
    }
}
