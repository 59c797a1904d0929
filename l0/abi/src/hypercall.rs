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

abi_enum! {
    /// Hypercall numbers (EAX of the OUT).
    pub enum Call: u32 {
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
        /// A VMX operation of the soft engine: RDI = [`crate::softvmx::VmxOp`], operands in
        /// RSI, R8, R9. L0 returns the [`crate::softvmx::VmxResult`] word in RDI and a value
        /// (VMREAD, VMPTRST) in RSI. Only served when L0 advertises
        /// [`crate::cpuid::FEATURE_SOFT_VMX`].
        Vmx = 5,
        /// Register the exit-trace ring ([`crate::trace`]): RDI = its guest-physical address
        /// (4 KiB-aligned, an initialised [`crate::trace::RingHeader`] with head, tail and
        /// dropped 0), RSI = capacity in records (a power of two, at most
        /// [`crate::trace::MAX_CAPACITY`]). L0 answers [`Status::BadArgument`] for a bad
        /// capacity or header and [`Status::BadAddress`] for a ring outside L1's memory.
        TraceRing = 6,
    }
}

abi_enum! {
    /// The status L0 leaves in RAX after a hypercall.
    pub enum Status: u64 {
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
}

/// The longest console write L0 accepts in one call.
pub const CONSOLE_MAX: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_decode_exactly_the_defined_ones() {
        for c in [Call::ConsoleWrite, Call::Exit, Call::Report, Call::Exception, Call::Vmx, Call::TraceRing] {
            assert_eq!(Call::from_raw(c as u32), Some(c));
        }
        assert_eq!(Call::from_raw(0), None);
        assert_eq!(Call::from_raw(7), None);
        assert_eq!(Status::from_raw(Status::BadAddress as u64), Some(Status::BadAddress));
        assert_eq!(Status::from_raw(u64::MAX), None);
    }
}
