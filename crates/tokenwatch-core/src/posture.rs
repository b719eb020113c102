//! Posture: what the deployment promises about its tokens, so rules can check traffic against it.
//!
//! The posture rules (`weak-algorithm`, `unknown-issuer-accepted`, `audience-mismatch`,
//! `invalid-signature-accepted`, `sensitive-claims`, `token-over-http`, `stale-signing-key`)
//! are ordinary rule files over fields that need facts no log line carries: which issuers are
//! configured, which audience a route expects, which routes are protected, which claim names
//! are sensitive, how old a signing key may be. [`Posture`] holds those facts, typed once at
//! start (the service fills it from `[verify] issuers`, `[audiences]` and `[posture]`); the
//! fields read it, never a string from a rule file. Everything here is bounded by the
//! configuration, not by traffic: attacker text is only ever compared with configured text.

/// What a replayed period says about token hygiene, for `tokenwatch report`.
pub mod stats;

/// The configuration the posture fields read. `Default` is the service's default: no issuers,
/// no audiences, no protected routes, the default sensitive claim names, keys of 90 days.
#[derive(Debug, Clone, PartialEq)]
pub struct Posture {
    /// The issuers configured with a JWKS (`[verify] issuers`): their keys are public, so
    /// they sign asymmetrically, and an accepted token of any other issuer is unexpected.
    pub issuers: Vec<Box<str>>,
    /// Path prefix → the audience a token must carry there, longest prefix first.
    audiences: Vec<(Box<str>, Box<str>)>,
    /// Path prefixes where the gateway must validate tokens (plus every `audiences` prefix).
    protected: Vec<Box<str>>,
    /// Claim-name patterns, normalized ([`normalize`]); `*` at either end is a wildcard.
    sensitive: Vec<Box<str>>,
    /// A signing key older than this (since tokenwatch first saw it sign) is stale.
    pub max_key_age_ms: i64,
}

/// Claim names that indicate passwords, secrets, card and national id numbers, emails and
/// phone numbers: the payload of a JWT is only base64, readable by everyone who holds it.
pub const DEFAULT_SENSITIVE_CLAIMS: &[&str] = &[
    "*password*",
    "*passwd*",
    "pwd",
    "*secret*",
    "*apikey*",
    "*privatekey*",
    "*creditcard*",
    "*cardnumber*",
    "ccnumber",
    "cvv",
    "cvc",
    "iban",
    "ssn",
    "*socialsecurity*",
    "*nationalid*",
    "taxid",
    "passport*",
    "email",
    "emailaddress",
    "phone*",
    "mobile*",
];

/// [`DEFAULT_SENSITIVE_CLAIMS`] as a configuration holds them.
pub fn default_sensitive_claims() -> Vec<String> {
    DEFAULT_SENSITIVE_CLAIMS.iter().map(ToString::to_string).collect()
}

/// 90 days, the rotation period the guidance tokenwatch follows suggests at most.
pub const DEFAULT_MAX_KEY_AGE_MS: i64 = 90 * 86_400_000;

/// At most this many sensitive claim names are kept per token (names only, each cut to
/// [`MAX_CLAIM_NAME_BYTES`]): a token with a thousand odd claims costs no more than one with eight.
pub const MAX_SENSITIVE_NAMES: usize = 8;
/// Longer claim names are not matched (no configured name is that long).
pub const MAX_CLAIM_NAME_BYTES: usize = 64;

impl Default for Posture {
    fn default() -> Self {
        Posture::new(
            Vec::new(),
            Vec::new(),
            Vec::new(),
            default_sensitive_claims(),
            DEFAULT_MAX_KEY_AGE_MS,
        )
    }
}

impl Posture {
    pub fn new(
        issuers: Vec<String>,
        audiences: Vec<(String, String)>,
        protected: Vec<String>,
        sensitive: Vec<String>,
        max_key_age_ms: i64,
    ) -> Posture {
        let mut audiences: Vec<(Box<str>, Box<str>)> =
            audiences.into_iter().map(|(p, a)| (p.into(), a.into())).collect();
        audiences.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Posture {
            issuers: issuers.into_iter().map(Into::into).collect(),
            audiences,
            protected: protected.into_iter().map(Into::into).collect(),
            sensitive: sensitive.iter().map(|s| normalize(s).into()).collect(),
            max_key_age_ms,
        }
    }

    /// Whether `iss` is a configured issuer; `None` when none are configured (then every
    /// issuer is as expected as any other).
    pub fn issuer_configured(&self, iss: Option<&str>) -> Option<bool> {
        (!self.issuers.is_empty()).then(|| iss.is_some_and(|i| self.issuers.iter().any(|c| **c == *i)))
    }

    /// The audience the route of `path` expects (longest configured prefix).
    pub fn expected_audience(&self, path: &str) -> Option<&str> {
        self.audiences
            .iter()
            .find(|(p, _)| path_under(path, p))
            .map(|(_, a)| &**a)
    }

    /// Whether the gateway must validate tokens on `path`.
    pub fn protected(&self, path: &str) -> bool {
        self.protected.iter().any(|p| path_under(path, p)) || self.expected_audience(path).is_some()
    }

    pub fn has_sensitive_patterns(&self) -> bool {
        !self.sensitive.is_empty()
    }

    /// Whether a claim name matches a configured pattern. Names only: no value is read, and
    /// nothing is allocated (the name is normalized on the stack).
    pub fn sensitive_name(&self, name: &str) -> bool {
        let mut buf = [0u8; MAX_CLAIM_NAME_BYTES];
        let Some(n) = normalize_into(name, &mut buf) else {
            return false;
        };
        self.sensitive.iter().any(|p| glob(p, n))
    }

    /// The sensitive names among `names`, at most [`MAX_SENSITIVE_NAMES`], in their order.
    pub fn sensitive_names<'n>(&self, names: impl Iterator<Item = &'n str>) -> Box<[Box<str>]> {
        if self.sensitive.is_empty() {
            return Box::default();
        }
        names
            .filter(|n| self.sensitive_name(n))
            .take(MAX_SENSITIVE_NAMES)
            .map(Into::into)
            .collect()
    }
}

/// The sensitive claim names of a compact token's payload: its keys are read one by one and
/// only matching names are kept; values are skipped unread. Called once per distinct token,
/// after it decoded.
pub(crate) fn payload_sensitive_names(raw: crate::token::RawToken<'_>, p: &Posture) -> Box<[Box<str>]> {
    let Some(payload) = raw.expose().split('.').nth(1).and_then(crate::token::b64) else {
        return Box::default();
    };
    let mut de = serde_json::Deserializer::from_slice(&payload);
    match serde::Deserializer::deserialize_map(&mut de, NameScan { p, out: Vec::new() }) {
        Ok(names) => names.into_boxed_slice(),
        Err(_) => Box::default(),
    }
}

/// Visits a claims object's keys, keeping the sensitive ones.
struct NameScan<'p> {
    p: &'p Posture,
    out: Vec<Box<str>>,
}

impl<'de> serde::de::Visitor<'de> for NameScan<'_> {
    type Value = Vec<Box<str>>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a claims object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut m: A) -> Result<Self::Value, A::Error> {
        while m.next_key_seed(KeySeed(&mut self))?.is_some() {
            m.next_value::<serde::de::IgnoredAny>()?;
        }
        Ok(self.out)
    }
}

/// One key, borrowed or (when JSON escapes were resolved) transient: checked where it lies,
/// copied only when it is sensitive.
struct KeySeed<'a, 'p>(&'a mut NameScan<'p>);

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a claim name")
    }
    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<(), E> {
        let scan = self.0;
        if scan.out.len() < MAX_SENSITIVE_NAMES && scan.p.sensitive_name(name) {
            scan.out.push(name.into());
        }
        Ok(())
    }
}

/// `/billing` covers `/billing` and `/billing/...`, not `/billingx`; a prefix ending in `/`
/// covers what starts with it.
fn path_under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?']),
        None => false,
    }
}

/// [`normalize`] into `buf`; `None` for a name longer than the buffer.
fn normalize_into<'b>(s: &str, buf: &'b mut [u8; MAX_CLAIM_NAME_BYTES]) -> Option<&'b str> {
    if s.len() > buf.len() {
        return None;
    }
    let mut n = 0;
    for b in s.bytes().filter(|b| !matches!(b, b'_' | b'-' | b'.' | b' ')) {
        buf[n] = b.to_ascii_lowercase();
        n += 1;
    }
    // Only ASCII bytes were dropped or changed: what is left is still UTF-8.
    std::str::from_utf8(&buf[..n]).ok()
}

/// Lower case without `_`, `-`, `.` and spaces: `card_number`, `cardNumber` and `Card-Number`
/// are one name.
fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '_' | '-' | '.' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// `*x*` contains, `x*` starts with, `*x` ends with, `x` equals.
fn glob(pattern: &str, name: &str) -> bool {
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(_), Some(_)) if pattern.len() >= 2 => name.contains(&pattern[1..pattern.len() - 1]),
        (Some(end), _) => name.ends_with(end),
        (_, Some(start)) => name.starts_with(start),
        _ => name == pattern,
    }
}

/// The family of a JWS `alg`, as rules and metrics name it: `HS`, `RS`, `PS`, `ES`, `EdDSA`,
/// `none`, or `other` for a value outside the registered JOSE set (RFC 7518, 8037, 8812,
/// 9864).
pub fn alg_family(alg: &str) -> &'static str {
    match alg {
        "HS256" | "HS384" | "HS512" => "HS",
        "RS256" | "RS384" | "RS512" => "RS",
        "PS256" | "PS384" | "PS512" => "PS",
        "ES256" | "ES384" | "ES512" | "ES256K" => "ES",
        "EdDSA" | "Ed25519" | "Ed448" => "EdDSA",
        a if a.eq_ignore_ascii_case("none") => "none",
        _ => "other",
    }
}

/// Whether the family signs with a private key that verifiers never hold.
pub fn asymmetric(family: &str) -> bool {
    matches!(family, "RS" | "PS" | "ES" | "EdDSA")
}

/// The registered algorithms, the only values the `alg` metric label takes (else `other`).
pub const REGISTERED_ALGS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
    "ES256K", "EdDSA", "Ed25519", "Ed448", "none",
];

/// What the `alg_strength` field says of a token: `asymmetric`, `symmetric` (HS*), `downgrade`
/// (HS* from an issuer known to sign asymmetrically: configured with a JWKS, or seen signing
/// genuine RS/PS/ES/EdDSA tokens), `none`, or `unregistered`.
pub fn alg_strength(alg: Option<&str>, issuer_asymmetric: bool) -> Option<&'static str> {
    Some(match alg_family(alg?) {
        "HS" if issuer_asymmetric => "downgrade",
        "HS" => "symmetric",
        "none" => "none",
        "other" => "unregistered",
        _ => "asymmetric",
    })
}

/// Upper bounds (seconds, inclusive) of the token-lifetime buckets, and their labels: the
/// posture metrics' histogram and the report's chart use these same buckets. Minutes for
/// access tokens, a day as the outer limit guidance sets, then a week and a month for what is
/// plainly too long.
pub const LIFETIME_BUCKETS: [(i64, &str); 7] = [
    (5 * 60, "≤ 5 min"),
    (15 * 60, "≤ 15 min"),
    (3_600, "≤ 1 h"),
    (4 * 3_600, "≤ 4 h"),
    (86_400, "≤ 24 h"),
    (7 * 86_400, "≤ 7 d"),
    (30 * 86_400, "≤ 30 d"),
];
/// The label of the bucket past the last bound.
pub const LIFETIME_OVER: &str = "> 30 d";

/// How a token's `alg` is classed: one of [`REGISTERED_ALGS`] (`none` in any letter case is
/// `none`), another value, or none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlgClass {
    Registered(usize),
    Unregistered,
    Absent,
}

/// What the posture metrics (per event) and the report (per distinct token) both say of one
/// event's token, classed once here so the two cannot disagree: its algorithm, its lifetime
/// bucket, and where it leaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClass {
    pub alg: AlgClass,
    /// (bucket in [`LIFETIME_BUCKETS`], `LIFETIME_BUCKETS.len()` past the last; `exp - iat`
    /// in seconds, 0 at least); `None` without `iat` or `exp`.
    pub lifetime: Option<(usize, i64)>,
    /// The token was (also) in the URL query.
    pub in_url: bool,
    /// The request came over plain HTTP (as the log says; `false` when it does not say).
    pub over_http: bool,
}

impl TokenClass {
    /// The class of `ev`'s token; `None` for a request without one.
    pub fn of(ev: &crate::input::Event<'_>) -> Option<TokenClass> {
        let t = ev.token.as_deref()?;
        let alg = match t.alg.as_deref() {
            None => AlgClass::Absent,
            Some(a) => match REGISTERED_ALGS.iter().position(|r| *r == a) {
                Some(i) => AlgClass::Registered(i),
                None if a.eq_ignore_ascii_case("none") => {
                    AlgClass::Registered(REGISTERED_ALGS.iter().position(|r| *r == "none").unwrap_or(0))
                }
                None => AlgClass::Unregistered,
            },
        };
        let lifetime = t.lifetime().map(|l| {
            let secs = l.max(0);
            let b = LIFETIME_BUCKETS
                .iter()
                .position(|(ub, _)| secs <= *ub)
                .unwrap_or(LIFETIME_BUCKETS.len());
            (b, secs)
        });
        Some(TokenClass {
            alg,
            lifetime,
            in_url: ev.token_in_url,
            over_http: ev.scheme == Some(crate::input::Scheme::Http),
        })
    }

    /// The algorithm as a metric label: a registered name, else `other` (absent included):
    /// Prometheus labels must come from a fixed set.
    pub fn alg_index(self) -> usize {
        match self.alg {
            AlgClass::Registered(i) => i,
            AlgClass::Unregistered | AlgClass::Absent => REGISTERED_ALGS.len(),
        }
    }
}

/// Token hygiene counted per event for the posture metrics, with labels from fixed sets only:
/// the issuer as a configured issuer's index (any other is `other`), the algorithm as one of
/// [`REGISTERED_ALGS`] (any other is `other`). Counting costs no allocation per event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PostureStats {
    /// By issuer label: the configured issuers in order, then `other`.
    pub by_issuer: Vec<IssuerStats>,
    /// Events by token lifetime (`exp - iat`): one count per [`LIFETIME_BUCKETS`] bucket,
    /// not cumulative, the last for longer lifetimes.
    pub lifetime: [u64; LIFETIME_BUCKETS.len() + 1],
    pub lifetime_sum_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct IssuerStats {
    /// By algorithm: [`REGISTERED_ALGS`] in order, then `other`.
    pub by_alg: [u64; REGISTERED_ALGS.len() + 1],
    pub in_url: u64,
    pub over_http: u64,
    /// Neither verified by tokenwatch nor attested by the gateway.
    pub unverified: u64,
}

impl PostureStats {
    /// Counts one event's token.
    pub fn observe(&mut self, ev: &crate::input::Event<'_>, p: &Posture) {
        let (Some(t), Some(c)) = (ev.token.as_deref(), TokenClass::of(ev)) else {
            return;
        };
        let n = p.issuers.len() + 1;
        if self.by_issuer.len() != n {
            self.by_issuer.resize(n, IssuerStats::default());
        }
        let i = t
            .iss
            .as_deref()
            .and_then(|iss| p.issuers.iter().position(|c| **c == *iss))
            .unwrap_or(n - 1);
        let s = &mut self.by_issuer[i];
        s.by_alg[c.alg_index()] += 1;
        s.in_url += u64::from(c.in_url);
        s.over_http += u64::from(c.over_http);
        s.unverified += u64::from(!ev.authenticated);
        if let Some((b, secs)) = c.lifetime {
            self.lifetime[b] += 1;
            self.lifetime_sum_s += secs as f64;
        }
    }

    /// The label of `by_issuer[i]`.
    pub fn issuer_label(p: &Posture, i: usize) -> &str {
        p.issuers.get(i).map_or("other", |s| s)
    }

    /// The label of `by_alg[i]`.
    pub fn alg_label(i: usize) -> &'static str {
        REGISTERED_ALGS.get(i).copied().unwrap_or("other")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_take_the_longest_prefix_on_path_boundaries() {
        let p = Posture::new(
            vec![],
            vec![
                ("/billing".into(), "billing-api".into()),
                ("/billing/admin".into(), "admin".into()),
            ],
            vec!["/api/".into()],
            vec![],
            1,
        );
        assert_eq!(p.expected_audience("/billing/x"), Some("billing-api"));
        assert_eq!(p.expected_audience("/billing"), Some("billing-api"));
        assert_eq!(p.expected_audience("/billing/admin/y"), Some("admin"));
        assert_eq!(p.expected_audience("/billingx"), None);
        assert!(p.protected("/api/v1") && p.protected("/billing") && !p.protected("/public"));
    }

    #[test]
    fn sensitive_names_are_matched_by_name_only_and_bounded() {
        let p = Posture::default();
        for yes in [
            "password",
            "user_password",
            "Card-Number",
            "creditCardNumber",
            "email",
            "phone_number",
            "SSN",
        ] {
            assert!(p.sensitive_name(yes), "{yes}");
        }
        for no in [
            "sub",
            "scope",
            "email_verified",
            "session",
            "company",
            "roles",
            "tenant",
        ] {
            assert!(!p.sensitive_name(no), "{no}");
        }
        let many: Vec<String> = (0..20).map(|i| format!("secret{i}")).collect();
        assert_eq!(p.sensitive_names(many.iter().map(|s| &**s)).len(), MAX_SENSITIVE_NAMES);
        assert!(!p.sensitive_name(&format!("password{}", "x".repeat(80))));
    }

    #[test]
    fn payload_names_are_found_escaped_or_not_and_values_never_read() {
        let p = Posture::default();
        let tok = crate::token::encode_unsigned_parts(
            &serde_json::json!({"alg": "RS256"}),
            &serde_json::json!({"sub": "password", "user_password": 1, "email": {"nested": "x"}, "scope": "email"}),
            b"sig",
        );
        let names = payload_sensitive_names(crate::token::RawToken::new(&tok), &p);
        // serde_json's map is ordered by key
        assert_eq!(&*names, [Box::from("email"), Box::from("user_password")]);
        let escaped = format!(
            "e30.{}.sig",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                br#"{"pass\u0077ord":"x"}"#
            )
        );
        let names = payload_sensitive_names(crate::token::RawToken::new(&escaped), &p);
        assert_eq!(&*names, [Box::from("password")]);
    }

    #[test]
    fn algorithms_fall_in_families_and_strengths() {
        assert_eq!(alg_family("HS256"), "HS");
        assert_eq!(alg_family("ES256K"), "ES");
        assert_eq!(alg_family("NONE"), "none");
        assert_eq!(alg_family("RS1"), "other");
        assert_eq!(alg_strength(Some("HS256"), true), Some("downgrade"));
        assert_eq!(alg_strength(Some("HS256"), false), Some("symmetric"));
        assert_eq!(alg_strength(Some("RS256"), true), Some("asymmetric"));
        assert_eq!(alg_strength(Some("XS256"), false), Some("unregistered"));
        assert_eq!(alg_strength(None, true), None);
        assert_eq!(p_issuer(), (None, Some(true), Some(false)));
    }

    fn p_issuer() -> (Option<bool>, Option<bool>, Option<bool>) {
        let none = Posture::default();
        let some = Posture::new(vec!["https://a".into()], vec![], vec![], vec![], 1);
        (
            none.issuer_configured(Some("x")),
            some.issuer_configured(Some("https://a")),
            some.issuer_configured(None),
        )
    }
}
