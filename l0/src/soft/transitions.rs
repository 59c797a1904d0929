//! State transfer between VMCS12 and KVM's register structures: loading L2's guest state
//! at VM entry (Intel SDM Vol. 3C, 27.3.2), saving it at VM exit (28.3), and loading L1's
//! host state at VM exit (28.5).

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use nestbench_abi::controls::{entry, exit};
use nestbench_abi::vmcs::{Field16, Field32, Field64, FieldNatural};

use super::vmcs12::Vmcs12;

use nestbench_abi::cr::{CR0_PG, CR4_VMXE, EFER_LMA, EFER_LME};

/// The four VMCS fields of one guest segment register.
#[derive(Clone, Copy)]
struct SegFields {
    selector: Field16,
    base: FieldNatural,
    limit: Field32,
    access: Field32,
}

const fn seg(selector: Field16, base: FieldNatural, limit: Field32, access: Field32) -> SegFields {
    SegFields { selector, base, limit, access }
}

/// ES, CS, SS, DS, FS, GS, LDTR, TR, in that order.
const GUEST_SEGMENTS: [SegFields; 8] = [
    seg(Field16::GuestEsSelector, FieldNatural::GuestEsBase, Field32::GuestEsLimit, Field32::GuestEsAccessRights),
    seg(Field16::GuestCsSelector, FieldNatural::GuestCsBase, Field32::GuestCsLimit, Field32::GuestCsAccessRights),
    seg(Field16::GuestSsSelector, FieldNatural::GuestSsBase, Field32::GuestSsLimit, Field32::GuestSsAccessRights),
    seg(Field16::GuestDsSelector, FieldNatural::GuestDsBase, Field32::GuestDsLimit, Field32::GuestDsAccessRights),
    seg(Field16::GuestFsSelector, FieldNatural::GuestFsBase, Field32::GuestFsLimit, Field32::GuestFsAccessRights),
    seg(Field16::GuestGsSelector, FieldNatural::GuestGsBase, Field32::GuestGsLimit, Field32::GuestGsAccessRights),
    seg(
        Field16::GuestLdtrSelector,
        FieldNatural::GuestLdtrBase,
        Field32::GuestLdtrLimit,
        Field32::GuestLdtrAccessRights,
    ),
    seg(Field16::GuestTrSelector, FieldNatural::GuestTrBase, Field32::GuestTrLimit, Field32::GuestTrAccessRights),
];

fn segments_mut(s: &mut kvm_sregs) -> [&mut kvm_segment; 8] {
    [&mut s.es, &mut s.cs, &mut s.ss, &mut s.ds, &mut s.fs, &mut s.gs, &mut s.ldt, &mut s.tr]
}

/// A segment from VMCS access rights (SDM 25.4.1, Table 25-2).
#[must_use]
pub fn segment_from_ar(selector: u16, base: u64, limit: u32, ar: u32) -> kvm_segment {
    let bit = |n: u32| ((ar >> n) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector,
        type_: (ar & 0xF) as u8,
        s: bit(4),
        dpl: ((ar >> 5) & 3) as u8,
        present: bit(7),
        avl: bit(12),
        l: bit(13),
        db: bit(14),
        g: bit(15),
        unusable: bit(16),
        padding: 0,
    }
}

/// VMCS access rights of a segment (the inverse of [`segment_from_ar`]).
#[must_use]
pub fn ar_from_segment(s: &kvm_segment) -> u32 {
    u32::from(s.type_ & 0xF)
        | u32::from(s.s & 1) << 4
        | u32::from(s.dpl & 3) << 5
        | u32::from(s.present & 1) << 7
        | u32::from(s.avl & 1) << 12
        | u32::from(s.l & 1) << 13
        | u32::from(s.db & 1) << 14
        | u32::from(s.g & 1) << 15
        | u32::from(s.unusable & 1) << 16
}

/// L2's registers at VM entry (SDM 27.3.2): RSP, RIP and RFLAGS from VMCS12; every other
/// GPR is what L1 had in its registers when it executed VMLAUNCH/VMRESUME.
#[must_use]
pub fn guest_regs(v: &Vmcs12<'_>, l1: &kvm_regs) -> kvm_regs {
    kvm_regs {
        rsp: v.read(FieldNatural::GuestRsp.encoding()),
        rip: v.read(FieldNatural::GuestRip.encoding()),
        rflags: v.read(FieldNatural::GuestRflags.encoding()),
        ..*l1
    }
}

/// L2's special registers at VM entry (SDM 27.3.2.1-27.3.2.2), starting from `base` (the
/// vCPU's current ones, for the fields VMX leaves alone). CR4.VMXE is dropped: the guest
/// must set it in VMCS12 (the CR4 fixed-0 bit), but it means nothing to L2, and KVM refuses
/// it on a host without VMX. `l1_efer` is L1's EFER, which the entry keeps except for
/// LMA/LME when "load IA32_EFER" is 0.
#[must_use]
pub fn guest_sregs(v: &Vmcs12<'_>, base: &kvm_sregs, l1_efer: u64) -> kvm_sregs {
    let mut s = *base;
    for (dst, f) in segments_mut(&mut s).into_iter().zip(GUEST_SEGMENTS) {
        *dst = segment_from_ar(
            v.read(f.selector.encoding()) as u16,
            v.read(f.base.encoding()),
            v.read(f.limit.encoding()) as u32,
            v.read(f.access.encoding()) as u32,
        );
    }
    s.gdt.base = v.read(FieldNatural::GuestGdtrBase.encoding());
    s.gdt.limit = v.read(Field32::GuestGdtrLimit.encoding()) as u16;
    s.idt.base = v.read(FieldNatural::GuestIdtrBase.encoding());
    s.idt.limit = v.read(Field32::GuestIdtrLimit.encoding()) as u16;
    s.cr0 = v.read(FieldNatural::GuestCr0.encoding());
    s.cr3 = v.read(FieldNatural::GuestCr3.encoding());
    s.cr4 = v.read(FieldNatural::GuestCr4.encoding()) & !CR4_VMXE;
    let controls = v.read(Field32::VmEntryControls.encoding()) as u32;
    s.efer = if controls & entry::LOAD_EFER != 0 {
        v.read(Field64::GuestIa32Efer.encoding())
    } else {
        // 27.3.2.1: "EFER.LMA is loaded with the setting of the IA-32e mode guest
        // VM-entry control" and EFER.LME too if CR0.PG is 1.
        let ia32e = controls & entry::IA32E_MODE_GUEST != 0;
        let lma = if ia32e { EFER_LMA } else { 0 };
        let lme = if ia32e && s.cr0 & CR0_PG != 0 { EFER_LME } else { 0 };
        (l1_efer & !(EFER_LMA | EFER_LME)) | lma | lme
    };
    s
}

/// Save L2's state into VMCS12's guest-state area at VM exit (SDM 28.3): RIP (as the exit
/// presents it), RSP, RFLAGS, control registers (CR4.VMXE as VMCS12 had it), segments,
/// GDTR/IDTR, EFER when "save IA32_EFER", and the activity state: HLT when L2 never left it
/// (`halted`), else active.
pub fn save_guest(v: &Vmcs12<'_>, regs: &kvm_regs, rip: u64, s: &kvm_sregs, halted: bool) {
    v.set(FieldNatural::GuestRip.encoding(), rip);
    v.set(FieldNatural::GuestRsp.encoding(), regs.rsp);
    v.set(FieldNatural::GuestRflags.encoding(), regs.rflags);
    v.set(FieldNatural::GuestCr0.encoding(), s.cr0);
    v.set(FieldNatural::GuestCr3.encoding(), s.cr3);
    let old_cr4 = v.read(FieldNatural::GuestCr4.encoding());
    v.set(FieldNatural::GuestCr4.encoding(), s.cr4 | (old_cr4 & CR4_VMXE));
    let segs = [&s.es, &s.cs, &s.ss, &s.ds, &s.fs, &s.gs, &s.ldt, &s.tr];
    for (seg, f) in segs.into_iter().zip(GUEST_SEGMENTS) {
        v.set(f.selector.encoding(), u64::from(seg.selector));
        v.set(f.base.encoding(), seg.base);
        v.set(f.limit.encoding(), u64::from(seg.limit));
        v.set(f.access.encoding(), u64::from(ar_from_segment(seg)));
    }
    v.set(FieldNatural::GuestGdtrBase.encoding(), s.gdt.base);
    v.set(Field32::GuestGdtrLimit.encoding(), u64::from(s.gdt.limit));
    v.set(FieldNatural::GuestIdtrBase.encoding(), s.idt.base);
    v.set(Field32::GuestIdtrLimit.encoding(), u64::from(s.idt.limit));
    if v.read(Field32::VmExitControls.encoding()) as u32 & exit::SAVE_EFER != 0 {
        v.set(Field64::GuestIa32Efer.encoding(), s.efer);
    }
    v.set(Field32::GuestActivityState.encoding(), u64::from(halted));
}

/// The exit-information fields of a VM exit (SDM 28.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit reason (full 32 bits).
    pub reason: u32,
    /// Exit qualification.
    pub qualification: u64,
    /// VM-exit instruction length (0 where the SDM leaves it undefined).
    pub insn_len: u32,
    /// VM-exit instruction information.
    pub insn_info: u32,
    /// Guest-linear address (INS/OUTS, EPT violations).
    pub guest_linear: u64,
    /// Guest-physical address (EPT violations and misconfigurations, SDM 28.2.1).
    pub guest_physical: u64,
}

/// Write the exit-information fields (SDM 28.2.1-28.2.5). No event was being delivered
/// and no exception caused the exit, so the interruption and IDT-vectoring fields are
/// invalid (bit 31 clear).
pub fn write_exit_info(v: &Vmcs12<'_>, info: &ExitInfo) {
    v.set(Field32::VmExitReason.encoding(), u64::from(info.reason));
    v.set(FieldNatural::ExitQualification.encoding(), info.qualification);
    v.set(Field32::VmExitInstructionLength.encoding(), u64::from(info.insn_len));
    v.set(Field32::VmExitInstructionInfo.encoding(), u64::from(info.insn_info));
    v.set(FieldNatural::GuestLinearAddress.encoding(), info.guest_linear);
    v.set(Field64::GuestPhysicalAddress.encoding(), info.guest_physical);
    v.set(Field32::VmExitInterruptionInfo.encoding(), 0);
    v.set(Field32::IdtVectoringInfo.encoding(), 0);
}

/// L1's registers after a VM exit (SDM 28.5.3): RSP and RIP from the host-state area,
/// RFLAGS = 2 (every bit cleared but the reserved bit 1), every other GPR as L2 left it.
#[must_use]
pub fn host_regs(v: &Vmcs12<'_>, l2: &kvm_regs) -> kvm_regs {
    kvm_regs {
        rsp: v.read(FieldNatural::HostRsp.encoding()),
        rip: v.read(FieldNatural::HostRip.encoding()),
        rflags: 2,
        ..*l2
    }
}

/// L1's special registers after a VM exit (SDM 28.5.1-28.5.2), from `l1` (what L1 had at
/// its VM entry, for what VM exit leaves alone). Segment registers are loaded with the
/// fixed attributes of 28.5.2; GDTR and IDTR limits become 0xFFFF. CR4.VMXE is dropped for
/// the reason of [`guest_sregs`].
#[must_use]
pub fn host_sregs(v: &Vmcs12<'_>, l1: &kvm_sregs) -> kvm_sregs {
    let mut s = *l1;
    let long = v.read(Field32::VmExitControls.encoding()) as u32 & exit::HOST_ADDRESS_SPACE_SIZE != 0;
    s.cr0 = v.read(FieldNatural::HostCr0.encoding());
    s.cr3 = v.read(FieldNatural::HostCr3.encoding());
    s.cr4 = v.read(FieldNatural::HostCr4.encoding()) & !CR4_VMXE;
    let data = |selector: u64, base: u64| kvm_segment {
        base,
        limit: 0xFFFF_FFFF,
        selector: selector as u16,
        type_: 3,
        s: 1,
        dpl: 0,
        present: 1,
        avl: 0,
        l: 0,
        db: 1,
        g: 1,
        unusable: u8::from(selector & !7 == 0),
        padding: 0,
    };
    s.cs = kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector: v.read(Field16::HostCsSelector.encoding()) as u16,
        type_: 11,
        s: 1,
        dpl: 0,
        present: 1,
        avl: 0,
        l: u8::from(long),
        db: u8::from(!long),
        g: 1,
        unusable: 0,
        padding: 0,
    };
    s.ss = data(v.read(Field16::HostSsSelector.encoding()), 0);
    s.ds = data(v.read(Field16::HostDsSelector.encoding()), 0);
    s.es = data(v.read(Field16::HostEsSelector.encoding()), 0);
    s.fs = data(v.read(Field16::HostFsSelector.encoding()), v.read(FieldNatural::HostFsBase.encoding()));
    s.gs = data(v.read(Field16::HostGsSelector.encoding()), v.read(FieldNatural::HostGsBase.encoding()));
    s.tr = kvm_segment {
        base: v.read(FieldNatural::HostTrBase.encoding()),
        limit: 0x67,
        selector: v.read(Field16::HostTrSelector.encoding()) as u16,
        type_: 11,
        present: 1,
        ..Default::default()
    };
    s.ldt = kvm_segment { unusable: 1, ..Default::default() };
    s.gdt.base = v.read(FieldNatural::HostGdtrBase.encoding());
    s.gdt.limit = 0xFFFF;
    s.idt.base = v.read(FieldNatural::HostIdtrBase.encoding());
    s.idt.limit = 0xFFFF;
    s.efer = if v.read(Field32::VmExitControls.encoding()) as u32 & exit::LOAD_EFER != 0 {
        v.read(Field64::HostIa32Efer.encoding())
    } else {
        // 28.5.1: LMA and LME are loaded with the "host address-space size" control.
        (l1.efer & !(EFER_LMA | EFER_LME)) | if long { EFER_LMA | EFER_LME } else { 0 }
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestMem;

    #[test]
    fn access_rights_round_trip() {
        for ar in [0xA09B_u32, 0xC093, 0x8B, 0x1_0000, 0xA0FB, 0xC0F3] {
            let s = segment_from_ar(0x1B, 0x1000, 0xFFFF_FFFF, ar);
            assert_eq!(ar_from_segment(&s), ar, "{ar:#x}");
        }
        let cs = segment_from_ar(0x23, 0, 0xFFFF_FFFF, 0xA0FB);
        assert_eq!((cs.type_, cs.s, cs.dpl, cs.present, cs.l, cs.db, cs.g), (11, 1, 3, 1, 1, 0, 1));
    }

    #[test]
    fn entry_then_exit_round_trips_guest_state_and_loads_host_state() {
        let mem = GuestMem::new(0x4000).unwrap();
        let v = Vmcs12::new(&mem, 0x1000).unwrap();
        v.set(FieldNatural::GuestRip.encoding(), 0x40_0010);
        v.set(FieldNatural::GuestRsp.encoding(), 0x3F_0000);
        v.set(FieldNatural::GuestRflags.encoding(), 0x3202);
        v.set(FieldNatural::GuestCr0.encoding(), 0x8000_0031);
        v.set(FieldNatural::GuestCr4.encoding(), 0x2020);
        v.set(Field16::GuestCsSelector.encoding(), 0x23);
        v.set(Field32::GuestCsAccessRights.encoding(), 0xA0FB);
        v.set(Field32::GuestCsLimit.encoding(), 0xFFFF_FFFF);
        v.set(Field32::GuestLdtrAccessRights.encoding(), 0x1_0000);
        v.set(Field32::VmEntryControls.encoding(), u64::from(entry::IA32E_MODE_GUEST));
        v.set(Field32::VmExitControls.encoding(), u64::from(exit::HOST_ADDRESS_SPACE_SIZE | exit::SAVE_EFER));
        v.set(FieldNatural::HostRip.encoding(), 0x10_2000);
        v.set(FieldNatural::HostRsp.encoding(), 0x20_0000);
        v.set(Field16::HostCsSelector.encoding(), 0x08);
        v.set(Field16::HostSsSelector.encoding(), 0x10);
        v.set(Field16::HostTrSelector.encoding(), 0x18);
        v.set(FieldNatural::HostCr4.encoding(), 0x2020);

        let l1_regs = kvm_regs { rax: 7, rbx: 8, rip: 0x10_1234, rsp: 0x1000, rflags: 0x46, ..Default::default() };
        let g = guest_regs(&v, &l1_regs);
        assert_eq!((g.rax, g.rbx, g.rip, g.rsp, g.rflags), (7, 8, 0x40_0010, 0x3F_0000, 0x3202));
        let gs = guest_sregs(&v, &kvm_sregs::default(), 0xD01);
        assert_eq!(gs.cr4, 0x20, "VMXE dropped for VM2");
        assert_eq!(gs.efer, 0xD01 & !EFER_LME | EFER_LMA | EFER_LME, "IA-32e guest with paging: LMA and LME");
        assert_eq!(gs.cs.l, 1);
        assert_eq!(gs.ldt.unusable, 1);

        save_guest(&v, &g, 0x40_0010, &gs, false);
        assert_eq!(v.read(FieldNatural::GuestCr4.encoding()), 0x2020, "VMXE as VMCS12 had it");
        assert_eq!(v.read(Field32::GuestCsAccessRights.encoding()), 0xA0FB);
        assert_eq!(v.read(Field64::GuestIa32Efer.encoding()), gs.efer);

        let h = host_regs(&v, &kvm_regs { rax: 0xAA, ..g });
        assert_eq!((h.rax, h.rip, h.rsp, h.rflags), (0xAA, 0x10_2000, 0x20_0000, 2));
        let hs = host_sregs(&v, &kvm_sregs { efer: 0x500, ..Default::default() });
        assert_eq!((hs.cs.selector, hs.cs.l, hs.cs.db, hs.cs.type_), (0x08, 1, 0, 11));
        assert_eq!((hs.ds.unusable, hs.ss.unusable), (1, 0), "null DS is unusable, SS 0x10 is not");
        assert_eq!((hs.tr.selector, hs.tr.limit, hs.tr.type_), (0x18, 0x67, 11));
        assert_eq!((hs.gdt.limit, hs.idt.limit), (0xFFFF, 0xFFFF));
        assert_eq!(hs.efer, 0x500);
        assert_eq!(hs.cr4, 0x20);
    }
}
