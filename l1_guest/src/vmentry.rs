//! VM-entry conformance cases (`nestbench vmentry`, docs/vmentry.md): L1's valid baseline
//! VMCS for a 64-bit L2 with EPT (the must-fail scenarios' set-up), the case's writes on top
//! of it in order, then its VMX instructions; the verdict is what the CPU (or L0) gave.
//! Each case runs in its own boot, so a case that hangs or kills the guest cannot touch the
//! next one.

use nestbench_abi::Pod;
use nestbench_abi::boot::Scenario;
use nestbench_abi::controls::{ept_cap, pin, proc1, proc2};
use nestbench_abi::report::ReportKind;
use nestbench_abi::report::{Verdict, VerdictKind};
use nestbench_abi::vmcs::{self, Field32, Field64};
use nestbench_abi::vmentry::{
    CASE_GPA, Case, CaseCapabilities, Step, UNSUPPORTED_FIELD, WriteOp, apply, need, outside,
};
use nestbench_abi::vmx::intr;

use crate::ept_builder::FrameMemory;
use crate::l2::L1Frames;
use crate::runner::{self, HostTables, RunError};
use crate::scenarios::{enter_or_judge, exited, send, verdict_of};
use crate::vmx::caps::VmxCaps;
use crate::vmx::entry::{EntryInstruction, ExitFrame};
use crate::vmx::hw::HwVmx;
use crate::vmx::soft::SoftVmx;
use crate::vmx::vcpu::VmxVcpu;
use crate::vmx::{BackendKind, Vmcs, VmxBackend};

/// The verdicts name this scenario.
const SCENARIO: Scenario = Scenario::Vmentry;

/// The [`need`] bits an engine with `caps` lacks; `doorbell`: its VM entry is the soft
/// engine's doorbell write.
#[must_use]
pub fn missing_needs(needs: u32, caps: &VmxCaps, doorbell: bool) -> u32 {
    let has = |bit: u32, ok: bool| if needs & bit != 0 && !ok { bit } else { 0 };
    has(need::UNRESTRICTED_GUEST, caps.proc2.may_be_one & proc2::UNRESTRICTED_GUEST != 0)
        | has(need::VMCS_SHADOWING, caps.proc2.may_be_one & proc2::VMCS_SHADOWING != 0)
        | has(need::PREEMPTION_TIMER, caps.pin.may_be_one & pin::PREEMPTION_TIMER != 0)
        | has(need::MOV_SS_SHADOW, !doorbell)
}

/// The values of the fields [`outside_capabilities`] looks at, as the case leaves them.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaseControls {
    /// Pin-based controls.
    pub pin: u32,
    /// Primary processor-based controls.
    pub proc1: u32,
    /// Secondary processor-based controls.
    pub proc2: u32,
    /// VM-exit controls.
    pub exit: u32,
    /// VM-entry controls.
    pub entry: u32,
    /// Guest activity state.
    pub activity: u32,
    /// The EPTP.
    pub eptp: u64,
    /// The VM-entry interruption-information field.
    pub injection: u32,
    /// The VM-entry instruction length.
    pub insn_len: u32,
}

/// The [`outside`] bits of `c` under `caps`: each control field outside its capability MSR
/// (SDM 27.2.1.1; the secondary controls only when "activate secondary controls" is 1), and an
/// activity state of 1-3 that IA32_VMX_MISC[8:6] does not list (27.3.1.5, A.6).
#[must_use]
pub fn outside_capabilities(c: &CaseControls, caps: &VmxCaps) -> u32 {
    let bit = |b: u32, bad: bool| if bad { b } else { 0 };
    let proc2_on = c.proc1 & proc1::ACTIVATE_SECONDARY_CONTROLS != 0;
    let activity_listed = match c.activity {
        1..=3 => caps.misc & 1 << (5 + c.activity) != 0,
        _ => true,
    };
    // 27.2.1.1: the EPTP's memory type, walk length and A/D flag against IA32_VMX_EPT_VPID_CAP
    // (only the settings a capability bit allows; reserved values are invalid everywhere).
    let ept_on = proc2_on && c.proc2 & proc2::ENABLE_EPT != 0;
    let cap = |b: u64| caps.ept_vpid & b != 0;
    let eptp_outside = ept_on
        && ((c.eptp & 7 == 0 && !cap(ept_cap::MEMTYPE_UC))
            || (c.eptp & 7 == 6 && !cap(ept_cap::MEMTYPE_WB))
            || (c.eptp >> 3 & 7 == 3 && !cap(ept_cap::WALK_LENGTH_4))
            || (c.eptp >> 3 & 7 == 4 && !cap(ept_cap::WALK_LENGTH_5))
            || (c.eptp & 1 << 6 != 0 && !cap(ept_cap::ACCESSED_DIRTY)));
    // 27.2.1.3: "A VM-entry instruction length of 0 is allowed only if IA32_VMX_MISC[30] is
    // read as 1", for a valid software interrupt or exception.
    let software = matches!(intr::kind(c.injection), intr::SOFTWARE_INTERRUPT..=intr::SOFTWARE_EXCEPTION);
    let length_outside = c.injection & intr::VALID != 0 && software && c.insn_len == 0 && caps.misc & 1 << 30 == 0;
    bit(outside::EPT_POINTER, eptp_outside)
        | bit(outside::INSTRUCTION_LENGTH, length_outside)
        | bit(outside::PIN_CONTROLS, caps.pin.check(c.pin).is_err())
        | bit(outside::PROC_CONTROLS, caps.proc1.check(c.proc1).is_err())
        | bit(outside::PROC2_CONTROLS, proc2_on && caps.proc2.check(c.proc2).is_err())
        | bit(outside::EXIT_CONTROLS, caps.exit.check(c.exit).is_err())
        | bit(outside::ENTRY_CONTROLS, caps.entry.check(c.entry).is_err())
        | bit(outside::ACTIVITY_STATE, !activity_listed)
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
    let missing = missing_needs(case.needs, &ready.caps, B::DOORBELL);
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
    // What the engine's capability MSRs say of the case's VMCS: the expected verdict follows
    // them (nestbench compares it with the case's `expect` adjusted so).
    let mut read = |f: Field32| b.read32(f).unwrap_or(0);
    let controls = CaseControls {
        pin: read(Field32::PinBasedVmExecControl),
        proc1: read(Field32::PrimaryProcBasedVmExecControl),
        proc2: read(Field32::SecondaryProcBasedVmExecControl),
        exit: read(Field32::VmExitControls),
        entry: read(Field32::VmEntryControls),
        activity: read(Field32::GuestActivityState),
        injection: read(Field32::VmEntryInterruptionInfo),
        insn_len: read(Field32::VmEntryInstructionLength),
        eptp: b.read64(Field64::EptPointer).unwrap_or(0),
    };
    // A.6: "If bit 29 [of IA32_VMX_MISC] is read as 1, software can use VMWRITE to write to
    // any supported field in the VMCS": said for the cases that do.
    let n = case.n_steps as usize;
    let writes_read_only = case.steps[..n].contains(&(Step::VmWriteReadOnly as u32));
    let any_field = if writes_read_only && ready.caps.misc & 1 << 29 != 0 { outside::VMWRITE_ANY_FIELD } else { 0 };
    let report = CaseCapabilities { outside: outside_capabilities(&controls, &ready.caps) | any_field, reserved: 0 };
    crate::hypercall::report(ReportKind::CaseCapabilities, report.as_bytes());
    // A region with the wrong revision identifier, for VmPtrLdBadRevision, and one with the
    // shadow-VMCS indicator (bit 31) set, for VmPtrLdShadow (SDM 31.3 VMPTRLD).
    let Some(bad_revision) = mem.alloc_zeroed_page() else { return out() };
    mem.write_u64(bad_revision, u64::from(ready.caps.basic.revision_id() ^ 1));
    let Some(shadow) = mem.alloc_zeroed_page() else { return out() };
    mem.write_u64(shadow, u64::from(ready.caps.basic.revision_id() | 1 << 31));
    // SAFETY: the VMCS is the baseline's with the case's writes (which may make it invalid:
    // that is what the case tests), HOST_RIP/RSP are the exit stub and this 'static frame,
    // and `b` made it current.
    let mut vcpu = unsafe { VmxVcpu::new(b, frame) };
    let (vmcs, vmxon) = (ready.vmcs, ready.vmxon);
    // Addresses at the edge of the physical-address width L1 is shown: the first beyond it,
    // and the last page below it (far above any memory this machine gives L1).
    let beyond = 1u64 << crate::x86::maxphyaddr();
    let unbacked = beyond - 4096;
    // The steps in order; the last one's result (or the first failure) is the verdict. An
    // entry that exits ends the case at an entry failure, else the next step runs, or the
    // exit's reason is the verdict after the last.
    for (i, raw) in case.steps[..n].iter().enumerate() {
        let last = i + 1 >= n;
        let step = Step::from_raw(*raw).expect("checked by well_formed");
        let r = match step {
            Step::VmLaunch | Step::VmResume | Step::VmLaunchAfterMovSs => {
                let how = match step {
                    Step::VmResume => EntryInstruction::Resume,
                    Step::VmLaunchAfterMovSs => EntryInstruction::LaunchAfterMovSs,
                    _ => EntryInstruction::Launch,
                };
                let reason = enter_or_judge(&mut vcpu, SCENARIO, how);
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
            Step::VmPtrLdUnbacked => vcpu.backend().vmptrld(unbacked),
            Step::VmPtrLdBeyondWidth => vcpu.backend().vmptrld(beyond),
            Step::VmClearUnaligned => vcpu.backend().vmclear(vmcs + 8),
            Step::VmClearVmxon => vcpu.backend().vmclear(vmxon),
            Step::VmClearBeyondWidth => vcpu.backend().vmclear(beyond),
            Step::VmClearUnbacked => vcpu.backend().vmclear(unbacked),
            Step::VmxOnInRoot => vcpu.backend().vmxon(vmxon),
            Step::VmReadUnsupported => vcpu.backend().vmread(UNSUPPORTED_FIELD).map(|_| ()),
            Step::VmWriteUnsupported => vcpu.backend().vmwrite(UNSUPPORTED_FIELD, 0),
            Step::VmPtrLdShadow => vcpu.backend().vmptrld(shadow),
            Step::VmWriteReadOnly => vcpu.backend().vmwrite(Field32::VmExitReason.encoding(), 0),
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
        assert_eq!(missing_needs(need::ALL, &caps, false), 0);
        assert_eq!(missing_needs(need::ALL, &caps, true), need::MOV_SS_SHADOW);
        let mut none = caps;
        none.proc2.may_be_one = 0;
        assert_eq!(
            missing_needs(need::UNRESTRICTED_GUEST | need::VMCS_SHADOWING, &none, false),
            need::UNRESTRICTED_GUEST | need::VMCS_SHADOWING
        );
        assert_eq!(missing_needs(0, &none, true), 0);
    }

    #[test]
    fn controls_and_activity_states_outside_the_capability_msrs_are_named() {
        let caps = VmxCaps::read(fixtures::kvm_nested_skylake);
        let ok = CaseControls {
            pin: caps.pin.must_be_one,
            proc1: caps.proc1.must_be_one | proc1::ACTIVATE_SECONDARY_CONTROLS,
            proc2: 0,
            exit: caps.exit.must_be_one,
            entry: caps.entry.must_be_one,
            activity: 0,
            eptp: 6 | 3 << 3,
            injection: 0,
            insn_len: 0,
        };
        assert_eq!(outside_capabilities(&ok, &caps), 0);
        let mut no_ad = caps;
        no_ad.ept_vpid &= !ept_cap::ACCESSED_DIRTY;
        let ept = CaseControls { proc2: proc2::ENABLE_EPT, ..ok };
        assert_eq!(outside_capabilities(&ept, &no_ad), 0);
        assert_eq!(
            outside_capabilities(&CaseControls { eptp: ept.eptp | 1 << 6, ..ept }, &no_ad),
            outside::EPT_POINTER
        );
        let mut no_zero = caps;
        no_zero.misc &= !(1 << 30);
        let int3 = CaseControls { injection: intr::VALID | intr::SOFTWARE_EXCEPTION << 8 | 3, ..ok };
        assert_eq!(outside_capabilities(&int3, &no_zero), outside::INSTRUCTION_LENGTH);
        assert_eq!(outside_capabilities(&CaseControls { insn_len: 1, ..int3 }, &no_zero), 0);
        let no_pin_default1 = CaseControls { pin: 0, ..ok };
        assert_eq!(outside_capabilities(&no_pin_default1, &caps), outside::PIN_CONTROLS);
        let proc2_beyond = CaseControls { proc2: !caps.proc2.may_be_one, ..ok };
        assert_eq!(outside_capabilities(&proc2_beyond, &caps), outside::PROC2_CONTROLS);
        let proc2_off = CaseControls { proc1: caps.proc1.must_be_one, ..proc2_beyond };
        assert_eq!(outside_capabilities(&proc2_off, &caps), 0, "secondary controls unused");
        let mut no_hlt = caps;
        no_hlt.misc &= !(1 << 6);
        let hlt = CaseControls { activity: 1, ..ok };
        assert_eq!(outside_capabilities(&hlt, &no_hlt), outside::ACTIVITY_STATE);
        assert_eq!(outside_capabilities(&CaseControls { activity: 4, ..ok }, &no_hlt), 0, "4 is reserved everywhere");
    }
}
