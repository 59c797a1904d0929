//! The bare-metal L1 binary: entry point, descriptor tables, exception stubs, panic handler
//! and the boot flow. Everything testable lives in the `l1` library.
//!
//! L0 enters at `_start` in 64-bit mode, CPL 0, paging on (identity map of the first GiB),
//! RDI = address of the [`BootInfo`], interrupts off. On Bochs (no nestbench L0) a reset
//! ROM enters the same way, and L1's output goes to port 0xE9 instead of hypercalls
//! ([`l1::hypercall`] decides at boot).
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;

use l1::console::Console;
use l1::descriptors::{self, IdtEntry, TablePointer, Tss};
use l1::runner::HostTables;
use l1::static_cell::TakeOnce;
use l1::{hypercall, println, runner, scenarios, x86};
use nestbench_abi::boot::{BOOT_MAGIC, BootInfo, EXIT_BAD_BOOT_INFO, Scenario};
use nestbench_abi::report::{
    ExceptionReport, MSR_FEATURE_CONTROL, MSR_MTRR_DEF_TYPE, MsrProbe, MsrStatus, ProbeReport, ReportKind,
    VMX_MSR_COUNT, VMX_MSR_FIRST,
};
use nestbench_abi::{ABI_VERSION, Pod, cpuid as hv};

const STACK_SIZE: usize = 64 * 1024;
/// A stack: memory only the CPU uses, through RSP. No Rust reference to its bytes is ever
/// made; only its address is taken.
#[repr(C, align(16))]
struct Stack(UnsafeCell<[u8; STACK_SIZE]>);

// SAFETY: Rust code never reads or writes the bytes (see the type), so sharing the static
// shares nothing but an address.
unsafe impl Sync for Stack {}

impl Stack {
    /// The address just past the stack (its initial RSP).
    fn top(&self) -> u64 {
        self.0.get() as u64 + STACK_SIZE as u64
    }
}

static MAIN_STACK: Stack = Stack(UnsafeCell::new([0; STACK_SIZE]));
static FAULT_STACK: Stack = Stack(UnsafeCell::new([0; STACK_SIZE]));
// The descriptor tables the CPU reads from their fixed addresses, filled once at boot.
static GDT: TakeOnce<[u64; 5]> = TakeOnce::new([0; 5]);
static TSS: TakeOnce<Tss> = TakeOnce::new(Tss::new(0));
static IDT: TakeOnce<[IdtEntry; 32]> = TakeOnce::new([IdtEntry::interrupt_gate(0, 0, 0); 32]);

global_asm!(
    ".section .text.start, \"ax\"",
    ".global _start",
    "_start:",
    // RDI (boot info) is preserved for l1_main.
    "lea rsp, [rip + {stack} + {size}]",
    "xor ebp, ebp",
    "call {main}",
    "ud2",
    stack = sym MAIN_STACK,
    size = const STACK_SIZE,
    main = sym l1_main,
);

// Exception stubs (SDM 6.14.2, Figure 6-9: the 64-bit interrupt stack frame). Each stub
// makes the frame uniform (a zero error code where the CPU pushes none), pushes the vector,
// and joins `isr_common`, which saves the GPRs and calls `l1_exception(&mut Frame)`. The
// handler returns only to resume a fault-tolerant instruction (rdmsr_safe).
global_asm!(
    ".section .text",
    ".irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31",
    "isr_\\n:",
    "push 0",
    "push \\n",
    "jmp isr_common",
    ".endr",
    ".irp n, 8,10,11,12,13,14,17,21,29,30",
    "isr_\\n:",
    "push \\n",
    "jmp isr_common",
    ".endr",
    "isr_common:",
    "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
    "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    "mov rdi, rsp",
    "cld",
    "call {handler}",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
    "add rsp, 16",
    "iretq",
    ".section .rodata",
    ".balign 8",
    ".global isr_table",
    "isr_table:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".quad isr_\\n",
    ".endr",
    handler = sym l1_exception,
);

// SAFETY: `isr_table` is defined in the global_asm! above as 32 quadwords in .rodata,
// matching this declaration.
unsafe extern "C" {
    /// The 32 exception stub addresses, defined in the `global_asm!` above.
    static isr_table: [u64; 32];
}

/// The stack as `isr_common` leaves it (lowest address first).
#[repr(C)]
struct Frame {
    /// R15 down to RAX, in push order reversed.
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Exception dispatcher. A #GP inside `rdmsr_safe` resumes at its recovery label; anything
/// else is reported (the Exception hypercall, terminal on a nestbench L0; an exception line
/// on port 0xE9), then L1 exits.
extern "C" fn l1_exception(frame: &mut Frame) {
    if frame.vector == 13
        && let Some(rip) = x86::take_recovery_rip()
    {
        frame.rip = rip;
        return;
    }
    let report = ExceptionReport {
        vector: frame.vector,
        error_code: frame.error_code,
        rip: frame.rip,
        cs: frame.cs,
        rflags: frame.rflags,
        rsp: frame.rsp,
        cr2: x86::read_cr2(),
        gprs: [
            frame.rax, frame.rbx, frame.rcx, frame.rdx, frame.rsi, frame.rdi, frame.rbp, frame.r8, frame.r9, frame.r10,
            frame.r11, frame.r12, frame.r13, frame.r14, frame.r15,
        ],
    };
    hypercall::exception(&report);
    hypercall::exit(0xEE);
}

/// Load L1's own GDT (code, data, TSS), reload every segment register, load TR and the IDT
/// (SDM 3.5.1, 7.2.4, 6.10). #DF runs on its own stack (IST1) so a stack overflow is
/// reported, not a triple fault. Returns where the tables are (the VMCS's host state).
fn install_descriptor_tables() -> HostTables {
    let (Some(gdt), Some(tss), Some(idt)) = (GDT.take(), TSS.take(), IDT.take()) else {
        panic!("the descriptor tables are installed once")
    };
    *tss = Tss::new(FAULT_STACK.top());
    let tss_base = core::ptr::from_mut(tss) as u64;
    let tss = descriptors::tss_descriptor(tss_base, size_of::<Tss>() as u32 - 1);
    *gdt = [0, descriptors::CODE64, descriptors::DATA, tss[0], tss[1]];

    // SAFETY: `isr_table` is a read-only table of 32 addresses defined in global_asm above.
    let stubs = unsafe { &isr_table };
    for (v, e) in idt.iter_mut().enumerate() {
        let ist = if v == 8 { 1 } else { 0 };
        *e = IdtEntry::interrupt_gate(stubs[v], descriptors::SEL_CODE, ist);
    }

    let gdtr = TablePointer { limit: (size_of::<[u64; 5]>() - 1) as u16, base: gdt.as_ptr() as u64 };
    let idtr = TablePointer { limit: (size_of::<[IdtEntry; 32]>() - 1) as u16, base: idt.as_ptr() as u64 };
    // SAFETY: the tables are statics that live forever and are filled in above with valid
    // descriptors; the far return reloads CS with the 64-bit code selector of the new GDT and
    // continues at label 2; the data selector is a flat writable segment; the TSS descriptor is
    // an available 64-bit TSS.
    unsafe {
        asm!(
            "lgdt [{gdtr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "mov fs, {ds:x}",
            "mov gs, {ds:x}",
            "ltr {tr:x}",
            "lidt [{idtr}]",
            gdtr = in(reg) &gdtr,
            idtr = in(reg) &idtr,
            cs = const descriptors::SEL_CODE as u64,
            ds = in(reg) u64::from(descriptors::SEL_DATA),
            tr = in(reg) u64::from(descriptors::SEL_TSS),
            tmp = out(reg) _,
        );
    }
    HostTables { gdt_base: gdt.as_ptr() as u64, idt_base: idt.as_ptr() as u64, tss_base }
}

fn probe_msr(index: u32) -> MsrProbe {
    match x86::rdmsr_safe(index) {
        Ok(value) => MsrProbe { index, status: MsrStatus::Ok as u32, value },
        Err(()) => MsrProbe { index, status: MsrStatus::GeneralProtection as u32, value: 0 },
    }
}

/// Probe what this vCPU offers: CPUID (vendor, VMX/SVM bits, nestbench's hypervisor leaves),
/// control registers, MTRR default type, and the VMX capability MSRs. The VMX MSRs are read
/// only when CPUID.1:ECX.VMX is set: otherwise RDMSR of them must #GP (SDM Vol. 3D, A.1), and
/// they are reported as not read.
fn probe() -> ProbeReport {
    let l0 = x86::cpuid(0);
    let l1 = x86::cpuid(1);
    let ext = x86::cpuid(0x8000_0001);
    let hv0 = x86::cpuid(hv::LEAF_SIGNATURE);
    let signature = nestbench_abi::cpuid::signature_from_words(hv0.ebx, hv0.ecx, hv0.edx);
    let ours = signature == hv::SIGNATURE;
    let hv1 = if ours { x86::cpuid(hv::LEAF_INFO) } else { x86::Cpuid::default() };
    let vmx = l1.ecx & hv::CPUID1_ECX_VMX != 0;
    let mut vmx_msrs = [MsrProbe::default(); VMX_MSR_COUNT];
    for (i, m) in vmx_msrs.iter_mut().enumerate() {
        let index = VMX_MSR_FIRST + i as u32;
        *m = if vmx { probe_msr(index) } else { MsrProbe { index, status: MsrStatus::NotRead as u32, value: 0 } };
    }
    ProbeReport {
        max_basic_leaf: l0.eax,
        cpuid1_eax: l1.eax,
        cpuid1_ecx: l1.ecx,
        cpuid1_edx: l1.edx,
        ext1_ecx: ext.ecx,
        hv_max_leaf: hv0.eax,
        vendor: nestbench_abi::cpuid::signature_from_words(l0.ebx, l0.edx, l0.ecx),
        hv_signature: signature,
        hv_abi_version: hv1.eax,
        hv_features: hv1.ebx,
        hv_hypercall_port: hv1.ecx,
        reserved0: 0,
        cr0: x86::read_cr0(),
        cr4: x86::read_cr4(),
        efer: x86::rdmsr_safe(0xC000_0080).unwrap_or(0),
        mtrr_def_type: probe_msr(MSR_MTRR_DEF_TYPE),
        feature_control: probe_msr(MSR_FEATURE_CONTROL),
        vmx_msrs,
    }
}

extern "C" fn l1_main(boot: *const BootInfo) -> ! {
    // Hypercalls to a nestbench L0, or lines on port 0xE9 where there is none (Bochs).
    hypercall::init();
    let host = install_descriptor_tables();
    // SAFETY: L0 passes the address of the BootInfo it wrote in identity-mapped memory.
    let boot = unsafe { core::ptr::read_volatile(boot) };
    if boot.magic != BOOT_MAGIC || boot.abi_version != ABI_VERSION {
        println!("l1: boot info magic {:#x} ABI v{} (want v{ABI_VERSION})", boot.magic, boot.abi_version);
        hypercall::exit(EXIT_BAD_BOOT_INFO);
    }
    let Some(scenario) = Scenario::from_raw(boot.scenario) else {
        println!("l1: unknown scenario {}", boot.scenario);
        hypercall::exit(EXIT_BAD_BOOT_INFO);
    };
    println!("nestbench L1: hello from L1, ABI v{ABI_VERSION}, {} MiB", boot.mem_size >> 20);

    let report = probe();
    let bytes = report.as_bytes();
    hypercall::report(ReportKind::Probe, bytes);
    println!(
        "l1: VMX {}, L0 {}",
        if report.cpuid1_ecx & hv::CPUID1_ECX_VMX != 0 { "offered" } else { "not offered" },
        if report.hv_signature == hv::SIGNATURE { "is nestbench" } else { "unknown" },
    );

    if scenario == Scenario::PageFault {
        // One past the identity map: not present, so a #PF with CR2 = this address.
        // SAFETY: deliberately faulting; the exception handler reports it and exits.
        let v = unsafe { core::ptr::read_volatile(boot.identity_map_size as *const u64) };
        println!("l1: read {v:#x} from an unmapped address?!");
        hypercall::exit(1);
    }
    match scenario {
        Scenario::Probe | Scenario::PageFault if boot.payload.present != 0 => runner::run_payload(&boot, host),
        Scenario::Probe | Scenario::PageFault => hypercall::exit(0),
        Scenario::Vmentry => l1::vmentry::run(host, false),
        Scenario::VmentryBaseline => l1::vmentry::run(host, true),
        fail => scenarios::run(fail, host),
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("l1: panic: {info}");
    Console::flush();
    hypercall::exit(0xFF);
}
