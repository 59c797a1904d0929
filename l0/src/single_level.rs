//! The single-level twin of a payload: the same image run directly as a KVM guest of L0,
//! no L1, at the same CPL, so every nested figure has its baseline from the same host
//! (docs/architecture.md, "From runs to verdicts"). L0 plays L1's part for the payload's ports:
//! IN from `PAYLOAD_PORT` returns `IN_VALUE`, OUT to it is absorbed, OUT to `DONE_PORT`
//! ends the run. The MSRs L1 intercepts with its MSR bitmap (IA32_SYSENTER_ESP and
//! IA32_KERNEL_GS_BASE, `l2_payloads::{rdmsr, wrmsr}`) are sent to L0 with a KVM MSR filter
//! and emulated as L1 does (the ABI's [`EmulatedMsrs`], which L1 uses): reads return the emulated value, writes are
//! recorded and checked against the `wrmsr` payload's sequence (mismatches are added to
//! the payload's failures).

pub use nestbench_protocol::single_level::SingleLevelRun;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nestbench_abi::Pod;
use nestbench_abi::msr::{self, EmulatedMsrs};
use nestbench_abi::payload::{
    self, DONE_PORT, IN_VALUE, L2_IMAGE_BASE, L2_IMAGE_MAX, L2_RESULTS_GPA, L2_STACK_TOP, PAYLOAD_PORT, PayloadResults,
};

use crate::loader;
use crate::machine::MachineError;
use crate::vcpu::Exit;
use crate::vm::Vm;
use crate::watchdog::Watchdog;
use crate::x86_setup::Cpl;

/// Run the payload at `elf` directly in a VM of L0.
pub fn run(
    kvm_path: &Path,
    elf: &Path,
    cpl: payload::Cpl,
    iterations: u64,
    arg: u64,
    timeout: Duration,
) -> Result<SingleLevelRun, MachineError> {
    let vm = Vm::new(kvm_path, 16 << 20)?;
    let image = loader::stage_flat(&vm.mem, elf, L2_IMAGE_BASE, L2_IMAGE_MAX, L2_IMAGE_BASE)?;
    vm.mem.write(L2_RESULTS_GPA, &[0; 4096]).map_err(crate::vm::VmError::from)?;
    // The EPT payloads' data region, seeded as L1 seeds its pool (here it is plain memory
    // of the VM: a first touch costs what a first touch costs in a single-level guest).
    // Only the pool's pages: this VM's 16 MiB hold no aliases, so an EPT payload runs here
    // with at most `EPT_POOL_PAGES` pages.
    for i in 0..payload::EPT_POOL_PAGES {
        let gpa = payload::EPT_DATA_GPA + i * 4096;
        for off in payload::EPT_PATTERN_OFFSETS {
            vm.mem.write_u64(gpa + off, payload::ept_pattern(gpa, off)).map_err(crate::vm::VmError::from)?;
        }
    }
    let cpl = if cpl == payload::Cpl::Kernel { Cpl::Kernel } else { Cpl::User };
    let mut vcpu = vm.create_vcpu(cpl, image.entry, L2_STACK_TOP, iterations)?;
    let mut regs = vcpu.regs_now()?;
    regs.rsi = arg;
    vcpu.set_regs_now(&regs)?;

    crate::msr_filter::exit_to_userspace(&vm.fd, &msr::INTERCEPTED).map_err(|e| MachineError::Setup(e.to_string()))?;
    let mut msrs = EmulatedMsrs::new();

    let kicker = vcpu.bind_to_current_thread()?;
    let watchdog = Watchdog::arm(kicker, timeout);
    let mut exits: BTreeMap<String, u64> = BTreeMap::new();
    let start = Instant::now();
    let (status, problem) = loop {
        let exit = vcpu.run()?;
        *exits.entry(crate::machine::exit_kind(&exit).to_owned()).or_default() += 1;
        match exit {
            Exit::IoOut { port: DONE_PORT, data, .. } => {
                let mut b = [0u8; 8];
                let n = data.len().min(8);
                b[..n].copy_from_slice(&data[..n]);
                break (u64::from_le_bytes(b), None);
            }
            Exit::IoOut { port: PAYLOAD_PORT, .. } | Exit::Hlt => {}
            Exit::IoIn { port: PAYLOAD_PORT, size, count } => {
                let one = &IN_VALUE.to_le_bytes()[..usize::from(size)];
                let data: Vec<u8> = one.iter().copied().cycle().take(usize::from(size) * count as usize).collect();
                vcpu.set_in_data(&data);
            }
            // docs/kvm-exits.md row 5: the answer completes the instruction (RIP past it).
            Exit::RdMsr { index } => vcpu.set_rdmsr_result(msrs.read(index).ok_or(())),
            Exit::WrMsr { index, data } => vcpu.set_wrmsr_result(msrs.write(index, data)),
            Exit::Interrupted if watchdog.fired() => break (u64::MAX, Some(format!("timeout after {timeout:?}"))),
            Exit::Interrupted => {}
            other => break (u64::MAX, Some(format!("unexpected exit {other:?}"))),
        }
    };
    let wall_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    drop(watchdog);
    let results = vm
        .mem
        .read_vec(L2_RESULTS_GPA, size_of::<PayloadResults>() as u64)
        .ok()
        .and_then(|b| PayloadResults::from_bytes(&b))
        .filter(|r| r.magic == payload::RESULTS_MAGIC)
        .map(|r| crate::events::PayloadResults::from(&r))
        .map(|r| crate::events::PayloadResults { failures: r.failures + msrs.gs_base_mismatches, ..r });
    Ok(SingleLevelRun { status, kvm_exits: exits, results, wall_ns, problem })
}
