//! Staging an emulated machine's boot medium: the initramfs (busybox, the KVM modules,
//! `nestbench-l0` with its libraries, the guest images, the plan) and the El Torito ISO
//! that isolinux boots it from (the measured Bochs path, docs/emulated-hosts.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use l0::emulated::{ModuleLoad, PLAN_PATH, Plan};

use super::HostError;
use super::cpio::Cpio;
use super::kernel::{self, Kernel};

/// Bochs' instructions per emulated second; the kernel is told the same (`tsc_early_khz`,
/// `lpj`), or every delay runs 35x long (docs/emulated-hosts.md).
pub const IPS: u64 = 100_000_000;

/// Linux's tick rate in Debian's cloud kernels (CONFIG_HZ=250), for `lpj`.
const HZ: u64 = 250;

/// Where the guest images sit inside the emulated machine.
pub const GUEST_DIR: &str = "/nestbench";

/// Built-in initcalls the emulated host skips: the slowest of a 6.12 boot in Bochs
/// (`initcall_debug`: jitterentropy's self-calibration 1.3 emulated s, tracing's enum maps
/// for the format files 0.9 s, BPF struct_ops and TCP congestion kfuncs 0.5 s, the X.509
/// certificate list for module signatures 0.3 s, IPC sysctl buckets 0.35 s) and of 6.1
/// (blktrace 0.55 s, kprobe events 0.23 s). None is on a path KVM or l0 takes: modules are
/// loaded unsigned, no RNG user needs jitterentropy without FIPS, and KVM's tracepoints print
/// their exit reasons without the enum maps.
pub const SKIPPED_INITCALLS: &str = "jent_mod_init,trace_eval_init,bpf_tcp_ca_kfunc_init,bpf_dummy_struct_ops_init,\
                                     load_system_certificate_list,init_user_buckets,init_msg_buckets,init_blk_tracer,\
                                     init_kprobe_trace";

/// Kernel command-line words that keep the host's randomness out of the guest's execution.
const NO_RANDOMNESS: &str = "norandmaps clearcpuid=rdrand,rdseed random.trust_cpu=off";

/// The kernel command line: the serial console on COM1 (the stream has the debug port),
/// [`SKIPPED_INITCALLS`], and a kernel panic that halts rather than reboots into the BIOS
/// again (the supervisor sees "Kernel panic" on the console and stops the machine). On Bochs
/// also the TSC as Bochs counts it and no randomness that Bochs takes from the host, so two
/// boots are the same instructions; QEMU TCG keeps real time, and its TSC is the host's,
/// unless `icount` (QEMU's `-icount`): then no randomness either.
#[must_use]
pub fn cmdline(emulator: super::emulated::Emulator, extra: &str, icount: bool) -> String {
    let mut s = format!(
        "console=ttyS0,115200 rdinit=/init mitigations=off tsc=reliable no_timer_check nokaslr noreplace-smp \
         audit=0 selinux=0 apparmor=0 pcie_aspm=off nowatchdog nmi_watchdog=0 cryptomgr.notests loglevel=4 \
         panic=0 initcall_blacklist={SKIPPED_INITCALLS}"
    );
    if let super::emulated::Emulator::Bochs(_) = emulator {
        s.push_str(&format!(" tsc_early_khz={} lpj={} {NO_RANDOMNESS}", IPS / 1000, IPS / HZ));
    } else if icount {
        // QEMU's -icount makes time a function of instructions; these make the instructions
        // the same from boot to boot (no ASLR, no RDRAND/RDSEED-seeded entropy).
        s.push(' ');
        s.push_str(NO_RANDOMNESS);
    }
    if !extra.trim().is_empty() {
        s.push(' ');
        s.push_str(extra.trim());
    }
    s
}

/// QEMU's arguments for an emulated AMD host (docs/emulated-hosts.md): TCG `-cpu max`
/// (SVM with NPT), the default `pc` machine (microvm hangs), 1 GiB, the kernel and initramfs
/// loaded directly, COM1 = the console file, the debug port 0xE9 = the frame stream on stdout.
#[must_use]
pub fn qemu_args(bzimage: &Path, initrd: &Path, cmdline: &str, console: &Path, icount: Option<u8>) -> Vec<String> {
    let mut v: Vec<String> =
        ["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1024", "-nodefaults", "-display", "none"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    v.extend(["-no-reboot".into(), "-monitor".into(), "none".into()]);
    v.extend(["-kernel".into(), bzimage.display().to_string(), "-initrd".into(), initrd.display().to_string()]);
    v.extend(["-append".into(), cmdline.to_owned()]);
    v.extend(["-serial".into(), format!("file:{}", console.display()), "-debugcon".into(), "stdio".into()]);
    if let Some(shift) = icount {
        v.extend(["-icount".into(), format!("shift={shift},sleep=off")]);
    }
    v
}

/// The init of the emulated machine: mount what l0 needs (tracefs for KVM's tracepoints),
/// hand over to the agent (frames to the debug port 0xE9), power off whatever happens.
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
export NESTBENCH_L1_ELF=/nestbench/l1_guest NESTBENCH_PAYLOAD_DIR=/nestbench/payloads
/nestbench/nestbench-l0 agent --plan /nestbench/plan.json --line e9
echo "nestbench-agent: exit status $?"
poweroff -f
"#;

/// A file to put into the emulated machine: its bytes and where it goes.
pub struct Carried {
    /// The path inside.
    pub guest: String,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Its permission bits.
    pub mode: u32,
}

/// The load order of the KVM modules and the parameters each gets: irqbypass, kvm, then the
/// vendor module (`kvm_intel` or `kvm_amd`) with `vendor_params`.
#[must_use]
pub fn module_plan(kernel: &Kernel, vendor: &str, vendor_params: &str) -> Vec<(String, PathBuf, String)> {
    let m = &kernel.modules;
    let mut v = Vec::new();
    if let Some(p) = &m.irqbypass {
        v.push(("irqbypass".to_owned(), p.clone(), String::new()));
    }
    v.push(("kvm".to_owned(), m.kvm.clone(), String::new()));
    if let Some(p) = m.vendor(vendor) {
        v.push((vendor.to_owned(), p.clone(), vendor_params.to_owned()));
    }
    v
}

fn read(p: &Path) -> Result<Vec<u8>, HostError> {
    std::fs::read(p).map_err(|source| HostError::Io { path: p.to_owned(), source })
}

/// `l0` without its debug information (`strip`), or as it is where strip is missing.
fn stripped(l0: &Path, work: &Path) -> Result<Vec<u8>, HostError> {
    let out = work.join("nestbench-l0.stripped");
    match Command::new("strip").arg("-o").arg(&out).arg(l0).status() {
        Ok(s) if s.success() => read(&out),
        _ => read(l0),
    }
}

/// The shared libraries `exe` loads (from `ldd`), as (path inside, path here).
fn libraries(exe: &Path) -> Result<Vec<(String, PathBuf)>, HostError> {
    let out = Command::new("ldd").arg(exe).output().map_err(|e| HostError::Tool { tool: "ldd", why: e.to_string() })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    for l in text.lines() {
        let path = match l.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let real = std::fs::canonicalize(p).map_err(|source| HostError::Io { path: p.into(), source })?;
            v.push((p.to_owned(), real));
        }
    }
    Ok(v)
}

/// What went into an initramfs besides its files.
#[derive(Clone, Debug, Default)]
pub struct Staged {
    /// The archive.
    pub cpio: Vec<u8>,
    /// Per module, the ftrace call sites written as NOPs ahead of the kernel
    /// ([`super::ftrace_nop`]).
    pub ftrace_sites_nopped: Vec<(String, usize)>,
}

/// Build the initramfs: busybox, the init, the modules, `l0` with its libraries, the guest
/// images, `carried` files and the plan.
pub fn initramfs(
    kernel: &Kernel,
    vendor: &str,
    vendor_params: &str,
    l0: &Path,
    plan_runs: Vec<l0::emulated::PlannedRun>,
    carried: &[Carried],
    work: &Path,
) -> Result<Staged, HostError> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        return Err(HostError::Missing { what: "busybox (Debian package busybox-static)", path: busybox.into() });
    }
    let mut c = Cpio::new();
    for d in ["/bin", "/dev", "/proc", "/sys", "/tmp", "/lib", "/lib64", "/usr", GUEST_DIR] {
        c.dir(d);
    }
    c.dir("/nestbench/modules");
    c.dir("/nestbench/payloads");
    c.dir("/nestbench/files");
    c.file("/bin/busybox", 0o755, &read(busybox)?);
    c.file("/init", 0o755, INIT.as_bytes());
    let mut modules = Vec::new();
    let mut nopped = Vec::new();
    for (name, path, params) in module_plan(kernel, vendor, vendor_params) {
        let guest = format!("/nestbench/modules/{name}.ko");
        let ko = kernel::module_bytes(&path)?;
        let ko = match super::ftrace_nop::nop_ftrace_sites(&ko) {
            Some((ko, sites)) => {
                nopped.push((name.clone(), sites));
                ko
            }
            None => ko,
        };
        c.file(&guest, 0o644, &ko);
        modules.push(ModuleLoad { name, path: guest, params });
    }
    c.file("/nestbench/nestbench-l0", 0o755, &stripped(l0, work)?);
    let mut dirs = std::collections::BTreeSet::new();
    for (guest, real) in libraries(l0)? {
        let mut parent = Path::new(&guest).parent();
        let mut chain = Vec::new();
        while let Some(p) = parent.filter(|p| p != &Path::new("/")) {
            chain.push(p.display().to_string());
            parent = p.parent();
        }
        for d in chain.into_iter().rev() {
            if dirs.insert(d.clone()) && !["/lib", "/lib64", "/usr"].contains(&d.as_str()) {
                c.dir(&d);
            }
        }
        c.file(&guest, 0o755, &read(&real)?);
    }
    let l1 = l0::images::l1_elf();
    c.file("/nestbench/l1_guest", 0o755, &read(&l1)?);
    for m in l2_payloads::all() {
        let p = l0::images::payload_elf(m.name);
        if p.is_file() {
            c.file(&format!("/nestbench/payloads/{}", m.name), 0o755, &read(&p)?);
        }
    }
    for f in carried {
        c.file(&f.guest, f.mode, &f.bytes);
    }
    let plan = Plan { modules, sysfs: Vec::new(), runs: plan_runs };
    c.file(PLAN_PATH, 0o644, serde_json::to_string_pretty(&plan).expect("plans serialise").as_bytes());
    Ok(Staged { cpio: c.finish(), ftrace_sites_nopped: nopped })
}

/// isolinux's files (Debian packages isolinux and syslinux-common).
pub const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
pub const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";

/// Build the boot ISO in `work`: isolinux boots `kernel` with `initrd` and `cmdline`.
pub fn iso(kernel: &Kernel, initrd: &[u8], cmdline: &str, work: &Path) -> Result<PathBuf, HostError> {
    let root = work.join("iso");
    let isolinux = root.join("isolinux");
    std::fs::create_dir_all(&isolinux).map_err(|source| HostError::Io { path: isolinux.clone(), source })?;
    for (src, what) in [
        (ISOLINUX_BIN, "isolinux (Debian package isolinux)"),
        (LDLINUX_C32, "ldlinux.c32 (Debian package syslinux-common)"),
    ] {
        let src = Path::new(src);
        if !src.is_file() {
            return Err(HostError::Missing { what, path: src.into() });
        }
        let dst = isolinux.join(src.file_name().expect("a file name"));
        std::fs::copy(src, &dst).map_err(|source| HostError::Io { path: dst, source })?;
    }
    let write = |name: &Path, bytes: &[u8]| {
        std::fs::write(name, bytes).map_err(|source| HostError::Io { path: name.to_owned(), source })
    };
    write(&root.join("vmlinuz"), &read(&kernel.bzimage)?)?;
    write(&root.join("initrd"), initrd)?;
    let cfg =
        format!("DEFAULT nb\nPROMPT 0\nTIMEOUT 0\nLABEL nb\n  KERNEL /vmlinuz\n  INITRD /initrd\n  APPEND {cmdline}\n");
    write(&isolinux.join("isolinux.cfg"), cfg.as_bytes())?;
    let out = work.join("boot.iso");
    let o = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&out)
        .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4"])
        .arg("-boot-info-table")
        .arg(&root)
        .env("SOURCE_DATE_EPOCH", "946684800")
        .output()
        .map_err(|e| HostError::Tool { tool: "xorriso", why: format!("{e} (Debian package xorriso)") })?;
    if !o.status.success() {
        return Err(HostError::Tool { tool: "xorriso", why: String::from_utf8_lossy(&o.stderr).trim().to_owned() });
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(out)
}

/// The bochsrc of an emulated Intel host: `model` with VMX, 1 GiB, the ISO on the first
/// ATA channel, COM1 = console, the debug port 0xE9 = the frame stream on Bochs' stdout,
/// deterministic clock (docs/emulated-hosts.md, docs/kvm-exits.md "Bochs").
///
/// The stream left COM2 for the debug port: an emulated 16550 at 115200 baud carries about
/// 11 KB per emulated second (a soft-engine run's final report is 10-20 KB), and twice the
/// output of a whole session stopped mid-line there with the machine otherwise idle; port
/// 0xE9 takes a `rep outsb` of the whole frame, with no UART, interrupt or baud rate.
#[must_use]
pub fn bochsrc(model: &str, iso: &Path, console: &Path, log: &Path) -> String {
    format!(
        "# nestbench emulated Intel host: generated, one per boot\n\
         config_interface: textconfig\n\
         display_library: rfb, options=\"timeout=0\"\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest, options=fastboot\n\
         vgaromimage: file=/usr/share/vgabios/vgabios.bin\n\
         cpu: model={model}, count=1, ips={IPS}, reset_on_triple_fault=0\n\
         memory: guest=1024, host=1024\n\
         pci: enabled=1, chipset=i440fx\n\
         clock: sync=none, time0=946684800\n\
         ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14\n\
         ata0-master: type=cdrom, path=\"{}\", status=inserted\n\
         boot: cdrom\n\
         floppy_bootsig_check: disabled=1\n\
         com1: enabled=1, mode=file, dev=\"{}\"\n\
         port_e9_hack: enabled=1\n\
         sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy\n\
         speaker: enabled=0\n\
         mouse: enabled=0\n\
         log: {}\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=ignore\n\
         debug: action=ignore\n",
        iso.display(),
        console.display(),
        log.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_matches_bochs_clock_and_keeps_boots_deterministic() {
        let c = cmdline(super::super::emulated::Emulator::Bochs("corei7_skylake_x"), "", false);
        for want in [
            "console=ttyS0,115200",
            "tsc_early_khz=100000",
            "lpj=400000",
            "clearcpuid=rdrand,rdseed",
            "norandmaps",
            "random.trust_cpu=off",
            "panic=0",
        ] {
            assert!(c.split(' ').any(|w| w == want), "{want} missing from {c}");
        }
        assert!(c.contains(" initcall_blacklist=jent_mod_init,trace_eval_init,"), "{c}");
        assert!(!c.contains(", "), "one word: {c}");
        assert!(
            cmdline(super::super::emulated::Emulator::Bochs("x"), " transparent_hugepage=never ", false)
                .ends_with(" random.trust_cpu=off transparent_hugepage=never")
        );
        let q = cmdline(super::super::emulated::Emulator::Qemu, "", false);
        assert!(!q.contains("tsc_early_khz") && !q.contains("lpj="), "QEMU keeps real time: {q}");
        assert!(!q.contains("norandmaps"), "{q}");
        let qi = cmdline(super::super::emulated::Emulator::Qemu, "", true);
        assert!(qi.ends_with(" norandmaps clearcpuid=rdrand,rdseed random.trust_cpu=off"), "-icount: {qi}");
        let a = |icount| qemu_args(Path::new("/k"), Path::new("/i"), "c", Path::new("/c"), icount).join(" ");
        assert!(a(Some(3)).ends_with(" -icount shift=3,sleep=off"), "{}", a(Some(3)));
        assert!(!a(None).contains("-icount"));
    }

    #[test]
    fn the_bochsrc_gives_the_stream_its_own_port() {
        let rc = bochsrc(
            "corei7_ivy_bridge_3770k",
            Path::new("/r/boot.iso"),
            Path::new("/r/console.log"),
            Path::new("/r/bochs.log"),
        );
        for want in [
            "cpu: model=corei7_ivy_bridge_3770k, count=1, ips=100000000, reset_on_triple_fault=0\n",
            "clock: sync=none, time0=946684800\n",
            "com1: enabled=1, mode=file, dev=\"/r/console.log\"\n",
            "port_e9_hack: enabled=1\n",
            "ata0-master: type=cdrom, path=\"/r/boot.iso\", status=inserted\n",
        ] {
            assert!(rc.contains(want), "{want:?} missing from\n{rc}");
        }
        assert!(!rc.contains("com2:"), "the stream has the debug port");
    }
}
