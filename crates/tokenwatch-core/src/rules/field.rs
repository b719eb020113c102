//! Event fields as rules name them, resolved once at load time to [`Field`].
//!
//! The hot path never looks a field up by name: a rule's `where`, `key` and `distinct` hold
//! `Field` values, and [`Field::get`] is a `match` on an enum.

use std::net::IpAddr;

use crate::input::Event;
use crate::posture::{self, Posture};
use crate::token::ClaimValue;

/// Everything about an event that a rule can test or key on.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    TokenId,
    Subject,
    Iss,
    Sub,
    Aud,
    Alg,
    Kid,
    ClientIp,
    Network,
    Method,
    /// The request path without its query string, JWT-looking text redacted: a rule can
    /// store it (`distinct: path`) and a decision quote it, so it never carries a token.
    Path,
    Status,
    UserAgent,
    /// Not rejected (401/403) by the gateway; absent when the line has no status.
    Accepted,
    /// tokenwatch verified the token's signature with a JWKS key.
    Verified,
    /// Verified, or attested by the gateway: the evidence a revoking rule must require.
    Authenticated,
    Expired,
    Unsigned,
    HasToken,
    TokenInUrl,
    Geolocated,
    /// `exp - iat`, seconds.
    Lifetime,
    Exp,
    Iat,
    Nbf,
    /// `http` or `https`, where the format logs it.
    Scheme,
    /// `HS`, `RS`, `PS`, `ES`, `EdDSA`, `none` or `other` ([`crate::posture::alg_family`]).
    AlgFamily,
    /// `asymmetric`, `symmetric`, `downgrade`, `none` or `unregistered`
    /// ([`crate::posture::alg_strength`]).
    AlgStrength,
    /// `iss` is one of `[verify] issuers`; absent when none are configured.
    IssuerConfigured,
    /// The audience `[audiences]` expects on this path; absent when no prefix covers it.
    AudienceExpected,
    /// `aud` holds the expected audience; absent when the path expects none.
    AudienceMatches,
    /// A JWKS held keys for the token and none verified it.
    SignatureInvalid,
    /// The gateway vouched for the token: it attested it, or served its request (2xx/3xx,
    /// not a preflight, not a second token beside the header's) on a path that
    /// `[posture] protected_paths` or `[audiences]` says it must validate.
    GatewayVouched,
    /// The token's claim names that `[posture] sensitive_claims` lists (names only);
    /// absent when there are none.
    SensitiveClaims,
    /// Seconds since tokenwatch first saw this key (`iss`, `kid`) of a configured issuer sign
    /// a genuine token; absent otherwise.
    KeyAge,
    /// `key_age` is over `[posture] max_key_age`.
    KeyStale,
    /// A custom claim, `claim.NAME`.
    Claim(Box<str>),
}

/// Every field but `claim.NAME`, in the order of [`NAMES`].
const ALL: [Field; 36] = [
    Field::TokenId,
    Field::Subject,
    Field::Iss,
    Field::Sub,
    Field::Aud,
    Field::Alg,
    Field::Kid,
    Field::ClientIp,
    Field::Network,
    Field::Method,
    Field::Path,
    Field::Status,
    Field::UserAgent,
    Field::Accepted,
    Field::Verified,
    Field::Authenticated,
    Field::Expired,
    Field::Unsigned,
    Field::HasToken,
    Field::TokenInUrl,
    Field::Geolocated,
    Field::Lifetime,
    Field::Exp,
    Field::Iat,
    Field::Nbf,
    Field::Scheme,
    Field::AlgFamily,
    Field::AlgStrength,
    Field::IssuerConfigured,
    Field::AudienceExpected,
    Field::AudienceMatches,
    Field::SignatureInvalid,
    Field::GatewayVouched,
    Field::SensitiveClaims,
    Field::KeyAge,
    Field::KeyStale,
];

/// The type of a field's values, which decides the operators it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Str,
    /// Several strings (`aud`): a condition holds when any of them satisfies it.
    StrList,
    Num,
    /// Seconds; constants may be written as durations (`24h`).
    Seconds,
    Bool,
    Ip,
    Net,
    /// A custom claim: string, number or boolean, decided per token.
    Any,
}

/// The names accepted in rule files, in the order the error message lists them.
pub const NAMES: &[&str] = &[
    "token_id",
    "subject",
    "iss",
    "sub",
    "aud",
    "alg",
    "kid",
    "client_ip",
    "network",
    "method",
    "path",
    "status",
    "user_agent",
    "accepted",
    "verified",
    "authenticated",
    "expired",
    "unsigned",
    "has_token",
    "token_in_url",
    "geolocated",
    "lifetime",
    "exp",
    "iat",
    "nbf",
    "scheme",
    "alg_family",
    "alg_strength",
    "issuer_configured",
    "audience_expected",
    "audience_matches",
    "signature_invalid",
    "gateway_vouched",
    "sensitive_claims",
    "key_age",
    "key_stale",
    "claim.NAME",
];

/// A field name that is not one of [`NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown field `{0}` (known fields: {known})", known = NAMES.join(", "))]
pub struct FieldError(pub String);

impl Field {
    pub fn parse(name: &str) -> Result<Field, FieldError> {
        if let Some(i) = NAMES[..ALL.len()].iter().position(|n| *n == name) {
            return Ok(ALL[i].clone());
        }
        match name.strip_prefix("claim.") {
            Some(c) if !c.is_empty() => Ok(Field::Claim(c.into())),
            _ => Err(FieldError(name.into())),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Field::Claim(c) => format!("claim.{c}"),
            other => NAMES[ALL.iter().position(|f| f == other).unwrap_or(0)].to_string(),
        }
    }

    pub fn ty(&self) -> FieldType {
        match self {
            Field::TokenId
            | Field::Subject
            | Field::Iss
            | Field::Sub
            | Field::Alg
            | Field::Kid
            | Field::Method
            | Field::Path
            | Field::UserAgent
            | Field::Scheme
            | Field::AlgFamily
            | Field::AlgStrength
            | Field::AudienceExpected => FieldType::Str,
            Field::Aud | Field::SensitiveClaims => FieldType::StrList,
            Field::ClientIp => FieldType::Ip,
            Field::Network => FieldType::Net,
            Field::Status | Field::Exp | Field::Iat | Field::Nbf => FieldType::Num,
            Field::Lifetime | Field::KeyAge => FieldType::Seconds,
            Field::Accepted
            | Field::Verified
            | Field::Authenticated
            | Field::Expired
            | Field::Unsigned
            | Field::HasToken
            | Field::TokenInUrl
            | Field::Geolocated
            | Field::IssuerConfigured
            | Field::AudienceMatches
            | Field::SignatureInvalid
            | Field::GatewayVouched
            | Field::KeyStale => FieldType::Bool,
            Field::Claim(_) => FieldType::Any,
        }
    }

    /// Whether every event with one value of this field has one subject (`iss`, `sub`): a
    /// token has one subject, so partitioning the work by subject gives a rule keyed by
    /// token id or subject every event of its key ([`crate::record`]). Not `iss` (many
    /// subjects share an issuer) nor `sub` (one `sub` under several issuers).
    pub fn follows_subject(&self) -> bool {
        matches!(self, Field::TokenId | Field::Subject)
    }

    /// The field's value in an event; `Val::Missing` when the event has none.
    pub fn get<'e>(&self, cx: &'e Ctx<'e>) -> Val<'e> {
        let ev = cx.ev;
        let tok = ev.token.as_deref();
        let s = |o: Option<&'e str>| o.map_or(Val::Missing, Val::Str);
        let n = |o: Option<i64>| o.map_or(Val::Missing, |v| Val::Num(v as f64));
        match self {
            Field::TokenId => s(tok.map(|t| &*t.token_id)),
            Field::Subject => s(tok.map(|t| &*t.subject)),
            Field::Iss => s(tok.and_then(|t| t.iss.as_deref())),
            Field::Sub => s(tok.and_then(|t| t.sub.as_deref())),
            Field::Aud => tok.map_or(Val::Missing, |t| Val::StrList(&t.aud)),
            Field::Alg => s(tok.and_then(|t| t.alg.as_deref())),
            Field::Kid => s(tok.and_then(|t| t.kid.as_deref())),
            Field::ClientIp => ev.client_ip.map_or(Val::Missing, Val::Ip),
            Field::Network => cx.network.map_or(Val::Missing, Val::Net),
            Field::Method => Val::Str(&ev.method),
            Field::Path => Val::Str(&ev.path),
            Field::Status => ev.status.map_or(Val::Missing, |v| Val::Num(f64::from(v))),
            Field::UserAgent => Val::Str(&ev.user_agent),
            Field::Accepted => ev.accepted().map_or(Val::Missing, Val::Bool),
            Field::Verified => Val::Bool(tok.is_some_and(|t| t.verified)),
            Field::Authenticated => Val::Bool(ev.authenticated),
            Field::Expired => Val::Bool(cx.expired),
            Field::Unsigned => Val::Bool(tok.is_some_and(|t| t.unsigned)),
            Field::HasToken => Val::Bool(tok.is_some()),
            Field::TokenInUrl => Val::Bool(ev.token_in_url),
            Field::Geolocated => Val::Bool(ev.geo.is_some()),
            Field::Lifetime => n(tok.and_then(super::super::token::TokenInfo::lifetime)),
            Field::Exp => n(tok.and_then(|t| t.exp)),
            Field::Iat => n(tok.and_then(|t| t.iat)),
            Field::Nbf => n(tok.and_then(|t| t.nbf)),
            Field::Claim(name) => match tok.and_then(|t| t.claim(name)) {
                None => Val::Missing,
                Some(ClaimValue::Str(v)) => Val::Str(v),
                Some(ClaimValue::Num(v)) => Val::Num(*v),
                Some(ClaimValue::Bool(v)) => Val::Bool(*v),
            },
            posture => posture_field(posture, cx),
        }
    }
}

/// The gateway served this token's request: a 2xx or 3xx answer to anything but a CORS
/// preflight, for the token the gateway answered for. Not merely "not refused": a 404 of an
/// unmatched route and a preflight's 204 are answered without validating anyone, and a second
/// token in the URL beside the header's was not the credential ([`crate::input::Event::second_token`]),
/// so none of these is the gateway vouching for a token.
fn served(ev: &crate::input::Event<'_>) -> bool {
    matches!(ev.status, Some(200..=399)) && ev.method != "OPTIONS" && !ev.second_token
}

/// The posture fields ([`crate::posture`]): the token against what the deployment promises.
fn posture_field<'e>(f: &Field, cx: &'e Ctx<'e>) -> Val<'e> {
    let ev = cx.ev;
    let tok = ev.token.as_deref();
    let p = cx.posture;
    let s = |o: Option<&'e str>| o.map_or(Val::Missing, Val::Str);
    let b = |o: Option<bool>| o.map_or(Val::Missing, Val::Bool);
    let alg = tok.and_then(|t| t.alg.as_deref());
    match f {
        Field::Scheme => s(ev.scheme.map(crate::input::Scheme::as_str)),
        Field::AlgFamily => s(alg.map(posture::alg_family)),
        Field::AlgStrength => s(posture::alg_strength(alg, cx.issuer_asymmetric)),
        Field::IssuerConfigured => b(tok.and_then(|t| p.issuer_configured(t.iss.as_deref()))),
        Field::AudienceExpected => s(p.expected_audience(&ev.path)),
        Field::AudienceMatches => b(tok
            .zip(p.expected_audience(&ev.path))
            .map(|(t, want)| t.aud.iter().any(|a| **a == *want))),
        Field::SignatureInvalid => b(tok.map(|t| t.signature_invalid)),
        Field::GatewayVouched => b(tok.map(|t| {
            let attested = ev.authenticated && !t.verified;
            attested || (served(ev) && p.protected(&ev.path))
        })),
        Field::SensitiveClaims => match tok {
            Some(t) if !t.sensitive_claims.is_empty() => Val::StrList(&t.sensitive_claims),
            _ => Val::Missing,
        },
        Field::KeyAge => cx.key_age_ms.map_or(Val::Missing, |ms| Val::Num((ms / 1000) as f64)),
        Field::KeyStale => b(cx.key_age_ms.map(|ms| ms > p.max_key_age_ms)),
        _ => Val::Missing,
    }
}

/// An event with the facts every rule shares, computed once per event.
pub struct Ctx<'e> {
    pub ev: &'e Event<'e>,
    /// `exp` + leeway is before the event time.
    pub expired: bool,
    pub network: Option<ipnet::IpNet>,
    /// What the deployment promises ([`crate::posture`]).
    pub posture: &'e Posture,
    /// The token's issuer signs asymmetrically: configured with a JWKS, or seen signing
    /// genuine RS/PS/ES/EdDSA tokens ([`crate::engine::posture`]).
    pub issuer_asymmetric: bool,
    /// How long ago tokenwatch first saw the token's key sign (configured issuers only).
    pub key_age_ms: Option<i64>,
}

/// A field's value, borrowed from the event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val<'e> {
    Str(&'e str),
    StrList(&'e [Box<str>]),
    Num(f64),
    Bool(bool),
    Ip(IpAddr),
    Net(ipnet::IpNet),
    Missing,
}

impl Val<'_> {
    /// A display form for evidence and decision reasons.
    pub fn to_json(&self) -> serde_json::Value {
        match *self {
            Val::Str(s) => s.into(),
            Val::StrList(l) => l.iter().map(|s| serde_json::Value::from(&**s)).collect(),
            Val::Num(n) => serde_json::json!(n),
            Val::Bool(b) => b.into(),
            Val::Ip(ip) => ip.to_string().into(),
            Val::Net(n) => n.to_string().into(),
            Val::Missing => serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for name in NAMES {
            let name = name.replace("NAME", "tenant");
            assert_eq!(Field::parse(&name).unwrap().name(), name);
        }
        let e = Field::parse("tokenid").unwrap_err().to_string();
        assert!(e.contains("unknown field `tokenid`") && e.contains("token_id"), "{e}");
        assert!(Field::parse("claim.").is_err());
    }
}
