//! VM-entry event injection (SDM 27.6 "Event Injection"): after the guest state and the
//! MSRs are loaded, the event the VM-entry interruption-information field describes is
//! delivered through L2's IDT "as if it had occurred" at L2's first instruction. L0 hands it
//! to VM2's vCPU as an event already being delivered (KVM_SET_VCPU_EVENTS, `injected`), so
//! KVM delivers it at VM2's next entry, whatever RFLAGS.IF says, as VMX does (27.6.1.2).
//!
//! Injected here: external interrupts, NMIs and hardware exceptions with their error code
//! ([`Event`]). Software interrupts and exceptions (types 4-6) push RIP plus the VM-entry
//! instruction length, which KVM_SET_VCPU_EVENTS cannot carry: they stay
//! `engine_unsupported` ([`super::entry_checks`]). An exit of VM2 during the delivery (a fault
//! that VMX would report with IDT-vectoring information, SDM 28.2.4) is refused the same way
//! rather than reported without it; a triple fault is the delivery's end, not an
//! interruption of it.

use kvm_bindings::kvm_vcpu_events;
pub use nestbench_abi::vmx::intr::Event;

/// `events` (as read from VM2's vCPU) with `event` being delivered.
#[must_use]
pub fn apply(event: Event, mut events: kvm_vcpu_events) -> kvm_vcpu_events {
    match event {
        Event::ExternalInterrupt(vector) => {
            events.interrupt.injected = 1;
            events.interrupt.nr = vector;
            events.interrupt.soft = 0;
        }
        Event::Nmi => events.nmi.injected = 1,
        Event::HardwareException { vector, error_code } => {
            events.exception.injected = 1;
            events.exception.pending = 0;
            events.exception.nr = vector;
            events.exception.has_error_code = u8::from(error_code.is_some());
            events.exception.error_code = error_code.unwrap_or(0);
        }
    }
    events
}

/// Whether VM2's vCPU still holds `event` for delivery (`events` read at an exit): the exit
/// came while it was being delivered.
#[must_use]
pub fn still_queued(event: Event, events: &kvm_vcpu_events) -> bool {
    match event {
        Event::ExternalInterrupt(v) => events.interrupt.injected != 0 && events.interrupt.nr == v,
        Event::Nmi => events.nmi.injected != 0,
        Event::HardwareException { vector, .. } => {
            (events.exception.injected != 0 || events.exception.pending != 0) && events.exception.nr == vector
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_handed_to_kvm_as_being_delivered() {
        let gp = Event::HardwareException { vector: 13, error_code: Some(0x18) };
        let ev = apply(gp, kvm_vcpu_events::default());
        assert_eq!(
            (ev.exception.injected, ev.exception.nr, ev.exception.has_error_code, ev.exception.error_code),
            (1, 13, 1, 0x18)
        );
        assert!(still_queued(gp, &ev));
        assert!(!still_queued(gp, &kvm_vcpu_events::default()));
        let irq = apply(Event::ExternalInterrupt(0x20), kvm_vcpu_events::default());
        assert_eq!((irq.interrupt.injected, irq.interrupt.nr, irq.interrupt.soft), (1, 0x20, 0));
        assert_eq!(apply(Event::Nmi, kvm_vcpu_events::default()).nmi.injected, 1);
    }
}
