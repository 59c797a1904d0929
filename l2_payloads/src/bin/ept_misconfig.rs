//! The bare-metal `ept_misconfig` payload image (see [`l2_payloads::ept_misconfig`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(ept_misconfig);
