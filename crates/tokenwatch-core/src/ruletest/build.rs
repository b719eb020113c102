//! A case as written ([`super::spec`]) into what runs: log lines and typed expectations.
//!
//! Event time is virtual: `at:` offsets count from [`START_MS`] (2026-11-29T00:00:00Z), so a
//! test reads as a story ("at 4m, from another network") and never depends on the clock.
//! Shorthand events become canonical-format lines; tokens are built from claims and signed
//! by [`super::keys::Signer`]. `lines:` are used as given, after `${token:NAME}` (a signed
//! token) and `${at:OFFSET}` (an RFC 3339 time) are filled in.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{json, Map, Value};

use super::keys::{Signature, Signer};
use super::spec::{Case, EventSpec, ExpectSpec, PostureSpec, TokenSpec};
use crate::decision::fmt_ts;
use crate::input::{Format, FormatError};
use crate::rules::{fmt_duration, parse_duration_ms};

/// The virtual start of every case: 2026-11-29T00:00:00Z.
pub(crate) const START_MS: i64 = 1_795_910_400_000;
const START_S: i64 = START_MS / 1000;
/// Issuer of test tokens that give none.
pub(crate) const DEFAULT_ISS: &str = "https://idp.example.com";
/// Most repeats one shorthand event may ask for.
const MAX_REPEAT: u64 = 10_000;

/// A case ready to run.
#[derive(Debug, Clone)]
pub struct BuiltCase {
    pub lines: Vec<String>,
    pub format: Format,
    pub expect: Vec<Expect>,
    pub expect_none: Vec<String>,
    /// The test file's posture ([`posture`]).
    pub posture: std::sync::Arc<crate::posture::Posture>,
}

/// One expected decision; `None` fields match anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expect {
    pub rule: String,
    pub token_id: Option<String>,
    pub subject: Option<String>,
    /// Offset from [`START_MS`].
    pub at_ms: Option<i64>,
    pub action: Option<String>,
    pub client_ip: Option<IpAddr>,
}

/// What in a case is wrong, in the words of the test file. Messages never quote a raw
/// line or a token: a test file may hold one someone pasted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("give `events:` or `lines:`, not both")]
    EventsAndLines,
    #[error("lines[{index}]: {source}")]
    Line { index: usize, source: Box<BuildError> },
    #[error("`max_key_age: {0}` is no duration (e.g. 90d)")]
    Duration(String),
    #[error("claim `{claim}`: an epoch number or an offset from the start; {source}")]
    TimeClaim { claim: String, source: OffsetError },
    #[error("`{key}: {value}` takes true or false")]
    NotBool { key: String, value: String },
    /// The name, with anything that looks like a JWT redacted.
    #[error("token `{0}` is used before its claims are given")]
    UnknownToken(String),
    #[error(transparent)]
    Offset(#[from] OffsetError),
    #[error("`repeat: {0}` must be a whole number from 1 to {MAX_REPEAT}")]
    Repeat(String),
    #[error("`status: {0}` is not an HTTP status")]
    Status(String),
    #[error("`token_in: {0}`: write header or query")]
    TokenIn(String),
    #[error("geo `{key}: {value}` is not a number")]
    Geo { key: &'static str, value: String },
    #[error("an unclosed `${{`")]
    Unclosed,
    /// The placeholder, with anything that looks like a JWT redacted.
    #[error("unknown placeholder `${{{0}}}`: use ${{token:NAME}} or ${{at:OFFSET}}")]
    Placeholder(String),
    #[error("`client_ip: {0}` is not an address")]
    ClientIp(String),
}

/// A time offset (`at:`, `every:`, `${at:...}`) that does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    #[error("`{0}` is not a time offset (write it like 0s, 4m or 10m1s)")]
    Empty(String),
    #[error("time offset `{offset}`: {reason}")]
    Part { offset: String, reason: String },
}

/// Builds one case; `Err` says what in the case is wrong.
pub(crate) fn build_case(
    case: &Case,
    rule: &str,
    format: Option<&str>,
    signer: &mut Signer,
) -> Result<BuiltCase, BuildError> {
    let format = match case.format.as_deref().or(format) {
        Some(f) => f.parse::<Format>()?,
        None if case.lines.is_empty() => Format::Canonical,
        None => Format::Auto,
    };
    if !case.events.is_empty() && !case.lines.is_empty() {
        return Err(BuildError::EventsAndLines);
    }
    let mut tokens = Tokens::default();
    for (name, claims) in &case.tokens {
        let t = tokens.build(claims, signer)?;
        tokens.named.insert(name.clone(), t);
    }
    let mut lines = Vec::new();
    for e in &case.events {
        event_lines(e, &mut tokens, signer, &mut lines)?;
    }
    for (i, l) in case.lines.iter().enumerate() {
        lines.push(fill(l, &tokens).map_err(|e| BuildError::Line {
            index: i,
            source: Box::new(e),
        })?);
    }
    let expect = case
        .expect
        .iter()
        .map(|e| expectation(e, rule))
        .collect::<Result<_, _>>()?;
    Ok(BuiltCase {
        lines,
        format,
        expect,
        expect_none: case.expect_none.clone(),
        posture: std::sync::Arc::default(),
    })
}

/// A test file's `posture:` as the service would configure it.
pub(crate) fn posture(spec: Option<&PostureSpec>) -> Result<crate::posture::Posture, BuildError> {
    let Some(s) = spec else {
        return Ok(crate::posture::Posture::default());
    };
    let max_key_age_ms = match &s.max_key_age {
        Some(d) => parse_duration_ms(d).map_err(|_| BuildError::Duration(d.clone()))?,
        None => crate::posture::DEFAULT_MAX_KEY_AGE_MS,
    };
    let sensitive = s
        .sensitive_claims
        .clone()
        .unwrap_or_else(crate::posture::default_sensitive_claims);
    Ok(crate::posture::Posture::new(
        s.issuers.clone(),
        s.audiences.iter().map(|(p, a)| (p.clone(), a.clone())).collect(),
        s.protected_paths.clone(),
        sensitive,
        max_key_age_ms,
    ))
}

/// Tokens of one case: by the name given under `tokens:`, and by `jti`.
#[derive(Default)]
struct Tokens {
    named: BTreeMap<String, String>,
    by_jti: BTreeMap<String, String>,
}

impl Tokens {
    fn build(&mut self, spec: &BTreeMap<String, String>, signer: &mut Signer) -> Result<String, BuildError> {
        let mut how = Signature::Valid;
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(DEFAULT_ISS));
        claims.insert("iat".into(), json!(START_S));
        for (k, v) in spec {
            match k.as_str() {
                "forged" => how = if bool_of(k, v)? { Signature::Forged } else { how },
                "alg" if v.eq_ignore_ascii_case("none") => how = Signature::Unsigned,
                "alg" if v == "RS256" => {}
                "alg" => how = Signature::Other(v.clone()),
                "iat" | "exp" | "nbf" => {
                    claims.insert(k.clone(), json!(time_claim(k, v)?));
                }
                "jti" | "sub" | "iss" | "aud" => {
                    claims.insert(k.clone(), json!(v));
                }
                _ => {
                    claims.insert(k.clone(), scalar(v));
                }
            }
        }
        if !claims.contains_key("exp") {
            let iat = claims["iat"].as_i64().unwrap_or(START_S);
            claims.insert("exp".into(), json!(iat.saturating_add(3600)));
        }
        let token = signer.sign(&Value::Object(claims), how);
        if let Some(jti) = spec.get("jti") {
            self.by_jti.insert(jti.clone(), token.clone());
        }
        Ok(token)
    }

    fn get(&self, name: &str) -> Result<String, BuildError> {
        self.named
            .get(name)
            .or_else(|| self.by_jti.get(name))
            .cloned()
            .ok_or_else(|| BuildError::UnknownToken(crate::token::redact_jwts(name).into_owned()))
    }
}

fn event_lines(
    e: &EventSpec,
    tokens: &mut Tokens,
    signer: &mut Signer,
    out: &mut Vec<String>,
) -> Result<(), BuildError> {
    let at = parse_offset(&e.at)?;
    let token = match &e.token {
        None => None,
        Some(TokenSpec::Name(n)) => Some(tokens.get(n)?),
        Some(TokenSpec::Claims(c)) => Some(tokens.build(c, signer)?),
    };
    let repeat = match &e.repeat {
        Some(n) => n
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_REPEAT).contains(n))
            .ok_or_else(|| BuildError::Repeat(n.clone()))?,
        None => 1,
    };
    let every = e.every.as_deref().map(parse_offset).transpose()?.unwrap_or(1_000);
    let mut line = Map::new();
    line.insert("client_ip".into(), json!(e.ip.as_deref().unwrap_or("198.51.100.7")));
    line.insert("method".into(), json!(e.method.as_deref().unwrap_or("GET")));
    let mut path = e.path.clone().unwrap_or_else(|| "/api/v1/orders".into());
    let status = match &e.status {
        Some(s) => s.parse::<u16>().map_err(|_| BuildError::Status(s.clone()))?,
        None => 200,
    };
    line.insert("status".into(), json!(status));
    line.insert(
        "user_agent".into(),
        json!(e.user_agent.as_deref().unwrap_or("rule-test/1")),
    );
    if let Some(t) = token {
        match e.token_in.as_deref().unwrap_or("header") {
            "header" => {
                line.insert("authorization".into(), json!(format!("Bearer {t}")));
            }
            "query" => {
                let sep = if path.contains('?') { '&' } else { '?' };
                path = format!("{path}{sep}access_token={t}");
            }
            other => return Err(BuildError::TokenIn(other.to_string())),
        }
    }
    line.insert("path".into(), json!(path));
    if let Some(g) = &e.geo {
        let num = |key: &'static str, v: &str| {
            v.parse::<f64>().map_err(|_| BuildError::Geo {
                key,
                value: v.to_string(),
            })
        };
        let acc = g.accuracy_km.as_deref().map(|a| num("accuracy_km", a)).transpose()?;
        line.insert(
            "geo".into(),
            json!({"lat": num("lat", &g.lat)?, "lon": num("lon", &g.lon)?, "accuracy_km": acc.unwrap_or(0.0)}),
        );
    }
    for i in 0..repeat {
        let ts = START_MS
            .saturating_add(at)
            .saturating_add(every.saturating_mul(i as i64));
        line.insert("ts".into(), json!(fmt_ts(ts)));
        out.push(Value::Object(line.clone()).to_string());
    }
    Ok(())
}

/// `${token:NAME}` and `${at:OFFSET}` in a raw line. Messages never quote the line: it may
/// hold a token someone pasted.
fn fill(line: &str, tokens: &Tokens) -> Result<String, BuildError> {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').ok_or(BuildError::Unclosed)?;
        let inner = &rest[i + 2..i + end];
        match inner.split_once(':') {
            Some(("token", name)) => out.push_str(&tokens.get(name)?),
            Some(("at", off)) => out.push_str(&fmt_ts(START_MS.saturating_add(parse_offset(off)?))),
            _ => return Err(BuildError::Placeholder(crate::token::redact_jwts(inner).into_owned())),
        }
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn expectation(e: &ExpectSpec, rule: &str) -> Result<Expect, BuildError> {
    Ok(Expect {
        rule: e.rule.clone().unwrap_or_else(|| rule.to_string()),
        token_id: e.token_id.clone(),
        subject: e.subject.clone(),
        at_ms: e.at.as_deref().map(parse_offset).transpose()?,
        action: e.action.clone(),
        client_ip: e
            .client_ip
            .as_deref()
            .map(|s| s.parse().map_err(|_| BuildError::ClientIp(s.to_string())))
            .transpose()?,
    })
}

/// `9m`, `10m1s`, `-2h`, `0`: milliseconds from the virtual start.
pub(crate) fn parse_offset(s: &str) -> Result<i64, OffsetError> {
    let t = s.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    if t.is_empty() {
        return Err(OffsetError::Empty(s.to_string()));
    }
    let mut total: i64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let unit_end = rest[num_end..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| num_end + i);
        let part = parse_duration_ms(&rest[..unit_end]).map_err(|e| OffsetError::Part {
            offset: s.to_string(),
            reason: ToString::to_string(&e),
        })?;
        total = total.saturating_add(part);
        rest = &rest[unit_end..];
    }
    Ok(if neg { -total } else { total })
}

/// An offset back in the shorthand (`9m`, `10m1s`, `-1h`).
pub(crate) fn fmt_offset(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let sign = if ms < 0 { "-" } else { "" };
    let mut left = ms.unsigned_abs() as i64;
    let mut out = String::from(sign);
    for unit in [86_400_000, 3_600_000, 60_000, 1_000, 1] {
        if left >= unit {
            out.push_str(&fmt_duration(left - left % unit));
            left %= unit;
        }
    }
    out
}

fn time_claim(k: &str, v: &str) -> Result<i64, BuildError> {
    if let Ok(n) = v.parse::<i64>() {
        return Ok(n);
    }
    parse_offset(v)
        .map(|ms| START_S.saturating_add(ms.div_euclid(1000)))
        .map_err(|source| BuildError::TimeClaim {
            claim: k.to_string(),
            source,
        })
}

fn bool_of(k: &str, v: &str) -> Result<bool, BuildError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(BuildError::NotBool {
            key: k.to_string(),
            value: v.to_string(),
        }),
    }
}

/// A custom claim: a number or a boolean when it reads as one, text otherwise.
fn scalar(v: &str) -> Value {
    if let Ok(n) = v.parse::<i64>() {
        return json!(n);
    }
    match v {
        "true" => json!(true),
        "false" => json!(false),
        _ => json!(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_read_and_print_back() {
        for (s, ms) in [
            ("0s", 0),
            ("9m", 540_000),
            ("10m1s", 601_000),
            ("-1h", -3_600_000),
            ("1s500ms", 1_500),
        ] {
            assert_eq!(parse_offset(s), Ok(ms), "{s}");
            assert_eq!(fmt_offset(ms), s);
        }
        assert!(parse_offset("soon").is_err());
        assert!(parse_offset("10").unwrap_err().to_string().contains("needs a unit"));
    }

    #[test]
    fn placeholders_fill_tokens_and_times() {
        let mut t = Tokens::default();
        t.named.insert("a".into(), "x.y.z".into());
        assert_eq!(
            fill(r#"{"ts":"${at:1m}","authorization":"Bearer ${token:a}"}"#, &t).unwrap(),
            r#"{"ts":"2026-11-29T00:01:00.000Z","authorization":"Bearer x.y.z"}"#
        );
        assert!(fill("${token:b}", &t)
            .unwrap_err()
            .to_string()
            .contains("`b` is used before"));
        assert!(fill("${when:1m}", &t).is_err());
        // a pasted token is never echoed
        let pasted = crate::token::encode_unsigned_parts(&json!({"alg": "RS256"}), &json!({"sub": "x"}), b"sig");
        for bad in [
            format!("{pasted} ${{"),
            format!("${{{pasted}}}"),
            format!("${{token:{pasted}}}"),
        ] {
            let e = fill(&bad, &t).unwrap_err().to_string();
            assert!(!e.contains(&pasted), "{e}");
        }
    }
}
