//! RDMSR/WRMSR exits of L2 (basic reasons 31 and 32) on the soft engine.
//!
//! **Which accesses exit** (SDM 26.1.3, "Instructions That Cause VM Exits Conditionally"):
//! "RDMSR. The RDMSR instruction causes a VM exit if any of the following are true: The 'use
//! MSR bitmaps' VM-execution control is 0. The value of ECX is not in the ranges 00000000H –
//! 00001FFFH and C0000000H – C0001FFFH. The value of ECX is in the range 00000000H –
//! 00001FFFH and bit n in read bitmap for low MSRs is 1, where n is the value of ECX. The
//! value of ECX is in the range C0000000H – C0001FFFH and bit n in read bitmap for high MSRs
//! is 1, where n is the value of ECX & 00001FFFH." WRMSR is the same with the write bitmaps.
//!
//! **The bitmap** (SDM 25.6.9, "MSR-Bitmap Address"): 4 KiB at the MSR-bitmap address,
//! "Read bitmap for low MSRs (located at the MSR-bitmap address)", "Read bitmap for high MSRs
//! (located at the MSR-bitmap address plus 1024)", "Write bitmap for low MSRs (located at
//! the MSR-bitmap address plus 2048)", "Write bitmap for high MSRs (located at the
//! MSR-bitmap address plus 3072)".
//!
//! **How L0 sees them.** VM2 gets a KVM MSR filter ([`crate::msr_filter`]) built from what
//! L1 asks: default deny (so MSRs outside both ranges exit, as the SDM says), and four
//! ranges (read/write x low/high, 0x2000 MSRs each, well under KVM_MSR_FILTER_MAX_RANGES =
//! 16) whose allow bits are the complement of L1's bitmap. KVM handles the x2APIC range
//! 0x800-0x8FF in the kernel whatever the filter says, so an L1 that intercepts any of those
//! MSRs — which includes every L1 without "use MSR bitmaps" — is refused as
//! `engine_unsupported` naming the MSR, never run with the intercept silently dropped.
//! L1 may change the bitmap between entries: L0 compares the 4 KiB (and the address) at
//! every entry with what the installed filter was built from and rebuilds on a change.
//! An RDMSR of an MSR that L1 does not intercept is KVM's: it returns VM2's value, not L1's
//! (docs/architecture.md).
//!
//! **Normalising the exit** (docs/kvm-exits.md row 5 and row R): the KVM exit comes with RIP
//! at the instruction and nothing updated, but a completion pending. L0 decodes the
//! instruction at RIP (RDMSR `0F 32` / WRMSR `0F 30`, length 2), answers the exit (`error =
//! 0`, data 0: `error = 1` would queue a #GP for the next entry) and flushes it with one
//! KVM_RUN with `immediate_exit` *before* any register write, then reflects the exit-time
//! registers: RIP at the instruction, instruction length, qualification 0 (SDM 28.2.1:
//! RDMSR/WRMSR are not among the exits with a qualification), no instruction information.

use iced_x86::{Code, Decoder, DecoderOptions};
use kvm_bindings::kvm_regs;
use kvm_ioctls::VmFd;
use nestbench_abi::controls::proc1;
use nestbench_abi::vmx::ExitReason;

use super::transitions::ExitInfo;
use crate::memory::GuestMem;
use crate::msr_filter::{self, Filter, MsrFilterError, Range, X2APIC_MSRS};
use crate::vcpu::{Exit, Vcpu, VcpuError};

/// Size of the MSR bitmap (SDM 25.6.9).
pub const BITMAP_SIZE: usize = 4096;
/// First MSR of the high range.
pub const HIGH_BASE: u32 = 0xC000_0000;
/// MSRs in each of the low and high ranges.
pub const RANGE_MSRS: u32 = 0x2000;
/// Offsets of the four 1 KiB bitmaps (SDM 25.6.9).
const READ_LOW: usize = 0;
const READ_HIGH: usize = 1024;
const WRITE_LOW: usize = 2048;
const WRITE_HIGH: usize = 3072;

/// Why L0 cannot give L1 the RDMSR/WRMSR exits it asks for.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// The MSR bitmap is not in L1 memory (the VM-entry checks allow any 4 KiB-aligned
    /// address within MAXPHYADDR).
    #[error("the MSR bitmap at L1-physical {addr:#x} is outside L1 memory")]
    BitmapOutside {
        /// Its address.
        addr: u64,
    },
    /// L1 intercepts an x2APIC MSR, which KVM handles in the kernel.
    #[error(
        "L1 intercepts {} of x2APIC MSR {msr:#x}{}: KVM handles the x2APIC range 0x800-0x8ff in the kernel and its \
         MSR filter cannot send those accesses to L0",
        if *write { "WRMSR" } else { "RDMSR" },
        if *all { " (without 'use MSR bitmaps' every RDMSR and WRMSR exits, SDM 26.1.3)" } else { "" }
    )]
    X2apic {
        /// The first such MSR.
        msr: u32,
        /// A write intercept (else a read intercept).
        write: bool,
        /// Because "use MSR bitmaps" is 0.
        all: bool,
    },
    /// Installing the filter failed.
    #[error(transparent)]
    Filter(#[from] MsrFilterError),
}

/// Which RDMSR/WRMSR of L2 exit to L1, as VMCS12 and L1's bitmap say at a VM entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intercepts {
    /// "Use MSR bitmaps" is 0: every RDMSR and WRMSR exits.
    All,
    /// The MSR bitmap's contents, as read at the entry, and its address.
    Bitmap {
        /// L1-physical address.
        addr: u64,
        /// The 4 KiB.
        bits: Box<[u8; BITMAP_SIZE]>,
    },
}

impl Intercepts {
    /// What the primary processor-based controls `proc_based` and the MSR-bitmap address
    /// `addr` (already checked by the VM-entry checks) ask for, reading the bitmap from L1
    /// memory.
    pub fn read(mem: &GuestMem, proc_based: u32, addr: u64) -> Result<Self, MsrError> {
        if proc_based & proc1::USE_MSR_BITMAPS == 0 {
            return Ok(Self::All);
        }
        let bytes = mem.read_vec(addr, BITMAP_SIZE as u64).map_err(|_| MsrError::BitmapOutside { addr })?;
        let bits: Box<[u8; BITMAP_SIZE]> =
            bytes.into_boxed_slice().try_into().map_err(|_| MsrError::BitmapOutside { addr })?;
        Ok(Self::Bitmap { addr, bits })
    }

    /// Whether RDMSR (`write` false) or WRMSR of `msr` exits (SDM 26.1.3).
    #[must_use]
    pub fn exits(&self, msr: u32, write: bool) -> bool {
        let Self::Bitmap { bits, .. } = self else { return true };
        let (n, offset) = match msr {
            0..=0x1FFF => (msr, if write { WRITE_LOW } else { READ_LOW }),
            0xC000_0000..=0xC000_1FFF => (msr - HIGH_BASE, if write { WRITE_HIGH } else { READ_HIGH }),
            _ => return true,
        };
        bits[offset + n as usize / 8] >> (n % 8) & 1 != 0
    }

    /// The KVM MSR filter that sends exactly these accesses to L0, or why there is none.
    pub fn filter(&self) -> Result<Filter, MsrError> {
        for write in [false, true] {
            if let Some(msr) = X2APIC_MSRS.into_iter().find(|&m| self.exits(m, write)) {
                return Err(MsrError::X2apic { msr, write, all: *self == Self::All });
            }
        }
        let ranges = match self {
            // Deny everything. (Unreachable today, the x2APIC range being refused above, but
            // this is the filter; KVM rejects a default-deny filter without any range.)
            Self::All => vec![Range { read: true, write: true, base: 0, count: 1, allow: vec![0] }],
            Self::Bitmap { bits, .. } => [
                (false, 0, READ_LOW),
                (false, HIGH_BASE, READ_HIGH),
                (true, 0, WRITE_LOW),
                (true, HIGH_BASE, WRITE_HIGH),
            ]
            .into_iter()
            .map(|(write, base, offset)| Range {
                read: !write,
                write,
                base,
                count: RANGE_MSRS,
                // L1: a set bit exits. KVM: a set bit allows (no exit).
                allow: bits[offset..offset + RANGE_MSRS as usize / 8].iter().map(|b| !b).collect(),
            })
            .collect(),
        };
        Ok(Filter { default_deny: true, ranges })
    }
}

/// VM2's MSR filter, kept in step with L1's MSR bitmap.
#[derive(Debug, Default)]
pub struct MsrExits {
    installed: Option<Intercepts>,
    cap_enabled: bool,
    /// Filters installed so far (1 when L1 never changes its bitmap).
    pub filter_builds: u64,
}

impl MsrExits {
    /// At a VM entry, after the VM-entry checks: make VM2's filter match `proc_based` and
    /// the bitmap at `bitmap_addr`, rebuilding it only when they changed.
    pub fn sync(&mut self, vm: &VmFd, mem: &GuestMem, proc_based: u32, bitmap_addr: u64) -> Result<(), MsrError> {
        let want = Intercepts::read(mem, proc_based, bitmap_addr)?;
        if self.installed.as_ref() == Some(&want) {
            return Ok(());
        }
        let filter = want.filter()?;
        if !self.cap_enabled {
            msr_filter::enable_filter_exits(vm)?;
            self.cap_enabled = true;
        }
        msr_filter::set(vm, &filter)?;
        self.installed = Some(want);
        self.filter_builds += 1;
        Ok(())
    }
}

/// Normalise a KVM_EXIT_X86_RDMSR/WRMSR of VM2 into the VM exit hardware reports. `insn`
/// holds the bytes at L2's RIP (up to 15; fewer where they do not translate), `regs` L2's
/// registers at the exit. On success the pending completion has been flushed and `regs`
/// (RIP at the instruction, RAX/RDX untouched) is the state to reflect; `Ok(Err(why))`
/// when the exit does not match the instruction (the run stops).
pub fn normalise(
    vcpu: &mut Vcpu,
    exit: &Exit,
    regs: &kvm_regs,
    insn: &[u8],
) -> Result<Result<ExitInfo, String>, VcpuError> {
    let (reason, code, index, name) = match *exit {
        Exit::RdMsr { index } => (ExitReason::Rdmsr, Code::Rdmsr, index, "RDMSR"),
        Exit::WrMsr { index, .. } => (ExitReason::Wrmsr, Code::Wrmsr, index, "WRMSR"),
        _ => return Ok(Err(format!("{exit:?} is not an MSR exit"))),
    };
    let decoded = Decoder::with_ip(64, insn, regs.rip, DecoderOptions::NONE).decode();
    if decoded.is_invalid() || decoded.code() != code {
        return Ok(Err(format!("no {name} at L2 RIP {:#x} (bytes {insn:02x?})", regs.rip)));
    }
    if regs.rcx as u32 != index {
        return Ok(Err(format!("{name} exit for MSR {index:#x} but ECX is {:#x}", regs.rcx as u32)));
    }
    if let Exit::WrMsr { data, .. } = *exit
        && data != (regs.rdx << 32 | regs.rax & 0xFFFF_FFFF)
    {
        return Ok(Err(format!("WRMSR exit data {data:#x} is not EDX:EAX of {:#x}:{:#x}", regs.rdx, regs.rax)));
    }
    // docs/kvm-exits.md row R: answer (error = 0; data 0 for RDMSR) and run the completion
    // with immediate_exit before anything writes L2's registers; VM entry reloads them all
    // from VMCS12.
    match exit {
        Exit::RdMsr { .. } => vcpu.set_rdmsr_result(Ok(0)),
        _ => vcpu.set_wrmsr_result(true),
    }
    vcpu.set_immediate_exit(true);
    let r = vcpu.run();
    vcpu.set_immediate_exit(false);
    r?;
    let insn_len = decoded.len() as u32;
    Ok(Ok(ExitInfo { reason: reason as u32, insn_len, ..ExitInfo::default() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(set: &[(u32, bool)]) -> Intercepts {
        let mut bits = Box::new([0u8; BITMAP_SIZE]);
        for &(msr, write) in set {
            let (n, off) = if msr >= HIGH_BASE {
                (msr - HIGH_BASE, if write { WRITE_HIGH } else { READ_HIGH })
            } else {
                (msr, if write { WRITE_LOW } else { READ_LOW })
            };
            bits[off + n as usize / 8] |= 1 << (n % 8);
        }
        Intercepts::Bitmap { addr: 0x5000, bits }
    }

    fn allowed(f: &Filter, msr: u32, write: bool) -> bool {
        for r in &f.ranges {
            if (if write { r.write } else { r.read }) && (r.base..r.base + r.count).contains(&msr) {
                let n = msr - r.base;
                return r.allow[n as usize / 8] >> (n % 8) & 1 != 0;
            }
        }
        !f.default_deny
    }

    #[test]
    fn bitmap_translates_to_four_ranges_with_inverted_bits() {
        let i = bitmap(&[(0x175, false), (0x174, true), (0xC000_0102, true), (0xC000_0080, false)]);
        let f = i.filter().unwrap();
        assert!(f.default_deny, "MSRs outside both ranges always exit");
        assert_eq!(f.ranges.len(), 4);
        assert!(f.ranges.len() <= kvm_bindings::KVM_MSR_FILTER_MAX_RANGES as usize);
        let kinds: Vec<_> = f.ranges.iter().map(|r| (r.read, r.write, r.base, r.count, r.allow.len())).collect();
        assert_eq!(
            kinds,
            [
                (true, false, 0, 0x2000, 1024),
                (true, false, HIGH_BASE, 0x2000, 1024),
                (false, true, 0, 0x2000, 1024),
                (false, true, HIGH_BASE, 0x2000, 1024)
            ]
        );
        // The filter denies (sends to L0) exactly what exits on hardware, SDM 26.1.3.
        for msr in (0..0x2100).chain(0xBFFF_FFF0..0xC000_2010).chain([0x4000_0000, u32::MAX]) {
            for write in [false, true] {
                assert_eq!(!allowed(&f, msr, write), i.exits(msr, write), "{msr:#x} write={write}");
            }
        }
        assert!(i.exits(0x175, false) && !i.exits(0x175, true));
        assert!(i.exits(0x174, true) && !i.exits(0x174, false));
        assert!(i.exits(0xC000_0102, true) && !i.exits(0xC000_0102, false), "high write bitmap at 3072");
        assert!(i.exits(0xC000_0080, false) && !i.exits(0xC000_0080, true), "high read bitmap at 1024");
        assert!(i.exits(0x2000, false) && i.exits(0xC000_2000, true), "outside the ranges: always");
        assert!(!i.exits(0x10, false));
    }

    #[test]
    fn intercepted_x2apic_msrs_are_refused_naming_the_msr() {
        let e = bitmap(&[(0x175, false), (0x830, true)]).filter().unwrap_err();
        assert!(matches!(e, MsrError::X2apic { msr: 0x830, write: true, all: false }), "{e:?}");
        assert!(e.to_string().contains("0x830") && e.to_string().contains("WRMSR"), "{e}");
        let e = bitmap(&[(0x8FF, false)]).filter().unwrap_err();
        assert!(matches!(e, MsrError::X2apic { msr: 0x8FF, write: false, .. }), "{e:?}");
        // Neighbours of the range are fine.
        assert!(bitmap(&[(0x7FF, false), (0x900, true)]).filter().is_ok());
        // Without MSR bitmaps everything exits, the x2APIC range included.
        let e = Intercepts::All.filter().unwrap_err();
        assert!(matches!(e, MsrError::X2apic { msr: 0x800, write: false, all: true }), "{e:?}");
        assert!(e.to_string().contains("use MSR bitmaps"), "{e}");
    }

    #[test]
    fn the_bitmap_is_read_from_l1_memory_only_with_use_msr_bitmaps() {
        let mem = GuestMem::new(0x10000).unwrap();
        mem.write(0x3000 + 3072 + 0x102 / 8, &[1 << (0x102 % 8)]).unwrap();
        assert_eq!(Intercepts::read(&mem, 0, 0x3000).unwrap(), Intercepts::All);
        let i = Intercepts::read(&mem, proc1::USE_MSR_BITMAPS, 0x3000).unwrap();
        assert!(i.exits(0xC000_0102, true) && !i.exits(0xC000_0102, false));
        assert!(matches!(
            Intercepts::read(&mem, proc1::USE_MSR_BITMAPS, 0xF000 + 0x1000),
            Err(MsrError::BitmapOutside { addr: 0x10000 })
        ));
        assert!(matches!(Intercepts::read(&mem, proc1::USE_MSR_BITMAPS, 0xF800), Err(MsrError::BitmapOutside { .. })));
    }

    #[test]
    fn sync_installs_once_and_rebuilds_on_a_change() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            println!("SKIP: no /dev/kvm");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let mem = GuestMem::new(0x10000).unwrap();
        mem.write(0x3000 + 0x175 / 8, &[1 << (0x175 % 8)]).unwrap();
        let mut m = MsrExits::default();
        m.sync(&vm, &mem, proc1::USE_MSR_BITMAPS, 0x3000).unwrap();
        m.sync(&vm, &mem, proc1::USE_MSR_BITMAPS, 0x3000).unwrap();
        assert_eq!(m.filter_builds, 1);
        mem.write(0x3000 + 2048 + 0x175 / 8, &[1 << (0x175 % 8)]).unwrap();
        m.sync(&vm, &mem, proc1::USE_MSR_BITMAPS, 0x3000).unwrap();
        assert_eq!(m.filter_builds, 2, "L1 changed the bitmap between entries");
        mem.write(0x3000 + 0x830 / 8, &[1 << (0x830 % 8)]).unwrap();
        assert!(matches!(m.sync(&vm, &mem, proc1::USE_MSR_BITMAPS, 0x3000), Err(MsrError::X2apic { msr: 0x830, .. })));
        assert!(matches!(m.sync(&vm, &mem, 0, 0), Err(MsrError::X2apic { all: true, .. })));
    }
}
