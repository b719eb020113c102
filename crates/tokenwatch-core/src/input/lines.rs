//! Newline-delimited input with a hard cap on line length: the one line reader.
//!
//! [`BatchReader`] reads chunks straight into [`LineBatch`] buffers (one buffer, many lines),
//! which is how `replay` reads; [`LineReader`] hands out one line at a time from such a batch,
//! for callers that number lines (`explain`, `diff`); [`lines_in`] splits input already in
//! memory (a Kafka message) without copying it. All keep one contract:
//! - a line ends at `\n`; a `\r` before it is dropped; a final line without a newline counts;
//! - a line longer than the cap (before its `\n`, counting a `\r`) is skipped without being
//!   buffered whole: once the cap is passed, the rest of the line is read and dropped chunk by
//!   chunk, so one hostile or broken line cannot grow memory. It is counted, with its length.

use std::fmt;
use std::io::{self, Read};

/// The default cap: 1 MiB.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

/// Bytes read per chunk by [`BatchReader::new`]: small enough that a batch is still in cache
/// when it is decoded.
const DEFAULT_CHUNK: usize = 256 * 1024;

/// Bytes read per chunk by [`LineReader`]: it is made per Kafka message, so it stays small.
const LINE_READER_CHUNK: usize = 4096;

/// One line read, or the fact that one was too long (and how long it was, its newline
/// included). Its `Debug` shows the length of a line, never its text.
#[derive(PartialEq, Eq)]
pub enum Line<'a> {
    Ok(&'a [u8]),
    TooLong(u64),
}

impl fmt::Debug for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Ok(b) => write!(f, "Ok(<{} bytes>)", b.len()),
            Line::TooLong(n) => write!(f, "TooLong({n})"),
        }
    }
}

/// Where one line of a [`LineBatch`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineSpan {
    /// `buf[start..end]`, without its line end.
    Ok(usize, usize),
    /// Skipped for its length (bytes, its newline included); none of it is in the buffer.
    TooLong(u64),
}

/// Lines in one buffer. Cleared and refilled, it keeps its capacity. The buffer is raw log
/// text (tokens included), so `Debug` shows only sizes.
#[derive(Default)]
pub struct LineBatch {
    pub(crate) buf: Vec<u8>,
    pub(crate) lines: Vec<LineSpan>,
}

impl fmt::Debug for LineBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineBatch")
            .field("lines", &self.lines.len())
            .field("bytes", &self.buf.len())
            .finish()
    }
}

impl LineBatch {
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.lines.clear();
    }

    /// The bytes of the lines held.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Appends a copy of one line (without its newline), e.g. a Kafka message's payload.
    pub fn push(&mut self, line: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(line);
        self.lines.push(LineSpan::Ok(start, self.buf.len()));
    }

    /// The `i`th line.
    fn line(&self, i: usize) -> Line<'_> {
        match self.lines[i] {
            LineSpan::Ok(a, b) => Line::Ok(&self.buf[a..b]),
            LineSpan::TooLong(n) => Line::TooLong(n),
        }
    }
}

/// Reads newline-delimited input straight into [`LineBatch`] buffers, a chunk at a time.
/// Only the partial line at the end of a chunk is ever copied.
pub(crate) struct BatchReader<R> {
    inner: R,
    max: usize,
    chunk: usize,
    /// The start of a line that continues in the next chunk.
    carry: Vec<u8>,
    /// Inside a line already known to be too long: drop bytes up to its newline.
    skipping: bool,
    /// Bytes of that line dropped so far.
    skipped: u64,
    eof: bool,
}

impl<R: Read> BatchReader<R> {
    pub(crate) fn new(inner: R, max_line_bytes: usize) -> Self {
        BatchReader::with_chunk(inner, max_line_bytes, DEFAULT_CHUNK)
    }

    pub(crate) fn with_chunk(inner: R, max_line_bytes: usize, chunk: usize) -> Self {
        BatchReader {
            inner,
            max: max_line_bytes.max(1),
            chunk: chunk.max(1),
            carry: Vec::new(),
            skipping: false,
            skipped: 0,
            eof: false,
        }
    }

    /// Refills `batch` with the next lines; `false` (and an empty batch) at end of input.
    pub(crate) fn fill(&mut self, batch: &mut LineBatch) -> io::Result<bool> {
        batch.clear();
        batch.buf.extend_from_slice(&self.carry);
        self.carry.clear();
        let mut line_start = 0;
        let mut scan_from = 0;
        loop {
            if self.eof {
                self.last_line(batch, line_start);
                return Ok(!batch.lines.is_empty());
            }
            if self.read_chunk(&mut batch.buf)? == 0 {
                self.eof = true;
                continue;
            }
            line_start = self.split(batch, line_start, scan_from);
            scan_from = batch.buf.len();
            let rest = batch.buf.len() - line_start;
            if self.skipping || rest > self.max {
                // The open line is too long: forget its bytes, remember to count them.
                self.skipping = true;
                self.skipped += rest as u64;
                batch.buf.truncate(line_start);
                scan_from = line_start;
            }
            if !batch.lines.is_empty() {
                self.carry.extend_from_slice(&batch.buf[line_start..]);
                batch.buf.truncate(line_start);
                return Ok(true);
            }
        }
    }

    /// Appends up to one chunk of input to `buf`; 0 at end of input.
    fn read_chunk(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let old = buf.len();
        buf.resize(old + self.chunk, 0);
        loop {
            match self.inner.read(&mut buf[old..]) {
                Ok(n) => {
                    buf.truncate(old + n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    buf.truncate(old);
                    return Err(e);
                }
            }
        }
    }

    /// Records every line that ends (`\n`) in `buf[scan_from..]`; returns where the open line
    /// starts.
    fn split(&mut self, batch: &mut LineBatch, mut line_start: usize, scan_from: usize) -> usize {
        for nl in memchr::memchr_iter(b'\n', &batch.buf[scan_from..]) {
            let nl = scan_from + nl;
            let span = if self.skipping {
                self.skipping = false;
                LineSpan::TooLong(std::mem::take(&mut self.skipped) + (nl + 1 - line_start) as u64)
            } else {
                self.span(&batch.buf, line_start, nl, 1)
            };
            batch.lines.push(span);
            line_start = nl + 1;
        }
        line_start
    }

    /// The end of input: the line without a newline, if any, still counts.
    fn last_line(&mut self, batch: &mut LineBatch, line_start: usize) {
        let rest = batch.buf.len() - line_start;
        if self.skipping {
            self.skipping = false;
            let n = std::mem::take(&mut self.skipped) + rest as u64;
            batch.lines.push(LineSpan::TooLong(n));
        } else if rest > 0 {
            batch.lines.push(self.span(&batch.buf, line_start, batch.buf.len(), 0));
        }
    }

    /// The line `buf[start..end]`, followed by `newline` bytes of line end.
    fn span(&self, buf: &[u8], start: usize, end: usize, newline: usize) -> LineSpan {
        if end - start > self.max {
            return LineSpan::TooLong((end - start + newline) as u64);
        }
        let end = if end > start && buf[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        LineSpan::Ok(start, end)
    }
}

/// The lines of input already in memory (a Kafka message), by the contract of
/// [`LineReader`], borrowed from it: a reader would copy the message into a buffer of its own
/// first (measured 2026-12-02: a tenth of the ingest stage's time, a fresh 4 KiB buffer per
/// message zeroed and filled).
pub fn lines_in(input: &[u8], max_line_bytes: usize) -> impl Iterator<Item = Line<'_>> {
    let max = max_line_bytes.max(1);
    let mut rest = input;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, newline) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], 1),
            None => (rest, 0),
        };
        rest = &rest[line.len() + newline..];
        Some(if line.len() > max {
            Line::TooLong((line.len() + newline) as u64)
        } else {
            Line::Ok(line.strip_suffix(b"\r").unwrap_or(line))
        })
    })
}

/// One line at a time, from batches read by a [`BatchReader`].
pub struct LineReader<R> {
    batches: BatchReader<R>,
    batch: LineBatch,
    /// The next line of `batch` to hand out.
    next: usize,
}

impl<R: Read> LineReader<R> {
    pub fn new(inner: R, max_line_bytes: usize) -> Self {
        LineReader {
            batches: BatchReader::with_chunk(inner, max_line_bytes, LINE_READER_CHUNK),
            batch: LineBatch::default(),
            next: 0,
        }
    }

    /// The next line without its `\n` (or `\r\n`), `None` at end of input.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        if self.next == self.batch.lines.len() {
            if !self.batches.fill(&mut self.batch)? {
                return Ok(None);
            }
            self.next = 0;
        }
        self.next += 1;
        Ok(Some(self.batch.line(self.next - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as the tests compare it: its bytes, or the length of a line too long.
    fn owned(l: Line<'_>) -> Result<Vec<u8>, u64> {
        match l {
            Line::Ok(b) => Ok(b.to_vec()),
            Line::TooLong(n) => Err(n),
        }
    }

    fn all(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, u64>> {
        let mut r = LineReader::new(input, max);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            out.push(owned(l));
        }
        out
    }

    fn batched(input: &[u8], max: usize, chunk: usize) -> Vec<Result<Vec<u8>, u64>> {
        let mut r = BatchReader::with_chunk(input, max, chunk);
        let mut b = LineBatch::default();
        let mut out = Vec::new();
        while r.fill(&mut b).unwrap() {
            out.extend((0..b.lines.len()).map(|i| owned(b.line(i))));
        }
        out
    }

    /// The contract, written the plain way: split at `\n`, drop one `\r`, cap the length.
    fn reference(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, u64>> {
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let (line, newline) = match rest.iter().position(|&c| c == b'\n') {
                Some(i) => (&rest[..i], 1),
                None => (rest, 0),
            };
            rest = &rest[line.len() + newline..];
            out.push(if line.len() > max {
                Err((line.len() + newline) as u64)
            } else {
                Ok(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
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
        // exactly at the cap is fine; a `\r` counts
        assert_eq!(all(b"0123456789\n", 10), vec![Ok(b"0123456789".to_vec())]);
        assert_eq!(all(b"0123456789\r\n", 10), vec![Err(12)]);
        // a line far longer than a chunk is never kept
        let huge = vec![b'z'; 3 * LINE_READER_CHUNK + 5];
        assert_eq!(all(&huge, 10), vec![Err(huge.len() as u64)]);
        assert_eq!(in_memory(&input, 10), all(&input, 10));
    }

    fn in_memory(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, u64>> {
        lines_in(input, max).map(owned).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Whatever the chunk size, the batches hold the lines the contract says, lengths of
        /// skipped lines included; the one-line reader and the in-memory split hand out the
        /// same.
        #[test]
        fn every_chunk_size_splits_as_the_contract_says(
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::Just(b'\n'),
                    proptest::prelude::Just(b'\r'),
                    proptest::prelude::Just(b'x'),
                    proptest::prelude::any::<u8>(),
                ],
                0..200,
            ),
            max in 1usize..24,
            chunk in 1usize..40,
        ) {
            let want = reference(&input, max);
            proptest::prop_assert_eq!(&batched(&input, max, chunk), &want);
            proptest::prop_assert_eq!(&all(&input, max), &want);
            proptest::prop_assert_eq!(&in_memory(&input, max), &want);
        }
    }
}
