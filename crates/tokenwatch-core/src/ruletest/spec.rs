//! The schema of a rule test file (`NAME.test.yaml` beside the rules), as written.
//!
//! Unknown keys are errors (a misspelt `expect_nonee` must not pass silently), and every
//! scalar is read as text and typed when the case is built ([`super::build`]), where the
//! message can name the case.

use std::collections::BTreeMap;

use marked_yaml::Spanned;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The rule under test: its decisions are always compared.
    pub rule: String,
    /// Log format of `lines:` cases (default: auto).
    #[serde(default)]
    pub format: Option<String>,
    /// What the posture fields compare with, as the config file's `[verify] issuers`,
    /// `[audiences]` and `[posture]` would give it (default: the service's defaults).
    #[serde(default)]
    pub posture: Option<PostureSpec>,
    pub cases: Vec<Case>,
}

/// The posture of a test file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureSpec {
    /// The configured issuers (`[verify] issuers`' names).
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Path prefix → expected audience (`[audiences]`).
    #[serde(default)]
    pub audiences: BTreeMap<String, String>,
    #[serde(default)]
    pub protected_paths: Vec<String>,
    /// Replaces the default sensitive claim names.
    #[serde(default)]
    pub sensitive_claims: Option<Vec<String>>,
    /// A duration (`90d`).
    #[serde(default)]
    pub max_key_age: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: Spanned<String>,
    #[serde(default)]
    pub format: Option<String>,
    /// Named tokens for `lines:` (`${token:NAME}`), or to reuse in `events:` by name.
    #[serde(default)]
    pub tokens: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub events: Vec<EventSpec>,
    #[serde(default)]
    pub lines: Vec<String>,
    #[serde(default)]
    pub expect: Vec<ExpectSpec>,
    #[serde(default)]
    pub expect_none: Vec<String>,
}

/// One request in the shorthand.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// Offset from the virtual start (`0s`, `9m`, `10m1s`).
    pub at: String,
    #[serde(default)]
    pub token: Option<TokenSpec>,
    /// `header` (default) or `query` (`?access_token=`).
    #[serde(default)]
    pub token_in: Option<String>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    /// A location logged by the gateway (wins over the GeoIP database).
    #[serde(default)]
    pub geo: Option<GeoSpec>,
    /// The same request this many times ...
    #[serde(default)]
    pub repeat: Option<String>,
    /// ... this far apart (default 1s).
    #[serde(default)]
    pub every: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoSpec {
    pub lat: String,
    pub lon: String,
    #[serde(default)]
    pub accuracy_km: Option<String>,
}

/// A token: the name (or `jti`) of one given earlier, or its claims.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TokenSpec {
    Name(String),
    Claims(BTreeMap<String, String>),
}

/// A decision that must be made; every field given must match.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub token_id: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub client_ip: Option<String>,
}

impl TestFile {
    /// Every rule the file names: its own and those in expectations.
    pub fn rules_named(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&*self.rule).chain(self.cases.iter().flat_map(|c| {
            c.expect
                .iter()
                .filter_map(|e| e.rule.as_deref())
                .chain(c.expect_none.iter().map(|s| &**s))
        }))
    }
}
