//! Guest memory: one contiguous range at guest-physical 0, and the only way L0 touches it.
//!
//! Every access is bounds-checked: a guest-supplied address (hypercall argument, page-table
//! entry, report pointer) that does not lie wholly inside guest memory is a
//! [`MemoryError::OutOfRange`], never an out-of-bounds access in L0.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Errors of guest-memory access.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is zero, not a multiple of 4 KiB, or too large for this host.
    #[error("guest memory size {0:#x} must be a non-zero multiple of 4 KiB")]
    BadSize(u64),
    /// The host refused the allocation.
    #[error("cannot allocate {size:#x} bytes of guest memory: {source}")]
    Alloc {
        /// Requested size.
        size: u64,
        /// What vm-memory said.
        source: vm_memory::mmap::FromRangesError,
    },
    /// `[gpa, gpa + len)` is not inside guest memory.
    #[error("guest-physical range {gpa:#x}+{len:#x} is outside guest memory (size {size:#x})")]
    OutOfRange {
        /// Start of the access.
        gpa: u64,
        /// Length of the access.
        len: u64,
        /// Guest memory size.
        size: u64,
    },
}

/// Guest memory of one VM.
#[derive(Clone, Debug)]
pub struct GuestMem {
    mem: GuestMemoryMmap,
    size: u64,
}

impl GuestMem {
    /// Allocate `size` bytes (zeroed) at guest-physical 0.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if size == 0 || size % 4096 != 0 || usize::try_from(size).is_err() {
            return Err(MemoryError::BadSize(size));
        }
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
            .map_err(|source| MemoryError::Alloc { size, source })?;
        Ok(Self { mem, size })
    }

    /// Bytes of guest memory.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The vm-memory object (for loaders).
    #[must_use]
    pub fn inner(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Host address of guest-physical 0 (for the KVM memslot).
    #[must_use]
    pub fn host_base(&self) -> u64 {
        self.mem.get_host_address(GuestAddress(0)).expect("guest memory starts at guest-physical 0") as u64
    }

    /// Check that `[gpa, gpa + len)` lies inside guest memory.
    pub fn check(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        match gpa.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(MemoryError::OutOfRange { gpa, len, size: self.size }),
        }
    }

    /// Read `buf.len()` bytes at `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check(gpa, buf.len() as u64)?;
        self.mem.read_slice(buf, GuestAddress(gpa)).map_err(|_| MemoryError::OutOfRange {
            gpa,
            len: buf.len() as u64,
            size: self.size,
        })
    }

    /// Read `len` bytes at `gpa` into a new vector.
    pub fn read_vec(&self, gpa: u64, len: u64) -> Result<Vec<u8>, MemoryError> {
        self.check(gpa, len)?;
        let mut v = vec![0; len as usize];
        self.read(gpa, &mut v)?;
        Ok(v)
    }

    /// Write `bytes` at `gpa`.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.check(gpa, bytes.len() as u64)?;
        self.mem.write_slice(bytes, GuestAddress(gpa)).map_err(|_| MemoryError::OutOfRange {
            gpa,
            len: bytes.len() as u64,
            size: self.size,
        })
    }

    /// Read a little-endian u64 at `gpa`.
    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        let mut b = [0; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Write a little-endian u64 at `gpa`.
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_outside_memory_are_errors_not_crashes() {
        let m = GuestMem::new(0x4000).unwrap();
        assert!(m.write_u64(0x3FF8, 7).is_ok());
        assert_eq!(m.read_u64(0x3FF8).unwrap(), 7);
        assert!(matches!(m.read_u64(0x3FF9), Err(MemoryError::OutOfRange { .. })));
        assert!(matches!(m.read_vec(u64::MAX - 2, 8), Err(MemoryError::OutOfRange { .. })));
        assert!(matches!(m.write(0x4000, &[1]), Err(MemoryError::OutOfRange { .. })));
        assert!(m.read_vec(0x4000, 0).is_ok(), "an empty range at the end is inside");
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(GuestMem::new(0), Err(MemoryError::BadSize(0))));
        assert!(matches!(GuestMem::new(4097), Err(MemoryError::BadSize(4097))));
    }
}
