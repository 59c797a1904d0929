//! The must-fail scenarios (`nestbench_abi::boot::Scenario::Fail*`, in the manner of
//! kvm-unit-tests' x86/vmx_tests.c): set up a valid VMCS for a tiny built-in L2, apply the
//! scenario's one perturbation, execute the instruction under test and report a
//! [`Verdict`] of what happened, then exit 0 (the verdict, not the exit status, is the
//! result). They drive VM entries one at a time ([`VmxVcpu::enter`]), not through the run
//! loop: the first exit, or the entry's failure, is the verdict.

use nestbench_abi::Pod;
use nestbench_abi::boot::Scenario;
use nestbench_abi::payload::{DONE_PORT, L2_IMAGE_BASE};
use nestbench_abi::report::{ReportKind, Verdict, VerdictKind};
use nestbench_abi::vmcs::{Field32, FieldNatural};

use crate::ept_builder::FrameMemory;
use crate::exits::must;
use crate::l2::L1Frames;
use crate::runner::{self, HostTables, RunError};
use crate::vmx::caps::disallowed_pin_bit;
use crate::vmx::entry::{EntryInstruction, ExitFrame};
use crate::vmx::hw::HwVmx;
use crate::vmx::setup::{GUEST_CR4, RFLAGS_RESERVED1, Write};
use crate::vmx::soft::SoftVmx;
use crate::vmx::vcpu::VmxVcpu;
use crate::vmx::{BackendKind, Vmcs, VmxBackend, VmxFail};

/// The built-in L2: `out DONE_PORT, eax`, then `hlt` and `jmp $` should it ever continue.
pub const TINY_L2: [u8; 5] = [0xE7, DONE_PORT as u8, 0xF4, 0xEB, 0xFE];
const _: () = assert!(DONE_PORT <= 0xFF, "TINY_L2 encodes DONE_PORT as an imm8");

/// CR4.PAE, which a 64-bit host must have (SDM 27.2.2).
const CR4_PAE: u64 = GUEST_CR4;

/// The perturbation a scenario applies to the otherwise valid VMCS writes: `None` for the
/// scenarios that change the instruction, not the VMCS.
#[must_use]
pub fn perturbation(scenario: Scenario, writes: &[Write], disallowed_pin: Option<u32>) -> Option<Write> {
    let value = |enc: u32| writes.iter().find(|w| w.encoding() == enc).map_or(0, |w| w.value());
    match scenario {
        // SDM 27.2.1.1: a pin-based control set to 1 that IA32_VMX_(TRUE_)PINBASED_CTLS
        // does not allow.
        Scenario::FailControl => Some(Write::F32(
            Field32::PinBasedVmExecControl,
            value(Field32::PinBasedVmExecControl.encoding()) as u32 | disallowed_pin.unwrap_or(0),
        )),
        // SDM 27.2.2: "If the host address-space size VM-exit control is 1, CR4.PAE must be 1".
        Scenario::FailHostState => {
            Some(Write::Nat(FieldNatural::HostCr4, value(FieldNatural::HostCr4.encoding()) & !CR4_PAE))
        }
        // SDM 27.3.1.4: RFLAGS bit 1 must be 1.
        Scenario::FailGuestState => {
            Some(Write::Nat(FieldNatural::GuestRflags, value(FieldNatural::GuestRflags.encoding()) & !RFLAGS_RESERVED1))
        }
        _ => None,
    }
}

/// Run a must-fail scenario. Never returns.
pub fn run(scenario: Scenario, host: HostTables) -> ! {
    let kind = runner::detect();
    let Some(frame) = ExitFrame::take() else { runner::fail(RunError::FrameTaken) };
    let e = match kind {
        BackendKind::Soft => run_on(SoftVmx::new(), kind, frame, scenario, host),
        BackendKind::Hardware => run_on(HwVmx::new(), kind, frame, scenario, host),
    };
    runner::fail(e)
}

/// The valid baseline the scenarios and the VM-entry cases perturb: VMX operation, a
/// current VMCS, and the VMCS writes for [`TINY_L2`] at CPL 0 (not applied yet), exiting to
/// `frame`.
pub(crate) fn baseline<B: VmxBackend>(
    b: &mut B,
    kind: BackendKind,
    host: HostTables,
    frame: &ExitFrame,
    mem: &mut L1Frames,
) -> Result<(runner::Ready, crate::l2::L2Space, crate::vmx::setup::Writes), RunError> {
    let ready = runner::enter_vmx(b, kind, mem)?;
    let mut page = [0u8; 4096];
    page[..TINY_L2.len()].copy_from_slice(&TINY_L2);
    let (_, space, writes) = runner::prepare(&ready.caps, mem, &page, L2_IMAGE_BASE, 0, host, frame.host_rsp())?;
    Ok((ready, space, writes))
}

fn run_on<B: VmxBackend>(
    mut b: B,
    kind: BackendKind,
    frame: &'static mut ExitFrame,
    scenario: Scenario,
    host: HostTables,
) -> RunError {
    let mut mem = L1Frames::new();
    let (ready, _, mut writes) = match baseline(&mut b, kind, host, frame, &mut mem) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let disallowed = disallowed_pin_bit(&ready.caps);
    if scenario == Scenario::FailControl && disallowed.is_none() {
        return RunError::Refused("FailControl: every pin-based control may be 1 here");
    }
    if let Some(w) = perturbation(scenario, writes.as_slice(), disallowed) {
        writes.replace(w);
    }
    if let Err((w, e)) = writes.apply(&mut b) {
        return RunError::VmcsWrite(w, e);
    }
    match scenario {
        Scenario::FailVmptrldUnaligned => verdict_of(scenario, b.vmptrld(ready.vmcs + 8)),
        Scenario::FailRevision => {
            let Some(other) = mem.alloc_zeroed_page() else {
                return RunError::Setup(crate::l2::SetupError::OutOfFrames);
            };
            mem.write_u64(other, u64::from(ready.caps.basic.revision_id() ^ 1));
            verdict_of(scenario, b.vmptrld(other))
        }
        Scenario::FailWriteReadOnly => {
            let r = b.write32(Field32::VmExitReason, 0);
            if r.is_ok() {
                crate::println!("l1: VMWRITE to the exit-reason field succeeded (IA32_VMX_MISC[29] = 1?)");
            }
            verdict_of(scenario, r)
        }
        _ => {
            // SAFETY: the VMCS is set up by `runner::prepare` (one field perturbed on purpose,
            // which is what the scenario tests), HOST_RIP/RSP are the exit stub and this
            // 'static frame, and `b` made it current.
            let mut vcpu = unsafe { VmxVcpu::new(b, frame) };
            let how = if scenario == Scenario::FailResumeBeforeLaunch {
                EntryInstruction::Resume
            } else {
                EntryInstruction::Launch
            };
            let reason = enter_or_judge(&mut vcpu, scenario, how);
            // The entry succeeded (or failed with an entry-failure exit, SDM 27.8).
            // FailLaunchLaunched then does its second VMLAUNCH of the now-launched VMCS.
            if scenario == Scenario::FailLaunchLaunched && reason & 1 << 31 == 0 {
                let second = enter_or_judge(&mut vcpu, scenario, EntryInstruction::Launch);
                exited(&mut vcpu, scenario, second)
            }
            exited(&mut vcpu, scenario, reason)
        }
    }
}

/// Execute the entry instruction `how` names: a failed entry is the verdict; after an exit,
/// its reason is returned.
pub(crate) fn enter_or_judge<B: VmxBackend>(
    vcpu: &mut VmxVcpu<'_, B>,
    scenario: Scenario,
    how: EntryInstruction,
) -> u32 {
    match vcpu.enter(how) {
        Ok(()) => must(vcpu.backend().read32(Field32::VmExitReason), "VMREAD exit reason"),
        Err(rflags) => match vcpu.entry_failure(rflags) {
            Some(f) => verdict_of(scenario, Err(f)),
            None => {
                crate::println!("l1: the entry instruction returned without VMfail (RFLAGS {rflags:#x})");
                send(scenario, Verdict { kind: VerdictKind::Entered as u32, ..Verdict::default() })
            }
        },
    }
}

/// The verdict of an entry that ended in an exit of `reason`: a VM-entry failure (bit 31,
/// SDM 27.8) with its qualification, or an entry.
pub(crate) fn exited<B: VmxBackend>(vcpu: &mut VmxVcpu<'_, B>, scenario: Scenario, reason: u32) -> ! {
    if reason & 1 << 31 != 0 {
        let q = vcpu.backend().read_nat(FieldNatural::ExitQualification).unwrap_or(u64::MAX);
        send(
            scenario,
            Verdict {
                kind: VerdictKind::EntryFailure as u32,
                exit_reason: reason,
                qualification: q,
                ..Verdict::default()
            },
        )
    }
    send(scenario, Verdict { kind: VerdictKind::Entered as u32, exit_reason: reason, ..Verdict::default() })
}

/// The verdict of a VMX instruction's result.
pub(crate) fn verdict_of(scenario: Scenario, r: Result<(), VmxFail>) -> ! {
    send(
        scenario,
        match r {
            Ok(()) => Verdict { kind: VerdictKind::Succeeded as u32, ..Verdict::default() },
            Err(VmxFail::FailInvalid) => Verdict { kind: VerdictKind::FailInvalid as u32, ..Verdict::default() },
            Err(VmxFail::FailValid(e)) => {
                Verdict { kind: VerdictKind::FailValid as u32, error: e, ..Verdict::default() }
            }
        },
    )
}

/// Send the verdict (with `scenario` filled in) and exit 0.
pub(crate) fn send(scenario: Scenario, mut v: Verdict) -> ! {
    v.scenario = scenario as u32;
    crate::println!(
        "l1: verdict for {scenario:?}: kind {}, error {}, exit reason {:#x}, qualification {:#x}",
        v.kind,
        v.error,
        v.exit_reason,
        v.qualification
    );
    let bytes = v.as_bytes();
    crate::hypercall::report(ReportKind::Verdict, bytes);
    crate::hypercall::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::caps::{VmxCaps, compute_controls, fixtures};
    use crate::vmx::setup::{GuestConfig, HostConfig, vmcs_writes};

    #[test]
    fn each_perturbation_changes_exactly_what_the_scenario_says() {
        let caps = VmxCaps::read(fixtures::kvm_nested_skylake);
        let c = compute_controls(&caps, true).unwrap();
        let g = GuestConfig {
            cpl: 0,
            cr0: 0x8000_0031,
            cr3: 0x30_0000,
            cr4: 0x2020,
            gdt: (0, 55),
            tss: (0, 0x2068),
            rsp: 0x3F_0000,
            rip: L2_IMAGE_BASE,
        };
        let h = HostConfig {
            cr0: 0x8000_0031,
            cr3: 0x1000,
            cr4: 0x2020,
            efer: 0x500,
            tr_base: 0,
            gdtr_base: 0,
            idtr_base: 0,
            rsp: 0,
            rip: 0,
        };
        let w = vmcs_writes(&c, 0x1E, 0x2000, &g, &h);
        let bit = disallowed_pin_bit(&caps);
        assert_eq!(
            perturbation(Scenario::FailControl, w.as_slice(), bit),
            Some(Write::F32(Field32::PinBasedVmExecControl, 0x16 | 1 << 8))
        );
        assert_eq!(
            perturbation(Scenario::FailHostState, w.as_slice(), bit),
            Some(Write::Nat(FieldNatural::HostCr4, 0x2000))
        );
        assert_eq!(
            perturbation(Scenario::FailGuestState, w.as_slice(), bit),
            Some(Write::Nat(FieldNatural::GuestRflags, 0))
        );
        for s in [
            Scenario::FailResumeBeforeLaunch,
            Scenario::FailLaunchLaunched,
            Scenario::FailVmptrldUnaligned,
            Scenario::FailRevision,
            Scenario::FailWriteReadOnly,
        ] {
            assert_eq!(perturbation(s, w.as_slice(), bit), None, "{s:?} leaves the VMCS valid");
        }
    }

    #[test]
    fn tiny_l2_is_out_done_port_eax() {
        assert_eq!(TINY_L2[..2], [0xE7, 0xE4]);
    }
}
