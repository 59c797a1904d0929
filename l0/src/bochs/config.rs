//! Bochs' CPU models and the bochsrc of a run, in a directory of its own.
//!
//! The model table was measured on Debian's Bochs 2.7 (`bochs -help cpu` for the names; a
//! reset ROM that reads CPUID.1:ECX and the capability MSRs 0x480-0x482, 0x48B and 0x48C
//! on each model) and agrees with each model's `get_vmx_extensions_bitmask()` in the Bochs
//! source (`bochs/cpu/cpudb/intel/<model>.cc`, e.g. `corei5_lynnfield_750.cc` has EPT but
//! not `BX_VMX_UNRESTRICTED_GUEST`; `corei7_skylake-x.cc` has `BX_VMX_PML`).

use std::path::{Path, PathBuf};

/// What one Bochs CPU model offers of VMX (SDM Vol. 3C, Appendix A; bit numbers of
/// IA32_VMX_PROCBASED_CTLS2, IA32_VMX_PINBASED_CTLS and IA32_VMX_EPT_VPID_CAP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CpuModel {
    /// The name for `cpu: model=`.
    pub name: &'static str,
    /// CPUID.1:ECX.VMX[5].
    pub vmx: bool,
    /// SVM with nested paging (CPUID 8000_0001h ECX.SVM, 8000_000Ah EDX.NP): L1 runs its
    /// payloads with its SVM backend there.
    pub svm: bool,
    /// SVM's next-RIP save (8000_000Ah EDX.NRIPS); without it L1 decodes the instruction.
    pub nrips: bool,
    /// Secondary control 1, "enable EPT".
    pub ept: bool,
    /// Secondary control 5, "enable VPID".
    pub vpid: bool,
    /// Secondary control 7, "unrestricted guest".
    pub unrestricted_guest: bool,
    /// Secondary control 14, "VMCS shadowing".
    pub vmcs_shadowing: bool,
    /// Pin-based control 6, "activate VMX-preemption timer".
    pub preemption_timer: bool,
    /// IA32_VMX_EPT_VPID_CAP bit 21, EPT accessed and dirty flags.
    pub ept_accessed_dirty: bool,
    /// Secondary control 17, "enable PML".
    pub pml: bool,
}

const fn no_vmx(name: &'static str) -> CpuModel {
    CpuModel {
        name,
        vmx: false,
        svm: false,
        nrips: false,
        ept: false,
        vpid: false,
        unrestricted_guest: false,
        vmcs_shadowing: false,
        preemption_timer: false,
        ept_accessed_dirty: false,
        pml: false,
    }
}

/// An AMD model with SVM and nested paging (Bochs 2.7's `phenom_8650_toliman`, `zambezi`,
/// `trinity_apu`, `ryzen`; NRIP_SAVE from `zambezi` on).
const fn svm(name: &'static str, nrips: bool) -> CpuModel {
    CpuModel { svm: true, nrips, ..no_vmx(name) }
}

const fn vmx_only(name: &'static str) -> CpuModel {
    CpuModel { vmx: true, ..no_vmx(name) }
}

/// A model with EPT, VPID and the preemption timer, and the rest as given.
const fn ept(name: &'static str, unrestricted_guest: bool, vmcs_shadowing: bool, ad: bool, pml: bool) -> CpuModel {
    CpuModel {
        name,
        vmx: true,
        svm: false,
        nrips: false,
        ept: true,
        vpid: true,
        unrestricted_guest,
        vmcs_shadowing,
        preemption_timer: true,
        ept_accessed_dirty: ad,
        pml,
    }
}

/// Every CPU model of Bochs 2.7, in `bochs -help cpu` order.
pub const CPU_MODELS: [CpuModel; 28] = [
    vmx_only("bx_generic"),
    no_vmx("pentium"),
    no_vmx("pentium_mmx"),
    no_vmx("amd_k6_2_chomper"),
    no_vmx("p2_klamath"),
    no_vmx("p3_katmai"),
    no_vmx("p4_willamette"),
    vmx_only("core_duo_t2400_yonah"),
    no_vmx("atom_n270"),
    no_vmx("p4_prescott_celeron_336"),
    no_vmx("athlon64_clawhammer"),
    no_vmx("athlon64_venice"),
    no_vmx("turion64_tyler"),
    svm("phenom_8650_toliman", false),
    vmx_only("core2_penryn_t9600"),
    ept("corei5_lynnfield_750", false, false, false, false),
    ept("corei5_arrandale_m520", true, false, false, false),
    ept("corei7_sandy_bridge_2600k", true, false, false, false),
    svm("zambezi", true),
    svm("trinity_apu", true),
    svm("ryzen", true),
    ept("corei7_ivy_bridge_3770k", true, false, false, false),
    ept("corei7_haswell_4770", true, true, true, false),
    ept("broadwell_ult", true, true, true, false),
    ept("corei7_skylake_x", true, true, true, true),
    ept("corei3_cnl", true, true, true, false),
    ept("corei7_icelake_u", true, true, true, true),
    ept("tigerlake", true, true, true, true),
];

/// The model runs use unless told otherwise.
pub const DEFAULT_MODEL: &str = "corei7_skylake_x";

impl CpuModel {
    /// The VMX features of the full set (Skylake-X) this model lacks.
    #[must_use]
    pub fn lacks(&self) -> Vec<&'static str> {
        if self.svm {
            // An SVM model: what L1's SVM backend would use and it lacks.
            return if self.nrips { Vec::new() } else { vec!["NRIP_SAVE"] };
        }
        let mut v = Vec::new();
        let mut need = |has: bool, what| {
            if !has {
                v.push(what);
            }
        };
        need(self.vmx, "VMX");
        need(self.ept, "EPT");
        need(self.vpid, "VPID");
        need(self.unrestricted_guest, "unrestricted guest");
        need(self.vmcs_shadowing, "VMCS shadowing");
        need(self.preemption_timer, "VMX-preemption timer");
        need(self.ept_accessed_dirty, "EPT A/D flags");
        need(self.pml, "PML");
        v
    }
}

/// The models L1 can run its payloads on (VMX with EPT), for messages.
#[must_use]
pub fn models_with_ept() -> Vec<&'static str> {
    CPU_MODELS.iter().filter(|m| m.ept).map(|m| m.name).collect()
}

/// The models L1 runs its SVM backend on (SVM with nested paging), for messages.
#[must_use]
pub fn models_with_svm() -> Vec<&'static str> {
    CPU_MODELS.iter().filter(|m| m.svm).map(|m| m.name).collect()
}

/// Errors of choosing a model and writing a run's files.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not a Bochs 2.7 CPU model.
    #[error("unknown Bochs CPU model {name:?}; models with EPT: {} (and, for the bochs engine, models with SVM: {})", models_with_ept().join(", "), models_with_svm().join(", "))]
    UnknownModel {
        /// What was asked for.
        name: String,
    },
    /// The model has no VMX, or VMX without EPT (L1's hardware backend needs EPT).
    #[error("{name} has no {missing}; models with EPT: {} (and, for the bochs engine, models with SVM: {})", models_with_ept().join(", "), models_with_svm().join(", "))]
    Unsuitable {
        /// The model.
        name: &'static str,
        /// "VMX" or "EPT".
        missing: &'static str,
    },
    /// Guest memory Bochs cannot be given (`megs:` takes whole MiB).
    #[error("guest memory of {0:#x} bytes is not a non-zero multiple of 1 MiB")]
    Memory(u64),
    /// A path the bochsrc cannot hold (Bochs splits options at commas and spaces and expands
    /// `$VAR`).
    #[error("path {0:?} cannot go into a bochsrc (no spaces, commas, quotes or '$')")]
    Path(PathBuf),
    /// Creating or writing the run directory failed.
    #[error("the Bochs run directory {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Look up `name`, refusing models L1 cannot run on.
pub fn cpu_model(name: &str) -> Result<&'static CpuModel, ConfigError> {
    let m = CPU_MODELS
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| ConfigError::UnknownModel { name: name.to_owned() })?;
    match (m.vmx, m.ept) {
        (false, _) => Err(ConfigError::Unsuitable { name: m.name, missing: "VMX" }),
        (true, false) => Err(ConfigError::Unsuitable { name: m.name, missing: "EPT" }),
        (true, true) => Ok(m),
    }
}

/// Look up `name` for the bochs engine, where L1 is the root hypervisor: a model with VMX
/// and EPT (as [`cpu_model`]) or with SVM and nested paging.
pub fn l1_cpu_model(name: &str) -> Result<&'static CpuModel, ConfigError> {
    match cpu_model(name) {
        Err(ConfigError::Unsuitable { name, .. }) if CPU_MODELS.iter().any(|m| m.name == name && m.svm) => {
            Ok(CPU_MODELS.iter().find(|m| m.name == name).expect("found above"))
        }
        other => other,
    }
}

/// The files a bochsrc names.
#[derive(Clone, Debug)]
pub struct RcFiles {
    /// The reset ROM ([`super::rom`]).
    pub rom: PathBuf,
    /// The VGA BIOS Bochs insists on (`/usr/share/vgabios/vgabios.bin`).
    pub vgabios: PathBuf,
    /// RAM images and their guest-physical addresses (at most 4).
    pub ram_images: Vec<(PathBuf, u64)>,
    /// Bochs' log.
    pub log: PathBuf,
}

fn rc_path(p: &Path) -> Result<String, ConfigError> {
    let s = p.to_str().ok_or_else(|| ConfigError::Path(p.to_owned()))?;
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || matches!(c, ',' | '"' | '\'' | '$' | '#')) {
        return Err(ConfigError::Path(p.to_owned()));
    }
    Ok(s.to_owned())
}

/// Most RAM images a bochsrc can load (`optramimage1`..`optramimage4`).
pub const MAX_RAM_IMAGES: usize = 4;

/// The bochsrc of a run (HOST-NOTES.md "Bochs": the measured headless recipe).
pub fn bochsrc(model: &CpuModel, mem_size: u64, files: &RcFiles) -> Result<String, ConfigError> {
    if mem_size == 0 || mem_size % (1 << 20) != 0 {
        return Err(ConfigError::Memory(mem_size));
    }
    assert!(files.ram_images.len() <= MAX_RAM_IMAGES, "at most {MAX_RAM_IMAGES} RAM images");
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line("# nestbench bochs engine: generated, one per run".into());
    line(format!("megs: {}", mem_size >> 20));
    // The reset ROM replaces the BIOS (its reset vector at 0xFFFF_FFF0).
    line(format!("romimage: file={}, address=0xffff0000", rc_path(&files.rom)?));
    line(format!("vgaromimage: file={}", rc_path(&files.vgabios)?));
    for (i, (path, gpa)) in files.ram_images.iter().enumerate() {
        line(format!("optramimage{}: file={}, address={gpa:#x}", i + 1, rc_path(path)?));
    }
    // A triple fault stops Bochs (a panic, fatal) instead of resetting into the ROM again.
    line(format!("cpu: model={}, reset_on_triple_fault=0", model.name));
    line("port_e9_hack: enabled=1".into());
    // No nogui in Debian's build; the VNC listener lives in the run's network namespace.
    line("display_library: rfb, options=\"timeout=0\"".into());
    line("sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy".into());
    line("speaker: enabled=0".into());
    line("magic_break: enabled=1".into());
    // Deterministic: instruction counts are identical run to run.
    line("clock: sync=none, time0=1".into());
    line(format!("log: {}", rc_path(&files.log)?));
    line("panic: action=fatal".into());
    line("error: action=report".into());
    line("boot: disk".into());
    Ok(s)
}

/// The debugger script: run to the magic breakpoint (or an interrupt), print the
/// registers, quit.
pub const DEBUGGER_SCRIPT: &str = "c\nr\nquit\n";

/// A run's directory under `std::env::temp_dir()`, removed on drop unless kept.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    /// Create a new, uniquely named directory.
    pub fn create(keep: bool) -> Result<Self, ConfigError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("nestbench-bochs-{}-{}-{nanos:x}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).map_err(|source| ConfigError::Io { path: path.clone(), source })?;
        Ok(Self { path, keep })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it stays after the run.
    #[must_use]
    pub fn kept(&self) -> bool {
        self.keep
    }

    /// Write `name` in the directory; returns its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, ConfigError> {
        let p = self.path.join(name);
        std::fs::write(&p, bytes).map_err(|source| ConfigError::Io { path: p.clone(), source })?;
        Ok(p)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_without_ept_or_unknown_are_refused_by_name() {
        let e = cpu_model("core2_penryn_t9600").unwrap_err().to_string();
        assert!(e.starts_with("core2_penryn_t9600 has no EPT; models with EPT: corei5_lynnfield_750"), "{e}");
        assert!(e.contains("corei7_skylake_x"), "{e}");
        let e = cpu_model("ryzen").unwrap_err().to_string();
        assert!(e.starts_with("ryzen has no VMX;"), "{e}");
        // The bochs engine's L1 runs its SVM backend there; emulated Intel hosts still refuse it.
        assert!(l1_cpu_model("ryzen").is_ok_and(|m| m.svm && !m.vmx));
        assert!(l1_cpu_model("phenom_8650_toliman").is_ok());
        assert!(l1_cpu_model("pentium").is_err());
        assert_eq!(l1_cpu_model("corei7_skylake_x").map(|m| m.name).ok(), Some("corei7_skylake_x"));
        let e = cpu_model("pentium_9000").unwrap_err().to_string();
        assert!(e.starts_with("unknown Bochs CPU model \"pentium_9000\"; models with EPT:"), "{e}");
        assert_eq!(cpu_model("corei7_skylake_x").unwrap().lacks(), Vec::<&str>::new());
        assert_eq!(cpu_model("corei7_haswell_4770").unwrap().lacks(), ["PML"]);
        assert_eq!(cpu_model("corei7_sandy_bridge_2600k").unwrap().lacks(), ["VMCS shadowing", "EPT A/D flags", "PML"]);
        assert!(cpu_model("corei5_lynnfield_750").unwrap().lacks().contains(&"unrestricted guest"));
        assert!(cpu_model(DEFAULT_MODEL).is_ok());
    }

    #[test]
    fn bochsrc_has_the_measured_recipe() {
        let files = RcFiles {
            rom: "/tmp/r/rom.bin".into(),
            vgabios: "/usr/share/vgabios/vgabios.bin".into(),
            ram_images: vec![("/tmp/r/low.bin".into(), 0), ("/tmp/r/l1.bin".into(), 0x10_0000)],
            log: "/tmp/r/bochs.log".into(),
        };
        let rc = bochsrc(cpu_model("tigerlake").unwrap(), 32 << 20, &files).unwrap();
        for want in [
            "megs: 32\n",
            "romimage: file=/tmp/r/rom.bin, address=0xffff0000\n",
            "vgaromimage: file=/usr/share/vgabios/vgabios.bin\n",
            "optramimage1: file=/tmp/r/low.bin, address=0x0\n",
            "optramimage2: file=/tmp/r/l1.bin, address=0x100000\n",
            "cpu: model=tigerlake, reset_on_triple_fault=0\n",
            "port_e9_hack: enabled=1\n",
            "display_library: rfb, options=\"timeout=0\"\n",
            "magic_break: enabled=1\n",
            "clock: sync=none, time0=1\n",
            "log: /tmp/r/bochs.log\n",
            "panic: action=fatal\n",
        ] {
            assert!(rc.contains(want), "{want:?} missing from\n{rc}");
        }
        assert!(bochsrc(cpu_model("tigerlake").unwrap(), 3 << 19, &files).is_err());
        let bad = RcFiles { log: "/tmp/my dir/log".into(), ..files };
        assert!(matches!(bochsrc(cpu_model("tigerlake").unwrap(), 32 << 20, &bad), Err(ConfigError::Path(_))));
    }

    #[test]
    fn run_dirs_are_unique_and_removed_unless_kept() {
        let a = RunDir::create(false).unwrap();
        let b = RunDir::create(true).unwrap();
        assert_ne!(a.path(), b.path());
        let (pa, pb) = (a.path().to_owned(), b.path().to_owned());
        a.write("x", b"1").unwrap();
        drop(a);
        drop(b);
        assert!(!pa.exists());
        assert!(pb.exists());
        std::fs::remove_dir_all(pb).unwrap();
    }
}
