//! Hostile traffic at the input caps, and the peak memory of the process that reads it: the
//! memory bench (`benches/memory.rs`, `spray`) and the memory-spray test
//! (`tests/it/memory_spray.rs`) both feed `tokenwatch replay` these lines and read its peak
//! resident set, so that the figure the README states and the bound a test holds come from
//! one maker.
//!
//! [`MaxTokens`] makes the most expensive tokens an attacker can send and still have decoded:
//! each one distinct, at the token size cap ([`DEFAULT_MAX_TOKEN_BYTES`]), every id claim
//! (`kid`, `iss`, `sub`, `jti`, `aud`) distinct and about 1 KiB, just under the id cap. A cache
//! capped by count rather than bytes pays ≈ 8.4 KiB for each (issue 11).

use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};

use base64::Engine as _;
use tokenwatch_core::token::DEFAULT_MAX_TOKEN_BYTES;

/// Distinct tokens of at most [`DEFAULT_MAX_TOKEN_BYTES`], every id claim distinct and about
/// 1 KiB, made quickly: the JSON is cut into pieces of a multiple of 3 bytes around each
/// 12-digit id, so the base64 of the fixed pieces is computed once and only the ids are
/// encoded per token.
pub struct MaxTokens {
    header: Vec<Option<String>>,
    payload: Vec<Option<String>>,
    sig: String,
}

/// Event time of [`MaxTokens::line`]'s first line (2026-11-30T00:00:00Z, in ms).
const T0_MS: i64 = 1_795_910_400_000;

fn b64(t: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t)
}

/// `after` behind a filler, the whole a multiple of 3 bytes and an id claim with it ≈ 1 KiB.
fn fill(after: &str) -> String {
    let mut n = 1_024 - 13;
    while (n + after.len()) % 3 != 0 {
        n -= 1;
    }
    format!("{}{after}", "x".repeat(n))
}

/// The base64 of each piece, an id (`None`) between any two.
fn encode(parts: &[String]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for (k, p) in parts.iter().enumerate() {
        if k > 0 {
            out.push(None);
        }
        out.push(Some(b64(p)));
    }
    out
}

impl Default for MaxTokens {
    fn default() -> Self {
        Self::new()
    }
}

impl MaxTokens {
    pub fn new() -> Self {
        let mut open = String::from("{");
        while (open.len() + r#""alg":"RS256","kid":"k"#.len()) % 3 != 0 {
            open.push(' ');
        }
        let header = [format!(r#"{open}"alg":"RS256","kid":"k"#), fill("\"}")];
        let tail = r#""],"exp":1795914000,"iat":1795910400,"pad":""#;
        let mut payload = vec![
            r#"{"iss":"i"#.to_string(),
            fill(r#"","sub":"s"#),
            fill(r#"","jti":"j"#),
            fill(r#"","aud":["a"#),
        ];
        let sig = b64(&"s".repeat(256));
        // The token's length with `pad` bytes of padding in the last claim.
        let sized = |pad: usize| {
            let len = |parts: &[String]| parts.iter().map(String::len).sum::<usize>() + 12 * (parts.len() - 1);
            let mut all = payload.clone();
            all.push(format!("{}{}\"}}", fill(tail), "p".repeat(pad)));
            ((len(&header) + len(&all)) * 4).div_ceil(3) + sig.len() + 2
        };
        let mut pad = 0;
        while sized(pad + 3) <= DEFAULT_MAX_TOKEN_BYTES {
            pad += 3;
        }
        payload.push(format!("{}{}\"}}", fill(tail), "p".repeat(pad)));
        MaxTokens {
            header: encode(&header),
            payload: encode(&payload),
            sig,
        }
    }

    /// The `i`-th token: its ids all carry `i`, so no two tokens share one.
    pub fn get(&self, i: u64) -> String {
        let id = b64(&format!("{i:012}"));
        let join = |parts: &[Option<String>]| parts.iter().map(|p| p.as_deref().unwrap_or(&id)).collect::<String>();
        format!("{}.{}.{}", join(&self.header), join(&self.payload), self.sig)
    }

    /// A canonical line carrying the `i`-th token that every rule tracks: attested
    /// (`authenticated: true`), accepted, from a /24 of its own (10.0.0.1 plus `256·i`),
    /// 1 ms of event time after line `i - 1`, so any number of lines stays within one window.
    pub fn line(&self, i: u64) -> String {
        let tok = self.get(i);
        let ip = std::net::Ipv4Addr::from(0x0a00_0001u32.wrapping_add((i as u32) << 8));
        let ts = T0_MS + i as i64;
        format!(
            r#"{{"ts":{ts},"client_ip":"{ip}","method":"GET","path":"/api/v1/orders","status":200,"user_agent":"spray","authenticated":true,"token":"{tok}"}}"#
        )
    }
}

/// What [`peak_rss`] measured.
#[derive(Debug)]
pub struct PeakRss {
    /// The process's maximum resident set, in bytes.
    pub bytes: u64,
    /// Its standard error (without `/usr/bin/time`'s line).
    pub stderr: String,
}

/// Why [`peak_rss`] has no figure.
#[derive(Debug, thiserror::Error)]
pub enum PeakRssError {
    #[error("cannot run /usr/bin/time (Debian package `time`; scripts/test-deps.sh installs it): {0}")]
    Spawn(std::io::Error),
    #[error("the measured process stopped reading its input: {0}")]
    Write(std::io::Error),
    #[error("the measured process failed ({status}): {stderr}")]
    Failed { status: ExitStatus, stderr: String },
    #[error("/usr/bin/time printed no maximum resident set: {stderr}")]
    NoFigure { stderr: String },
}

/// Runs `cmd` (its program, arguments, environment and directory) under `/usr/bin/time`,
/// writes `lines` to its standard input and closes it, and returns its peak resident set:
/// what the process paid at its worst, which a look at its /proc entry at any one moment
/// could miss. Its standard output is discarded.
pub fn peak_rss(cmd: &Command, lines: impl IntoIterator<Item = String>) -> Result<PeakRss, PeakRssError> {
    const MARK: &str = "tokenwatch-gen maxrss_kb ";
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", &format!("{MARK}%M")])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    let mut child = timed
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(PeakRssError::Spawn)?;
    let mut stdin = std::io::BufWriter::new(child.stdin.take().expect("stdin is piped"));
    let written = lines
        .into_iter()
        .try_for_each(|l| writeln!(stdin, "{l}"))
        .and_then(|()| stdin.flush());
    drop(stdin);
    let out = child.wait_with_output().map_err(PeakRssError::Spawn)?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(PeakRssError::Failed {
            status: out.status,
            stderr: err.into_owned(),
        });
    }
    written.map_err(PeakRssError::Write)?;
    let kb = err
        .lines()
        .find_map(|l| l.strip_prefix(MARK))
        .and_then(|v| v.trim().parse::<u64>().ok());
    let stderr = err
        .lines()
        .filter(|l| !l.starts_with(MARK))
        .collect::<Vec<_>>()
        .join("\n");
    match kb {
        Some(kb) => Ok(PeakRss {
            bytes: kb * 1024,
            stderr,
        }),
        None => Err(PeakRssError::NoFigure { stderr }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenwatch_core::token::{RawToken, TokenCache, TokenInfo};

    /// The tokens are what the spray needs: at the size cap yet decoded, with every id claim
    /// distinct between tokens and at most 1 KiB.
    #[test]
    fn max_tokens_are_distinct_decodable_and_at_the_caps() {
        let tokens = MaxTokens::new();
        let mut cache = TokenCache::new(Vec::new());
        let (a, b) = (tokens.get(7), tokens.get(8));
        assert!(
            a.len() <= DEFAULT_MAX_TOKEN_BYTES && a.len() + 8 > DEFAULT_MAX_TOKEN_BYTES,
            "{}",
            a.len()
        );
        let (ia, ib) = (
            cache.get(RawToken::new(&a)).expect("decodes"),
            cache.get(RawToken::new(&b)).expect("decodes"),
        );
        let ids = |t: &TokenInfo| -> Vec<String> {
            let mut v: Vec<String> = [&t.kid, &t.iss, &t.sub]
                .into_iter()
                .map(|c| c.as_deref().expect("claim").to_string())
                .collect();
            v.push(t.token_id.to_string());
            v.extend(t.aud.iter().map(ToString::to_string));
            v
        };
        let (xa, xb) = (ids(&ia), ids(&ib));
        assert_eq!(xa.len(), 5);
        for (x, y) in xa.iter().zip(&xb) {
            assert_ne!(x, y);
            assert!((1_000..=1_024).contains(&x.len()), "{}", x.len());
        }
        let line: serde_json::Value = serde_json::from_str(&tokens.line(7)).unwrap();
        assert_eq!(line["token"], a.as_str());
    }
}
