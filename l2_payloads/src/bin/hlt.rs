//! The bare-metal `hlt` payload image (see [`l2_payloads::hlt`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(hlt);
