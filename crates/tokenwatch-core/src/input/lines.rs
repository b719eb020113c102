//! Newline-delimited input with a hard cap on line length.
//!
//! A log line longer than the cap is skipped without being buffered whole: once the cap is
//! passed, the rest of the line is read and dropped chunk by chunk, so a single hostile or
//! broken line cannot grow memory. A final line without a newline still counts.

use std::io::{self, BufRead};

/// One line read, or the fact that one was too long (and how long it was). Its `Debug`
/// shows the length of a line, never its text.
#[derive(PartialEq, Eq)]
pub enum Line<'a> {
    Ok(&'a [u8]),
    TooLong(u64),
}

impl std::fmt::Debug for Line<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Line::Ok(b) => write!(f, "Ok(<{} bytes>)", b.len()),
            Line::TooLong(n) => write!(f, "TooLong({n})"),
        }
    }
}

pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
}

/// The default cap: 1 MiB.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max_line_bytes: usize) -> Self {
        LineReader {
            inner,
            buf: Vec::with_capacity(4096),
            max: max_line_bytes.max(1),
        }
    }

    /// The next line without its `\n` (or `\r\n`), `None` at end of input.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.buf.clear();
        let mut total: u64 = 0;
        let mut too_long = false;
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                if total == 0 {
                    return Ok(None);
                }
                break;
            }
            let (part, consumed, done) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..i], i + 1, true),
                None => (chunk, chunk.len(), false),
            };
            total += consumed as u64;
            if !too_long {
                if self.buf.len() + part.len() > self.max {
                    too_long = true;
                    self.buf = Vec::with_capacity(4096);
                } else {
                    self.buf.extend_from_slice(part);
                }
            }
            self.inner.consume(consumed);
            if done {
                break;
            }
        }
        if too_long {
            return Ok(Some(Line::TooLong(total)));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Some(Line::Ok(&self.buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, u64>> {
        let mut r = LineReader::new(io::BufReader::with_capacity(4, input), max);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            out.push(match l {
                Line::Ok(b) => Ok(b.to_vec()),
                Line::TooLong(n) => Err(n),
            });
        }
        out
    }

    #[test]
    fn splits_lines_and_keeps_a_last_line_without_newline() {
        assert_eq!(
            all(b"ab\r\ncd\n\nef", 100),
            vec![Ok(b"ab".to_vec()), Ok(b"cd".to_vec()), Ok(vec![]), Ok(b"ef".to_vec())]
        );
        assert!(all(b"", 100).is_empty());
    }

    #[test]
    fn long_lines_are_skipped_without_losing_the_next() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\nok\n");
        input.extend(vec![b'y'; 11]);
        assert_eq!(all(&input, 10), vec![Err(51), Ok(b"ok".to_vec()), Err(11)]);
        // exactly at the cap is fine
        assert_eq!(all(b"0123456789\n", 10), vec![Ok(b"0123456789".to_vec())]);
    }
}
