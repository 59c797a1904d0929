//! The bare-metal `vmmcall` payload image (see [`l2_payloads::vmmcall`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(vmmcall);
