//! Segment descriptors, the 64-bit TSS and IDT gates (Intel SDM Vol. 3A, 3.4.5 "Segment
//! Descriptors", 7.7 "Task Management in 64-bit Mode", 6.14.1 "64-Bit Mode IDT").
//!
//! Pure encodings, tested on the host; the bare-metal binary owns the tables themselves.

/// Selector of L1's 64-bit code segment.
pub const SEL_CODE: u16 = 0x08;
/// Selector of L1's data segment.
pub const SEL_DATA: u16 = 0x10;
/// Selector of L1's TSS (a 16-byte system descriptor in slots 3 and 4).
pub const SEL_TSS: u16 = 0x18;

/// 64-bit code segment, DPL 0: L=1, D=0, P=1, S=1, type 0xA (execute/read), G=1
/// (SDM 3.4.5.1: in IA-32e mode, L=1 with D=0 selects 64-bit mode).
pub const CODE64: u64 = 0x00AF_9A00_0000_FFFF;
/// Flat data segment, DPL 0: P=1, S=1, type 0x2 (read/write), D/B=1, G=1.
pub const DATA: u64 = 0x00CF_9200_0000_FFFF;

/// The two descriptor words of an available 64-bit TSS (type 0x9, P=1) at `base` with
/// `limit` (SDM 7.2.3, Figure 7-4).
#[must_use]
pub const fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    let low = (limit as u64 & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (0x89 << 40)
        | (((limit as u64 >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56);
    [low, base >> 32]
}

/// The 64-bit task-state segment (SDM 7.7, Figure 7-11). Packed: the RSP/IST fields sit at
/// 4-byte offsets.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Tss {
    reserved0: u32,
    /// Stack pointers for privilege levels 0-2.
    pub rsp: [u64; 3],
    reserved1: u64,
    /// Interrupt stack table, IST1..IST7.
    pub ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    /// Offset of the I/O permission bitmap; at or past the limit means "no bitmap".
    pub iomap_base: u16,
}

const _: () = assert!(size_of::<Tss>() == 104);

impl Tss {
    /// A TSS with no I/O bitmap and the given IST1 stack top.
    #[must_use]
    pub const fn new(ist1_top: u64) -> Self {
        Self {
            reserved0: 0,
            rsp: [0; 3],
            reserved1: 0,
            ist: [ist1_top, 0, 0, 0, 0, 0, 0],
            reserved2: 0,
            reserved3: 0,
            iomap_base: size_of::<Self>() as u16,
        }
    }
}

/// A 64-bit IDT gate descriptor (SDM 6.14.1, Figure 6-8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(size_of::<IdtEntry>() == 16);

impl IdtEntry {
    /// A present, DPL 0, 64-bit interrupt gate (type 0xE: IF is cleared on entry) to
    /// `handler` in segment `selector`, on IST stack `ist` (0 = none).
    #[must_use]
    pub const fn interrupt_gate(handler: u64, selector: u16, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector,
            ist: ist & 7,
            type_attr: 0x8E,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }

    /// The handler address encoded in the gate.
    #[must_use]
    pub const fn handler(&self) -> u64 {
        self.offset_low as u64 | (self.offset_mid as u64) << 16 | (self.offset_high as u64) << 32
    }
}

/// Vectors for which the CPU pushes an error code (SDM 6.13, Table 6-1).
#[must_use]
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// The operand of LGDT/LIDT.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug)]
pub struct TablePointer {
    /// Size of the table in bytes, minus one.
    pub limit: u16,
    /// Linear address of the table.
    pub base: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tss_descriptor_fields_land_where_the_sdm_says() {
        let [low, high] = tss_descriptor(0x1234_5678_9ABC_DEF0, 103);
        assert_eq!(low & 0xFFFF, 103, "limit 15:0");
        assert_eq!((low >> 16) & 0xFF_FFFF, 0xBC_DEF0, "base 23:0");
        assert_eq!((low >> 40) & 0xF, 0x9, "type: available 64-bit TSS");
        assert_eq!((low >> 47) & 1, 1, "present");
        assert_eq!((low >> 56) & 0xFF, 0x9A, "base 31:24");
        assert_eq!(high, 0x1234_5678, "base 63:32");
    }

    #[test]
    fn interrupt_gate_round_trips_the_handler() {
        let g = IdtEntry::interrupt_gate(0xFFFF_8000_0010_2345, SEL_CODE, 1);
        assert_eq!(g.handler(), 0xFFFF_8000_0010_2345);
        assert_eq!(g.type_attr, 0x8E);
        assert_eq!(g.ist, 1);
    }

    #[test]
    fn code_segment_is_64_bit() {
        assert_eq!((CODE64 >> 53) & 1, 1, "L");
        assert_eq!((CODE64 >> 54) & 1, 0, "D must be 0 with L=1");
        assert_eq!((CODE64 >> 47) & 1, 1, "P");
    }

    #[test]
    fn error_code_vectors() {
        let with: Vec<u8> = (0..32).filter(|&v| has_error_code(v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
    }
}
