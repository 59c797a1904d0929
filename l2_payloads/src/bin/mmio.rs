//! The bare-metal `mmio` payload image (see [`l2_payloads::mmio`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(mmio);
