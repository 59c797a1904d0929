//! The bare-metal `io_encodings` payload image (see [`l2_payloads::io_encodings`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(io_encodings);
