//! A cpio archive in the "newc" format, as the kernel unpacks an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte ASCII header per
//! entry (magic `070701`, 13 fields of 8 hex digits), the NUL-terminated name, padding to 4
//! bytes, the data, padding to 4 bytes; a `TRAILER!!!` entry ends it.

/// An archive being built in memory.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

impl Cpio {
    /// A new, empty archive.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & S_IFDIR != 0 { 2 } else { 1 },
            0, // mtime: fixed, so that an initramfs is the same bytes for the same inputs
            u32::try_from(data.len()).expect("initramfs files are below 4 GiB"),
            0,
            0,
            0,
            0,
            u32::try_from(name.len() + 1).expect("short names"),
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    /// A directory (parents first: the kernel does not create them).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, &[]);
    }

    /// A regular file with `mode`'s permission bits.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, S_IFREG | (mode & 0o7777), data);
    }

    /// A symbolic link `name` -> `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, target.as_bytes());
    }

    /// The archive with its trailer.
    #[must_use]
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_parse_back() {
        let mut c = Cpio::new();
        c.dir("/bin");
        c.file("/bin/x", 0o755, b"hello");
        c.symlink("/bin/sh", "busybox");
        let out = c.finish();
        assert_eq!(out.len() % 4, 0);
        // Walk it as the kernel does.
        let mut at = 0;
        let mut names = Vec::new();
        while at < out.len() {
            assert_eq!(&out[at..at + 6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&out[at + 6 + i * 8..at + 14 + i * 8]).unwrap(), 16).unwrap()
                    as usize
            };
            let (mode, size, namesize) = (field(1), field(6), field(11));
            let name = std::str::from_utf8(&out[at + 110..at + 110 + namesize - 1]).unwrap().to_owned();
            let data_at = (at + 110 + namesize).next_multiple_of(4);
            names.push((name.clone(), mode, out[data_at..data_at + size].to_vec()));
            at = (data_at + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(at, out.len());
        assert_eq!(names[1], ("bin/x".into(), 0o100_755, b"hello".to_vec()));
        assert_eq!(names[2], ("bin/sh".into(), 0o120_777, b"busybox".to_vec()));
        assert_eq!(names[0].1, 0o040_755);
    }
}
