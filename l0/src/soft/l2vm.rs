//! VM2: the KVM VM that L2 runs in, on the same thread as L1 (never concurrently), with
//! EPT-on-EPT as a memslot shadow (docs/architecture.md): every leaf of L1's EPT12 becomes
//! (part of) a memslot of VM2 whose host memory is the L1 memory the leaf points at,
//! contiguous runs coalesced, read-only where EPT12 denies writes.
//!
//! VM2's memslots are filled lazily (soft engine part 2, [`super::ept_fault`]): at every VM
//! entry L0 maps what KVM's own walk needs ([`L2Vm::premap`]: L2's paging structures
//! reachable from CR3, GDT, IDT, TSS, the pages at RIP and RSP; docs/kvm-exits.md rows 8 and 9
//! say why), and every other page on its first touch ([`L2Vm::fill`]), one EPT12 leaf (4 KiB,
//! 2 MiB or 1 GiB) at a time, coalesced with a neighbouring slot when both are contiguous in
//! L2 and L1 memory and agree on read-only. INVEPT or a new EPTP drops every slot
//! ([`L2Vm::reset`]). When KVM's memslot limit is reached the oldest slot that is not
//! premapped is evicted and refilled on its next touch.

pub use nestbench_protocol::soft::EptStats;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY, kvm_sregs, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VmFd};
use nestbench_abi::ept::{self, ADDR_MASK, LARGE_PAGE, Misconfig, PhysRead, RWX, Walk};

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

/// L1 memory as the EPT walker's bounds-checked [`PhysRead`].
pub struct L1Phys<'a>(pub &'a GuestMem);

impl PhysRead for L1Phys<'_> {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        self.0.read_u64(pa).ok()
    }
}

/// What a first touch found in EPT12.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// EPT12 allows the access: the leaf is mapped in VM2 now (or was already).
    Mapped {
        /// R/W/X of the translation.
        perms: u64,
    },
    /// EPT12 does not allow it: an EPT violation, with the R/W/X of the translation (0 when
    /// an entry on the path is not present; SDM 28.2.1, Table 28-7 bits 5:3).
    Violation {
        /// R/W/X.
        perms: u64,
    },
    /// A present EPT12 entry on the path is malformed: an EPT misconfiguration (SDM
    /// 29.3.3.1).
    Misconfig {
        /// Level of the entry.
        level: u8,
        /// The entry.
        entry: u64,
        /// The rule it breaks.
        why: Misconfig,
    },
}

/// One memslot of VM2.
#[derive(Clone, Copy, Debug)]
struct Slot {
    id: u32,
    run: Run,
    /// Premapped for KVM's own walk: never evicted.
    pinned: bool,
    /// Creation order (eviction takes the oldest).
    seq: u64,
}

/// What a memslot shadow of EPT12 cannot do (`nestbench payloads` lists them):
/// stated by `nestbench payloads` and recorded in every soft-engine result ([`EptStats`]).
pub const MEMSLOT_LIMITS: [&str; 7] = [
    "no execute-only and no X=0 enforcement: a memslot is always executable",
    "no EPT accessed/dirty flags (not advertised)",
    "KVM silently skips L2 page-table A/D updates on read-only slots",
    "a slot's read-only flag cannot change and slots cannot overlap: a split or permission change is delete + re-create",
    "deleting a slot may zap all of KVM's shadow pages: INVEPT and eviction costs measured here are this engine's, not hardware's",
    "when L1 edits L2's page tables, VM2's shadow MMU does not see the write (another VM's store): L0 copies L2's paging-structure pages at every exit, compares them at the next entry and re-creates the slots of changed ones (a delete may zap every shadow page)",
    "a page-table, GDT/IDT/TSS page that EPT12 does not map before L2 runs becomes a #PF inside KVM, not a reflectable EPT violation (a code page is handled: KVM's emulation failure on the fetch becomes an L0 fill or an EPT violation with the fetch bit)",
];

/// The memslots VM2 keeps by default, below KVM's limit (32,764 here): on this host's
/// kernel a KVM_SET_USER_MEMORY_REGION costs more the more slots the VM has (perf: 29% of an
/// `ept_fill` run of 64k pages in kvm_set_memory_region itself at 32k slots), so a first
/// touch got 2.6x dearer from 1 MiB to 256 MiB of L2 memory at KVM's limit and 1.4x with this
/// budget (ept bench (b)). `--memslot-limit` sets another, up to KVM's.
pub const DEFAULT_MEMSLOT_BUDGET: usize = 4096;

/// At the memslot limit, the oldest `limit / EVICTION_BATCH_DIVISOR` unpinned slots are
/// evicted together.
pub const EVICTION_BATCH_DIVISOR: usize = 8;

/// The most L2 paging-structure pages [`L2Vm::premap`] follows (L1 is hostile input).
pub const MAX_PREMAP_TABLES: usize = 4096;

/// VM2 and its vCPU.
#[derive(Debug)]
pub struct L2Vm {
    fd: VmFd,
    /// L2's vCPU.
    pub vcpu: Vcpu,
    l1_mem: GuestMem,
    eptp: u64,
    maxphyaddr: u32,
    slots: BTreeMap<u64, Slot>,
    /// The unpinned slots by creation order (`seq` -> L2 start): eviction takes the first, in
    /// O(log n) whatever the slot count.
    by_age: BTreeMap<u64, u64>,
    free_ids: Vec<u32>,
    next_id: u32,
    seq: u64,
    max_slots: usize,
    kvm_max_slots: usize,
    /// L2's paging-structure pages (L2-physical) as of the last exit, with their contents:
    /// [`L2Vm::resync_tables`] compares them at the next entry.
    tables: BTreeMap<u64, Vec<u8>>,
    /// Counters.
    pub stats: EptStats,
    /// Whether the vCPU is single-stepped ([`L2Vm::single_step`]).
    stepping: bool,
}

impl L2Vm {
    /// Create VM2 (no memory yet) and its vCPU, with KVM's CPUID (nestbench's hypervisor leaf
    /// without features: L2 has no hypercalls) and the boot MSRs of L1's VM.
    pub fn new(kvm: &Kvm, l1_mem: GuestMem) -> Result<Self, VmError> {
        let ioctl = |op| move |source| VmError::Ioctl { op, source };
        let fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM (VM2)"))?;
        // Fetches from pages without memslot must reach L0 at L2's CPL 3 too (row 8).
        crate::vm::exit_on_emulation_failure(kvm, &fd)?;
        let vcpu_fd = fd.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU (VM2)"))?;
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu_fd.set_cpuid2(&x86_setup::guest_cpuid(&supported, 0)).map_err(ioctl("KVM_SET_CPUID2 (VM2)"))?;
        vcpu_fd.set_msrs(&x86_setup::boot_msrs()).map_err(ioctl("KVM_SET_MSRS (VM2)"))?;
        let vcpu = Vcpu::new(vcpu_fd, kvm.check_extension(Cap::SyncRegs));
        let kvm_max = kvm.get_nr_memslots();
        let max_slots = kvm_max.min(DEFAULT_MEMSLOT_BUDGET);
        Ok(Self {
            fd,
            vcpu,
            l1_mem,
            eptp: 0,
            maxphyaddr: 46,
            slots: BTreeMap::new(),
            by_age: BTreeMap::new(),
            free_ids: Vec::new(),
            next_id: 0,
            seq: 0,
            max_slots,
            tables: BTreeMap::new(),
            kvm_max_slots: kvm_max,
            stepping: false,
            stats: EptStats {
                memslot_limit: max_slots as u64,
                kvm_memslot_limit: kvm_max as u64,
                known_limits: MEMSLOT_LIMITS.map(str::to_owned).to_vec(),
                ..EptStats::default()
            },
        })
    }

    /// Single-step the vCPU or stop (`super::cr3_exiting`): at every entry while on (KVM
    /// keeps stepping only from the RIP it was asked at: [`Vcpu::set_single_step`]), when
    /// off only to turn it off.
    pub fn single_step(&mut self, on: bool) -> Result<(), crate::vcpu::VcpuError> {
        if on || self.stepping {
            self.vcpu.set_single_step(on)?;
            self.stepping = on;
        }
        Ok(())
    }

    /// VM2's fd (statistics).
    #[must_use]
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Keep at most `n` memslots (at least 1, at most KVM's limit) instead of
    /// [`DEFAULT_MEMSLOT_BUDGET`].
    pub fn set_memslot_limit(&mut self, n: usize) {
        self.max_slots = n.clamp(1, self.kvm_max_slots.max(1));
        self.stats.memslot_limit = self.max_slots as u64;
    }

    /// Drop every memslot and shadow the EPT12 at `eptp` from now on (VM entry with a new
    /// EPTP, INVEPT).
    pub fn reset(&mut self, eptp: u64, maxphyaddr: u32) -> Result<(), EptShadowError> {
        self.unmap_all()?;
        self.tables.clear();
        self.eptp = eptp;
        self.maxphyaddr = maxphyaddr;
        self.stats.resets += 1;
        Ok(())
    }

    /// Delete every memslot of VM2.
    pub fn unmap_all(&mut self) -> Result<(), EptShadowError> {
        let keys: Vec<u64> = self.slots.keys().copied().collect();
        for k in keys {
            self.delete(k)?;
        }
        Ok(())
    }

    fn delete(&mut self, key: u64) -> Result<Slot, EptShadowError> {
        let slot = self.slots.remove(&key).expect("a slot of the map");
        if !slot.pinned {
            self.by_age.remove(&slot.seq);
        }
        let region = kvm_userspace_memory_region { slot: slot.id, memory_size: 0, ..Default::default() };
        // SAFETY: a zero-sized region deletes the slot; no memory is handed to KVM.
        unsafe { self.fd.set_user_memory_region(region) }.map_err(EptShadowError::Ioctl)?;
        self.stats.slot_ioctls += 1;
        self.free_ids.push(slot.id);
        self.stats.memslots = self.slots.len() as u64;
        Ok(slot)
    }

    fn create(&mut self, run: Run, pinned: bool) -> Result<(), EptShadowError> {
        if self.slots.len() >= self.max_slots {
            // Evict the oldest eighth at once, not one slot per fill: deleting a slot that
            // has mappings makes KVM drop its shadow pages (kvm_arch_flush_shadow_memslot),
            // and L2's page tables, code and stack then fault back in. One batch pays that
            // rebuild once per max_slots/8 fills instead of at every fill (ept bench (b)).
            let batch = (self.max_slots / EVICTION_BATCH_DIVISOR).max(1);
            let victims: Vec<u64> = self.by_age.values().take(batch).copied().collect();
            if victims.is_empty() {
                return Err(EptShadowError::TooManySlots(self.slots.len() + 1));
            }
            for v in victims {
                self.delete(v)?;
                self.stats.evictions += 1;
            }
        }
        let id = self.free_ids.pop().unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id - 1
        });
        self.l1_mem.check(run.l1, run.size).map_err(|_| EptShadowError::LeafOutside {
            l2: run.l2,
            pa: run.l1,
            size: run.size,
        })?;
        let region = kvm_userspace_memory_region {
            slot: id,
            flags: if run.read_only { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: run.l2,
            memory_size: run.size,
            userspace_addr: self.l1_mem.host_base() + run.l1,
        };
        // SAFETY: `run.l1 + run.size` lies inside L1's guest memory (checked just above),
        // which this L2Vm keeps mapped (a clone of the mapping handle) for as long as VM2
        // exists; the range overlaps no other slot of VM2 (callers delete those first).
        if let Err(e) = unsafe { self.fd.set_user_memory_region(region) } {
            self.free_ids.push(id);
            return Err(EptShadowError::Ioctl(e));
        }
        self.stats.slot_ioctls += 1;
        self.seq += 1;
        self.slots.insert(run.l2, Slot { id, run, pinned, seq: self.seq });
        if !pinned {
            self.by_age.insert(self.seq, run.l2);
        }
        self.stats.memslots = self.slots.len() as u64;
        self.stats.memslots_peak = self.stats.memslots_peak.max(self.stats.memslots);
        Ok(())
    }

    /// Whether VM2 has a memslot at L2-physical `l2`.
    #[must_use]
    pub fn is_mapped(&self, l2: u64) -> bool {
        self.slot_at(l2).is_some()
    }

    /// The slot that maps L2-physical `l2`, if any.
    /// The slots that overlap `[l2, l2 + size)`, by start: the one that may begin below
    /// `l2` and those that begin inside the range (slots never overlap each other, so an
    /// O(log n) range query finds them whatever the slot count).
    fn overlapping(&self, l2: u64, size: u64) -> Vec<u64> {
        let below = self.slot_at(l2).map(|s| s.run.l2).filter(|&k| k < l2);
        below.into_iter().chain(self.slots.range(l2..l2.saturating_add(size)).map(|(&k, _)| k)).collect()
    }

    fn slot_at(&self, l2: u64) -> Option<&Slot> {
        self.slots.range(..=l2).next_back().map(|(_, s)| s).filter(|s| l2 - s.run.l2 < s.run.size)
    }

    /// Walk EPT12 for `gpa`.
    #[must_use]
    pub fn walk(&self, gpa: u64) -> Walk {
        ept::walk(&L1Phys(&self.l1_mem), self.eptp, gpa, self.maxphyaddr)
    }

    /// First touch of L2-physical `gpa` with `access` (R/W/X bits): map its EPT12 leaf into
    /// VM2 if EPT12 allows the access, else say why not. `pinned` keeps the slot from
    /// eviction (premapped pages).
    pub fn fill(&mut self, gpa: u64, access: u64, pinned: bool) -> Result<Fill, EptShadowError> {
        let (pa, perms, size) = match self.walk(gpa) {
            Walk::Mapped { pa, perms, page_size } => (pa, perms, page_size),
            Walk::NotPresent { perms, .. } => return Ok(Fill::Violation { perms }),
            Walk::Misconfigured { level, entry, why } => return Ok(Fill::Misconfig { level, entry, why }),
            Walk::BadTableAddress { level, pa } => return Err(EptShadowError::TableOutside { pa, level }),
        };
        if perms & access != access {
            return Ok(Fill::Violation { perms });
        }
        let run = Run { l2: gpa & !(size - 1), l1: pa & !(size - 1), size, read_only: perms & ept::WRITE == 0 };
        if let Some(s) = self.slot_at(gpa).copied() {
            let same =
                s.run.read_only == run.read_only && s.run.l1.wrapping_sub(s.run.l2) == run.l1.wrapping_sub(run.l2);
            if same {
                if pinned && !s.pinned {
                    self.slots.get_mut(&s.run.l2).expect("found above").pinned = true;
                    self.by_age.remove(&s.seq);
                }
                return Ok(Fill::Mapped { perms });
            }
        }
        // Slots cannot overlap or change their read-only flag: drop what the leaf overlaps
        // (it is refilled on its next touch, or premapped again at the next entry).
        let overlapping = self.overlapping(run.l2, run.size);
        for k in overlapping {
            self.delete(k)?;
        }
        self.insert_coalesced(run, pinned)?;
        Ok(Fill::Mapped { perms })
    }

    /// Add `run`, merged with a slot just below and/or just above it when they continue it
    /// in both address spaces with the same read-only flag.
    fn insert_coalesced(&mut self, mut run: Run, mut pinned: bool) -> Result<(), EptShadowError> {
        let below = run.l2.checked_sub(1).and_then(|a| self.slot_at(a)).copied();
        let above = self.slots.get(&(run.l2 + run.size)).copied();
        let mut merged = false;
        if let Some(b) = below.filter(|b| b.run.read_only == run.read_only && b.run.l1 + b.run.size == run.l1) {
            self.delete(b.run.l2)?;
            run = Run { l2: b.run.l2, l1: b.run.l1, size: b.run.size + run.size, read_only: run.read_only };
            pinned |= b.pinned;
            merged = true;
        }
        if let Some(a) = above.filter(|a| a.run.read_only == run.read_only && run.l1 + run.size == a.run.l1) {
            self.delete(a.run.l2)?;
            run.size += a.run.size;
            pinned |= a.pinned;
            merged = true;
        }
        self.stats.coalesced += u64::from(merged);
        self.create(run, pinned)
    }

    /// The memslots as runs, in L2 order.
    #[must_use]
    pub fn runs(&self) -> Vec<Run> {
        self.slots.values().map(|s| s.run).collect()
    }

    /// Map what KVM's own walk of L2 needs before L2 runs (docs/kvm-exits.md rows 8 and 9: a
    /// missing memslot under a page walk is a #PF inside L2 and under an instruction fetch an
    /// emulation failure, neither an exit L0 could reflect): every L2 paging structure
    /// reachable from CR3, the GDT, IDT and TSS, and the pages at RIP and RSP. Pages EPT12
    /// does not map are left alone (hardware would take the EPT violation when it touches
    /// them; here KVM would take a #PF: see the known limits). Returns the leaves newly
    /// mapped.
    pub fn premap(&mut self, sregs: &kvm_sregs, rip: u64, rsp: u64) -> Result<u64, EptShadowError> {
        let mut mapped = 0u64;
        let mut pin = |this: &mut Self, gpa: u64| -> Result<(), EptShadowError> {
            let had = this.slot_at(gpa).is_some();
            if matches!(this.fill(gpa, ept::READ, true)?, Fill::Mapped { .. }) && !had {
                mapped += 1;
            }
            Ok(())
        };
        // L2's paging structures (4-level paging; SDM 4.5), breadth first.
        let mut seen = HashSet::new();
        let mut queue = vec![(sregs.cr3 & ADDR_MASK, 4u8)];
        self.tables.clear();
        while let Some((table, level)) = queue.pop() {
            if !seen.insert(table) || seen.len() > MAX_PREMAP_TABLES {
                continue;
            }
            pin(self, table)?;
            self.tables.insert(table, Vec::new());
            if level == 1 {
                continue;
            }
            let page = self.read_l2(table, 4096);
            for e in page.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))) {
                let large = (level == 2 || level == 3) && e & (1 << 7) != 0;
                if e & 1 != 0 && !large {
                    queue.push((e & ADDR_MASK, level - 1));
                }
            }
        }
        // Linear ranges KVM touches without an exit of its own.
        let ranges = [
            (sregs.gdt.base, u64::from(sregs.gdt.limit) + 1),
            (sregs.idt.base, u64::from(sregs.idt.limit) + 1),
            (sregs.tr.base, u64::from(sregs.tr.limit) + 1),
            (rip, 16),
            (rsp.wrapping_sub(8), 16),
        ];
        for (base, len) in ranges {
            let mut page = base & !0xFFF;
            let end = base.saturating_add(len);
            while page < end {
                if let Some(gpa) = self.l2_phys(sregs.cr3, page) {
                    pin(self, gpa)?;
                }
                page += 4096;
            }
        }
        self.stats.premapped += mapped;
        Ok(mapped)
    }

    /// Remember the contents of L2's paging-structure pages (those the last [`L2Vm::premap`]
    /// followed) at a VM exit, for [`L2Vm::resync_tables`] at the next entry.
    pub fn snapshot_tables(&mut self) {
        let keys: Vec<u64> = self.tables.keys().copied().collect();
        for t in keys {
            let page = self.read_l2(t, 4096);
            self.tables.insert(t, page);
        }
    }

    /// At VM entry: if L1 changed one of L2's paging-structure pages since the last exit,
    /// delete the slots that hold the changed pages (the next [`L2Vm::premap`] re-creates
    /// them). L1's stores are another VM's writes to the host memory behind VM2's slot, so
    /// KVM's shadow MMU for VM2, which write-protects L2's page tables to see L2's own
    /// stores, never notices them; deleting the memslot makes KVM drop the shadow pages
    /// built from it (x86 KVM may zap all of them: kvm_arch_flush_shadow_memslot), and
    /// rebuild them from the new entries. Cost: a 4 KiB copy per paging-structure page at
    /// every exit and a compare at every entry (6 pages, 24 KiB, for the payloads here),
    /// plus, only when something changed, one delete and one create ioctl per slot and
    /// KVM's rebuild of its shadow pages. Returns the slots deleted.
    pub fn resync_tables(&mut self) -> Result<u64, EptShadowError> {
        let changed: Vec<u64> = self
            .tables
            .iter()
            .filter(|(t, old)| !old.is_empty() && self.read_l2(**t, 4096) != **old)
            .map(|(t, _)| *t)
            .collect();
        let mut deleted = 0;
        for t in changed {
            if let Some(key) = self.slot_at(t).map(|s| s.run.l2) {
                self.delete(key)?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            self.stats.table_resyncs += 1;
            self.stats.table_resync_slots += deleted;
        }
        Ok(deleted)
    }

    /// L2-linear `linear` as L2-physical, through L2's paging read through EPT12.
    #[must_use]
    pub fn l2_phys(&self, cr3: u64, linear: u64) -> Option<u64> {
        let read = |pa: u64| {
            let b = self.read_l2(pa, 8);
            b.try_into().map(u64::from_le_bytes).map_err(|_| crate::memory::MemoryError::OutOfRange {
                gpa: pa,
                len: 8,
                size: 0,
            })
        };
        crate::paging::translate_with(read, cr3, linear).ok().map(|t| t.gpa)
    }

    /// Read `len` bytes of L2 at linear address `linear` (through L2's page tables and
    /// EPT12), short at the first byte that does not translate. One page walk per page.
    #[must_use]
    pub fn read_linear(&self, cr3: u64, linear: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut a = linear;
        while out.len() < len {
            let Some(gpa) = self.l2_phys(cr3, a) else { break };
            let n = (4096 - (a & 0xFFF) as usize).min(len - out.len());
            let bytes = self.read_l2(gpa, n);
            let got = bytes.len();
            out.extend(bytes);
            if got < n {
                break;
            }
            a += n as u64;
        }
        out
    }

    /// Write `bytes` to L2 at linear address `linear`, skipping bytes that do not translate.
    pub fn write_linear(&self, cr3: u64, linear: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            if let Some(gpa) = self.l2_phys(cr3, linear + i as u64) {
                self.write_l2(gpa, *b);
            }
        }
    }

    /// The L1-physical address of L2-physical `l2` under EPT12 (as L1 has it now).
    fn l1_addr(&self, l2: u64) -> Option<u64> {
        match self.walk(l2) {
            Walk::Mapped { pa, .. } => Some(pa),
            _ => None,
        }
    }

    /// Write one byte of L2 memory at L2-physical `l2` through EPT12 (ignored where EPT12
    /// maps nothing).
    pub fn write_l2(&self, l2: u64, byte: u8) {
        if let Some(pa) = self.l1_addr(l2) {
            let _ = self.l1_mem.write(pa, &[byte]);
        }
    }

    /// Read `len` bytes of L2 memory at L2-physical `l2` through EPT12 (for instruction
    /// decoding and L2's paging structures); short at the first byte EPT12 does not map.
    #[must_use]
    pub fn read_l2(&self, l2: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut a = l2;
        while out.len() < len {
            let Some(pa) = self.l1_addr(a) else { break };
            let n = (4096 - (a & 0xFFF) as usize).min(len - out.len());
            match self.l1_mem.read_vec(pa, n as u64) {
                Ok(bytes) => out.extend(bytes),
                Err(_) => break,
            }
            a += n as u64;
        }
        out
    }

    /// Write `bytes` of L2 memory at L2-physical `l2` through EPT12 (a store KVM retired
    /// into an exit, completed by L0 after a fill). Returns whether every byte landed.
    pub fn write_l2_bytes(&self, l2: u64, bytes: &[u8]) -> bool {
        let mut done = 0;
        while done < bytes.len() {
            let a = l2 + done as u64;
            let Some(pa) = self.l1_addr(a) else { return false };
            let n = (4096 - (a & 0xFFF) as usize).min(bytes.len() - done);
            if self.l1_mem.write(pa, &bytes[done..done + n]).is_err() {
                return false;
            }
            done += n;
        }
        true
    }

    /// Time a fill for the counters.
    pub fn note_fill(&mut self, started: Instant) {
        self.stats.fills += 1;
        self.stats.fill_ns += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
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
