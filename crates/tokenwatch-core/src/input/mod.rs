//! Input: gateway access-log lines in, one [`Event`] per line out.
//!
//! Every supported gateway writes one JSON object per line, each with its own field names.
//! All of them are read by one borrowed serde pass ([`RawLine`] holds the union of their
//! fields), after which a small per-format function picks the fields it owns
//! ([`canonical`], [`traefik`], [`kong`], [`apisix`], [`envoy`], [`nginx`], [`aws`]), or a
//! user-defined [`mapping`] reads them by JSON path. `auto` decides per line by the timestamp
//! fields present; when they fit more than one preset, the one that reads more of the
//! request (time, token, client, method, path) wins, so a line is never taken for a gateway
//! that would decode half of it.
//!
//! A line that is not valid input yields a [`Skip`] with a stable reason, counted by the
//! caller; nothing here panics on any input (a property test feeds arbitrary bytes). Strings
//! are borrowed from the line whenever JSON escaping allows, so a typical line allocates
//! nothing here.

pub mod apisix;
pub mod aws;
pub mod canonical;
pub mod envoy;
pub mod kong;
pub mod lines;
pub mod mapping;
pub mod nginx;
pub(crate) mod raw;
pub(crate) mod scan;
pub mod traefik;

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::token::{self, RawToken, TokenCache, TokenInfo};

pub use mapping::Mapping;
pub(crate) use raw::RawLine;
pub use raw::Scalar;

/// A location: from the log's `geo` field or from the GeoIP database.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
    /// The radius (km) within which the client is, as the database or the log says.
    pub accuracy_km: f64,
}

/// How the client connected, where the gateway logs it (`scheme` of the canonical, nginx and
/// Envoy presets, Traefik's `RequestScheme`, Kong's and APISIX's `request.url`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// `http` or `https` in any letter case; anything else is no scheme.
    pub fn parse(s: &str) -> Option<Scheme> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One request as every later stage sees it, whatever gateway logged it.
///
/// Its `Debug` redacts: the path is shown without its query and with JWTs replaced, the user
/// agent and method with JWTs replaced, so that `{:?}` of an event can never print a token.
#[derive(Clone)]
pub struct Event<'a> {
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    /// IPv4-mapped IPv6 addresses are mapped to IPv4 when parsed.
    pub client_ip: Option<IpAddr>,
    pub method: Cow<'a, str>,
    /// The path without its query string (or fragment), with any JWT-looking text redacted
    /// (see [`token::clean_path`]): rules store it and decisions quote it. Tokens in the
    /// query were read before it was cut.
    pub path: Cow<'a, str>,
    /// HTTP status; `None` when the gateway did not log one (neither accepted nor rejected).
    pub status: Option<u16>,
    pub user_agent: Cow<'a, str>,
    /// The token the request carried (Authorization header, `token` field, decoded claims,
    /// or else the first JWT in the URL query).
    pub token: Option<Arc<TokenInfo>>,
    /// The token above was (also) found in the URL query string.
    pub token_in_url: bool,
    /// The token is genuine: tokenwatch verified its signature, or (for a token not taken from
    /// the URL) the gateway attested it with claims that match it ([`crate::verify`]).
    pub authenticated: bool,
    pub geo: Option<GeoPoint>,
    /// `None` when the format does not log it.
    pub scheme: Option<Scheme>,
    /// This token came second: it was found in the URL query of a request whose header
    /// carried another token, the one the gateway answered for. The request's status says
    /// nothing about this one (see [`crate::pipeline`]).
    pub second_token: bool,
}

impl Event<'_> {
    /// Accepted by the gateway: any status but 401 and 403; `None` without a status.
    pub fn accepted(&self) -> Option<bool> {
        self.status.map(|s| !matches!(s, 401 | 403))
    }
}

impl fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("ts_ms", &self.ts_ms)
            .field("client_ip", &self.client_ip)
            .field("method", &token::redact_jwts(&self.method))
            .field("path", &token::clean_path(&self.path))
            .field("status", &self.status)
            .field("user_agent", &token::redact_jwts(&self.user_agent))
            .field("token", &self.token)
            .field("token_in_url", &self.token_in_url)
            .field("authenticated", &self.authenticated)
            .field("geo", &self.geo)
            .field("scheme", &self.scheme)
            .field("second_token", &self.second_token)
            .finish()
    }
}

/// A line's event plus, rarely, a second token found in its URL query that differs from the
/// header's. The pipeline evaluates the request once per token it carried.
pub struct Parsed<'a> {
    pub event: Event<'a>,
    pub url_token: Option<Arc<TokenInfo>>,
    /// Tokens on this line that could not be decoded, by reason (the event still counts).
    pub token_errors: Vec<token::DecodeError>,
    /// The gateway attested a token whose claims are not those of the token on the line.
    pub attestation_mismatch: bool,
    /// The preset that read the line (`Custom` for a mapping).
    pub format: Format,
    /// The gateway logged the Authorization header as `REDACTED` (Kong always does): the
    /// request may well have carried a token that this line cannot show.
    pub authorization_redacted: bool,
}

impl fmt::Debug for Parsed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parsed")
            .field("event", &self.event)
            .field("url_token", &self.url_token)
            .field("token_errors", &self.token_errors)
            .field("attestation_mismatch", &self.attestation_mismatch)
            .field("format", &self.format)
            .field("authorization_redacted", &self.authorization_redacted)
            .finish()
    }
}

/// Why a line was skipped. Stable names: they are metric label values and summary keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    LineTooLong,
    Empty,
    InvalidJson,
    NotAnObject,
    UnknownFormat,
    MissingTimestamp,
    BadTimestamp,
    BadClientIp,
    BadStatus,
    BadGeo,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::LineTooLong => "line_too_long",
            Skip::Empty => "empty_line",
            Skip::InvalidJson => "invalid_json",
            Skip::NotAnObject => "not_a_json_object",
            Skip::UnknownFormat => "unknown_format",
            Skip::MissingTimestamp => "missing_timestamp",
            Skip::BadTimestamp => "bad_timestamp",
            Skip::BadClientIp => "bad_client_ip",
            Skip::BadStatus => "bad_status",
            Skip::BadGeo => "bad_geo",
        }
    }

    pub const ALL: [Skip; 10] = [
        Skip::LineTooLong,
        Skip::Empty,
        Skip::InvalidJson,
        Skip::NotAnObject,
        Skip::UnknownFormat,
        Skip::MissingTimestamp,
        Skip::BadTimestamp,
        Skip::BadClientIp,
        Skip::BadStatus,
        Skip::BadGeo,
    ];
}

/// The log format of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Auto,
    Canonical,
    Traefik,
    Kong,
    Envoy,
    Nginx,
    /// The user-defined mapping from the config file.
    Custom,
    /// Apache APISIX's loggers.
    Apisix,
    /// Amazon API Gateway access logs.
    Aws,
}

impl Format {
    /// Every format a user can name, `auto` first.
    pub const ALL: [Format; 9] = [
        Format::Auto,
        Format::Canonical,
        Format::Traefik,
        Format::Kong,
        Format::Apisix,
        Format::Envoy,
        Format::Nginx,
        Format::Aws,
        Format::Custom,
    ];

    /// The preset's name, as `--format` takes it and as metric labels show it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Canonical => "canonical",
            Format::Traefik => "traefik",
            Format::Kong => "kong",
            Format::Apisix => "apisix",
            Format::Envoy => "envoy",
            Format::Nginx => "nginx",
            Format::Aws => "aws",
            Format::Custom => "custom",
        }
    }
}

impl FromStr for Format {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| FormatError::Unknown(s.to_string()))
    }
}

/// A format that cannot read lines: a name no preset has, or `custom` without its mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("unknown format `{0}`: expected auto, canonical, traefik, kong, apisix, envoy, nginx, aws or custom")]
    Unknown(String),
    #[error("format `custom` needs an [input.mapping] table in the config file")]
    CustomWithoutMapping,
}

/// The fields a format picked out of a line, before they are checked and typed. Its `Debug`
/// shows whether the token fields are present, never their values.
#[derive(Default)]
pub struct Fields<'a> {
    pub ts: Option<Scalar<'a>>,
    pub client_ip: Option<Cow<'a, str>>,
    pub method: Option<Cow<'a, str>>,
    pub path: Option<Cow<'a, str>>,
    /// The query string, for gateways that log it apart from the path (without the `?`).
    pub query: Option<Cow<'a, str>>,
    pub status: Option<Scalar<'a>>,
    pub user_agent: Option<Cow<'a, str>>,
    /// An `Authorization` header value (`Bearer <jwt>`).
    pub authorization: Option<Cow<'a, str>>,
    /// A bare compact JWT.
    pub token: Option<Cow<'a, str>>,
    pub jwt_header: Option<serde_json::Value>,
    pub jwt_claims: Option<serde_json::Value>,
    pub geo: Option<raw::RawGeo>,
    /// The gateway says it verified the line's token (`None`: it does not say).
    pub authenticated: Option<bool>,
    /// `jwt_claims` are the claims of a token the gateway verified (envoy, kong), so they
    /// attest the token they describe.
    pub claims_attested: bool,
    /// `http` / `https` as logged ([`Scheme::parse`]).
    pub scheme: Option<Cow<'a, str>>,
}

impl Fields<'_> {
    /// How much of the request these fields describe: time, token, client, method, path.
    /// `auto` takes the preset that scores highest.
    fn score(&self) -> u8 {
        let text = |s: &Option<Cow<'_, str>>| s.as_deref().is_some_and(|s| !matches!(s.trim(), "" | "-"));
        let time = self.ts.as_ref().is_some_and(|t| raw::timestamp_ms(t).is_ok());
        let token = self.authorization.as_deref().is_some_and(|a| !is_redacted(a))
            || self.token.as_deref().is_some_and(|t| !is_redacted(t))
            || self.jwt_claims.as_ref().is_some_and(serde_json::Value::is_object);
        [time, token, text(&self.client_ip), text(&self.method), text(&self.path)]
            .into_iter()
            .map(u8::from)
            .sum()
    }
}

impl fmt::Debug for Fields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |s: &Option<Cow<'_, str>>| s.as_deref().map(|s| token::redact_jwts(s).into_owned());
        let present = |b: bool| if b { "<present>" } else { "<absent>" };
        f.debug_struct("Fields")
            .field("ts", &self.ts)
            .field("client_ip", &text(&self.client_ip))
            .field("method", &text(&self.method))
            .field("path", &self.path.as_deref().map(|p| token::clean_path(p).into_owned()))
            .field("query", &present(self.query.is_some()))
            .field("status", &self.status)
            .field("user_agent", &text(&self.user_agent))
            .field("authorization", &present(self.authorization.is_some()))
            .field("token", &present(self.token.is_some()))
            .field("jwt_header", &present(self.jwt_header.is_some()))
            .field("jwt_claims", &present(self.jwt_claims.is_some()))
            .field("geo", &self.geo)
            .field("authenticated", &self.authenticated)
            .field("claims_attested", &self.claims_attested)
            .field("scheme", &self.scheme.as_deref().and_then(Scheme::parse))
            .finish()
    }
}

/// Turns lines into events for one format. Holds no per-line state.
#[derive(Clone)]
pub struct Parser {
    format: Format,
    mapping: Option<Mapping>,
}

impl Parser {
    pub fn new(format: Format, mapping: Option<Mapping>) -> Result<Self, FormatError> {
        if format == Format::Custom && mapping.is_none() {
            return Err(FormatError::CustomWithoutMapping);
        }
        Ok(Parser { format, mapping })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Parses one line (without its newline). Token decoding goes through `tokens`, so each
    /// distinct token is decoded once.
    pub fn parse<'a>(&self, line: &'a [u8], tokens: &mut TokenCache) -> Result<Parsed<'a>, Skip> {
        let line = trim_ascii(line);
        if line.is_empty() {
            return Err(Skip::Empty);
        }
        if line[0] != b'{' {
            return Err(if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok() {
                Skip::NotAnObject
            } else {
                Skip::InvalidJson
            });
        }
        let (fields, format) = if self.format == Format::Custom {
            match &self.mapping {
                Some(m) => (m.fields(line)?, Format::Custom),
                None => return Err(Skip::UnknownFormat),
            }
        } else {
            let mut raw = RawLine::default();
            if !scan::scan_flat(line, &mut raw) {
                raw = serde_json::from_slice(line).map_err(|_| Skip::InvalidJson)?;
            }
            match self.format {
                Format::Auto => auto_fields(&mut raw)?,
                f => (preset_fields(f, &mut raw)?, f),
            }
        };
        finish(fields, format, tokens)
    }
}

/// The fields a preset reads from the line.
fn preset_fields<'a>(format: Format, raw: &mut RawLine<'a>) -> Result<Fields<'a>, Skip> {
    Ok(match format {
        Format::Canonical => canonical::fields(raw),
        Format::Traefik => traefik::fields(raw),
        Format::Kong => kong::fields(raw),
        Format::Apisix => apisix::fields(raw),
        Format::Envoy => envoy::fields(raw),
        Format::Nginx => nginx::fields(raw),
        Format::Aws => aws::fields(raw),
        Format::Auto | Format::Custom => return Err(Skip::UnknownFormat),
    })
}

/// `auto`: the one preset whose timestamp the line has, or of several, the one whose fields
/// describe the most of the request (the first listed on a tie). Only such rare lines pay for
/// trying more than one preset.
fn auto_fields<'a>(raw: &mut RawLine<'a>) -> Result<(Fields<'a>, Format), Skip> {
    let candidates = raw.candidates();
    let mut it = candidates.iter();
    let first = it.next().ok_or(Skip::UnknownFormat)?;
    if candidates.len() == 1 {
        return Ok((preset_fields(first, raw)?, first));
    }
    let pristine = raw.clone();
    let mut best = (preset_fields(first, raw)?, first);
    let mut best_score = best.0.score();
    for f in it {
        let fields = preset_fields(f, &mut pristine.clone())?;
        let score = fields.score();
        if score > best_score {
            best = (fields, f);
            best_score = score;
        }
    }
    Ok(best)
}

/// Checks and types the picked fields, and decodes the tokens.
fn finish<'a>(f: Fields<'a>, format: Format, tokens: &mut TokenCache) -> Result<Parsed<'a>, Skip> {
    let ts_ms = raw::timestamp_ms(f.ts.as_ref().ok_or(Skip::MissingTimestamp)?)?;
    let client_ip = match f.client_ip.as_deref().map(str::trim) {
        None | Some("" | "-") => None,
        Some(s) => Some(parse_ip(s).ok_or(Skip::BadClientIp)?),
    };
    let status = match &f.status {
        None => None,
        Some(s) => raw::status(s)?,
    };
    let geo = match f.geo {
        None => None,
        Some(g) => Some(g.check().ok_or(Skip::BadGeo)?),
    };
    let mut f = f;
    let path = f.path.take().unwrap_or(Cow::Borrowed(""));
    let full_path = origin_form(with_query(path, f.query.take()));
    let authorization_redacted = f
        .authorization
        .as_deref()
        .is_some_and(|a| a.trim().eq_ignore_ascii_case("redacted"));
    let t = read_tokens(&f, &full_path, tokens);
    let scheme = f.scheme.as_deref().and_then(Scheme::parse);
    Ok(Parsed {
        event: Event {
            ts_ms,
            client_ip,
            method: f.method.unwrap_or(Cow::Borrowed("")),
            path: clean_path(full_path),
            status,
            user_agent: f.user_agent.unwrap_or(Cow::Borrowed("")),
            token: t.token,
            token_in_url: t.token_in_url,
            authenticated: t.authenticated,
            geo,
            scheme,
            second_token: false,
        },
        url_token: t.url_token,
        token_errors: t.errors,
        attestation_mismatch: t.attestation_mismatch,
        format,
        authorization_redacted,
    })
}

/// The tokens a line carries, and the evidence that its main token is genuine.
struct LineTokens {
    token: Option<Arc<TokenInfo>>,
    token_in_url: bool,
    url_token: Option<Arc<TokenInfo>>,
    authenticated: bool,
    attestation_mismatch: bool,
    errors: Vec<token::DecodeError>,
}

/// Decodes the line's tokens: the header's (or the bare `token`), else the gateway's claims,
/// else the first in the URL query. The gateway's attestation counts for the header token only
/// when its claims (if logged) are that token's, and never for a token taken from the URL.
fn read_tokens(f: &Fields<'_>, full_path: &str, tokens: &mut TokenCache) -> LineTokens {
    let mut t = LineTokens {
        token: None,
        token_in_url: false,
        url_token: None,
        authenticated: false,
        attestation_mismatch: false,
        errors: Vec::new(),
    };
    let claims = f
        .jwt_claims
        .as_ref()
        .and_then(|c| token::from_claims(f.jwt_header.as_ref(), c, tokens.wanted_claims()))
        .map(|mut info| {
            // Names only, per line: a gateway that logs claims logs them all on every line.
            if let (Some(p), Some(map)) = (tokens.posture(), f.jwt_claims.as_ref().and_then(|c| c.as_object())) {
                info.sensitive_claims = p.sensitive_names(map.keys().map(|k| &**k));
            }
            info
        });
    let gateway_says = f.authenticated == Some(true) || (f.claims_attested && claims.is_some());
    let header_token = f
        .authorization
        .as_deref()
        .filter(|a| !is_redacted(a))
        .and_then(RawToken::from_authorization)
        .or_else(|| {
            f.token
                .as_deref()
                .filter(|t| !t.trim().is_empty() && !is_redacted(t))
                .map(RawToken::new)
        });
    let mut attested = false;
    if let Some(raw) = header_token {
        match tokens.get(raw) {
            Ok(tok) => {
                let matches = claims.as_ref().is_none_or(|c| same_token(&tok, c));
                attested = gateway_says && matches;
                t.attestation_mismatch = gateway_says && !matches;
                t.token = Some(tok);
            }
            Err(e) => t.errors.push(e),
        }
    } else if let Some(c) = claims {
        attested = gateway_says;
        t.token = Some(Arc::new(c));
    }

    if full_path.contains('?') {
        for raw in token::tokens_in_query(full_path) {
            match tokens.get(raw) {
                // The very token of the header (the same cache entry), sent in the URL too.
                Ok(u) if t.token.as_ref().is_some_and(|h| Arc::ptr_eq(h, &u)) => t.token_in_url = true,
                Ok(u) if t.token.is_none() => {
                    t.token = Some(u);
                    t.token_in_url = true;
                }
                Ok(u) => {
                    if t.url_token.is_none() {
                        t.url_token = Some(u);
                    }
                }
                Err(e) => t.errors.push(e),
            }
        }
    }
    // `attested` is only ever set for a header token or the gateway's claims: a token taken
    // from the URL is authenticated by its own signature alone.
    t.authenticated = t.token.as_ref().is_some_and(|tok| tok.verified || attested);
    t
}

/// Whether a gateway's verified claims describe this raw token: the same issuer, subject and
/// id (each absent from both, or equal: the raw token's are attacker-written until proven),
/// and the same `exp` where both have one.
fn same_token(raw: &TokenInfo, gateway: &TokenInfo) -> bool {
    let jti = |t: &TokenInfo| {
        let derived = t.token_id.starts_with("sha256:") || t.token_id.starts_with("claims:");
        (!derived).then(|| t.token_id.clone())
    };
    raw.iss == gateway.iss
        && raw.sub == gateway.sub
        && jti(raw) == jti(gateway)
        && raw.exp.zip(gateway.exp).is_none_or(|(a, b)| a == b)
}

/// The path with a separately logged query string put back, so that tokens in it are seen.
fn with_query<'a>(path: Cow<'a, str>, query: Option<Cow<'a, str>>) -> Cow<'a, str> {
    match query.as_deref().map(str::trim) {
        None | Some("" | "-") => path,
        Some(_) if path.contains('?') => path,
        Some(q) => Cow::Owned(format!("{path}?{q}")),
    }
}

/// An absolute URL (`https://host:port/p?q`, as load balancers log `requestUrl`) as the path
/// and query it requests; any other path as it is.
fn origin_form(path: Cow<'_, str>) -> Cow<'_, str> {
    let after_scheme = ["http://", "https://"]
        .iter()
        .find(|s| path.len() >= s.len() && path.as_bytes()[..s.len()].eq_ignore_ascii_case(s.as_bytes()))
        .map(|s| s.len());
    let Some(start) = after_scheme else {
        return path;
    };
    let rest = &path[start..];
    match rest.find(['/', '?', '#']) {
        Some(i) if rest.as_bytes()[i] == b'/' => match path {
            Cow::Borrowed(p) => Cow::Borrowed(&p[start + i..]),
            Cow::Owned(p) => Cow::Owned(p[start + i..].to_owned()),
        },
        Some(i) => Cow::Owned(format!("/{}", &rest[i..])),
        None => Cow::Borrowed("/"),
    }
}

/// The path as every later stage sees it ([`token::clean_path`]): a borrowed path stays
/// borrowed unless a JWT had to be replaced.
fn clean_path(path: Cow<'_, str>) -> Cow<'_, str> {
    match path {
        Cow::Borrowed(p) => token::clean_path(p),
        Cow::Owned(mut p) => {
            let keep = match token::clean_path(&p) {
                Cow::Borrowed(c) => c.len(),
                Cow::Owned(c) => return Cow::Owned(c),
            };
            p.truncate(keep);
            Cow::Owned(p)
        }
    }
}

/// Gateways that redact headers write a placeholder instead of the value.
fn is_redacted(v: &str) -> bool {
    let v = v.trim();
    v.eq_ignore_ascii_case("redacted") || v == "-" || v.is_empty()
}

/// An address as gateways write it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80`.
///
/// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, as dual-stack NGINX and Envoy log IPv4
/// clients) is the IPv4 address it maps: one client has one address, one /24 network and
/// one location, and IPv4 CIDRs in rules match it.
pub(crate) fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Some(v4) = parse_ipv4_plain(s.as_bytes()) {
        return Some(IpAddr::V4(v4));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    // A proxy chain ("client, proxy1"): the first address is the client.
    let first = s.split(',').next()?.trim();
    (first.len() != s.len()).then(|| parse_ip(first)).flatten()
}

/// Dotted-quad IPv4 in its canonical form only (no leading zeros), which is what std accepts
/// too; anything else goes to std's parser. Several times cheaper than the general parser.
fn parse_ipv4_plain(b: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, o) in octets.iter_mut().enumerate() {
        let start = i;
        let mut v: u32 = 0;
        while i < b.len() && b[i].is_ascii_digit() && i - start < 3 {
            v = v * 10 + u32::from(b[i] - b'0');
            i += 1;
        }
        let len = i - start;
        if len == 0 || v > 255 || (len > 1 && b[start] == b'0') {
            return None;
        }
        *o = v as u8;
        if n < 3 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    (i == b.len()).then_some(std::net::Ipv4Addr::from(octets))
}

fn trim_ascii(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::encode_unsigned_parts;
    use serde_json::json;

    pub(crate) fn jwt(claims: serde_json::Value) -> String {
        encode_unsigned_parts(&json!({"alg":"RS256","typ":"JWT"}), &claims, b"sig-bytes")
    }

    fn parse(format: Format, line: &str) -> Result<Parsed<'_>, Skip> {
        let mut cache = TokenCache::new(vec![]);
        Parser::new(format, None).unwrap().parse(line.as_bytes(), &mut cache)
    }

    #[test]
    fn skips_by_reason() {
        assert_eq!(parse(Format::Auto, "").unwrap_err(), Skip::Empty);
        assert_eq!(parse(Format::Auto, "  \r").unwrap_err(), Skip::Empty);
        assert_eq!(parse(Format::Auto, "not json").unwrap_err(), Skip::InvalidJson);
        assert_eq!(parse(Format::Auto, "[1,2]").unwrap_err(), Skip::NotAnObject);
        assert_eq!(parse(Format::Auto, "{\"ts\":1").unwrap_err(), Skip::InvalidJson);
        assert_eq!(parse(Format::Auto, "{\"a\":1}").unwrap_err(), Skip::UnknownFormat);
        assert_eq!(
            parse(Format::Canonical, "{\"a\":1}").unwrap_err(),
            Skip::MissingTimestamp
        );
        assert_eq!(
            parse(Format::Auto, "{\"ts\":\"yesterday\"}").unwrap_err(),
            Skip::BadTimestamp
        );
        assert_eq!(
            parse(Format::Auto, "{\"ts\":1,\"client_ip\":\"x.y\"}").unwrap_err(),
            Skip::BadClientIp
        );
        assert_eq!(
            parse(Format::Auto, "{\"ts\":1,\"status\":99}").unwrap_err(),
            Skip::BadStatus
        );
        assert_eq!(
            parse(Format::Auto, "{\"ts\":1,\"geo\":{\"lat\":95,\"lon\":0}}").unwrap_err(),
            Skip::BadGeo
        );
    }

    #[test]
    fn addresses_as_gateways_write_them() {
        assert_eq!(parse_ip("1.2.3.4"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(parse_ip("1.2.3.4:80"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(parse_ip("[2001:db8::1]:443"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(parse_ip("2001:db8::1"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(parse_ip("9.9.9.9, 10.0.0.1"), Some("9.9.9.9".parse().unwrap()));
        assert_eq!(parse_ip("nope"), None);
        // IPv4-mapped IPv6 is IPv4, in every shape; other IPv6 stays IPv6
        for s in [
            "::ffff:81.2.69.142",
            "::FFFF:5102:458e",
            "[::ffff:81.2.69.142]:443",
            "::ffff:81.2.69.142, 10.0.0.1",
        ] {
            assert_eq!(parse_ip(s), Some("81.2.69.142".parse().unwrap()), "{s}");
        }
        assert!(
            parse_ip("::81.2.69.142").unwrap().is_ipv6(),
            "IPv4-compatible is not mapped"
        );
        assert!(parse_ip("64:ff9b::5102:458e").unwrap().is_ipv6());
        for s in ["0.0.0.0", "255.255.255.255", "10.0.0.1", "1.2.3.4"] {
            assert_eq!(parse_ipv4_plain(s.as_bytes()), s.parse().ok(), "{s}");
        }
        for s in [
            "01.2.3.4",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.",
            "1.2.3.4:80",
            "1..2.3",
            "1234.1.1.1",
            "",
        ] {
            assert_eq!(parse_ipv4_plain(s.as_bytes()), None, "{s}");
        }
    }

    #[test]
    fn header_token_wins_and_a_different_url_token_is_kept_aside() {
        let a = jwt(json!({"jti":"A","sub":"u"}));
        let b = jwt(json!({"jti":"B","sub":"u"}));
        let line = json!({"ts":1,"authorization":format!("Bearer {a}"),"path":format!("/x?id_token={b}")}).to_string();
        let p = parse(Format::Canonical, &line).unwrap();
        assert_eq!(&*p.event.token.unwrap().token_id, "A");
        assert!(!p.event.token_in_url);
        assert_eq!(&*p.url_token.unwrap().token_id, "B");

        let line =
            json!({"ts":1,"authorization":format!("Bearer {a}"),"path":format!("/x?access_token={a}")}).to_string();
        let p = parse(Format::Canonical, &line).unwrap();
        assert!(p.event.token_in_url);
        assert!(p.url_token.is_none());

        let line = json!({"ts":1,"path":format!("/x?access_token={b}")}).to_string();
        let p = parse(Format::Canonical, &line).unwrap();
        assert_eq!(&*p.event.token.unwrap().token_id, "B");
        assert!(p.event.token_in_url);
    }

    #[test]
    fn the_path_loses_its_query_and_its_tokens() {
        let a = jwt(json!({"jti":"A","sub":"u"}));
        let line = json!({"ts":1,"path":format!("/reset/{a}/confirm?access_token={a}&x=1")}).to_string();
        let p = parse(Format::Canonical, &line).unwrap();
        assert!(p.event.token_in_url, "the query was read before it was cut");
        assert!(p.event.path.starts_with("/reset/<jwt sha256:"), "{}", p.event.path);
        assert!(p.event.path.ends_with(">/confirm"), "{}", p.event.path);
        // plain paths stay borrowed from the line
        let line = json!({"ts":1,"path":"/api/v1/orders?page=2"}).to_string();
        let p = parse(Format::Canonical, &line).unwrap();
        assert!(matches!(p.event.path, Cow::Borrowed("/api/v1/orders")));
        // an unescaped (owned) path is cut too
        let line = r#"{"ts":1,"path":"/a\/b?q=1"}"#;
        assert_eq!(parse(Format::Canonical, line).unwrap().event.path, "/a/b");
    }

    #[test]
    fn debug_output_of_every_line_type_hides_the_token() {
        let t = encode_unsigned_parts(
            &json!({"alg":"RS256"}),
            &json!({"jti":"A","sub":"u"}),
            b"a-very-secret-signature-of-this-token",
        );
        let sig = t.rsplit('.').next().unwrap().to_string();
        let payload = t.split('.').nth(1).unwrap().to_string();
        let line = json!({
            "ts": "2026-11-29T00:00:00Z", "client_ip": "::ffff:1.2.3.4", "method": "GET",
            "path": format!("/reset/{t}?access_token={t}"), "status": 200,
            "user_agent": format!("curl {t}"), "authorization": format!("Bearer {t}"),
            "token": t, "jwt_claims": {"sub": "u"}
        })
        .to_string();
        let mut shown = Vec::new();
        let p = parse(Format::Canonical, &line).unwrap();
        shown.push(format!("{p:?}"));
        shown.push(format!("{:?}", p.event));
        let mut ev = p.event.clone();
        // an event built elsewhere, with the raw path
        let raw_path = format!("/reset/{t}?access_token={t}");
        ev.path = Cow::Borrowed(&raw_path);
        shown.push(format!("{ev:?}"));
        let mut raw: RawLine = serde_json::from_str(&line).unwrap();
        shown.push(format!("{raw:?} {:?} {:?}", raw.authorization, raw.path));
        let fields = canonical::fields(&mut raw);
        shown.push(format!("{fields:?}"));
        shown.push(format!("{:?}", Scalar::Str(Cow::Borrowed(&t))));
        shown.push(format!("{:?}", lines::Line::Ok(line.as_bytes())));
        for s in &shown {
            assert!(!s.contains(&sig) && !s.contains(&payload), "{s}");
        }
        // and they still say something useful
        assert!(
            shown[0].contains("token_in_url: true") && shown[0].contains("1.2.3.4"),
            "{}",
            shown[0]
        );
        assert!(shown[2].contains("/reset/<jwt sha256:"), "{}", shown[2]);
        assert!(shown[4].contains("authorization: \"<present>\""), "{}", shown[4]);
    }

    #[test]
    fn auto_takes_the_preset_that_reads_the_most_of_a_line() {
        let t = jwt(json!({"jti":"A","sub":"u"}));
        // APISIX's start_time is Envoy's too: the request object makes it APISIX
        let apisix = json!({"start_time": 1_795_910_400_000u64, "client_ip": "1.2.3.4",
            "request": {"method": "GET", "uri": "/a", "headers": {"authorization": format!("Bearer {t}")}},
            "response": {"status": 200}})
        .to_string();
        let p = parse(Format::Auto, &apisix).unwrap();
        assert_eq!(p.format, Format::Apisix);
        assert_eq!(
            (&*p.event.method, &*p.event.path, p.event.status),
            ("GET", "/a", Some(200))
        );
        assert!(p.event.token.is_some());
        // an Envoy line stays Envoy
        let envoy = json!({"start_time": "2026-11-29T00:00:00Z", "method": "GET", "path": "/e",
            "downstream_remote_address": "1.2.3.4:5", "authorization": format!("Bearer {t}")})
        .to_string();
        assert_eq!(parse(Format::Auto, &envoy).unwrap().format, Format::Envoy);
        // a canonical `ts` beside another gateway's fields: the fuller reading wins
        let both = json!({"ts": 1, "started_at": 1_795_910_400_000u64, "client_ip": "1.2.3.4",
            "request": {"method": "GET", "uri": "/k", "headers": {"authorization": format!("Bearer {t}")}}})
        .to_string();
        let p = parse(Format::Auto, &both).unwrap();
        assert_eq!((p.format, &*p.event.path), (Format::Kong, "/k"));
        // on a tie the first listed wins: canonical
        let tie = json!({"ts": 1, "start_time": 2}).to_string();
        assert_eq!(parse(Format::Auto, &tie).unwrap().format, Format::Canonical);
        // Traefik's own `time` does not make its lines nginx's; a bare `time` is ingress-nginx
        let traefik = json!({"StartLocal": "2026-11-29T01:00:00+01:00", "time": "x", "RequestPath": "/t"}).to_string();
        assert_eq!(parse(Format::Auto, &traefik).unwrap().format, Format::Traefik);
        let ingress = json!({"time": "2026-11-29T00:00:00+00:00", "path": "/i", "request_query": "a=1"}).to_string();
        let p = parse(Format::Auto, &ingress).unwrap();
        assert_eq!((p.format, &*p.event.path), (Format::Nginx, "/i"));
    }

    #[test]
    fn a_field_of_another_type_is_absent_not_the_line() {
        let t = jwt(json!({"jti":"A","sub":"u"}));
        for line in [
            // nginx json_logs: `request` is the request line, `status` a string
            json!({"time_local": "29/Nov/2026:00:00:00 +0000", "request": "GET /x?y=1 HTTP/1.1", "status": "200",
                   "remote_addr": "1.2.3.4", "http_authorization": format!("Bearer {t}")}),
            // Kong's shape with a string response and a string geo elsewhere
            json!({"started_at": 1_795_910_400_000u64, "request": {"method": "GET", "uri": "/x?y=1",
                   "headers": "none", "url": 5}, "response": "ok", "geo": "London",
                   "client_ip": "1.2.3.4", "jwt_claims": {"jti": "A"}}),
        ] {
            let l = line.to_string();
            let p = parse(Format::Auto, &l).unwrap_or_else(|s| panic!("{l}: {s:?}"));
            assert_eq!(&*p.event.path, "/x", "{l}");
            assert_eq!(&*p.event.method, "GET", "{l}");
            assert_eq!(p.event.ts_ms, 1_795_910_400_000, "{l}");
            assert_eq!(&*p.event.token.unwrap().token_id, "A", "{l}");
        }
        // numbers and arrays are no address; objects no status, no location
        let l = json!({"ts": 1, "client_ip": 5, "status": {"code": 1}, "geo": {"lat": "x", "lon": 0}}).to_string();
        let e = parse(Format::Canonical, &l).unwrap().event;
        assert_eq!((e.client_ip, e.status, e.geo), (None, None, None));
        let l = json!({"ts": 1, "client_ip": ["1.2.3.4"]}).to_string();
        assert_eq!(parse(Format::Canonical, &l).unwrap().event.client_ip, None);
        // a timestamp of another type gives way to the preset's next one
        let l = json!({"msec": {"x": 1}, "time_iso8601": "2026-11-29T00:00:00+00:00"}).to_string();
        assert_eq!(parse(Format::Nginx, &l).unwrap().event.ts_ms, 1_795_910_400_000);
    }

    #[test]
    fn absolute_urls_and_separate_queries_become_path_and_query() {
        let t = jwt(json!({"jti":"Q","sub":"u"}));
        for (url, path) in [
            ("https://api.example.com:8443/a/b?c=1", "/a/b"),
            ("HTTP://h/x", "/x"),
            ("https://h", "/"),
            ("https://h?q=1", "/"),
            ("/plain?x", "/plain"),
            ("httpx://h/a", "httpx://h/a"),
        ] {
            let l = json!({"ts": 1, "path": url}).to_string();
            assert_eq!(parse(Format::Canonical, &l).unwrap().event.path, path, "{url}");
        }
        // the token in an absolute URL's query is still found
        let l = json!({"ts": 1, "path": format!("https://h/cb?access_token={t}")}).to_string();
        let p = parse(Format::Canonical, &l).unwrap();
        assert!(p.event.token_in_url && p.event.path == "/cb");
        // and in a query logged apart from the path
        let l = json!({"time": "2026-11-29T00:00:00Z", "path": "/cb", "request_query": format!("access_token={t}")})
            .to_string();
        let p = parse(Format::Nginx, &l).unwrap();
        assert!(p.event.token_in_url);
        assert_eq!(&*p.event.token.unwrap().token_id, "Q");
    }

    #[test]
    fn a_redacted_authorization_header_is_told_apart_from_none() {
        let redacted = |v: serde_json::Value| {
            let l = json!({"ts": 1, "authorization": v}).to_string();
            parse(Format::Canonical, &l).unwrap().authorization_redacted
        };
        assert!(redacted(json!("REDACTED")));
        assert!(redacted(json!(" redacted ")));
        assert!(!redacted(json!("-")));
        assert!(!redacted(json!("")));
        assert!(!redacted(json!("Bearer x.y.z")));
    }

    #[test]
    fn every_format_has_one_name() {
        let mut seen = [false; Format::ALL.len()];
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>(), Ok(f));
            // per-format counters index an array by the discriminant
            assert!(!std::mem::replace(&mut seen[f as usize], true), "{f:?}");
        }
        let e = "zeus".parse::<Format>().unwrap_err().to_string();
        assert!(e.contains("apisix") && e.contains("aws"), "{e}");
    }

    #[test]
    fn undecodable_tokens_are_counted_and_the_event_kept() {
        let line = json!({"ts":1,"authorization":"Bearer abc.def"}).to_string();
        let p = parse(Format::Canonical, &line).unwrap();
        assert!(p.event.token.is_none());
        assert_eq!(p.token_errors, vec![token::DecodeError::NotThreeSegments]);
    }

    #[test]
    fn redacted_headers_carry_no_token() {
        for v in ["REDACTED", "redacted", "-", ""] {
            let line = json!({"ts":1,"authorization":v}).to_string();
            let p = parse(Format::Canonical, &line).unwrap();
            assert!(p.event.token.is_none() && p.token_errors.is_empty(), "{v}");
        }
    }

    #[test]
    fn the_scheme_is_read_where_each_format_logs_it() {
        let scheme = |f: Format, line: &str| parse(f, line).unwrap().event.scheme;
        let t = r#""StartUTC":"2026-11-29T00:00:00Z","RequestPath":"/a""#;
        assert_eq!(
            scheme(Format::Traefik, &format!(r#"{{{t},"RequestScheme":"http"}}"#)),
            Some(Scheme::Http)
        );
        assert_eq!(
            scheme(Format::Auto, &format!(r#"{{{t},"RequestScheme":"HTTPS"}}"#)),
            Some(Scheme::Https)
        );
        assert_eq!(scheme(Format::Traefik, &format!("{{{t}}}")), None);
        let n = r#""msec":1795910400.1,"request_uri":"/a""#;
        assert_eq!(
            scheme(Format::Nginx, &format!(r#"{{{n},"scheme":"http"}}"#)),
            Some(Scheme::Http)
        );
        let e = r#""start_time":"2026-11-29T00:00:00Z","path":"/a""#;
        assert_eq!(
            scheme(Format::Envoy, &format!(r#"{{{e},"scheme":"https"}}"#)),
            Some(Scheme::Https)
        );
        assert_eq!(
            scheme(Format::Envoy, &format!(r#"{{{e},"x-forwarded-proto":"http"}}"#)),
            Some(Scheme::Http)
        );
        let k = |url: &str| format!(r#"{{"started_at":1795910400000,"request":{{"url":"{url}"}}}}"#);
        assert_eq!(
            scheme(Format::Kong, &k("http://api.example.com/a?b=1")),
            Some(Scheme::Http)
        );
        assert_eq!(
            scheme(Format::Kong, &k("HTTPS://api.example.com/a")),
            Some(Scheme::Https)
        );
        assert_eq!(scheme(Format::Kong, &k("/a")), None);
        let c = r#"{"ts":1795910400,"scheme":"gopher"}"#;
        assert_eq!(scheme(Format::Canonical, c), None, "only http and https are schemes");
        assert_eq!(
            scheme(Format::Canonical, r#"{"ts":1795910400,"scheme":"http"}"#),
            Some(Scheme::Http)
        );
    }

    #[test]
    fn accepted_means_not_401_or_403_and_is_absent_without_a_status() {
        for (status, acc) in [
            (Some(200), Some(true)),
            (Some(401), Some(false)),
            (Some(403), Some(false)),
            (Some(500), Some(true)),
            (None, None),
        ] {
            let mut line = json!({"ts":1});
            if let Some(s) = status {
                line["status"] = json!(s);
            }
            let l = line.to_string();
            assert_eq!(parse(Format::Canonical, &l).unwrap().event.accepted(), acc);
        }
    }
}
