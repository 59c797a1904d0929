//! The bare-metal `ept_fill` payload image (see [`l2_payloads::ept_fill`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(ept_fill);
