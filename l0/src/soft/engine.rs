//! The soft engine: L0's userspace VMX for L1 (docs/soft-engine.md), tying together the VMX
//! instructions ([`super::vmx_ops`]), the advertised capabilities ([`super::caps`]), the
//! VM-entry checks ([`super::entry_checks`]), VM2 with its EPT12 shadow ([`super::l2vm`]),
//! exit normalisation ([`super::io_decode`]) and the state transfer
//! ([`super::transitions`]).
//!
//! Everything runs on the vCPU thread of L1's VM: a VM entry runs VM2's vCPU until an exit
//! that must be reflected, then returns with L1's registers set for its VM-exit handler.

pub use nestbench_protocol::soft::SoftStats;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::Kvm;
use nestbench_abi::controls;
use nestbench_abi::softvmx::{self, DOORBELL_LAUNCH, DOORBELL_RESUME, VmxOp, VmxResult};
use nestbench_abi::vmcs::{self, Field32, Field64, FieldNatural};
use nestbench_abi::vmx::{ExitReason, RawExitReason, VmInstructionError, intr};

use super::caps::Caps;
use super::cr3_exiting::Cr3Exiting;
use super::entry_checks::{self, EntryFailure};
use super::ept_fault::{self, Fault};
use super::host_exits::NoSlot;
use super::injection::{self, Event};
use super::io_decode;
use super::l2vm::{EptShadowError, L2Vm};
use super::msr::{self, MsrExits};
use super::timer::PreemptionTimer;
use super::transitions::{self, ExitInfo};
use super::vmcs12::Vmcs12;
use super::vmx_ops::VmxState;
use crate::memory::GuestMem;
use crate::trace::{Stamps, host_tsc};
use crate::vcpu::{Exit, Kicker, Vcpu, VcpuError};
use crate::vm::VmError;

/// The physical-address width the soft engine checks addresses against until it is told the
/// one L1's CPUID shows ([`SoftVmx::set_maxphyaddr`]; l0 does so before L1 runs).
pub const MAXPHYADDR: u32 = 46;

/// Errors that stop the soft engine (guest misbehaviour gets an architectural answer; these
/// are what L0 cannot carry on from).
#[derive(Debug, thiserror::Error)]
pub enum SoftError {
    /// A vCPU ioctl failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// VM2 could not be created.
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// What the machine loop does after a doorbell.
#[derive(Debug)]
pub enum EntryOutcome {
    /// L1 goes on after its VMLAUNCH/VMRESUME (a VMfail; flags set) or at HOST_RIP (a VM
    /// exit or an entry failure); its registers are set.
    Resume,
    /// The engine cannot go on: a valid setting it does not honour, or an L2 event it
    /// cannot reflect. Stop the run and say why.
    Unsupported {
        /// The VMCS field or event concerned.
        what: String,
        /// Why.
        why: String,
    },
    /// The watchdog fired while L2 ran.
    Timeout {
        /// L2's registers.
        regs: kvm_regs,
    },
}

/// The soft engine of one run.
#[derive(Debug)]
pub struct SoftVmx {
    caps: Caps,
    state: VmxState,
    l2: Option<L2Vm>,
    mapped_eptp: Option<u64>,
    /// VM2's memslot limit when not the default budget (`MachineConfig::memslot_limit`).
    memslot_limit: Option<usize>,
    /// VM2's MSR filter, built from L1's MSR bitmap.
    msr: MsrExits,
    /// Counters.
    pub stats: SoftStats,
    /// Set from a reflected exit until the next entry: L1's exits are traps of that exit.
    after_exit: bool,
    pending_traps: u64,
    pending_vmx_traps: u64,
    /// The VMX-preemption timer of VM2 ([`super::timer`]).
    timer: PreemptionTimer,
    /// L0's stamps of the exits delivered to L1, for the exit trace ([`crate::trace`]).
    pub stamps: Stamps,
    /// What this host's KVM leaves behind at an exit ([`super::host_exits`]).
    host: super::host_exits::HostExits,
    /// L1's MAXPHYADDR ([`SoftVmx::set_maxphyaddr`]).
    maxphyaddr: u32,
}

/// Fill the VMREAD and VMWRITE bitmaps in L1 memory (SDM 25.6.15: one bit per encoding
/// bits 14:0, a set bit makes the access trap). With shadowing every supported field reads
/// without a trap and every writable one writes without a trap; unsupported encodings and
/// (for VMWRITE) read-only fields always trap, so L0 answers them with the right VMfail.
pub fn publish_bitmaps(mem: &GuestMem, shadowing: bool) -> Result<(), crate::memory::MemoryError> {
    let mut read = vec![0xFFu8; 4096];
    let mut write = vec![0xFFu8; 4096];
    if shadowing {
        for f in vmcs::ALL {
            let clear = |bm: &mut [u8], enc: u32| bm[(enc >> 3) as usize & 0xFFF] &= !(1 << (enc & 7));
            let encodings = [Some(f.encoding), f.high_encoding()];
            for enc in encodings.into_iter().flatten() {
                clear(&mut read, enc);
                if !vmcs::is_read_only(enc) {
                    clear(&mut write, enc);
                }
            }
        }
    }
    mem.write(softvmx::READ_BITMAP_GPA, &read)?;
    mem.write(softvmx::WRITE_BITMAP_GPA, &write)
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl SoftVmx {
    /// A fresh engine: not in VMX operation.
    #[must_use]
    pub fn new(shadowing: bool) -> Self {
        Self {
            caps: Caps::soft(),
            state: VmxState::default(),
            l2: None,
            mapped_eptp: None,
            memslot_limit: None,
            msr: MsrExits::default(),
            stats: SoftStats { vmcs_shadowing: shadowing, ..SoftStats::default() },
            after_exit: false,
            pending_traps: 0,
            pending_vmx_traps: 0,
            timer: PreemptionTimer::new(super::caps::PREEMPTION_TIMER_RATE),
            stamps: Stamps::default(),
            host: super::host_exits::HostExits::kvm_pvm(),
            maxphyaddr: MAXPHYADDR,
        }
    }

    /// Check physical addresses against `bits`, the MAXPHYADDR L1's CPUID shows
    /// (CPUID.80000008H:EAX[7:0]): every VMX check of "beyond the physical-address width"
    /// (SDM 27.2.1, 31.3) is against the width L1 was told.
    pub fn set_maxphyaddr(&mut self, bits: u32) {
        self.maxphyaddr = bits;
    }

    /// Normalise exits by `host`'s semantics (measured: [`super::host_exits::probe`]).
    pub fn set_host_exits(&mut self, host: super::host_exits::HostExits) {
        self.stats.out_rip_past = Some(host.out == super::host_exits::Rip::Past);
        self.host = host;
    }

    /// Keep VM2 at most `n` memslots (the eviction path, [`L2Vm::set_memslot_limit`]);
    /// `None` for KVM's limit. Takes effect when VM2 is created (the first entry).
    pub fn set_memslot_limit(&mut self, n: Option<usize>) {
        self.memslot_limit = n;
    }

    /// The capability MSRs L0 answers for L1 (0x480-0x490), or `None` (a #GP) for another
    /// MSR. IA32_VMX_VMFUNC (0x491) is a #GP too: it exists only when "enable VM functions"
    /// may be 1 (SDM A.11), which the soft engine does not offer.
    pub fn rdmsr(&mut self, index: u32) -> Option<u64> {
        if index == nestbench_abi::vmx::msr::IA32_VMX_VMFUNC {
            return None;
        }
        let v = self.caps.msr(index);
        if v.is_some() {
            self.stats.capability_msr_reads += 1;
        }
        v
    }

    /// Note one exit of L1's VM (every KVM_RUN return), for the trap counts and times.
    pub fn note_l1_exit(&mut self, in_l1: Duration) {
        if self.after_exit {
            self.pending_traps += 1;
            self.stats.l1_ns += ns(in_l1);
        }
    }

    /// Emulate a `Call::Vmx` hypercall. Returns the result word for RDI, the value for
    /// RSI, and a note when hardware would have raised #UD instead.
    pub fn vmx_hypercall(&mut self, mem: &GuestMem, op: u64, a1: u64, a2: u64) -> (u64, u64, Option<String>) {
        let Some(op) = VmxOp::from_raw(op) else {
            return (VmxResult::FailInvalid.to_word(), 0, Some(format!("unknown VMX operation {op}")));
        };
        *self.stats.vmx_hypercalls.entry(format!("{op:?}")).or_default() += 1;
        if matches!(op, VmxOp::VmRead | VmxOp::VmWrite) && self.stats.entries > 0 {
            self.stats.vmx_rw_after_first_entry += 1;
            if self.after_exit {
                self.pending_vmx_traps += 1;
            }
        }
        let revision = self.caps.vmx_basic().revision_id();
        let r = self.state.execute(mem, op, a1, a2, revision, self.maxphyaddr);
        let note = r.would_ud.then(|| format!("{op:?} outside VMX operation: #UD on hardware, VMfailInvalid here"));
        (r.result.to_word(), r.value, note)
    }

    /// The VM-entry doorbell: `value` is DOORBELL_LAUNCH or DOORBELL_RESUME. `l1` has
    /// exited on the doorbell write (RIP already past it, nothing pending).
    pub fn doorbell(
        &mut self,
        value: u8,
        l1: &mut Vcpu,
        mem: &GuestMem,
        kvm: &Kvm,
        watchdog_fired: &dyn Fn() -> bool,
    ) -> Result<EntryOutcome, SoftError> {
        let launch = match value {
            DOORBELL_LAUNCH => true,
            DOORBELL_RESUME => false,
            other => {
                return Ok(EntryOutcome::Unsupported {
                    what: "VM-entry doorbell".into(),
                    why: format!("value {other} is neither launch ({DOORBELL_LAUNCH}) nor resume ({DOORBELL_RESUME})"),
                });
            }
        };
        let entry_started = Instant::now();
        if std::mem::take(&mut self.after_exit) {
            // The doorbell (counted by note_l1_exit) is the last trap of the previous
            // reflected exit.
            self.stamps.resumed(self.pending_traps);
            self.stats.l1_traps += std::mem::take(&mut self.pending_traps);
            self.stats.l1_vmx_traps += std::mem::take(&mut self.pending_vmx_traps);
            self.stats.reflected_resumed += 1;
        }
        let l1_regs = l1.regs()?;
        let l1_sregs = l1.sregs()?;
        // SDM 27.1: "no current VMCS" -> VMfailInvalid; launch state -> VMfailValid(4/5).
        let Some(cur) = self.state.current.filter(|_| self.state.vmxon.is_some()) else {
            return self.vmfail(l1, &l1_regs, mem, None);
        };
        let Ok(v) = Vmcs12::new(mem, cur) else { return self.vmfail(l1, &l1_regs, mem, None) };
        let launched = self.state.launched.contains(&cur);
        if launch && launched {
            return self.vmfail(l1, &l1_regs, mem, Some(VmInstructionError::VmlaunchNonClear));
        }
        if !launch && !launched {
            return self.vmfail(l1, &l1_regs, mem, Some(VmInstructionError::VmresumeNonLaunched));
        }
        let link = v.read(Field64::VmcsLinkPointer.encoding());
        let link_word = || {
            let mut w = [0u8; 4];
            mem.read(link, &mut w).ok().map(|()| u32::from_le_bytes(w))
        };
        // "VMCS shadowing" counts only when the secondary controls are active (SDM 25.6.2).
        let proc1 = v.read(Field32::PrimaryProcBasedVmExecControl.encoding()) as u32;
        let shadowing = proc1 & controls::proc1::ACTIVATE_SECONDARY_CONTROLS != 0
            && v.read(Field32::SecondaryProcBasedVmExecControl.encoding()) as u32 & controls::proc2::VMCS_SHADOWING
                != 0;
        // The link pointer's target (27.3.1.5) is checked after the rest, and also where the
        // rest found only an unsupported setting: an architectural failure wins over it.
        let checked = match entry_checks::check(&v, &self.caps, self.maxphyaddr) {
            r @ (Ok(()) | Err(EntryFailure::Unsupported { .. })) if link != u64::MAX => {
                entry_checks::link_target(link, link_word(), self.caps.vmx_basic().revision_id(), shadowing, cur).and(r)
            }
            r => r,
        };
        // A PAE guest without EPT, refused as unsupported: its PDPTEs in memory (27.3.1.6) are
        // checked first, and a failure there is architectural and wins.
        let checked = match checked {
            r @ Err(EntryFailure::Unsupported { .. }) => {
                entry_checks::pdptes_in_memory(&v, self.maxphyaddr, |pa| mem.read_u64(pa).unwrap_or(u64::MAX)).and(r)
            }
            r => r,
        };
        let msr_count = v.read(Field32::VmEntryMsrLoadCount.encoding()) as u32;
        let msr_addr = v.read(Field64::VmEntryMsrLoadAddr.encoding());
        match checked {
            Ok(()) => {}
            Err(EntryFailure::Control { .. }) => {
                return self.vmfail(l1, &l1_regs, mem, Some(VmInstructionError::EntryInvalidControls));
            }
            Err(EntryFailure::HostState { .. }) => {
                return self.vmfail(l1, &l1_regs, mem, Some(VmInstructionError::EntryInvalidHostState));
            }
            Err(EntryFailure::GuestState { qualification, .. }) => {
                // SDM 27.8: the entry fails after the checks on the guest state: a VM exit
                // with "VM-entry failure due to invalid guest state"; the VMCS stays clear.
                return self.entry_failure(
                    l1,
                    &v,
                    &l1_regs,
                    &l1_sregs,
                    ExitReason::EntryFailureGuestState,
                    qualification,
                );
            }
            Err(EntryFailure::Unsupported { field, why }) => {
                // The MSR loading (27.4) would come next on hardware: an entry of the area that
                // fails is architectural and wins over the unsupported setting.
                if let Some((n, why)) = super::msr_load::first_failure(mem, msr_addr, msr_count) {
                    tracing::debug!("VM-entry MSR load fails at entry {n}: {why}");
                    let q = u64::from(n);
                    return self.entry_failure(l1, &v, &l1_regs, &l1_sregs, ExitReason::EntryFailureMsrLoading, q);
                }
                return Ok(EntryOutcome::Unsupported { what: field.to_owned(), why });
            }
        }
        // The shadow of EPT12: rebuilt on the first entry, on an EPTP change, after INVEPT.
        let eptp = v.read(Field64::EptPointer.encoding());
        if self.l2.is_none() {
            let mut l2 = L2Vm::new(kvm, mem.clone())?;
            l2.vcpu.enable_sync_sregs();
            if let Some(n) = self.memslot_limit {
                l2.set_memslot_limit(n);
            }
            self.l2 = Some(l2);
        }
        if self.mapped_eptp != Some(eptp) || self.state.invept_pending {
            if let Err(e) = self.shadow_ept(eptp) {
                return Ok(EntryOutcome::Unsupported { what: "EPT12".into(), why: e.to_string() });
            }
        }
        let l2 = self.l2.as_mut().expect("created above");
        // RDMSR/WRMSR exits: VM2's MSR filter follows L1's MSR bitmap (super::msr).
        if let Err(e) = self.msr.sync(l2.fd(), mem, proc1, v.read(Field64::MsrBitmap.encoding())) {
            return Ok(EntryOutcome::Unsupported { what: Field64::MsrBitmap.name().into(), why: e.to_string() });
        }
        // VM entry loads L2's whole state from VMCS12 and L1's GPRs (SDM 27.3.2). What
        // VMX leaves alone (CR2, CR8, APIC base) comes from VM2's vCPU as it is: through the
        // ioctl before VM2 first ran, from the synced registers after.
        let base_sregs = if self.stats.l2_kvm_exits == 0 { l2.vcpu.sregs_now()? } else { l2.vcpu.sregs()? };
        let l2_regs = transitions::guest_regs(&v, &l1_regs);
        let l2_sregs = transitions::guest_sregs(&v, &base_sregs, l1_sregs.efer);
        l2.vcpu.set_regs(&l2_regs)?;
        l2.vcpu.set_sregs(&l2_sregs)?;
        // SDM 27.4: the VM-entry MSR-load area, after the guest state; a failing entry is a
        // VM-entry failure (27.8) with reason 34 and the entry's number as qualification.
        if msr_count > 0 {
            match super::msr_load::load(&l2.vcpu, mem, msr_addr, msr_count) {
                Ok(()) => {}
                Err(super::msr_load::LoadError::Unsupported { n, why }) => {
                    return Ok(EntryOutcome::Unsupported {
                        what: format!("{} entry {n}", Field64::VmEntryMsrLoadAddr.name()),
                        why,
                    });
                }
                Err(super::msr_load::LoadError::Fails { n, why }) => {
                    tracing::debug!("VM-entry MSR load failed at entry {n}: {why}");
                    let q = u64::from(n);
                    return self.entry_failure(l1, &v, &l1_regs, &l1_sregs, ExitReason::EntryFailureMsrLoading, q);
                }
            }
        }
        // L1's edits of L2's page tables since the last exit (l2vm::L2Vm::resync_tables), then
        // what KVM's own walk needs must be there before L2 runs (docs/kvm-exits.md rows 8, 9).
        if let Err(e) = l2.resync_tables().and_then(|_| l2.premap(&l2_sregs, l2_regs.rip, l2_regs.rsp)) {
            return Ok(EntryOutcome::Unsupported { what: "EPT12".into(), why: e.to_string() });
        }
        if launch {
            self.state.launched.insert(cur);
        }
        // SDM 27.7.4: the VMX-preemption timer is loaded from VMCS12 at every entry; with
        // value 0 the exit comes before L2's first instruction (run_l2 then does not run VM2).
        let pin = v.read(Field32::PinBasedVmExecControl.encoding()) as u32;
        let timer_value = v.read(Field32::VmxPreemptionTimerValue.encoding()) as u32;
        let timer_zero = self.timer.enter(pin & controls::pin::PREEMPTION_TIMER != 0, timer_value);
        if self.timer.active() && !timer_zero && !self.host.kicks() {
            // docs/kvm-exits.md row K: the timer's expiry is a kick out of VM2's KVM_RUN.
            return Ok(EntryOutcome::Unsupported {
                what: Field32::VmxPreemptionTimerValue.name().into(),
                why: format!(
                    "this host's KVM does not return from KVM_RUN on a kick while the guest runs (measured: {:?}), so \
                     L0 could not stop L2 when the timer expires",
                    self.host.kick
                ),
            });
        }
        if self.timer.active() && !self.timer.has_tsc_khz() {
            match l2.vcpu.fd().get_tsc_khz() {
                Ok(khz) if khz > 0 => self.timer.set_tsc_khz(u64::from(khz)),
                r => {
                    return Ok(EntryOutcome::Unsupported {
                        what: Field32::VmxPreemptionTimerValue.name().into(),
                        why: format!("KVM_GET_TSC_KHZ of VM2's vCPU gave {r:?}: no TSC rate to count the timer at"),
                    });
                }
            }
        }
        // Interrupt-window exiting: the entry checks let it through only with RFLAGS.IF = 1
        // and no blocking, so the window is open before L2's first instruction (SDM 26.7.5).
        let window = proc1 & controls::proc1::INTERRUPT_WINDOW_EXITING != 0;
        let at_entry = if timer_zero {
            Some(ExitReason::PreemptionTimer)
        } else if window {
            Some(ExitReason::InterruptWindow)
        } else {
            None
        };
        // SDM 27.6: event injection, after the guest state and the MSRs are loaded (types
        // 4-6 never get here: the entry checks refused them as unsupported).
        let injection = Event::decode(
            v.read(Field32::VmEntryInterruptionInfo.encoding()) as u32,
            v.read(Field32::VmEntryExceptionErrorCode.encoding()) as u32,
        );
        // SDM 27.7 (activity state): L2 entered in HLT stays halted until an event wakes it.
        // An injected event does (it is delivered, and L2 is active after it); a zero
        // preemption timer exits before L2 runs, still halted (saved so at the exit). Nothing
        // else can reach VM2 here, so an L2 halted with neither is refused rather than left to
        // wait forever.
        let halted = v.read(Field32::GuestActivityState.encoding()) == 1 && injection.is_none();
        if halted && !timer_zero {
            return Ok(EntryOutcome::Unsupported {
                what: Field32::GuestActivityState.name().into(),
                why: "L2 entered in HLT with no injected event and no zero preemption timer: nothing on this host \
                      can wake it (docs/soft-engine.md, \"Event injection\")"
                    .into(),
            });
        }
        // SDM 26.1.3: CR3-load/store exiting, by single-stepping VM2 (super::cr3_exiting).
        let targets = [
            FieldNatural::Cr3TargetValue0,
            FieldNatural::Cr3TargetValue1,
            FieldNatural::Cr3TargetValue2,
            FieldNatural::Cr3TargetValue3,
        ];
        let count = (v.read(Field32::Cr3TargetCount.encoding()) as usize).min(targets.len());
        let cr3 = Cr3Exiting {
            load: proc1 & controls::proc1::CR3_LOAD_EXITING != 0,
            store: proc1 & controls::proc1::CR3_STORE_EXITING != 0,
            targets: targets[..count].iter().map(|f| v.read(f.encoding())).collect(),
        };
        if let (true, Some(why)) = (cr3.on(), self.host.no_single_step()) {
            return Ok(EntryOutcome::Unsupported {
                what: Field32::PrimaryProcBasedVmExecControl.name().into(),
                why: format!("CR3-load/store exiting single-steps VM2, but {why}"),
            });
        }
        if let (Some(event), true) = (injection, cr3.on()) {
            return Ok(EntryOutcome::Unsupported {
                what: Field32::PrimaryProcBasedVmExecControl.name().into(),
                why: format!(
                    "CR3-load/store exiting with an injected event ({event:?}): VM2 is single-stepped for them, and \
                     an event handler entered through an interrupt gate runs with TF clear, unstepped"
                ),
            });
        }
        if let Some(event) = injection {
            if let Some(reason) = at_entry {
                return Ok(EntryOutcome::Unsupported {
                    what: Field32::VmEntryInterruptionInfo.name().into(),
                    why: format!(
                        "an injected event ({event:?}) with a {} VM exit due at entry: the order of the two is not \
                         implemented",
                        crate::events::reason_name(reason as u32)
                    ),
                });
            }
            let l2 = self.l2.as_mut().expect("created above");
            l2.vcpu.set_events(&injection::apply(event, l2.vcpu.events()?))?;
        }
        self.stats.entries += 1;
        self.stats.l0_ns += ns(entry_started.elapsed());
        self.run_l2(l1, mem, cur, &l1_sregs, watchdog_fired, AtEntry { exit: at_entry, injection, halted, cr3 })
    }

    /// Start shadowing the EPT12 at `eptp` afresh: every memslot dropped, filled again lazily
    /// (premapped at the entry, data pages on first touch).
    fn shadow_ept(&mut self, eptp: u64) -> Result<(), EptShadowError> {
        let l2 = self.l2.as_mut().expect("VM2 exists before its EPT is shadowed");
        l2.reset(eptp, self.maxphyaddr)?;
        self.stats.ept_shadow_builds += 1;
        self.mapped_eptp = Some(eptp);
        self.state.invept_pending = false;
        Ok(())
    }

    /// A VMfail of VMLAUNCH/VMRESUME: L1 goes on after the doorbell with the flags set
    /// (SDM 31.2), and for VMfailValid the error in VMCS12.
    fn vmfail(
        &mut self,
        l1: &mut Vcpu,
        l1_regs: &kvm_regs,
        mem: &GuestMem,
        error: Option<VmInstructionError>,
    ) -> Result<EntryOutcome, SoftError> {
        let result = match (error, self.state.current.and_then(|pa| Vmcs12::new(mem, pa).ok())) {
            (Some(e), Some(v)) => {
                v.set(Field32::VmInstructionError.encoding(), u64::from(e as u32));
                VmxResult::FailValid(e as u32)
            }
            _ => VmxResult::FailInvalid,
        };
        let key = match result {
            VmxResult::FailValid(e) => format!("vmfail_valid({e})"),
            _ => "vmfail_invalid".to_owned(),
        };
        *self.stats.entry_failures.entry(key).or_default() += 1;
        let regs = kvm_regs { rflags: result.apply_to_rflags(l1_regs.rflags), ..*l1_regs };
        l1.set_regs(&regs)?;
        Ok(EntryOutcome::Resume)
    }

    /// A VM-entry failure after the VM-entry checks (SDM 27.8): a VM exit with `reason` and
    /// bit 31, `qualification`, L1's host state loaded; the VMCS stays not launched.
    fn entry_failure(
        &mut self,
        l1: &mut Vcpu,
        v: &Vmcs12<'_>,
        l1_regs: &kvm_regs,
        l1_sregs: &kvm_sregs,
        reason: ExitReason,
        qualification: u64,
    ) -> Result<EntryOutcome, SoftError> {
        let reason = RawExitReason::vm_entry_failure(reason).map_or(0, |r| r.raw());
        *self.stats.entry_failures.entry(format!("entry_failure({})", reason & 0xFFFF)).or_default() += 1;
        transitions::write_exit_info(v, &ExitInfo { reason, qualification, ..ExitInfo::default() });
        self.load_host(l1, v, l1_regs, l1_sregs)?;
        self.stamps.delivered(host_tsc());
        Ok(EntryOutcome::Resume)
    }

    /// Load L1's host state after a VM exit (or an entry failure) and arm the trap count.
    fn load_host(
        &mut self,
        l1: &mut Vcpu,
        v: &Vmcs12<'_>,
        l2_regs: &kvm_regs,
        l1_sregs: &kvm_sregs,
    ) -> Result<(), SoftError> {
        l1.set_regs(&transitions::host_regs(v, l2_regs))?;
        let host = transitions::host_sregs(v, l1_sregs);
        if !sregs_equal(&host, l1_sregs) {
            l1.set_sregs(&host)?;
        }
        Ok(())
    }

    /// Run VM2 until an exit to reflect; reflect it.
    fn run_l2(
        &mut self,
        l1: &mut Vcpu,
        mem: &GuestMem,
        cur: u64,
        l1_sregs: &kvm_sregs,
        watchdog_fired: &dyn Fn() -> bool,
        at_entry: AtEntry,
    ) -> Result<EntryOutcome, SoftError> {
        let AtEntry { exit: at_entry, injection, halted, cr3 } = at_entry;
        // A VM exit before L2's first instruction (a zero preemption timer, an open
        // interrupt window): VM2 does not run.
        let timer_zero = at_entry == Some(ExitReason::PreemptionTimer);
        let window = at_entry == Some(ExitReason::InterruptWindow);
        let l2 = self.l2.as_mut().expect("VM2 exists at entry");
        l2.single_step(cr3.on())?;
        l2.vcpu.make_kick_target();
        let kicker = if self.timer.active() { Some(Kicker::current_thread()?) } else { None };
        let timer = &mut self.timer;
        let stamps = &mut self.stamps;
        let mut exit_tsc = 0;
        let result: Result<Reflect, SoftError> = loop {
            if stamps.is_on() {
                exit_tsc = host_tsc();
                stamps.entering(exit_tsc);
            }
            if timer_zero {
                // SDM 26.5.1: "If the timer is activated with a value of zero, a VM exit occurs
                // before any instruction is executed in VMX non-root operation": VM2 never
                // runs, L2's state is what the entry loaded.
                break l2.vcpu.regs().map(timer_exit).map_err(Into::into);
            }
            if window {
                // SDM 26.7.5: an open interrupt window at entry exits before any instruction
                // (after a zero preemption timer, which has priority: SDM 26.7.4). Reason 7,
                // qualification 0, RIP = the entry's.
                break l2
                    .vcpu
                    .regs()
                    .map(|regs| {
                        let info = ExitInfo { reason: ExitReason::InterruptWindow as u32, ..ExitInfo::default() };
                        Reflect::Exit { info, regs, rip: regs.rip }
                    })
                    .map_err(Into::into);
            }
            // Before each step of a single-stepped VM2: does the instruction at RIP exit?
            if cr3.on() {
                match cr3_exit(l2, &cr3) {
                    Ok(None) => {}
                    Ok(Some(exit)) => break Ok(exit),
                    Err(e) => break Err(e.into()),
                }
            }
            if let Some(k) = kicker {
                timer.before_run(k);
            }
            let t = Instant::now();
            let exit = l2.vcpu.run();
            exit_tsc = host_tsc();
            self.stats.l2_ns += ns(t.elapsed());
            let expired = timer.after_run();
            self.stats.l2_kvm_exits += 1;
            let exit = match exit {
                Ok(e) => e,
                Err(e) => break Err(e.into()),
            };
            match exit {
                Exit::Interrupted if watchdog_fired() => {
                    break l2
                        .vcpu
                        .regs_now()
                        .map(|regs| Reflect::Stop(EntryOutcome::Timeout { regs }))
                        .map_err(Into::into);
                }
                // The host timer's kick (docs/kvm-exits.md row K: after EINTR RIP is where L2
                // stopped and nothing is pending): a preemption-timer exit at that RIP.
                Exit::Interrupted if expired => break l2.vcpu.regs_now().map(timer_exit).map_err(Into::into),
                Exit::Interrupted => {
                    if kicker.is_some() {
                        timer.note_stale_kick();
                    }
                    self.stats.l0_only_exits += 1;
                    stamps.l0_only();
                }
                // One single-step of VM2 (CR3-load/store exiting): L0's own.
                Exit::Debug if cr3.on() => {
                    self.stats.l0_only_exits += 1;
                    stamps.l0_only();
                }
                other => match normalise(l2, other, &self.host) {
                    Ok(Reflect::L0Only) => {
                        self.stats.l0_only_exits += 1;
                        stamps.l0_only();
                    }
                    r => break r,
                },
            }
        };
        // An exit while the injected event was being delivered (VM2's vCPU still holds it):
        // VMX would report it with IDT-vectoring information (SDM 28.2.4), which L0 does not
        // write. A triple fault ends the delivery.
        let result = match (result, injection) {
            (Ok(Reflect::Exit { info, .. }), Some(event))
                if info.reason != ExitReason::TripleFault as u32
                    && injection::still_queued(event, &l2.vcpu.events()?) =>
            {
                l2.vcpu.set_events(&kvm_bindings::kvm_vcpu_events::default())?;
                Ok(Reflect::Stop(EntryOutcome::Unsupported {
                    what: Field32::IdtVectoringInfo.name().into(),
                    why: format!(
                        "L2 exited ({}) while the injected {event:?} was being delivered: L0 does not report \
                         IDT-vectoring information",
                        crate::events::reason_name(info.reason)
                    ),
                }))
            }
            (r, _) => r,
        };
        l2.snapshot_tables();
        self.stats.ept = l2.stats.clone();
        self.stats.memslots = l2.stats.memslots;
        // "Save VMX-preemption timer value" (SDM 28.3.4): what is left, 0 after the timer exit.
        let timer_exit_taken =
            matches!(&result, Ok(Reflect::Exit { info, .. }) if info.reason == ExitReason::PreemptionTimer as u32);
        let saved_timer = if timer_exit_taken { Some(0) } else { timer.saved_value() };
        if timer_exit_taken {
            timer.on_timer_exit(timer_zero);
        }
        self.stats.preemption_timer = timer.stats.clone();
        l1.make_kick_target();
        let exit_time = Instant::now();
        let reflect = result?;
        let (info, l2_regs, rip) = match reflect {
            Reflect::Stop(outcome) => return Ok(outcome),
            Reflect::Exit { info, regs, rip } => (info, regs, rip),
            Reflect::L0Only => unreachable!("L0-only exits keep L2 running"),
        };
        let l2 = self.l2.as_mut().expect("VM2 exists at exit");
        let l2_sregs = l2.vcpu.sregs()?;
        let v = Vmcs12::new(mem, cur).expect("the current VMCS was checked at entry");
        transitions::save_guest(&v, &l2_regs, rip, &l2_sregs, halted);
        transitions::write_exit_info(&v, &info);
        // SDM 25.8.3: "VM exits clear the valid bit (bit 31) in the VM-entry
        // interruption-information field."
        let entry_info = v.read(Field32::VmEntryInterruptionInfo.encoding());
        v.set(Field32::VmEntryInterruptionInfo.encoding(), entry_info & !u64::from(intr::VALID));
        if let Some(value) = saved_timer {
            if v.read(Field32::VmExitControls.encoding()) as u32 & controls::exit::SAVE_PREEMPTION_TIMER != 0 {
                v.set(Field32::VmxPreemptionTimerValue.encoding(), u64::from(value));
            }
        }
        *self.stats.reflected_exits.entry(crate::events::reason_name(info.reason)).or_default() += 1;
        self.stats.reflected_total += 1;
        self.stamps.delivered(exit_tsc);
        self.load_host(l1, &v, &l2_regs, l1_sregs)?;
        self.stats.l0_ns += ns(exit_time.elapsed());
        self.after_exit = true;
        Ok(EntryOutcome::Resume)
    }
}

/// What the entry brings besides L2's state: a VM exit due before L2's first instruction (a
/// zero preemption timer, an open interrupt window) and the event it injects.
#[derive(Clone, Debug)]
struct AtEntry {
    exit: Option<ExitReason>,
    injection: Option<Event>,
    /// L2 entered in HLT and nothing woke it (a zero preemption timer exits first).
    halted: bool,
    /// CR3-load/store exiting (VM2 single-stepped while on).
    cr3: Cr3Exiting,
}

/// The CR-access VM exit (SDM 28.2.1, Table 28-3) that the instruction at VM2's RIP causes,
/// before it runs; `None` when it runs.
fn cr3_exit(l2: &L2Vm, cr3: &Cr3Exiting) -> Result<Option<Reflect>, VcpuError> {
    let regs = l2.vcpu.regs()?;
    let sregs = l2.vcpu.sregs()?;
    let bytes = l2.read_linear(sregs.cr3, regs.rip, 15);
    let cpl = (sregs.cs.selector & 3) as u8;
    Ok(cr3.exit_for(&bytes, regs.rip, cpl, |n| super::cr3_exiting::gpr(&regs, n)).map(|a| {
        let info = ExitInfo {
            reason: ExitReason::ControlRegisterAccess as u32,
            qualification: a.qualification,
            insn_len: a.insn_len,
            ..ExitInfo::default()
        };
        Reflect::Exit { info, regs, rip: regs.rip }
    }))
}

fn sregs_equal(a: &kvm_sregs, b: &kvm_sregs) -> bool {
    let seg = |x: &kvm_bindings::kvm_segment| {
        (x.base, x.limit, x.selector, x.type_, x.present, x.dpl, x.db, x.s, x.l, x.g, x.avl, x.unusable)
    };
    [(&a.cs, &b.cs), (&a.ds, &b.ds), (&a.es, &b.es), (&a.fs, &b.fs), (&a.gs, &b.gs), (&a.ss, &b.ss), (&a.tr, &b.tr)]
        .iter()
        .all(|(x, y)| seg(x) == seg(y))
        && (a.gdt.base, a.gdt.limit, a.idt.base, a.idt.limit) == (b.gdt.base, b.gdt.limit, b.idt.base, b.idt.limit)
        && (a.cr0, a.cr3, a.cr4, a.efer) == (b.cr0, b.cr3, b.cr4, b.efer)
}

/// What normalising an L2 exit produced.
enum Reflect {
    /// A VM exit to reflect: its information, L2's registers as the exit presents them,
    /// and its guest RIP.
    Exit { info: ExitInfo, regs: kvm_regs, rip: u64 },
    /// Stop the run.
    Stop(EntryOutcome),
    /// L0 handled it alone (an EPT-shadow fill): run L2 on.
    L0Only,
}

/// The VMX-preemption timer exit (SDM 28.2.1: basic reason 52, exit qualification 0, no
/// instruction length) at L2's RIP.
fn timer_exit(regs: kvm_regs) -> Reflect {
    let info = ExitInfo { reason: ExitReason::PreemptionTimer as u32, ..ExitInfo::default() };
    Reflect::Exit { info, regs, rip: regs.rip }
}

/// Turn a KVM exit of VM2 into the VM exit hardware would report (docs/kvm-exits.md says
/// what KVM leaves behind for each kind; docs/soft-engine.md what L1 must see).
fn normalise(l2: &mut L2Vm, exit: Exit, host: &super::host_exits::HostExits) -> Result<Reflect, SoftError> {
    let regs = l2.vcpu.regs()?;
    let cr3 = l2.vcpu.sregs()?.cr3;
    let unsupported = |what: &str, why: String| Ok(Reflect::Stop(EntryOutcome::Unsupported { what: what.into(), why }));
    match exit {
        Exit::IoOut { .. } | Exit::IoIn { .. } => {
            let read = |linear: u64, len: usize| l2.read_linear(cr3, linear, len);
            let io = match io_decode::decode(&exit, &regs, &read, host) {
                Ok(io) => io,
                Err(e) => {
                    return unsupported(
                        "I/O exit",
                        format!("cannot normalise the I/O exit at L2 RIP {:#x}: {e}", regs.rip),
                    );
                }
            };
            // IN and INS wait for their data; upstream's OUT waits for its RIP advance
            // (`complete_fast_pio_out()`): nothing pending may survive into the next entry.
            let out_pending = !io.retired_past && io.insn_info.is_none() && host.out == super::host_exits::Rip::At;
            if matches!(exit, Exit::IoIn { .. }) || out_pending {
                flush_pending(l2, cr3, &io)?;
            }
            let presented = io.present(&regs);
            let info = ExitInfo {
                reason: ExitReason::IoInstruction as u32,
                qualification: io.qualification.raw(),
                insn_len: io.insn_len,
                insn_info: io.insn_info.map_or(0, |i| i.raw()),
                guest_linear: io.guest_linear.unwrap_or(0),
                ..ExitInfo::default()
            };
            Ok(Reflect::Exit { info, regs: presented, rip: io.rip })
        }
        Exit::Hlt => {
            // KVM retired the HLT (RIP past, docs/kvm-exits.md row 4): HLT is F4, one byte.
            let start = regs.rip.wrapping_sub(1);
            if l2.read_linear(cr3, start, 1) != [0xF4] {
                return unsupported("HLT exit", format!("no HLT before L2 RIP {:#x}", regs.rip));
            }
            let info = ExitInfo { reason: ExitReason::Hlt as u32, insn_len: 1, ..ExitInfo::default() };
            Ok(Reflect::Exit { info, regs, rip: start })
        }
        Exit::Shutdown => {
            // SDM 28.2: a triple fault exits with basic reason 2 and no qualification.
            let info = ExitInfo { reason: ExitReason::TripleFault as u32, ..ExitInfo::default() };
            Ok(Reflect::Exit { info, regs, rip: regs.rip })
        }
        Exit::RdMsr { .. } | Exit::WrMsr { .. } => {
            // docs/kvm-exits.md row 5: RIP at the instruction, a completion pending.
            let insn = l2.read_linear(cr3, regs.rip, 15);
            match msr::normalise(&mut l2.vcpu, &exit, &regs, &insn)? {
                Ok(info) => Ok(Reflect::Exit { info, regs, rip: regs.rip }),
                Err(why) => unsupported("RDMSR/WRMSR exit", why),
            }
        }
        Exit::MmioRead { .. } | Exit::MmioWrite { .. } | Exit::InternalError { .. } => {
            let sregs = l2.vcpu.sregs()?;
            let fault = if matches!(exit, Exit::InternalError { .. }) {
                if let NoSlot::EmulationFailure { queued_exception: Some(_), .. } = host.fetch_no_slot {
                    // Upstream queues a #UD with the failure (`handle_emulation_failure()`),
                    // which KVM would deliver at VM2's next entry: hardware's fetch fault
                    // delivers nothing to L2.
                    l2.vcpu.clear_queued_exception()?;
                }
                ept_fault::on_fetch_failure(l2, &exit, &regs, &sregs)
            } else {
                ept_fault::on_mmio(l2, &exit, &regs, &sregs)?
            };
            match fault {
                Fault::Filled => Ok(Reflect::L0Only),
                Fault::Exit { reason, qualification, gpa, linear, rip, regs } => {
                    let info = ExitInfo {
                        reason: reason as u32,
                        qualification,
                        guest_linear: linear,
                        guest_physical: gpa,
                        ..ExitInfo::default()
                    };
                    Ok(Reflect::Exit { info, regs, rip })
                }
                Fault::Unsupported { what, why } => unsupported(what, why),
            }
        }
        other => {
            unsupported("L2 exit", format!("{other:?} at L2 RIP {:#x} cannot be reflected by this engine", regs.rip))
        }
    }
}

/// An IN/INS exit leaves a completion pending in KVM (docs/kvm-exits.md rows 2 and 3b):
/// answer it and run VM2 once with immediate_exit, so nothing pending survives into the next
/// entry; for INS restore the destination bytes the flush wrote. L2's registers are
/// reloaded from VMCS12 at the next entry anyway.
fn flush_pending(l2: &mut L2Vm, cr3: u64, io: &io_decode::IoExit) -> Result<(), SoftError> {
    let saved = io.ins_dest.map(|(dst, len)| (dst, l2.read_linear(cr3, dst, len)));
    l2.vcpu.set_in_data(&[]);
    l2.vcpu.set_immediate_exit(true);
    let r = l2.vcpu.run();
    l2.vcpu.set_immediate_exit(false);
    r?;
    if let Some((dst, bytes)) = saved {
        l2.write_linear(cr3, dst, &bytes);
    }
    Ok(())
}
