//! `nestbench doctor`: which engines this host can run, and why not the others.

use nestbench_protocol::Engine;
use std::fmt::Write;

use l0::host::HostFacts;
use serde::Serialize;

/// Version of the doctor JSON document.
pub const DOCTOR_VERSION: u32 = 1;

/// One engine's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EngineStatus {
    /// The engine (never single-level: that is the soft engine's twin).
    pub engine: Engine,
    /// Whether this host has what the engine needs.
    pub can_run: bool,
    /// Whether nestbench has this engine built yet (an engine that is not can still be
    /// runnable here; `nestbench run` refuses it until it is).
    pub implemented: bool,
    /// Why it can or cannot run.
    pub reason: String,
    /// The engine runs L2 with SVM (the kvm engine on an AMD host), not VMX: it runs the
    /// payloads whose [`l2_payloads::Vendors`] include SVM.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub svm: bool,
}

/// The doctor's report.
#[derive(Clone, Debug, Serialize)]
pub struct Doctor {
    /// [`DOCTOR_VERSION`].
    pub doctor_version: u32,
    /// Which host this is (`local`, `bochs:<model>`).
    pub host_name: String,
    /// Host facts (from inside the emulated machine for an emulated host).
    pub host: HostFacts,
    /// Engine verdicts, in the order soft, kvm, bochs.
    pub engines: Vec<EngineStatus>,
    /// The emulated hosts this machine can boot, and why not the others (only for
    /// `local`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub emulated_hosts: Vec<HostStatus>,
    /// How the emulated host booted (only for an emulated host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::hosts::emulated::BootFigures>,
}

/// Whether an emulated host can boot here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostStatus {
    /// `--host` value.
    pub host: String,
    /// `--kernel` value.
    pub kernel: String,
    /// Whether it can boot here.
    pub can_run: bool,
    /// Why (not).
    pub reason: String,
}

/// The CPU models doctor lists: the two of CI (with and without VMCS shadowing).
pub const LISTED_MODELS: [&str; 2] = ["corei7_skylake_x", "corei7_ivy_bridge_3770k"];

/// The kernel aliases of `kernels.list` (compiled in, so an installed binary knows them).
#[must_use]
pub fn kernel_aliases() -> Vec<&'static str> {
    include_str!("../kernels.list")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// The emulated hosts: each listed Bochs model and QEMU with each cached kernel, checked
/// without booting.
#[must_use]
pub fn emulated_hosts() -> Vec<HostStatus> {
    use crate::hosts::emulated::{Emulator, preflight};
    let mut v = Vec::new();
    for kernel in kernel_aliases() {
        let opts = crate::hosts::EmulatedOptions { kernel: Some(kernel.to_owned()), ..Default::default() };
        let emulators = LISTED_MODELS.iter().map(|m| Emulator::Bochs(m)).chain(std::iter::once(Emulator::Qemu));
        for e in emulators {
            let (module, params) = e.vendor_module();
            let (can_run, reason) = match preflight(e, &opts) {
                Ok((_, k)) => (
                    true,
                    match e {
                        Emulator::Bochs(_) => format!(
                            "Bochs boots Debian's {} with {module} {params} (the kvm and soft engines on upstream KVM)",
                            k.release
                        ),
                        Emulator::Qemu => format!(
                            "QEMU TCG boots Debian's {} with {module} {params} (the soft engine on upstream KVM, and \
                         the kvm engine on nested SVM)",
                            k.release
                        ),
                    },
                ),
                Err(e) => (false, e.to_string()),
            };
            v.push(HostStatus { host: e.name(), kernel: kernel.to_owned(), can_run, reason });
        }
    }
    v
}

fn param<'a>(h: &'a HostFacts, module: &str, name: &str) -> Option<&'a str> {
    h.kvm_modules.get(module)?.get(name).map(String::as_str)
}

fn yes(v: Option<&str>) -> bool {
    matches!(v, Some("Y" | "y" | "1"))
}

/// Decide each engine from the host facts.
#[must_use]
pub fn engines(h: &HostFacts) -> Vec<EngineStatus> {
    let kvm = &h.kvm;
    let soft = if kvm.usable {
        match (&h.exit_semantics, &h.exit_semantics_error) {
            (Some(x), _) if x.gaps().is_empty() => EngineStatus {
                engine: Engine::Soft,
                svm: false,
                can_run: true,
                implemented: true,
                reason: format!(
                    "{} is usable; L0 provides VMX to L1 in userspace, so no nested support is needed from KVM; \
                     this KVM's exits, measured, can all be normalised{} ({x})",
                    kvm.path.display(),
                    [
                        (
                            x.kicks(),
                            "a kick does not stop a running guest here, so the VMX-preemption timer is refused"
                        ),
                        (
                            x.single_step,
                            "single-stepping gives no debug exit here, so CR3-load/store exiting is refused",
                        ),
                    ]
                    .iter()
                    .filter(|(has, _)| !has)
                    .map(|(_, refused)| format!(", but {refused}"))
                    .collect::<String>(),
                ),
            },
            (Some(x), _) => EngineStatus {
                engine: Engine::Soft,
                svm: false,
                can_run: false,
                implemented: true,
                reason: format!(
                    "this KVM's exits, measured, include some the soft engine cannot present as VM exits: {}",
                    x.gaps().join("; ")
                ),
            },
            (None, why) => EngineStatus {
                engine: Engine::Soft,
                svm: false,
                can_run: false,
                implemented: true,
                reason: format!(
                    "the soft engine normalises exits by what this KVM does, and probing that failed: {}",
                    why.as_deref().unwrap_or("no probe")
                ),
            },
        }
    } else {
        EngineStatus {
            engine: Engine::Soft,
            svm: false,
            can_run: false,
            implemented: true,
            reason: format!("KVM is not usable: {}", kvm.error.as_deref().unwrap_or("unknown error")),
        }
    };

    let kvm_engine = if !kvm.usable {
        (false, format!("KVM is not usable: {}", kvm.error.as_deref().unwrap_or("unknown error")))
    } else if kvm.offers_vmx {
        let nested = param(h, "kvm_intel", "nested");
        if yes(nested) {
            (true, "KVM offers VMX to guests (kvm_intel nested=Y)".to_owned())
        } else {
            (false, format!("KVM lists VMX but kvm_intel nested={}", nested.unwrap_or("absent")))
        }
    } else if kvm.offers_svm {
        let nested = param(h, "kvm_amd", "nested");
        if yes(nested) {
            (true, "KVM offers SVM to guests (kvm_amd nested=1): L1 runs L2 with its SVM backend".to_owned())
        } else {
            (false, format!("KVM lists SVM but kvm_amd nested={}", nested.unwrap_or("absent")))
        }
    } else {
        let backend = ["kvm_intel", "kvm_amd", "kvm_pvm"]
            .iter()
            .find(|m| h.kvm_modules.contains_key(**m))
            .copied()
            .unwrap_or("unknown");
        (
            false,
            format!(
                "KVM offers neither VMX nor SVM to guests (CPUID.1:ECX.VMX and 8000_0001h:ECX.SVM clear in \
                 KVM_GET_SUPPORTED_CPUID; backend {backend}, \
                 KVM_CAP_NESTED_STATE={})",
                kvm.nested_state
            ),
        )
    };
    let kvm_engine = EngineStatus {
        engine: Engine::Kvm,
        can_run: kvm_engine.0,
        implemented: true,
        reason: kvm_engine.1,
        svm: kvm.offers_svm && !kvm.offers_vmx,
    };

    let bochs_tool = h.tools.get("bochs");
    let bochs = match bochs_tool {
        Some(t) if t.available() => EngineStatus {
            engine: Engine::Bochs,
            svm: false,
            can_run: true,
            implemented: true,
            reason: format!(
                "bochs is installed at {} (L1's real VMX path; conformance, slow)",
                t.path.as_ref().map_or_else(String::new, |p| p.display().to_string())
            ),
        },
        Some(t) if t.path.is_some() => EngineStatus {
            engine: Engine::Bochs,
            svm: false,
            can_run: false,
            implemented: true,
            reason: format!(
                "bochs is installed but these files are missing: {} (apt-get install bochsbios vgabios)",
                t.missing.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        },
        _ => EngineStatus {
            engine: Engine::Bochs,
            svm: false,
            can_run: false,
            implemented: true,
            reason: "bochs is not installed (apt-get install bochs bochsbios vgabios)".to_owned(),
        },
    };
    vec![soft, kvm_engine, bochs]
}

/// Build the report of this machine (with the emulated hosts it can boot).
#[must_use]
pub fn doctor(host: HostFacts) -> Doctor {
    Doctor {
        doctor_version: DOCTOR_VERSION,
        host_name: "local".into(),
        engines: engines(&host),
        host,
        emulated_hosts: emulated_hosts(),
        boot: None,
    }
}

/// The report of an emulated host, from the facts its agent gathered inside it (the soft
/// engine's verdict follows the exit semantics measured there).
#[must_use]
pub fn doctor_emulated(name: String, host: HostFacts, boot: Option<crate::hosts::emulated::BootFigures>) -> Doctor {
    let mut engines = engines(&host);
    if let Some(b) = engines.iter_mut().find(|e| e.engine == Engine::Bochs) {
        b.can_run = false;
        b.reason = "not inside an emulated host (Bochs runs on the machine that boots it)".into();
    }
    Doctor { doctor_version: DOCTOR_VERSION, host_name: name, engines, host, emulated_hosts: Vec::new(), boot }
}

/// The report as text for a terminal.
#[must_use]
pub fn render(d: &Doctor) -> String {
    let h = &d.host;
    let mut s = String::new();
    let _ = writeln!(s, "host");
    let _ = writeln!(
        s,
        "  cpu        {} ({}, {} cpus{})",
        h.cpu_model,
        h.cpu_vendor,
        h.cpus,
        h.microcode.as_ref().map_or_else(String::new, |m| format!(", microcode {m}"))
    );
    let _ = writeln!(s, "  kernel     {}", h.kernel);
    for (m, params) in &h.kvm_modules {
        let interesting: Vec<String> = ["nested", "enable_shadow_vmcs", "ept", "unrestricted_guest", "npt", "tdp_mmu"]
            .iter()
            .filter_map(|k| params.get(*k).map(|v| format!("{k}={v}")))
            .collect();
        let _ = writeln!(s, "  module     {m} {}", interesting.join(" "));
    }
    let k = &h.kvm;
    if k.usable {
        let _ = writeln!(
            s,
            "  kvm        {}: API {}, offers VMX: {}, offers SVM: {}, nested state: {}, memslots: {}",
            k.path.display(),
            k.api_version.unwrap_or(0),
            if k.offers_vmx { "yes" } else { "no" },
            if k.offers_svm { "yes" } else { "no" },
            k.nested_state,
            k.nr_memslots
        );
    } else {
        let _ = writeln!(s, "  kvm        {}: {}", k.path.display(), k.error.as_deref().unwrap_or("unusable"));
    }
    match (&h.cpl0, &h.cpl0_probe_error) {
        (Some(p), _) => {
            let _ = writeln!(
                s,
                "  guest CPL0 {} ({} of {} probe instructions emulated by KVM, {:.1} us each)",
                if p.emulated { "emulated instruction by instruction" } else { "runs natively" },
                p.insn_emulation.map_or_else(|| "?".into(), |n| n.to_string()),
                p.guest_instructions,
                p.wall_ns as f64 / 1000.0 / p.guest_instructions as f64
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(s, "  guest CPL0 probe failed: {e}");
        }
        (None, None) => {}
    }
    for (name, t) in &h.tools {
        let _ = writeln!(
            s,
            "  {:<10} {}",
            name,
            match &t.path {
                Some(p) if t.missing.is_empty() => p.display().to_string(),
                Some(p) => format!("{} (missing {})", p.display(), t.missing.len()),
                None => "not installed".to_owned(),
            }
        );
    }
    if let Some(b) = &d.boot {
        let _ = writeln!(
            s,
            "  emulated   {} with kernel {} ({} {}), boot to ready {:.1} s wall",
            b.host,
            b.kernel_release,
            b.kvm_module,
            b.kvm_module_params,
            b.boot_to_ready_s.unwrap_or(f64::NAN)
        );
    }
    let _ =
        writeln!(s, "\nengines{}", if d.host_name == "local" { String::new() } else { format!(" on {}", d.host_name) });
    for e in &d.engines {
        let _ = writeln!(s, "  {:<6} {:<8} {}", e.engine, if e.can_run { "can run" } else { "cannot" }, e.reason);
    }
    if !d.emulated_hosts.is_empty() {
        let _ = writeln!(s, "\nemulated hosts (--host, --kernel)");
        for h in &d.emulated_hosts {
            let _ = writeln!(
                s,
                "  {:<32} {:<5} {:<8} {}",
                h.host,
                h.kernel,
                if h.can_run { "can run" } else { "cannot" },
                h.reason
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use l0::host::{KvmFacts, Tool};

    use super::*;

    fn host(kvm: KvmFacts, modules: &[(&str, &[(&str, &str)])], bochs: Option<Tool>) -> HostFacts {
        HostFacts {
            cpu_model: "fixture".into(),
            cpu_vendor: "fixture".into(),
            microcode: None,
            cpus: 2,
            kernel: "6.18".into(),
            kvm_modules: modules
                .iter()
                .map(|(m, p)| ((*m).to_owned(), p.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()))
                .collect(),
            kvm,
            cpl0: None,
            cpl0_probe_error: None,
            exit_semantics: Some(l0::soft::host_exits::HostExits::kvm_pvm()),
            exit_semantics_error: None,
            tools: bochs.map(|t| ("bochs".to_owned(), t)).into_iter().collect::<BTreeMap<_, _>>(),
        }
    }

    fn usable(vmx: bool, svm: bool) -> KvmFacts {
        KvmFacts { path: "/dev/kvm".into(), usable: true, offers_vmx: vmx, offers_svm: svm, ..Default::default() }
    }

    #[test]
    fn pvm_host_runs_soft_but_not_kvm() {
        let e = engines(&host(usable(false, false), &[("kvm", &[]), ("kvm_pvm", &[])], None));
        assert!(e[0].can_run, "soft");
        assert!(!e[1].can_run);
        assert!(e[1].reason.contains("neither VMX nor SVM"), "{}", e[1].reason);
        assert!(e[1].reason.contains("kvm_pvm"));
        assert!(!e[2].can_run);
        assert!(e[2].reason.contains("not installed"));
    }

    #[test]
    fn soft_can_run_only_where_every_measured_row_can_be_normalised() {
        use l0::soft::host_exits::{HostExits, Kick, Rip};
        let with = |x: HostExits| {
            let mut h = host(usable(false, false), &[("kvm", &[])], None);
            h.exit_semantics = Some(x);
            engines(&h).remove(0)
        };
        let up = with(HostExits::upstream());
        assert!(up.can_run, "{}", up.reason);
        assert!(up.reason.contains("RIP after OUT at"), "the measured rows are shown: {}", up.reason);
        let bochs = with(HostExits { kick: Kick::NotKicked, ..HostExits::upstream() });
        assert!(bochs.can_run && bochs.reason.contains("VMX-preemption timer is refused"), "{}", bochs.reason);
        let gap = with(HostExits { hlt: Rip::At, ..HostExits::upstream() });
        assert!(!gap.can_run, "{}", gap.reason);
        assert!(
            gap.reason.contains("HLT: this KVM exits with RIP at it; the soft engine needs RIP past it"),
            "{}",
            gap.reason
        );
    }

    #[test]
    fn intel_nested_host_runs_kvm_only_with_nested_on() {
        let on = engines(&host(usable(true, false), &[("kvm_intel", &[("nested", "Y")])], None));
        assert!(on[1].can_run);
        let off = engines(&host(usable(true, false), &[("kvm_intel", &[("nested", "N")])], None));
        assert!(!off[1].can_run);
        assert!(off[1].reason.contains("nested=N"));
    }

    #[test]
    fn amd_nested_host_runs_kvm_with_nested_on() {
        let e = engines(&host(usable(false, true), &[("kvm_amd", &[("nested", "1")])], None));
        assert!(e[1].can_run, "{}", e[1].reason);
        assert!(e[1].reason.contains("SVM"));
        let off = engines(&host(usable(false, true), &[("kvm_amd", &[("nested", "0")])], None));
        assert!(!off[1].can_run);
        assert!(off[1].reason.contains("kvm_amd nested=0"));
    }

    #[test]
    fn no_kvm_means_no_soft_engine() {
        let k = KvmFacts { path: "/dev/kvm".into(), error: Some("cannot open /dev/kvm".into()), ..Default::default() };
        let e = engines(&host(k, &[], None));
        assert!(!e[0].can_run && !e[1].can_run);
        assert!(e[0].reason.contains("cannot open"));
    }

    #[test]
    fn bochs_with_and_without_bios_files() {
        let ok = Tool { path: Some(PathBuf::from("/usr/bin/bochs")), missing: vec![] };
        assert!(engines(&host(usable(false, false), &[], Some(ok)))[2].can_run);
        let partial = Tool {
            path: Some(PathBuf::from("/usr/bin/bochs")),
            missing: vec![PathBuf::from("/usr/share/vgabios/vgabios.bin")],
        };
        let e = engines(&host(usable(false, false), &[], Some(partial)));
        assert!(!e[2].can_run);
        assert!(e[2].reason.contains("vgabios.bin"));
    }
}
