//! The VMCS L1 runs L2 with, as a pure function producing (field, value) writes (SDM 25.4
//! "Guest-State Area", 25.5 "Host-State Area", 25.6-25.8 controls; the minimal correct VMCS
//! of KVM selftests' `prepare_vmcs`), so it is tested on the host with a recording backend.
//! The writes satisfy the VM-entry checks of SDM 27.2 and 27.3 for a 64-bit guest.

use nestbench_abi::cr;
use nestbench_abi::vmcs::{Field16, Field32, Field64, FieldNatural};

use super::caps::Controls;
use super::{Vmcs, VmxBackend, VmxFail};

/// One VMWRITE, typed by the field's width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// A 16-bit field.
    F16(Field16, u16),
    /// A 32-bit field.
    F32(Field32, u32),
    /// A 64-bit field.
    F64(Field64, u64),
    /// A natural-width field.
    Nat(FieldNatural, u64),
}

impl Write {
    /// The field's encoding.
    #[must_use]
    pub const fn encoding(self) -> u32 {
        match self {
            Self::F16(f, _) => f.encoding(),
            Self::F32(f, _) => f.encoding(),
            Self::F64(f, _) => f.encoding(),
            Self::Nat(f, _) => f.encoding(),
        }
    }

    /// The value, widened.
    #[must_use]
    pub const fn value(self) -> u64 {
        match self {
            Self::F16(_, v) => v as u64,
            Self::F32(_, v) => v as u64,
            Self::F64(_, v) | Self::Nat(_, v) => v,
        }
    }

    /// Execute the VMWRITE.
    pub fn apply(self, b: &mut impl VmxBackend) -> Result<(), VmxFail> {
        match self {
            Self::F16(f, v) => b.write16(f, v),
            Self::F32(f, v) => b.write32(f, v),
            Self::F64(f, v) => b.write64(f, v),
            Self::Nat(f, v) => b.write_nat(f, v),
        }
    }
}

/// Segment access rights in the VMCS format (SDM 25.4.1, Table 25-2): type 3:0, S 4,
/// DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15, unusable 16.
pub mod ar {
    /// 64-bit code, execute/read, accessed (type 0xB), S, P, L, G; DPL in bits 6:5.
    #[must_use]
    pub const fn code64(dpl: u8) -> u32 {
        0xB | 1 << 4 | (dpl as u32 & 3) << 5 | 1 << 7 | 1 << 13 | 1 << 15
    }
    /// Data, read/write, accessed (type 3), S, P, D/B, G.
    #[must_use]
    pub const fn data(dpl: u8) -> u32 {
        0x3 | 1 << 4 | (dpl as u32 & 3) << 5 | 1 << 7 | 1 << 14 | 1 << 15
    }
    /// Busy 64-bit TSS (type 11), P, byte granularity (SDM 27.3.1.2: TR type 11 in IA-32e
    /// mode, S = 0, G consistent with the limit).
    pub const TSS_BUSY: u32 = 0xB | 1 << 7;
    /// Unusable (bit 16): the LDTR L2 does not have.
    pub const UNUSABLE: u32 = 1 << 16;
}

/// L2's GDT selectors (the table [`crate::l2::gdt`] builds).
pub mod sel {
    /// 64-bit code, DPL 0.
    pub const CODE0: u16 = 0x08;
    /// Data, DPL 0.
    pub const DATA0: u16 = 0x10;
    /// Data, DPL 3 (with RPL 3).
    pub const DATA3: u16 = 0x18 | 3;
    /// 64-bit code, DPL 3 (with RPL 3).
    pub const CODE3: u16 = 0x20 | 3;
    /// The 64-bit TSS (16 bytes: slots 5 and 6).
    pub const TSS: u16 = 0x28;
}

/// CR0.PE, CR0.MP, CR0.ET, CR0.NE, CR0.WP, CR0.PG.
pub const GUEST_CR0: u64 = cr::CR0_PE | cr::CR0_MP | cr::CR0_ET | cr::CR0_NE | cr::CR0_WP | cr::CR0_PG;
/// CR4.PAE (required for IA-32e mode, SDM 27.3.1.1).
pub const GUEST_CR4: u64 = cr::CR4_PAE;
/// IA32_EFER.LME | LMA.
pub const EFER_LME_LMA: u64 = cr::EFER_LME | cr::EFER_LMA;
/// RFLAGS bit 1 (reserved, must be 1: SDM 27.3.1.4).
pub const RFLAGS_RESERVED1: u64 = 1 << 1;
/// RFLAGS.IOPL = 3.
pub const RFLAGS_IOPL3: u64 = 3 << 12;
/// DR7's reset value (SDM 18.2.4; KVM selftests' prepare_vmcs writes 0x400).
pub const DR7_INIT: u64 = 0x400;

/// What the guest-state area describes: L2 as [`crate::l2`] set it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    /// 0 or 3.
    pub cpl: u8,
    /// CR0 (already adjusted to the fixed MSRs).
    pub cr0: u64,
    /// CR3: L2's PML4, an L2-physical address.
    pub cr3: u64,
    /// CR4 (already adjusted; VMXE as the fixed MSRs demand).
    pub cr4: u64,
    /// GDTR base and limit.
    pub gdt: (u64, u32),
    /// TR base and limit.
    pub tss: (u64, u32),
    /// RSP.
    pub rsp: u64,
    /// RIP: the payload's entry point.
    pub rip: u64,
}

/// The host-state area: L1 as it runs (SDM 25.5, checked by 27.2.2 and 27.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// CR0 (adjusted to the fixed MSRs).
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 (adjusted; VMXE set).
    pub cr4: u64,
    /// IA32_EFER (written when the exit controls load it).
    pub efer: u64,
    /// TR base (L1's TSS).
    pub tr_base: u64,
    /// GDTR base.
    pub gdtr_base: u64,
    /// IDTR base.
    pub idtr_base: u64,
    /// RSP at a VM exit: the end of the exit frame's register array (`ExitFrame::host_rsp`).
    pub rsp: u64,
    /// RIP at a VM exit: the exit stub.
    pub rip: u64,
}

/// L1's host selectors (its own GDT: code 0x08, data 0x10, TSS 0x18; SDM 27.2.3: RPL and TI
/// 0, CS and TR not null).
pub mod host_sel {
    /// CS.
    pub const CS: u16 = crate::descriptors::SEL_CODE;
    /// SS, DS, ES, FS, GS.
    pub const DATA: u16 = crate::descriptors::SEL_DATA;
    /// TR.
    pub const TR: u16 = crate::descriptors::SEL_TSS;
}

/// The most writes [`vmcs_writes`] produces.
pub const MAX_WRITES: usize = 112;

/// A fixed-capacity list of writes (no allocator in L1).
#[derive(Clone, Debug)]
pub struct Writes {
    list: [Write; MAX_WRITES],
    len: usize,
}

impl Writes {
    const fn new() -> Self {
        Self { list: [Write::F16(Field16::VirtualProcessorId, 0); MAX_WRITES], len: 0 }
    }

    fn push(&mut self, w: Write) {
        self.list[self.len] = w;
        self.len += 1;
    }

    /// The writes, in order.
    #[must_use]
    pub fn as_slice(&self) -> &[Write] {
        &self.list[..self.len]
    }

    /// Replace the value of a field already in the list (for the must-fail scenarios'
    /// perturbations); returns whether it was there.
    pub fn replace(&mut self, w: Write) -> bool {
        let enc = w.encoding();
        match self.list[..self.len].iter_mut().find(|x| x.encoding() == enc) {
            Some(slot) => {
                *slot = w;
                true
            }
            None => false,
        }
    }

    /// Execute every VMWRITE in order; the first failure comes back with its write.
    pub fn apply(&self, b: &mut impl VmxBackend) -> Result<(), (Write, VmxFail)> {
        self.as_slice().iter().try_for_each(|w| w.apply(b).map_err(|e| (*w, e)))
    }
}

/// Every VMWRITE of a complete VMCS for a 64-bit L2 at `guest.cpl`; `msr_bitmap` is the
/// MSR bitmap's address, written when the controls use MSR bitmaps.
#[must_use]
pub fn vmcs_writes(controls: &Controls, eptp: u64, msr_bitmap: u64, guest: &GuestConfig, host: &HostConfig) -> Writes {
    use Field16 as F16;
    use Field32 as F32;
    use Field64 as F64;
    use FieldNatural as N;
    use Write::{F16 as W16, F32 as W32, F64 as W64, Nat};

    let mut w = Writes::new();
    // Controls (SDM 25.6-25.8).
    w.push(W32(F32::PinBasedVmExecControl, controls.pin));
    w.push(W32(F32::PrimaryProcBasedVmExecControl, controls.proc1));
    w.push(W32(F32::SecondaryProcBasedVmExecControl, controls.proc2));
    w.push(W32(F32::VmExitControls, controls.exit));
    w.push(W32(F32::VmEntryControls, controls.entry));
    w.push(W32(F32::ExceptionBitmap, 0));
    w.push(W32(F32::PageFaultErrorCodeMask, 0));
    w.push(W32(F32::PageFaultErrorCodeMatch, 0));
    w.push(W32(F32::Cr3TargetCount, 0));
    w.push(W32(F32::VmExitMsrStoreCount, 0));
    w.push(W32(F32::VmExitMsrLoadCount, 0));
    w.push(W32(F32::VmEntryMsrLoadCount, 0));
    w.push(W32(F32::VmEntryInterruptionInfo, 0));
    w.push(W64(F64::EptPointer, eptp));
    // SDM 25.6.9, 27.2.1.1: 4-KByte aligned, within the physical-address width.
    if controls.uses_msr_bitmaps() {
        w.push(W64(F64::MsrBitmap, msr_bitmap));
    }
    // L2 owns CR0/CR4 (no guest/host mask): reads of CR0/CR4 see the real values.
    w.push(Nat(N::Cr0GuestHostMask, 0));
    w.push(Nat(N::Cr4GuestHostMask, 0));
    w.push(Nat(N::Cr0ReadShadow, guest.cr0));
    w.push(Nat(N::Cr4ReadShadow, guest.cr4));

    // Host state (SDM 25.5.1, 25.5.2).
    w.push(Nat(N::HostCr0, host.cr0));
    w.push(Nat(N::HostCr3, host.cr3));
    w.push(Nat(N::HostCr4, host.cr4));
    w.push(W16(F16::HostCsSelector, host_sel::CS));
    for f in [F16::HostSsSelector, F16::HostDsSelector, F16::HostEsSelector, F16::HostFsSelector, F16::HostGsSelector] {
        w.push(W16(f, host_sel::DATA));
    }
    w.push(W16(F16::HostTrSelector, host_sel::TR));
    w.push(Nat(N::HostFsBase, 0));
    w.push(Nat(N::HostGsBase, 0));
    w.push(Nat(N::HostTrBase, host.tr_base));
    w.push(Nat(N::HostGdtrBase, host.gdtr_base));
    w.push(Nat(N::HostIdtrBase, host.idtr_base));
    w.push(W32(F32::HostIa32SysenterCs, 0));
    w.push(Nat(N::HostIa32SysenterEsp, 0));
    w.push(Nat(N::HostIa32SysenterEip, 0));
    if controls.exit_load_efer() {
        w.push(W64(F64::HostIa32Efer, host.efer));
    }
    w.push(Nat(N::HostRsp, host.rsp));
    w.push(Nat(N::HostRip, host.rip));

    // Guest state (SDM 25.4.1 registers, 25.4.2 non-register state).
    let user = guest.cpl == 3;
    let (cs, data) = if user { (sel::CODE3, sel::DATA3) } else { (sel::CODE0, sel::DATA0) };
    let dpl = if user { 3 } else { 0 };
    w.push(Nat(N::GuestCr0, guest.cr0));
    w.push(Nat(N::GuestCr3, guest.cr3));
    w.push(Nat(N::GuestCr4, guest.cr4));
    w.push(Nat(N::GuestDr7, DR7_INIT));
    w.push(W16(F16::GuestCsSelector, cs));
    w.push(Nat(N::GuestCsBase, 0));
    w.push(W32(F32::GuestCsLimit, 0xFFFF_FFFF));
    w.push(W32(F32::GuestCsAccessRights, ar::code64(dpl)));
    for (s, base, limit, ar) in [
        (F16::GuestSsSelector, N::GuestSsBase, F32::GuestSsLimit, F32::GuestSsAccessRights),
        (F16::GuestDsSelector, N::GuestDsBase, F32::GuestDsLimit, F32::GuestDsAccessRights),
        (F16::GuestEsSelector, N::GuestEsBase, F32::GuestEsLimit, F32::GuestEsAccessRights),
        (F16::GuestFsSelector, N::GuestFsBase, F32::GuestFsLimit, F32::GuestFsAccessRights),
        (F16::GuestGsSelector, N::GuestGsBase, F32::GuestGsLimit, F32::GuestGsAccessRights),
    ] {
        w.push(W16(s, data));
        w.push(Nat(base, 0));
        w.push(W32(limit, 0xFFFF_FFFF));
        w.push(W32(ar, ar::data(dpl)));
    }
    w.push(W16(F16::GuestTrSelector, sel::TSS));
    w.push(Nat(N::GuestTrBase, guest.tss.0));
    w.push(W32(F32::GuestTrLimit, guest.tss.1));
    w.push(W32(F32::GuestTrAccessRights, ar::TSS_BUSY));
    w.push(W16(F16::GuestLdtrSelector, 0));
    w.push(Nat(N::GuestLdtrBase, 0));
    w.push(W32(F32::GuestLdtrLimit, 0));
    w.push(W32(F32::GuestLdtrAccessRights, ar::UNUSABLE));
    w.push(Nat(N::GuestGdtrBase, guest.gdt.0));
    w.push(W32(F32::GuestGdtrLimit, guest.gdt.1));
    // No IDT: any L2 exception escalates to a triple fault, a VM exit with reason 2.
    w.push(Nat(N::GuestIdtrBase, 0));
    w.push(W32(F32::GuestIdtrLimit, 0));
    w.push(Nat(N::GuestRsp, guest.rsp));
    w.push(Nat(N::GuestRip, guest.rip));
    w.push(Nat(N::GuestRflags, RFLAGS_RESERVED1 | if user { RFLAGS_IOPL3 } else { 0 }));
    w.push(W64(F64::GuestIa32Debugctl, 0));
    w.push(W32(F32::GuestIa32SysenterCs, 0));
    w.push(Nat(N::GuestIa32SysenterEsp, 0));
    w.push(Nat(N::GuestIa32SysenterEip, 0));
    if controls.entry_load_efer() {
        w.push(W64(F64::GuestIa32Efer, EFER_LME_LMA));
    }
    // SDM 27.3.1.5: a link pointer of all ones skips the shadow-VMCS checks.
    w.push(W64(F64::VmcsLinkPointer, u64::MAX));
    w.push(W32(F32::GuestActivityState, 0));
    w.push(W32(F32::GuestInterruptibilityState, 0));
    w.push(Nat(N::GuestPendingDebugExceptions, 0));
    w
}

#[cfg(test)]
mod tests {
    use nestbench_abi::controls::{entry, exit};
    use nestbench_abi::vmcs::{self, FieldKind};

    use super::*;
    use crate::vmx::caps::{VmxCaps, compute_controls, fixtures};
    use crate::vmx::fake::Recording;

    fn configs(cpl: u8) -> (Controls, GuestConfig, HostConfig) {
        let caps = VmxCaps::read(fixtures::kvm_nested_skylake);
        let controls = compute_controls(&caps, cpl == 0).unwrap();
        let guest = GuestConfig {
            cpl,
            cr0: caps.adjust_cr0(GUEST_CR0),
            cr3: 0x30_0000,
            cr4: caps.adjust_cr4(GUEST_CR4),
            gdt: (0x30_5000, 55),
            tss: (0x30_6000, 0x2068),
            rsp: 0x3F_0000,
            rip: 0x40_0123,
        };
        let host = HostConfig {
            cr0: 0x8000_0031,
            cr3: 0x1000,
            cr4: 0x2020,
            efer: 0xD01,
            tr_base: 0x12_3000,
            gdtr_base: 0x12_4000,
            idtr_base: 0x12_5000,
            rsp: 0x13_0000 - 8,
            rip: 0x10_2000,
        };
        (controls, guest, host)
    }

    fn record(cpl: u8) -> Recording {
        let (c, g, h) = configs(cpl);
        let mut b = Recording::default();
        vmcs_writes(&c, 0x50_001E, 0x51_0000, &g, &h).apply(&mut b).unwrap();
        b
    }

    #[test]
    fn each_field_is_written_once_and_no_read_only_field_is_written() {
        let b = record(3);
        for (i, (enc, _)) in b.writes.iter().enumerate() {
            assert!(b.writes[i + 1..].iter().all(|(e, _)| e != enc), "{enc:#06x} written twice");
            let info = vmcs::lookup(*enc).unwrap();
            assert_ne!(info.kind, FieldKind::ReadOnlyData, "{}", info.name);
        }
        // Every host-state field a 64-bit host without PAT/perf loading needs.
        let host_fields = vmcs::ALL.iter().filter(|f| f.kind == FieldKind::HostState);
        for f in host_fields.filter(|f| !f.name.contains("pat") && !f.name.contains("perf")) {
            assert!(b.fields.contains_key(&f.encoding), "host field {} not written", f.name);
        }
        assert!(b.writes.len() <= MAX_WRITES);
    }

    #[test]
    fn cpl3_guest_state_matches_sdm_25_4() {
        let b = record(3);
        let g = |f: u32| b.get(f);
        assert_eq!(g(Field16::GuestCsSelector.encoding()), 0x23);
        assert_eq!(g(Field16::GuestSsSelector.encoding()), 0x1B);
        assert_eq!(g(Field32::GuestCsAccessRights.encoding()), 0xA0FB, "64-bit code, DPL 3");
        assert_eq!(g(Field32::GuestSsAccessRights.encoding()), 0xC0F3, "SS DPL = CPL (27.3.1.2)");
        assert_eq!(g(Field32::GuestTrAccessRights.encoding()), 0x8B, "busy 64-bit TSS");
        assert_eq!(g(Field32::GuestTrLimit.encoding()), 0x2068);
        assert_eq!(g(Field32::GuestLdtrAccessRights.encoding()), 1 << 16, "LDTR unusable");
        assert_eq!(g(FieldNatural::GuestRflags.encoding()), 0x3002, "IOPL 3, bit 1");
        assert_eq!(g(Field32::GuestIdtrLimit.encoding()), 0);
        assert_eq!(g(Field64::VmcsLinkPointer.encoding()), u64::MAX);
        assert_eq!(g(FieldNatural::GuestDr7.encoding()), 0x400);
        assert_eq!(g(FieldNatural::GuestRip.encoding()), 0x40_0123);
        assert_eq!(g(FieldNatural::GuestRsp.encoding()), 0x3F_0000);
        assert_eq!(g(FieldNatural::GuestCr3.encoding()), 0x30_0000);
        assert_eq!(g(FieldNatural::GuestCr4.encoding()), 0x2020, "PAE, and VMXE as CR4_FIXED0 demands");
        assert_eq!(g(FieldNatural::GuestCr0.encoding()) & 0x8000_0021, 0x8000_0021, "PE, NE, PG");
        assert_eq!(g(Field64::GuestIa32Efer.encoding()), 0x500, "LME | LMA with 'load IA32_EFER'");
        assert_eq!(g(Field64::EptPointer.encoding()), 0x50_001E);
        assert_eq!(g(Field64::MsrBitmap.encoding()), 0x51_0000, "Skylake nested KVM allows MSR bitmaps");
        assert_eq!(g(Field32::ExceptionBitmap.encoding()), 0);
        assert_eq!(g(Field32::Cr3TargetCount.encoding()), 0);
        assert_ne!(g(Field32::VmEntryControls.encoding()) & u64::from(entry::IA32E_MODE_GUEST), 0);
    }

    #[test]
    fn cpl0_guest_and_host_state() {
        let b = record(0);
        let g = |f: u32| b.get(f);
        assert_eq!(g(Field16::GuestCsSelector.encoding()), 0x08);
        for f in [Field16::GuestSsSelector, Field16::GuestDsSelector, Field16::GuestGsSelector] {
            assert_eq!(g(f.encoding()), 0x10);
        }
        assert_eq!(g(Field32::GuestCsAccessRights.encoding()), 0xA09B);
        assert_eq!(g(Field32::GuestDsAccessRights.encoding()), 0xC093);
        assert_eq!(g(FieldNatural::GuestRflags.encoding()), 0x2, "no IOPL at CPL 0");
        assert_eq!(g(Field16::HostCsSelector.encoding()), 0x08);
        assert_eq!(g(Field16::HostSsSelector.encoding()), 0x10);
        assert_eq!(g(Field16::HostTrSelector.encoding()), 0x18);
        assert_eq!(g(FieldNatural::HostRip.encoding()), 0x10_2000);
        assert_eq!(g(FieldNatural::HostRsp.encoding()), 0x13_0000 - 8);
        assert_eq!(g(FieldNatural::HostTrBase.encoding()), 0x12_3000);
        assert_eq!(g(Field64::HostIa32Efer.encoding()), 0xD01);
        assert_ne!(g(Field32::VmExitControls.encoding()) & u64::from(exit::HOST_ADDRESS_SPACE_SIZE), 0);
    }

    #[test]
    fn without_efer_controls_no_efer_fields_are_written() {
        let (mut c, g, h) = configs(0);
        c.exit &= !(exit::LOAD_EFER | exit::SAVE_EFER);
        c.entry &= !entry::LOAD_EFER;
        let mut b = Recording::default();
        vmcs_writes(&c, 0x50_001E, 0x51_0000, &g, &h).apply(&mut b).unwrap();
        assert!(!b.fields.contains_key(&Field64::HostIa32Efer.encoding()));
        assert!(!b.fields.contains_key(&Field64::GuestIa32Efer.encoding()));
    }

    #[test]
    fn replace_perturbs_one_field() {
        let (c, g, h) = configs(0);
        let mut w = vmcs_writes(&c, 0x50_001E, 0x51_0000, &g, &h);
        assert!(w.replace(Write::Nat(FieldNatural::GuestRflags, 0)));
        assert!(!w.replace(Write::F64(Field64::TscOffset, 1)));
        let mut b = Recording::default();
        w.apply(&mut b).unwrap();
        assert_eq!(b.get(FieldNatural::GuestRflags.encoding()), 0);
    }
}
