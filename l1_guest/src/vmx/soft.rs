//! The soft backend: VMX as nestbench's L0 provides it in userspace (docs/soft-engine.md,
//! `nestbench_abi::softvmx`).
//!
//! * VMXON, VMXOFF, VMCLEAR, VMPTRLD, VMPTRST, INVEPT and every non-shadowed VMREAD/VMWRITE
//!   are a `Call::Vmx` hypercall; L0 answers with the `VmxResult` word in RDI (the error
//!   number of VMfailValid included) and a value in RSI.
//! * VMREAD/VMWRITE of a field whose bit is clear in L0's VMREAD/VMWRITE bitmap are a plain
//!   load/store in the current VMCS12 page at `vmcs12::slot_offset(encoding)`: VMCS
//!   shadowing as SDM 25.10 defines it ("VMREAD/VMWRITE in VMX non-root operation with
//!   VMCS shadowing: if the bit in the bitmap is 0, the instruction accesses the shadow
//!   VMCS"). L1 tracks the current-VMCS pointer itself (set by a successful VMPTRLD,
//!   cleared by VMCLEAR of that VMCS), as a CPU does.
//!
//! VMLAUNCH/VMRESUME are the doorbell write in the shared entry sequence ([`super::entry::enter`]).

use core::arch::asm;

use nestbench_abi::hypercall::{Call, PORT, Status};
use nestbench_abi::softvmx::{VmxOp, VmxResult};
use nestbench_abi::vmcs12;

use super::{VmxBackend, VmxFail};

/// "No current VMCS" (SDM 31.3 VMPTRST: FFFFFFFF_FFFFFFFFH).
pub const NO_VMCS: u64 = u64::MAX;

/// The soft engine's VMX.
#[derive(Debug)]
pub struct SoftVmx {
    /// The current-VMCS pointer as L1 tracks it (an identity-mapped L1 address), or
    /// [`NO_VMCS`].
    current: u64,
    accesses: u32,
}

impl Default for SoftVmx {
    fn default() -> Self {
        Self::new()
    }
}

/// The VMREAD (`write = false`) or VMWRITE bitmap page.
#[cfg(not(test))]
#[inline(always)]
fn bitmap(write: bool) -> *const u8 {
    use nestbench_abi::softvmx::{READ_BITMAP_GPA, WRITE_BITMAP_GPA};
    (if write { WRITE_BITMAP_GPA } else { READ_BITMAP_GPA }) as *const u8
}

#[cfg(test)]
std::thread_local! {
    /// Host tests: this thread's VMREAD and VMWRITE bitmaps (all clear: every field shadowed).
    pub static TEST_BITMAPS: std::cell::RefCell<std::boxed::Box<[[u8; 4096]; 2]>> =
        std::cell::RefCell::new(std::boxed::Box::new([[0; 4096]; 2]));
}

#[cfg(test)]
fn bitmap(write: bool) -> *const u8 {
    TEST_BITMAPS.with(|b| b.borrow()[usize::from(write)].as_ptr())
}

/// Whether `encoding` is shadowed in `bitmap`: bits 63:15 clear and the bit for encoding bits
/// 14:0 clear (SDM 25.6.15: "bit x of the bitmap" for the field with encoding bits 14:0 = x,
/// i.e. byte x >> 3, bit x & 7).
#[inline(always)]
fn shadowed(bitmap: *const u8, encoding: u32) -> bool {
    if encoding >> 15 != 0 {
        return false;
    }
    // SAFETY: `bitmap` is a 4 KiB page (L0's published bitmap, identity-mapped; or the test
    // buffer) and the byte index is below 4096.
    let byte = unsafe { bitmap.add(((encoding >> 3) & 0xFFF) as usize).read_volatile() };
    byte & (1 << (encoding & 7)) == 0
}

/// The bits a VMWRITE stores for a field of this encoding's width (SDM 31.3 VMWRITE: "the
/// high bits of the source operand are ignored" for a shorter field); 64-bit and natural
/// width keep all 64.
#[inline(always)]
const fn width_mask(encoding: u32) -> u64 {
    match (encoding >> 13) & 3 {
        0 => 0xFFFF,
        2 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

/// One `Call::Vmx` hypercall: returns L0's VmxResult and the value in RSI.
#[inline(never)]
fn vmx_call(op: VmxOp, a1: u64, a2: u64) -> (VmxResult, u64) {
    let status: u64;
    let word: u64;
    let value: u64;
    // SAFETY: a 32-bit OUT to the hypercall port; L0 handles it and writes only RAX (status),
    // RDI (result word) and RSI (value), all declared as outputs. Address arguments are
    // checked by L0.
    unsafe {
        asm!(
            "out dx, eax",
            in("dx") PORT,
            inout("rax") Call::Vmx as u64 => status,
            inout("rdi") op as u64 => word,
            inout("rsi") a1 => value,
            in("r8") a2,
            options(nostack),
        );
    }
    match (Status::from_raw(status), VmxResult::from_word(word)) {
        (Some(Status::Ok), Some(r)) => (r, value),
        _ => panic!("soft VMX {op:?}: L0 status {status:#x}, result word {word:#x}"),
    }
}

const fn to_result(r: VmxResult) -> Result<(), VmxFail> {
    match r {
        VmxResult::Succeed => Ok(()),
        VmxResult::FailInvalid => Err(VmxFail::FailInvalid),
        VmxResult::FailValid(e) => Err(VmxFail::FailValid(e)),
    }
}

impl SoftVmx {
    /// No current VMCS, no accesses counted.
    #[must_use]
    pub const fn new() -> Self {
        Self { current: NO_VMCS, accesses: 0 }
    }

    /// The current-VMCS pointer L1 tracks.
    #[must_use]
    pub const fn current(&self) -> u64 {
        self.current
    }

    /// Host tests: make `page` the current VMCS without a hypercall.
    #[cfg(test)]
    pub fn set_current_for_test(&mut self, page: u64) {
        self.current = page;
    }
}

impl VmxBackend for SoftVmx {
    const DOORBELL: bool = true;

    fn vmxon(&mut self, pa: u64) -> Result<(), VmxFail> {
        to_result(vmx_call(VmxOp::VmxOn, pa, 0).0)
    }

    fn vmxoff(&mut self) -> Result<(), VmxFail> {
        let r = to_result(vmx_call(VmxOp::VmxOff, 0, 0).0);
        if r.is_ok() {
            self.current = NO_VMCS;
        }
        r
    }

    fn vmclear(&mut self, pa: u64) -> Result<(), VmxFail> {
        let r = to_result(vmx_call(VmxOp::VmClear, pa, 0).0);
        // SDM 31.3 VMCLEAR: "IF operand addr = current-VMCS pointer THEN current-VMCS pointer
        // <- FFFFFFFF_FFFFFFFFH".
        if r.is_ok() && pa == self.current {
            self.current = NO_VMCS;
        }
        r
    }

    fn vmptrld(&mut self, pa: u64) -> Result<(), VmxFail> {
        let r = to_result(vmx_call(VmxOp::VmPtrLd, pa, 0).0);
        // SDM 31.3 VMPTRLD: on success "current-VMCS pointer <- addr"; a failure leaves it.
        if r.is_ok() {
            self.current = pa;
        }
        r
    }

    fn vmptrst(&mut self) -> Result<u64, VmxFail> {
        let (r, v) = vmx_call(VmxOp::VmPtrSt, 0, 0);
        to_result(r).map(|()| v)
    }

    #[inline(always)]
    fn vmread(&mut self, encoding: u32) -> Result<u64, VmxFail> {
        self.accesses += 1;
        if self.current != NO_VMCS && shadowed(bitmap(false), encoding) {
            let slot = self.current + vmcs12::slot_offset(encoding & !1) as u64;
            // SAFETY: the current VMCS is a 4 KiB VMCS12 page in identity-mapped L1 memory
            // (L0 accepted the VMPTRLD) and slot_offset stays inside it for any encoding with
            // bits 63:15 clear (index < 32 by construction); a high access reads the upper
            // four bytes of the 64-bit slot.
            return Ok(unsafe {
                if encoding & 1 != 0 {
                    u64::from(((slot + 4) as *const u32).read_volatile())
                } else {
                    (slot as *const u64).read_volatile()
                }
            });
        }
        vmread_slow(encoding)
    }

    #[inline(always)]
    fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmxFail> {
        self.accesses += 1;
        if self.current != NO_VMCS && shadowed(bitmap(true), encoding) {
            let slot = self.current + vmcs12::slot_offset(encoding & !1) as u64;
            // SAFETY: as in `vmread`; the slot is 8-aligned inside the current VMCS12 page.
            // 16- and 32-bit fields keep the rest of their slot zero (docs/soft-engine.md).
            unsafe {
                if encoding & 1 != 0 {
                    ((slot + 4) as *mut u32).write_volatile(value as u32);
                } else {
                    (slot as *mut u64).write_volatile(value & width_mask(encoding));
                }
            }
            return Ok(());
        }
        vmwrite_slow(encoding, value)
    }

    fn invept(&mut self, kind: u64, eptp: u64) -> Result<(), VmxFail> {
        to_result(vmx_call(VmxOp::InvEpt, kind, eptp).0)
    }

    fn accesses(&self) -> u32 {
        self.accesses
    }
}

#[cold]
fn vmread_slow(encoding: u32) -> Result<u64, VmxFail> {
    let (r, v) = vmx_call(VmxOp::VmRead, u64::from(encoding), 0);
    to_result(r).map(|()| v)
}

#[cold]
fn vmwrite_slow(encoding: u32, value: u64) -> Result<(), VmxFail> {
    to_result(vmx_call(VmxOp::VmWrite, u64::from(encoding), value).0)
}

#[cfg(test)]
mod tests {
    use nestbench_abi::vmcs::{Field16, Field32, Field64, FieldNatural};

    use super::*;
    use crate::vmx::Vmcs;

    #[repr(align(4096))]
    struct Page([u8; 4096]);

    #[test]
    fn shadowed_fields_go_straight_to_their_vmcs12_slot() {
        let mut page = std::boxed::Box::new(Page([0; 4096]));
        let base = page.0.as_mut_ptr() as u64;
        let mut s = SoftVmx::new();
        s.set_current_for_test(base);
        s.write_nat(FieldNatural::GuestRip, 0x40_1234).unwrap();
        s.write32(Field32::GuestCsAccessRights, 0xA09B).unwrap();
        s.write16(Field16::GuestCsSelector, 0x08).unwrap();
        s.write64(Field64::EptPointer, 0x1234_501E).unwrap();
        // A raw write of a too-wide value to a 16-bit field keeps only 16 bits.
        s.vmwrite(Field16::GuestSsSelector.encoding(), 0xDEAD_0010).unwrap();
        let slot = |enc: u32| {
            let o = vmcs12::offset(enc).unwrap();
            u64::from_le_bytes(page.0[o..o + 8].try_into().unwrap())
        };
        assert_eq!(slot(FieldNatural::GuestRip.encoding()), 0x40_1234);
        assert_eq!(slot(Field32::GuestCsAccessRights.encoding()), 0xA09B);
        assert_eq!(slot(Field16::GuestCsSelector.encoding()), 0x08);
        assert_eq!(slot(Field16::GuestSsSelector.encoding()), 0x10);
        assert_eq!(slot(Field64::EptPointer.encoding()), 0x1234_501E);
        assert_eq!(s.read_nat(FieldNatural::GuestRip), Ok(0x40_1234));
        assert_eq!(s.vmread(Field64::EptPointer.high()), Ok(0));
        s.vmwrite(Field64::EptPointer.high(), 0xAB).unwrap();
        assert_eq!(s.read64(Field64::EptPointer), Ok(0xAB_1234_501E));
        assert_eq!(s.accesses(), 9);
        assert_eq!(s.current(), base);
    }

    #[test]
    fn bitmap_bits_follow_encoding_bits_14_to_0() {
        let mut bm = [0u8; 4096];
        let enc = FieldNatural::GuestRip.encoding(); // 0x681E: byte 0xD03, bit 6
        assert!(shadowed(bm.as_ptr(), enc));
        bm[0xD03] = 1 << 6;
        assert!(!shadowed(bm.as_ptr(), enc));
        assert!(shadowed(bm.as_ptr(), enc - 2));
        assert!(!shadowed([0u8; 4096].as_ptr(), 1 << 15), "bits 63:15 set always trap");
        assert_eq!(width_mask(Field16::GuestCsSelector.encoding()), 0xFFFF);
        assert_eq!(width_mask(Field32::VmExitReason.encoding()), 0xFFFF_FFFF);
        assert_eq!(width_mask(Field64::EptPointer.encoding()), u64::MAX);
        assert_eq!(width_mask(FieldNatural::GuestRip.encoding()), u64::MAX);
    }
}
