//! L2 touches a page VM2 has no memslot for (KVM_EXIT_MMIO): a lazy fill of the EPT12 shadow
//! (an L0-only exit), an EPT violation (48) or an EPT misconfiguration (49) reflected to L1
//! (docs/soft-engine.md; docs/kvm-exits.md rows 6 and 7).
//!
//! * **Fill.** EPT12 maps the page with the permissions the access needs: [`L2Vm::fill`]
//!   maps its leaf and L0 finishes the access KVM reported: a read's data is read from L1
//!   memory through the new translation and handed to KVM's pending completion (row 6); a
//!   write, which KVM has already retired with its data in the exit (row 7), is stored by L0.
//!   Nothing is re-executed and L2 goes on as if the page had been there.
//! * **EPT violation** (SDM 28.2.1, Table 28-7): bit 0 read, bit 1 write, bit 2 fetch; bits
//!   5:3 the R/W/X of the translation (the AND over the EPT12 entries used, 0 when one is not
//!   present); bit 7 the guest-linear address is valid; bit 8 the access was to the final
//!   translation (1) and not to a paging-structure entry during L2's own page walk (0).
//!   GUEST_PHYSICAL_ADDRESS (0x2400) holds the address, GUEST_LINEAR_ADDRESS the linear one.
//!   KVM never exits on an access of its own page walk (row 9: that is a #PF inside L2), which
//!   is why L0 premaps L2's paging structures: every violation L0 sees is of the final
//!   translation, bits 7 and 8 set. A violation is fault-like: L1 sees RIP at the
//!   instruction and no side effect. For a read KVM still holds a completion, which L0
//!   flushes (docs/kvm-exits.md "Never set_regs while a completion is pending"); a write is
//!   already retired with RIP past it, so L0 decodes backwards for its start
//!   ([`store_start`]) and presents that (the store never reached memory: there was no slot,
//!   or a read-only one).
//! * **EPT misconfiguration** (SDM 29.3.3.1): a present EPT12 entry with a reserved bit,
//!   write-without-read, execute-only (not advertised) or memory type 2, 3 or 7 on the path:
//!   reason 49, the guest-physical address, qualification 0 (28.2.1: "EPT misconfiguration:
//!   the exit qualification is cleared").

use std::time::Instant;

use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};
use nestbench_abi::ept;
use nestbench_abi::vmx::ExitReason;

use super::l2vm::{Fill, L2Vm};
use crate::vcpu::{Exit, VcpuError};

/// The EPT-violation qualification (SDM 28.2.1, Table 28-7), defined once in the ABI: L1
/// decodes what this writes.
pub use nestbench_abi::ept::violation::qualification;

/// What a KVM_EXIT_MMIO of VM2 turned into.
#[derive(Debug)]
pub enum Fault {
    /// L0 filled the shadow and finished the access: run L2 on (an L0-only exit).
    Filled,
    /// A VM exit to reflect to L1.
    Exit {
        /// 48 or 49.
        reason: ExitReason,
        /// Exit qualification.
        qualification: u64,
        /// Guest-physical address.
        gpa: u64,
        /// Guest-linear address (0 when not valid).
        linear: u64,
        /// Guest RIP to present: the faulting instruction.
        rip: u64,
        /// L2's registers as the exit presents them.
        regs: kvm_regs,
    },
    /// The engine cannot present this exit faithfully: stop the run and say why.
    Unsupported {
        /// What.
        what: &'static str,
        /// Why.
        why: String,
    },
}

/// The value of `reg` (any width, segment registers as their base) in L2's state.
fn register(reg: Register, regs: &kvm_regs, sregs: &kvm_sregs) -> Option<u64> {
    let full = match reg.full_register() {
        Register::RAX => regs.rax,
        Register::RBX => regs.rbx,
        Register::RCX => regs.rcx,
        Register::RDX => regs.rdx,
        Register::RSI => regs.rsi,
        Register::RDI => regs.rdi,
        Register::RSP => regs.rsp,
        Register::RBP => regs.rbp,
        Register::R8 => regs.r8,
        Register::R9 => regs.r9,
        Register::R10 => regs.r10,
        Register::R11 => regs.r11,
        Register::R12 => regs.r12,
        Register::R13 => regs.r13,
        Register::R14 => regs.r14,
        Register::R15 => regs.r15,
        Register::RIP => regs.rip,
        Register::ES | Register::CS | Register::SS | Register::DS => 0,
        Register::FS => sregs.fs.base,
        Register::GS => sregs.gs.base,
        _ => return None,
    };
    let bits = reg.size() * 8;
    if reg.is_segment_register() || bits >= 64 {
        return Some(full);
    }
    // AH/BH/CH/DH are the second byte.
    let shift = if matches!(reg, Register::AH | Register::BH | Register::CH | Register::DH) { 8 } else { 0 };
    Some((full >> shift) & ((1u64 << bits) - 1))
}

/// The memory operand of `insn`: (operand index, linear address, bytes accessed).
fn memory_operand(insn: &Instruction, regs: &kvm_regs, sregs: &kvm_sregs) -> Option<(u32, u64, usize)> {
    let op = (0..insn.op_count()).find(|&i| insn.op_kind(i) == OpKind::Memory)?;
    let linear = insn.virtual_address(op, 0, |reg, _, _| register(reg, regs, sregs))?;
    Some((op, linear, insn.memory_size().size()))
}

/// Where the store that KVM retired into a KVM_EXIT_MMIO write started (RIP is past it,
/// docs/kvm-exits.md row 7): the only decoding of the bytes before `rip` that is exactly
/// that long, writes a memory operand of `data.len()` bytes whose linear address translates
/// to `gpa`, and (for a register source) stores that register's value. Instructions whose
/// retirement changed the registers the address depends on (PUSH, string stores) are not
/// candidates. `Err` says why none, or more than one, fits.
pub fn store_start(
    l2: &L2Vm,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    gpa: u64,
    data: &[u8],
) -> Result<(u64, u32, u64), String> {
    let rip = regs.rip;
    let bytes = l2.read_linear(sregs.cr3, rip.saturating_sub(15), 15);
    if bytes.len() < 15 {
        return Err(format!("the 15 bytes before L2 RIP {rip:#x} do not translate"));
    }
    let mut found = Vec::new();
    for len in 1..=15usize {
        let start = rip - len as u64;
        let code = &bytes[15 - len..];
        let mut d = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
        let insn = d.decode();
        if insn.is_invalid() || insn.len() != len {
            continue;
        }
        let Some((op, linear, size)) = memory_operand(&insn, regs, sregs) else { continue };
        if op != 0 || size != data.len() || l2.l2_phys(sregs.cr3, linear) != Some(gpa) {
            continue;
        }
        if insn.stack_pointer_increment() != 0 || insn.has_rep_prefix() || insn.has_repne_prefix() {
            continue;
        }
        // A register source must hold the data the exit carries.
        if insn.op_count() > 1 && insn.op_kind(1) == OpKind::Register {
            let mut v = [0u8; 8];
            let Some(value) = register(insn.op_register(1), regs, sregs) else { continue };
            v.copy_from_slice(&value.to_le_bytes());
            if v[..data.len()] != *data {
                continue;
            }
        }
        found.push((start, len as u32, linear));
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!("no store to L2-physical {gpa:#x} of {} bytes ends at L2 RIP {rip:#x}", data.len())),
        many => Err(format!(
            "the store ending at L2 RIP {rip:#x} is ambiguous (redundant prefixes?): starts {:?}",
            many.iter().map(|c| c.0).collect::<Vec<_>>()
        )),
    }
}

/// The linear address of the load at `regs.rip` (RIP is at the instruction for an MMIO
/// read, docs/kvm-exits.md row 6).
fn load_linear(l2: &L2Vm, regs: &kvm_regs, sregs: &kvm_sregs) -> Option<u64> {
    let code = l2.read_linear(sregs.cr3, regs.rip, 15);
    let mut d = Decoder::with_ip(64, &code, regs.rip, DecoderOptions::NONE);
    let insn = d.decode();
    if insn.is_invalid() {
        return None;
    }
    memory_operand(&insn, regs, sregs).map(|(_, linear, _)| linear)
}

/// Flush KVM's pending MMIO-read completion (answer with zeroes, run once with
/// immediate_exit): nothing pending may survive into the next VM entry, which reloads L2's
/// registers from VMCS12 anyway.
fn flush_read(l2: &mut L2Vm) -> Result<(), VcpuError> {
    l2.vcpu.set_mmio_data(&[0; 8]);
    l2.vcpu.set_immediate_exit(true);
    let r = l2.vcpu.run();
    l2.vcpu.set_immediate_exit(false);
    r.map(|_| ())
}

/// Handle a KVM_EXIT_MMIO of VM2 (`regs`/`sregs`: L2's state at the exit).
pub fn on_mmio(l2: &mut L2Vm, exit: &Exit, regs: &kvm_regs, sregs: &kvm_sregs) -> Result<Fault, VcpuError> {
    let started = Instant::now();
    let (gpa, access, write_data) = match exit {
        Exit::MmioRead { gpa, .. } => (*gpa, ept::READ, None),
        Exit::MmioWrite { gpa, data } => (*gpa, ept::WRITE, Some(data.as_slice())),
        _ => return Ok(Fault::Unsupported { what: "EPT fault", why: format!("{exit:?} is not an MMIO exit") }),
    };
    if let Exit::MmioRead { len, .. } = exit {
        // docs/kvm-exits.md row 9: on upstream KVM a page walk through a paging structure
        // without memslot is an MMIO read *of the table*. L0 maps L2's paging structures
        // before L2 runs; one it missed is refused here, never answered as the load's data.
        let page = |a: u64| a & !0xFFF;
        let load = load_linear(l2, regs, sregs)
            .map(|l| [l, l.wrapping_add(u64::from(*len).max(1) - 1)].map(|x| l2.l2_phys(sregs.cr3, x).map(page)));
        if let Some(pages) = load
            && !pages.contains(&Some(page(gpa)))
        {
            return Ok(Fault::Unsupported {
                what: "L2 page walk",
                why: format!(
                    "KVM's MMIO read of L2-physical {gpa:#x} at L2 RIP {:#x} is not the load's data ({pages:x?}): a page \
                     walk through an L2 paging structure without memslot",
                    regs.rip
                ),
            });
        }
    }
    let fill = match l2.fill(gpa, access, false) {
        Ok(f) => f,
        Err(e) => return Ok(Fault::Unsupported { what: "EPT12", why: e.to_string() }),
    };
    if let Fill::Mapped { .. } = fill {
        match (exit, write_data) {
            (Exit::MmioRead { len, .. }, _) => {
                let data = l2.read_l2(gpa, *len as usize);
                l2.vcpu.set_mmio_data(&data);
            }
            (_, Some(data)) => {
                if !l2.write_l2_bytes(gpa, data) {
                    return Ok(Fault::Unsupported {
                        what: "EPT fill",
                        why: format!("the store to L2-physical {gpa:#x} does not fit its EPT12 translation"),
                    });
                }
            }
            _ => unreachable!("reads and writes only"),
        }
        l2.note_fill(started);
        return Ok(Fault::Filled);
    }
    let (reason, perms) = match fill {
        Fill::Violation { perms } => (ExitReason::EptViolation, perms),
        _ => (ExitReason::EptMisconfiguration, 0),
    };
    // Present the faulting instruction: a read is still at its instruction with a
    // completion pending; a write is retired and must be found backwards.
    let (rip, linear) = match write_data {
        None => {
            let linear = load_linear(l2, regs, sregs);
            flush_read(l2)?;
            match linear {
                Some(l) => (regs.rip, l),
                None => {
                    return Ok(Fault::Unsupported {
                        what: "EPT violation",
                        why: format!("cannot decode the load at L2 RIP {:#x} for its linear address", regs.rip),
                    });
                }
            }
        }
        Some(data) => match store_start(l2, regs, sregs, gpa, data) {
            Ok((start, _, linear)) => (start, linear),
            Err(why) => return Ok(Fault::Unsupported { what: "EPT violation (write)", why }),
        },
    };
    let qualification = if reason == ExitReason::EptViolation { qualification(access, perms, true, true) } else { 0 };
    let presented = kvm_regs { rip, ..*regs };
    Ok(Fault::Exit { reason, qualification, gpa, linear, rip, regs: presented })
}

/// KVM_INTERNAL_ERROR_EMULATION: KVM's emulator could not fetch or decode.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

/// Handle a KVM_EXIT_INTERNAL_ERROR of VM2. docs/kvm-exits.md row 8: an instruction fetch
/// from a GPA without memslot is an emulation failure with the jump (or call) retired, RIP
/// at the fetch target, no GPA in the exit. L0 finds the page itself: the first of the
/// pages of RIP and RIP + 14 (an instruction may cross a page) that translates through
/// L2's paging to a GPA without slot. If EPT12 lets L2 execute it, L0 maps it and L2 runs
/// on (an L0-only fill; KVM fetches again). If not, it is an EPT violation on an
/// instruction fetch (SDM Table 28-7 bit 2, with the R/W/X of the translation in bits
/// 5:3, bits 7 and 8 set, the linear address of the byte fetched) or an EPT
/// misconfiguration; guest RIP is the instruction whose fetch faulted, as on hardware,
/// where the fetch of the target, not the jump, causes the exit. Anything else is an
/// engine error, not an exit.
pub fn on_fetch_failure(l2: &mut L2Vm, exit: &Exit, regs: &kvm_regs, sregs: &kvm_sregs) -> Fault {
    let started = Instant::now();
    let unsupported = |why: String| Fault::Unsupported { what: "L2 instruction fetch", why };
    let Exit::InternalError { suberror, .. } = exit else {
        return unsupported(format!("{exit:?} is not a KVM internal error"));
    };
    if *suberror != KVM_INTERNAL_ERROR_EMULATION {
        return unsupported(format!("KVM internal error {suberror} at L2 RIP {:#x}", regs.rip));
    }
    let rip = regs.rip;
    let missing = [rip, rip.wrapping_add(14)].into_iter().find_map(|linear| {
        let gpa = l2.l2_phys(sregs.cr3, linear)?;
        (!l2.is_mapped(gpa)).then_some((linear, gpa))
    });
    let Some((linear, gpa)) = missing else {
        return unsupported(format!(
            "KVM could not emulate at L2 RIP {rip:#x}, whose pages are mapped (or not mapped by L2's paging: a #PF on hardware)"
        ));
    };
    match l2.fill(gpa, ept::EXECUTE, false) {
        Ok(Fill::Mapped { .. }) => {
            l2.note_fill(started);
            Fault::Filled
        }
        Ok(Fill::Violation { perms }) => Fault::Exit {
            reason: ExitReason::EptViolation,
            qualification: qualification(ept::EXECUTE, perms, true, true),
            gpa,
            linear,
            rip,
            regs: *regs,
        },
        Ok(Fill::Misconfig { .. }) => {
            Fault::Exit { reason: ExitReason::EptMisconfiguration, qualification: 0, gpa, linear: 0, rip, regs: *regs }
        }
        Err(e) => Fault::Unsupported { what: "EPT12", why: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nestbench_abi::ept::RWX;

    #[test]
    fn qualification_bits_of_table_28_7() {
        assert_eq!(qualification(ept::READ, 0, true, true), 0x181, "read of a not-present page");
        assert_eq!(qualification(ept::WRITE, ept::READ, true, true), 0x18A, "write to a read-only page");
        assert_eq!(qualification(ept::EXECUTE, ept::READ | ept::WRITE, true, true), 0x19C);
        assert_eq!(qualification(ept::READ, 0, true, false), 0x81, "during the guest's page walk");
        assert_eq!(qualification(ept::READ, RWX, false, true), 0x39, "no linear address: bit 8 undefined, 0");
    }

    #[test]
    fn registers_of_every_width() {
        let regs =
            kvm_regs { rax: 0x1122_3344_5566_7788, rsp: 0x1000, r9: 0xFFFF_FFFF_0000_0001, ..Default::default() };
        let sregs =
            kvm_sregs { fs: kvm_bindings::kvm_segment { base: 0x7000, ..Default::default() }, ..Default::default() };
        assert_eq!(register(Register::RAX, &regs, &sregs), Some(0x1122_3344_5566_7788));
        assert_eq!(register(Register::EAX, &regs, &sregs), Some(0x5566_7788));
        assert_eq!(register(Register::AX, &regs, &sregs), Some(0x7788));
        assert_eq!(register(Register::AL, &regs, &sregs), Some(0x88));
        assert_eq!(register(Register::AH, &regs, &sregs), Some(0x77));
        assert_eq!(register(Register::R9D, &regs, &sregs), Some(1));
        assert_eq!(register(Register::FS, &regs, &sregs), Some(0x7000));
        assert_eq!(register(Register::DS, &regs, &sregs), Some(0));
        let mut d = Decoder::with_ip(64, &[0x48, 0x8B, 0x44, 0x24, 0x08], 0x40_0000, DecoderOptions::NONE);
        let insn = d.decode(); // mov rax, [rsp+8]
        assert_eq!(memory_operand(&insn, &regs, &sregs), Some((1, 0x1008, 8)));
    }
}
