//! Rules: YAML files in, compiled [`Rule`]s out.
//!
//! A rule is one of a few general engine primitives ([`Kind`]) with parameters, a `where`
//! filter, a key, allowlists and a cooldown, so new detections need a file, not code. Files
//! are parsed and validated completely at load time ([`load`]): every problem is reported as
//! `file:line: message`, and a rule set with any problem is rejected whole, so a running
//! service keeps its old rules on a bad edit.

pub mod field;
pub mod filter;
mod kinds;
pub mod load;
mod ops;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

pub use field::{Ctx, Field, FieldError, Val};
pub use filter::Filter;
pub use load::{load_dir, load_str, LoadErrors, RuleError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Alert,
    RevokeToken,
    RevokeSubject,
}

impl Severity {
    /// Every severity, in the order messages list them.
    pub const ALL: [Severity; 4] = [Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl Action {
    /// Every action, in the order messages list them.
    pub const ALL: [Action; 3] = [Action::Alert, Action::RevokeToken, Action::RevokeSubject];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::RevokeToken => "revoke_token",
            Action::RevokeSubject => "revoke_subject",
        }
    }
}

/// The engine primitive a rule runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Fires on every matching event (subject to the cooldown).
    Match,
    /// At least `threshold` matching events per key within `window_ms` of event time.
    Count { threshold: u32, window_ms: i64 },
    /// At least `threshold` distinct values of `field` per key within `window_ms`.
    DistinctCount {
        field: Field,
        threshold: u32,
        window_ms: i64,
    },
    /// Two consecutive (event-time) geolocated events of a key imply impossible travel.
    GeoVelocity {
        max_gap_ms: i64,
        min_distance_km: f64,
        max_speed_kmh: f64,
        min_time_ms: i64,
    },
    /// The event's token was revoked earlier, directly or through its subject.
    RevokedUse,
}

impl Kind {
    /// The kind's name in rule files ([`kinds::KINDS`]).
    pub fn name(&self) -> &'static str {
        kinds::spec_of(self).name
    }

    /// How long per-key state must outlive its last event for the kind to stay exact.
    pub fn window_ms(&self) -> i64 {
        match self {
            Kind::Count { window_ms, .. } | Kind::DistinctCount { window_ms, .. } => *window_ms,
            Kind::GeoVelocity { max_gap_ms, .. } => *max_gap_ms,
            Kind::Match | Kind::RevokedUse => 0,
        }
    }
}

/// How many revocations a rule may make within a window of event time before it trips to
/// shadow (see [`crate::engine::budget`]): `budget: 100/10m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max: u32,
    pub window_ms: i64,
}

/// What is wrong with a `budget` (as written, in every message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("budget `{0}` must be COUNT/WINDOW, e.g. 100/10m")]
    Shape(String),
    #[error("budget `{budget}`: `{count}` is not a whole number above 0")]
    Count { budget: String, count: String },
    #[error("budget `{budget}`: {source}")]
    Window { budget: String, source: DurationError },
    #[error("budget `{0}`: the window must be longer than 0")]
    EmptyWindow(String),
}

impl std::str::FromStr for Budget {
    type Err = BudgetError;
    fn from_str(s: &str) -> Result<Self, BudgetError> {
        let (n, w) = s.trim().split_once('/').ok_or_else(|| BudgetError::Shape(s.into()))?;
        let max: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| BudgetError::Count {
                budget: s.into(),
                count: n.trim().into(),
            })?;
        let window_ms = parse_duration_ms(w).map_err(|source| BudgetError::Window {
            budget: s.into(),
            source,
        })?;
        if window_ms <= 0 {
            return Err(BudgetError::EmptyWindow(s.into()));
        }
        Ok(Budget { max, window_ms })
    }
}

/// How often a rule may fire for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cooldown {
    /// Once per key for as long as the key is tracked.
    Forever,
    Ms(i64),
}

/// Keys and addresses for which a rule never fires.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allow {
    pub cidrs: Vec<ipnet::IpNet>,
    pub subjects: Vec<Box<str>>,
    pub issuers: Vec<Box<str>>,
}

impl Allow {
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty() && self.subjects.is_empty() && self.issuers.is_empty()
    }
}

/// Where a rule was defined, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: Arc<str>,
    pub description: Box<str>,
    pub severity: Severity,
    pub action: Action,
    /// Shadow rules decide but never revoke.
    pub shadow: bool,
    pub kind: Kind,
    pub key: Field,
    pub filter: Filter,
    pub allow: Allow,
    pub cooldown: Cooldown,
    /// Revoking rules: the rule's own revocation budget; `None` takes the engine's default.
    pub budget: Option<Budget>,
    pub origin: Origin,
}

/// Every rule loaded from a directory, in file-name order, then order within a file.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// Number of files the rules came from.
    pub files: usize,
}

impl RuleSet {
    /// The custom claims any rule reads, so the token decoder keeps exactly those.
    pub fn wanted_claims(&self) -> Vec<Box<str>> {
        let mut out: Vec<Box<str>> = Vec::new();
        for r in &self.rules {
            let mut add = |f: &Field| {
                if let Field::Claim(c) = f {
                    if !out.contains(c) {
                        out.push(c.clone());
                    }
                }
            };
            add(&r.key);
            if let Kind::DistinctCount { field, .. } = &r.kind {
                add(field);
            }
            for c in &r.filter.conds {
                add(&c.field);
            }
        }
        out
    }
}

/// What is wrong with a duration (as written, trimmed, in every message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration (write it like 90s, 10m, 24h or 7d)")]
    NotADuration(String),
    #[error("duration `{0}` needs a unit: ms, s, m, h or d")]
    NoUnit(String),
    #[error("duration `{duration}` has an unknown unit `{unit}` (use ms, s, m, h or d)")]
    UnknownUnit { duration: String, unit: String },
    #[error("duration `{0}` is out of range")]
    OutOfRange(String),
}

/// Parses `90s`, `10m`, `24h`, `7d`, `500ms`, or `0` into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, DurationError> {
    let s = s.trim();
    if s == "0" {
        return Ok(0);
    }
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| DurationError::NotADuration(s.into()))?;
    let mult = match unit.trim() {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        "" => return Err(DurationError::NoUnit(s.into())),
        u => {
            return Err(DurationError::UnknownUnit {
                duration: s.into(),
                unit: u.into(),
            })
        }
    };
    let ms = n * mult;
    if !ms.is_finite() || !(0.0..=3.2e12).contains(&ms) {
        return Err(DurationError::OutOfRange(s.into()));
    }
    Ok(ms.round() as i64)
}

/// `10m` back from milliseconds, for messages.
pub fn fmt_duration(ms: i64) -> String {
    for (unit, m) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms >= m && ms % m == 0 {
            return format!("{}{unit}", ms / m);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("24h"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1_500));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("7d"), Ok(604_800_000));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert_eq!(
            parse_duration_ms("10").unwrap_err().to_string(),
            "duration `10` needs a unit: ms, s, m, h or d"
        );
        assert_eq!(
            parse_duration_ms("10y").unwrap_err().to_string(),
            "duration `10y` has an unknown unit `y` (use ms, s, m, h or d)"
        );
        assert!(parse_duration_ms("soon").is_err());
        assert_eq!(fmt_duration(600_000), "10m");
        assert_eq!(fmt_duration(90_000), "90s");
        assert_eq!(fmt_duration(1_500), "1500ms");
    }
}
