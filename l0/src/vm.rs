//! A KVM VM with its guest memory, and vCPUs set up for 64-bit mode.

use std::path::{Path, PathBuf};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::memory::{GuestMem, MemoryError};
use crate::stats::{StatsError, StatsFd};
use crate::vcpu::{Vcpu, VcpuError};
use crate::x86_setup::{self, Cpl};

/// Errors of VM creation and setup.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm (or the given path) cannot be opened.
    #[error("cannot open {path}: {source}{hint}", hint = open_hint(source))]
    Open {
        /// The path tried.
        path: PathBuf,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// The file opened but does not answer KVM_GET_API_VERSION like a KVM device.
    #[error("{path} is not a KVM device (KVM_GET_API_VERSION returned {version}, want 12)")]
    NotKvm {
        /// The path tried.
        path: PathBuf,
        /// What came back.
        version: i32,
    },
    /// A VM-level ioctl failed.
    #[error("{op}: {source}")]
    Ioctl {
        /// The operation.
        op: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// A vCPU operation failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Statistics could not be opened.
    #[error(transparent)]
    Stats(#[from] StatsError),
}

fn open_hint(e: &kvm_ioctls::Error) -> &'static str {
    match e.errno() {
        libc::ENOENT => " (no KVM on this host: is the kvm module loaded, or is this a container without /dev/kvm?)",
        libc::EACCES | libc::EPERM => " (permission denied: add yourself to the kvm group or run as root)",
        _ => "",
    }
}

/// Turn on KVM_CAP_EXIT_ON_EMULATION_FAILURE for `vm` where `kvm` offers it (Linux 5.14+):
/// an emulation failure (a fetch from a GPA without memslot) then exits to userspace at any
/// CPL with nothing queued; without it upstream KVM exits only at CPL 0, with a #UD queued,
/// and at CPL 3 delivers the #UD to the guest (`handle_emulation_failure()`; docs/kvm-exits.md
/// row 8). Returns whether it is on.
pub fn exit_on_emulation_failure(kvm: &Kvm, vm: &kvm_ioctls::VmFd) -> Result<bool, VmError> {
    let cap = kvm_bindings::KVM_CAP_EXIT_ON_EMULATION_FAILURE;
    if kvm.check_extension_raw(u64::from(cap)) <= 0 {
        return Ok(false);
    }
    let mut enable = kvm_bindings::kvm_enable_cap { cap, ..Default::default() };
    enable.args[0] = 1;
    vm.enable_cap(&enable)
        .map_err(|source| VmError::Ioctl { op: "KVM_ENABLE_CAP(KVM_CAP_EXIT_ON_EMULATION_FAILURE)", source })?;
    Ok(true)
}

/// Open KVM at `path` and check that it is one.
pub fn open_kvm(path: &Path) -> Result<Kvm, VmError> {
    let open_err = |source| VmError::Open { path: path.to_owned(), source };
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| open_err(kvm_ioctls::Error::new(libc::EINVAL)))?;
    let kvm = Kvm::new_with_path(cpath).map_err(open_err)?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(VmError::NotKvm { path: path.to_owned(), version });
    }
    Ok(kvm)
}

/// A VM: KVM handle, VM fd, one memslot of guest memory at guest-physical 0.
#[derive(Debug)]
pub struct Vm {
    /// The KVM system handle.
    pub kvm: Kvm,
    /// The VM.
    pub fd: VmFd,
    /// Guest memory.
    pub mem: GuestMem,
    /// What nestbench's CPUID leaf 0x4000_0001:EBX advertises to the vCPUs created next.
    pub l0_features: u32,
}

impl Vm {
    /// Create a VM with `mem_size` bytes of memory, the boot GDT and identity-mapped page
    /// tables already written.
    pub fn new(kvm_path: &Path, mem_size: u64) -> Result<Self, VmError> {
        let kvm = open_kvm(kvm_path)?;
        let fd = kvm.create_vm().map_err(|source| VmError::Ioctl { op: "KVM_CREATE_VM", source })?;
        let mem = GuestMem::new(mem_size)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem.size(),
            userspace_addr: mem.host_base(),
        };
        // SAFETY: the region is the whole mmap of `mem`, which this Vm owns (a clone of the
        // mapping handle) for as long as the VM exists.
        unsafe { fd.set_user_memory_region(region) }
            .map_err(|source| VmError::Ioctl { op: "KVM_SET_USER_MEMORY_REGION", source })?;
        x86_setup::write_boot_tables(&mem)?;
        Ok(Self { kvm, fd, mem, l0_features: nestbench_abi::cpuid::FEATURE_HYPERCALL })
    }

    /// [`exit_on_emulation_failure`] for this VM.
    pub fn exit_on_emulation_failure(&self) -> Result<bool, VmError> {
        exit_on_emulation_failure(&self.kvm, &self.fd)
    }

    /// Statistics of this VM.
    pub fn stats(&self) -> Result<StatsFd, VmError> {
        Ok(StatsFd::open(&self.fd)?)
    }

    /// Create vCPU 0 in 64-bit mode at privilege `cpl`: CPUID (KVM's, plus nestbench's
    /// hypervisor leaves), MTRR default type write-back, RIP = `entry`, RSP = `rsp`,
    /// RDI = `rdi`.
    pub fn create_vcpu(&self, cpl: Cpl, entry: u64, rsp: u64, rdi: u64) -> Result<Vcpu, VmError> {
        let ioctl = |op| move |source| VmError::Ioctl { op, source };
        let fd = self.fd.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
        let supported =
            self.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        fd.set_cpuid2(&x86_setup::guest_cpuid(&supported, self.l0_features)).map_err(ioctl("KVM_SET_CPUID2"))?;
        let msrs = x86_setup::boot_msrs();
        let n = fd.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        if n != msrs.as_slice().len() {
            return Err(VmError::Ioctl {
                op: "KVM_SET_MSRS (IA32_MTRR_DEF_TYPE refused)",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
        let mut sregs = fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        x86_setup::long_mode_sregs(&mut sregs, cpl);
        fd.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        let sync = self.kvm.check_extension(Cap::SyncRegs);
        let mut vcpu = Vcpu::new(fd, sync);
        vcpu.set_regs_now(&x86_setup::entry_regs(entry, rsp, rdi, cpl))?;
        Ok(vcpu)
    }
}
