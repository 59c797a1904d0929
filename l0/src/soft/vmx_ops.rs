//! The VMX instructions other than VM entry, emulated for L1 (Intel SDM Vol. 3C, 31.3,
//! each instruction's "Operation" section). L1 reaches them through the `Call::Vmx`
//! hypercall; every operand is untrusted.

use std::collections::HashSet;

use nestbench_abi::softvmx::{VmxOp, VmxResult};
use nestbench_abi::vmcs::{self, Field32};
use nestbench_abi::vmx::VmInstructionError as Err;

use super::vmcs12::Vmcs12;
use crate::memory::GuestMem;

/// What the VMX instructions see: VMX operation, the current VMCS, launch states.
#[derive(Debug, Default)]
pub struct VmxState {
    /// The VMXON region, while in VMX operation.
    pub vmxon: Option<u64>,
    /// The current-VMCS pointer.
    pub current: Option<u64>,
    /// VMCS regions whose launch state is "launched" (kept by L0, as a CPU keeps it).
    pub launched: HashSet<u64>,
    /// Set by INVEPT: the EPT12 shadow must be rebuilt before the next entry.
    pub invept_pending: bool,
}

/// The outcome of one emulated instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpResult {
    /// How it ended.
    pub result: VmxResult,
    /// The value it produces (VMREAD, VMPTRST), else 0.
    pub value: u64,
    /// On hardware this would not have been a VMfail but a #UD (outside VMX operation): L0
    /// reports it as VMfailInvalid and says so.
    pub would_ud: bool,
}

const fn ok(value: u64) -> OpResult {
    OpResult { result: VmxResult::Succeed, value, would_ud: false }
}

const fn invalid() -> OpResult {
    OpResult { result: VmxResult::FailInvalid, value: 0, would_ud: false }
}

const fn ud() -> OpResult {
    OpResult { result: VmxResult::FailInvalid, value: 0, would_ud: true }
}

/// The INVEPT types (SDM 31.3, INVEPT): 1 single-context, 2 all-context.
const INVEPT_SINGLE: u64 = 1;
const INVEPT_ALL: u64 = 2;

impl VmxState {
    /// VMfail (SDM 31.2): VMfailValid(error) with the error in the current VMCS if there
    /// is one, else VMfailInvalid.
    fn fail(&self, mem: &GuestMem, error: Err) -> OpResult {
        match self.current.and_then(|pa| Vmcs12::new(mem, pa).ok()) {
            Some(v) => {
                v.set(Field32::VmInstructionError.encoding(), u64::from(error as u32));
                OpResult { result: VmxResult::FailValid(error as u32), value: 0, would_ud: false }
            }
            None => invalid(),
        }
    }

    /// Check a VMCS/VMXON region address operand as SDM 31.3 does: 4 KiB-aligned and within
    /// the physical-address width. An address with no memory behind it passes; what the
    /// instruction then reads there is all ones (so VMXON fails invalid and VMPTRLD finds a
    /// wrong revision identifier, VMfailValid 11) and what it writes is dropped (VMCLEAR
    /// succeeds), as reads and writes of unbacked physical memory do.
    fn region_ok(pa: u64, maxphyaddr: u32) -> bool {
        pa & 0xFFF == 0 && pa >> maxphyaddr == 0
    }

    /// Execute `op` with operands `a1`, `a2` for L1. `revision` is the VMCS revision
    /// identifier L0 advertises in IA32_VMX_BASIC.
    pub fn execute(&mut self, mem: &GuestMem, op: VmxOp, a1: u64, a2: u64, revision: u32, maxphyaddr: u32) -> OpResult {
        if op != VmxOp::VmxOn && self.vmxon.is_none() {
            // Outside VMX operation every VMX instruction but VMXON is #UD.
            return ud();
        }
        match op {
            VmxOp::VmxOn => {
                if self.vmxon.is_some() {
                    // "ELSIF in VMX root operation THEN VMfail(VMXON executed in VMX root operation)".
                    return self.fail(mem, Err::VmxonInRoot);
                }
                // "IF addr is not 4KB-aligned or addr sets any bits beyond the
                // physical-address width or rev[30:0] != VMCS revision identifier ...
                // THEN VMfailInvalid".
                if !Self::region_ok(a1, maxphyaddr) || Vmcs12::new(mem, a1).map_or(true, |v| v.revision() != revision) {
                    return invalid();
                }
                self.vmxon = Some(a1);
                self.current = None;
                ok(0)
            }
            VmxOp::VmxOff => {
                self.vmxon = None;
                self.current = None;
                ok(0)
            }
            VmxOp::VmClear => {
                if !Self::region_ok(a1, maxphyaddr) {
                    return self.fail(mem, Err::VmclearInvalidAddress);
                }
                if Some(a1) == self.vmxon {
                    return self.fail(mem, Err::VmclearVmxonPointer);
                }
                // "launch state of VMCS referenced by addr <- clear; IF addr = current-VMCS
                // pointer THEN current-VMCS pointer <- FFFFFFFF_FFFFFFFFH".
                self.launched.remove(&a1);
                if self.current == Some(a1) {
                    self.current = None;
                }
                ok(0)
            }
            VmxOp::VmPtrLd => {
                if !Self::region_ok(a1, maxphyaddr) {
                    return self.fail(mem, Err::VmptrldInvalidAddress);
                }
                if Some(a1) == self.vmxon {
                    return self.fail(mem, Err::VmptrldVmxonPointer);
                }
                let rev = Vmcs12::new(mem, a1).map_or(u32::MAX, |v| v.revision());
                // Bit 31 is the shadow-VMCS indicator; shadow VMCSs are not advertised.
                if rev != revision {
                    return self.fail(mem, Err::VmptrldBadRevision);
                }
                self.current = Some(a1);
                ok(0)
            }
            VmxOp::VmPtrSt => ok(self.current.unwrap_or(u64::MAX)),
            VmxOp::VmRead | VmxOp::VmWrite => {
                let Some(cur) = self.current else { return invalid() };
                let Ok(v) = Vmcs12::new(mem, cur) else { return invalid() };
                let Ok(encoding) = u32::try_from(a1) else {
                    return self.fail(mem, Err::UnsupportedComponent);
                };
                if op == VmxOp::VmRead {
                    return v.get(encoding).map_or_else(|| self.fail(mem, Err::UnsupportedComponent), ok);
                }
                if vmcs::lookup(encoding).is_none() {
                    return self.fail(mem, Err::UnsupportedComponent);
                }
                // IA32_VMX_MISC[29] is not advertised: read-only fields stay read-only.
                if vmcs::is_read_only(encoding) {
                    return self.fail(mem, Err::VmwriteReadOnly);
                }
                v.set(encoding, a2);
                ok(0)
            }
            VmxOp::InvEpt => {
                if a1 != INVEPT_SINGLE && a1 != INVEPT_ALL {
                    return self.fail(mem, Err::InvalidInvOperand);
                }
                self.invept_pending = true;
                ok(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use nestbench_abi::vmcs::{Field32, FieldNatural};

    use super::*;

    const REV: u32 = 0x4E42;

    fn setup() -> (GuestMem, VmxState) {
        let mem = GuestMem::new(0x10000).unwrap();
        for pa in [0x1000u64, 0x2000, 0x3000] {
            mem.write(pa, &REV.to_le_bytes()).unwrap();
        }
        mem.write(0x4000, &(REV + 1).to_le_bytes()).unwrap();
        (mem, VmxState::default())
    }

    fn exec(s: &mut VmxState, mem: &GuestMem, op: VmxOp, a1: u64, a2: u64) -> OpResult {
        s.execute(mem, op, a1, a2, REV, 46)
    }

    fn fail_valid(e: Err) -> VmxResult {
        VmxResult::FailValid(e as u32)
    }

    #[test]
    fn vmxon_vmptrld_vmwrite_vmread() {
        let (mem, mut s) = setup();
        assert!(exec(&mut s, &mem, VmxOp::VmPtrLd, 0x2000, 0).would_ud, "VMPTRLD before VMXON is #UD");
        assert_eq!(exec(&mut s, &mem, VmxOp::VmxOn, 0x1001, 0).result, VmxResult::FailInvalid, "unaligned");
        assert_eq!(exec(&mut s, &mem, VmxOp::VmxOn, 0x4000, 0).result, VmxResult::FailInvalid, "revision");
        assert_eq!(exec(&mut s, &mem, VmxOp::VmxOn, 0x1000, 0).result, VmxResult::Succeed);
        assert_eq!(exec(&mut s, &mem, VmxOp::VmxOn, 0x1000, 0).result, VmxResult::FailInvalid, "no current VMCS");
        assert_eq!(exec(&mut s, &mem, VmxOp::VmRead, 0x681E, 0).result, VmxResult::FailInvalid);
        assert_eq!(exec(&mut s, &mem, VmxOp::VmPtrLd, 0x2000, 0).result, VmxResult::Succeed);
        assert_eq!(exec(&mut s, &mem, VmxOp::VmPtrSt, 0, 0).value, 0x2000);
        let rip = FieldNatural::GuestRip.encoding();
        assert_eq!(exec(&mut s, &mem, VmxOp::VmWrite, u64::from(rip), 0x40_0000).result, VmxResult::Succeed);
        assert_eq!(exec(&mut s, &mem, VmxOp::VmRead, u64::from(rip), 0).value, 0x40_0000);
        assert_eq!(exec(&mut s, &mem, VmxOp::VmxOn, 0x1000, 0).result, fail_valid(Err::VmxonInRoot));
    }

    #[test]
    fn vmfail_valid_numbers_land_in_the_vmcs() {
        let (mem, mut s) = setup();
        exec(&mut s, &mem, VmxOp::VmxOn, 0x1000, 0);
        exec(&mut s, &mem, VmxOp::VmPtrLd, 0x2000, 0);
        let reason = u64::from(Field32::VmExitReason.encoding());
        let cases = [
            (VmxOp::VmWrite, reason, 1, Err::VmwriteReadOnly),
            (VmxOp::VmWrite, 0x7FFF, 1, Err::UnsupportedComponent),
            (VmxOp::VmRead, 0x1_0000_0000, 0, Err::UnsupportedComponent),
            (VmxOp::VmPtrLd, 0x3004, 0, Err::VmptrldInvalidAddress),
            (VmxOp::VmPtrLd, 0x1000, 0, Err::VmptrldVmxonPointer),
            (VmxOp::VmPtrLd, 0x4000, 0, Err::VmptrldBadRevision),
            // Within the width but no memory behind it: the revision reads as all ones.
            (VmxOp::VmPtrLd, 0xFFFF_F000, 0, Err::VmptrldBadRevision),
            (VmxOp::VmPtrLd, 1 << 46, 0, Err::VmptrldInvalidAddress),
            (VmxOp::VmClear, 0x1000, 0, Err::VmclearVmxonPointer),
            (VmxOp::VmClear, 0x123, 0, Err::VmclearInvalidAddress),
            (VmxOp::VmClear, 1 << 46, 0, Err::VmclearInvalidAddress),
            (VmxOp::InvEpt, 3, 0, Err::InvalidInvOperand),
        ];
        for (op, a1, a2, e) in cases {
            assert_eq!(exec(&mut s, &mem, op, a1, a2).result, fail_valid(e), "{op:?} {a1:#x}");
            let v = Vmcs12::new(&mem, 0x2000).unwrap();
            assert_eq!(v.read(Field32::VmInstructionError.encoding()), e as u64, "{op:?}");
        }
    }

    #[test]
    fn an_unbacked_vmclear_succeeds_and_an_unbacked_vmxon_fails_invalid() {
        let (mem, mut s) = setup();
        assert_eq!(exec(&mut s, &mem, VmxOp::VmxOn, 0xFFFF_F000, 0).result, VmxResult::FailInvalid);
        exec(&mut s, &mem, VmxOp::VmxOn, 0x1000, 0);
        assert_eq!(exec(&mut s, &mem, VmxOp::VmClear, 0xFFFF_F000, 0).result, VmxResult::Succeed);
    }

    #[test]
    fn vmclear_clears_launch_state_and_the_current_pointer() {
        let (mem, mut s) = setup();
        exec(&mut s, &mem, VmxOp::VmxOn, 0x1000, 0);
        exec(&mut s, &mem, VmxOp::VmPtrLd, 0x2000, 0);
        s.launched.insert(0x2000);
        assert_eq!(exec(&mut s, &mem, VmxOp::VmClear, 0x2000, 0).result, VmxResult::Succeed);
        assert!(s.launched.is_empty());
        assert_eq!(s.current, None);
        assert_eq!(exec(&mut s, &mem, VmxOp::InvEpt, 2, 0).result, VmxResult::Succeed, "INVEPT needs no current VMCS");
        assert!(s.invept_pending);
        assert_eq!(
            exec(&mut s, &mem, VmxOp::InvEpt, 7, 0).result,
            VmxResult::FailInvalid,
            "bad type, no VMCS to fail into"
        );
    }
}
