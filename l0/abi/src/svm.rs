//! AMD SVM architectural constants that L0 and L1 agree on (AMD64 Architecture Programmer's
//! Manual Vol. 2, chapter 15 "Secure Virtual Machine", and Appendix B "Layout of VMCB",
//! Appendix C "SVM Intercept Exit Codes"): exit codes with the APM's and the kernel's names,
//! the VMCB offsets L1 uses, intercept bits, the IOIO and nested-page-fault EXITINFO1
//! encodings and the CPUID feature bits.
//!
//! Names are the APM's, checked against the kernel (`arch/x86/include/uapi/asm/svm.h`,
//! `arch/x86/include/asm/svm.h`) and Bochs (`cpu/svm.h`). Values from another level are
//! never trusted: [`ExitCode::from_raw`] returns `None` for a code this ABI does not name.

/// The exit-code table, one row per code: variant = EXITCODE, the APM's name (Appendix C),
/// the kernel's name (`SVM_EXIT_REASONS`, which the `kvm_exit` and `kvm_nested_vmexit*`
/// tracepoints and `perf kvm stat` print on AMD hosts).
macro_rules! exit_codes {
    ($(#[$meta:meta])* pub enum $name:ident: $repr:ty {
        $($variant:ident = $value:expr, $apm:literal, $kernel:literal;)*
    }) => {
        abi_enum! {
            $(#[$meta])*
            pub enum $name: $repr {
                $(#[doc = $apm] $variant = $value,)*
            }
        }

        impl $name {
            /// Every code in the table, in table order.
            pub const ALL: [Self; [$(Self::$variant),*].len()] = [$(Self::$variant),*];

            /// The APM's name (Appendix C).
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $apm,)*
                }
            }

            /// The kernel's name (`SVM_EXIT_REASONS` in arch/x86/include/uapi/asm/svm.h):
            /// what every nestbench output calls an SVM exit.
            #[must_use]
            pub const fn kernel_name(self) -> &'static str {
                match self {
                    $(Self::$variant => $kernel,)*
                }
            }
        }
    };
}

exit_codes! {
    /// EXITCODE of a #VMEXIT (APM Appendix C), the low 32 bits. VMEXIT_INVALID is -1: the
    /// 64-bit field is all ones on hardware and Bochs, `0x00000000ffffffff` where QEMU TCG
    /// writes it, so codes are compared as 32 bits.
    pub enum ExitCode: u32 {
        ReadCr3 = 0x003, "VMEXIT_CR3_READ", "read_cr3";
        WriteCr3 = 0x013, "VMEXIT_CR3_WRITE", "write_cr3";
        ExcpPf = 0x04e, "VMEXIT_EXCP14", "PF excp";
        Intr = 0x060, "VMEXIT_INTR", "interrupt";
        Nmi = 0x061, "VMEXIT_NMI", "nmi";
        Vintr = 0x064, "VMEXIT_VINTR", "vintr";
        Cpuid = 0x072, "VMEXIT_CPUID", "cpuid";
        Hlt = 0x078, "VMEXIT_HLT", "hlt";
        Ioio = 0x07b, "VMEXIT_IOIO", "io";
        Msr = 0x07c, "VMEXIT_MSR", "msr";
        Shutdown = 0x07f, "VMEXIT_SHUTDOWN", "shutdown";
        Vmrun = 0x080, "VMEXIT_VMRUN", "vmrun";
        Vmmcall = 0x081, "VMEXIT_VMMCALL", "hypercall";
        Vmload = 0x082, "VMEXIT_VMLOAD", "vmload";
        Vmsave = 0x083, "VMEXIT_VMSAVE", "vmsave";
        Npf = 0x400, "VMEXIT_NPF", "npf";
        Invalid = 0xFFFF_FFFF, "VMEXIT_INVALID", "invalid_guest_state";
    }
}

/// The name of a raw EXITCODE in every output: the kernel's, `exit code 0xN` for one this
/// ABI does not name.
#[must_use]
pub fn code_name(code: u32) -> NameOf {
    NameOf(code)
}

/// [`code_name`]'s value: formats as the kernel's name of the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameOf(u32);

impl core::fmt::Display for NameOf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match ExitCode::from_raw(self.0) {
            Some(c) => f.write_str(c.kernel_name()),
            None => write!(f, "exit code {:#x}", self.0),
        }
    }
}

/// The SVM exit code of a vendor-neutral exit kind, numbered as the VMX basic exit reason of
/// the same event ([`crate::vmx::ExitReason`]): how L1's per-kind counts are named on SVM.
/// RDMSR and WRMSR are both VMEXIT_MSR (EXITINFO1 0 or 1, APM 15.11).
#[must_use]
pub const fn code_of_kind(kind: u16) -> Option<ExitCode> {
    use crate::vmx::ExitReason as R;
    Some(match R::from_raw(kind) {
        Some(R::IoInstruction) => ExitCode::Ioio,
        Some(R::Hlt) => ExitCode::Hlt,
        Some(R::Cpuid) => ExitCode::Cpuid,
        Some(R::Rdmsr | R::Wrmsr) => ExitCode::Msr,
        Some(R::Vmcall) => ExitCode::Vmmcall,
        Some(R::EptViolation) => ExitCode::Npf,
        Some(R::TripleFault) => ExitCode::Shutdown,
        Some(R::InterruptWindow) => ExitCode::Vintr,
        Some(R::EntryFailureGuestState) => ExitCode::Invalid,
        _ => return None,
    })
}

/// Offsets into the VMCB (APM Appendix B, Table B-1 "VMCB Layout, Control Area" and Table
/// B-2 "VMCB Layout, State Save Area", which starts at 0x400).
pub mod vmcb {
    /// Intercepts of CR reads (bits 15:0) and writes (bits 31:16).
    pub const INTERCEPT_CR: usize = 0x000;
    /// Intercepts of exceptions, one bit per vector.
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    /// Intercept vector 3 ([`super::intercept3`]).
    pub const INTERCEPT3: usize = 0x00C;
    /// Intercept vector 4 ([`super::intercept4`]).
    pub const INTERCEPT4: usize = 0x010;
    /// IOPM_BASE_PA: physical base of the 12 KiB I/O permissions map.
    pub const IOPM_BASE_PA: usize = 0x040;
    /// MSRPM_BASE_PA: physical base of the 8 KiB MSR permissions map.
    pub const MSRPM_BASE_PA: usize = 0x048;
    /// TSC_OFFSET.
    pub const TSC_OFFSET: usize = 0x050;
    /// Guest ASID (32 bits).
    pub const GUEST_ASID: usize = 0x058;
    /// TLB_CONTROL (8 bits).
    pub const TLB_CONTROL: usize = 0x05C;
    /// Virtual interrupt control (V_TPR, V_IRQ, V_INTR_MASKING, ...).
    pub const VINTR: usize = 0x060;
    /// Guest interrupt shadow (bit 0).
    pub const INTERRUPT_SHADOW: usize = 0x068;
    /// EXITCODE.
    pub const EXITCODE: usize = 0x070;
    /// EXITINFO1.
    pub const EXITINFO1: usize = 0x078;
    /// EXITINFO2.
    pub const EXITINFO2: usize = 0x080;
    /// EXITINTINFO.
    pub const EXITINTINFO: usize = 0x088;
    /// NP_ENABLE (bit 0).
    pub const NP_ENABLE: usize = 0x090;
    /// EVENTINJ.
    pub const EVENTINJ: usize = 0x0A8;
    /// N_CR3: the nested page table's root.
    pub const N_CR3: usize = 0x0B0;
    /// VMCB clean bits (32 bits, APM 15.15.3).
    pub const CLEAN: usize = 0x0C0;
    /// nRIP: the next sequential instruction pointer (NRIP_SAVE, APM 15.7.1).
    pub const NEXT_RIP: usize = 0x0C8;
    /// The state-save area.
    pub const SAVE: usize = 0x400;
    /// ES (16 bytes each: selector u16, attrib u16, limit u32, base u64).
    pub const ES: usize = 0x400;
    /// CS.
    pub const CS: usize = 0x410;
    /// SS.
    pub const SS: usize = 0x420;
    /// DS.
    pub const DS: usize = 0x430;
    /// FS.
    pub const FS: usize = 0x440;
    /// GS.
    pub const GS: usize = 0x450;
    /// GDTR (limit at +4, base at +8).
    pub const GDTR: usize = 0x460;
    /// LDTR.
    pub const LDTR: usize = 0x470;
    /// IDTR.
    pub const IDTR: usize = 0x480;
    /// TR.
    pub const TR: usize = 0x490;
    /// CPL (8 bits).
    pub const CPL: usize = 0x4CB;
    /// EFER.
    pub const EFER: usize = 0x4D0;
    /// CR4.
    pub const CR4: usize = 0x548;
    /// CR3.
    pub const CR3: usize = 0x550;
    /// CR0.
    pub const CR0: usize = 0x558;
    /// DR7.
    pub const DR7: usize = 0x560;
    /// DR6.
    pub const DR6: usize = 0x568;
    /// RFLAGS.
    pub const RFLAGS: usize = 0x570;
    /// RIP.
    pub const RIP: usize = 0x578;
    /// RSP.
    pub const RSP: usize = 0x5D8;
    /// RAX.
    pub const RAX: usize = 0x5F8;
    /// G_PAT: the guest's PAT when nested paging is on.
    pub const G_PAT: usize = 0x668;
}

/// The VMCB's virtual-interrupt control (offset 0x060, APM Table B-1, 15.21.4).
pub mod vintr {
    /// V_IRQ: a virtual interrupt is pending.
    pub const V_IRQ: u64 = 1 << 8;
    /// V_IGN_TPR: the pending virtual interrupt ignores V_TPR.
    pub const V_IGN_TPR: u64 = 1 << 20;
}

/// Intercept vector 3 (VMCB offset 0x00C), APM Table B-1.
pub mod intercept3 {
    /// Physical maskable interrupt.
    pub const INTR: u32 = 1 << 0;
    /// Virtual interrupt (VINTR).
    pub const VINTR: u32 = 1 << 4;
    /// CPUID.
    pub const CPUID: u32 = 1 << 18;
    /// HLT.
    pub const HLT: u32 = 1 << 24;
    /// IN/OUT accesses to the ports the IOPM selects.
    pub const IOIO_PROT: u32 = 1 << 27;
    /// RDMSR/WRMSR accesses to the MSRs the MSRPM selects.
    pub const MSR_PROT: u32 = 1 << 28;
    /// Shutdown (a triple fault in the guest).
    pub const SHUTDOWN: u32 = 1 << 31;
}

/// Intercept vector 4 (VMCB offset 0x010), APM Table B-1.
pub mod intercept4 {
    /// VMRUN: must be set, or VMRUN fails with VMEXIT_INVALID (APM 15.5.1).
    pub const VMRUN: u32 = 1 << 0;
    /// VMMCALL.
    pub const VMMCALL: u32 = 1 << 1;
    /// VMLOAD.
    pub const VMLOAD: u32 = 1 << 2;
    /// VMSAVE.
    pub const VMSAVE: u32 = 1 << 3;
    /// STGI.
    pub const STGI: u32 = 1 << 4;
    /// CLGI.
    pub const CLGI: u32 = 1 << 5;
    /// SKINIT.
    pub const SKINIT: u32 = 1 << 6;
}

/// EXITINFO1 of an IOIO intercept (APM 15.10.2, Figure 15-2); EXITINFO2 holds the rIP of
/// the next instruction.
pub mod ioio {
    /// Direction: 1 = IN (read from the port), 0 = OUT.
    pub const TYPE_IN: u64 = 1 << 0;
    /// String instruction (INS/OUTS).
    pub const STR: u64 = 1 << 2;
    /// REP prefix.
    pub const REP: u64 = 1 << 3;
    /// 8-bit operand.
    pub const SZ8: u64 = 1 << 4;
    /// 16-bit operand.
    pub const SZ16: u64 = 1 << 5;
    /// 32-bit operand.
    pub const SZ32: u64 = 1 << 6;
    /// 16-bit address size.
    pub const A16: u64 = 1 << 7;
    /// 32-bit address size.
    pub const A32: u64 = 1 << 8;
    /// 64-bit address size.
    pub const A64: u64 = 1 << 9;
    /// The port, bits 31:16.
    pub const PORT_SHIFT: u32 = 16;

    /// The operand size in bytes (1, 2 or 4; 0 when no size bit is set).
    #[must_use]
    pub const fn size(info1: u64) -> u8 {
        if info1 & SZ32 != 0 {
            4
        } else if info1 & SZ16 != 0 {
            2
        } else if info1 & SZ8 != 0 {
            1
        } else {
            0
        }
    }

    /// The port.
    #[must_use]
    pub const fn port(info1: u64) -> u16 {
        (info1 >> PORT_SHIFT) as u16
    }
}

/// EXITINFO1 of a nested page fault: the #PF-style error code (APM 15.25.6); EXITINFO2 is the
/// faulting guest-physical address.
pub mod npf {
    /// The nested page was present (a protection fault).
    pub const P: u64 = 1 << 0;
    /// A write access.
    pub const RW: u64 = 1 << 1;
    /// A user access.
    pub const US: u64 = 1 << 2;
    /// A reserved bit was set.
    pub const RSV: u64 = 1 << 3;
    /// An instruction fetch.
    pub const ID: u64 = 1 << 4;
    /// The fault happened on the final guest-physical address.
    pub const FINAL: u64 = 1 << 32;
    /// The fault happened while walking the guest's page tables.
    pub const TABLE_WALK: u64 = 1 << 33;
}

/// CPUID 8000_000Ah: EDX feature bits (APM 15.4 / CPUID Fn8000_000A_EDX).
pub mod features {
    /// Nested paging.
    pub const NP: u32 = 1 << 0;
    /// Next-RIP save on #VMEXIT.
    pub const NRIPS: u32 = 1 << 3;
    /// VMCB clean bits.
    pub const VMCB_CLEAN: u32 = 1 << 5;
    /// TLB flush by ASID.
    pub const FLUSH_BY_ASID: u32 = 1 << 6;
    /// Decode assists.
    pub const DECODE_ASSISTS: u32 = 1 << 7;
    /// Virtualized VMLOAD/VMSAVE.
    pub const V_VMSAVE_VMLOAD: u32 = 1 << 15;
    /// Virtualized GIF.
    pub const VGIF: u32 = 1 << 16;
}

/// VM_HSAVE_PA: the physical address of the host save area VMRUN uses (APM 15.30.4).
pub const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;
/// VM_CR (APM 15.30.1): bit 4 SVMDIS.
pub const MSR_VM_CR: u32 = 0xC001_0114;
/// VM_CR.SVMDIS: SVM is disabled and EFER.SVME cannot be set.
pub const VM_CR_SVMDIS: u64 = 1 << 4;
/// The power-on PAT (APM 7.8.1), the guest PAT L1 gives L2 with nested paging.
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;
/// IOPM size: 12 KiB, one bit per port plus the bits of accesses that run past 0xFFFF
/// (APM 15.10.1).
pub const IOPM_BYTES: usize = 12 << 10;
/// MSRPM size: 8 KiB, two bits per MSR (read, write) in three 2 KiB vectors (APM 15.11).
pub const MSRPM_BYTES: usize = 8 << 10;

/// The bit of `msr`'s read (or write) intercept in the MSRPM: (byte, bit), `None` for an
/// MSR outside the three ranges (APM 15.11, Table 15-5: 0000_0000h-0000_1FFFh at byte 0,
/// C000_0000h-C000_1FFFh at 0x800, C001_0000h-C001_1FFFh at 0x1000; an MSR outside them
/// always causes a #VMEXIT when MSR_PROT is set).
#[must_use]
pub const fn msrpm_position(msr: u32, write: bool) -> Option<(usize, u8)> {
    let (n, base) = match msr {
        0..=0x1FFF => (msr, 0),
        0xC000_0000..=0xC000_1FFF => (msr - 0xC000_0000, 0x800),
        0xC001_0000..=0xC001_1FFF => (msr - 0xC001_0000, 0x1000),
        _ => return None,
    };
    let bit = n as usize * 2 + if write { 1 } else { 0 };
    Some((base + bit / 8, (bit % 8) as u8))
}

/// The VMCB segment attribute of VMX access rights `ar` (APM Appendix B, "Segment
/// attributes": attrib bits 7:0 are descriptor bits 47:40, bits 11:8 are descriptor bits
/// 55:52, which VMX keeps at access-rights bits 15:12).
#[must_use]
pub const fn attrib_of_access_rights(ar: u32) -> u16 {
    ((ar & 0xFF) | ((ar >> 4) & 0xF00)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kernel_and_invalid_is_minus_one_in_32_bits() {
        assert_eq!(ExitCode::from_raw(0x7b).map(ExitCode::kernel_name), Some("io"));
        assert_eq!(ExitCode::Vmmcall.kernel_name(), "hypercall");
        assert_eq!(ExitCode::from_raw(0x0000_0000_ffff_ffff_u64 as u32), Some(ExitCode::Invalid));
        assert_eq!(code_name(0x400).to_string(), "npf");
        assert_eq!(code_name(0x3ff).to_string(), "exit code 0x3ff");
        for (i, a) in ExitCode::ALL.iter().enumerate() {
            assert!(ExitCode::ALL[i + 1..].iter().all(|b| b.kernel_name() != a.kernel_name() && *b as u32 > *a as u32));
        }
    }

    #[test]
    fn msrpm_and_ioio_fields() {
        assert_eq!(msrpm_position(0, false), Some((0, 0)));
        assert_eq!(msrpm_position(0x10, true), Some((4, 1)));
        assert_eq!(msrpm_position(0xC000_0080, false), Some((0x800 + 0x20, 0)));
        assert_eq!(msrpm_position(0xC001_0117, true), Some((0x1000 + 0x45, 7)));
        assert_eq!(msrpm_position(0x4000_0000, false), None);
        // OUT dx, eax to port 0x80 with a 64-bit address size.
        let info = 0x80 << ioio::PORT_SHIFT | ioio::SZ32 | ioio::A64;
        assert_eq!((ioio::port(info), ioio::size(info), info & ioio::TYPE_IN), (0x80, 4, 0));
        // VMX code64 DPL0 access rights 0xA09B: attrib 0xA9B.
        assert_eq!(attrib_of_access_rights(0xA09B), 0xA9B);
        assert_eq!(code_of_kind(30), Some(ExitCode::Ioio));
        assert_eq!(code_of_kind(31), code_of_kind(32));
    }
}
