//! Where l0 runs: this machine (`local`), or an emulated host, an upstream Linux KVM that
//! Bochs boots with `kvm_intel nested=1` (`bochs[:CPU_MODEL]`) or QEMU with `kvm_amd
//! nested=1` (`qemu`), so that what nestbench claims for "a KVM host" is shown on upstream
//! KVM code (docs/emulated-hosts.md).
//!
//! Whatever the host, a run is the same l0 invocation and gives the same [`ChildRun`]: the
//! transport is the only thing that differs (a child's stdout; the frames of a serial line).

pub mod cpio;
pub mod emulated;
pub mod ftrace_nop;
pub mod kernel;
pub mod machine;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::l0_child::{self, ChildRun, Incoming};

/// Errors of preparing or running a host; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A bad `--host`.
    #[error("--host {0:?}: expected local, bochs, bochs:CPU_MODEL or qemu")]
    BadSpec(String),
    /// A Bochs CPU model that cannot host KVM's nested VMX.
    #[error("--host {spec}: {why}")]
    BadModel {
        /// What was asked for.
        spec: String,
        /// Why not.
        why: String,
    },
    /// The kernel could not be used.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// A tool or file the emulated host needs is missing.
    #[error("the emulated host needs {what}: {path} is missing (./setup.sh installs it)")]
    Missing {
        /// What it is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A tool failed.
    #[error("{tool}: {why}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Why.
        why: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Running l0 locally failed.
    #[error(transparent)]
    Child(#[from] l0_child::ChildError),
    /// The emulated host booted but could not be prepared (a module refused to load, ...).
    #[error("the emulated host could not be prepared: {message}\n--- its kernel log (dmesg) ---\n{dmesg}")]
    Agent {
        /// What failed.
        message: String,
        /// The kernel log's tail.
        dmesg: String,
    },
    /// The emulated machine stopped before it finished the plan.
    #[error("the emulated host {host} {why}{}\n--- its console (last lines) ---\n{console}", kept_dir(dir.as_deref()))]
    Stopped {
        /// Which host.
        host: String,
        /// What happened ("panicked", "hung", ...).
        why: String,
        /// The console's tail.
        console: String,
        /// Its kept run directory.
        dir: Option<PathBuf>,
        /// What the runs that did finish said (they are kept, marked as partial).
        partial: Box<Session>,
    },
}

fn kept_dir(d: Option<&Path>) -> String {
    d.map(|d| format!(" (its files are kept in {})", d.display())).unwrap_or_default()
}

/// Where l0 runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostSpec {
    /// This machine's /dev/kvm.
    Local,
    /// Bochs with this CPU model, booting an upstream kernel with `kvm_intel nested=1`.
    Bochs {
        /// The Bochs CPU model.
        model: &'static str,
    },
    /// QEMU TCG `-cpu max`, booting an upstream kernel with `kvm_amd nested=1 npt=1`.
    Qemu,
}

impl HostSpec {
    /// Parse `local`, `bochs` or `bochs:CPU_MODEL`.
    pub fn parse(s: &str) -> Result<Self, HostError> {
        match s.split_once(':').map_or((s, None), |(a, b)| (a, Some(b))) {
            ("local", None) => Ok(Self::Local),
            ("qemu", None) => Ok(Self::Qemu),
            ("bochs", model) => {
                let name = model.unwrap_or(l0::bochs::DEFAULT_MODEL);
                let m = l0::bochs::config::cpu_model(name)
                    .map_err(|e| HostError::BadModel { spec: s.to_owned(), why: e.to_string() })?;
                Ok(Self::Bochs { model: m.name })
            }
            _ => Err(HostError::BadSpec(s.to_owned())),
        }
    }

    /// Its name in results (`local`, `bochs:corei7_skylake_x`).
    #[must_use]
    pub fn name(&self) -> String {
        self.emulator().map_or_else(|| "local".into(), emulated::Emulator::name)
    }

    /// Its emulator, for an emulated host.
    #[must_use]
    pub fn emulator(&self) -> Option<emulated::Emulator> {
        match self {
            Self::Local => None,
            Self::Bochs { model } => Some(emulated::Emulator::Bochs(model)),
            Self::Qemu => Some(emulated::Emulator::Qemu),
        }
    }
}

/// How to set up an emulated host.
#[derive(Clone, Debug, Default)]
pub struct EmulatedOptions {
    /// The kernel (`6.1`, `6.12`, a .deb, a tree or a bzImage).
    pub kernel: Option<String>,
    /// A bzImage's modules directory.
    pub kernel_modules: Option<PathBuf>,
    /// kvm_intel parameters (`nested=1` is always given first; these override).
    pub kvm_params: Vec<String>,
    /// Extra kernel command-line words.
    pub cmdline: String,
    /// Keep the machine's files (ISO, bochsrc, console, stream, Bochs log).
    pub keep_dir: bool,
    /// Wall-clock budget of the boot, until the host has reported.
    pub boot_timeout: Option<Duration>,
    /// QEMU only: `-icount shift=N,sleep=off`, the virtual clock counts instructions (2^N ns
    /// each) instead of following the host's (docs/emulated-hosts.md, "-icount").
    pub icount: Option<u8>,
}

/// One l0 invocation.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// `nestbench-l0`'s arguments.
    pub args: Vec<String>,
    /// The guest's budget (l0's own `--timeout-ms`); the host adds its margin.
    pub deadline: Duration,
    /// Files the arguments name, as (path here, path inside an emulated host); the
    /// arguments use the inside path there.
    pub files: Vec<(PathBuf, String)>,
}

/// What one session on a host gave: one [`ChildRun`] per invocation, in order.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// The runs.
    pub runs: Vec<ChildRun>,
    /// The emulated host's own facts, from inside it.
    pub host: Option<nestbench_protocol::host::HostFacts>,
    /// How its boot went.
    pub boot: Option<emulated::BootFigures>,
}

/// The emulated host a run ran on, as the `run` and `boot` documents carry it (`--json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostDoc {
    /// `bochs:<model>` or `qemu`.
    pub name: String,
    /// How its boot and session went.
    pub boot: Option<emulated::BootFigures>,
    /// Its facts, from inside it.
    pub facts: Option<nestbench_protocol::host::HostFacts>,
}

impl HostDoc {
    /// The document of `session` on `host`.
    #[must_use]
    pub fn of(host: &HostSpec, session: &Session) -> Self {
        Self { name: host.name(), boot: session.boot.clone(), facts: session.host.clone() }
    }

    /// One line for a person: name, kernel, KVM module and its parameters.
    #[must_use]
    pub fn summary(&self) -> String {
        let b = self.boot.clone().unwrap_or_default();
        format!("{}, kernel {}, {} {}", self.name, b.kernel_release, b.kvm_module, b.kvm_module_params)
    }
}

/// How l0 invocations reach a host and their streams come back: the only thing that differs
/// between hosts. Each implementation hands every line of every run's stream to
/// [`ChildRun::take_line`], so a run is the same [`ChildRun`] wherever it ran; a new kind of
/// host (an ssh channel to a remote machine) is one more implementation.
pub trait Transport {
    /// Run `invocations` in order, handing each event to `on(index, event)` as it arrives.
    fn session(
        &self,
        l0: &Path,
        invocations: &[Invocation],
        on: &mut dyn FnMut(usize, Incoming<'_>),
    ) -> impl Future<Output = Result<Session, HostError>>;
}

/// This machine: one `nestbench-l0` child per invocation, its stdout the stream.
#[derive(Clone, Copy, Debug)]
pub struct LocalChildren;

impl Transport for LocalChildren {
    async fn session(
        &self,
        l0: &Path,
        invocations: &[Invocation],
        on: &mut dyn FnMut(usize, Incoming<'_>),
    ) -> Result<Session, HostError> {
        let mut s = Session::default();
        for (i, inv) in invocations.iter().enumerate() {
            s.runs.push(l0_child::run_l0(l0, &inv.args, inv.deadline + Duration::from_secs(10), |e| on(i, e)).await?);
        }
        Ok(s)
    }
}

/// An emulated host: one boot runs every invocation; the agent inside frames each run's
/// stream onto the machine's debug port (docs/emulated-hosts.md).
#[derive(Clone, Copy, Debug)]
pub struct EmulatedMachine<'a> {
    /// Bochs or QEMU.
    pub emulator: emulated::Emulator,
    /// Its kernel and options.
    pub opts: &'a EmulatedOptions,
}

impl Transport for EmulatedMachine<'_> {
    async fn session(
        &self,
        l0: &Path,
        invocations: &[Invocation],
        on: &mut dyn FnMut(usize, Incoming<'_>),
    ) -> Result<Session, HostError> {
        emulated::run_all(self.emulator, self.opts, l0, invocations, on).await
    }
}

/// Run `invocations` on `host`, in order (one boot for all of them on an emulated host),
/// handing each event to `on(index, event)` as it arrives.
pub async fn run_all(
    host: &HostSpec,
    opts: &EmulatedOptions,
    l0: &Path,
    invocations: &[Invocation],
    mut on: impl FnMut(usize, Incoming<'_>),
) -> Result<Session, HostError> {
    match host.emulator() {
        None => LocalChildren.session(l0, invocations, &mut on).await,
        Some(emulator) => EmulatedMachine { emulator, opts }.session(l0, invocations, &mut on).await,
    }
}
