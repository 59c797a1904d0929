//! L1 is hostile input. Random VMCS12 contents, EPT12 tables, VMX-instruction operands and
//! L2 instruction bytes must never make L0 panic, loop forever or touch memory outside the
//! guest's: every guest access goes through the bounds-checked `GuestMem`, whose small size
//! here makes any stray address an error rather than a crash.

use kvm_bindings::kvm_regs;
use l0::memory::GuestMem;
use l0::soft::caps::Caps;
use l0::soft::engine::MAXPHYADDR;
use l0::soft::entry_checks;
use l0::soft::io_decode;
use l0::soft::l2vm::ept_runs;
use l0::soft::transitions;
use l0::soft::vmcs12::Vmcs12;
use l0::soft::vmx_ops::VmxState;
use l0::vcpu::Exit;
use nestbench_abi::softvmx::VmxOp;
use proptest::prelude::*;

const MEM: u64 = 64 * 1024;

/// Guest memory filled with `fill` repeated (the tests' random "L1 memory").
fn mem_with(fill: &[u8]) -> GuestMem {
    let mem = GuestMem::new(MEM).unwrap();
    if !fill.is_empty() {
        let bytes: Vec<u8> = fill.iter().copied().cycle().take(MEM as usize).collect();
        mem.write(0, &bytes).unwrap();
    }
    mem
}

/// Addresses near and far from guest memory: inside, at the edge, unaligned, huge.
fn address() -> impl Strategy<Value = u64> {
    prop_oneof![0..MEM, (MEM - 16)..(MEM + 16), any::<u64>(), Just(u64::MAX), Just(0xFFF)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn vmx_instructions_with_random_operands(
        fill in proptest::collection::vec(any::<u8>(), 1..64),
        ops in proptest::collection::vec((1u64..=8, address(), any::<u64>()), 1..40),
    ) {
        let mem = mem_with(&fill);
        let mut s = VmxState::default();
        for (op, a1, a2) in ops {
            let op = VmxOp::from_raw(op).unwrap();
            // Revision 0 matches the zero-filled pages some of the fill patterns make.
            let _ = s.execute(&mem, op, a1, a2, 0, MAXPHYADDR);
            let _ = s.execute(&mem, op, a1, a2, u32::from_le_bytes([fill[0], fill[0], fill[0], fill[0]]), MAXPHYADDR);
        }
    }

    #[test]
    fn entry_checks_and_state_transfer_on_random_vmcs12(
        page in proptest::collection::vec(any::<u8>(), 4096),
        efer in any::<u64>(),
    ) {
        let mem = GuestMem::new(8192).unwrap();
        mem.write(0x1000, &page).unwrap();
        let v = Vmcs12::new(&mem, 0x1000).unwrap();
        let _ = entry_checks::check(&v, &Caps::soft(), MAXPHYADDR);
        let regs = kvm_regs { rax: efer, ..Default::default() };
        let _ = transitions::guest_regs(&v, &regs);
        let s = transitions::guest_sregs(&v, &Default::default(), efer);
        let _ = transitions::host_sregs(&v, &s);
        transitions::save_guest(&v, &regs, efer, &s, efer & 1 != 0);
        let _ = entry_checks::pdptes_in_memory(&v, MAXPHYADDR, |pa| mem.read_u64(pa).unwrap_or(u64::MAX));
    }

    #[test]
    fn ept12_shadow_of_random_tables(
        fill in proptest::collection::vec(any::<u64>(), 1..128),
        eptp in address(),
    ) {
        let mem = GuestMem::new(MEM).unwrap();
        let words: Vec<u8> = fill.iter().cycle().take((MEM / 8) as usize).flat_map(|w| w.to_le_bytes()).collect();
        mem.write(0, &words).unwrap();
        if let Ok(runs) = ept_runs(&mem, eptp, MAXPHYADDR) {
            for r in runs {
                prop_assert!(r.l1 + r.size <= MEM, "a run outside L1 memory: {r:?}");
            }
        }
    }

    #[test]
    fn io_exit_decoding_of_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..40),
        rip in any::<u64>(),
        port in any::<u16>(),
        size in prop_oneof![Just(1u8), Just(2), Just(4), any::<u8>()],
        count in 0u32..8,
        is_in in any::<bool>(),
        rcx in any::<u64>(),
        rdx in any::<u64>(),
        rflags in any::<u64>(),
    ) {
        let exit = if is_in {
            Exit::IoIn { port, size, count }
        } else {
            Exit::IoOut { port, size, count, data: vec![0; usize::from(size) * count as usize] }
        };
        let regs = kvm_regs { rip, rcx, rdx, rflags, ..Default::default() };
        let base = rip.wrapping_sub(20);
        let read = |a: u64, n: usize| -> Vec<u8> {
            let off = a.wrapping_sub(base) as usize;
            bytes.get(off..).map(|b| b.iter().copied().take(n).collect()).unwrap_or_default()
        };
        for host in &[l0::soft::host_exits::HostExits::kvm_pvm(), l0::soft::host_exits::HostExits::upstream()] {
            let _ = io_decode::decode(&exit, &regs, &read, host);
        }
    }
}
