//! The bare-metal `outl` payload image (see [`l2_payloads::outl`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(outl);
