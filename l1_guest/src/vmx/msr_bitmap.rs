//! L1's MSR bitmap (SDM 25.6.9, "MSR-Bitmap Address"): 4 KiB, "Read bitmap for low MSRs
//! (located at the MSR-bitmap address). This contains one bit for each MSR address in the
//! range 00000000H to 00001FFFH. The bit determines whether an execution of RDMSR applied
//! to that MSR causes a VM exit." The read bitmap for high MSRs (C0000000H to C0001FFFH)
//! is at +1024, the write bitmaps for low and high MSRs at +2048 and +3072. Used when "use
//! MSR bitmaps" is 1; MSRs outside both ranges always exit (SDM 26.1.3).
//!
//! L1 intercepts reads and writes of [`crate::exits::rdmsr::INTERCEPTED`] and nothing else.

use crate::exits::rdmsr::INTERCEPTED;

/// Size of the bitmap.
pub const SIZE: usize = 4096;

/// Byte and bit of `msr`'s read (or write) bit, or `None` outside both ranges.
#[must_use]
pub const fn position(msr: u32, write: bool) -> Option<(usize, u8)> {
    let (n, base) = match msr {
        0..=0x1FFF => (msr, 0),
        0xC000_0000..=0xC000_1FFF => (msr - 0xC000_0000, 1024),
        _ => return None,
    };
    let base = if write { base + 2048 } else { base };
    Some((base + n as usize / 8, (n % 8) as u8))
}

/// L1's bitmap, built at compile time (no 4 KiB on L1's stack).
pub static BITMAP: [u8; SIZE] = build();

/// L1's bitmap: reads and writes of every intercepted MSR exit, nothing else does.
#[must_use]
pub const fn build() -> [u8; SIZE] {
    let mut b = [0u8; SIZE];
    let mut i = 0;
    while i < INTERCEPTED.len() {
        let mut w = 0;
        while w < 2 {
            if let Some((byte, bit)) = position(INTERCEPTED[i], w == 1) {
                b[byte] |= 1 << bit;
            }
            w += 1;
        }
        i += 1;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exits::rdmsr::{IA32_KERNEL_GS_BASE, IA32_SYSENTER_ESP};

    #[test]
    fn positions_follow_sdm_25_6_9() {
        assert_eq!(position(0, false), Some((0, 0)));
        assert_eq!(position(0x1FFF, false), Some((1023, 7)));
        assert_eq!(position(0x175, true), Some((2048 + 0x2E, 5)));
        assert_eq!(position(0xC000_0000, false), Some((1024, 0)));
        assert_eq!(position(0xC000_0102, true), Some((3072 + 0x20, 2)));
        assert_eq!(position(0x2000, false), None);
        assert_eq!(position(0xC000_2000, true), None);
    }

    #[test]
    fn the_bitmap_sets_exactly_four_bits() {
        let b = build();
        assert_eq!(b, BITMAP);
        assert_eq!(b.iter().map(|x| x.count_ones()).sum::<u32>(), 4);
        for msr in [IA32_SYSENTER_ESP, IA32_KERNEL_GS_BASE] {
            for write in [false, true] {
                let (byte, bit) = position(msr, write).unwrap();
                assert_ne!(b[byte] & 1 << bit, 0, "{msr:#x} write={write}");
            }
        }
        // Nothing in the x2APIC range (the soft engine cannot intercept it).
        assert!((0x800..=0x8FF).all(|m| [false, true].iter().all(|&w| {
            let (byte, bit) = position(m, w).unwrap();
            b[byte] & 1 << bit == 0
        })));
    }
}
