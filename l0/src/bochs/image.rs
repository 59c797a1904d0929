//! L1's memory for Bochs: built exactly as the soft engine builds it (the same functions:
//! [`x86_setup::write_boot_tables`], [`loader::load_elf`], the payload staging of
//! [`crate::machine`], the same [`BootInfo`]), then cut into the few non-zero regions that
//! become `optramimage` files.

use nestbench_abi::boot::{BOOT_MAGIC, BootInfo, Scenario};
use nestbench_abi::layout::{BOOT_INFO, IDENTITY_MAP_SIZE, L1_IMAGE_BASE};
use nestbench_abi::payload::{PayloadInfo, STAGING_GPA};
use nestbench_abi::{ABI_VERSION, Pod};

use crate::loader::{self, LoadError};
use crate::machine::{Image, MachineError, PayloadSpec};
use crate::memory::{GuestMem, MemoryError};
use crate::x86_setup;

/// The low region: boot GDT, page tables, boot info (everything L0 writes below 0x8000).
pub const LOW_REGION_END: u64 = 0x8000;

/// Errors of building the RAM image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Guest memory could not be allocated or written.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The L1 image could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Staging the payload failed.
    #[error("staging the payload: {0}")]
    Payload(String),
    /// A raw image does not fit guest memory or sits below the L1 area.
    #[error("raw image of {len} bytes at {gpa:#x} does not fit in [{L1_IMAGE_BASE:#x}, {mem:#x})")]
    Raw {
        /// Where it was to go.
        gpa: u64,
        /// Its length.
        len: usize,
        /// Guest memory size.
        mem: u64,
    },
    /// The non-zero bytes need more RAM images than a bochsrc can name.
    #[error(
        "L1's memory needs {0} Bochs RAM images (non-zero bytes, split at Bochs' 128 KiB memory blocks); a bochsrc takes {max}",
        max = super::config::MAX_RAM_IMAGES
    )]
    TooManyRamImages(usize),
}

/// Bochs' memory block size ("mem block size = 0x00020000" in its log). Bochs reads an
/// `optramimage` with one read(2) into the host buffer of the block at its address, and
/// allocates blocks on first use, so bytes past the first block boundary land in whatever
/// block the host allocated next, not at their guest address (measured: L1's data at
/// 0x12_0028 read back as 0 when its image crossed 0x12_0000). Every image must stay inside
/// one block.
pub const BOCHS_MEM_BLOCK: u64 = 0x2_0000;

/// Split `regions` into RAM images Bochs loads correctly: each inside one
/// [`BOCHS_MEM_BLOCK`], without leading or trailing zero bytes (Bochs' RAM starts zeroed),
/// all-zero pieces dropped.
pub fn bochs_ram_images(regions: &[Region]) -> Result<Vec<Region>, ImageError> {
    let mut out = Vec::new();
    for r in regions {
        let mut gpa = r.gpa;
        let mut rest = r.bytes.as_slice();
        while !rest.is_empty() {
            let room = (BOCHS_MEM_BLOCK - gpa % BOCHS_MEM_BLOCK) as usize;
            let (piece, tail) = rest.split_at(room.min(rest.len()));
            if let (Some(first), Some(last)) = (piece.iter().position(|&b| b != 0), piece.iter().rposition(|&b| b != 0))
            {
                out.push(Region { gpa: gpa + first as u64, bytes: piece[first..=last].to_vec() });
            }
            gpa += piece.len() as u64;
            rest = tail;
        }
    }
    if out.len() > super::config::MAX_RAM_IMAGES {
        return Err(ImageError::TooManyRamImages(out.len()));
    }
    Ok(out)
}

/// One region of guest memory to load (`optramimage`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// Its guest-physical address.
    pub gpa: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// L1's memory, ready for Bochs.
#[derive(Clone, Debug)]
pub struct RamImage {
    /// The regions to load, at most [`super::config::MAX_RAM_IMAGES`].
    pub regions: Vec<Region>,
    /// Where the ROM jumps (L1's ELF entry, or a raw image's address).
    pub entry: u64,
    /// The boot information written at [`BOOT_INFO`].
    pub boot_info: BootInfo,
}

/// Build L1's memory: `mem_size` bytes, the boot tables, `image`, the payload and the boot
/// information, as `Machine::new` does for the soft engine (without the soft engine's VMX
/// bitmaps: on Bochs, L1 uses real VMX).
pub fn build(
    mem_size: u64,
    scenario: Scenario,
    image: &Image,
    payload: Option<&PayloadSpec>,
    vmentry_case: Option<&nestbench_abi::vmentry::Case>,
) -> Result<RamImage, ImageError> {
    let mem = GuestMem::new(mem_size)?;
    x86_setup::write_boot_tables(&mem)?;
    let (entry, l1_end) = match image {
        Image::Elf(path) => {
            let l = loader::load_elf(&mem, path)?;
            (l.entry, l.end)
        }
        Image::Raw { gpa, bytes } => {
            let raw = || ImageError::Raw { gpa: *gpa, len: bytes.len(), mem: mem.size() };
            if *gpa < L1_IMAGE_BASE {
                return Err(raw());
            }
            mem.write(*gpa, bytes).map_err(|_| raw())?;
            (*gpa, *gpa + bytes.len() as u64)
        }
    };
    let payload_info = match payload {
        Some(p) => crate::machine::stage_payload(&mem, p).map_err(|e| match e {
            MachineError::Load(l) => ImageError::Load(l),
            other => ImageError::Payload(other.to_string()),
        })?,
        None => PayloadInfo::default(),
    };
    let boot_info = BootInfo {
        magic: BOOT_MAGIC,
        abi_version: ABI_VERSION,
        scenario: scenario as u32,
        mem_size: mem.size(),
        identity_map_size: IDENTITY_MAP_SIZE,
        trace_capacity: 0,
        reserved0: 0,
        reserved: [0; 3],
        payload: payload_info,
    };
    mem.write(BOOT_INFO, boot_info.as_bytes())?;
    if let Some(c) = vmentry_case {
        mem.write(nestbench_abi::vmentry::CASE_GPA, c.as_bytes())?;
    }

    let mut regions = vec![Region { gpa: 0, bytes: mem.read_vec(0, LOW_REGION_END)? }];
    let l1_start = match image {
        Image::Elf(_) => L1_IMAGE_BASE,
        Image::Raw { gpa, .. } => *gpa,
    };
    let l1_end = l1_end.next_multiple_of(4096).min(mem.size());
    regions.push(Region { gpa: l1_start, bytes: mem.read_vec(l1_start, l1_end - l1_start)? });
    if payload_info.present != 0 {
        regions.push(Region { gpa: STAGING_GPA, bytes: mem.read_vec(STAGING_GPA, payload_info.size)? });
    }
    debug_assert!(
        regions.windows(2).all(|w| w[0].gpa + w[0].bytes.len() as u64 <= w[1].gpa),
        "regions are ordered and disjoint"
    );
    Ok(RamImage { regions: bochs_ram_images(&regions)?, entry, boot_info })
}

#[cfg(test)]
mod tests {
    #[test]
    fn ram_images_stay_inside_bochs_blocks_and_skip_zeros() {
        use super::{BOCHS_MEM_BLOCK, ImageError, Region, bochs_ram_images};
        let mut bytes = vec![0u8; 0x3_0000];
        bytes[0x10] = 1; // first piece: 0x10..=0x1_FFF8 of the block
        bytes[0x1_FFF8] = 2;
        bytes[0x2_0008] = 3; // crosses into the next block at 0x12_0000
        let r = Region { gpa: 0x10_0000, bytes };
        let out = bochs_ram_images(&[r]).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].gpa, out[0].bytes.len()), (0x10_0010, 0x1_FFE9));
        assert_eq!((out[1].gpa, out[1].bytes.as_slice()), (0x12_0008, &[3u8][..]));
        assert!(out.iter().all(|r| r.gpa / BOCHS_MEM_BLOCK == (r.gpa + r.bytes.len() as u64 - 1) / BOCHS_MEM_BLOCK));
        let many: Vec<Region> = (0..5).map(|i| Region { gpa: i * BOCHS_MEM_BLOCK, bytes: vec![1] }).collect();
        assert!(matches!(bochs_ram_images(&many), Err(ImageError::TooManyRamImages(5))));
    }

    use nestbench_abi::layout::{BOOT_GDT, BOOT_PD, BOOT_PML4};

    use super::*;

    #[test]
    fn raw_image_regions_hold_the_boot_tables_boot_info_and_code() {
        let code = vec![0xEB, 0xFE];
        let img = build(32 << 20, Scenario::Probe, &Image::Raw { gpa: L1_IMAGE_BASE, bytes: code.clone() }, None, None)
            .unwrap();
        assert_eq!(img.entry, L1_IMAGE_BASE);
        assert_eq!(img.regions.len(), 2, "the low tables and the code");
        // Guest memory as Bochs will see it: the images' bytes, zero elsewhere.
        let byte = |a: u64| {
            img.regions
                .iter()
                .find(|r| (r.gpa..r.gpa + r.bytes.len() as u64).contains(&a))
                .map_or(0, |r| r.bytes[(a - r.gpa) as usize])
        };
        let u64_at = |a: u64| u64::from_le_bytes(std::array::from_fn(|i| byte(a + i as u64)));
        assert!(img.regions[0].gpa + img.regions[0].bytes.len() as u64 <= LOW_REGION_END);
        assert_eq!(u64_at(BOOT_GDT + 8), 0x00AF_9A00_0000_FFFF, "64-bit code descriptor at 0x08");
        assert_eq!(u64_at(BOOT_GDT + 40), 0, "five descriptors: the ROM loads limit 39");
        assert_eq!(u64_at(BOOT_PML4) & !0xFFF, 0x2000);
        assert_eq!(u64_at(BOOT_PD + 8) & !0xFFF, 2 << 20, "2 MiB identity pages");
        let info_bytes: Vec<u8> = (0..size_of::<BootInfo>() as u64).map(|i| byte(BOOT_INFO + i)).collect();
        let info = BootInfo::from_bytes(&info_bytes).unwrap();
        assert_eq!(info, img.boot_info);
        assert_eq!(info.magic, BOOT_MAGIC);
        assert_eq!(info.mem_size, 32 << 20);
        assert_eq!(info.payload.present, 0);
        let l1 = &img.regions[1];
        assert_eq!((l1.gpa, l1.bytes.as_slice()), (L1_IMAGE_BASE, &code[..]));
    }

    #[test]
    fn raw_images_below_the_l1_area_are_refused() {
        let r = build(32 << 20, Scenario::Probe, &Image::Raw { gpa: 0x1000, bytes: vec![0x90] }, None, None);
        assert!(matches!(r, Err(ImageError::Raw { .. })));
    }
}
