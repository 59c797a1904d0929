//! The hardware backend: the real VMX instructions (Bochs, the `kvm` engine).
//!
//! Every instruction's outcome is decoded from RFLAGS in the same `asm!` block that executes
//! it (SDM 31.2: VMsucceed clears CF and ZF, VMfailInvalid sets CF, VMfailValid sets ZF), so
//! no compiler-generated code can clobber the flags in between. On VMfailValid the error
//! number is read from the VM-instruction error field of the current VMCS (SDM 31.4).

use core::arch::asm;

use nestbench_abi::vmcs::Field32;

use super::{VmxBackend, VmxFail};

/// IA32_FEATURE_CONTROL (SDM Vol. 4, Table 2-2; Vol. 3C 24.7).
pub const MSR_FEATURE_CONTROL: u32 = 0x3A;
/// IA32_FEATURE_CONTROL bit 0: lock.
pub const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
/// IA32_FEATURE_CONTROL bit 2: VMXON allowed outside SMX operation.
pub const FEATURE_CONTROL_VMXON_OUTSIDE_SMX: u64 = 1 << 2;
/// CR4.VMXE (bit 13).
pub use nestbench_abi::cr::CR4_VMXE;

/// What IA32_FEATURE_CONTROL must become before VMXON (SDM 24.7 "Enabling and Entering VMX
/// Operation": VMXON #GPs unless the lock bit is set and, outside SMX, bit 2 is set).
/// `Ok(Some(v))`: write `v`; `Ok(None)`: already fine; `Err`: locked with VMXON disabled.
pub const fn feature_control_update(current: u64) -> Result<Option<u64>, u64> {
    let want = FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMXON_OUTSIDE_SMX;
    if current & FEATURE_CONTROL_LOCK == 0 {
        Ok(Some(current | want))
    } else if current & FEATURE_CONTROL_VMXON_OUTSIDE_SMX == 0 {
        Err(current)
    } else {
        Ok(None)
    }
}

/// The real VMX instructions. Holds only the access counter.
#[derive(Debug, Default)]
pub struct HwVmx {
    accesses: u32,
}

impl HwVmx {
    /// A backend with a zero access count.
    #[must_use]
    pub const fn new() -> Self {
        Self { accesses: 0 }
    }

    /// Turn flags (CF, ZF as 0/1 bytes) into a result, reading the error number on
    /// VMfailValid.
    #[inline(always)]
    fn decode(cf: u8, zf: u8) -> Result<(), VmxFail> {
        if cf != 0 {
            Err(VmxFail::FailInvalid)
        } else if zf != 0 {
            Err(VmxFail::FailValid(read_instruction_error()))
        } else {
            Ok(())
        }
    }
}

/// VMREAD of the VM-instruction error field, uncounted (it is part of decoding a failure).
#[cold]
fn read_instruction_error() -> u32 {
    let v: u64;
    // SAFETY: VMREAD only reads the current VMCS; in VMX operation with a current VMCS (the
    // caller just saw VMfailValid, which implies one) it cannot fault. No memory operand.
    unsafe {
        asm!("vmread {v}, {enc}", v = out(reg) v, enc = in(reg) u64::from(Field32::VmInstructionError.encoding()),
             options(nostack, nomem));
    }
    v as u32
}

/// Execute a VMX instruction whose operand is a 64-bit physical address in memory
/// (VMXON, VMCLEAR, VMPTRLD: SDM 31.3, "m64").
macro_rules! vmx_m64 {
    ($insn:literal, $pa:expr) => {{
        let pa: u64 = $pa;
        let cf: u8;
        let zf: u8;
        // SAFETY: the instruction reads the 8-byte operand `pa` on our stack; it changes only
        // VMX state and RFLAGS, which are decoded here. It #GPs/#UDs outside VMX operation
        // or at CPL > 0, which L1's exception handler reports (L1 runs at CPL 0 and only
        // uses this backend when CPUID reports VMX).
        unsafe {
            asm!(concat!($insn, " qword ptr [{pa}]"), "setc {cf}", "setz {zf}",
                 pa = in(reg) &pa, cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
        }
        HwVmx::decode(cf, zf)
    }};
}

impl VmxBackend for HwVmx {
    const DOORBELL: bool = false;

    fn vmxon(&mut self, pa: u64) -> Result<(), VmxFail> {
        vmx_m64!("vmxon", pa)
    }

    fn vmxoff(&mut self) -> Result<(), VmxFail> {
        let cf: u8;
        let zf: u8;
        // SAFETY: VMXOFF leaves VMX operation; no memory operand; flags decoded here.
        unsafe {
            asm!("vmxoff", "setc {cf}", "setz {zf}", cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack))
        };
        Self::decode(cf, zf)
    }

    fn vmclear(&mut self, pa: u64) -> Result<(), VmxFail> {
        vmx_m64!("vmclear", pa)
    }

    fn vmptrld(&mut self, pa: u64) -> Result<(), VmxFail> {
        vmx_m64!("vmptrld", pa)
    }

    fn vmptrst(&mut self) -> Result<u64, VmxFail> {
        let mut pa: u64 = 0;
        // SAFETY: VMPTRST stores the current-VMCS pointer into the 8-byte `pa` on our stack.
        unsafe { asm!("vmptrst qword ptr [{p}]", p = in(reg) &mut pa, options(nostack)) };
        Ok(pa)
    }

    #[inline(always)]
    fn vmread(&mut self, encoding: u32) -> Result<u64, VmxFail> {
        self.accesses += 1;
        let v: u64;
        let cf: u8;
        let zf: u8;
        // SAFETY: VMREAD reads a field of the current VMCS into a register; no memory
        // operand; failures are decoded from the flags in this block.
        unsafe {
            asm!("vmread {v}, {enc}", "setc {cf}", "setz {zf}", v = out(reg) v, enc = in(reg) u64::from(encoding),
                 cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack, nomem));
        }
        Self::decode(cf, zf).map(|()| v)
    }

    #[inline(always)]
    fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmxFail> {
        self.accesses += 1;
        let cf: u8;
        let zf: u8;
        // SAFETY: VMWRITE writes a field of the current VMCS from a register; no memory
        // operand; failures are decoded from the flags in this block.
        unsafe {
            asm!("vmwrite {enc}, {v}", "setc {cf}", "setz {zf}", enc = in(reg) u64::from(encoding), v = in(reg) value,
                 cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack, nomem));
        }
        Self::decode(cf, zf)
    }

    fn invept(&mut self, kind: u64, eptp: u64) -> Result<(), VmxFail> {
        // SDM 31.3 INVEPT: a 128-bit descriptor, EPTP in bits 63:0, bits 127:64 reserved 0.
        let desc: [u64; 2] = [eptp, 0];
        let cf: u8;
        let zf: u8;
        // SAFETY: INVEPT reads the 16-byte descriptor on our stack and only invalidates
        // cached translations; flags decoded here.
        unsafe {
            asm!("invept {k}, [{d}]", "setc {cf}", "setz {zf}", k = in(reg) kind, d = in(reg) &desc,
                 cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
        }
        Self::decode(cf, zf)
    }

    fn accesses(&self) -> u32 {
        self.accesses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_control_is_locked_with_vmxon_outside_smx_when_unlocked() {
        assert_eq!(feature_control_update(0), Ok(Some(0x5)));
        assert_eq!(feature_control_update(0x2), Ok(Some(0x7)), "keeps VMXON-inside-SMX");
        assert_eq!(feature_control_update(0x5), Ok(None));
        assert_eq!(feature_control_update(0x1), Err(0x1), "locked with VMXON disabled: nothing L1 can do");
    }
}
