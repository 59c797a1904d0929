//! The bare-metal `vmrun_bad_efer` payload image (see [`l2_payloads::vmrun_bad_efer`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(vmrun_bad_efer);
