//! Loading the L1 image: a static x86-64 ELF whose PT_LOAD segments must lie in
//! `[L1_IMAGE_BASE, guest memory end)`.
//!
//! The segments are validated here (so a bad image gets an error naming the segment), then
//! linux-loader copies them in; bytes between a segment's file size and memory size stay
//! zero because guest memory is freshly allocated.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::Elf as ElfLoader;
use nestbench_abi::layout::L1_IMAGE_BASE;
use vm_memory::{ByteValued, GuestAddress};

use crate::memory::GuestMem;

/// Errors of image loading.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be opened or read.
    #[error("cannot read L1 image {path}: {source}")]
    Io {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not an x86-64 ELF executable.
    #[error("{path} is not an x86-64 ELF executable ({why})")]
    NotElf {
        /// The image path.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A loadable segment does not fit where L1 may live.
    #[error(
        "{path}: segment {index} at {start:#x}..{end:#x} is outside the L1 area {base:#x}..{mem_end:#x} \
         (guest memory is {mem_end:#x} bytes)"
    )]
    SegmentOutside {
        /// The image path.
        path: PathBuf,
        /// Program-header index.
        index: usize,
        /// Segment start (physical).
        start: u64,
        /// Segment end (physical, memory size).
        end: u64,
        /// Lowest address L1 may use.
        base: u64,
        /// End of guest memory.
        mem_end: u64,
    },
    /// The entry point is not inside a loaded executable segment.
    #[error("{path}: entry point {entry:#x} is not inside any loadable segment")]
    BadEntry {
        /// The image path.
        path: PathBuf,
        /// e_entry.
        entry: u64,
    },
    /// linux-loader refused the image.
    #[error("{path}: loader: {source}")]
    Loader {
        /// The image path.
        path: PathBuf,
        /// linux-loader's error.
        source: linux_loader::loader::Error,
    },
}

/// A loaded image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The entry point (guest-physical = linear, L1 is identity-mapped).
    pub entry: u64,
    /// The end of the highest segment (memory size included).
    pub end: u64,
}

/// The loadable segments of the ELF at `path`, validated against `[base, end)`, and its
/// entry point (which must lie in an executable segment).
fn segments(path: &Path, base: u64, end: u64) -> Result<(File, Elf64_Ehdr, Vec<Elf64_Phdr>), LoadError> {
    let io = |source| LoadError::Io { path: path.to_owned(), source };
    let not_elf = |why: &str| LoadError::NotElf { path: path.to_owned(), why: why.to_owned() };
    let mut file = File::open(path).map_err(io)?;

    let mut ehdr = Elf64_Ehdr::default();
    file.read_exact(ehdr.as_mut_slice()).map_err(|_| not_elf("shorter than an ELF header"))?;
    if ehdr.e_ident[..4] != *b"\x7fELF" {
        return Err(not_elf("no ELF magic"));
    }
    if ehdr.e_ident[4] != 2 || ehdr.e_ident[5] != 1 || ehdr.e_machine != 62 {
        return Err(not_elf("not 64-bit little-endian x86-64"));
    }
    if ehdr.e_phentsize as usize != size_of::<Elf64_Phdr>() || ehdr.e_phnum == 0 {
        return Err(not_elf("no usable program headers"));
    }

    file.seek(SeekFrom::Start(ehdr.e_phoff)).map_err(io)?;
    let mut entry_ok = false;
    let mut loads = Vec::new();
    for index in 0..usize::from(ehdr.e_phnum) {
        let mut ph = Elf64_Phdr::default();
        file.read_exact(ph.as_mut_slice()).map_err(|_| not_elf("truncated program headers"))?;
        if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        let start = ph.p_paddr;
        let seg_end = start.saturating_add(ph.p_memsz);
        if start < base || seg_end > end || ph.p_filesz > ph.p_memsz {
            return Err(LoadError::SegmentOutside {
                path: path.to_owned(),
                index,
                start,
                end: seg_end,
                base,
                mem_end: end,
            });
        }
        entry_ok |= ph.p_flags & 1 != 0 && (start..seg_end).contains(&ehdr.e_entry);
        loads.push(ph);
    }
    if !entry_ok {
        return Err(LoadError::BadEntry { path: path.to_owned(), entry: ehdr.e_entry });
    }
    Ok((file, ehdr, loads))
}

/// Validate and load the ELF at `path` into `mem`.
pub fn load_elf(mem: &GuestMem, path: &Path) -> Result<Loaded, LoadError> {
    let (mut file, _, _) = segments(path, L1_IMAGE_BASE, mem.size())?;
    let r = ElfLoader::load(mem.inner(), None, &mut file, Some(GuestAddress(L1_IMAGE_BASE)))
        .map_err(|source| LoadError::Loader { path: path.to_owned(), source })?;
    Ok(Loaded { entry: r.kernel_load.0, end: r.kernel_end })
}

/// Stage the ELF at `path`, linked in `[base, base + max)`, as a flat image at `dest` in
/// `mem`: byte `base + i` of the image lands at `dest + i`, bss is zero. Returns the entry
/// point and the image size rounded up to 4 KiB.
pub fn stage_flat(mem: &GuestMem, path: &Path, base: u64, max: u64, dest: u64) -> Result<Loaded, LoadError> {
    let (mut file, ehdr, loads) = segments(path, base, base + max)?;
    let io = |source| LoadError::Io { path: path.to_owned(), source };
    let end = loads.iter().map(|p| p.p_paddr + p.p_memsz).max().unwrap_or(base);
    let size = (end - base).next_multiple_of(4096);
    let outside = |_| LoadError::SegmentOutside {
        path: path.to_owned(),
        index: 0,
        start: dest,
        end: dest + size,
        base: dest,
        mem_end: mem.size(),
    };
    mem.write(dest, &vec![0; size as usize]).map_err(outside)?;
    for ph in &loads {
        let mut bytes = vec![0; ph.p_filesz as usize];
        file.seek(SeekFrom::Start(ph.p_offset)).map_err(io)?;
        file.read_exact(&mut bytes).map_err(io)?;
        mem.write(dest + (ph.p_paddr - base), &bytes).map_err(outside)?;
    }
    Ok(Loaded { entry: ehdr.e_entry, end: size })
}
