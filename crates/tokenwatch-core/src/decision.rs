//! Decisions: what tokenwatch concluded about one event, as one JSON object per line.
//!
//! A decision names the token and subject by id and claims, never by the token itself. The
//! same struct feeds stdout (`replay`), the alert outputs and the Redis revocation writer, so
//! a decision reads the same wherever it appears. [`RevocationPolicy`] holds the arithmetic
//! of how long a revocation lasts, shared by the engine's own memory of revocations and the
//! Redis blocklist TTLs.
//!
//! A decision's size is bounded whatever the request looked like ([`MAX_DECISION_BYTES`]):
//! id-like claims are capped when the token is decoded, and every piece of free request text
//! a rule quotes (path, method, distinct values) goes through [`clip_text`].

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::rules::{Action, Severity};
use crate::token::MAX_ID_CLAIM_BYTES;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Event time of the firing event (RFC 3339 UTC in JSON).
    #[serde(serialize_with = "rfc3339_ms")]
    pub ts: i64,
    pub rule: Arc<str>,
    pub severity: Severity,
    pub action: Action,
    pub token_id: Option<Box<str>>,
    pub subject: Option<Box<str>>,
    /// Revoking decisions only: the fixed-length id under which the token (revoke_token) or
    /// the subject (revoke_subject) is written to Redis; see
    /// [`crate::token::TokenInfo::token_revocation_key`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_key: Option<Box<str>>,
    pub iss: Option<Box<str>>,
    pub sub: Option<Box<str>>,
    pub client_ip: Option<IpAddr>,
    /// The token's `exp`, epoch seconds.
    pub expires_at: Option<i64>,
    /// revoke_subject only: tokens of the subject issued before this (epoch seconds) are
    /// revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<i64>,
    pub shadow: bool,
    pub reason: String,
    pub evidence: serde_json::Value,
}

impl Decision {
    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    }
}

/// The most bytes of free request text (path, method, a distinct value) a decision quotes,
/// marker included: enough to recognise a request, too little to carry a payload.
pub const MAX_TEXT_BYTES: usize = 512;

/// `text` as a decision may quote it: unchanged when it fits [`MAX_TEXT_BYTES`], otherwise
/// its start (cut at a character boundary) followed by `…(N bytes)`, N the original length,
/// the whole at most [`MAX_TEXT_BYTES`]. The one place where request text is bounded before
/// it reaches a decision, an alert or Redis.
pub fn clip_text(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_TEXT_BYTES {
        return Cow::Borrowed(text);
    }
    let marker = format!("…({} bytes)", text.len());
    let mut end = MAX_TEXT_BYTES - marker.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{marker}", &text[..end]))
}

/// A JSON string of at most `n` bytes of text, at worst: every byte a control character
/// written as `\u00XX` (six bytes), and the two quotes.
const fn json_str_max(n: usize) -> usize {
    6 * n + 2
}

/// The longest one decision's JSON line (newline included) can be with the default rules,
/// whatever the input. The parts, each at its worst:
///
/// - `token_id`, `iss`, `sub`: id-like claims, at most [`MAX_ID_CLAIM_BYTES`] (1 KiB) each,
///   or a fixed-length hash id; `subject` is `iss|sub`, at most 2 KiB + 1. JSON-escaped: 3 ×
///   6 146 + 12 296 = 30 734 bytes. (`alg` in `match` evidence is one more id claim: 6 146.)
/// - [`clip_text`]ed request text: at most 512 bytes, 3 074 escaped. `match` evidence quotes
///   two (path and method); a `distinct_count` rule quotes `threshold` values (the default
///   `token-replay` counts networks, which are no text).
/// - Rule text: the rule id (in `rule`, and in `revoked_by` and the reason of `revoked_use`)
///   and the description (in the reason): under 1 KiB for the shipped rules.
/// - Everything else is fixed in size: key names and punctuation, timestamps, numbers
///   (dates are range-limited when decoded), enums, the IP address, the 32-hex revocation
///   key, velocity samples, counts and windows: under 1 KiB.
///
/// `match` evidence is the largest evidence of the default rules (2 × 3 074 + 6 146 + fixed
/// fields), so: 30 734 + 12 294 + 1 024 (rule text) + 1 024 (fixed) + 512 (slack) = 45 588
/// bytes, newline included. A custom `distinct_count` rule over a text field quotes up to
/// `threshold` values of about 3 130 bytes each (value and `last_seen`), which fits in place
/// of the `match` evidence up to a threshold of 3; beyond, add 3 130 bytes per value.
pub const MAX_DECISION_BYTES: usize = 3 * json_str_max(MAX_ID_CLAIM_BYTES)
    + json_str_max(2 * MAX_ID_CLAIM_BYTES + 1)
    + MATCH_EVIDENCE_BYTES
    + RULE_TEXT_BYTES
    + FIXED_BYTES
    + 512;

/// `match` evidence: path and method clipped, `alg` an id claim, the rest numbers and flags
/// (counted in [`FIXED_BYTES`]).
const MATCH_EVIDENCE_BYTES: usize = 2 * json_str_max(MAX_TEXT_BYTES) + json_str_max(MAX_ID_CLAIM_BYTES);
/// The rule id and description, as the shipped rules write them (a test checks they fit).
pub(crate) const RULE_TEXT_BYTES: usize = 1024;
/// Key names, punctuation, timestamps, numbers, enums, IP address and fixed-length ids.
const FIXED_BYTES: usize = 1024;

/// Epoch milliseconds as RFC 3339 UTC with milliseconds.
pub fn fmt_ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

fn rfc3339_ms<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_ts(*ms))
}

/// How long revocations last (in the engine's memory and as Redis TTLs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationPolicy {
    /// Added to `exp`: tokens are honoured this long after expiry by lenient gateways.
    pub leeway_s: i64,
    /// A token revocation lasts at least this long, so a token that a broken gateway still
    /// accepts after expiry stays blocked.
    pub min_token_ttl_s: i64,
    /// A token revocation lasts at most this long, whatever `exp` the token claims: a forged
    /// or absurd `exp` cannot pin a key in Redis (or the engine's memory) for years.
    pub max_token_ttl_s: i64,
    /// For tokens without `exp`.
    pub no_exp_ttl_s: i64,
    /// A subject revocation lasts this long: the longest token lifetime you accept.
    pub subject_ttl_s: i64,
}

impl Default for RevocationPolicy {
    fn default() -> Self {
        RevocationPolicy {
            leeway_s: 60,
            min_token_ttl_s: 3_600,
            max_token_ttl_s: 7 * 86_400,
            no_exp_ttl_s: 86_400,
            subject_ttl_s: 86_400,
        }
    }
}

impl RevocationPolicy {
    /// Seconds, from `now_s`, for which a token revocation must be kept: until `exp` plus the
    /// leeway, clamped to [`min_token_ttl_s`, `max_token_ttl_s`].
    ///
    /// [`min_token_ttl_s`]: Self::min_token_ttl_s
    /// [`max_token_ttl_s`]: Self::max_token_ttl_s
    pub fn token_ttl_s(&self, exp: Option<i64>, now_s: i64) -> i64 {
        let ttl = match exp {
            Some(exp) => exp.saturating_add(self.leeway_s).saturating_sub(now_s),
            None => self.no_exp_ttl_s,
        };
        ttl.min(self.max_token_ttl_s).max(self.min_token_ttl_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ttl_follows_expiry_with_a_floor() {
        let p = RevocationPolicy::default();
        assert_eq!(p.token_ttl_s(Some(10_000), 1_000), 9_060);
        assert_eq!(p.token_ttl_s(Some(1_000), 1_000), 3_600, "already expired: floor");
        assert_eq!(p.token_ttl_s(None, 1_000), 86_400);
        // extreme dates saturate instead of wrapping (or panicking)
        assert_eq!(
            p.token_ttl_s(Some(i64::MAX), -1_000),
            7 * 86_400,
            "clamped to max_token_ttl"
        );
        assert_eq!(p.token_ttl_s(Some(i64::MIN), 1_000), 3_600);
        assert_eq!(p.token_ttl_s(Some(1_000), i64::MIN), 7 * 86_400);
        // a forged `exp` of 10^15 s: a week, not millions of years
        assert_eq!(p.token_ttl_s(Some(1_000_000_000_000_000), 1_795_910_400), 7 * 86_400);
    }

    #[test]
    fn long_text_is_clipped_at_a_character_boundary_with_its_length() {
        assert_eq!(clip_text("/short/path"), "/short/path");
        let exact = "a".repeat(MAX_TEXT_BYTES);
        assert!(matches!(clip_text(&exact), Cow::Borrowed(_)));
        for filler in ["a", "é", "€", "😀", "\u{1}"] {
            let long = filler.repeat(300_000);
            let c = clip_text(&long);
            assert!(
                c.len() <= MAX_TEXT_BYTES && c.len() > MAX_TEXT_BYTES - 8,
                "{filler}: {}",
                c.len()
            );
            assert!(c.starts_with(filler), "{filler}");
            assert!(c.ends_with(&format!("…({} bytes)", long.len())), "{c}");
        }
    }

    /// The rule text of [`MAX_DECISION_BYTES`]: the shipped rules' ids (a `revoked_use`
    /// decision names its own and the revoking rule's, twice) and descriptions, with room for
    /// the reason's own words.
    #[test]
    fn the_shipped_rules_text_fits_its_share() {
        let rules = crate::defaults::rules().unwrap();
        let json = |s: &str| serde_json::to_string(s).unwrap().len();
        let longest_id = rules.rules.iter().map(|r| json(&r.id)).max().unwrap();
        for r in &rules.rules {
            let text = json(&r.description) + 3 * longest_id + 256;
            assert!(text <= RULE_TEXT_BYTES, "{}: {text}", r.id);
        }
    }

    /// Every field of a decision at its worst at once (ids at their cap in control characters,
    /// clipped text likewise, extreme numbers and dates, the longest address) is within
    /// [`MAX_DECISION_BYTES`]: the arithmetic in its doc holds.
    #[test]
    fn a_decision_at_its_worst_fits_the_cap() {
        let id = || "\u{1}".repeat(MAX_ID_CLAIM_BYTES);
        let text = clip_text(&"\u{1}".repeat(1 << 20)).into_owned();
        assert!(text.len() <= MAX_TEXT_BYTES);
        let n = i64::MIN;
        let evidence = serde_json::json!({
            "status": u16::MAX, "method": text, "path": text, "alg": id(), "iat": n, "exp": n,
            "expired_for_s": n, "lifetime_s": n, "unsigned": true, "token_in_url": true,
            "verified": false, "authenticated": false, "budget_tripped": "4294967295/1000000000d",
        });
        let rule = "r".repeat(RULE_TEXT_BYTES / 8);
        let d = Decision {
            ts: i64::MIN / 1_000,
            rule: rule.as_str().into(),
            severity: Severity::Critical,
            action: Action::RevokeSubject,
            token_id: Some(id().into()),
            subject: Some(format!("{}|{}", id(), id()).into()),
            revocation_key: Some("f".repeat(32).into()),
            iss: Some(id().into()),
            sub: Some(id().into()),
            client_ip: Some("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".parse().unwrap()),
            expires_at: Some(n),
            not_before: Some(n),
            shadow: true,
            reason: format!("{}: {rule}", "d".repeat(RULE_TEXT_BYTES / 2)),
            evidence,
        };
        let len = d.to_json_line().len();
        assert!(len <= MAX_DECISION_BYTES, "{len} > {MAX_DECISION_BYTES}");
        assert!(len > MAX_DECISION_BYTES - 4_096, "{len}: the bound is tight");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(fmt_ts(1_795_910_400_250), "2026-11-29T00:00:00.250Z");
    }
}
