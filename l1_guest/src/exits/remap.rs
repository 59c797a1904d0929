//! The remapping payloads' `out PAYLOAD_PORT, eax`: L1 changes L2's memory map between two
//! VM entries, and the payload checks that it sees the change.
//!
//! * `ept_remap`: EPT12's leaf for [`EPT_DATA_GPA`] alternates between two seeded L1 frames
//!   (present to present with another address), then L1 executes INVEPT of the type in EAX
//!   (1 single-context, 2 all-context) for its EPTP. SDM 29.4.3.1: software must invalidate
//!   after changing an EPT entry that may be cached; INVEPT (SDM 31.3) does so.
//! * `pte_remap`: L2's own page-table entry for linear [`EPT_DATA_GPA`] alternates between
//!   L2-physical data pages 0 and 1 (both mapped by EPT12). L1 runs L2 without VPIDs, so
//!   the VM exit and the next VM entry invalidate L2's linear mappings (SDM 29.1 and
//!   29.4.3.3), and L2 needs no INVLPG.

use nestbench_abi::payload::EPT_DATA_GPA;

use super::{EXIT_PAYLOAD_FAILED, RunState};
use crate::ept_builder::{EptBuilder, FrameMemory, PageSize};
use crate::vcpu::Vcpu;

const PAGE: u64 = 4096;
/// L2 page-table entry flags of the data region (present, writable, user, A, D).
const PTE: u64 = 0x67;

/// What L1 remaps on each `out PAYLOAD_PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remap {
    /// `ept_remap`: EPT12's leaf for data page 0 points at `frames[current]`.
    Ept {
        /// The two L1 frames.
        frames: [u64; 2],
        /// The one mapped now.
        current: usize,
        /// INVEPTs executed, by type (1, 2).
        invepts: [u64; 2],
    },
    /// `pte_remap`: L2's PTE for linear data page 0 (at L1-physical `pte`) maps L2-physical
    /// data page `current` (0 or 1).
    Pte {
        /// L1-physical address of the PTE.
        pte: u64,
        /// The data page it maps now.
        current: u64,
        /// Changes made.
        changes: u64,
    },
}

/// Remap on the payload's request (the caller records the exit and skips the OUT).
pub fn on_port<V: Vcpu>(vcpu: &mut V, run: &mut RunState) {
    let eptp = run.eptp;
    let (Some(remap), Some(pool)) = (run.remap.as_mut(), run.ept.as_mut()) else { return };
    match remap {
        Remap::Ept { frames, current, invepts } => {
            let kind = vcpu.regs().rax & 0xFFFF_FFFF;
            if kind != 1 && kind != 2 {
                crate::println!("l1: ept_remap: INVEPT type {kind} requested (1 or 2)");
                crate::hypercall::exit(EXIT_PAYLOAD_FAILED)
            }
            *current ^= 1;
            let mut e = EptBuilder::from_eptp(eptp);
            let ok = e.unmap(&mut pool.frames, EPT_DATA_GPA)
                && e.map(&mut pool.frames, EPT_DATA_GPA, frames[*current], PageSize::Size4K, nestbench_abi::ept::RWX)
                    .is_ok();
            if !ok {
                crate::println!("l1: ept_remap: cannot remap {EPT_DATA_GPA:#x}");
                crate::hypercall::exit(EXIT_PAYLOAD_FAILED)
            }
            vcpu.invalidate_nested(kind, eptp);
            invepts[kind as usize - 1] += 1;
        }
        Remap::Pte { pte, current, changes } => {
            *current ^= 1;
            pool.frames.write_u64(*pte, (EPT_DATA_GPA + *current * PAGE) | PTE);
            *changes += 1;
        }
    }
}

/// The console line L1 prints at the end of a remapping payload.
pub fn summary(remap: &Remap) {
    match remap {
        Remap::Ept { invepts, .. } => crate::println!(
            "l1: ept_remap: {} remaps, INVEPT single-context {}, all-context {}",
            invepts[0] + invepts[1],
            invepts[0],
            invepts[1]
        ),
        Remap::Pte { changes, .. } => crate::println!("l1: pte_remap: {changes} L2 PTE changes"),
    }
}
