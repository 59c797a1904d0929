//! CR3-load and CR3-store exiting on the soft engine (SDM 26.1.3, "Instructions That Cause VM
//! Exits Conditionally"):
//!
//! * "MOV to CR3. The MOV to CR3 instruction causes a VM exit unless the value of its source
//!   operand is equal to one of the CR3-target values specified in the VMCS. Only the first n
//!   CR3-target values are considered, where n is the CR3-target count. If the CR3-target
//!   count is 0, MOV to CR3 always causes a VM exit." (with "CR3-load exiting" 1);
//! * "MOV from CR3. The MOV from CR3 instruction causes a VM exit if the 'CR3-store exiting'
//!   VM-execution control is 1."
//!
//! KVM runs L2's MOV CR3 inside VM2 and never exits to userspace for it. So while either
//! control is 1, L0 single-steps VM2 (KVM_SET_GUEST_DEBUG, KVM_GUESTDBG_SINGLESTEP: a
//! KVM_EXIT_DEBUG after each instruction, RFLAGS.TF hidden from KVM_GET_REGS) and, before each
//! step, decodes the instruction at L2's RIP: a MOV to or from CR3 that must exit is the VM
//! exit instead of running (RIP at it), with the qualification of SDM 28.2.1, Table 28-3, and
//! its length (28.2.4). The privilege check comes first (26.1.1: faults based on privilege
//! level have priority over VM exits): at CPL > 0 the instruction runs, and KVM delivers its
//! #GP. Costs one KVM exit per L2 instruction while on. Known limits: an event handler that
//! an interrupt gate enters runs with TF clear, so it is not stepped; PUSHF there shows TF.

use iced_x86::{Code, Decoder, DecoderOptions, Register};

/// Table 28-3, bits 5:4: the access type, 0 = MOV to CR, 1 = MOV from CR.
const ACCESS_FROM_CR: u64 = 1 << 4;
/// Bits 11:8: the general-purpose register.
const GPR_SHIFT: u32 = 8;

/// The CR3 controls of VMCS12, as the entry loaded them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cr3Exiting {
    /// "CR3-load exiting".
    pub load: bool,
    /// "CR3-store exiting".
    pub store: bool,
    /// The first CR3-target-count CR3-target values.
    pub targets: Vec<u64>,
}

/// The VM exit a MOV CR3 causes: its qualification and instruction length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrAccess {
    /// Exit qualification (Table 28-3).
    pub qualification: u64,
    /// VM-exit instruction length.
    pub insn_len: u32,
}

impl Cr3Exiting {
    /// Whether either control is on (VM2 must be single-stepped).
    #[must_use]
    pub const fn on(&self) -> bool {
        self.load || self.store
    }

    /// The VM exit the instruction in `bytes` (at L2's RIP `rip`, 64-bit mode) causes at `cpl`,
    /// with `gpr(n)` reading general-purpose register n (0 = RAX ... 15 = R15); `None` when it
    /// runs.
    #[must_use]
    pub fn exit_for(&self, bytes: &[u8], rip: u64, cpl: u8, gpr: impl Fn(u32) -> u64) -> Option<CrAccess> {
        if cpl != 0 || !self.on() {
            return None;
        }
        let insn = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE).decode();
        let (to_cr, cr, reg) = match insn.code() {
            Code::Mov_cr_r64 => (true, insn.op0_register(), insn.op1_register()),
            Code::Mov_r64_cr => (false, insn.op1_register(), insn.op0_register()),
            _ => return None,
        };
        if cr != Register::CR3 {
            return None;
        }
        let n = gpr_number(reg)?;
        let exits = if to_cr { self.load && !self.targets.contains(&gpr(n)) } else { self.store };
        exits.then(|| CrAccess {
            qualification: 3 | if to_cr { 0 } else { ACCESS_FROM_CR } | u64::from(n) << GPR_SHIFT,
            insn_len: insn.len() as u32,
        })
    }
}

/// Table 28-3's register number: 0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 =
/// RSI, 7 = RDI, 8-15 = R8-R15.
fn gpr_number(r: Register) -> Option<u32> {
    const ORDER: [Register; 16] = [
        Register::RAX,
        Register::RCX,
        Register::RDX,
        Register::RBX,
        Register::RSP,
        Register::RBP,
        Register::RSI,
        Register::RDI,
        Register::R8,
        Register::R9,
        Register::R10,
        Register::R11,
        Register::R12,
        Register::R13,
        Register::R14,
        Register::R15,
    ];
    ORDER.iter().position(|x| *x == r).map(|i| i as u32)
}

/// The value of register `n` (Table 28-3's numbering) in `regs`.
#[must_use]
pub fn gpr(regs: &kvm_bindings::kvm_regs, n: u32) -> u64 {
    [
        regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8, regs.r9, regs.r10,
        regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ][n as usize & 15]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOV_CR3_RAX: [u8; 3] = [0x0F, 0x22, 0xD8];
    const MOV_RAX_CR3: [u8; 3] = [0x0F, 0x20, 0xD8];
    const MOV_CR3_R9: [u8; 4] = [0x41, 0x0F, 0x22, 0xD9];

    #[test]
    fn mov_cr3_exits_as_table_28_3_says() {
        let both = Cr3Exiting { load: true, store: true, targets: vec![] };
        let zero = |_| 0;
        assert_eq!(both.exit_for(&MOV_CR3_RAX, 0, 0, zero), Some(CrAccess { qualification: 3, insn_len: 3 }));
        assert_eq!(both.exit_for(&MOV_RAX_CR3, 0, 0, zero), Some(CrAccess { qualification: 0x13, insn_len: 3 }));
        assert_eq!(both.exit_for(&MOV_CR3_R9, 0, 0, zero), Some(CrAccess { qualification: 0x903, insn_len: 4 }));
        // CPL 3: the #GP comes first; other instructions and other CRs run.
        assert_eq!(both.exit_for(&MOV_CR3_RAX, 0, 3, zero), None);
        assert_eq!(both.exit_for(&[0x90], 0, 0, zero), None);
        assert_eq!(both.exit_for(&[0x0F, 0x22, 0xE0], 0, 0, zero), None, "mov cr4, rax");
    }

    #[test]
    fn a_cr3_target_value_lets_the_load_run_and_each_control_is_its_own() {
        let load = Cr3Exiting { load: true, store: false, targets: vec![0x1000] };
        assert_eq!(load.exit_for(&MOV_CR3_RAX, 0, 0, |_| 0x1000), None);
        assert!(load.exit_for(&MOV_CR3_RAX, 0, 0, |_| 0x2000).is_some());
        assert_eq!(load.exit_for(&MOV_RAX_CR3, 0, 0, |_| 0), None, "store exiting off");
        let store = Cr3Exiting { load: false, store: true, targets: vec![] };
        assert_eq!(store.exit_for(&MOV_CR3_RAX, 0, 0, |_| 0), None);
        assert!(!Cr3Exiting::default().on());
    }
}
