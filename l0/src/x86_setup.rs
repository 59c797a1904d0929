//! The initial x86 state of a VM: boot GDT, identity-mapped page tables, 64-bit mode
//! (Intel SDM Vol. 3A, 10.8.5 "Initializing IA-32e Mode"), CPUID and MSRs.

use kvm_bindings::{CpuId, Msrs, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use nestbench_abi::cpuid as hv;
use nestbench_abi::hypercall;
use nestbench_abi::layout::{BOOT_GDT, BOOT_PD, BOOT_PDPT, BOOT_PML4, IDENTITY_MAP_SIZE};

use crate::memory::{GuestMem, MemoryError};

/// The privilege level the vCPU starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpl {
    /// CPL 0 (L1). On the development hosts' KVM this code is emulated one instruction at a
    /// time.
    Kernel,
    /// CPL 3 with IOPL 3 in RFLAGS, HLT is a #GP. Runs natively on the development hosts,
    /// where IOPL does not survive the first exit: port I/O is then checked against the TSS
    /// I/O bitmap (docs/kvm-exits.md, row 3d).
    User,
}

/// Boot GDT selectors.
pub const SEL_KERNEL_CODE: u16 = 0x08;
/// Kernel data selector.
pub const SEL_KERNEL_DATA: u16 = 0x10;
/// User data selector (RPL 3).
pub const SEL_USER_DATA: u16 = 0x18 | 3;
/// User 64-bit code selector (RPL 3).
pub const SEL_USER_CODE: u16 = 0x20 | 3;

const GDT: [u64; 5] = [
    0,
    0x00AF_9A00_0000_FFFF, // 0x08: 64-bit code, DPL 0
    0x00CF_9200_0000_FFFF, // 0x10: data, DPL 0
    0x00CF_F200_0000_FFFF, // 0x18: data, DPL 3
    0x00AF_FA00_0000_FFFF, // 0x20: 64-bit code, DPL 3
];

const PTE_P: u64 = 1;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_PS: u64 = 1 << 7;

use nestbench_abi::cr::{CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_PAE, EFER_LMA, EFER_LME};
/// RFLAGS bit 1 is reserved and always set; IOPL is bits 12-13.
const RFLAGS_FIXED: u64 = 1 << 1;
const RFLAGS_IOPL3: u64 = 3 << 12;

/// Write the boot GDT and an identity map of the first [`IDENTITY_MAP_SIZE`] bytes with
/// 2 MiB pages (user-accessible, so the same tables serve CPL 3 test guests).
pub fn write_boot_tables(mem: &GuestMem) -> Result<(), MemoryError> {
    for (i, d) in GDT.iter().enumerate() {
        mem.write_u64(BOOT_GDT + 8 * i as u64, *d)?;
    }
    mem.write_u64(BOOT_PML4, BOOT_PDPT | PTE_P | PTE_RW | PTE_US)?;
    mem.write_u64(BOOT_PDPT, BOOT_PD | PTE_P | PTE_RW | PTE_US)?;
    for i in 0..IDENTITY_MAP_SIZE >> 21 {
        mem.write_u64(BOOT_PD + 8 * i, (i << 21) | PTE_P | PTE_RW | PTE_US | PTE_PS)?;
    }
    Ok(())
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    let dpl = (selector & 3) as u8;
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_: if code { 0xB } else { 0x3 },
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Put `sregs` into 64-bit mode at privilege `cpl`, with the boot GDT and page tables.
pub fn long_mode_sregs(sregs: &mut kvm_sregs, cpl: Cpl) {
    let (cs, ds) = match cpl {
        Cpl::Kernel => (SEL_KERNEL_CODE, SEL_KERNEL_DATA),
        Cpl::User => (SEL_USER_CODE, SEL_USER_DATA),
    };
    sregs.cs = segment(cs, true);
    for s in [&mut sregs.ds, &mut sregs.es, &mut sregs.fs, &mut sregs.gs, &mut sregs.ss] {
        *s = segment(ds, false);
    }
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    // A busy 64-bit TSS: VM entry on hardware requires a usable TR (SDM 28.3.1.2).
    sregs.tr = kvm_segment { base: 0, limit: 0x67, selector: 0, type_: 0xB, present: 1, ..Default::default() };
    sregs.ldt = kvm_segment { unusable: 1, ..Default::default() };
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = BOOT_PML4;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
}

/// General registers at entry: RIP, RSP, RDI (first argument), RFLAGS (IOPL 3 for CPL 3).
#[must_use]
pub fn entry_regs(rip: u64, rsp: u64, rdi: u64, cpl: Cpl) -> kvm_regs {
    kvm_regs {
        rip,
        rsp,
        rdi,
        rflags: RFLAGS_FIXED | if cpl == Cpl::User { RFLAGS_IOPL3 } else { 0 },
        ..Default::default()
    }
}

/// Turn KVM's supported CPUID into the guest's: set CPUID.1:ECX.hypervisor, publish
/// `l0_features` (the `FEATURE_*` bits of leaf 0x4000_0001:EBX), and replace
/// every leaf in the hypervisor range 0x4000_0000-0x4000_00FF (KVM's own "KVMKVMKVM" leaves
/// included) with nestbench's. Everything else is what KVM supports, VMX/SVM included or not.
pub fn guest_cpuid(supported: &CpuId, l0_features: u32) -> CpuId {
    let mut entries: Vec<_> =
        supported.as_slice().iter().copied().filter(|e| !(0x4000_0000..=0x4000_00FF).contains(&e.function)).collect();
    for e in &mut entries {
        if e.function == 1 {
            e.ecx |= hv::CPUID1_ECX_HYPERVISOR;
        }
    }
    let (ebx, ecx, edx) = hv::signature_words();
    entries.push(kvm_bindings::kvm_cpuid_entry2 {
        function: hv::LEAF_SIGNATURE,
        eax: hv::LEAF_MAX,
        ebx,
        ecx,
        edx,
        ..Default::default()
    });
    entries.push(kvm_bindings::kvm_cpuid_entry2 {
        function: hv::LEAF_INFO,
        eax: nestbench_abi::ABI_VERSION,
        ebx: l0_features,
        ecx: u32::from(hypercall::PORT),
        ..Default::default()
    });
    CpuId::from_entries(&entries).expect("fewer CPUID entries than KVM returned, plus two")
}

/// The physical-address width (MAXPHYADDR) `cpuid` shows: CPUID.80000008H:EAX[7:0], or 36
/// where the leaf is absent (SDM Vol. 3A 4.1.4).
#[must_use]
pub fn maxphyaddr(cpuid: &CpuId) -> u32 {
    cpuid.as_slice().iter().find(|e| e.function == 0x8000_0008).map_or(36, |e| e.eax & 0xFF)
}

/// IA32_MTRR_DEF_TYPE: MTRRs enabled (bit 11), default type write-back (6)
/// (SDM 13.11.2.1), so a guest that derives memory types from MTRRs picks WB.
pub const MTRR_DEF_TYPE_WB: u64 = (1 << 11) | 6;
/// IA32_MTRR_DEF_TYPE's index.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2FF;

/// The MSRs L0 sets at boot.
#[must_use]
pub fn boot_msrs() -> Msrs {
    Msrs::from_entries(&[kvm_msr_entry { index: MSR_MTRR_DEF_TYPE, data: MTRR_DEF_TYPE_WB, ..Default::default() }])
        .expect("one MSR entry fits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_map_translates_and_gdt_is_64_bit() {
        let mem = GuestMem::new(2 << 20).unwrap();
        write_boot_tables(&mem).unwrap();
        let t = crate::paging::translate(&mem, BOOT_PML4, 0x1234_5678).unwrap();
        assert_eq!(t.gpa, 0x1234_5678);
        assert_eq!(t.page_size, 2 << 20);
        assert!(crate::paging::translate(&mem, BOOT_PML4, IDENTITY_MAP_SIZE).is_err());
        assert_eq!(mem.read_u64(BOOT_GDT + 8).unwrap() >> 53 & 1, 1, "L bit of the code segment");
    }

    #[test]
    fn cpuid_gets_nestbench_leaves_instead_of_kvms() {
        let supported = CpuId::from_entries(&[
            kvm_bindings::kvm_cpuid_entry2 { function: 1, ecx: 0x20, ..Default::default() },
            kvm_bindings::kvm_cpuid_entry2 {
                function: 0x4000_0000,
                eax: 0x4000_0001,
                ebx: 0x4b4d_564b,
                ..Default::default()
            },
            kvm_bindings::kvm_cpuid_entry2 { function: 0x4000_0001, eax: 0xFFFF, ..Default::default() },
        ])
        .unwrap();
        let c = guest_cpuid(&supported, hv::FEATURE_HYPERCALL);
        let e: Vec<_> = c.as_slice().to_vec();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].ecx, 0x20 | hv::CPUID1_ECX_HYPERVISOR, "VMX as KVM said, plus hypervisor bit");
        let sig = e.iter().find(|x| x.function == hv::LEAF_SIGNATURE).unwrap();
        assert_eq!(hv::signature_from_words(sig.ebx, sig.ecx, sig.edx), hv::SIGNATURE);
        let info = e.iter().find(|x| x.function == hv::LEAF_INFO).unwrap();
        assert_eq!(info.eax, nestbench_abi::ABI_VERSION);
    }
}
