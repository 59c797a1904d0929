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
    Ok(RamImage { regions, entry, boot_info })
}

#[cfg(test)]
mod tests {
    use nestbench_abi::layout::{BOOT_GDT, BOOT_PD, BOOT_PML4};

    use super::*;

    #[test]
    fn raw_image_regions_hold_the_boot_tables_boot_info_and_code() {
        let code = vec![0xEB, 0xFE];
        let img =
            build(32 << 20, Scenario::Probe, &Image::Raw { gpa: L1_IMAGE_BASE, bytes: code.clone() }, None).unwrap();
        assert_eq!(img.entry, L1_IMAGE_BASE);
        assert_eq!(img.regions.len(), 2);
        let low = &img.regions[0];
        assert_eq!((low.gpa, low.bytes.len() as u64), (0, LOW_REGION_END));
        let u64_at = |a: u64| u64::from_le_bytes(low.bytes[a as usize..a as usize + 8].try_into().unwrap());
        assert_eq!(u64_at(BOOT_GDT + 8), 0x00AF_9A00_0000_FFFF, "64-bit code descriptor at 0x08");
        assert_eq!(u64_at(BOOT_GDT + 40), 0, "five descriptors: the ROM loads limit 39");
        assert_eq!(u64_at(BOOT_PML4) & !0xFFF, 0x2000);
        assert_eq!(u64_at(BOOT_PD + 8) & !0xFFF, 2 << 20, "2 MiB identity pages");
        let info = BootInfo::from_bytes(&low.bytes[BOOT_INFO as usize..]).unwrap();
        assert_eq!(info, img.boot_info);
        assert_eq!(info.magic, BOOT_MAGIC);
        assert_eq!(info.mem_size, 32 << 20);
        assert_eq!(info.payload.present, 0);
        let l1 = &img.regions[1];
        assert_eq!(l1.gpa, L1_IMAGE_BASE);
        assert_eq!(&l1.bytes[..2], &code[..]);
        assert_eq!(l1.bytes.len(), 4096);
    }

    #[test]
    fn raw_images_below_the_l1_area_are_refused() {
        let r = build(32 << 20, Scenario::Probe, &Image::Raw { gpa: 0x1000, bytes: vec![0x90] }, None);
        assert!(matches!(r, Err(ImageError::Raw { .. })));
    }
}
