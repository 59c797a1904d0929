//! Normalising an I/O exit of VM2 (L2's KVM VM) into the VM exit hardware reports (Intel
//! SDM Vol. 3C, 28.2.1 Table 28-5 "Exit Qualification for I/O Instructions", 28.2.4
//! instruction length, 28.2.5 INS/OUTS instruction information, 28.2.1 guest-linear
//! address), undoing what KVM already did.
//!
//! What KVM leaves behind on kvm_pvm (docs/kvm-exits.md rows 1-3): OUT and OUTS without
//! REP are retired, RIP is *past* the instruction and OUTS has advanced RSI; IN, INS and REP
//! INS have RIP *at* the instruction and nothing updated (a completion is pending, which the
//! caller flushes); REP OUTS exits once per element with RIP *at* the instruction, RCX and RSI
//! already counting that element. Upstream KVM differs on OUT: RIP stays *at* it until the
//! next KVM_RUN completes it; which one this host does is measured
//! ([`super::host_exits`]), never assumed. A KVM exit carries no instruction length and no
//! string/REP/encoding bits, so they come from decoding L2's bytes: forward at RIP where RIP
//! is at the instruction, backward from RIP where it is past.
//!
//! Backward decoding is ambiguous in principle: a byte before the instruction that is also a
//! valid prefix (a REX byte 40-4F, 66, 67, a segment override, F0/F2/F3) yields a second
//! decoding that ends at RIP too. Such a case is [`DecodeError::Ambiguous`], never a guess.
//!
//! L2 runs in 64-bit mode (the VM-entry checks refuse guests outside IA-32e mode;
//! compatibility-mode code is decoded as 64-bit and would be misread).

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, OpKind, Register};
use kvm_bindings::kvm_regs;
use nestbench_abi::vmx::{AddressSize, IoInstructionInfo, IoQualification, SegmentRegister};

use super::host_exits::{HostExits, Rip};
use crate::vcpu::Exit;

/// The longest x86 instruction.
const MAX_INSN_LEN: usize = 15;

/// RFLAGS.DF.
const RFLAGS_DF: u64 = 1 << 10;

/// A KVM_EXIT_IO as KVM reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmIo<'a> {
    /// KVM_EXIT_IO_IN (`true`) or KVM_EXIT_IO_OUT.
    pub is_in: bool,
    /// The port.
    pub port: u16,
    /// Access size in bytes (1, 2 or 4).
    pub size: u8,
    /// Elements carried by this exit (1, or the REP INS count).
    pub count: u32,
    /// For OUT: `size * count` bytes of data; empty for IN.
    pub data: &'a [u8],
}

/// L2's registers at the exit, as KVM_GET_REGS shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Regs {
    /// RIP (at or past the instruction, per the exit kind).
    pub rip: u64,
    /// RAX (the data of OUT).
    pub rax: u64,
    /// RCX (the REP count).
    pub rcx: u64,
    /// RDX (the port of the DX forms).
    pub rdx: u64,
    /// RSI (the OUTS source).
    pub rsi: u64,
    /// RDI (the INS destination).
    pub rdi: u64,
    /// RFLAGS (DF gives the string direction).
    pub rflags: u64,
}

impl From<&kvm_regs> for L2Regs {
    fn from(r: &kvm_regs) -> Self {
        Self { rip: r.rip, rax: r.rax, rcx: r.rcx, rdx: r.rdx, rsi: r.rsi, rdi: r.rdi, rflags: r.rflags }
    }
}

/// The VM exit an I/O exit becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoExit {
    /// Guest RIP to report: the start of the instruction (as hardware reports it).
    pub rip: u64,
    /// VM-exit instruction length (SDM 28.2.4).
    pub insn_len: u32,
    /// Exit qualification (Table 28-5).
    pub qualification: IoQualification,
    /// VM-exit instruction information for INS/OUTS (28.2.5; `IA32_VMX_BASIC[54]` = 1):
    /// address size and segment (DS or the override for OUTS, ES for INS). `None` for
    /// IN/OUT, where the field is undefined.
    pub insn_info: Option<IoInstructionInfo>,
    /// Guest-linear address for INS/OUTS: of the element this exit is about (RSI for OUTS,
    /// RDI for INS, as presented). `None` for IN/OUT.
    pub guest_linear: Option<u64>,
    /// Elements KVM carries in this exit (the REP INS completion writes this many).
    pub count: u32,
    /// RCX to present: for REP OUTS, KVM's count of this element undone.
    pub rcx: u64,
    /// RSI to present: for OUTS, KVM's advance undone.
    pub rsi: u64,
    /// RDI to present (INS: KVM has not advanced it yet).
    pub rdi: u64,
    /// KVM had already retired the instruction (RIP was past it: OUT, OUTS without REP).
    pub retired_past: bool,
    /// For INS: the L2-linear bytes the pending completion writes (lowest address, length):
    /// `count` elements from RDI, upward, or downward when RFLAGS.DF = 1. The caller
    /// snapshots and restores them around its flush (docs/kvm-exits.md row R).
    pub ins_dest: Option<(u64, usize)>,
}

impl IoExit {
    /// `regs` with RIP, RCX, RSI and RDI as the VM exit presents them.
    #[must_use]
    pub fn present(&self, regs: &kvm_regs) -> kvm_regs {
        kvm_regs { rip: self.rip, rcx: self.rcx, rsi: self.rsi, rdi: self.rdi, ..*regs }
    }
}

/// One decoding of the exiting instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Where it starts.
    pub rip: u64,
    /// Its length.
    pub len: u32,
    /// The instruction, in Intel syntax.
    pub text: String,
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` at {:#x} ({} bytes)", self.text, self.rip, self.len)
    }
}

/// Why an I/O exit cannot be normalised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a KVM_EXIT_IO.
    #[error("not an I/O exit: {0}")]
    NotIo(String),
    /// Two decodings fit the exit (a redundant prefix or REX byte before the instruction).
    #[error("ambiguous I/O instruction: {first} and {second} both fit the exit")]
    Ambiguous {
        /// One decoding.
        first: Candidate,
        /// Another.
        second: Candidate,
    },
    /// No I/O instruction where this exit kind puts RIP.
    #[error("no I/O instruction {where_} L2 RIP {rip:#x}")]
    NoIoInstruction {
        /// L2's RIP at the exit.
        rip: u64,
        /// "at" or "ending at".
        where_: &'static str,
    },
    /// An I/O instruction is there, but it does not match the exit.
    #[error("{candidate} does not match the exit: {why}")]
    Mismatch {
        /// The instruction found.
        candidate: Candidate,
        /// How it differs (direction, size, port, count, data, or RIP position).
        why: String,
    },
    /// An OUTS through FS or GS, whose base this decoder does not have.
    #[error("{0}: OUTS through FS/GS is not supported (the segment base is needed for the guest-linear address)")]
    SegmentBase(Candidate),
}

/// What an I/O instruction does, from its decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Form {
    is_in: bool,
    size: u8,
    string: bool,
    rep: bool,
    /// The imm8 port, for the immediate forms.
    imm: Option<u8>,
}

impl Form {
    /// Whether `host` presents the form with RIP at the instruction (IN, INS, REP INS,
    /// REP OUTS everywhere; OUT on upstream KVM) rather than past it (OUT on kvm_pvm, OUTS
    /// without REP), as its probe measured.
    fn rip_at(self, host: &HostExits) -> bool {
        let out = if self.string { host.outs } else { host.out };
        self.is_in || (self.string && self.rep) || out == Rip::At
    }
}

fn form(insn: &Instruction) -> Option<Form> {
    let (is_in, size, string, imm) = match insn.code() {
        Code::Out_imm8_AL => (false, 1, false, true),
        Code::Out_imm8_AX => (false, 2, false, true),
        Code::Out_imm8_EAX => (false, 4, false, true),
        Code::Out_DX_AL => (false, 1, false, false),
        Code::Out_DX_AX => (false, 2, false, false),
        Code::Out_DX_EAX => (false, 4, false, false),
        Code::In_AL_imm8 => (true, 1, false, true),
        Code::In_AX_imm8 => (true, 2, false, true),
        Code::In_EAX_imm8 => (true, 4, false, true),
        Code::In_AL_DX => (true, 1, false, false),
        Code::In_AX_DX => (true, 2, false, false),
        Code::In_EAX_DX => (true, 4, false, false),
        Code::Outsb_DX_m8 => (false, 1, true, false),
        Code::Outsw_DX_m16 => (false, 2, true, false),
        Code::Outsd_DX_m32 => (false, 4, true, false),
        Code::Insb_m8_DX => (true, 1, true, false),
        Code::Insw_m16_DX => (true, 2, true, false),
        Code::Insd_m32_DX => (true, 4, true, false),
        _ => return None,
    };
    // F3 and F2 both repeat INS/OUTS; on IN/OUT they mean nothing and Table 28-5 bit 5 is
    // about string instructions.
    let rep = string && (insn.has_rep_prefix() || insn.has_repne_prefix());
    Some(Form { is_in, size, string, rep, imm: imm.then(|| insn.immediate8()) })
}

fn candidate(insn: &Instruction) -> Candidate {
    Candidate { rip: insn.ip(), len: insn.len() as u32, text: insn.to_string() }
}

/// Decode one instruction from `bytes` at `ip` (64-bit mode).
fn decode_at(bytes: &[u8], ip: u64) -> Option<Instruction> {
    let insn = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE).decode();
    (!insn.is_invalid()).then_some(insn)
}

/// The address size of a string instruction (from its memory operand) and the mask of the
/// registers it uses.
fn address_size(insn: &Instruction, is_in: bool) -> (AddressSize, u64) {
    let kind = if is_in { insn.op0_kind() } else { insn.op1_kind() };
    match kind {
        OpKind::MemorySegESI | OpKind::MemoryESEDI => (AddressSize::Bits32, 0xFFFF_FFFF),
        OpKind::MemorySegSI | OpKind::MemoryESDI => (AddressSize::Bits16, 0xFFFF),
        _ => (AddressSize::Bits64, u64::MAX),
    }
}

/// `reg + delta` in the low `mask` bits, upper bits kept (KVM's `register_address_increment`).
const fn masked_add(reg: u64, delta: i64, mask: u64) -> u64 {
    (reg & !mask) | (reg.wrapping_add_signed(delta) & mask)
}

/// Check a decoded I/O instruction against the exit and build the VM exit, or say why it
/// does not fit.
fn build(
    insn: &Instruction,
    f: Form,
    exit: &KvmIo<'_>,
    regs: &L2Regs,
    read: &dyn Fn(u64, usize) -> Vec<u8>,
    retired_past: bool,
    host: &HostExits,
) -> Result<IoExit, DecodeError> {
    let mismatch = |why: String| Err(DecodeError::Mismatch { candidate: candidate(insn), why });
    if f.is_in != exit.is_in {
        return mismatch(format!("the exit is {}", if exit.is_in { "IN" } else { "OUT" }));
    }
    if f.size != exit.size {
        return mismatch(format!("the exit has size {}, the instruction {}", exit.size, f.size));
    }
    let port = match f.imm {
        Some(p) => u16::from(p),
        None => regs.rdx as u16,
    };
    if port != exit.port {
        return mismatch(format!("the exit is on port {:#x}, the instruction on {port:#x}", exit.port));
    }
    if f.rip_at(host) == retired_past {
        let (at, past) = if f.rip_at(host) { ("at", "past") } else { ("past", "at") };
        return mismatch(format!("this host exits with RIP {at} this form, RIP is {past} it"));
    }
    let qualification = IoQualification::new(f.size, f.is_in, f.string, f.rep, f.imm.is_some(), port)
        .expect("sizes from the decoder are 1, 2 or 4");
    let size = i64::from(f.size);
    let step = if regs.rflags & RFLAGS_DF != 0 { -size } else { size };

    if !f.string {
        // Row 1: count 1, data = the low bytes of RAX.
        if exit.count != 1 {
            return mismatch(format!("count {} for a non-string instruction", exit.count));
        }
        if !f.is_in
            && exit.data.len() >= usize::from(f.size)
            && exit.data[..usize::from(f.size)] != regs.rax.to_le_bytes()[..usize::from(f.size)]
        {
            return mismatch(format!("the exit data {:02x?} is not the low bytes of RAX {:#x}", exit.data, regs.rax));
        }
        return Ok(IoExit {
            rip: insn.ip(),
            insn_len: insn.len() as u32,
            qualification,
            insn_info: None,
            guest_linear: None,
            count: exit.count,
            rcx: regs.rcx,
            rsi: regs.rsi,
            rdi: regs.rdi,
            retired_past,
            ins_dest: None,
        });
    }

    let (asize, mask) = address_size(insn, f.is_in);
    let (mut rcx, mut rsi, rdi) = (regs.rcx, regs.rsi, regs.rdi);
    let (segment, linear, ins_dest) = if f.is_in {
        // Rows 3b (and INS without REP, which needs an answer as IN does): nothing updated.
        let count = exit.count;
        let max = if f.rep { rcx & mask } else { 1 };
        if count == 0 || u64::from(count) > max {
            return mismatch(format!("count {count} with {} element(s) to go", max));
        }
        let len = usize::from(f.size) * count as usize;
        let first = rdi & mask;
        let low = if step < 0 { first.wrapping_sub(len as u64 - u64::from(f.size)) } else { first };
        (SegmentRegister::Es, first, Some((low, len)))
    } else {
        // Rows 3a / 3c: KVM moved RSI past this element (and REP OUTS counted it in RCX).
        if exit.count != 1 {
            return mismatch(format!("count {} for OUTS (this host exits once per element)", exit.count));
        }
        rsi = masked_add(rsi, -step, mask);
        if f.rep {
            rcx = masked_add(rcx, 1, mask);
        }
        let segment = match insn.memory_segment() {
            Register::ES => SegmentRegister::Es,
            Register::CS => SegmentRegister::Cs,
            Register::SS => SegmentRegister::Ss,
            Register::FS | Register::GS => return Err(DecodeError::SegmentBase(candidate(insn))),
            _ => SegmentRegister::Ds,
        };
        // The element's bytes are in the exit; they must be what is at RSI (when readable).
        let linear = rsi & mask;
        let mem = read(linear, usize::from(f.size));
        if mem.len() == usize::from(f.size) && exit.data.len() >= mem.len() && exit.data[..mem.len()] != mem[..] {
            return mismatch(format!("the exit data {:02x?} is not the {mem:02x?} at RSI {linear:#x}", exit.data));
        }
        (segment, linear, None)
    };
    Ok(IoExit {
        rip: insn.ip(),
        insn_len: insn.len() as u32,
        qualification,
        insn_info: Some(IoInstructionInfo::new(asize, segment)),
        guest_linear: Some(linear),
        count: exit.count,
        rcx,
        rsi,
        rdi,
        retired_past,
        ins_dest,
    })
}

/// Normalise an I/O exit: `exit` as KVM reported it, `regs` L2's registers at the exit,
/// `read(linear, len)` up to `len` bytes of L2 at a linear address (short where they do
/// not translate), `host` what this host's KVM leaves behind.
pub fn decode_io(
    exit: &KvmIo<'_>,
    regs: &L2Regs,
    read: &dyn Fn(u64, usize) -> Vec<u8>,
    host: &HostExits,
) -> Result<IoExit, DecodeError> {
    let mut accepted: Vec<(Instruction, IoExit)> = Vec::new();
    let mut rejected: Option<DecodeError> = None;
    let mut consider = |insn: Instruction, past: bool| {
        let Some(f) = form(&insn) else { return };
        match build(&insn, f, exit, regs, read, past, host) {
            Ok(io) => accepted.push((insn, io)),
            Err(e) => {
                rejected.get_or_insert(e);
            }
        }
    };

    // Forward: IN, INS, REP INS, REP OUTS (and OUT on upstream KVM) have RIP at the
    // instruction.
    let at = read(regs.rip, MAX_INSN_LEN);
    if let Some(insn) = decode_at(&at, regs.rip) {
        consider(insn, false);
    }
    // Backward: OUTS without REP (and OUT on kvm_pvm) have RIP past it. Every start RIP-1 .. RIP-15 whose
    // decoding ends exactly at RIP is a candidate.
    if !exit.is_in {
        for k in 1..=MAX_INSN_LEN {
            let Some(start) = regs.rip.checked_sub(k as u64) else { break };
            let bytes = read(start, k);
            if bytes.len() != k {
                continue;
            }
            if let Some(insn) = decode_at(&bytes, start).filter(|i| i.len() == k) {
                consider(insn, true);
            }
        }
    }

    match accepted.len() {
        1 => Ok(accepted.remove(0).1),
        0 => Err(rejected.unwrap_or(DecodeError::NoIoInstruction {
            rip: regs.rip,
            where_: if exit.is_in { "at" } else { "at or ending at" },
        })),
        _ => Err(DecodeError::Ambiguous { first: candidate(&accepted[0].0), second: candidate(&accepted[1].0) }),
    }
}

/// [`decode_io`] for a [`crate::vcpu::Exit`] and KVM_GET_REGS.
pub fn decode(
    exit: &Exit,
    regs: &kvm_regs,
    read: &dyn Fn(u64, usize) -> Vec<u8>,
    host: &HostExits,
) -> Result<IoExit, DecodeError> {
    let io = match exit {
        Exit::IoOut { port, size, count, data } => {
            KvmIo { is_in: false, port: *port, size: *size, count: *count, data }
        }
        Exit::IoIn { port, size, count } => KvmIo { is_in: true, port: *port, size: *size, count: *count, data: &[] },
        other => return Err(DecodeError::NotIo(format!("{other:?}"))),
    };
    decode_io(&io, &L2Regs::from(regs), read, host)
}

#[cfg(test)]
mod tests {
    use nestbench_abi::payload::{IO_ENCODINGS, IO_REP_COUNT, IoCase, L2_IMAGE_BASE, PAYLOAD_PORT};

    use super::*;

    /// `xor eax, eax; mov edx, 0xE0; mov ecx, 2`: what the payload does before each
    /// instruction, and nothing that is a prefix or ends in an I/O opcode.
    const JUNK: [u8; 12] = [0x31, 0xC0, 0xBA, 0xE0, 0x00, 0x00, 0x00, 0xB9, 0x02, 0x00, 0x00, 0x00];
    /// Where the string forms' buffer is.
    const BUF: u64 = 0x3F_F800;
    const BUF_BYTES: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];

    /// L2 memory: code at L2_IMAGE_BASE (junk, the instruction, NOPs), the buffer at BUF.
    struct Mem {
        code: Vec<u8>,
    }

    impl Mem {
        fn new(prefix: &[u8], insn: &[u8]) -> Self {
            let mut code = prefix.to_vec();
            code.extend_from_slice(insn);
            code.extend_from_slice(&[0x90; 16]);
            Self { code }
        }

        fn start(&self, prefix_len: usize) -> u64 {
            L2_IMAGE_BASE + prefix_len as u64
        }

        fn read(&self, linear: u64, len: usize) -> Vec<u8> {
            let (base, bytes) =
                if (BUF..BUF + 8).contains(&linear) { (BUF, &BUF_BYTES[..]) } else { (L2_IMAGE_BASE, &self.code[..]) };
            let Some(off) = linear.checked_sub(base).map(|o| o as usize).filter(|&o| o <= bytes.len()) else {
                return Vec::new();
            };
            bytes[off..(off + len).min(bytes.len())].to_vec()
        }
    }

    /// The registers and exit `host` presents for `case` executed at `start` (docs/kvm-exits.md).
    fn host_view(case: &IoCase, start: u64, df: bool, host: &HostExits) -> (L2Regs, bool, u32, Vec<u8>) {
        let size = u64::from(case.size);
        let mut regs = L2Regs {
            rip: start,
            rax: 0xDEAD_BEEF_CAFE_F00D,
            rcx: u64::from(IO_REP_COUNT),
            rdx: u64::from(PAYLOAD_PORT),
            rsi: BUF + 4,
            rdi: BUF + 4,
            rflags: 0x202 | if df { RFLAGS_DF } else { 0 },
        };
        let element = |at: u64| BUF_BYTES[(at - BUF) as usize..(at - BUF + size) as usize].to_vec();
        let (count, data) = match (case.is_in, case.string, case.rep) {
            // Row 1: OUT retired, RIP past (kvm_pvm); upstream: RIP at, completion pending.
            (false, false, _) => {
                if host.out == Rip::Past {
                    regs.rip += case.bytes.len() as u64;
                }
                (1, regs.rax.to_le_bytes()[..case.size as usize].to_vec())
            }
            // Row 2 / INS / 3b: RIP at, nothing updated; REP INS carries RCX elements.
            (true, _, rep) => (if rep { IO_REP_COUNT.into() } else { 1 }, Vec::new()),
            // Row 3c: OUTS without REP retired, RSI advanced, RIP past.
            (false, true, false) => {
                let data = element(regs.rsi);
                regs.rsi = if df { regs.rsi - size } else { regs.rsi + size };
                regs.rip += case.bytes.len() as u64;
                (1, data)
            }
            // Row 3a: REP OUTS, RIP at, this element counted.
            (false, true, true) => {
                let data = element(regs.rsi);
                regs.rsi = if df { regs.rsi - size } else { regs.rsi + size };
                regs.rcx -= 1;
                (1, data)
            }
        };
        (regs, case.is_in, count, data)
    }

    fn run(mem: &Mem, regs: &L2Regs, is_in: bool, size: u8, count: u32, data: &[u8]) -> Result<IoExit, DecodeError> {
        run_on(mem, regs, is_in, size, count, data, &HostExits::kvm_pvm())
    }

    fn run_on(
        mem: &Mem,
        regs: &L2Regs,
        is_in: bool,
        size: u8,
        count: u32,
        data: &[u8],
        host: &HostExits,
    ) -> Result<IoExit, DecodeError> {
        let exit = KvmIo { is_in, port: PAYLOAD_PORT, size, count, data };
        decode_io(&exit, regs, &|a, n| mem.read(a, n), host)
    }

    #[test]
    fn every_io_encoding_as_each_host_presents_it() {
        for (host, df) in [HostExits::kvm_pvm(), HostExits::upstream()].iter().flat_map(|h| [(h, false), (h, true)]) {
            for case in &IO_ENCODINGS {
                let mem = Mem::new(&JUNK, case.bytes);
                let start = mem.start(JUNK.len());
                let (regs, is_in, count, data) = host_view(case, start, df, host);
                let io = run_on(&mem, &regs, is_in, case.size, count, &data, host)
                    .unwrap_or_else(|e| panic!("{:02x?} (DF {df}, {host:?}): {e}", case.bytes));
                let what = format!("{:02x?} DF {df} {host:?}", case.bytes);
                assert_eq!(io.rip, start, "{what}: RIP at the instruction");
                assert_eq!(io.insn_len as usize, case.bytes.len(), "{what}");
                let q =
                    IoQualification::new(case.size, case.is_in, case.string, case.rep, case.immediate, PAYLOAD_PORT);
                assert_eq!(Some(io.qualification), q, "{what}");
                let past = if case.string { !(case.is_in || case.rep) } else { !case.is_in && host.out == Rip::Past };
                assert_eq!(io.retired_past, past, "{what}");
                // Registers as before the instruction.
                assert_eq!((io.rcx, io.rdi), (u64::from(IO_REP_COUNT), BUF + 4), "{what}");
                assert_eq!(io.rsi, BUF + 4, "{what}");
                assert_eq!(io.count, count, "{what}");
                if case.string {
                    let seg = if case.is_in { SegmentRegister::Es } else { SegmentRegister::Ds };
                    assert_eq!(io.insn_info, Some(IoInstructionInfo::new(AddressSize::Bits64, seg)), "{what}");
                    assert_eq!(io.guest_linear, Some(BUF + 4), "{what}");
                } else {
                    assert_eq!((io.insn_info, io.guest_linear), (None, None), "{what}");
                }
                if case.is_in && case.string {
                    let len = usize::from(case.size) * count as usize;
                    let low = if df { BUF + 4 - (len as u64 - u64::from(case.size)) } else { BUF + 4 };
                    assert_eq!(io.ins_dest, Some((low, len)), "{what}");
                } else {
                    assert_eq!(io.ins_dest, None, "{what}");
                }
                let mut k = kvm_regs {
                    rip: regs.rip,
                    rcx: regs.rcx,
                    rsi: regs.rsi,
                    rdi: regs.rdi,
                    rbx: 7,
                    ..Default::default()
                };
                k = io.present(&k);
                assert_eq!((k.rip, k.rcx, k.rsi, k.rdi, k.rbx), (start, u64::from(IO_REP_COUNT), BUF + 4, BUF + 4, 7));
            }
        }
    }

    #[test]
    fn the_other_rip_position_is_refused() {
        // A form shown with RIP where the host never puts it (OUT at on kvm_pvm, OUT past on
        // upstream, IN past on both): an engine that assumed the wrong host refuses the exit
        // instead of presenting the wrong instruction.
        for host in &[HostExits::kvm_pvm(), HostExits::upstream()] {
            for case in &IO_ENCODINGS {
                the_other_rip_position_is_refused_on(case, host);
            }
        }
    }

    fn the_other_rip_position_is_refused_on(case: &IoCase, host: &HostExits) {
        {
            let mem = Mem::new(&JUNK, case.bytes);
            let start = mem.start(JUNK.len());
            let (mut regs, is_in, count, data) = host_view(case, start, false, host);
            let rip_at = case.is_in || (case.string && case.rep) || (!case.string && host.out == Rip::At);
            regs.rip = if rip_at { start + case.bytes.len() as u64 } else { start };
            match run_on(&mem, &regs, is_in, case.size, count, &data, host) {
                Err(_) => {}
                // `F3 6E` with RIP past: the `6E` alone is an OUTSB that this host would present
                // that way; the REP OUTSB reading is refused. What matters is that the
                // instruction at `start` is never reported.
                Ok(io) => assert!(case.rep && io.rip == start + 1, "{:02x?}: {io:?}", case.bytes),
            }
        }
    }

    #[test]
    fn the_kvm_exit_wrapper() {
        let mem = Mem::new(&JUNK, &[0xEE]);
        let start = mem.start(JUNK.len());
        let regs = kvm_regs { rip: start + 1, rax: 0x41, rdx: 0xE0, rflags: 2, ..Default::default() };
        let exit = Exit::IoOut { port: 0xE0, size: 1, count: 1, data: vec![0x41] };
        let io = decode(&exit, &regs, &|a, n| mem.read(a, n), &HostExits::kvm_pvm()).unwrap();
        assert_eq!((io.rip, io.insn_len, io.qualification.raw()), (start, 1, 0x00E0_0000));
        let exit = Exit::IoIn { port: 0xE0, size: 1, count: 1 };
        assert!(matches!(
            decode(&exit, &regs, &|a, n| mem.read(a, n), &HostExits::kvm_pvm()),
            Err(DecodeError::NoIoInstruction { .. })
        ));
        assert!(matches!(
            decode(&Exit::Hlt, &regs, &|a, n| mem.read(a, n), &HostExits::kvm_pvm()),
            Err(DecodeError::NotIo(_))
        ));
    }

    #[test]
    fn a_redundant_prefix_before_the_instruction_is_ambiguous() {
        // `mov al, 0x41; out dx, al`: 41 is also a REX prefix, so `41 EE` ends at RIP too.
        let prefix = [0xB0, 0x41];
        let mem = Mem::new(&prefix, &[0xEE]);
        let start = mem.start(prefix.len());
        let regs = L2Regs { rip: start + 1, rax: 0x41, rdx: 0xE0, rflags: 2, ..Default::default() };
        match run(&mem, &regs, false, 1, 1, &[0x41]) {
            Err(DecodeError::Ambiguous { first, second }) => {
                let mut starts = [first.rip, second.rip];
                starts.sort_unstable();
                assert_eq!(starts, [start - 1, start]);
            }
            other => panic!("{other:?}"),
        }
        // A DS override before OUTSB: the same.
        let prefix = [0x31, 0xC0, 0x3E];
        let mem = Mem::new(&prefix, &[0x6E]);
        let start = mem.start(prefix.len());
        let regs = L2Regs { rip: start + 1, rsi: BUF + 1, rdx: 0xE0, rflags: 2, ..Default::default() };
        assert!(matches!(run(&mem, &regs, false, 1, 1, &[0x11]), Err(DecodeError::Ambiguous { .. })));
    }

    #[test]
    fn a_mismatching_exit_is_an_error() {
        // out 0xE1, al with an exit on 0xE0.
        let mem = Mem::new(&JUNK, &[0xE6, 0xE1]);
        let start = mem.start(JUNK.len());
        let regs = L2Regs { rip: start + 2, rax: 0x41, rdx: 0xE0, rflags: 2, ..Default::default() };
        match run(&mem, &regs, false, 1, 1, &[0x41]) {
            Err(DecodeError::Mismatch { candidate, why }) => {
                assert_eq!(candidate.rip, start);
                assert!(why.contains("port"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // out dx, al with DX on another port; in al, dx with the wrong size.
        let mem = Mem::new(&JUNK, &[0xEE]);
        let regs = L2Regs { rip: mem.start(JUNK.len()) + 1, rax: 0x41, rdx: 0x3F8, rflags: 2, ..Default::default() };
        assert!(matches!(run(&mem, &regs, false, 1, 1, &[0x41]), Err(DecodeError::Mismatch { .. })));
        let mem = Mem::new(&JUNK, &[0xEC]);
        let regs = L2Regs { rip: mem.start(JUNK.len()), rdx: 0xE0, rflags: 2, ..Default::default() };
        assert!(matches!(run(&mem, &regs, true, 2, 1, &[]), Err(DecodeError::Mismatch { .. })));
        // OUT data that is not AL.
        let regs = L2Regs { rip: mem.start(JUNK.len()) + 1, rax: 0x41, rdx: 0xE0, rflags: 2, ..Default::default() };
        let mem = Mem::new(&JUNK, &[0xEE]);
        assert!(matches!(run(&mem, &regs, false, 1, 1, &[0x42]), Err(DecodeError::Mismatch { .. })));
        // No I/O instruction at all.
        let mem = Mem::new(&JUNK, &[0x90]);
        let regs = L2Regs { rip: mem.start(JUNK.len()) + 1, rdx: 0xE0, rflags: 2, ..Default::default() };
        assert!(matches!(run(&mem, &regs, false, 1, 1, &[0]), Err(DecodeError::NoIoInstruction { .. })));
    }

    #[test]
    fn out_followed_by_rep_outs_is_resolved_by_the_data() {
        // `out dx, al; rep outsb`: after the OUT, RIP is at the REP OUTSB, which also fits
        // port and size; the exit data (AL) is not the byte before RSI, so only OUT fits.
        let mem = Mem::new(&JUNK, &[0xEE, 0xF3, 0x6E]);
        let start = mem.start(JUNK.len());
        let regs =
            L2Regs { rip: start + 1, rax: 0x99, rcx: 2, rdx: 0xE0, rsi: BUF + 2, rflags: 2, ..Default::default() };
        let io = run(&mem, &regs, false, 1, 1, &[0x99]).unwrap();
        assert_eq!((io.rip, io.insn_len, io.retired_past), (start, 1, true));
        // When AL happens to equal that byte, both fit: ambiguous, not a guess.
        let regs = L2Regs { rax: 0x22, ..regs };
        assert!(matches!(run(&mem, &regs, false, 1, 1, &[0x22]), Err(DecodeError::Ambiguous { .. })));
    }

    #[test]
    fn address_size_override_and_segment_override() {
        // addr32 rep outsb: ECX/ESI, 32-bit address size, upper bits of RSI kept.
        let mem = Mem::new(&JUNK, &[0x67, 0xF3, 0x6E]);
        let start = mem.start(JUNK.len());
        let rsi = 0xFFFF_FFFF_0000_0000 | (BUF + 1);
        let regs = L2Regs { rip: start, rcx: 1, rdx: 0xE0, rsi, rflags: 2, ..Default::default() };
        let io = run(&mem, &regs, false, 1, 1, &[0x11]).unwrap();
        assert_eq!(io.insn_info, Some(IoInstructionInfo::new(AddressSize::Bits32, SegmentRegister::Ds)));
        assert_eq!((io.rsi, io.rcx, io.guest_linear), (rsi - 1, 2, Some(BUF)));
        // es rep outsb: the segment is reported; fs rep outsb: refused. (Without REP, a
        // segment override before a one-byte OUTS is ambiguous backwards, as above.)
        let mem = Mem::new(&JUNK, &[0x26, 0xF3, 0x6E]);
        let start = mem.start(JUNK.len());
        let regs = L2Regs { rip: start, rcx: 1, rdx: 0xE0, rsi: BUF + 1, rflags: 2, ..Default::default() };
        let io = run(&mem, &regs, false, 1, 1, &[0x11]).unwrap();
        assert_eq!(io.insn_info.and_then(|i| i.segment()), Some(SegmentRegister::Es));
        assert_eq!(io.insn_len, 3);
        let mem = Mem::new(&JUNK, &[0x64, 0xF3, 0x6E]);
        assert!(matches!(run(&mem, &regs, false, 1, 1, &[0x11]), Err(DecodeError::SegmentBase(_))));
    }
}
