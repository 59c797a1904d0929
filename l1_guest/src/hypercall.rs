//! L1's side of the hypercall convention ([`nestbench_abi::hypercall`]).

use core::arch::asm;
use nestbench_abi::hypercall::{Call, PORT, Status};

/// Issue hypercall `call` with up to four arguments. Returns L0's status word (RAX) and
/// the value L0 left in RDI.
pub fn hypercall(call: Call, a0: u64, a1: u64, a2: u64, a3: u64) -> (u64, u64) {
    let status: u64;
    let ret: u64;
    // SAFETY: a 32-bit OUT to the hypercall port. L0 handles it and only writes RAX and RDI,
    // which are declared as outputs. Arguments that are guest addresses are validated by L0.
    unsafe {
        asm!(
            "out dx, eax",
            in("dx") PORT,
            inout("rax") call as u64 => status,
            inout("rdi") a0 => ret,
            in("rsi") a1,
            in("r8") a2,
            in("r9") a3,
            options(nostack),
        );
    }
    (status, ret)
}

/// Hand `bytes` to L0's console. The bytes live in L1 memory, which is identity-mapped, so
/// their linear address is their guest-physical address.
pub fn console_write(bytes: &[u8]) -> Option<Status> {
    let (st, _) = hypercall(Call::ConsoleWrite, bytes.as_ptr() as u64, bytes.len() as u64, 0, 0);
    Status::from_raw(st)
}

/// Tell L0 we are done. Does not return: L0 stops the vCPU.
pub fn exit(status: u64) -> ! {
    hypercall(Call::Exit, status, 0, 0, 0);
    // L0 never resumes the vCPU after Exit; if it ever did, stay put without exits.
    loop {
        core::hint::spin_loop();
    }
}
