//! A fast path for the common shape of a log line: one flat JSON object.
//!
//! Most gateway lines are a single object whose values are plain strings (no escapes) and
//! integers. For those, [`scan_flat`] fills a [`RawLine`] in one forward pass that finds each
//! string's end sixteen bytes at a time (SSE2) instead of going through serde's general
//! deserializer, which costs more than everything else on a line of ~1 KB that is mostly a
//! JWT. It answers `None` for anything else (escapes, nested values, `null`, floats, duplicate
//! fields, trailing bytes, non-ASCII keys ...), and the caller then runs the serde pass, so
//! the fast path never decides differently from serde: it accepts a subset of what serde
//! accepts and builds exactly the values serde would. Which key fills which field comes from
//! the one table that also gives serde its names ([`RawLine::slot`]), so a field cannot be
//! known to one pass and lost by the other.

use std::borrow::Cow;

use super::raw::{LenientStr, RawLine, RawRequest, RequestField, Scalar, Slot, StrOnly};

/// Parses `line` (trimmed, starting with `{`) into `raw` (empty on entry) when it is a flat
/// object of simple values; `false` otherwise, leaving `raw` partly filled. Filling the
/// caller's `RawLine` in place saves moving ~1 KB of struct per line.
pub fn scan_flat<'a>(line: &'a [u8], raw: &mut RawLine<'a>) -> bool {
    scan(line, raw).is_some()
}

fn scan<'a>(line: &'a [u8], raw: &mut RawLine<'a>) -> Option<()> {
    let mut s = Scanner { b: line, i: 1 };
    s.ws();
    if s.peek()? == b'}' {
        s.i += 1;
        return s.end().then_some(());
    }
    loop {
        if s.peek()? != b'"' {
            return None;
        }
        let (ks, ke, high) = s.string()?;
        if high {
            return None;
        }
        let key = scanned_str(&line[ks..ke], high)?;
        s.ws();
        if s.peek()? != b':' {
            return None;
        }
        s.i += 1;
        s.ws();
        let value = s.value()?;
        set(raw, key, &value, line)?;
        s.ws();
        match s.peek()? {
            b',' => {
                s.i += 1;
                s.ws();
            }
            b'}' => {
                s.i += 1;
                return s.end().then_some(());
            }
            _ => return None,
        }
    }
}

/// A value as the fast path knows it.
enum Value {
    /// A string without escapes: byte range inside the quotes, and whether it has non-ASCII.
    Str(usize, usize, bool),
    /// A non-negative integer small enough to be exact as f64.
    Int(u64),
    /// Any other number, `true`, `false` or `null`: fine for fields the line does not read.
    Other,
}

/// Stores a value in the field of its key ([`RawLine::slot`], the same table serde reads);
/// `None` when the serde pass must read the line.
fn set<'a>(raw: &mut RawLine<'a>, key: &str, v: &Value, line: &'a [u8]) -> Option<()> {
    match raw.slot(key) {
        Slot::Scalar(slot) => {
            if slot.is_some() {
                return None; // duplicate field: serde reports it
            }
            *slot = Some(match *v {
                Value::Int(n) => Scalar::Num(n as f64),
                Value::Str(..) => Scalar::Str(text(v, line)?),
                Value::Other => return None,
            });
        }
        // The fast path only ever stores `Some`: a set field is a duplicate. A number reads
        // as absent in serde, which also reports a duplicate after it: let it.
        Slot::Addr(slot) => {
            if slot.0.is_some() {
                return None;
            }
            *slot = StrOnly(Some(text(v, line)?));
        }
        Slot::Text(slot) => {
            if slot.0.is_some() {
                return None;
            }
            *slot = LenientStr(Some(text(v, line)?));
        }
        // nginx's request line; Kong's and APISIX's request object takes the serde pass.
        Slot::Request(slot) => {
            if slot.0.is_some() {
                return None;
            }
            *slot = RequestField(Some(RawRequest::Line(text(v, line)?)));
        }
        Slot::Serde => return None,
        Slot::Unknown => {}
    }
    Some(())
}

/// A string value as text borrowed from the line; `None` for any other value.
fn text<'a>(v: &Value, line: &'a [u8]) -> Option<Cow<'a, str>> {
    match *v {
        Value::Str(a, b, high) => scanned_str(&line[a..b], high).map(Cow::Borrowed),
        _ => None,
    }
}

/// A scanned string as text. `high` is the scan's finding that a byte >= 0x80 is present:
/// without one, every byte is ASCII and the UTF-8 check (a few per cent of a line's cost over
/// the ~30 keys of a Traefik line, measured with callgrind) is skipped.
fn scanned_str(bytes: &[u8], high: bool) -> Option<&str> {
    if high {
        return std::str::from_utf8(bytes).ok();
    }
    // SAFETY: every byte is ASCII (checked by the scan, `high` false), hence valid UTF-8.
    #[allow(unsafe_code)]
    unsafe {
        Some(std::str::from_utf8_unchecked(bytes))
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// JSON whitespace as serde_json knows it.
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Only JSON whitespace may follow the object.
    fn end(&mut self) -> bool {
        self.ws();
        self.i == self.b.len()
    }

    /// A string without escapes starting at the opening quote: (start, end, has non-ASCII).
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        let start = self.i + 1;
        let (at, high) = find_special(self.b, start);
        if self.b.get(at) != Some(&b'"') {
            return None; // escape, control character or end of line: serde decides
        }
        self.i = at + 1;
        Some((start, at, high))
    }

    fn value(&mut self) -> Option<Value> {
        match self.peek()? {
            b'"' => {
                let (a, b, high) = self.string()?;
                Some(Value::Str(a, b, high))
            }
            b'0'..=b'9' | b'-' => self.number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<Value> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Some(Value::Other)
        } else {
            None
        }
    }

    /// JSON's number grammar; plain integers of up to 15 digits are kept as values.
    fn number(&mut self) -> Option<Value> {
        let b = self.b;
        let mut i = self.i;
        let neg = b[i] == b'-';
        if neg {
            i += 1;
        }
        let int_start = i;
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            _ => return None,
        }
        let int_end = i;
        let mut plain = !neg;
        if b.get(i) == Some(&b'.') {
            plain = false;
            i += 1;
            let d = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == d {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            plain = false;
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let d = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == d {
                return None;
            }
        }
        // A digit right after `0` (leading zero) is an error for serde: let it say so.
        if b.get(i).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        self.i = i;
        if plain && int_end - int_start <= 15 {
            let n = b[int_start..int_end]
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            Some(Value::Int(n))
        } else {
            Some(Value::Other)
        }
    }
}

/// The index of the first `"`, `\` or control byte at or after `from` (or `b.len()`), and
/// whether a byte >= 0x80 comes before it.
#[inline]
pub fn find_special(b: &[u8], from: usize) -> (usize, bool) {
    let mut i = from;
    let mut high = false;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of the x86_64 baseline; every load reads 16 bytes at
        // `i..i + 16`, which the loop condition keeps inside `b`.
        #[allow(unsafe_code)]
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let bslash = _mm_set1_epi8(b'\\' as i8);
            let space = _mm_set1_epi8(0x20);
            while i + 16 <= b.len() {
                let v = _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i);
                let hi = _mm_movemask_epi8(v) as u32;
                // signed compare: bytes >= 0x80 are negative, so mask them out again
                let lt = _mm_movemask_epi8(_mm_cmplt_epi8(v, space)) as u32 & !hi;
                let q = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash))) as u32;
                let stop = lt | q;
                if stop != 0 {
                    let k = stop.trailing_zeros();
                    high |= hi & ((1u32 << k) - 1) != 0;
                    return (i + k as usize, high);
                }
                high |= hi != 0;
                i += 16;
            }
        }
    }
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\\' || c < 0x20 {
            return (i, high);
        }
        high |= c >= 0x80;
        i += 1;
    }
    (i, high)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::Strategy;

    fn serde(line: &str) -> Option<RawLine<'_>> {
        serde_json::from_str(line).ok()
    }

    fn fast(line: &[u8]) -> Option<RawLine<'_>> {
        let mut raw = RawLine::default();
        scan_flat(line, &mut raw).then_some(raw)
    }

    /// The fast path either declines or agrees with serde, field by field.
    fn agrees(line: &str) -> bool {
        let fast = fast(line.as_bytes());
        match (&fast, serde(line)) {
            (None, _) => false,
            (Some(f), Some(s)) => {
                assert!(*f == s, "fast path and serde disagree: {line}");
                true
            }
            (Some(_), None) => panic!("fast path accepted what serde rejects: {line}"),
        }
    }

    #[test]
    fn flat_lines_take_the_fast_path() {
        assert!(agrees(
            r#"{"ts":"2026-11-29T00:00:00.000Z","client_ip":"1.2.3.4","status":200,"x":-1.5e3,"y":true,"z":null}"#
        ));
        assert!(agrees(
            r#"{ "StartUTC" : "2026" , "DownstreamStatus":401,"Duration":55861421,"msg":""} "#
        ));
        assert!(agrees(
            r#"{"user_agent":"caf\u00e9 ünï","w":"ünï"}"#.replace("\\u00e9", "é").as_str()
        ));
        assert!(agrees("{}"));
        assert!(agrees(r#"{"ts":1795910400123}"#));
    }

    #[test]
    fn anything_unusual_declines() {
        for line in [
            r#"{"ts":"a\"b"}"#,
            r#"{"ts":1,"ts":2}"#,
            r#"{"path":"/a","path":"/b"}"#,
            r#"{"geo":{"lat":1,"lon":2}}"#,
            r#"{"x":[1]}"#,
            r#"{"ts":null}"#,
            r#"{"ts":1.5}"#,
            r#"{"ts":-1}"#,
            r#"{"ts":01}"#,
            r#"{"ts":1} x"#,
            r#"{"ts":1,}"#,
            "{\"ts\":\"a\tb\"}",
            r#"{"method":5}"#,
            r#"{"ts":1"#,
            r#"{"é":1}"#,
            r#"{"ts":1234567890123456}"#,
        ] {
            assert!(fast(line.as_bytes()).is_none(), "{line}");
        }
    }

    /// The JSON keys the serde pass reads into a `RawLine`, straight from its derived
    /// `Deserialize`: the fast path must know every one of them, or it would skip a field
    /// that serde reads.
    fn raw_line_keys() -> &'static [&'static str] {
        use serde::de::{self, Visitor};
        struct Grab(std::cell::Cell<&'static [&'static str]>);
        impl<'de> serde::Deserializer<'de> for &Grab {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0.set(fields);
                Err(de::Error::custom("fields taken"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let g = Grab(std::cell::Cell::new(&[]));
        let _ = <RawLine<'_> as serde::Deserialize>::deserialize(&g);
        g.0.get()
    }

    #[test]
    fn the_fast_path_knows_every_field_serde_reads() {
        let keys = raw_line_keys();
        assert!(keys.len() > 40 && keys.contains(&"x-envoy-origin-path"), "{keys:?}");
        for k in keys {
            // one table makes both: every name serde reads has its slot
            assert!(!matches!(RawLine::default().slot(k), Slot::Unknown), "{k}");
            for v in ["\"v\"", "\"2026-11-29T00:00:00Z\"", "12", "1.5", "null", "true", "{}"] {
                let line = format!("{{\"{k}\":{v}}}");
                // either declines or agrees with serde, and never drops a field serde reads
                if agrees(&line) {
                    let f = fast(line.as_bytes()).unwrap();
                    let s = serde(&line).unwrap();
                    assert!(s == RawLine::default() || f != RawLine::default(), "{line}");
                }
                let dup = format!("{{\"{k}\":{v},\"{k}\":{v}}}");
                assert!(fast(dup.as_bytes()).is_none(), "{dup}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Flat lines over every known key and a few unknown ones, with values of every
        /// scalar shape: whenever the fast path accepts, serde reads the same.
        #[test]
        fn the_fast_path_agrees_with_serde_on_flat_lines(
            kv in proptest::collection::vec(
                (
                    proptest::prelude::prop_oneof![
                        proptest::sample::select(raw_line_keys().to_vec()).prop_map(str::to_string),
                        "[a-zA-Z_:-]{1,8}",
                    ],
                    proptest::prelude::prop_oneof![
                        "[ -~]{0,12}".prop_map(|s| serde_json::Value::String(s).to_string()),
                        proptest::prelude::any::<i64>().prop_map(|n| n.to_string()),
                        proptest::prelude::any::<u64>().prop_map(|n| n.to_string()),
                        proptest::prelude::any::<f64>()
                            .prop_filter("finite", |f| f.is_finite())
                            .prop_map(|f| serde_json::json!(f).to_string()),
                        proptest::prelude::Just("null".to_string()),
                        proptest::prelude::Just("false".to_string()),
                    ],
                ),
                0..6,
            )
        ) {
            let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let line = format!("{{{}}}", body.join(","));
            agrees(&line);
        }
    }

    /// The keys the fast path stores itself (all but the nested and rare fields).
    fn fast_keys() -> Vec<&'static str> {
        raw_line_keys()
            .iter()
            .copied()
            .filter(|k| !matches!(RawLine::default().slot(k), Slot::Serde))
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Every field the fast path stores, with plain string values, any subset, in any
        /// order (unknown keys between): the fast path takes the line, and reads exactly what
        /// serde reads, field by field (`RawLine`'s `PartialEq` compares them all).
        #[test]
        fn the_fast_path_reads_every_field_as_serde_does(
            fields in proptest::collection::btree_map(
                proptest::sample::select(fast_keys()),
                "[a-zA-Z0-9 ./:_-]{0,16}",
                1..12,
            ),
            junk in proptest::collection::vec("x[a-z]{1,6}", 0..3),
        ) {
            let mut body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{k}\":\"{v}\""))
                .collect();
            body.extend(junk.iter().enumerate().map(|(i, k)| format!("\"{k}{i}\":1")));
            let line = format!("{{{}}}", body.join(","));
            proptest::prop_assert!(agrees(&line), "the fast path declined {}", line);
            let f = fast(line.as_bytes()).unwrap();
            proptest::prop_assert!(f != RawLine::default());
        }
    }

    #[test]
    fn finds_specials_across_chunk_boundaries() {
        for n in 0..40 {
            let mut s = vec![b'a'; n];
            s.push(b'"');
            s.extend_from_slice(&[b'b'; 20]);
            assert_eq!(find_special(&s, 0), (n, false));
            s[n / 2] = 0xC3;
            if n > 0 {
                assert_eq!(find_special(&s, 0), (n, true));
            }
            let mut c = vec![b'a'; n];
            c.push(0x1f);
            assert_eq!(find_special(&c, 0), (n, false));
        }
    }
}
