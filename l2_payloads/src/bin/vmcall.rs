//! The bare-metal `vmcall` payload image (see [`l2_payloads::vmcall`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(vmcall);
