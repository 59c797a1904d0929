//! What L0 gives L1 on the kvm engine: KVM's supported CPUID with VMX or SVM (nestbench's
//! hypervisor leaves instead of KVM's paravirtual ones, no soft-VMX feature, so L1 picks its
//! hardware backend; on AMD, 8000_0001h ECX.SVM and leaf 8000_000Ah as KVM offers them), and,
//! for VMX, the VMX capability MSRs KVM reports as feature MSRs on /dev/kvm
//! (KVM_GET_MSR_FEATURE_INDEX_LIST, KVM_GET_MSRS on the system fd), set on L1's vCPU the
//! way QEMU passes them through: only those KVM lets a host restore. IA32_FEATURE_CONTROL
//! is left to L1 (SDM 24.7: L1 locks it with VMXON enabled when the firmware, here nobody,
//! left it unlocked).
//!
//! Upstream KVM (`vmx_set_vmx_msr()` in arch/x86/kvm/vmx/nested.c) refuses a host write of
//! the non-TRUE control MSRs 0x481-0x484 ("generated from the true MSRs") and of
//! CR0_FIXED1/CR4_FIXED1 ("generated based on the vCPU's CPUID"), with -EINVAL, as it does
//! for any VMX MSR it has no restore path for. It derives those itself; what L1 then sees is
//! read back from the vCPU ([`KvmVmxMsr`] says which came from where).
//!
//! [`plan`] is pure, so the pass-through is tested with recorded fixtures on hosts without
//! nested VMX.

use kvm_bindings::kvm_cpuid_entry2;
use nestbench_abi::cpuid as hv;
use nestbench_abi::vmx::msr::{self as vmx_msr, IA32_VMX_BASIC, IA32_VMX_VMFUNC};
pub use nestbench_protocol::kvm_engine::KvmVmxMsr;

/// Why the kvm engine cannot run here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the kvm engine needs KVM to offer nested virtualization (VMX or SVM) to guests: {0}")]
pub struct NoNesting(pub String);

/// What L0 sets up for L1 on the kvm engine.
#[derive(Clone, Debug, PartialEq)]
pub struct NestedPlan {
    /// L1's CPUID.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// The VMX capability MSRs (index, value) KVM reports on /dev/kvm, in index order,
    /// IA32_VMX_BASIC first.
    pub vmx_msrs: Vec<(u32, u64)>,
}

impl NestedPlan {
    /// The MSRs to write on L1's vCPU, in index order (IA32_VMX_BASIC first: KVM checks the
    /// others against nothing it derives from it, but a restore of BASIC must not follow a
    /// write that depends on it): the ones KVM lets a host restore.
    #[must_use]
    pub fn writes(&self) -> Vec<(u32, u64)> {
        self.vmx_msrs.iter().copied().filter(|&(i, _)| kvm_restores(i)).collect()
    }
}

/// Whether upstream KVM accepts a host-initiated write of VMX capability MSR `index`
/// (`vmx_set_vmx_msr()`, arch/x86/kvm/vmx/nested.c: BASIC, the TRUE controls,
/// PROCBASED_CTLS2, MISC, CR0/CR4_FIXED0, EPT_VPID_CAP, VMCS_ENUM and VMFUNC have restore
/// paths; the non-TRUE controls and CR0/CR4_FIXED1 are derived and refused with -EINVAL, and
/// so is every index without a case, such as PROCBASED_CTLS3 on kernels before its restore
/// path was added).
#[must_use]
pub const fn kvm_restores(index: u32) -> bool {
    matches!(
        index,
        vmx_msr::IA32_VMX_BASIC
            | vmx_msr::IA32_VMX_TRUE_PINBASED_CTLS
            | vmx_msr::IA32_VMX_TRUE_PROCBASED_CTLS
            | vmx_msr::IA32_VMX_TRUE_EXIT_CTLS
            | vmx_msr::IA32_VMX_TRUE_ENTRY_CTLS
            | vmx_msr::IA32_VMX_PROCBASED_CTLS2
            | vmx_msr::IA32_VMX_MISC
            | vmx_msr::IA32_VMX_CR0_FIXED0
            | vmx_msr::IA32_VMX_CR4_FIXED0
            | vmx_msr::IA32_VMX_EPT_VPID_CAP
            | vmx_msr::IA32_VMX_VMCS_ENUM
            | vmx_msr::IA32_VMX_VMFUNC
    )
}

/// CPUID.8000_0001:ECX.SVM.
const CPUID_8000_0001_ECX_SVM: u32 = 1 << 2;

/// Build L1's CPUID and VMX MSRs from what KVM supports (`supported`: KVM_GET_SUPPORTED_CPUID;
/// `feature_msrs`: the feature MSRs KVM reports on /dev/kvm, with their values).
pub fn plan(supported: &[kvm_cpuid_entry2], feature_msrs: &[(u32, u64)]) -> Result<NestedPlan, NoNesting> {
    let leaf = |f: u32| supported.iter().find(|e| e.function == f && e.index == 0);
    let vmx = leaf(1).is_some_and(|e| e.ecx & hv::CPUID1_ECX_VMX != 0);
    let c = kvm_bindings::CpuId::from_entries(supported).map_err(|e| NoNesting(format!("CPUID entries: {e:?}")))?;
    let cpuid = crate::x86_setup::guest_cpuid(&c, hv::FEATURE_HYPERCALL).as_slice().to_vec();
    if !vmx {
        let svm = leaf(0x8000_0001).is_some_and(|e| e.ecx & CPUID_8000_0001_ECX_SVM != 0);
        if !svm {
            return Err(NoNesting(
                "KVM_GET_SUPPORTED_CPUID has CPUID.1:ECX.VMX and CPUID 8000_0001h:ECX.SVM clear (no kvm_intel or kvm_amd with nested=1 on this host)".into(),
            ));
        }
        // SVM (an AMD host): L1's CPUID carries 8000_0001h ECX.SVM and leaf 8000_000Ah as KVM
        // offers them (kvm_amd lets L1 set EFER.SVME only when its CPUID has SVM); SVM has no
        // capability MSRs to pass.
        return Ok(NestedPlan { cpuid, vmx_msrs: Vec::new() });
    }
    let mut vmx_msrs: Vec<(u32, u64)> =
        feature_msrs.iter().copied().filter(|(i, _)| (IA32_VMX_BASIC..=IA32_VMX_VMFUNC).contains(i)).collect();
    vmx_msrs.sort_by_key(|(i, _)| *i);
    vmx_msrs.dedup_by_key(|(i, _)| *i);
    if vmx_msrs.first().map(|(i, _)| *i) != Some(IA32_VMX_BASIC) {
        return Err(NoNesting(
            "KVM lists VMX in CPUID but reports no IA32_VMX_BASIC feature MSR (KVM_GET_MSR_FEATURE_INDEX_LIST)".into(),
        ));
    }
    Ok(NestedPlan { cpuid, vmx_msrs })
}

/// Read the feature MSRs of `kvm` (KVM_GET_MSR_FEATURE_INDEX_LIST, then KVM_GET_MSRS on the
/// system fd) that lie in the VMX capability range.
pub fn read_vmx_feature_msrs(kvm: &kvm_ioctls::Kvm) -> Result<Vec<(u32, u64)>, NoNesting> {
    let list = kvm
        .get_msr_feature_index_list()
        .map_err(|e| NoNesting(format!("KVM_GET_MSR_FEATURE_INDEX_LIST failed: {e}")))?;
    let entries: Vec<kvm_bindings::kvm_msr_entry> = list
        .as_slice()
        .iter()
        .filter(|i| (IA32_VMX_BASIC..=IA32_VMX_VMFUNC).contains(*i))
        .map(|&index| kvm_bindings::kvm_msr_entry { index, ..Default::default() })
        .collect();
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let mut msrs = kvm_bindings::Msrs::from_entries(&entries).map_err(|e| NoNesting(format!("MSR list: {e:?}")))?;
    let n = kvm.get_msrs(&mut msrs).map_err(|e| NoNesting(format!("KVM_GET_MSRS on /dev/kvm failed: {e}")))?;
    Ok(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, ecx, ..Default::default() }
    }

    #[test]
    fn hosts_without_nesting_get_the_reason_and_svm_passes_through() {
        let e = plan(&[entry(1, 0), entry(0x8000_0001, 0)], &[]).unwrap_err();
        assert!(e.0.contains("VMX and CPUID 8000_0001h:ECX.SVM clear"), "{e}");
        // An AMD host with nesting: SVM and leaf 8000_000Ah pass to L1, no MSRs.
        let p = plan(&[entry(1, 0), entry(0x8000_0001, CPUID_8000_0001_ECX_SVM), entry(0x8000_000A, 0)], &[]).unwrap();
        assert!(p.vmx_msrs.is_empty() && p.writes().is_empty());
        let ext1 = p.cpuid.iter().find(|e| e.function == 0x8000_0001).unwrap();
        assert_ne!(ext1.ecx & CPUID_8000_0001_ECX_SVM, 0);
        assert!(p.cpuid.iter().any(|e| e.function == 0x8000_000A));
        let e = plan(&[entry(1, hv::CPUID1_ECX_VMX)], &[(0x10, 0)]).unwrap_err();
        assert!(e.0.contains("IA32_VMX_BASIC"), "{e}");
    }
}
