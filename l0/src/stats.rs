//! KVM binary statistics (`KVM_GET_STATS_FD`, Documentation/virt/kvm/api.rst 4.133) for a
//! VM or a vCPU: every statistic the host offers, by name, read before and after a run.
//!
//! The file is a header, descriptors (one per statistic: flags, exponent, size, offset,
//! name) and data (u64 values). Descriptors are read once; a snapshot re-reads the data
//! block with one `pread`.

pub use nestbench_protocol::stats::{StatKind, StatsDelta};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

/// `KVM_GET_STATS_FD` = `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xAECE;

const TYPE_MASK: u32 = 0xF;
const TYPE_CUMULATIVE: u32 = 0x0;
const TYPE_INSTANT: u32 = 0x1;
const TYPE_PEAK: u32 = 0x2;

/// Errors of statistics access.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The ioctl failed (kernels before 5.14 have no binary stats).
    #[error("KVM_GET_STATS_FD: {0}")]
    Ioctl(std::io::Error),
    /// Reading the stats file failed.
    #[error("reading KVM stats: {0}")]
    Read(std::io::Error),
    /// The header or a descriptor is inconsistent.
    #[error("malformed KVM stats file: {0}")]
    Malformed(&'static str),
}

#[derive(Clone, Debug)]
struct Desc {
    name: String,
    kind: StatKind,
    offset: u64,
    size: usize,
}

/// An open statistics file.
#[derive(Debug)]
pub struct StatsFd {
    file: File,
    descs: Vec<Desc>,
    data_offset: u64,
    data_len: usize,
}

/// Values of every statistic at one moment (histograms summed over buckets).
pub type Snapshot = BTreeMap<String, (StatKind, u64)>;

fn u32_at(b: &[u8], off: usize) -> Result<u32, StatsError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or(StatsError::Malformed("truncated"))
}

impl StatsFd {
    /// Open the statistics of a VM or vCPU file descriptor.
    pub fn open(fd: &impl AsRawFd) -> Result<Self, StatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file descriptor or -1;
        // `fd` is a live KVM VM or vCPU descriptor borrowed for the call.
        let raw = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD, 0) };
        if raw < 0 {
            return Err(StatsError::Ioctl(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(raw) };
        let mut hdr = [0u8; 24];
        file.read_exact_at(&mut hdr, 0).map_err(StatsError::Read)?;
        let name_size = u32_at(&hdr, 4)? as usize;
        let num_desc = u32_at(&hdr, 8)? as usize;
        let desc_offset = u64::from(u32_at(&hdr, 16)?);
        let data_offset = u64::from(u32_at(&hdr, 20)?);
        if num_desc > 4096 || name_size > 4096 {
            return Err(StatsError::Malformed("implausible descriptor count or name size"));
        }
        let desc_size = 16 + name_size;
        let mut raw_descs = vec![0u8; desc_size * num_desc];
        file.read_exact_at(&mut raw_descs, desc_offset).map_err(StatsError::Read)?;
        let mut descs = Vec::with_capacity(num_desc);
        let mut data_len = 0usize;
        for d in raw_descs.chunks_exact(desc_size) {
            let flags = u32_at(d, 0)?;
            let size = usize::from(u16::from_le_bytes([d[6], d[7]]));
            let offset = u32_at(d, 8)?;
            let name = &d[16..];
            let name =
                String::from_utf8_lossy(&name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())]).into_owned();
            let kind = match flags & TYPE_MASK {
                TYPE_CUMULATIVE => StatKind::Cumulative,
                TYPE_INSTANT => StatKind::Instant,
                TYPE_PEAK => StatKind::Peak,
                _ => StatKind::Histogram,
            };
            data_len = data_len.max(offset as usize + 8 * size);
            descs.push(Desc { name, kind, offset: u64::from(offset), size });
        }
        Ok(Self { file, descs, data_offset, data_len })
    }

    /// Read every statistic now.
    pub fn snapshot(&self) -> Result<Snapshot, StatsError> {
        let mut data = vec![0u8; self.data_len];
        self.file.read_exact_at(&mut data, self.data_offset).map_err(StatsError::Read)?;
        let mut out = BTreeMap::new();
        for d in &self.descs {
            let start = d.offset as usize;
            let v: u64 = data[start..start + 8 * d.size]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .fold(0u64, u64::wrapping_add);
            out.insert(d.name.clone(), (d.kind, v));
        }
        Ok(out)
    }
}

/// The delta from `before` to `after`.
#[must_use]
pub fn delta(before: &Snapshot, after: &Snapshot) -> StatsDelta {
    let mut out = StatsDelta::default();
    for (name, &(kind, v)) in after {
        match kind {
            StatKind::Cumulative | StatKind::Histogram => {
                let b = before.get(name).map_or(0, |x| x.1);
                out.counters.insert(name.clone(), v.wrapping_sub(b));
            }
            StatKind::Instant | StatKind::Peak => {
                out.gauges.insert(name.clone(), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_subtracts_counters_and_keeps_gauges() {
        let b: Snapshot =
            [("exits".into(), (StatKind::Cumulative, 10)), ("pages".into(), (StatKind::Instant, 3))].into();
        let a: Snapshot =
            [("exits".into(), (StatKind::Cumulative, 15)), ("pages".into(), (StatKind::Instant, 7))].into();
        let d = delta(&b, &a);
        assert_eq!(d.counters["exits"], 5);
        assert_eq!(d.gauges["pages"], 7);
    }
}
