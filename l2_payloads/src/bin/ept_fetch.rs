//! The bare-metal `ept_fetch` payload image (see [`l2_payloads::ept_fetch`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(ept_fetch);
