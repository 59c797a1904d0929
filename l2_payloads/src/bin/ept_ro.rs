//! The bare-metal `ept_ro` payload image (see [`l2_payloads::ept_ro`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(ept_ro);
