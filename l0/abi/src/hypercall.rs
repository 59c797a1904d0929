//! The L1 -> L0 hypercall convention.
//!
//! A hypercall is one `out dx, eax` with DX = [`PORT`] and EAX = the call number. Arguments
//! are in RDI, RSI, R8 and R9 (L0 reads them through KVM's sync regs, no extra ioctl). L0
//! writes the [`Status`] into RAX before the guest continues after the OUT; calls that return
//! a value put it in RDI. Port I/O rather than VMCALL: on the development hosts' KVM a VMCALL
//! hangs the vCPU inside KVM_RUN (see HOST-NOTES), and on hardware a VMCALL from L1 would be
//! a VM exit to the real hypervisor, not to L0.
//!
//! Every guest-physical address argument is checked by L0 against guest memory; a bad one
//! returns [`Status::BadAddress`] and is recorded, it never crashes L0.

/// The I/O port the hypercall OUT targets (32-bit access).
pub const PORT: u16 = 0x0510;

/// Hypercall numbers (EAX of the OUT).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Write console text: RDI = guest-physical address of UTF-8 bytes, RSI = length
    /// (at most [`CONSOLE_MAX`]). The guest buffers a line and flushes it with one call.
    ConsoleWrite = 1,
    /// The guest is done: RDI = exit status (0 = success). L0 stops the vCPU.
    Exit = 2,
    /// A structured report: RDI = [`crate::report::ReportKind`], RSI = guest-physical
    /// address, R8 = length in bytes (must equal the report type's size).
    Report = 3,
    /// An unexpected CPU exception in the guest: RDI = guest-physical address of a
    /// [`crate::report::ExceptionReport`]. Terminal: L0 stops the vCPU and reports it.
    Exception = 4,
}

impl Call {
    /// Decode a call number, or `None` for an unknown one.
    #[must_use]
    pub fn from_u32(nr: u32) -> Option<Self> {
        Some(match nr {
            1 => Self::ConsoleWrite,
            2 => Self::Exit,
            3 => Self::Report,
            4 => Self::Exception,
            _ => return None,
        })
    }
}

/// The status L0 leaves in RAX after a hypercall.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The call was carried out.
    Ok = 0,
    /// EAX held no known call number.
    UnknownCall = 1,
    /// An address argument (with its length) does not lie inside guest memory.
    BadAddress = 2,
    /// An argument other than an address is out of range (a length too large, an unknown
    /// report kind, a report of the wrong size).
    BadArgument = 3,
    /// The access was not a 32-bit OUT (IN, or another width).
    BadAccess = 4,
}

impl Status {
    /// Decode a status word returned in RAX.
    #[must_use]
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => Self::Ok,
            1 => Self::UnknownCall,
            2 => Self::BadAddress,
            3 => Self::BadArgument,
            4 => Self::BadAccess,
            _ => return None,
        })
    }
}

/// The longest console write L0 accepts in one call.
pub const CONSOLE_MAX: u64 = 4096;
