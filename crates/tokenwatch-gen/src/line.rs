//! Writing one request as a gateway would log it, and the broken lines real logs also hold.
//!
//! Lines are written straight into a `String` with a small JSON escaper instead of through
//! `serde_json::Value`: the generator feeds benchmarks, and building a map per line would
//! cost more than everything else it does. Field names and value shapes follow each
//! gateway's real output (Traefik's nanosecond `StartUTC`, Kong's nested objects, nginx's
//! `$msec` as a number), and a missing `Authorization` header is written the way each
//! gateway writes it: absent (canonical, Traefik, Kong), `null` (Envoy), `""` (nginx).

use super::rng::Rng;
use super::GenFormat;

/// One request, borrowed from wherever the generator keeps its parts.
pub(crate) struct Req<'a> {
    pub ts_ms: i64,
    pub ip: &'a str,
    pub method: &'a str,
    /// Path with query string.
    pub path: &'a str,
    pub status: u16,
    pub ua: &'a str,
    /// The compact token sent as `Authorization: Bearer <token>`.
    pub token: Option<&'a str>,
    /// Random bits for the fields no rule reads: source port, latency, sizes, protocol.
    pub noise: u64,
    /// Sent over plain HTTP. Only such requests get a scheme field in the formats that have
    /// one (Kong's `url` always shows it): an absent scheme reads as HTTPS, and the lines of
    /// the HTTPS traffic stay as short as before.
    pub http: bool,
}

/// `,"<field>":"http"` on a plain-HTTP request.
fn push_http_scheme(out: &mut String, r: &Req<'_>, field: &str) {
    if r.http {
        out.push_str(",\"");
        out.push_str(field);
        out.push_str("\":\"http\"");
    }
}

impl Req<'_> {
    fn port(&self) -> u64 {
        1024 + (self.noise & 0xffff) % 64_000
    }

    /// Upstream latency in ms: mostly tens of ms, now and then a slow request.
    fn latency_ms(&self) -> u64 {
        let base = 2 + ((self.noise >> 16) & 0x3f);
        if (self.noise >> 22) & 0xf == 0 {
            base + ((self.noise >> 26) & 0x3ff)
        } else {
            base
        }
    }

    /// Sub-millisecond part of the start time, in ns (Traefik logs nanoseconds).
    fn sub_ms_ns(&self) -> u64 {
        (self.noise >> 36) % 1_000_000
    }

    fn request_size(&self) -> u64 {
        180 + ((self.noise >> 40) & 0x7ff) + self.token.map_or(0, |t| t.len() as u64 + 22)
    }

    fn response_size(&self) -> u64 {
        match self.status {
            204 | 304 => 0,
            _ => 90 + ((self.noise >> 51) & 0x1fff),
        }
    }

    fn http2(&self) -> bool {
        self.noise >> 63 == 1
    }
}

const HOST: &str = "api.example.com";

/// Writes `req` as one line of `format` (no newline). Without `with_ts` the line lacks its
/// timestamp field(s): one of the malformed kinds.
pub(crate) fn write(format: GenFormat, req: &Req<'_>, with_ts: bool, out: &mut String) {
    match format {
        GenFormat::Canonical => canonical(req, with_ts, out),
        GenFormat::Traefik => traefik(req, with_ts, out),
        GenFormat::Kong => kong(req, with_ts, out),
        GenFormat::Envoy => envoy(req, with_ts, out),
        GenFormat::Nginx => nginx(req, with_ts, out),
    }
}

fn canonical(r: &Req<'_>, with_ts: bool, out: &mut String) {
    out.push('{');
    if with_ts {
        out.push_str("\"ts\":\"");
        push_rfc3339_ms(out, r.ts_ms);
        out.push_str("\",");
    }
    out.push_str("\"client_ip\":\"");
    out.push_str(r.ip);
    out.push_str("\",\"method\":\"");
    out.push_str(r.method);
    out.push_str("\",\"path\":");
    push_json_str(out, r.path);
    out.push_str(",\"status\":");
    push_u64(out, u64::from(r.status));
    out.push_str(",\"user_agent\":");
    push_json_str(out, r.ua);
    if let Some(t) = r.token {
        out.push_str(",\"authorization\":");
        push_bearer(out, t);
    }
    push_http_scheme(out, r, "scheme");
    out.push('}');
}

fn traefik(r: &Req<'_>, with_ts: bool, out: &mut String) {
    let duration_ns = r.latency_ms() * 1_000_000 + r.sub_ms_ns();
    out.push_str("{\"ClientAddr\":\"");
    if r.ip.contains(':') {
        out.push('[');
        out.push_str(r.ip);
        out.push(']');
    } else {
        out.push_str(r.ip);
    }
    out.push(':');
    push_u64(out, r.port());
    out.push_str("\",\"ClientHost\":\"");
    out.push_str(r.ip);
    out.push_str("\",\"DownstreamStatus\":");
    push_u64(out, u64::from(r.status));
    out.push_str(",\"Duration\":");
    push_u64(out, duration_ns);
    out.push_str(",\"OriginStatus\":");
    push_u64(out, u64::from(r.status));
    out.push_str(",\"RequestHost\":\"");
    out.push_str(HOST);
    out.push_str("\",\"RequestMethod\":\"");
    out.push_str(r.method);
    out.push_str("\",\"RequestPath\":");
    push_json_str(out, r.path);
    out.push_str(",\"RequestProtocol\":\"");
    out.push_str(if r.http2() { "HTTP/2.0" } else { "HTTP/1.1" });
    out.push_str("\",\"RouterName\":\"api@docker\",");
    if with_ts {
        out.push_str("\"StartUTC\":\"");
        push_date_time(out, r.ts_ms.div_euclid(1000));
        // Go's RFC3339Nano: up to nine fraction digits, trailing zeros dropped.
        let nanos = r.ts_ms.rem_euclid(1000) as u64 * 1_000_000 + r.sub_ms_ns();
        if nanos > 0 {
            let mut digits = [b'0'; 9];
            let mut n = nanos;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (n % 10) as u8;
                n /= 10;
            }
            let keep = 9 - digits.iter().rev().take_while(|&&d| d == b'0').count();
            out.push('.');
            out.push_str(std::str::from_utf8(&digits[..keep]).unwrap_or("0"));
        }
        out.push_str("Z\",");
    }
    if let Some(t) = r.token {
        out.push_str("\"request_Authorization\":");
        push_bearer(out, t);
        out.push(',');
    }
    out.push_str("\"request_User-Agent\":");
    push_json_str(out, r.ua);
    out.push_str(",\"level\":\"info\",\"msg\":\"\"");
    push_http_scheme(out, r, "RequestScheme");
    if with_ts {
        // The time the entry was written: when the response finished, whole seconds.
        out.push_str(",\"time\":\"");
        push_date_time(out, (r.ts_ms + r.latency_ms() as i64).div_euclid(1000));
        out.push_str("Z\"");
    }
    out.push('}');
}

fn kong(r: &Req<'_>, with_ts: bool, out: &mut String) {
    out.push('{');
    if with_ts {
        out.push_str("\"started_at\":");
        push_i64(out, r.ts_ms);
        out.push(',');
    }
    out.push_str("\"client_ip\":\"");
    out.push_str(r.ip);
    out.push_str("\",\"request\":{\"method\":\"");
    out.push_str(r.method);
    out.push_str("\",\"uri\":");
    push_json_str(out, r.path);
    out.push_str(if r.http {
        ",\"url\":\"http://"
    } else {
        ",\"url\":\"https://"
    });
    out.push_str(HOST);
    out.push_str(":8443");
    push_json_str_body(out, r.path);
    out.push_str("\",\"size\":");
    push_u64(out, r.request_size());
    out.push_str(",\"headers\":{");
    if let Some(t) = r.token {
        out.push_str("\"authorization\":");
        push_bearer(out, t);
        out.push(',');
    }
    out.push_str("\"user-agent\":");
    push_json_str(out, r.ua);
    out.push_str(",\"host\":\"");
    out.push_str(HOST);
    out.push_str("\"}},\"response\":{\"status\":");
    push_u64(out, u64::from(r.status));
    out.push_str(",\"size\":");
    push_u64(out, r.response_size());
    let total = r.latency_ms();
    let own = 1 + (r.noise >> 8) % 2;
    out.push_str("},\"latencies\":{\"request\":");
    push_u64(out, total + own);
    out.push_str(",\"kong\":");
    push_u64(out, own);
    out.push_str(",\"proxy\":");
    push_u64(out, total);
    out.push_str("},\"service\":{\"name\":\"api\"}}");
}

fn envoy(r: &Req<'_>, with_ts: bool, out: &mut String) {
    out.push('{');
    if with_ts {
        out.push_str("\"start_time\":\"");
        push_rfc3339_ms(out, r.ts_ms);
        out.push_str("\",");
    }
    out.push_str("\"client_ip\":\"");
    out.push_str(r.ip);
    out.push_str("\",\"method\":\"");
    out.push_str(r.method);
    out.push_str("\",\"path\":");
    push_json_str(out, r.path);
    out.push_str(",\"response_code\":");
    push_u64(out, u64::from(r.status));
    out.push_str(",\"user_agent\":");
    push_json_str(out, r.ua);
    out.push_str(",\"authorization\":");
    match r.token {
        Some(t) => push_bearer(out, t),
        None => out.push_str("null"),
    }
    push_http_scheme(out, r, "scheme");
    out.push('}');
}

fn nginx(r: &Req<'_>, with_ts: bool, out: &mut String) {
    out.push('{');
    if with_ts {
        out.push_str("\"msec\":");
        push_i64(out, r.ts_ms.div_euclid(1000));
        out.push('.');
        push_padded(out, r.ts_ms.rem_euclid(1000) as u64, 3);
        out.push_str(",\"time_iso8601\":\"");
        push_date_time(out, r.ts_ms.div_euclid(1000));
        out.push_str("+00:00\",");
    }
    out.push_str("\"remote_addr\":\"");
    out.push_str(r.ip);
    out.push_str("\",\"request_method\":\"");
    out.push_str(r.method);
    out.push_str("\",\"request_uri\":");
    push_json_str(out, r.path);
    out.push_str(",\"status\":");
    push_u64(out, u64::from(r.status));
    out.push_str(",\"http_user_agent\":");
    push_json_str(out, r.ua);
    out.push_str(",\"http_authorization\":");
    match r.token {
        Some(t) => push_bearer(out, t),
        None => out.push_str("\"\""),
    }
    push_http_scheme(out, r, "scheme");
    out.push('}');
}

/// The kinds of broken line mixed in at `malformed_rate`, in equal shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// A line cut short (a crashed writer, a full disk).
    Truncated,
    /// A line that is not JSON at all (error log lines in the access log).
    NotJson,
    /// Valid JSON that is not an object.
    JsonArray,
    /// An object without the format's timestamp field.
    MissingTs,
    /// A bearer token with characters outside base64url.
    BadBase64,
    /// A bearer token with only two segments.
    TwoSegments,
}

impl Malformed {
    pub(crate) const ALL: [Malformed; 6] = [
        Malformed::Truncated,
        Malformed::NotJson,
        Malformed::JsonArray,
        Malformed::MissingTs,
        Malformed::BadBase64,
        Malformed::TwoSegments,
    ];
}

/// Writes a malformed line about `req`. For the two token kinds, `req.token` must already be
/// broken (see [`break_token`]).
pub(crate) fn write_malformed(kind: Malformed, format: GenFormat, req: &Req<'_>, rng: &mut Rng, out: &mut String) {
    match kind {
        Malformed::Truncated => {
            write(format, req, true, out);
            // Cutting anywhere before the closing brace leaves invalid JSON.
            let cut = (out.len() as f64 * (0.2 + 0.7 * rng.f64())) as usize;
            out.truncate(cut.clamp(1, out.len() - 1));
        }
        Malformed::NotJson => {
            let secs = req.ts_ms.div_euclid(1000);
            match rng.below(3) {
                0 => {
                    // nginx's error log, sent to the same file by mistake.
                    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
                    push_i64(out, y);
                    out.push('/');
                    push_padded(out, u64::from(m), 2);
                    out.push('/');
                    push_padded(out, u64::from(d), 2);
                    out.push(' ');
                    push_hms(out, secs);
                    out.push_str(" [error] 29#29: *");
                    push_u64(out, 1000 + (req.noise % 90_000));
                    out.push_str(" upstream timed out (110: Connection timed out) while reading response header from upstream, client: ");
                    out.push_str(req.ip);
                    out.push_str(", server: api.example.com, request: \"");
                    out.push_str(req.method);
                    out.push(' ');
                    out.push_str(req.path);
                    out.push_str(" HTTP/1.1\"");
                }
                1 => {
                    // The combined text format, from a gateway not yet switched to JSON.
                    out.push_str(req.ip);
                    out.push_str(" - - [");
                    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
                    push_padded(out, u64::from(d), 2);
                    out.push('/');
                    out.push_str(MONTHS[(m - 1) as usize]);
                    out.push('/');
                    push_i64(out, y);
                    out.push(':');
                    push_hms(out, secs);
                    out.push_str(" +0000] \"");
                    out.push_str(req.method);
                    out.push(' ');
                    out.push_str(req.path);
                    out.push_str(" HTTP/1.1\" ");
                    push_u64(out, u64::from(req.status));
                    out.push(' ');
                    push_u64(out, req.response_size());
                    out.push_str(" \"-\" \"");
                    out.push_str(req.ua);
                    out.push('"');
                }
                _ => {
                    // Traefik's own text log.
                    out.push_str("time=\"");
                    push_date_time(out, secs);
                    out.push_str("Z\" level=warning msg=\"Error while Hijack: connection reset by peer\"");
                }
            }
        }
        Malformed::JsonArray => {
            out.push_str("[\"");
            out.push_str(req.method);
            out.push_str("\",");
            push_json_str(out, req.path);
            out.push(',');
            push_u64(out, u64::from(req.status));
            out.push_str(",\"");
            out.push_str(req.ip);
            out.push_str("\"]");
        }
        Malformed::MissingTs => write(format, req, false, out),
        Malformed::BadBase64 | Malformed::TwoSegments => write(format, req, true, out),
    }
}

/// A broken copy of `token` for [`Malformed::BadBase64`] and [`Malformed::TwoSegments`].
pub(crate) fn break_token(kind: Malformed, token: &str, rng: &mut Rng) -> String {
    let (head, rest) = token.split_once('.').unwrap_or((token, ""));
    let payload = rest.split('.').next().unwrap_or("");
    match kind {
        Malformed::TwoSegments => format!("{head}.{payload}"),
        _ => {
            // '!' and '*' are outside base64url but need no JSON escaping.
            let mut p: Vec<u8> = payload.bytes().collect();
            for _ in 0..3 {
                if !p.is_empty() {
                    let i = rng.below(p.len() as u64) as usize;
                    p[i] = if rng.chance(0.5) { b'!' } else { b'*' };
                }
            }
            let sig = rest.split('.').nth(1).unwrap_or("");
            format!("{head}.{}.{sig}", String::from_utf8_lossy(&p))
        }
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Tokens are base64url and dots (even the deliberately broken ones), so they are copied
/// without the escaping scan: they are most of every line's bytes.
fn push_bearer(out: &mut String, token: &str) {
    out.push_str("\"Bearer ");
    out.push_str(token);
    out.push('"');
}

/// A JSON string literal.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    push_json_str_body(out, s);
    out.push('"');
}

/// The inside of a JSON string literal. Almost everything the generator writes needs no
/// escaping, so the check comes first and the escaping loop rarely runs.
fn push_json_str_body(out: &mut String, s: &str) {
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                out.push(char::from_digit(c as u32 >> 4, 16).unwrap_or('0'));
                out.push(char::from_digit(c as u32 & 15, 16).unwrap_or('0'));
            }
            c => out.push(c),
        }
    }
}

pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

fn push_i64(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_u64(out, n.unsigned_abs());
}

fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut v = n;
    let mut i = buf.len();
    while v > 0 || buf.len() - i < width {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`); chrono's formatter costs more per line.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn push_hms(out: &mut String, secs: i64) {
    let s = secs.rem_euclid(86_400) as u64;
    push_padded(out, s / 3600, 2);
    out.push(':');
    push_padded(out, s / 60 % 60, 2);
    out.push(':');
    push_padded(out, s % 60, 2);
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) for epoch seconds.
pub(crate) fn push_date_time(out: &mut String, secs: i64) {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    push_padded(out, y.max(0) as u64, 4);
    out.push('-');
    push_padded(out, u64::from(m), 2);
    out.push('-');
    push_padded(out, u64::from(d), 2);
    out.push('T');
    push_hms(out, secs);
}

/// RFC 3339 UTC with milliseconds: `2026-11-29T04:30:00.123Z`.
pub(crate) fn push_rfc3339_ms(out: &mut String, ms: i64) {
    push_date_time(out, ms.div_euclid(1000));
    out.push('.');
    push_padded(out, ms.rem_euclid(1000) as u64, 3);
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_chrono() {
        let mut rng = Rng::new(9);
        for _ in 0..2000 {
            let ms = rng.range(0, 4_102_444_800_000);
            let mut s = String::new();
            push_rfc3339_ms(&mut s, ms);
            let want = chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            assert_eq!(s, want);
        }
    }

    #[test]
    fn json_escaping_and_numbers() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
        s.clear();
        push_u64(&mut s, 0);
        s.push(' ');
        push_i64(&mut s, -42);
        s.push(' ');
        push_padded(&mut s, 7, 3);
        s.push(' ');
        push_u64(&mut s, u64::MAX);
        assert_eq!(s, format!("0 -42 007 {}", u64::MAX));
    }

    #[test]
    fn traefik_start_drops_trailing_zeros() {
        let req = Req {
            ts_ms: 1_795_926_600_120,
            ip: "2001:218::1",
            method: "GET",
            path: "/x",
            status: 200,
            ua: "ua",
            token: None,
            noise: 0,
            http: false,
        };
        let mut s = String::new();
        write(GenFormat::Traefik, &req, true, &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["StartUTC"], "2026-11-29T04:30:00.12Z");
        assert_eq!(v["ClientAddr"], "[2001:218::1]:1024");
        assert!(v.get("request_Authorization").is_none());
    }

    /// A plain-HTTP request reads as `http` in every format, through tokenwatch's own parser;
    /// an HTTPS one as `https` (Kong's url) or no scheme at all.
    #[test]
    fn plain_http_is_read_as_http_in_every_format() {
        use tokenwatch_core::input::{Format, Parser, Scheme};
        use tokenwatch_core::token::TokenCache;
        for format in GenFormat::ALL {
            let parser = Parser::new(format.name().parse::<Format>().unwrap(), None).unwrap();
            for http in [true, false] {
                let req = Req {
                    ts_ms: 1_795_926_600_120,
                    ip: "192.0.2.7",
                    method: "GET",
                    path: "/api/v1/orders",
                    status: 200,
                    ua: "ua",
                    token: None,
                    noise: 0,
                    http,
                };
                let mut line = String::new();
                write(format, &req, true, &mut line);
                let mut cache = TokenCache::new(vec![]);
                let scheme = parser.parse(line.as_bytes(), &mut cache).unwrap().event.scheme;
                if http {
                    assert_eq!(scheme, Some(Scheme::Http), "{format:?}: {line}");
                } else {
                    assert_ne!(scheme, Some(Scheme::Http), "{format:?}: {line}");
                }
            }
        }
    }
}
