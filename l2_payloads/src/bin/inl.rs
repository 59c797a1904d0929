//! The bare-metal `inl` payload image (see [`l2_payloads::inl`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(inl);
