//! The bare-metal `cr3` payload image (see [`l2_payloads::cr3`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(cr3);
