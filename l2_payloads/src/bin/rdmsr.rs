//! The bare-metal `rdmsr` payload image (see [`l2_payloads::rdmsr`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(rdmsr);
