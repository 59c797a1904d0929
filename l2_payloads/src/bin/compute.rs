//! The bare-metal `compute` payload image (see [`l2_payloads::compute`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(compute);
