//! The bare-metal `wrmsr` payload image (see [`l2_payloads::wrmsr`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(wrmsr);
