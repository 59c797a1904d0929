//! The bare-metal `cpuid` payload image (see [`l2_payloads::cpuid`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(cpuid);
