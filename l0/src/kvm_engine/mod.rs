//! The `kvm` engine: L1 runs on the host kernel's nested VMX. L0 passes VMX through to L1
//! ([`caps`]), L1 uses its hardware backend (real VMXON, VMREAD, VMLAUNCH), and KVM's nested
//! VMX provides VMCS shadowing and shadow EPT. L2's exits never reach L0's userspace unless
//! KVM forwards them (I/O L1 does not intercept, ...): what L0 can say about them comes from
//! KVM's statistics ([`attribution`]), the exits tagged with KVM_RUN_X86_GUEST_MODE, and,
//! where tracefs is mounted and writable, the kvm_exit / kvm_nested_vmexit /
//! kvm_nested_vmexit_inject / kvm_nested_vmenter tracepoints ([`tracefs`],
//! [`tracepoints`]).
//!
//! Where KVM offers no VMX (this project's development hosts: AMD with `kvm_pvm`), the
//! engine refuses with the reason (`caps::NoNesting`), and every kvm-engine test and bench
//! entry skips with it. Everything here that does not need nested hardware is tested with
//! fixtures (`l0/tests/fixtures/kvm/`).

pub mod attribution;
pub mod caps;
pub mod tracefs;
pub mod tracepoints;
