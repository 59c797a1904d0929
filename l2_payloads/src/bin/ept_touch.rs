//! The bare-metal `ept_touch` payload image (see [`l2_payloads::ept_touch`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(ept_touch);
