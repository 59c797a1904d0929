//! The Bochs transport: how L1 talks to nestbench when it runs on Bochs, where there is no
//! nestbench L0 to serve hypercalls (the `bochs` engine, docs/bochs-engine.md).
//!
//! Everything goes out through port 0xE9, which Bochs (`port_e9_hack: enabled=1`) writes
//! byte by byte to its stdout. L1 picks this transport when CPUID has no nestbench leaf
//! (no signature at 0x4000_0000). Each hypercall becomes one line:
//!
//! ```text
//! console text                           ConsoleWrite: the bytes as they are
//! @@NB1 report <kind> <hex bytes>        Report: the ReportKind number, the structure in hex
//! @@NB1 exception <hex bytes>            Exception: an ExceptionReport in hex
//! @@NB1 exit <status in hex>             Exit (lowercase hex, no leading zeros, no 0x)
//! ```
//!
//! After the exit line L1 executes `xchg bx, bx` (Bochs' magic breakpoint), which stops the
//! emulation; the runner's debugger script then quits Bochs. Reports are hex-encoded only at
//! the end of a run, never on L1's exit path.

/// Bochs' debug port.
pub const PORT: u16 = 0xE9;
/// The prefix of every structured line (never at the start of console text L1 writes).
pub const PREFIX: &str = "@@NB1 ";

/// Lowercase hex digit of a nibble.
#[must_use]
pub const fn hex_digit(n: u8) -> u8 {
    let n = n & 0xF;
    if n < 10 { b'0' + n } else { b'a' + n - 10 }
}

/// Decode a lowercase or uppercase hex string of even length; `None` if malformed.
#[must_use]
pub fn decode_hex(s: &str, out: &mut [u8]) -> Option<usize> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 || b.len() / 2 > out.len() {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = nib(pair[0])? << 4 | nib(pair[1])?;
    }
    Some(b.len() / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let data = [0x00, 0x7F, 0xA5, 0xFF];
        let s: String = data.iter().flat_map(|&b| [hex_digit(b >> 4) as char, hex_digit(b) as char]).collect();
        assert_eq!(s, "007fa5ff");
        let mut out = [0u8; 4];
        assert_eq!(decode_hex(&s, &mut out), Some(4));
        assert_eq!(out, data);
        assert_eq!(decode_hex("0g", &mut out), None);
        assert_eq!(decode_hex("abc", &mut out), None);
        assert_eq!(decode_hex("0011223344", &mut out), None, "longer than the buffer");
    }
}
