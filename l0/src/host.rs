//! Host facts (filled in below).
