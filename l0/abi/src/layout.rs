//! The guest-physical layout of the L1 VM that L0 builds.
//!
//! ```text
//! 0x0000_0500  boot GDT (null, 64-bit code 0x08, data 0x10)            L0
//! 0x0000_1000  PML4   \
//! 0x0000_2000  PDPT    } identity map of [0, IDENTITY_MAP_SIZE) with 2 MiB pages    L0
//! 0x0000_3000  PD     /
//! 0x0000_4000  soft VMX: VMREAD bitmap                                  L0 (softvmx)
//! 0x0000_5000  soft VMX: VMWRITE bitmap                                 L0 (softvmx)
//! 0x0000_6000  BootInfo                                                 L0
//! 0x0008_0000  initial RSP (L1 moves to its own stack at once)          L0
//! 0x0010_0000  L1 image (its ELF's PT_LOAD segments, linked here)       L0 loads, L1 owns
//! 0x3FF0_0000  soft VMX doorbell (no memslot: an MMIO exit)              L0 (softvmx)
//! ```
//! Everything below [`L1_IMAGE_BASE`] is L0's; an L1 ELF segment that reaches into it, or
//! past the end of guest memory, is refused.

/// The boot GDT.
pub const BOOT_GDT: u64 = 0x500;
/// Level-4 page table of the initial identity map.
pub const BOOT_PML4: u64 = 0x1000;
/// Page-directory-pointer table of the initial identity map.
pub const BOOT_PDPT: u64 = 0x2000;
/// Page directory of the initial identity map (2 MiB leaves).
pub const BOOT_PD: u64 = 0x3000;
/// Bytes identity-mapped by the initial page tables (one page directory of 2 MiB pages).
/// Guest-physical addresses above guest memory but below this are mapped in the page
/// tables and have no memslot: accesses there are MMIO exits.
pub const IDENTITY_MAP_SIZE: u64 = 1 << 30;
/// Where L0 places [`crate::boot::BootInfo`]; its address is also passed in RDI.
pub const BOOT_INFO: u64 = 0x6000;
/// The initial stack pointer L0 sets.
pub const BOOT_STACK_TOP: u64 = 0x8_0000;
/// Where the L1 image is linked and loaded.
pub const L1_IMAGE_BASE: u64 = 0x10_0000;
/// Boot GDT selectors.
pub const SEL_CODE64: u16 = 0x08;
/// Boot GDT data selector.
pub const SEL_DATA: u16 = 0x10;
/// Default guest memory of the L1 VM.
pub const DEFAULT_MEM_SIZE: u64 = 32 << 20;
