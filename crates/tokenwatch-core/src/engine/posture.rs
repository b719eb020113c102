//! What the posture fields learn from traffic: when each signing key was first seen, and which
//! issuers sign asymmetrically.
//!
//! Only genuine tokens teach anything (verified by tokenwatch, or attested by the gateway), so
//! a forged token can neither make a key look old nor an issuer look asymmetric; and key ages
//! are kept for configured issuers only. Both maps are keyed by the engine's hashes and capped
//! ([`MAX_KEYS`], [`MAX_ISSUERS`]): past the cap nothing new is learned (counted in
//! `refused`), and what was learned stays, since a first-seen time cannot be re-learned.
//! Checkpoints carry both ([`super::snapshot`]), so a key's age survives a restart.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};

use crate::input::Event;
use crate::posture::{alg_family, asymmetric, Posture};

/// Signing keys tracked (issuer, kid): real deployments have a handful per issuer.
pub const MAX_KEYS: usize = 4_096;
/// Issuers remembered as signing asymmetrically.
pub const MAX_ISSUERS: usize = 4_096;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct PostureState {
    /// hash(iss, kid) → event time (ms) the key was first seen signing a genuine token.
    pub(crate) first_seen: HashMap<u64, i64>,
    /// hash(iss) of issuers seen signing genuine asymmetric tokens.
    pub(crate) asymmetric_issuers: HashSet<u64>,
    /// Keys or issuers not learned because a map was full.
    pub refused: u64,
}

/// The facts about one event that [`crate::rules::Ctx`] carries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Facts {
    pub issuer_asymmetric: bool,
    pub key_age_ms: Option<i64>,
}

impl PostureState {
    /// Learns from `ev` (when its token is genuine) and says what the posture fields need.
    pub fn observe(&mut self, ev: &Event<'_>, posture: &Posture, hasher: &crate::hash::Seeded) -> Facts {
        let Some(tok) = ev.token.as_deref() else {
            return Facts::default();
        };
        let Some(iss) = tok.iss.as_deref() else {
            return Facts::default();
        };
        let configured = posture.issuer_configured(Some(iss)) == Some(true);
        let family = tok.alg.as_deref().map_or("other", alg_family);
        let genuine_asymmetric = ev.authenticated && asymmetric(family);
        // The issuer's hash only when it is learned or looked up: most events need neither.
        let learned = if genuine_asymmetric {
            let iss_key = hash(hasher, 1, iss, "");
            if !self.asymmetric_issuers.contains(&iss_key) {
                if self.asymmetric_issuers.len() < MAX_ISSUERS {
                    self.asymmetric_issuers.insert(iss_key);
                } else {
                    self.refused += 1;
                }
            }
            true
        } else {
            family == "HS" && !configured && self.asymmetric_issuers.contains(&hash(hasher, 1, iss, ""))
        };
        let key_age_ms = match tok.kid.as_deref() {
            Some(kid) if configured && genuine_asymmetric => {
                let k = hash(hasher, 2, iss, kid);
                let full = self.first_seen.len() >= MAX_KEYS;
                match self.first_seen.get_mut(&k) {
                    Some(first) => {
                        // Events may arrive a little out of order: the earliest time wins.
                        *first = (*first).min(ev.ts_ms);
                        Some(ev.ts_ms - *first)
                    }
                    None if full => {
                        self.refused += 1;
                        None
                    }
                    None => {
                        self.first_seen.insert(k, ev.ts_ms);
                        Some(0)
                    }
                }
            }
            _ => None,
        };
        Facts {
            // (`learned` is only asked of HS* tokens, the only ones `alg_strength` reads it for.)
            issuer_asymmetric: configured || learned,
            key_age_ms,
        }
    }

    /// The first-seen times of the tracked keys, for the per-key age metric: (iss, kid) are
    /// not recoverable from the hashes, so the service asks by name ([`Self::first_seen_of`]).
    pub fn first_seen_of(&self, iss: &str, kid: &str, hasher: &crate::hash::Seeded) -> Option<i64> {
        self.first_seen.get(&hash(hasher, 2, iss, kid)).copied()
    }

    pub fn len(&self) -> usize {
        self.first_seen.len() + self.asymmetric_issuers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The posture facts that set this event apart, added to a `match` decision's evidence: only
/// what is notable (plain HTTP, a downgrade, an unconfigured issuer, a missing audience, an
/// invalid signature, sensitive claim names, a stale key), so that ordinary decisions read as
/// before. Claim names, never values.
pub(super) fn evidence(cx: &crate::rules::Ctx<'_>, e: &mut serde_json::Value) {
    use crate::rules::{Field, Val};
    let notable = [
        (Field::Scheme, Val::Str("http")),
        (Field::AlgStrength, Val::Str("downgrade")),
        (Field::AlgStrength, Val::Str("unregistered")),
        (Field::IssuerConfigured, Val::Bool(false)),
        (Field::AudienceMatches, Val::Bool(false)),
        (Field::SignatureInvalid, Val::Bool(true)),
    ];
    for (f, v) in notable {
        if f.get(cx) == v {
            e[f.name()] = v.to_json();
        }
    }
    if Field::AudienceMatches.get(cx) == Val::Bool(false) {
        e["audience_expected"] = Field::AudienceExpected.get(cx).to_json();
    }
    let names = Field::SensitiveClaims.get(cx);
    if names != Val::Missing {
        e["sensitive_claims"] = names.to_json();
    }
    if Field::KeyStale.get(cx) == Val::Bool(true) {
        e["key_age"] = Field::KeyAge.get(cx).to_json();
    }
}

fn hash(hasher: &crate::hash::Seeded, tag: u8, a: &str, b: &str) -> u64 {
    let mut h = hasher.build_hasher();
    tag.hash(&mut h);
    a.hash(&mut h);
    b.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use super::*;
    use crate::engine::{Engine, EngineConfig};
    use crate::token::TokenInfo;

    const T0: i64 = 1_795_910_400_000;
    const DAY: i64 = 86_400_000;

    fn tok(kid: &str, alg: &str) -> Arc<TokenInfo> {
        let mut t = crate::token::decode(
            crate::token::RawToken::new(&crate::token::encode_unsigned_parts(
                &serde_json::json!({"alg": alg, "kid": kid}),
                &serde_json::json!({"iss": "https://idp", "sub": "u", "jti": format!("{kid}{alg}")}),
                b"sig",
            )),
            &[],
        )
        .unwrap();
        t.verified = true;
        Arc::new(t)
    }

    fn ev(ts: i64, t: &Arc<TokenInfo>, genuine: bool) -> Event<'static> {
        Event {
            ts_ms: ts,
            client_ip: None,
            method: Cow::Borrowed("GET"),
            path: Cow::Borrowed("/api"),
            status: Some(200),
            user_agent: Cow::Borrowed(""),
            token: Some(t.clone()),
            token_in_url: false,
            authenticated: genuine,
            geo: None,
            scheme: None,
            second_token: false,
        }
    }

    fn engine() -> Engine {
        let mut e = Engine::new(crate::defaults::rules().unwrap(), EngineConfig::default());
        let p = Posture::new(vec!["https://idp".into()], vec![], vec![], vec![], 90 * DAY);
        e.set_posture(Arc::new(p));
        e
    }

    fn stale(e: &mut Engine, ev: &Event<'_>) -> bool {
        let mut out = Vec::new();
        e.process(ev, &mut out);
        out.iter().any(|d| &*d.rule == "stale-signing-key")
    }

    #[test]
    fn a_key_first_seen_survives_a_checkpoint() {
        let k = tok("k1", "RS256");
        let mut before = engine();
        assert!(!stale(&mut before, &ev(T0, &k, true)));
        assert_eq!(before.key_first_seen("https://idp", "k1"), Some(T0));
        let mut bytes = Vec::new();
        before.snapshot(&mut bytes);
        let mut after = engine();
        after.restore(&bytes).unwrap();
        assert_eq!(after.key_first_seen("https://idp", "k1"), Some(T0));
        assert!(after.posture_state().asymmetric_issuers.len() == 1);
        assert!(stale(&mut after, &ev(T0 + 91 * DAY, &k, true)));
        // without the checkpoint, the key would look new
        let mut fresh = engine();
        assert!(!stale(&mut fresh, &ev(T0 + 91 * DAY, &k, true)));
    }

    #[test]
    fn only_genuine_asymmetric_tokens_teach_and_the_maps_are_capped() {
        let mut s = PostureState::default();
        let p = Posture::new(vec!["https://idp".into()], vec![], vec![], vec![], DAY);
        let h = crate::hash::Seeded::with_seeds([1, 2, 3, 4]);
        assert_eq!(s.observe(&ev(T0, &tok("k1", "RS256"), false), &p, &h).key_age_ms, None);
        assert_eq!(s.observe(&ev(T0, &tok("k1", "HS256"), true), &p, &h).key_age_ms, None);
        assert!(s.is_empty());
        // an out-of-order earlier event moves the first-seen time back
        s.observe(&ev(T0 + DAY, &tok("k1", "RS256"), true), &p, &h);
        let f = s.observe(&ev(T0, &tok("k1", "RS256"), true), &p, &h);
        assert_eq!(f.key_age_ms, Some(0));
        assert_eq!(s.first_seen_of("https://idp", "k1", &h), Some(T0));
        for i in 0..MAX_KEYS + 5 {
            s.observe(&ev(T0, &tok(&format!("k{i}"), "ES256"), true), &p, &h);
        }
        assert_eq!(s.first_seen.len(), MAX_KEYS);
        assert!(s.refused >= 5);
    }
}
