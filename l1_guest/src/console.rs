//! Console output: a line buffer flushed with one hypercall per line (or when full), never
//! an exit per byte.

use crate::static_cell::TryLock;

/// A fixed-size line buffer. `sink` gets each complete line (newline included) or each
/// full buffer.
#[derive(Debug)]
pub struct LineBuffer<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for LineBuffer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LineBuffer<N> {
    /// An empty buffer.
    #[must_use]
    pub const fn new() -> Self {
        Self { buf: [0; N], len: 0 }
    }

    /// Append `bytes`, calling `sink` for every newline reached and whenever the buffer fills.
    pub fn write(&mut self, bytes: &[u8], sink: &mut impl FnMut(&[u8])) {
        for &b in bytes {
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' || self.len == N {
                self.flush(sink);
            }
        }
    }

    /// Hand whatever is buffered to `sink` (nothing if empty).
    pub fn flush(&mut self, sink: &mut impl FnMut(&[u8])) {
        if self.len > 0 {
            sink(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

/// L1's console: one global line buffer, flushed to L0 with one `ConsoleWrite` hypercall per
/// line. Use it through [`println!`](crate::println). Text written while the buffer is in use
/// (by an exception handler that interrupted a `println!`) goes out unbuffered.
pub struct Console;

static CONSOLE: TryLock<LineBuffer<256>> = TryLock::new(LineBuffer::new());

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let sink = &mut |line: &[u8]| {
            crate::hypercall::console_write(line);
        };
        if CONSOLE.with(|b| b.write(s.as_bytes(), sink)).is_none() {
            sink(s.as_bytes());
        }
        Ok(())
    }
}

impl Console {
    /// Send whatever is buffered (a line without its newline yet).
    pub fn flush() {
        CONSOLE.with(|b| {
            b.flush(&mut |line| {
                crate::hypercall::console_write(line);
            });
        });
    }
}

/// Print a line on L0's console (one hypercall per line).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::console::Console, format_args!("{}\n", format_args!($($arg)*)));
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect<const N: usize>(chunks: &[&str]) -> Vec<String> {
        let mut lb = LineBuffer::<N>::new();
        let mut out = Vec::new();
        let mut sink = |b: &[u8]| out.push(String::from_utf8(b.to_vec()).unwrap());
        for c in chunks {
            lb.write(c.as_bytes(), &mut sink);
        }
        lb.flush(&mut sink);
        out
    }

    #[test]
    fn one_flush_per_line() {
        assert_eq!(collect::<64>(&["hel", "lo\nwor", "ld\n"]), ["hello\n", "world\n"]);
    }

    #[test]
    fn full_buffer_flushes_and_tail_flushes_on_demand() {
        assert_eq!(collect::<4>(&["abcdefg"]), ["abcd", "efg"]);
    }
}
