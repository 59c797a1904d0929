//! VM2: the KVM VM that L2 runs in, on the same thread as L1 (never concurrently), with
//! EPT-on-EPT as a memslot shadow (shared/DESIGN.md): every leaf of L1's EPT12 becomes
//! (part of) a memslot of VM2 whose host memory is the L1 memory the leaf points at,
//! contiguous runs coalesced, read-only where EPT12 denies writes.
//!
//! Part 1 maps everything EPT12 maps before an entry (and again after INVEPT or an EPTP
//! change); lazy fill on first touch is the next step (soft engine part 2).

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VmFd};
use nestbench_abi::ept::{self, ADDR_MASK, LARGE_PAGE, Misconfig, RWX};

use crate::memory::GuestMem;
use crate::vcpu::Vcpu;
use crate::vm::VmError;
use crate::x86_setup;

/// Why EPT12 cannot be shadowed.
#[derive(Debug, thiserror::Error)]
pub enum EptShadowError {
    /// A paging structure of EPT12 lies outside L1 memory.
    #[error("EPT12 table at L1-physical {pa:#x} (level {level}) is outside L1 memory")]
    TableOutside {
        /// Its address.
        pa: u64,
        /// Its level.
        level: u8,
    },
    /// A present EPT12 entry is malformed (an EPT misconfiguration when L2 touches it).
    #[error("EPT12 entry {entry:#x} at level {level} for L2-physical {l2:#x} is misconfigured: {why:?}")]
    Misconfigured {
        /// The L2-physical address it maps.
        l2: u64,
        /// Level.
        level: u8,
        /// The entry.
        entry: u64,
        /// The rule it breaks.
        why: Misconfig,
    },
    /// A leaf maps L2 memory onto L1-physical memory that does not exist.
    #[error("EPT12 maps L2-physical {l2:#x}+{size:#x} to L1-physical {pa:#x}, outside L1 memory")]
    LeafOutside {
        /// L2-physical start.
        l2: u64,
        /// L1-physical start.
        pa: u64,
        /// Bytes.
        size: u64,
    },
    /// EPT12 has more present leaves than L0 will enumerate (aliased tables can make it
    /// billions).
    #[error("EPT12 has more than {0} present leaves; L0 refuses to shadow it")]
    TooManyLeaves(usize),
    /// More runs than KVM has memslots.
    #[error("EPT12 needs {0} memslots, more than KVM offers")]
    TooManySlots(usize),
    /// Creating or deleting a memslot failed.
    #[error("KVM_SET_USER_MEMORY_REGION for VM2: {0}")]
    Ioctl(kvm_ioctls::Error),
}

/// One contiguous, same-permission run of EPT12.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// L2-physical start.
    pub l2: u64,
    /// L1-physical start.
    pub l1: u64,
    /// Bytes.
    pub size: u64,
    /// EPT12 denies writes.
    pub read_only: bool,
}

/// The most EPT12 leaves L0 enumerates: 1 GiB of 4 KiB pages. Tables can alias each other,
/// so a hostile EPT12 of a few pages can have 512^4 leaves; the walk stops at this many.
pub const MAX_LEAVES: usize = 1 << 18;

/// Every present leaf of the EPT12 rooted at `eptp`, coalesced into runs. Fails on the
/// first misconfigured entry, table outside `mem`, or more than [`MAX_LEAVES`] leaves
/// (L1 is hostile input).
pub fn ept_runs(mem: &GuestMem, eptp: u64, maxphyaddr: u32) -> Result<Vec<Run>, EptShadowError> {
    let mut leaves = Vec::new();
    walk_table(mem, eptp & ADDR_MASK, 4, 0, RWX, maxphyaddr, &mut leaves)?;
    leaves.sort_by_key(|r| r.l2);
    let mut runs: Vec<Run> = Vec::with_capacity(leaves.len());
    for leaf in leaves {
        match runs.last_mut() {
            Some(r) if r.l2 + r.size == leaf.l2 && r.l1 + r.size == leaf.l1 && r.read_only == leaf.read_only => {
                r.size += leaf.size;
            }
            _ => runs.push(leaf),
        }
    }
    Ok(runs)
}

fn walk_table(
    mem: &GuestMem,
    table: u64,
    level: u8,
    l2_base: u64,
    perms: u64,
    maxphyaddr: u32,
    out: &mut Vec<Run>,
) -> Result<(), EptShadowError> {
    let page = mem.read_vec(table, 4096).map_err(|_| EptShadowError::TableOutside { pa: table, level })?;
    let shift = 12 + 9 * u32::from(level - 1);
    for (i, chunk) in page.chunks_exact(8).enumerate() {
        let entry = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if entry & RWX == 0 {
            continue;
        }
        let l2 = l2_base | (i as u64) << shift;
        if let Some(why) = ept::misconfig(entry, level, maxphyaddr) {
            return Err(EptShadowError::Misconfigured { l2, level, entry, why });
        }
        let p = perms & entry;
        if level == 1 || entry & LARGE_PAGE != 0 {
            let size = 1u64 << shift;
            let pa = entry & ADDR_MASK & !(size - 1);
            if mem.check(pa, size).is_err() {
                return Err(EptShadowError::LeafOutside { l2, pa, size });
            }
            if out.len() == MAX_LEAVES {
                return Err(EptShadowError::TooManyLeaves(MAX_LEAVES));
            }
            out.push(Run { l2, l1: pa, size, read_only: p & ept::WRITE == 0 });
        } else {
            walk_table(mem, entry & ADDR_MASK, level - 1, l2, p, maxphyaddr, out)?;
        }
    }
    Ok(())
}

/// VM2 and its vCPU.
#[derive(Debug)]
pub struct L2Vm {
    fd: VmFd,
    /// L2's vCPU.
    pub vcpu: Vcpu,
    l1_mem: GuestMem,
    slots: Vec<u32>,
    max_slots: usize,
}

impl L2Vm {
    /// Create VM2 (no memory yet) and its vCPU, with KVM's CPUID (nestbench's hypervisor leaf
    /// without features: L2 has no hypercalls) and the boot MSRs of L1's VM.
    pub fn new(kvm: &Kvm, l1_mem: GuestMem) -> Result<Self, VmError> {
        let ioctl = |op| move |source| VmError::Ioctl { op, source };
        let fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM (VM2)"))?;
        let vcpu_fd = fd.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU (VM2)"))?;
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu_fd.set_cpuid2(&x86_setup::guest_cpuid(&supported, 0)).map_err(ioctl("KVM_SET_CPUID2 (VM2)"))?;
        vcpu_fd.set_msrs(&x86_setup::boot_msrs()).map_err(ioctl("KVM_SET_MSRS (VM2)"))?;
        let vcpu = Vcpu::new(vcpu_fd, kvm.check_extension(Cap::SyncRegs));
        Ok(Self { fd, vcpu, l1_mem, slots: Vec::new(), max_slots: kvm.get_nr_memslots() })
    }

    /// VM2's fd (statistics).
    #[must_use]
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Replace VM2's memory with `runs`. Returns the number of memslots.
    pub fn map(&mut self, runs: &[Run]) -> Result<usize, EptShadowError> {
        if runs.len() > self.max_slots {
            return Err(EptShadowError::TooManySlots(runs.len()));
        }
        self.unmap_all()?;
        let base = self.l1_mem.host_base();
        for (slot, r) in runs.iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: if r.read_only { KVM_MEM_READONLY } else { 0 },
                guest_phys_addr: r.l2,
                memory_size: r.size,
                userspace_addr: base + r.l1,
            };
            // SAFETY: `r.l1 + r.size` lies inside L1's guest memory (checked by
            // `ept_runs`), which this L2Vm keeps mapped (a clone of the mapping handle)
            // for as long as VM2 exists.
            unsafe { self.fd.set_user_memory_region(region) }.map_err(EptShadowError::Ioctl)?;
            self.slots.push(slot as u32);
        }
        Ok(self.slots.len())
    }

    /// Delete every memslot of VM2.
    pub fn unmap_all(&mut self) -> Result<(), EptShadowError> {
        for slot in self.slots.drain(..) {
            let region = kvm_userspace_memory_region { slot, memory_size: 0, ..Default::default() };
            // SAFETY: a zero-sized region deletes the slot; no memory is handed to KVM.
            unsafe { self.fd.set_user_memory_region(region) }.map_err(EptShadowError::Ioctl)?;
        }
        Ok(())
    }

    /// The L1-physical address of L2-physical `l2` under `runs`.
    fn l1_addr(runs: &[Run], l2: u64) -> Option<u64> {
        runs.iter().find(|r| (r.l2..r.l2 + r.size).contains(&l2)).map(|r| r.l1 + (l2 - r.l2))
    }

    /// Write one byte of L2 memory at L2-physical `l2` (ignored where unmapped).
    pub fn write_l2(&self, runs: &[Run], l2: u64, byte: u8) {
        if let Some(pa) = Self::l1_addr(runs, l2) {
            let _ = self.l1_mem.write(pa, &[byte]);
        }
    }

    /// Read `len` bytes of L2 memory at L2-physical `l2` through the current runs (for
    /// instruction decoding); short at the first unmapped byte.
    #[must_use]
    pub fn read_l2(&self, runs: &[Run], l2: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut a = l2;
        while out.len() < len {
            let Some(r) = runs.iter().find(|r| (r.l2..r.l2 + r.size).contains(&a)) else { break };
            let n = ((r.l2 + r.size - a) as usize).min(len - out.len());
            match self.l1_mem.read_vec(r.l1 + (a - r.l2), n as u64) {
                Ok(bytes) => out.extend(bytes),
                Err(_) => break,
            }
            a += n as u64;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ept_fixture() -> GuestMem {
        let mem = GuestMem::new(0x40_0000).unwrap();
        mem.write_u64(0x1000, ept::table(0x2000)).unwrap();
        mem.write_u64(0x2000, ept::table(0x3000)).unwrap();
        mem.write_u64(0x3000, ept::table(0x4000)).unwrap();
        // L2 0x0000-0x2FFF -> L1 0x10000-0x12FFF (contiguous, one run), L2 0x3000 -> L1 0x20000
        // read-only, L2 0x4000 -> L1 0x21000 (contiguous in L1 but permissions differ).
        for i in 0..3 {
            mem.write_u64(0x4000 + 8 * i, ept::leaf(0x10000 + 0x1000 * i, RWX, false)).unwrap();
        }
        mem.write_u64(0x4000 + 24, ept::leaf(0x20000, ept::READ, false)).unwrap();
        mem.write_u64(0x4000 + 32, ept::leaf(0x21000, RWX, false)).unwrap();
        // L2 2 MiB page at 0x20_0000 -> L1 0x20_0000.
        mem.write_u64(0x3000 + 8, ept::leaf(0x20_0000, RWX, true)).unwrap();
        mem
    }

    #[test]
    fn runs_coalesce_contiguous_same_permission_leaves() {
        let mem = ept_fixture();
        let runs = ept_runs(&mem, ept::eptp(0x1000), 46).unwrap();
        assert_eq!(
            runs,
            [
                Run { l2: 0, l1: 0x10000, size: 0x3000, read_only: false },
                Run { l2: 0x3000, l1: 0x20000, size: 0x1000, read_only: true },
                Run { l2: 0x4000, l1: 0x21000, size: 0x1000, read_only: false },
                Run { l2: 0x20_0000, l1: 0x20_0000, size: 0x20_0000, read_only: false },
            ]
        );
    }

    #[test]
    fn fully_aliased_tables_are_refused_quickly() {
        // Every entry of one page points at the page itself: 512^3 tables, 512^4 leaves.
        let mem = GuestMem::new(0x2000).unwrap();
        for i in 0..512 {
            mem.write_u64(0x1000 + 8 * i, ept::table(0x1000)).unwrap();
        }
        let t = std::time::Instant::now();
        assert!(matches!(ept_runs(&mem, ept::eptp(0x1000), 46), Err(EptShadowError::TooManyLeaves(MAX_LEAVES))));
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "{:?}", t.elapsed());
    }

    #[test]
    fn hostile_ept12_is_an_error_not_a_crash() {
        let mem = ept_fixture();
        mem.write_u64(0x3000 + 16, ept::table(0xFFFF_F000)).unwrap();
        assert!(matches!(ept_runs(&mem, ept::eptp(0x1000), 46), Err(EptShadowError::TableOutside { .. })));
        let mem = ept_fixture();
        mem.write_u64(0x4000 + 40, ept::leaf(0x3F_F000, RWX, false) + 0x1000).unwrap();
        assert!(matches!(ept_runs(&mem, ept::eptp(0x1000), 46), Err(EptShadowError::LeafOutside { .. })));
        let mem = ept_fixture();
        mem.write_u64(0x4000 + 40, ept::leaf(0x5000, ept::WRITE, false)).unwrap();
        assert!(matches!(
            ept_runs(&mem, ept::eptp(0x1000), 46),
            Err(EptShadowError::Misconfigured { why: Misconfig::WriteWithoutRead, .. })
        ));
        // A self-referencing table terminates (depth is bounded by the level).
        let mem = ept_fixture();
        mem.write_u64(0x1000 + 8, ept::table(0x1000)).unwrap();
        let runs = ept_runs(&mem, ept::eptp(0x1000), 46).expect("bounded depth: the loop is just more leaves");
        assert!(runs.iter().any(|r| r.l2 >= 1 << 39), "the aliased PML4 slot maps more L2 space: {runs:?}");
    }
}
