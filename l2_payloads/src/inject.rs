//! `inject`: events L1 injects into L2 at VM entry (SDM 27.6), delivered through L2's own
//! IDT, at CPL 0.
//!
//! L2 loads an IDT whose handlers record the vector (and #GP's error code) and return with
//! IRETQ. Each iteration times one `out 0xE0, eax` with EAX = the iteration number modulo 4:
//! one I/O exit, after which L1 advances RIP and injects `INJECTED_EVENTS[EAX]` (#UD, #GP
//! with error code 0x18, external interrupt 0x20, NMI) into the entry that resumes L2. The
//! handler runs before L2's next instruction, inside the timed span; L2 then checks that
//! exactly one event arrived, through the expected vector, with the expected error code. For
//! the external interrupt L2 sets RFLAGS.IF first (27.3.1.5 requires it for that injection),
//! outside the STI shadow and the timed span.

use nestbench_abi::payload::{Cpl, INJECTED_EVENTS, PAYLOAD_PORT, Setup, setup};
use nestbench_abi::vmx::ExitReason;
use nestbench_abi::vmx::intr::Event;

use crate::rt::Recorder;
use crate::{Manifest, Support, Twin, Vendors};

/// The manifest.
pub const MANIFEST: Manifest = Manifest {
    name: "inject",
    description: "out 0xE0, eax at CPL 0, after which L1 injects #UD, #GP, an external interrupt or an NMI: one I/O exit per iteration",
    cpl: Cpl::Kernel,
    exits_per_iteration: &[(ExitReason::IoInstruction, 1)],
    default_iterations: 1000,
    fixed_iterations: None,
    soft_engine: Support::Runs,
    vendors: Vendors::VmxOnly { reason: "its checks are of VMX event injection; L1's SVM EVENTINJ is not checked yet" },
    single_level: Twin::None {
        reason: "the events come from L1's VM-entry injection: single-level nothing injects them and every check fails",
    },
    setup: Setup::flags(setup::INJECT_EVENTS),
};

#[cfg(target_arch = "x86_64")]
mod idt {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    /// Events L2's handlers saw.
    pub static HANDLED: AtomicU64 = AtomicU64::new(0);
    /// The vector of the last one (`0xFFFF`: a vector this IDT does not expect).
    pub static LAST_VECTOR: AtomicU32 = AtomicU32::new(0);
    /// #GP's error code.
    pub static ERROR_CODE: AtomicU64 = AtomicU64::new(0);

    /// 256 16-byte gates (SDM Vol. 3A 6.14.1, Figure 6-8).
    #[repr(C, align(16))]
    struct Idt([u64; 512]);
    static mut IDT: Idt = Idt([0; 512]);

    // The handlers: each records its vector, #GP also its error code (which it pops, SDM
    // 6.13), and returns with IRETQ, which restores RFLAGS (IF included) and unblocks NMIs.
    core::arch::global_asm!(
        ".pushsection .text.nb_l2_idt, \"ax\"",
        ".global nb_l2_vector2",
        "nb_l2_vector2:",
        "mov dword ptr [rip + {last}], 2",
        "jmp 2f",
        ".global nb_l2_vector6",
        "nb_l2_vector6:",
        "mov dword ptr [rip + {last}], 6",
        "jmp 2f",
        ".global nb_l2_vector32",
        "nb_l2_vector32:",
        "mov dword ptr [rip + {last}], 0x20",
        "jmp 2f",
        ".global nb_l2_vector_other",
        "nb_l2_vector_other:",
        "mov dword ptr [rip + {last}], 0xFFFF",
        "jmp 2f",
        ".global nb_l2_vector13",
        "nb_l2_vector13:",
        "mov dword ptr [rip + {last}], 13",
        "push rax",
        "mov rax, [rsp + 8]",
        "mov [rip + {code}], rax",
        "pop rax",
        "add rsp, 8",
        "2:",
        "inc qword ptr [rip + {handled}]",
        "iretq",
        ".popsection",
        last = sym LAST_VECTOR,
        code = sym ERROR_CODE,
        handled = sym HANDLED,
    );

    unsafe extern "C" {
        fn nb_l2_vector2();
        fn nb_l2_vector6();
        fn nb_l2_vector13();
        fn nb_l2_vector32();
        fn nb_l2_vector_other();
    }

    /// Fill the IDT with 64-bit interrupt gates (type 0xE, present, DPL 0) on the current CS
    /// and load it.
    pub fn load() {
        let cs: u16;
        // SAFETY: reads CS into a register.
        unsafe { core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
        let idt = &raw mut IDT;
        for v in 0..256usize {
            let handler = match v {
                2 => nb_l2_vector2 as *const () as usize,
                6 => nb_l2_vector6 as *const () as usize,
                13 => nb_l2_vector13 as *const () as usize,
                0x20 => nb_l2_vector32 as *const () as usize,
                _ => nb_l2_vector_other as *const () as usize,
            } as u64;
            let low = (handler & 0xFFFF) | u64::from(cs) << 16 | 0x8E00 << 32 | (handler >> 16 & 0xFFFF) << 48;
            // SAFETY: L2 runs on one CPU and nothing else touches the IDT while it is built.
            unsafe {
                (*idt).0[2 * v] = low;
                (*idt).0[2 * v + 1] = handler >> 32;
            }
        }
        let descriptor: [u16; 5] = {
            let base = idt as u64;
            [4095, base as u16, (base >> 16) as u16, (base >> 32) as u16, (base >> 48) as u16]
        };
        // SAFETY: the descriptor names the 4 KiB IDT just built, which lives as long as L2.
        unsafe { core::arch::asm!("lidt [{0}]", in(reg) &descriptor, options(readonly, nostack, preserves_flags)) };
    }

    /// (events handled, last vector, #GP error code).
    pub fn seen() -> (u64, u32, u64) {
        (HANDLED.load(Ordering::SeqCst), LAST_VECTOR.load(Ordering::SeqCst), ERROR_CODE.load(Ordering::SeqCst))
    }
}

/// `iterations` timed `out`s, each followed by an injected event; `arg` is unused.
#[cfg(target_arch = "x86_64")]
pub fn run(recorder: &mut Recorder, iterations: u64, _arg: u64) {
    idt::load();
    for i in 0..iterations {
        let k = (i % INJECTED_EVENTS.len() as u64) as u32;
        let event = INJECTED_EVENTS[k as usize];
        let (handled, _, _) = idt::seen();
        let external = matches!(event, Event::ExternalInterrupt(_));
        if external {
            // SAFETY: sets RFLAGS.IF; the NOP ends the STI shadow before the OUT.
            unsafe { core::arch::asm!("sti", "nop", options(nomem, nostack)) };
        }
        // SAFETY: a port write that L1 intercepts; the injected event's handler runs before the
        // second TSC read and preserves every register.
        let (before, after) = unsafe {
            crate::timed!(
                "mov eax, {value:e}",
                "out {port}, eax";
                value = in(reg) k,
                port = const PAYLOAD_PORT,
            )
        };
        if external {
            // SAFETY: clears RFLAGS.IF again.
            unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
        }
        recorder.record(before, after);
        let (now, vector, code) = idt::seen();
        let code_ok = match event {
            Event::HardwareException { error_code: Some(c), .. } => code == u64::from(c),
            _ => true,
        };
        if now != handled + 1 || vector != u32::from(event.vector()) || !code_ok {
            recorder.fail();
        }
    }
}
