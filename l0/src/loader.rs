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

/// Validate and load the ELF at `path` into `mem`.
pub fn load_elf(mem: &GuestMem, path: &Path) -> Result<Loaded, LoadError> {
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
    for index in 0..usize::from(ehdr.e_phnum) {
        let mut ph = Elf64_Phdr::default();
        file.read_exact(ph.as_mut_slice()).map_err(|_| not_elf("truncated program headers"))?;
        if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        let start = ph.p_paddr;
        let end = start.saturating_add(ph.p_memsz);
        if start < L1_IMAGE_BASE || end > mem.size() || ph.p_filesz > ph.p_memsz {
            return Err(LoadError::SegmentOutside {
                path: path.to_owned(),
                index,
                start,
                end,
                base: L1_IMAGE_BASE,
                mem_end: mem.size(),
            });
        }
        entry_ok |= ph.p_flags & 1 != 0 && (start..end).contains(&ehdr.e_entry);
    }
    if !entry_ok {
        return Err(LoadError::BadEntry { path: path.to_owned(), entry: ehdr.e_entry });
    }

    let r = ElfLoader::load(mem.inner(), None, &mut file, Some(GuestAddress(L1_IMAGE_BASE)))
        .map_err(|source| LoadError::Loader { path: path.to_owned(), source })?;
    Ok(Loaded { entry: r.kernel_load.0, end: r.kernel_end })
}
