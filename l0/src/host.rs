//! Facts about the host, for `nestbench doctor` and for every result: CPU, kernel, KVM
//! modules and their parameters, what KVM offers guests, and whether guest CPL 0 code is
//! emulated (measured by running a guest, not guessed).

pub use nestbench_protocol::host::{Cpl0Probe, HostFacts, KvmFacts, Tool};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Cap;
use nestbench_abi::cpuid as hv;

use crate::machine::{Image, Machine, MachineConfig};
use crate::x86_setup::Cpl;

/// KVM modules whose presence and parameters matter here.
pub const KVM_MODULES: [&str; 4] = ["kvm", "kvm_intel", "kvm_amd", "kvm_pvm"];

fn cpuinfo_field(cpuinfo: &str, key: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

/// Parameters of a loaded kernel module, or `None` if it is not loaded.
#[must_use]
pub fn module_params(module: &str) -> Option<BTreeMap<String, String>> {
    let dir = Path::new("/sys/module").join(module);
    if !dir.exists() {
        return None;
    }
    let mut out = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("parameters")) {
        for e in entries.flatten() {
            if let Ok(v) = std::fs::read_to_string(e.path()) {
                out.insert(e.file_name().to_string_lossy().into_owned(), v.trim().to_owned());
            }
        }
    }
    Some(out)
}

/// Find `name` on PATH.
#[must_use]
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn tool(name: &str, needs: &[&str]) -> Tool {
    Tool { path: which(name), missing: needs.iter().map(PathBuf::from).filter(|p| !p.exists()).collect() }
}

/// Query KVM at `path`.
#[must_use]
pub fn kvm_facts(path: &Path) -> KvmFacts {
    let mut f = KvmFacts { path: path.to_owned(), ..Default::default() };
    let kvm = match crate::vm::open_kvm(path) {
        Ok(k) => k,
        Err(e) => {
            f.error = Some(e.to_string());
            return f;
        }
    };
    f.usable = true;
    f.api_version = Some(kvm.get_api_version());
    if let Ok(c) = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES) {
        for e in c.as_slice() {
            if e.function == 1 {
                f.offers_vmx = e.ecx & hv::CPUID1_ECX_VMX != 0;
            }
            if e.function == 0x8000_0001 {
                f.offers_svm = e.ecx & hv::CPUID_EXT1_ECX_SVM != 0;
            }
        }
    }
    f.nested_state = kvm.check_extension_int(Cap::NestedState);
    f.sync_regs = kvm.check_extension(Cap::SyncRegs);
    f.user_space_msr = kvm.check_extension(Cap::X86UserSpaceMsr);
    f.nr_memslots = kvm.get_nr_memslots();
    f
}

/// Iterations of the probe loop (two instructions each).
const PROBE_ITERATIONS: u32 = 1000;

/// Run a tiny CPL 0 guest (`mov ecx, N; 1: dec ecx; jnz 1b`, then the Exit hypercall) and
/// read the vCPU's `insn_emulation` statistic. Where CPL 0 is emulated instruction by
/// instruction (the development hosts' kvm_pvm), it counts at least the 2N loop instructions.
pub fn probe_cpl0(kvm_path: &Path) -> Result<Cpl0Probe, crate::machine::MachineError> {
    let code = cpl0_probe_code();
    let config = MachineConfig {
        kvm_path: kvm_path.to_owned(),
        mem_size: 4 << 20,
        timeout: Duration::from_secs(10),
        cpl: Cpl::Kernel,
        ..Default::default()
    };
    let report = Machine::new(config, &Image::Raw { gpa: 0x10_0000, bytes: code })?.run(|_| {})?;
    let guest_instructions = 1 + 2 * u64::from(PROBE_ITERATIONS) + 4;
    let insn_emulation = report.kvm_stats.as_ref().and_then(|s| s.vcpu.counters.get("insn_emulation").copied());
    Ok(Cpl0Probe {
        guest_instructions,
        insn_emulation,
        emulated: insn_emulation.is_some_and(|n| n >= 2 * u64::from(PROBE_ITERATIONS)),
        wall_ns: report.wall_ns,
    })
}

fn cpl0_probe_code() -> Vec<u8> {
    use iced_x86::code_asm::{CodeAssembler, dx, eax, ecx, edi};
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    let mut top = a.create_label();
    let steps = (|| -> Result<(), iced_x86::IcedError> {
        a.mov(ecx, PROBE_ITERATIONS)?;
        a.set_label(&mut top)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.mov(eax, nestbench_abi::hypercall::Call::Exit as u32)?;
        a.xor(edi, edi)?;
        a.mov(dx, u32::from(nestbench_abi::hypercall::PORT))?;
        a.out(dx, eax)?;
        Ok(())
    })();
    steps.expect("the probe assembles");
    a.assemble(0x10_0000).expect("the probe assembles")
}

/// The TSC frequency guests see, in kHz, and where it came from: KVM_GET_TSC_KHZ on a
/// scratch vCPU (what a payload's RDTSC counts at), else the kernel's `tsc_freq_khz`, else
/// /proc/cpuinfo's "cpu MHz" when the TSC is constant (approximate). `None` when none
/// is available; callers then report cycles only.
#[must_use]
pub fn tsc_khz(kvm_path: &Path) -> Option<(u64, &'static str)> {
    let from_kvm = crate::vm::open_kvm(kvm_path)
        .ok()
        .filter(|k| k.check_extension(Cap::GetTscKhz))
        .and_then(|k| k.create_vm().ok())
        .and_then(|vm| vm.create_vcpu(0).ok())
        .and_then(|vcpu| vcpu.get_tsc_khz().ok())
        .filter(|&khz| khz > 0);
    if let Some(khz) = from_kvm {
        return Some((u64::from(khz), "KVM_GET_TSC_KHZ"));
    }
    if let Some(khz) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&k| k > 0)
    {
        return Some((khz, "sysfs tsc_freq_khz"));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo_tsc_khz(&cpuinfo).map(|k| (k, "/proc/cpuinfo cpu MHz (constant_tsc; approximate)"))
}

fn cpuinfo_tsc_khz(cpuinfo: &str) -> Option<u64> {
    let flags = cpuinfo_field(cpuinfo, "flags")?;
    if !flags.split_whitespace().any(|f| f == "constant_tsc") {
        return None;
    }
    let mhz: f64 = cpuinfo_field(cpuinfo, "cpu MHz")?.parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// Gather everything.
#[must_use]
pub fn gather(kvm_path: &Path) -> HostFacts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm = kvm_facts(kvm_path);
    let (cpl0, cpl0_probe_error) = if kvm.usable {
        match probe_cpl0(kvm_path) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, Some("KVM is not usable".into()))
    };
    let exits = if kvm.usable { crate::soft::host_exits::probe(kvm_path) } else { Err("KVM is not usable".into()) };
    HostFacts {
        cpu_model: cpuinfo_field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
        cpu_vendor: cpuinfo_field(&cpuinfo, "vendor_id").unwrap_or_else(|| "unknown".into()),
        microcode: cpuinfo_field(&cpuinfo, "microcode"),
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned()),
        kvm_modules: KVM_MODULES.iter().filter_map(|m| Some(((*m).to_owned(), module_params(m)?))).collect(),
        kvm,
        cpl0,
        cpl0_probe_error,
        exit_semantics: exits.as_ref().ok().cloned(),
        exit_semantics_error: exits.err(),
        tools: [
            (
                "bochs".to_owned(),
                tool("bochs", &["/usr/share/bochs/BIOS-bochs-latest", "/usr/share/vgabios/vgabios.bin"]),
            ),
            ("qemu-system-x86_64".to_owned(), tool("qemu-system-x86_64", &[])),
        ]
        .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_fields_parse() {
        let c = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpuinfo_field(c, "model name").as_deref(), Some("AMD EPYC"));
        assert_eq!(cpuinfo_field(c, "microcode"), None);
    }

    #[test]
    fn tsc_from_cpuinfo_needs_a_constant_tsc() {
        let c = "cpu MHz\t\t: 2596.134\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n";
        assert_eq!(cpuinfo_tsc_khz(c), Some(2_596_134));
        assert_eq!(cpuinfo_tsc_khz("cpu MHz\t: 2596.1\nflags\t: fpu tsc\n"), None);
    }

    #[test]
    fn tsc_khz_is_read_from_kvm_where_there_is_one() {
        if !Path::new("/dev/kvm").exists() {
            println!("SKIP: no /dev/kvm");
            return;
        }
        let (khz, source) = tsc_khz(Path::new("/dev/kvm")).expect("a TSC frequency");
        assert!(khz > 100_000, "{khz} kHz from {source}");
    }
}
