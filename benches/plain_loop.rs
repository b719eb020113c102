//! The floor of any detector's cost: parse each line with serde_json and decode its token's
//! claims (base64url + serde), nothing else — no cache, no rules, no output.
//!
//! `scripts/bench.sh --compare` runs it on the same file as `tokenwatch replay` and prints
//! the ratio. Usage: `plain_loop FILE` (canonical or traefik lines); prints `lines/s`.

use std::io::{BufRead, BufReader};
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;

#[derive(Deserialize)]
#[allow(non_snake_case, dead_code)]
struct Line<'a> {
    #[serde(borrow, default)]
    ts: Option<&'a str>,
    #[serde(borrow, default)]
    client_ip: Option<&'a str>,
    #[serde(borrow, default)]
    method: Option<&'a str>,
    #[serde(borrow, default)]
    path: Option<&'a str>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(borrow, default)]
    user_agent: Option<&'a str>,
    #[serde(borrow, default)]
    authorization: Option<&'a str>,
    #[serde(borrow, default)]
    StartUTC: Option<&'a str>,
    #[serde(borrow, default)]
    ClientHost: Option<&'a str>,
    #[serde(borrow, default)]
    RequestMethod: Option<&'a str>,
    #[serde(borrow, default)]
    RequestPath: Option<&'a str>,
    #[serde(default)]
    DownstreamStatus: Option<u16>,
    #[serde(borrow, default)]
    request_Authorization: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Aud {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    jti: Option<String>,
    exp: Option<i64>,
    iat: Option<i64>,
    aud: Option<Aud>,
}

fn main() {
    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .expect("usage: plain_loop FILE");
    let f = std::fs::File::open(&path).expect("open input");
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut buf = Vec::with_capacity(4096);
    let (mut lines, mut decoded) = (0u64, 0u64);
    let mut payload = Vec::with_capacity(2048);
    let start = Instant::now();
    loop {
        buf.clear();
        if r.read_until(b'\n', &mut buf).expect("read") == 0 {
            break;
        }
        lines += 1;
        let Ok(l) = serde_json::from_slice::<Line>(buf.trim_ascii_end()) else {
            continue;
        };
        let auth = l.authorization.or(l.request_Authorization).unwrap_or("");
        let token = auth.strip_prefix("Bearer ").unwrap_or(auth);
        let Some(p) = token.split('.').nth(1) else { continue };
        payload.clear();
        if URL_SAFE_NO_PAD.decode_vec(p, &mut payload).is_ok() && serde_json::from_slice::<Claims>(&payload).is_ok() {
            decoded += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("plain_loop: {lines} lines, {decoded} tokens decoded in {secs:.2} s");
    println!("{:.0}", lines as f64 / secs);
}
