//! The bare-metal `inject` payload image (see [`l2_payloads::inject`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(inject);
