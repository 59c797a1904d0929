//! The bare-metal `preempt_timer` payload image (see [`l2_payloads::preempt_timer`]).
#![no_std]
#![no_main]

l2_payloads::payload_main!(preempt_timer);
