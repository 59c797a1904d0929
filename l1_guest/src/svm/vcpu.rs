//! L2's vCPU on SVM: [`SvmVcpu`] implements the vendor layer ([`Vcpu`]) over one VMCB. It
//! enters L2 with VMRUN and decodes the #VMEXIT's EXITCODE, EXITINFO1 and EXITINFO2 (APM Vol.
//! 2, 15.7 "#VMEXIT", Appendix C) into a vendor-neutral [`Exit`].
//!
//! One round trip ([`SvmVcpu::run`]), as KVM's own `__svm_vcpu_run` does it: VMLOAD of L2's
//! VMCB (FS, GS, TR, LDTR, KernelGsBase and the SYSCALL/SYSENTER MSRs, which VMRUN does not
//! load, 15.5.2), VMRUN, VMSAVE of L2's VMCB, VMLOAD of L1's own state from the host save
//! VMCB L1 VMSAVEd before the first entry. RAX and RSP are in the VMCB's save area; VMRUN
//! leaves L2's other GPRs where L1 put them and #VMEXIT leaves them as L2 had them (15.5.1),
//! so the entry loads them from the [`GuestRegs`] and saves them back after.
//!
//! A VMRUN whose VMCB fails a consistency check (15.5.1) exits at once with VMEXIT_INVALID:
//! reported as an entry failure.

use nestbench_abi::svm::{self, ExitCode, ioio, vmcb as off};
use nestbench_abi::vmx::intr::Event;
use nestbench_abi::vmx::{AddressSize, IoInstructionInfo, SegmentRegister};

use super::decode;
use super::vmcb::Vmcb;
use crate::exit::{Exit, NestedPageFault, StringIo};
use crate::exits::{self, EXIT_ENTRY_FAILED, RunState};
use crate::vcpu::{GuestRegs, Vcpu};

/// VMCB clean bits 9:0 (APM 15.15.3: intercepts, IOPM, ASID, TPR, NP, CRx, DRx, DT, SEG,
/// CR2): what L1 leaves unchanged between #VMEXIT and the next VMRUN unless it says
/// otherwise ([`SvmVcpu::set_guest_cr3`] clears CRx).
const CLEAN_ALL: u32 = 0x3FF;
/// Clean bit 5: CR0, CR3, CR4, EFER.
const CLEAN_CRX: u32 = 1 << 5;

/// What the entry code reads and writes: L2's GPRs, the VMCB's address, the host save
/// area's. `#[repr(C)]` with fixed offsets: the assembly below uses them.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Frame {
    /// L2's GPRs (RAX is the VMCB's; this copy is kept in step around VMRUN).
    pub regs: GuestRegs,
    /// L2's VMCB (physical).
    vmcb: u64,
    /// The VMCB L1's own VMLOAD state was VMSAVEd into.
    host: u64,
}

const _: () = assert!(
    core::mem::offset_of!(Frame, vmcb) == 120
        && core::mem::offset_of!(Frame, host) == 128
        && core::mem::offset_of!(GuestRegs, rcx) == 8
        && core::mem::offset_of!(GuestRegs, r15) == 112
);

/// What the CPU offers that the backend uses (CPUID 8000_000Ah EDX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// NRIP_SAVE: nRIP holds the next RIP after instruction intercepts.
    pub nrips: bool,
    /// VMCB clean bits.
    pub vmcb_clean: bool,
}

/// L2's vCPU: its VMCB, the GPR frame, and the exit being handled.
#[derive(Debug)]
pub struct SvmVcpu {
    vmcb: Vmcb,
    frame: Frame,
    features: Features,
    /// NPT12's root (for reading L2's instruction bytes without NRIP_SAVE).
    root: u64,
    /// A TLB flush is requested for the next VMRUN ([`Vcpu::invalidate_nested`]).
    flush: bool,
    /// The exit being handled: EXITCODE (low 32 bits), EXITINFO1, EXITINFO2.
    code: u32,
    info1: u64,
    info2: u64,
}

impl SvmVcpu {
    /// L2's vCPU on the filled VMCB `vmcb`, with L1's own VMLOAD state saved at `host`, its
    /// nested paging rooted at `root`, and L2's GPRs `regs`.
    ///
    /// # Safety
    /// `vmcb` must be complete for VMRUN ([`super::setup::fill`]), `host` a page L1 VMSAVEd
    /// its state into, EFER.SVME and VM_HSAVE_PA set ([`super::enable`]).
    pub unsafe fn new(vmcb: Vmcb, host: u64, root: u64, features: Features, regs: GuestRegs) -> Self {
        let frame = Frame { regs, vmcb: vmcb.address(), host };
        Self { vmcb, frame, features, root, flush: false, code: 0, info1: 0, info2: 0 }
    }

    /// The VMCB (the VM-entry scenarios break its fields).
    pub fn vmcb(&mut self) -> &mut Vmcb {
        &mut self.vmcb
    }

    /// L1 changed the VMCB areas of clean bits `areas` since the last #VMEXIT: the next VMRUN
    /// must reload them (15.15.3).
    pub fn dirty(&mut self, areas: u32) {
        let clean = self.vmcb.read32(off::CLEAN);
        self.vmcb.write32(off::CLEAN, clean & !areas);
    }

    /// One round trip through L2; the VMCB holds the #VMEXIT's information after it.
    #[inline(always)]
    pub fn enter(&mut self) {
        self.vmcb.write64(off::RAX, self.frame.regs.rax);
        let frame = core::ptr::from_mut(&mut self.frame);
        // SAFETY: `new`'s contract: the VMCB is complete, SVM is enabled, and the host save
        // area holds L1's state. The block restores RBX, RBP and RSP itself and declares
        // every other GPR clobbered; VMRUN/#VMEXIT restore L1's RSP, RIP, RAX, segment and
        // control registers from VM_HSAVE_PA (15.5.1), and the final VMLOAD puts back L1's
        // TR, FS, GS and LDTR.
        unsafe {
            core::arch::asm!(
                "push rbx",
                "push rbp",
                "push rax",
                "mov rcx, [rax + 8]",
                "mov rdx, [rax + 16]",
                "mov rbx, [rax + 24]",
                "mov rbp, [rax + 32]",
                "mov rsi, [rax + 40]",
                "mov rdi, [rax + 48]",
                "mov r8, [rax + 56]",
                "mov r9, [rax + 64]",
                "mov r10, [rax + 72]",
                "mov r11, [rax + 80]",
                "mov r12, [rax + 88]",
                "mov r13, [rax + 96]",
                "mov r14, [rax + 104]",
                "mov r15, [rax + 112]",
                "mov rax, [rax + 120]",
                "vmload rax",
                "vmrun rax",
                "vmsave rax",
                "mov rax, [rsp]",
                "mov [rax + 8], rcx",
                "mov [rax + 16], rdx",
                "mov [rax + 24], rbx",
                "mov [rax + 32], rbp",
                "mov [rax + 40], rsi",
                "mov [rax + 48], rdi",
                "mov [rax + 56], r8",
                "mov [rax + 64], r9",
                "mov [rax + 72], r10",
                "mov [rax + 80], r11",
                "mov [rax + 88], r12",
                "mov [rax + 96], r13",
                "mov [rax + 104], r14",
                "mov [rax + 112], r15",
                "mov rax, [rax + 128]",
                "vmload rax",
                "pop rax",
                "pop rbp",
                "pop rbx",
                inout("rax") frame => _,
                out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            );
        }
        self.frame.regs.rax = self.vmcb.read64(off::RAX);
        if self.features.vmcb_clean {
            self.vmcb.write32(off::CLEAN, CLEAN_ALL);
        }
        if self.flush {
            self.vmcb.write8(off::TLB_CONTROL, 0);
            self.flush = false;
        }
    }

    /// The VMRUN [`Vcpu::run`] made failed its consistency checks: report and stop.
    #[cold]
    #[inline(never)]
    fn entry_failed(&mut self) -> ! {
        crate::println!("l1: VMRUN failed: VMEXIT_INVALID (EXITINFO1 {:#x})", self.info1);
        self.dump();
        crate::hypercall::exit(EXIT_ENTRY_FAILED)
    }

    /// Decode the #VMEXIT (Appendix C; EXITINFO1/2 per 15.7.1, 15.10.2, 15.11, 15.25.6).
    #[inline(always)]
    fn decode(&mut self) -> Exit {
        let v = &self.vmcb;
        let code = v.exit_code();
        self.code = code;
        self.info1 = v.read64(off::EXITINFO1);
        self.info2 = v.read64(off::EXITINFO2);
        if code == ExitCode::Ioio as u32 {
            return decode::io(self.info1).map_or(Exit::Other(code), Exit::Io);
        }
        if code == ExitCode::Hlt as u32 {
            return Exit::Hlt;
        }
        match ExitCode::from_raw(code) {
            Some(ExitCode::Cpuid) => Exit::Cpuid,
            Some(ExitCode::Vmmcall) => Exit::Hypercall,
            Some(ExitCode::Shutdown) => Exit::TripleFault,
            // 15.11: EXITINFO1 0 = RDMSR, 1 = WRMSR; the MSR is ECX, the value EDX:EAX.
            Some(ExitCode::Msr) => {
                let g = &self.frame.regs;
                let msr = g.rcx as u32;
                if self.info1 == 0 {
                    Exit::MsrRead { msr }
                } else {
                    Exit::MsrWrite { msr, value: (g.rdx & 0xFFFF_FFFF) << 32 | g.rax & 0xFFFF_FFFF }
                }
            }
            // 15.25.6: EXITINFO1 the error code, EXITINFO2 the guest-physical address; no
            // linear address without decode assists.
            Some(ExitCode::Npf) => Exit::NestedPageFault(NestedPageFault {
                gpa: self.info2,
                linear: 0,
                qualification: decode::npf(self.info1),
            }),
            // 15.21.4: the VINTR intercept, taken when L2 can take the pending V_IRQ.
            Some(ExitCode::Vintr) => Exit::InterruptWindow,
            Some(ExitCode::Invalid) => self.entry_failed(),
            _ => Exit::Other(code),
        }
    }

    /// Up to 15 bytes of L2's instruction at RIP, read through L2's paging and NPT12 (one
    /// translation per page they touch); fewer where the next page is not mapped.
    #[cold]
    #[inline(never)]
    fn insn_bytes(&mut self) -> ([u8; 15], usize) {
        let rip = self.vmcb.read64(off::RIP);
        let cr3 = self.vmcb.read64(off::CR3);
        let mut bytes = [0u8; 15];
        let mut n = 0;
        let mut page: Option<(u64, u64)> = None;
        for (i, b) in bytes.iter_mut().enumerate() {
            let linear = rip.wrapping_add(i as u64);
            let base = match page {
                Some((l, pa)) if l == linear & !0xFFF => pa,
                _ => {
                    let Some(pa) =
                        crate::l2::l2_linear_to_l1(&crate::exits::io::L1Phys, self.root, cr3, linear & !0xFFF)
                    else {
                        break;
                    };
                    page = Some((linear & !0xFFF, pa));
                    pa
                }
            };
            let pa = base + (linear & 0xFFF);
            if pa >= crate::l2::FRAMES_END {
                break;
            }
            // SAFETY: inside an L1 frame NPT12 maps for L2 (L1's identity-mapped memory,
            // bounded by FRAMES_END above).
            *b = unsafe { (pa as *const u8).read_volatile() };
            n = i + 1;
        }
        (bytes, n)
    }

    /// The intercepted instruction's length from its bytes at RIP (no NRIP_SAVE).
    #[cold]
    #[inline(never)]
    fn decoded_len(&mut self) -> u32 {
        let (bytes, n) = self.insn_bytes();
        match decode::insn_len(&bytes[..n]) {
            Some(len) => len,
            None => {
                let rip = self.vmcb.read64(off::RIP);
                crate::println!("l1: cannot decode the instruction at L2 RIP {rip:#x}: {:02x?}", &bytes[..n]);
                crate::hypercall::exit(exits::EXIT_UNEXPECTED_EXIT)
            }
        }
    }
}

impl Vcpu for SvmVcpu {
    #[inline(always)]
    fn run(&mut self) -> Exit {
        self.enter();
        self.decode()
    }

    #[inline(always)]
    fn regs(&mut self) -> &mut GuestRegs {
        &mut self.frame.regs
    }

    #[inline(always)]
    fn rip(&mut self) -> u64 {
        self.vmcb.read64(off::RIP)
    }

    #[inline(always)]
    fn set_rip(&mut self, rip: u64) {
        self.vmcb.write64(off::RIP, rip);
    }

    /// IOIO: EXITINFO2 is the next RIP on every CPU (15.10.2); other instruction intercepts:
    /// nRIP with NRIP_SAVE (15.7.1), else the decoded length.
    #[inline(always)]
    fn insn_len(&mut self) -> u32 {
        let rip = self.vmcb.read64(off::RIP);
        if self.code == ExitCode::Ioio as u32 {
            return self.info2.wrapping_sub(rip) as u32;
        }
        if self.features.nrips {
            return self.vmcb.read64(off::NEXT_RIP).wrapping_sub(rip) as u32;
        }
        self.decoded_len()
    }

    fn rsp(&mut self) -> u64 {
        self.vmcb.read64(off::RSP)
    }

    fn rflags(&mut self) -> u64 {
        self.vmcb.read64(off::RFLAGS)
    }

    /// INS/OUTS: the address size from EXITINFO1 (15.10.2); where the CPU leaves all three
    /// address-size bits clear (QEMU TCG does), from the instruction: L2 runs in 64-bit
    /// mode, whose address size is 64 bits, 32 with a 0x67 prefix. The operand is ES:RDI
    /// (INS) or DS:RSI (OUTS), whose bases are 0 in 64-bit mode.
    fn string_io(&mut self) -> StringIo {
        let i = self.info1;
        let size = if i & ioio::A64 != 0 {
            AddressSize::Bits64
        } else if i & ioio::A32 != 0 {
            AddressSize::Bits32
        } else if i & ioio::A16 != 0 {
            AddressSize::Bits16
        } else {
            let (bytes, n) = self.insn_bytes();
            if decode::address_size_override(&bytes[..n]) { AddressSize::Bits32 } else { AddressSize::Bits64 }
        };
        let is_in = i & ioio::TYPE_IN != 0;
        let (seg, reg) =
            if is_in { (SegmentRegister::Es, self.frame.regs.rdi) } else { (SegmentRegister::Ds, self.frame.regs.rsi) };
        let linear = match size {
            AddressSize::Bits64 => reg,
            AddressSize::Bits32 => reg & 0xFFFF_FFFF,
            AddressSize::Bits16 => reg & 0xFFFF,
        };
        StringIo { info: IoInstructionInfo::new(size, seg), linear }
    }

    fn guest_cr3(&mut self) -> u64 {
        self.vmcb.read64(off::CR3)
    }

    fn set_guest_cr3(&mut self, cr3: u64) {
        self.vmcb.write64(off::CR3, cr3);
        self.dirty(CLEAN_CRX);
    }

    /// EVENTINJ (15.20): vector 7:0, type 10:8 (0 INTR, 2 NMI, 3 exception, 4 software
    /// interrupt: the VMX interruption types of the same number), EV 11, V 31, error code
    /// 63:32. VMX's other types (5, 6: software exceptions) have no EVENTINJ type.
    fn inject(&mut self, event: Event) {
        let (info, error_code) = event.encode();
        if !matches!((info >> 8) & 7, 0 | 2 | 3 | 4) {
            crate::println!("l1: event {info:#x} has no SVM EVENTINJ type");
            crate::hypercall::exit(exits::EXIT_UNEXPECTED_EXIT)
        }
        self.vmcb.write64(off::EVENTINJ, u64::from(info & 0x8000_0FFF) | u64::from(error_code) << 32);
    }

    /// TLB_CONTROL = 1 (flush the whole TLB) for the next VMRUN (15.16.1): NPT12 changed.
    fn invalidate_nested(&mut self, _kind: u64, _root: u64) {
        self.vmcb.write8(off::TLB_CONTROL, 1);
        self.flush = true;
    }

    /// The interrupt window (VINTR, [`super::window`]); EPT misconfiguration and the
    /// preemption timer never come from SVM.
    fn vendor_exit(&mut self, exit: Exit, run: &mut RunState) {
        match exit {
            Exit::InterruptWindow => super::window::handle(self, run),
            other => exits::unexpected::handle(self, other.report_reason()),
        }
    }

    fn dump(&mut self) {
        let v = &self.vmcb;
        crate::println!(
            "l1: VMCB: EXITCODE {} ({:#x}) EXITINFO1 {:#x} EXITINFO2 {:#x} EXITINTINFO {:#x}",
            svm::code_name(v.exit_code()),
            v.read64(off::EXITCODE),
            v.read64(off::EXITINFO1),
            v.read64(off::EXITINFO2),
            v.read64(off::EXITINTINFO)
        );
        crate::println!(
            "l1: VMCB: RIP {:#x} RSP {:#x} RFLAGS {:#x} CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x} CPL {} ASID {} N_CR3 {:#x}",
            v.read64(off::RIP),
            v.read64(off::RSP),
            v.read64(off::RFLAGS),
            v.read64(off::CR0),
            v.read64(off::CR3),
            v.read64(off::CR4),
            v.read64(off::EFER),
            v.read8(off::CPL),
            v.read32(off::GUEST_ASID),
            v.read64(off::N_CR3)
        );
    }

    /// SVM has no VMREAD/VMWRITE: L1 reads and writes the VMCB as memory.
    fn accesses(&self) -> u32 {
        0
    }

    /// The vendor's own record: EXITCODE, EXITINFO1, EXITINFO2, EXITINTINFO
    /// ([`nestbench_abi::payload::ExitRecord`]).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn record(&mut self, run: &mut RunState, reason: u32, insn_len: u32, _: u64, rip: u64, _: u32, _: u64) {
        let intinfo = self.vmcb.read32(off::EXITINTINFO);
        run.record_as(reason, self.code, insn_len, self.info1, rip, intinfo, self.info2);
    }
}
