//! The bare-metal `pte_remap` payload image (see [`l2_payloads::pte_remap`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(pte_remap);
