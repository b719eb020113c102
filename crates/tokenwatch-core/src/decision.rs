//! Decisions: what tokenwatch concluded about one event, as one JSON object per line.
//!
//! A decision names the token and subject by id and claims, never by the token itself. The
//! same struct feeds stdout (`replay`), the alert outputs and the Redis revocation writer, so
//! a decision reads the same wherever it appears. [`RevocationPolicy`] holds the arithmetic
//! of how long a revocation lasts, shared by the engine's own memory of revocations and the
//! Redis blocklist TTLs.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::rules::{Action, Severity};

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
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(fmt_ts(1_795_910_400_250), "2026-11-29T00:00:00.250Z");
    }
}
