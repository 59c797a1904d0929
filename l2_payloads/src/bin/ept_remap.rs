//! The bare-metal `ept_remap` payload image (see [`l2_payloads::ept_remap`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(ept_remap);
