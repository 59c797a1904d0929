//! The framing of the stream an emulated host sends back over its line (debug port or serial).
//!
//! One frame per line: `\x1eNB1 <seq> <run> <kind> <crc32> <payload>\n`, where `seq` counts
//! every frame from 0, `run` is the index of the planned l0 invocation (0 for frames about
//! the host), `crc32` is the CRC-32 (IEEE) of the payload bytes in 8 hex digits, and the
//! payload is one line of text without `\n` or `\r`. The line carries nothing but frames,
//! but an emulator may print its own banner into it, a byte may be lost, and a frame may be
//! cut by a crash: the reader skips anything before the marker, checks the CRC, and counts
//! noise, garbled frames and gaps in `seq` instead of guessing.

use std::fmt;

/// What starts a frame.
pub const MARKER: &str = "\x1eNB1 ";

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The emulated host's facts (JSON, `crate::host::HostFacts`), once, before any run.
    Host,
    /// The agent could not prepare the host (module load failed, ...): JSON
    /// [`AgentFailure`]; no run follows.
    Fail,
    /// A run starts: JSON, the l0 arguments.
    Start,
    /// One line of the run's stdout (an event-stream line).
    Out,
    /// One line of the run's stderr.
    Err,
    /// The run ended: JSON [`RunExit`].
    Exit,
    /// The plan is done: JSON `{"runs": N}`.
    Bye,
}

impl Kind {
    const ALL: [(Self, &'static str); 7] = [
        (Self::Host, "host"),
        (Self::Fail, "fail"),
        (Self::Start, "start"),
        (Self::Out, "out"),
        (Self::Err, "err"),
        (Self::Exit, "exit"),
        (Self::Bye, "bye"),
    ];

    /// Its name on the line.
    #[must_use]
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(k, _)| *k == self).map_or("?", |(_, n)| n)
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(k, _)| *k)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a planned run ended inside the emulated host.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunExit {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Wall time inside the emulated host, in milliseconds (emulated time).
    pub wall_ms: u64,
    /// Killed by the agent after the run's deadline.
    pub timed_out: bool,
}

/// Why the agent could not prepare the emulated host.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentFailure {
    /// What failed.
    pub message: String,
    /// The kernel log's tail (dmesg), for module load failures.
    pub dmesg: String,
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its sequence number.
    pub seq: u64,
    /// The planned run it belongs to.
    pub run: u32,
    /// What it carries.
    pub kind: Kind,
    /// The payload line.
    pub payload: String,
}

/// Encode one frame as its line (with `\n`). A payload's `\n` and `\r` become spaces.
#[must_use]
pub fn encode(seq: u64, run: u32, kind: Kind, payload: &str) -> String {
    let payload: String = payload.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
    format!("{MARKER}{seq} {run} {kind} {:08x} {payload}\n", crc32fast::hash(payload.as_bytes()))
}

/// What a line of the stream turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// A frame whose CRC matched.
    Frame(Frame),
    /// A marker with a malformed header or a CRC mismatch (the reason).
    Garbled(String),
    /// No marker: not ours.
    Noise,
}

/// Decode one line (without its `\n`); bytes before the marker are skipped.
#[must_use]
pub fn decode(line: &str) -> Line {
    let Some(at) = line.find(MARKER) else { return Line::Noise };
    let rest = &line[at + MARKER.len()..];
    let mut parts = rest.splitn(5, ' ');
    let (Some(seq), Some(run), Some(kind), Some(crc)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Line::Garbled(format!("short frame header: {:?}", cut(rest)));
    };
    let payload = parts.next().unwrap_or("").trim_end_matches('\r');
    let (Ok(seq), Ok(run), Some(kind), Ok(crc)) =
        (seq.parse::<u64>(), run.parse::<u32>(), Kind::parse(kind), u32::from_str_radix(crc, 16))
    else {
        return Line::Garbled(format!("bad frame header: {:?}", cut(rest)));
    };
    let got = crc32fast::hash(payload.as_bytes());
    if got != crc {
        return Line::Garbled(format!("frame {seq} ({kind} of run {run}): CRC {got:08x}, header says {crc:08x}"));
    }
    Line::Frame(Frame { seq, run, kind, payload: payload.to_owned() })
}

fn cut(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Reads frames off a stream of lines and keeps count of what was not a good frame.
#[derive(Clone, Debug, Default)]
pub struct Reader {
    next_seq: u64,
    /// Frames that were lost (gaps in `seq`).
    pub lost: u64,
    /// Garbled frames, with the reason (the first 16 kept).
    pub garbled: Vec<String>,
    /// Garbled frames in all.
    pub garbled_count: u64,
    /// Lines that carried no frame.
    pub noise: u64,
}

impl Reader {
    /// Take one line; the frame it carried, if it was a good one.
    pub fn line(&mut self, line: &str) -> Option<Frame> {
        match decode(line) {
            Line::Frame(f) => {
                if f.seq > self.next_seq {
                    self.lost += f.seq - self.next_seq;
                }
                self.next_seq = self.next_seq.max(f.seq + 1);
                Some(f)
            }
            Line::Garbled(why) => {
                self.garbled_count += 1;
                if self.garbled.len() < 16 {
                    self.garbled.push(why);
                }
                None
            }
            Line::Noise => {
                if !line.trim().is_empty() {
                    self.noise += 1;
                }
                None
            }
        }
    }

    /// Whether every frame sent so far arrived intact.
    #[must_use]
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.garbled_count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_newlines_never_split_one() {
        let line = encode(7, 3, Kind::Out, "{\"event\":\"end\"}\nx\r");
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let f = Reader::default().line(line.trim_end_matches('\n')).unwrap();
        assert_eq!(f, Frame { seq: 7, run: 3, kind: Kind::Out, payload: "{\"event\":\"end\"} x ".into() });
        for (k, _) in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
    }

    #[test]
    fn garbage_before_a_frame_is_skipped_and_a_bad_crc_or_gap_is_counted() {
        let mut r = Reader::default();
        assert_eq!(r.line("========== Bochs x86 Emulator 2.7 =========="), None);
        let f0 = encode(0, 0, Kind::Host, "{}");
        assert!(r.line(&format!("\u{0}\u{ff}junk{}", f0.trim_end())).is_some(), "garbage before the marker");
        let f1 = encode(1, 1, Kind::Out, "{\"a\":1}").replace("{\"a\":1}", "{\"a\":2}");
        assert_eq!(r.line(f1.trim_end()), None);
        assert!(r.garbled[0].contains("CRC"), "{:?}", r.garbled);
        assert!(r.line(encode(5, 1, Kind::Exit, "{}").trim_end()).is_some());
        assert_eq!((r.noise, r.garbled_count, r.lost), (1, 1, 4), "frames 1 (garbled) to 4 never arrived intact");
        assert!(!r.clean());
        assert!(matches!(decode(&format!("{MARKER}x y")), Line::Garbled(_)));
        assert!(matches!(decode(&format!("{MARKER}1 2 nope 00000000 p")), Line::Garbled(_)));
    }
}
