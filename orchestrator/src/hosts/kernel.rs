//! The kernel an emulated host boots: Debian's cloud kernels fetched by `setup.sh` into the
//! cache (`6.1`, `6.12`), a `.deb`, an unpacked tree, or a KVM developer's own bzImage with
//! its modules, so that a patch can be A/B'd on real KVM code.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors of finding and preparing a kernel; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// An alias that is not in the cache.
    #[error(
        "kernel {alias} is not in the kernel cache ({dir} does not exist): run ./setup.sh, which fetches Debian's \
         {alias} cloud kernel there (kernels.list), or pass --kernel with a .deb, an unpacked kernel tree or a bzImage"
    )]
    NotCached {
        /// What was asked for.
        alias: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The path does not exist.
    #[error("--kernel {0}: no such file or directory")]
    Missing(PathBuf),
    /// Not a bzImage (no "HdrS" boot-protocol header).
    #[error("{0} is not a Linux bzImage (no \"HdrS\" setup header at 0x202)")]
    NotBzImage(PathBuf),
    /// No vmlinuz in a tree.
    #[error("{0} has no boot/vmlinuz-* (expected an unpacked linux-image package)")]
    NoVmlinuz(PathBuf),
    /// No modules directory.
    #[error("{0}: no lib/modules/<release>/ directory with the kernel's modules")]
    NoModules(PathBuf),
    /// The KVM modules are not there.
    #[error("kernel {release} ({dir}) has no {module} module: nestbench loads KVM as modules (kvm, {module})")]
    NoKvmModule {
        /// The release.
        release: String,
        /// The modules directory.
        dir: PathBuf,
        /// The missing module.
        module: &'static str,
    },
    /// A tool failed (dpkg-deb, xz, zstd).
    #[error("{what}: {why}")]
    Tool {
        /// What was being done.
        what: String,
        /// Why it failed.
        why: String,
    },
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io { path: path.to_owned(), source }
}

/// The KVM modules nestbench loads, in load order (each depends on the ones before it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KvmModules {
    /// `irqbypass` (kvm depends on it; built in on some configurations).
    pub irqbypass: Option<PathBuf>,
    /// `kvm`.
    pub kvm: PathBuf,
    /// `kvm_intel`.
    pub kvm_intel: Option<PathBuf>,
    /// `kvm_amd`.
    pub kvm_amd: Option<PathBuf>,
}

impl KvmModules {
    /// The vendor module `name` (`kvm_intel`, `kvm_amd`), if the kernel has it.
    #[must_use]
    pub fn vendor(&self, name: &str) -> Option<&PathBuf> {
        match name {
            "kvm_intel" => self.kvm_intel.as_ref(),
            "kvm_amd" => self.kvm_amd.as_ref(),
            _ => None,
        }
    }
}

/// A kernel ready to be put into an emulated machine.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Kernel {
    /// What the user asked for (`6.1`, or the path).
    pub spec: String,
    /// Its release (`uname -r`).
    pub release: String,
    /// Its version string from the bzImage header.
    pub version: String,
    /// The bzImage.
    pub bzimage: PathBuf,
    /// Its KVM modules.
    pub modules: KvmModules,
}

/// Where kernels and built images are cached: `$NESTBENCH_CACHE`, else
/// `$XDG_CACHE_HOME/nestbench`, else `~/.cache/nestbench`.
#[must_use]
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NESTBENCH_CACHE") {
        return PathBuf::from(d);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("nestbench")
}

/// The kernel `setup.sh` fetches for `alias` lives here.
#[must_use]
pub fn alias_dir(alias: &str) -> PathBuf {
    cache_dir().join("kernels").join(alias)
}

/// The default kernel of the emulated hosts.
pub const DEFAULT_KERNEL: &str = "6.1";

/// Whether `spec` is an alias (no path separator, no file extension of a package).
fn is_alias(spec: &str) -> bool {
    !spec.contains('/') && !spec.ends_with(".deb") && !Path::new(spec).exists()
}

/// Find the kernel `spec` names: an alias in the cache, a `.deb`, an unpacked tree, or a
/// bzImage (its modules then come from `modules_dir`, a `lib/modules/<release>` directory
/// or a tree holding one).
pub fn resolve(spec: &str, modules_dir: Option<&Path>) -> Result<Kernel, KernelError> {
    if is_alias(spec) {
        let dir = alias_dir(spec);
        if !dir.is_dir() {
            return Err(KernelError::NotCached { alias: spec.to_owned(), dir });
        }
        return from_tree(spec, &dir);
    }
    let path = PathBuf::from(spec);
    if !path.exists() {
        return Err(KernelError::Missing(path));
    }
    if path.is_dir() {
        return from_tree(spec, &path);
    }
    if spec.ends_with(".deb") {
        let stem = path.file_stem().map_or_else(|| "kernel".into(), |s| s.to_string_lossy().into_owned());
        let dir = cache_dir().join("kernels").join(format!("deb-{stem}"));
        if !dir.is_dir() {
            unpack_deb(&path, &dir)?;
        }
        return from_tree(spec, &dir);
    }
    let version =
        bzimage_version(&std::fs::read(&path).map_err(io(&path))?).ok_or(KernelError::NotBzImage(path.clone()))?;
    let release = version.split_whitespace().next().unwrap_or_default().to_owned();
    let mods = modules_dir.ok_or_else(|| KernelError::NoModules(path.clone()))?;
    let mods = if mods.join("kernel").is_dir() { mods.to_owned() } else { release_dir(mods)?.1 };
    Ok(Kernel { spec: spec.to_owned(), modules: kvm_modules(&release, &mods)?, release, version, bzimage: path })
}

fn unpack_deb(deb: &Path, dir: &Path) -> Result<(), KernelError> {
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let out = Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp).output().map_err(|e| KernelError::Tool {
        what: format!("unpacking {}", deb.display()),
        why: format!("dpkg-deb: {e}"),
    })?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(KernelError::Tool {
            what: format!("unpacking {}", deb.display()),
            why: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))
}

/// The only `lib/modules/<release>` under `root` (or `root` itself when it is one).
fn release_dir(root: &Path) -> Result<(String, PathBuf), KernelError> {
    let base = root.join("lib/modules");
    let base = if base.is_dir() { base } else { root.to_owned() };
    let mut found: Vec<PathBuf> = std::fs::read_dir(&base)
        .map_err(|_| KernelError::NoModules(root.to_owned()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("kernel").is_dir())
        .collect();
    found.sort();
    let dir = found.pop().ok_or_else(|| KernelError::NoModules(root.to_owned()))?;
    let release = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok((release, dir))
}

fn from_tree(spec: &str, root: &Path) -> Result<Kernel, KernelError> {
    let (release, mods) = release_dir(root)?;
    let boot = root.join("boot");
    let bzimage = [boot.join(format!("vmlinuz-{release}")), root.join("vmlinuz"), root.join("bzImage")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| KernelError::NoVmlinuz(root.to_owned()))?;
    let version = bzimage_version(&std::fs::read(&bzimage).map_err(io(&bzimage))?)
        .ok_or_else(|| KernelError::NotBzImage(bzimage.clone()))?;
    Ok(Kernel { spec: spec.to_owned(), modules: kvm_modules(&release, &mods)?, release, version, bzimage })
}

fn kvm_modules(release: &str, mods: &Path) -> Result<KvmModules, KernelError> {
    let mut all = Vec::new();
    walk(&mods.join("kernel"), &mut all);
    let find = |name: &str| {
        all.iter()
            .find(|p| {
                p.file_name().and_then(|f| f.to_str()).is_some_and(|f| f == name || f.starts_with(&format!("{name}.")))
            })
            .cloned()
    };
    let missing = |module| KernelError::NoKvmModule { release: release.to_owned(), dir: mods.to_owned(), module };
    let m = KvmModules {
        irqbypass: find("irqbypass.ko"),
        kvm: find("kvm.ko").ok_or_else(|| missing("kvm"))?,
        kvm_intel: find("kvm-intel.ko"),
        kvm_amd: find("kvm-amd.ko"),
    };
    if m.kvm_intel.is_none() && m.kvm_amd.is_none() {
        return Err(missing("kvm_intel"));
    }
    Ok(m)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The kernel version string of a bzImage (boot protocol: "HdrS" at 0x202, the string's
/// offset - 0x200 at 0x20E), or `None` if `bytes` is not one.
#[must_use]
pub fn bzimage_version(bytes: &[u8]) -> Option<String> {
    if bytes.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let off = usize::from(u16::from_le_bytes(bytes.get(0x20E..0x210)?.try_into().ok()?)) + 0x200;
    let s = bytes.get(off..)?;
    let end = s.iter().position(|&b| b == 0)?.min(200);
    let v = String::from_utf8_lossy(&s[..end]).into_owned();
    (!v.is_empty()).then_some(v)
}

/// The magic that ends a signed module (scripts/sign-file.c).
const MODULE_SIG_MAGIC: &[u8] = b"~Module signature appended~\n";

/// A module without its appended signature (the kernel then skips verification, which
/// halves insmod's time in Bochs); unsigned modules come back as they are.
#[must_use]
pub fn strip_signature(mut ko: Vec<u8>) -> Vec<u8> {
    // struct module_signature (12 bytes, sig_len big-endian at offset 8), then the magic.
    let tail = MODULE_SIG_MAGIC.len() + 12;
    if ko.len() < tail || !ko.ends_with(MODULE_SIG_MAGIC) {
        return ko;
    }
    let info = ko.len() - tail;
    let sig_len = u32::from_be_bytes(ko[info + 8..info + 12].try_into().expect("4 bytes")) as usize;
    if sig_len > info {
        return ko;
    }
    ko.truncate(info - sig_len);
    ko
}

/// A module file's bytes, decompressed (`.xz`, `.zst`, `.gz`) and without its signature.
pub fn module_bytes(path: &Path) -> Result<Vec<u8>, KernelError> {
    let name = path.to_string_lossy();
    let tool = [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")].into_iter().find(|(ext, _)| name.ends_with(ext));
    let bytes = match tool {
        None => std::fs::read(path).map_err(io(path))?,
        Some((_, tool)) => {
            let out = Command::new(tool).arg("-dc").arg(path).output().map_err(|e| KernelError::Tool {
                what: format!("decompressing {}", path.display()),
                why: format!("{tool}: {e} (install it: apt-get install xz-utils zstd)"),
            })?;
            if !out.status.success() {
                return Err(KernelError::Tool {
                    what: format!("decompressing {}", path.display()),
                    why: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
            out.stdout
        }
    };
    if !bytes.starts_with(b"\x7fELF") {
        return Err(KernelError::Tool { what: format!("{}", path.display()), why: "not an ELF kernel module".into() });
    }
    Ok(strip_signature(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_stripped_and_unsigned_modules_kept() {
        let mut ko = b"\x7fELFmodule-body".to_vec();
        let body = ko.len();
        ko.extend_from_slice(&[0xAB; 300]); // the PKCS#7 signature
        ko.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        ko.extend_from_slice(&300u32.to_be_bytes());
        ko.extend_from_slice(MODULE_SIG_MAGIC);
        assert_eq!(strip_signature(ko).len(), body);
        assert_eq!(strip_signature(b"\x7fELFplain".to_vec()), b"\x7fELFplain");
        // A length that points before the file is not trusted.
        let mut bad = b"x".to_vec();
        bad.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        bad.extend_from_slice(MODULE_SIG_MAGIC);
        assert_eq!(strip_signature(bad.clone()), bad);
    }

    #[test]
    fn bzimage_versions_are_read_from_the_setup_header() {
        let mut b = vec![0u8; 0x1000];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x20E..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        b[0x500..0x51B].copy_from_slice(b"6.1.0-57-cloud-amd64 (debia");
        assert_eq!(bzimage_version(&b).as_deref(), Some("6.1.0-57-cloud-amd64 (debia"));
        assert_eq!(bzimage_version(b"\x7fELF not a kernel"), None);
        assert_eq!(bzimage_version(&[0u8; 0x1000]), None);
    }

    #[test]
    fn bad_kernels_are_named() {
        let e = resolve("/nonexistent/bzImage", None).unwrap_err();
        assert_eq!(e.to_string(), "--kernel /nonexistent/bzImage: no such file or directory");
        let dir = std::env::temp_dir().join(format!("nestbench-kernel-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lib/modules/6.99.0/kernel/arch/x86/kvm")).unwrap();
        std::fs::write(dir.join("not-a-kernel"), b"hello").unwrap();
        let e = resolve(&dir.join("not-a-kernel").display().to_string(), None).unwrap_err();
        assert!(e.to_string().contains("is not a Linux bzImage"), "{e}");
        let e = resolve(&dir.display().to_string(), None).unwrap_err();
        assert!(e.to_string().contains("has no boot/vmlinuz-*"), "{e}");
        let mut bz = vec![0u8; 0x1000];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x20E..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        bz[0x500..0x506].copy_from_slice(b"6.99.0");
        std::fs::create_dir_all(dir.join("boot")).unwrap();
        std::fs::write(dir.join("boot/vmlinuz-6.99.0"), &bz).unwrap();
        let e = resolve(&dir.display().to_string(), None).unwrap_err();
        assert!(e.to_string().contains("has no kvm module"), "{e}");
        std::fs::write(dir.join("lib/modules/6.99.0/kernel/arch/x86/kvm/kvm.ko"), b"\x7fELF").unwrap();
        std::fs::write(dir.join("lib/modules/6.99.0/kernel/arch/x86/kvm/kvm-intel.ko.xz"), b"").unwrap();
        let k = resolve(&dir.display().to_string(), None).unwrap();
        assert_eq!((k.release.as_str(), k.version.as_str()), ("6.99.0", "6.99.0"));
        assert!(k.modules.kvm_intel.unwrap().ends_with("kvm-intel.ko.xz"));
        assert_eq!(k.modules.irqbypass, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
