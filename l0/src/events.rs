//! What a run produces: the protocol's types ([`nestbench_protocol::events`], defined once
//! for both ends of the stream), and the conversions that need KVM's types.

use kvm_bindings::kvm_regs;
pub use nestbench_protocol::events::*;

/// L1's general registers as KVM returns them, for a report.
#[must_use]
pub fn gprs(r: &kvm_regs) -> Gprs {
    Gprs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rbp: r.rbp,
        rsp: r.rsp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}
