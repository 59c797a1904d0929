//! Control-register and IA32_EFER bits that more than one level sets or checks (L0's VM
//! set-up and its soft engine's VM-entry checks, L1's VMX set-up, the Bochs ROM): defined once
//! here. CR0: SDM Vol. 3A, 2.5 "Control Registers", Figure 2-7; CR4: the same section;
//! IA32_EFER: SDM Vol. 3A, 2.2.1 "Extended Feature Enable Register", and Vol. 4, Table 2-2.

/// CR0.PE (bit 0): protection enable.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.MP (bit 1): monitor coprocessor.
pub const CR0_MP: u64 = 1 << 1;
/// CR0.ET (bit 4): extension type.
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE (bit 5): numeric error.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.WP (bit 16): write protect.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG (bit 31): paging.
pub const CR0_PG: u64 = 1 << 31;

/// CR4.PAE (bit 5): physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4 bits 10:0: VME, PVI, TSD, DE, PSE, PAE, MCE, PGE, PCE, OSFXSR, OSXMMEXCPT.
pub const CR4_VME_TO_OSXMMEXCPT: u64 = 0x7FF;
/// CR4.VMXE (bit 13): VMX enable.
pub const CR4_VMXE: u64 = 1 << 13;
/// CR4.PCIDE (bit 17): process-context identifiers.
pub const CR4_PCIDE: u64 = 1 << 17;

/// IA32_EFER.SCE (bit 0): SYSCALL enable.
pub const EFER_SCE: u64 = 1 << 0;
/// IA32_EFER.LME (bit 8): IA-32e mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// IA32_EFER.LMA (bit 10): IA-32e mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// IA32_EFER.NXE (bit 11): execute-disable enable.
pub const EFER_NXE: u64 = 1 << 11;
/// IA32_EFER.SVME (bit 12): SVM enabled (AMD APM Vol. 2, 15.4).
pub const EFER_SVME: u64 = 1 << 12;
/// The IA32_EFER bits an Intel 64 processor defines; every other bit is reserved (Vol. 4,
/// Table 2-2).
pub const EFER_DEFINED: u64 = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
