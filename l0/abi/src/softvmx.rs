//! Soft VMX: how L1 uses the VMX that nestbench's L0 provides in userspace (the `soft`
//! engine), in the spirit of Hyper-V's enlightened VMCS. L1 finds it through
//! [`crate::cpuid::FEATURE_SOFT_VMX`] in CPUID leaf 0x4000_0001.
//!
//! * **VMX instructions other than VM entry** (VMXON, VMXOFF, VMCLEAR, VMPTRLD, VMPTRST,
//!   VMREAD, VMWRITE, INVEPT) are hypercalls ([`crate::hypercall::Call`]`::Vmx`) with the
//!   operation in RDI and operands in RSI/R8/R9. L0 answers in RDI with a [`VmxResult`]
//!   word: exactly the outcome the instruction would have (VMsucceed, VMfailInvalid,
//!   VMfailValid with the VM-instruction error, which L0 also writes into VMCS12).
//! * **VMLAUNCH / VMRESUME** are a one-byte MMIO write of [`DOORBELL_LAUNCH`] or
//!   [`DOORBELL_RESUME`] to [`DOORBELL_GPA`] (`mov byte ptr [DOORBELL_GPA], imm8`). That
//!   instruction uses no register, so L0 takes L1's whole register file as L2's registers,
//!   as VM entry does on hardware (SDM 27.3: entry loads RSP, RIP and RFLAGS from the VMCS
//!   and leaves the other GPRs as they are). On failure L0 resumes L1 after the write with
//!   RFLAGS set as the instruction would (CF=1: VMfailInvalid; ZF=1: VMfailValid), so L1's
//!   code after its doorbell is the same as after a real VMLAUNCH. On a VM exit L0 puts
//!   L2's GPRs into L1's registers and resumes L1 at HOST_RIP with HOST_RSP, so one exit
//!   stub serves both backends.
//! * **Capability MSRs** (IA32_VMX_BASIC 0x480 ..) are plain RDMSRs: L0 filters them to
//!   userspace and answers with what it honours.
//! * **VMCS shadowing** (SDM 25.10): L0 publishes a VMREAD bitmap and a VMWRITE bitmap at
//!   [`READ_BITMAP_GPA`] / [`WRITE_BITMAP_GPA`] (one bit per encoding bits 14:0, SDM
//!   25.6.15). A field whose bit is clear is read or written directly in the current VMCS12
//!   page at [`crate::vmcs12::offset`], without a trap; any other field goes through the
//!   hypercall.

/// The doorbell page: inside L1's identity map, above any L1 memory, with no memslot,
/// so a write to it is an MMIO exit (and reachable with a sign-extended 32-bit address).
pub const DOORBELL_GPA: u64 = 0x3FF0_0000;
/// Doorbell value: VMLAUNCH.
pub const DOORBELL_LAUNCH: u8 = 1;
/// Doorbell value: VMRESUME.
pub const DOORBELL_RESUME: u8 = 2;
/// The VMREAD bitmap page L0 publishes in L1 memory.
pub const READ_BITMAP_GPA: u64 = 0x4000;
/// The VMWRITE bitmap page L0 publishes in L1 memory.
pub const WRITE_BITMAP_GPA: u64 = 0x5000;

// The doorbell is inside L1's identity map and reachable with a sign-extended disp32; the
// bitmap pages sit between the boot page tables and the boot info.
const _: () = assert!(DOORBELL_GPA < crate::layout::IDENTITY_MAP_SIZE && DOORBELL_GPA < 1 << 31);
const _: () = assert!(READ_BITMAP_GPA >= crate::layout::BOOT_PD + 0x1000);
const _: () = assert!(WRITE_BITMAP_GPA + 0x1000 <= crate::layout::BOOT_INFO);

abi_enum! {
    /// The VMX operation of a `Call::Vmx` hypercall (RDI).
    pub enum VmxOp: u64 {
        /// VMXON: RSI = physical address of the VMXON region.
        VmxOn = 1,
        /// VMXOFF.
        VmxOff = 2,
        /// VMCLEAR: RSI = VMCS physical address.
        VmClear = 3,
        /// VMPTRLD: RSI = VMCS physical address.
        VmPtrLd = 4,
        /// VMPTRST: the current-VMCS pointer comes back in RSI.
        VmPtrSt = 5,
        /// VMREAD: RSI = field encoding; the value comes back in RSI.
        VmRead = 6,
        /// VMWRITE: RSI = field encoding, R8 = value.
        VmWrite = 7,
        /// INVEPT: RSI = type (1 single-context, 2 all-context), R8 = EPTP.
        InvEpt = 8,
    }
}

/// The outcome of a VMX instruction (SDM 31.2 "Conventions"), as L0 returns it in RDI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxResult {
    /// VMsucceed: CF = PF = AF = ZF = SF = OF = 0.
    Succeed,
    /// VMfailInvalid: CF = 1 (no current VMCS).
    FailInvalid,
    /// VMfailValid: ZF = 1, with the VM-instruction error number.
    FailValid(u32),
}

impl VmxResult {
    /// Encode as the RDI word: 0, 1, or 2 | error << 8.
    #[must_use]
    pub const fn to_word(self) -> u64 {
        match self {
            Self::Succeed => 0,
            Self::FailInvalid => 1,
            Self::FailValid(e) => 2 | (e as u64) << 8,
        }
    }

    /// Decode the RDI word (`None` for a malformed one).
    #[must_use]
    pub const fn from_word(w: u64) -> Option<Self> {
        match w & 0xFF {
            0 if w == 0 => Some(Self::Succeed),
            1 if w == 1 => Some(Self::FailInvalid),
            2 if w >> 40 == 0 => Some(Self::FailValid((w >> 8) as u32)),
            _ => None,
        }
    }

    /// The arithmetic flags the instruction leaves (SDM 31.2): `rflags` with CF, PF, AF,
    /// ZF, SF and OF set accordingly.
    #[must_use]
    pub const fn apply_to_rflags(self, rflags: u64) -> u64 {
        const CF: u64 = 1;
        const ZF: u64 = 1 << 6;
        const ARITH: u64 = 0x8D5; // CF, PF, AF, ZF, SF, OF
        let cleared = rflags & !ARITH;
        match self {
            Self::Succeed => cleared,
            Self::FailInvalid => cleared | CF,
            Self::FailValid(_) => cleared | ZF,
        }
    }

    /// Decode the flags a VMX instruction left (the hardware backend's view; the error
    /// number of VMfailValid is in the VMCS, so it comes back as 0 here).
    #[must_use]
    pub const fn from_rflags(rflags: u64) -> Self {
        if rflags & 1 != 0 {
            Self::FailInvalid
        } else if rflags & (1 << 6) != 0 {
            Self::FailValid(0)
        } else {
            Self::Succeed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_words_round_trip_and_reject_junk() {
        for r in [VmxResult::Succeed, VmxResult::FailInvalid, VmxResult::FailValid(7), VmxResult::FailValid(28)] {
            assert_eq!(VmxResult::from_word(r.to_word()), Some(r));
        }
        assert_eq!(VmxResult::from_word(3), None);
        assert_eq!(VmxResult::from_word(0x100), None);
        assert_eq!(VmxResult::from_word(1 | 1 << 8), None);
    }

    #[test]
    fn flags_follow_the_sdm_conventions() {
        let rf = 0x2 | 0x8D5 | 1 << 9; // all arithmetic flags set, IF set
        assert_eq!(VmxResult::Succeed.apply_to_rflags(rf), 0x2 | 1 << 9);
        assert_eq!(VmxResult::FailInvalid.apply_to_rflags(rf), 0x2 | 1 << 9 | 1);
        assert_eq!(VmxResult::FailValid(4).apply_to_rflags(rf), 0x2 | 1 << 9 | 1 << 6);
        for r in [VmxResult::Succeed, VmxResult::FailInvalid] {
            assert_eq!(VmxResult::from_rflags(r.apply_to_rflags(rf)), r);
        }
        assert_eq!(VmxResult::from_rflags(VmxResult::FailValid(4).apply_to_rflags(0x2)), VmxResult::FailValid(0));
    }
}
