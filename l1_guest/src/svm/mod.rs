//! Where L1's SVM backend will sit (AMD64 APM Vol. 2, chapter 15 "Secure Virtual Machine").
//! Nothing here runs yet: L1 is VMX-only today, and no code in this module pretends otherwise.
//!
//! The backend implements [`crate::vcpu::Vcpu`] as [`crate::vmx::vcpu::VmxVcpu`] does for
//! VMX, and the run loop ([`crate::exits::run_loop`]) and the handlers of the common exits
//! then work unchanged:
//!
//! * `run`: VMRUN with the VMCB's physical address in RAX (APM 15.5), L2's other GPRs loaded
//!   from the [`crate::vcpu::GuestRegs`] and saved back after #VMEXIT (RAX, RSP, RIP, RFLAGS
//!   are in the VMCB's state-save area, APM 15.5.1), returning the exit decoded from EXITCODE,
//!   EXITINFO1, EXITINFO2 (APM 15.7, Appendix C) into [`crate::exit::Exit`]: IOIO into
//!   `Exit::Io` (EXITINFO1 carries port, size, direction, string, REP, APM 15.10.2), HLT,
//!   CPUID, MSR (EXITINFO1 0 read, 1 write) into `MsrRead`/`MsrWrite`, VMMCALL into
//!   `Hypercall`, NPF (EXITINFO1 the #PF-style error code, EXITINFO2 the guest-physical
//!   address, APM 15.25.6) into `NestedPageFault`, SHUTDOWN into `TripleFault`, anything
//!   else into `Other`.
//! * `insn_len`/`set_rip`: the next-RIP save (APM 15.7.1, NRIP_SAVE) instead of the VM-exit
//!   instruction length.
//! * the VMX-only exit kinds (EPT misconfiguration, the VMX-preemption timer, interrupt
//!   window) are never produced, so its `vmx_only_exit` is unreachable.
//!
//! Backend selection ([`crate::vmx::select_backend`]) would add CPUID 8000_0001h:ECX.SVM.
