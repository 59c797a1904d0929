//! L1's VMX layer: one [`VmxBackend`] trait over the VMX instructions, two backends
//! ([`hw`]: the real instructions; [`soft`]: the soft engine's hypercalls and shadowed
//! VMCS12 page), typed VMCS accessors ([`Vmcs`]), capabilities and control adjustment
//! ([`caps`]), the VMCS contents ([`setup`]), the MSR bitmap ([`msr_bitmap`]), VM entry and
//! the VM-exit stub ([`entry`]), and the vCPU the run loop drives ([`vcpu`]: enters L2,
//! decodes its exits into [`crate::exit::Exit`]).
//!
//! Everything above the backend is the same code on every engine (shared/DESIGN.md).

pub mod caps;
pub mod entry;
pub mod hw;
pub mod msr_bitmap;
pub mod setup;
pub mod soft;
pub mod vcpu;

use nestbench_abi::vmcs::{Field16, Field32, Field64, FieldNatural};

/// How a VMX instruction failed (SDM 31.2 "Conventions").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxFail {
    /// VMfailInvalid (CF = 1): there is no current VMCS to hold an error number.
    FailInvalid,
    /// VMfailValid (ZF = 1), with the VM-instruction error number read from the current
    /// VMCS (SDM 31.4, Table 31-1).
    FailValid(u32),
}

impl core::fmt::Display for VmxFail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::FailInvalid => f.write_str("VMfailInvalid"),
            Self::FailValid(e) => match nestbench_abi::vmx::VmInstructionError::from_raw(*e) {
                Some(err) => write!(f, "VMfailValid: {err}"),
                None => write!(f, "VMfailValid: VM-instruction error {e}"),
            },
        }
    }
}

/// The VMX instructions L1 uses (SDM 31.3), as one backend provides them. Encodings are raw
/// here; use [`Vmcs`] for typed access. Every VMREAD/VMWRITE is counted
/// ([`VmxBackend::accesses`]).
pub trait VmxBackend {
    /// Whether VM entry is the soft engine's doorbell write instead of VMLAUNCH/VMRESUME
    /// ([`entry::enter`]).
    const DOORBELL: bool;
    /// VMXON with the VMXON region at physical address `pa`.
    fn vmxon(&mut self, pa: u64) -> Result<(), VmxFail>;
    /// VMXOFF.
    fn vmxoff(&mut self) -> Result<(), VmxFail>;
    /// VMCLEAR of the VMCS at `pa`.
    fn vmclear(&mut self, pa: u64) -> Result<(), VmxFail>;
    /// VMPTRLD of the VMCS at `pa`.
    fn vmptrld(&mut self, pa: u64) -> Result<(), VmxFail>;
    /// VMPTRST: the current-VMCS pointer (`!0` when there is none).
    fn vmptrst(&mut self) -> Result<u64, VmxFail>;
    /// VMREAD of field `encoding` from the current VMCS.
    fn vmread(&mut self, encoding: u32) -> Result<u64, VmxFail>;
    /// VMWRITE of `value` into field `encoding` of the current VMCS.
    fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmxFail>;
    /// INVEPT of type `kind` (1 single-context, 2 all-context) for `eptp`.
    fn invept(&mut self, kind: u64, eptp: u64) -> Result<(), VmxFail>;
    /// VMREAD + VMWRITE instructions executed so far.
    fn accesses(&self) -> u32;
}

/// Typed VMCS access over any backend: a field's width decides the value's type, so a
/// 64-bit value cannot be written into a 32-bit field (the style of arceos x86_vcpu).
pub trait Vmcs: VmxBackend {
    /// VMREAD of a 16-bit field.
    #[inline(always)]
    fn read16(&mut self, f: Field16) -> Result<u16, VmxFail> {
        self.vmread(f.encoding()).map(|v| v as u16)
    }
    /// VMREAD of a 32-bit field.
    #[inline(always)]
    fn read32(&mut self, f: Field32) -> Result<u32, VmxFail> {
        self.vmread(f.encoding()).map(|v| v as u32)
    }
    /// VMREAD of a 64-bit field (full access).
    #[inline(always)]
    fn read64(&mut self, f: Field64) -> Result<u64, VmxFail> {
        self.vmread(f.encoding())
    }
    /// VMREAD of a natural-width field.
    #[inline(always)]
    fn read_nat(&mut self, f: FieldNatural) -> Result<u64, VmxFail> {
        self.vmread(f.encoding())
    }
    /// VMWRITE of a 16-bit field.
    #[inline(always)]
    fn write16(&mut self, f: Field16, v: u16) -> Result<(), VmxFail> {
        self.vmwrite(f.encoding(), u64::from(v))
    }
    /// VMWRITE of a 32-bit field.
    #[inline(always)]
    fn write32(&mut self, f: Field32, v: u32) -> Result<(), VmxFail> {
        self.vmwrite(f.encoding(), u64::from(v))
    }
    /// VMWRITE of a 64-bit field (full access).
    #[inline(always)]
    fn write64(&mut self, f: Field64, v: u64) -> Result<(), VmxFail> {
        self.vmwrite(f.encoding(), v)
    }
    /// VMWRITE of a natural-width field.
    #[inline(always)]
    fn write_nat(&mut self, f: FieldNatural, v: u64) -> Result<(), VmxFail> {
        self.vmwrite(f.encoding(), v)
    }
}

impl<B: VmxBackend + ?Sized> Vmcs for B {}

/// Which backend L1 uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Real VMX instructions (CPUID.1:ECX.VMX: Bochs, the `kvm` engine).
    Hardware,
    /// nestbench L0's userspace VMX (CPUID 0x4000_0001:EBX.FEATURE_SOFT_VMX).
    Soft,
}

/// Pick the backend from CPUID (docs/soft-engine.md, "Discovery"): the soft engine when
/// nestbench's L0 advertises it, else real VMX when CPUID.1:ECX.VMX is set, else none.
/// `hv_features` counts only when the hypervisor signature is nestbench's.
#[must_use]
pub const fn select_backend(cpuid1_ecx: u32, nestbench_l0: bool, hv_features: u32) -> Option<BackendKind> {
    if nestbench_l0 && hv_features & nestbench_abi::cpuid::FEATURE_SOFT_VMX != 0 {
        Some(BackendKind::Soft)
    } else if cpuid1_ecx & nestbench_abi::cpuid::CPUID1_ECX_VMX != 0 {
        Some(BackendKind::Hardware)
    } else {
        None
    }
}

#[cfg(test)]
pub mod fake {
    //! A recording backend for host tests: a map of field values and a log of writes.

    use std::collections::HashMap;
    use std::vec::Vec;

    use super::{VmxBackend, VmxFail};

    /// Records every VMWRITE in order; VMREAD returns what was written (0 if nothing).
    #[derive(Default, Debug)]
    pub struct Recording {
        /// Field values.
        pub fields: HashMap<u32, u64>,
        /// Every VMWRITE, in order.
        pub writes: Vec<(u32, u64)>,
        /// Counted accesses.
        pub accesses: u32,
    }

    impl Recording {
        /// The value of a field (panics if never written).
        pub fn get(&self, enc: u32) -> u64 {
            *self.fields.get(&enc).unwrap_or_else(|| panic!("field {enc:#06x} never written"))
        }
    }

    impl VmxBackend for Recording {
        const DOORBELL: bool = false;
        fn vmxon(&mut self, _: u64) -> Result<(), VmxFail> {
            Ok(())
        }
        fn vmxoff(&mut self) -> Result<(), VmxFail> {
            Ok(())
        }
        fn vmclear(&mut self, _: u64) -> Result<(), VmxFail> {
            Ok(())
        }
        fn vmptrld(&mut self, _: u64) -> Result<(), VmxFail> {
            Ok(())
        }
        fn vmptrst(&mut self) -> Result<u64, VmxFail> {
            Ok(0)
        }
        fn vmread(&mut self, encoding: u32) -> Result<u64, VmxFail> {
            self.accesses += 1;
            Ok(self.fields.get(&encoding).copied().unwrap_or(0))
        }
        fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmxFail> {
            self.accesses += 1;
            self.fields.insert(encoding, value);
            self.writes.push((encoding, value));
            Ok(())
        }
        fn invept(&mut self, _: u64, _: u64) -> Result<(), VmxFail> {
            Ok(())
        }
        fn accesses(&self) -> u32 {
            self.accesses
        }
    }
}

#[cfg(test)]
mod tests {
    use nestbench_abi::cpuid::{CPUID1_ECX_VMX, FEATURE_HYPERCALL, FEATURE_SOFT_VMX};

    use super::*;

    #[test]
    fn backend_selection_prefers_the_soft_engine_then_real_vmx() {
        assert_eq!(select_backend(0, true, FEATURE_HYPERCALL | FEATURE_SOFT_VMX), Some(BackendKind::Soft));
        assert_eq!(select_backend(CPUID1_ECX_VMX, true, FEATURE_SOFT_VMX), Some(BackendKind::Soft));
        assert_eq!(select_backend(CPUID1_ECX_VMX, true, FEATURE_HYPERCALL), Some(BackendKind::Hardware));
        assert_eq!(select_backend(CPUID1_ECX_VMX, false, 0), Some(BackendKind::Hardware));
        // A foreign hypervisor's feature word is not ours to interpret.
        assert_eq!(select_backend(0, false, FEATURE_SOFT_VMX), None);
        assert_eq!(select_backend(0, true, FEATURE_HYPERCALL), None);
    }

    #[test]
    fn typed_accessors_write_the_typed_encoding_and_count() {
        let mut b = fake::Recording::default();
        b.write16(Field16::GuestCsSelector, 0x23).unwrap();
        b.write32(Field32::GuestCsAccessRights, 0xA0FB).unwrap();
        b.write64(Field64::VmcsLinkPointer, !0).unwrap();
        b.write_nat(FieldNatural::GuestRip, 0x40_1000).unwrap();
        assert_eq!(b.read16(Field16::GuestCsSelector), Ok(0x23));
        assert_eq!(b.read32(Field32::GuestCsAccessRights), Ok(0xA0FB));
        assert_eq!(b.read64(Field64::VmcsLinkPointer), Ok(!0));
        assert_eq!(b.read_nat(FieldNatural::GuestRip), Ok(0x40_1000));
        assert_eq!(b.accesses(), 8);
        assert_eq!(b.writes[0], (0x0802, 0x23));
    }
}
