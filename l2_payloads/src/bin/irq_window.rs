//! The bare-metal `irq_window` payload image (see [`l2_payloads::irq_window`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(irq_window);
