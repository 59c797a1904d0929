//! One vCPU: KVM_RUN turned into an owned [`Exit`], registers through KVM's sync regs, and
//! a kick that gets the vCPU out of KVM_RUN from another thread.
//!
//! The kick (in the manner of Firecracker's vCPU thread): a real-time signal whose handler
//! sets `kvm_run.immediate_exit` through a thread-local pointer. KVM_RUN checks
//! `immediate_exit` on entry and a pending signal before each guest entry, so a kick that
//! lands before, during or just before KVM_RUN makes it return `EINTR` — no lost wake-up.
//! [`Vcpu::run`] clears `immediate_exit` again after such a return.

use std::cell::Cell;
use std::sync::Once;

use kvm_bindings::{KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT, kvm_regs, kvm_run, kvm_sregs};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};

/// Errors of vCPU operations.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A vCPU ioctl failed.
    #[error("{op}: {source}")]
    Ioctl {
        /// The operation.
        op: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// Installing the kick signal handler failed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

/// What one KVM_RUN returned, copied out of `kvm_run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// KVM_EXIT_IO, OUT: `count` accesses of `size` bytes each, data in order.
    IoOut {
        /// Port.
        port: u16,
        /// Access size (1, 2 or 4).
        size: u8,
        /// Repetitions carried in this exit (string I/O).
        count: u32,
        /// `size * count` bytes.
        data: Vec<u8>,
    },
    /// KVM_EXIT_IO, IN: complete it with [`Vcpu::set_in_data`] before the next run.
    IoIn {
        /// Port.
        port: u16,
        /// Access size.
        size: u8,
        /// Repetitions.
        count: u32,
    },
    /// KVM_EXIT_MMIO read: complete it with [`Vcpu::set_mmio_data`].
    MmioRead {
        /// Guest-physical address.
        gpa: u64,
        /// Access length.
        len: u32,
    },
    /// KVM_EXIT_MMIO write.
    MmioWrite {
        /// Guest-physical address.
        gpa: u64,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// KVM_EXIT_HLT.
    Hlt,
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    Shutdown,
    /// KVM_EXIT_X86_RDMSR.
    RdMsr {
        /// MSR index.
        index: u32,
    },
    /// KVM_EXIT_X86_WRMSR.
    WrMsr {
        /// MSR index.
        index: u32,
        /// Value written.
        data: u64,
    },
    /// KVM_EXIT_INTERNAL_ERROR (suberror 1 = emulation failure).
    InternalError {
        /// `internal.suberror`.
        suberror: u32,
        /// `internal.data[..ndata]`.
        data: Vec<u64>,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// KVM_EXIT_DEBUG (single-step, breakpoints).
    Debug,
    /// KVM_RUN returned EINTR/EAGAIN: a kick or another signal.
    Interrupted,
    /// Any other exit, by KVM's reason number.
    Other(u32),
}

thread_local! {
    /// `&kvm_run.immediate_exit` of the vCPU this thread runs, for the kick handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: the pointer was registered by this thread's `Vcpu::bind_to_current_thread`
        // and points into the vCPU's kvm_run mapping, which lives as long as the Vcpu; the
        // Vcpu unregisters it on drop. A volatile byte store is async-signal-safe.
        unsafe { p.write_volatile(1) };
    }
}

/// The signal used to kick vCPU threads.
#[must_use]
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 1
}

fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal);
    });
    result
}

/// A handle that kicks one vCPU thread out of KVM_RUN.
#[derive(Clone, Copy, Debug)]
pub struct Kicker {
    thread: libc::pthread_t,
}

// SAFETY: a pthread_t is an opaque thread identifier; pthread_kill may be called on it from
// any thread while the target thread exists (the owner of the Vcpu keeps it alive).
unsafe impl Send for Kicker {}

impl Kicker {
    /// A kicker of the calling thread (installs the kick handler if no vCPU did yet): for a
    /// second source of kicks on a thread that runs vCPUs (the soft engine's preemption
    /// timer), whose kick lands on that thread's current kick target.
    pub fn current_thread() -> Result<Self, VcpuError> {
        install_kick_handler()?;
        // SAFETY: pthread_self has no preconditions.
        Ok(Self { thread: unsafe { libc::pthread_self() } })
    }

    /// Send the kick signal. Harmless if the vCPU is not in KVM_RUN: the next KVM_RUN then
    /// returns at once.
    pub fn kick(&self) {
        // SAFETY: `thread` is a live thread of this process (see the Send impl); the signal
        // has a handler installed, so it cannot kill the process.
        unsafe { libc::pthread_kill(self.thread, kick_signal()) };
    }
}

/// One vCPU.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    sync_regs: bool,
    sync_sregs: bool,
    bound: bool,
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Ioctl { op, source }
}

impl Vcpu {
    /// Wrap a vCPU; `sync_regs` when the host has KVM_CAP_SYNC_REGS (registers then travel
    /// in kvm_run instead of separate ioctls).
    pub fn new(mut fd: VcpuFd, sync_regs: bool) -> Self {
        if sync_regs {
            fd.set_sync_valid_reg(SyncReg::Register);
        }
        Self { fd, sync_regs, sync_sregs: false, bound: false }
    }

    /// Also carry the special registers in kvm_run (no KVM_GET/SET_SREGS ioctl per exit):
    /// for vCPUs whose segment and control registers L0 reads or writes at every exit.
    pub fn enable_sync_sregs(&mut self) {
        if self.sync_regs {
            self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
            self.sync_sregs = true;
        }
    }

    /// The raw vCPU fd (for statistics and setup ioctls).
    #[must_use]
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Make the calling thread the one that runs this vCPU, and return its kicker.
    pub fn bind_to_current_thread(&mut self) -> Result<Kicker, VcpuError> {
        install_kick_handler()?;
        let p: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|c| c.set(p));
        self.bound = true;
        // SAFETY: pthread_self has no preconditions.
        Ok(Kicker { thread: unsafe { libc::pthread_self() } })
    }

    /// Make this vCPU the one the calling thread's kick lands on (for a thread that runs
    /// two vCPUs in turn, as the soft engine runs L1 and L2). The kick handler must have been
    /// installed by [`Vcpu::bind_to_current_thread`] of a vCPU on this thread; call this
    /// before each KVM_RUN of a different vCPU than the last one, and call it again on the
    /// bound vCPU before this one is dropped.
    pub fn make_kick_target(&mut self) {
        let p: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|c| c.set(p));
    }

    fn run_struct(&mut self) -> &mut kvm_run {
        self.fd.get_kvm_run()
    }

    /// Whether the last KVM_RUN returned while the vCPU was in guest mode (L2 running under
    /// KVM's nested virtualization): KVM_RUN_X86_GUEST_MODE in kvm_run.flags. Kernels that
    /// predate the flag never set it.
    pub fn in_guest_mode(&mut self) -> bool {
        u32::from(self.run_struct().flags) & kvm_bindings::KVM_RUN_X86_GUEST_MODE != 0
    }

    /// KVM_RUN once.
    pub fn run(&mut self) -> Result<Exit, VcpuError> {
        let exit = match self.fd.run() {
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::IoIn(..)) => self.io_exit(),
            Ok(VcpuExit::MmioRead(gpa, data)) => Exit::MmioRead { gpa, len: data.len() as u32 },
            Ok(VcpuExit::MmioWrite(gpa, data)) => Exit::MmioWrite { gpa, data: data.to_vec() },
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::X86Rdmsr(m)) => Exit::RdMsr { index: m.index },
            Ok(VcpuExit::X86Wrmsr(m)) => Exit::WrMsr { index: m.index, data: m.data },
            Ok(VcpuExit::InternalError) => {
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the live
                // union member.
                let internal = unsafe { self.run_struct().__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                Exit::InternalError { suberror: internal.suberror, data: internal.data[..n].to_vec() }
            }
            Ok(VcpuExit::FailEntry(reason, _)) => Exit::FailEntry { reason },
            Ok(VcpuExit::Debug(_)) => Exit::Debug,
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::Unsupported(r)) => Exit::Other(r),
            Ok(_) => Exit::Other(self.run_struct().exit_reason),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(source) => return Err(VcpuError::Ioctl { op: "KVM_RUN", source }),
        };
        if exit == Exit::Interrupted {
            self.fd.set_kvm_immediate_exit(0);
        }
        Ok(exit)
    }

    fn io_exit(&mut self) -> Exit {
        let run = self.run_struct();
        // SAFETY: exit_reason is KVM_EXIT_IO, so `io` is the live union member.
        let io = unsafe { run.__bindgen_anon_1.io };
        let len = io.size as usize * io.count as usize;
        let base: *const u8 = (run as *const kvm_run).cast();
        // SAFETY: KVM places `size * count` bytes at `data_offset` inside the kvm_run mapping
        // (the mapping is KVM_GET_VCPU_MMAP_SIZE bytes and KVM bounds the data to it).
        let data = unsafe { std::slice::from_raw_parts(base.add(io.data_offset as usize), len) };
        match u32::from(io.direction) {
            KVM_EXIT_IO_OUT => Exit::IoOut { port: io.port, size: io.size, count: io.count, data: data.to_vec() },
            KVM_EXIT_IO_IN => Exit::IoIn { port: io.port, size: io.size, count: io.count },
            d => Exit::Other(0x1000 + d),
        }
    }

    /// Fill the data of a pending IN (`size * count` bytes; extra bytes are ignored, missing
    /// ones are zero) before the next [`Vcpu::run`].
    pub fn set_in_data(&mut self, bytes: &[u8]) {
        let run = self.run_struct();
        // SAFETY: called after an IN exit, so `io` is the live union member.
        let io = unsafe { run.__bindgen_anon_1.io };
        let len = io.size as usize * io.count as usize;
        let base: *mut u8 = (run as *mut kvm_run).cast();
        // SAFETY: as in `io_exit`: the data area lies inside the kvm_run mapping.
        let dst = unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), len) };
        dst.fill(0);
        let n = len.min(bytes.len());
        dst[..n].copy_from_slice(&bytes[..n]);
    }

    /// Fill the data of a pending MMIO read before the next [`Vcpu::run`].
    pub fn set_mmio_data(&mut self, bytes: &[u8]) {
        let run = self.run_struct();
        // SAFETY: called after an MMIO exit, so `mmio` is the live union member.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        let n = (mmio.len as usize).min(mmio.data.len()).min(bytes.len());
        mmio.data = [0; 8];
        mmio.data[..n].copy_from_slice(&bytes[..n]);
    }

    /// Answer a pending KVM_EXIT_X86_RDMSR: `Ok(value)`, or `Err(())` to inject #GP.
    pub fn set_rdmsr_result(&mut self, result: Result<u64, ()>) {
        let run = self.run_struct();
        // SAFETY: called after an RDMSR exit, so `msr` is the live union member.
        let msr = unsafe { &mut run.__bindgen_anon_1.msr };
        match result {
            Ok(v) => {
                msr.data = v;
                msr.error = 0;
            }
            Err(()) => msr.error = 1,
        }
    }

    /// Answer a pending KVM_EXIT_X86_WRMSR: `true` accepts it, `false` injects #GP.
    pub fn set_wrmsr_result(&mut self, ok: bool) {
        let run = self.run_struct();
        // SAFETY: called after a WRMSR exit, so `msr` is the live union member.
        let msr = unsafe { &mut run.__bindgen_anon_1.msr };
        msr.error = u8::from(!ok);
    }

    /// Ask the next KVM_RUN to return at once (to complete a pending operation without
    /// running the guest: Documentation/virt/kvm/api.rst, `immediate_exit`).
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// Ask KVM to return with KVM_EXIT_IRQ_WINDOW_OPEN as soon as the guest can take an
    /// external interrupt (`kvm_run.request_interrupt_window`, for VMs without an in-kernel
    /// irqchip: Documentation/virt/kvm/api.rst).
    pub fn set_request_interrupt_window(&mut self, on: bool) {
        self.run_struct().request_interrupt_window = u8::from(on);
    }

    /// `kvm_run.ready_for_interrupt_injection` and `if_flag` after the last KVM_RUN.
    pub fn interrupt_readiness(&mut self) -> (bool, bool) {
        let run = self.run_struct();
        (run.ready_for_interrupt_injection != 0, run.if_flag != 0)
    }

    /// KVM_INTERRUPT: queue external interrupt `vector` (VMs without an in-kernel irqchip).
    pub fn interrupt(&self, vector: u8) -> Result<(), VcpuError> {
        vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_bindings::kvm_interrupt);
        let irq = kvm_bindings::kvm_interrupt { irq: u32::from(vector) };
        // SAFETY: KVM_INTERRUPT on a vCPU fd reads one `struct kvm_interrupt`, which `irq` is,
        // and writes nothing back.
        let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, KVM_INTERRUPT(), &irq) };
        if r < 0 { Err(VcpuError::Ioctl { op: "KVM_INTERRUPT", source: kvm_ioctls::Error::last() }) } else { Ok(()) }
    }

    /// The general registers (from sync regs when available).
    pub fn regs(&self) -> Result<kvm_regs, VcpuError> {
        if self.sync_regs { Ok(self.fd.sync_regs().regs) } else { self.fd.get_regs().map_err(ioctl("KVM_GET_REGS")) }
    }

    /// Set the general registers (through sync regs when available, applied at the next
    /// KVM_RUN before any pending completion).
    pub fn set_regs(&mut self, regs: &kvm_regs) -> Result<(), VcpuError> {
        if self.sync_regs {
            self.fd.sync_regs_mut().regs = *regs;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
            Ok(())
        } else {
            self.fd.set_regs(regs).map_err(ioctl("KVM_SET_REGS"))
        }
    }

    /// Set the general registers with the ioctl, now (before the first run, when sync regs
    /// hold nothing yet).
    pub fn set_regs_now(&mut self, regs: &kvm_regs) -> Result<(), VcpuError> {
        self.fd.set_regs(regs).map_err(ioctl("KVM_SET_REGS"))
    }

    /// The general registers with the ioctl (never stale).
    pub fn regs_now(&self) -> Result<kvm_regs, VcpuError> {
        self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))
    }

    /// The special registers with the ioctl (never stale, also before the first run).
    pub fn sregs_now(&self) -> Result<kvm_sregs, VcpuError> {
        self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))
    }

    /// The special registers (from sync regs after an exit when enabled).
    pub fn sregs(&self) -> Result<kvm_sregs, VcpuError> {
        if self.sync_sregs {
            Ok(self.fd.sync_regs().sregs)
        } else {
            self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))
        }
    }

    /// The exception KVM holds for the next entry (injected, or pending where
    /// KVM_CAP_EXCEPTION_PAYLOAD is on), by vector.
    pub fn queued_exception(&self) -> Result<Option<u8>, VcpuError> {
        let ev = self.fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
        Ok((ev.exception.injected != 0 || ev.exception.pending != 0).then_some(ev.exception.nr))
    }

    /// Single-step the vCPU (KVM_SET_GUEST_DEBUG with KVM_GUESTDBG_SINGLESTEP): each
    /// instruction it completes is a KVM_EXIT_DEBUG ([`Exit::Debug`]).
    ///
    /// KVM sets RFLAGS.TF for it and keeps TF through a later register write only while RIP
    /// is the one of this call (`__kvm_set_rflags()`, `singlestep_rip`): general registers
    /// still waiting in sync regs are applied first, so that the step starts at their RIP.
    pub fn set_single_step(&mut self, on: bool) -> Result<(), VcpuError> {
        if on && self.sync_regs && self.run_struct().kvm_dirty_regs & u64::from(kvm_bindings::KVM_SYNC_X86_REGS) != 0 {
            let regs = self.fd.sync_regs().regs;
            self.fd.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
            self.fd.clear_sync_dirty_reg(SyncReg::Register);
        }
        let control = if on { kvm_bindings::KVM_GUESTDBG_ENABLE | kvm_bindings::KVM_GUESTDBG_SINGLESTEP } else { 0 };
        let dbg = kvm_bindings::kvm_guest_debug { control, ..Default::default() };
        self.fd.set_guest_debug(&dbg).map_err(ioctl("KVM_SET_GUEST_DEBUG"))
    }

    /// The vCPU's pending and injected events (KVM_GET_VCPU_EVENTS).
    pub fn events(&self) -> Result<kvm_bindings::kvm_vcpu_events, VcpuError> {
        self.fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))
    }

    /// Set them (KVM_SET_VCPU_EVENTS).
    pub fn set_events(&self, events: &kvm_bindings::kvm_vcpu_events) -> Result<(), VcpuError> {
        self.fd.set_vcpu_events(events).map_err(ioctl("KVM_SET_VCPU_EVENTS"))
    }

    /// Drop the exception KVM holds for the next entry (KVM_SET_VCPU_EVENTS with it neither
    /// injected nor pending, everything else as read).
    pub fn clear_queued_exception(&self) -> Result<(), VcpuError> {
        let mut ev = self.fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
        ev.exception.injected = 0;
        ev.exception.pending = 0;
        self.fd.set_vcpu_events(&ev).map_err(ioctl("KVM_SET_VCPU_EVENTS"))
    }

    /// Set the special registers (through sync regs when enabled, applied at the next
    /// KVM_RUN; KVM then skips the MMU reset when CR0/CR3/CR4/EFER are unchanged).
    pub fn set_sregs(&mut self, sregs: &kvm_sregs) -> Result<(), VcpuError> {
        if self.sync_sregs {
            self.fd.sync_regs_mut().sregs = *sregs;
            self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            Ok(())
        } else {
            self.fd.set_sregs(sregs).map_err(ioctl("KVM_SET_SREGS"))
        }
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        if self.bound {
            IMMEDIATE_EXIT.with(|c| {
                let ours: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
                if c.get() == ours {
                    c.set(std::ptr::null_mut());
                }
            });
        }
    }
}
