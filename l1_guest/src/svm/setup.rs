//! What L1 sets up to run L2 with SVM: EFER.SVME and the host save area (APM Vol. 2, 15.4
//! "Enabling SVM", 15.30.4 "VM_HSAVE_PA MSR"), the permission maps (15.10.1 IOPM, 15.11
//! MSRPM) and the VMCB's contents ([`fill`]: control area, 15.5-15.13; state-save area,
//! Appendix B Table B-2), chosen to match the VMX VMCS of `crate::vmx::setup` exit for exit.

use nestbench_abi::cr;
use nestbench_abi::svm::{self, PAT_DEFAULT, intercept3, intercept4, vmcb as off};

use super::vmcb::{Segment, Vmcb};
use crate::vmx::setup::{DR7_INIT, GUEST_CR0, GUEST_CR4, RFLAGS_IOPL3, RFLAGS_RESERVED1, ar, sel};

/// What [`fill`] puts in the VMCB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmcbConfig {
    /// L2's CPL (0 or 3).
    pub cpl: u8,
    /// L2's CR3.
    pub cr3: u64,
    /// GDTR base and limit.
    pub gdt: (u64, u32),
    /// TR base and limit.
    pub tss: (u64, u32),
    /// Initial RSP.
    pub rsp: u64,
    /// Entry point.
    pub rip: u64,
    /// NPT12's root (N_CR3).
    pub ncr3: u64,
    /// The IOPM (12 KiB, physically contiguous).
    pub iopm: u64,
    /// The MSRPM (8 KiB, physically contiguous).
    pub msrpm: u64,
    /// L2's ASID (not 0: APM 15.5.1 makes ASID 0 a VMRUN consistency failure).
    pub asid: u32,
}

/// The intercepts of vector 3 L1 sets: what the VMX VMCS makes exit (HLT exiting,
/// unconditional I/O exiting, MSR bitmaps, CPUID and triple fault always exit on VMX).
pub const INTERCEPT3: u32 =
    intercept3::CPUID | intercept3::HLT | intercept3::IOIO_PROT | intercept3::MSR_PROT | intercept3::SHUTDOWN;
/// The intercepts of vector 4: VMRUN (required, APM 15.5.1) and VMMCALL (VMCALL exits
/// unconditionally on VMX).
pub const INTERCEPT4: u32 = intercept4::VMRUN | intercept4::VMMCALL;

/// Fill a zeroed VMCB for L2's first VMRUN.
pub fn fill(v: &mut Vmcb, c: &VmcbConfig) {
    // Control area (APM 15.5-15.13, Table B-1).
    v.write32(off::INTERCEPT3, INTERCEPT3);
    v.write32(off::INTERCEPT4, INTERCEPT4);
    v.write64(off::IOPM_BASE_PA, c.iopm);
    v.write64(off::MSRPM_BASE_PA, c.msrpm);
    v.write32(off::GUEST_ASID, c.asid);
    // 15.25.3: nested paging on, N_CR3 = NPT12's PML4.
    v.write64(off::NP_ENABLE, 1);
    v.write64(off::N_CR3, c.ncr3);
    // State-save area (Table B-2), as the VMX guest-state area of crate::vmx::setup.
    let user = c.cpl == 3;
    let (cs, data) = if user { (sel::CODE3, sel::DATA3) } else { (sel::CODE0, sel::DATA0) };
    let dpl = if user { 3 } else { 0 };
    let seg = |selector, access_rights| Segment {
        selector,
        attrib: svm::attrib_of_access_rights(access_rights),
        limit: 0xFFFF_FFFF,
        base: 0,
    };
    v.write_segment(off::CS, seg(cs, ar::code64(dpl)));
    for s in [off::SS, off::DS, off::ES, off::FS, off::GS] {
        v.write_segment(s, seg(data, ar::data(dpl)));
    }
    // TR and LDTR are loaded by VMLOAD (15.5.2), which L1 runs before every VMRUN.
    v.write_segment(
        off::TR,
        Segment {
            selector: sel::TSS,
            attrib: svm::attrib_of_access_rights(ar::TSS_BUSY),
            limit: c.tss.1,
            base: c.tss.0,
        },
    );
    v.write_segment(off::LDTR, Segment { selector: 0, attrib: 0, limit: 0, base: 0 });
    v.write_segment(off::GDTR, Segment { selector: 0, attrib: 0, limit: c.gdt.1, base: c.gdt.0 });
    // No IDT: any L2 exception escalates to a shutdown (#VMEXIT SHUTDOWN), as VMX's triple
    // fault.
    v.write_segment(off::IDTR, Segment { selector: 0, attrib: 0, limit: 0, base: 0 });
    v.write8(off::CPL, dpl);
    // 15.5.1: EFER.SVME must be 1 in the guest's EFER too.
    v.write64(off::EFER, cr::EFER_LME | cr::EFER_LMA | cr::EFER_SVME);
    v.write64(off::CR0, GUEST_CR0);
    v.write64(off::CR3, c.cr3);
    v.write64(off::CR4, GUEST_CR4);
    v.write64(off::DR7, DR7_INIT);
    v.write64(off::DR6, 0xFFFF_0FF0);
    v.write64(off::RFLAGS, RFLAGS_RESERVED1 | if user { RFLAGS_IOPL3 } else { 0 });
    v.write64(off::RIP, c.rip);
    v.write64(off::RSP, c.rsp);
    v.write64(off::G_PAT, PAT_DEFAULT);
}

/// L1's MSRPM, built at compile time (no 8 KiB on L1's stack), as VMX's MSR bitmap
/// (`crate::vmx::msr_bitmap`): reads and writes of every MSR L1 emulates
/// ([`crate::exits::rdmsr::INTERCEPTED`]) intercept, nothing else does.
pub static MSRPM: [u8; svm::MSRPM_BYTES] = msrpm();

/// [`MSRPM`]'s contents.
#[must_use]
pub const fn msrpm() -> [u8; svm::MSRPM_BYTES] {
    let mut b = [0u8; svm::MSRPM_BYTES];
    let msrs = crate::exits::rdmsr::INTERCEPTED;
    let mut i = 0;
    while i < msrs.len() {
        let mut w = 0;
        while w < 2 {
            if let Some((byte, bit)) = svm::msrpm_position(msrs[i], w == 1) {
                b[byte] |= 1 << bit;
            }
            w += 1;
        }
        i += 1;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svm::vmcb::page;

    #[test]
    fn the_vmcb_passes_vmruns_consistency_checks_and_intercepts_what_vmx_exits_on() {
        let (_p, mut v) = page::fresh();
        let c = VmcbConfig {
            cpl: 0,
            cr3: 0x30_0000,
            gdt: (0x30_5000, 55),
            tss: (0x30_6000, 0x2068),
            rsp: 0x3F_0000,
            rip: 0x40_0010,
            ncr3: 0x1F0_0000,
            iopm: 0x1E0_0000,
            msrpm: 0x1E3_0000,
            asid: 1,
        };
        fill(&mut v, &c);
        // APM 15.5.1's checks L1's VMCB could fail.
        assert_ne!(v.read64(off::EFER) & cr::EFER_SVME, 0, "EFER.SVME");
        assert_ne!(v.read32(off::INTERCEPT4) & intercept4::VMRUN, 0, "VMRUN intercept");
        assert_ne!(v.read32(off::GUEST_ASID), 0, "ASID");
        assert_eq!(v.read64(off::CR0) >> 32, 0);
        assert_ne!(v.read64(off::CR4) & cr::CR4_PAE, 0, "long mode needs PAE");
        let cs = v.segment(off::CS);
        assert_eq!(cs.attrib & (1 << 9 | 1 << 10), 1 << 9, "CS.L without CS.D");
        assert_eq!(v.read8(off::CPL), 0);
        assert_eq!(v.read64(off::RFLAGS), 2);
        assert_eq!((v.read64(off::N_CR3), v.read64(off::NP_ENABLE)), (0x1F0_0000, 1));
        assert_eq!(v.segment(off::TR).attrib, 0x8B, "busy 64-bit TSS, present");
        let user = VmcbConfig { cpl: 3, ..c };
        fill(&mut v, &user);
        assert_eq!((v.segment(off::CS).selector, v.read8(off::CPL)), (sel::CODE3, 3));
        assert_eq!(v.read64(off::RFLAGS), 0x3002, "IOPL 3 at CPL 3, as on VMX");
    }

    #[test]
    fn the_msrpm_intercepts_exactly_the_emulated_msrs_both_ways() {
        let b = msrpm();
        assert_eq!(b, MSRPM);
        let n = crate::exits::rdmsr::INTERCEPTED.len() as u32;
        assert_eq!(b.iter().map(|x| x.count_ones()).sum::<u32>(), 2 * n, "every emulated MSR is in a range");
        for m in crate::exits::rdmsr::INTERCEPTED {
            for write in [false, true] {
                let (byte, bit) = svm::msrpm_position(m, write).unwrap();
                assert_ne!(b[byte] & 1 << bit, 0, "{m:#x} write={write}");
            }
        }
    }
}
