//! The posture report (`tokenwatch report`): one page for a security lead, from the posture
//! statistics of a replay ([`tokenwatch_core::posture`]).
//!
//! The page is built once as plain data — sections of lead sentences, a chart and a table —
//! and then written as self-contained HTML ([`html`]: inline CSS and SVG, no script, nothing
//! fetched) or as Markdown ([`markdown`]). Both forms therefore say the same things in the
//! same order, and the golden test on the Markdown form covers the content of the HTML form.
//! Every piece of text from the logs (paths, ids, algorithm and issuer names) is escaped by
//! the writer of each form; the data here holds it unescaped.

pub mod html;
pub mod markdown;

use tokenwatch_core::pipeline::Stats;
use tokenwatch_core::posture::stats::{ReportStats, RuleFindings, MAX_KEYS, MAX_NAMES, MAX_PATHS, TIME_BUCKETS};
use tokenwatch_core::posture::{LIFETIME_BUCKETS, LIFETIME_OVER};
use tokenwatch_core::rules::Action;

/// What the report is made from.
pub struct Report<'a> {
    /// The input files, as named on the command line.
    pub inputs: &'a [String],
    pub posture: &'a ReportStats,
    /// The replay's counters (lines read and skipped).
    pub stats: &'a Stats,
}

/// One section of the page.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub title: &'static str,
    /// Sentences shown above the chart and the table.
    pub lead: Vec<String>,
    pub chart: Option<Chart>,
    pub table: Option<Table>,
    /// Spans the page's width in HTML (long tables and the timeline).
    pub wide: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub head: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

/// A chart: drawn as inline SVG in HTML, as Unicode bars in Markdown.
#[derive(Debug, Clone, PartialEq)]
pub enum Chart {
    /// One bar per labelled count (algorithm mix, lifetime distribution).
    Bars(Vec<(String, u64)>),
    /// One row of [`TIME_BUCKETS`] counts per rule, over a common time axis.
    Timeline {
        start_ms: i64,
        width_ms: i64,
        rows: Vec<(String, [u64; TIME_BUCKETS])>,
    },
}

impl Report<'_> {
    /// The page's title line.
    pub fn title(&self) -> String {
        let p = self.posture;
        match (p.first_ms, p.last_ms) {
            (Some(a), Some(b)) => format!("Token posture, {} – {} UTC", fmt_when(a), fmt_when(b)),
            _ => "Token posture (no events)".to_string(),
        }
    }

    /// Every section, in the order of the page.
    pub fn sections(&self) -> Vec<Section> {
        vec![
            self.overview(),
            self.findings(),
            self.attacks(),
            self.algorithms(),
            self.lifetimes(),
            self.keys(),
            names("Issuers", "issuer", &self.posture.issuers),
            names("Audiences", "audience", &self.posture.audiences),
            self.leaks(),
            self.revoked(),
        ]
    }

    fn overview(&self) -> Section {
        let (p, s) = (self.posture, self.stats);
        let decisions: u64 = p.findings().iter().map(|r| r.decisions).sum();
        let mut lead = vec![
            format!("Inputs: {}.", self.inputs.join(", ")),
            format!(
                "{} lines read, {} requests, {} with a token ({} distinct tokens), {} decisions.",
                s.lines, p.events, p.with_token, p.tokens, decisions
            ),
        ];
        if s.skipped_total() > 0 {
            lead.push(format!(
                "{} lines skipped (not a request of a known format).",
                s.skipped_total()
            ));
        }
        if p.untracked_requests > 0 {
            lead.push(format!(
                "{} requests of tokens past the tracking cap are in no token table.",
                p.untracked_requests
            ));
        }
        Section {
            title: "Overview",
            lead,
            chart: None,
            table: None,
            wide: true,
        }
    }

    fn findings(&self) -> Section {
        let f = self.posture.findings();
        let rows = f.iter().map(|r| finding_row(r)).collect::<Vec<_>>();
        let lead = if rows.is_empty() {
            vec!["No rule fired in this period.".to_string()]
        } else {
            vec!["Risk is severity × count (low 1, medium 4, high 16, critical 64 per decision). Examples are the first decisions, by token id and subject, never a token.".to_string()]
        };
        Section {
            title: "Findings, ranked by risk",
            lead,
            chart: None,
            table: (!rows.is_empty()).then(|| Table {
                head: vec![
                    "rule",
                    "severity",
                    "decisions",
                    "risk",
                    "first",
                    "last",
                    "first examples",
                ],
                rows,
            }),
            wide: true,
        }
    }

    fn attacks(&self) -> Section {
        let p = self.posture;
        let f = p.findings();
        let chart = (!f.is_empty()).then(|| Chart::Timeline {
            start_ms: p.timeline.start_ms,
            width_ms: p.timeline.width_ms,
            rows: f.iter().map(|r| (r.rule.to_string(), r.series)).collect(),
        });
        let lead = match chart {
            None => vec!["No attack detected.".to_string()],
            Some(_) => Vec::new(),
        };
        Section {
            title: "Attacks detected over time",
            lead,
            chart,
            table: None,
            wide: true,
        }
    }

    fn algorithms(&self) -> Section {
        let p = self.posture;
        let items = with_other(&p.algorithms.ranked(), p.algorithms.other());
        let lead = vec![format!(
            "{} of {} distinct tokens unsigned (alg none or no signature); {} verified with a configured JWKS.",
            p.unsigned, p.tokens, p.verified
        )];
        share_section("Algorithm mix", "algorithm", lead, items, p.tokens)
    }

    fn lifetimes(&self) -> Section {
        let p = self.posture;
        let mut items: Vec<(String, u64)> = LIFETIME_BUCKETS
            .iter()
            .map(|(_, l)| l.to_string())
            .chain([LIFETIME_OVER.to_string()])
            .zip(p.lifetimes)
            .collect();
        items.push(("no iat or exp".to_string(), p.no_lifetime));
        // The buckets past the one ending at 24 h.
        let day = LIFETIME_BUCKETS.iter().position(|(s, _)| *s == 86_400).unwrap_or(0);
        let long: u64 = p.lifetimes[day + 1..].iter().sum();
        let lead = vec![format!(
            "Lifetime is exp − iat of each distinct token. Tokens that live longer than 24 h: {long}."
        )];
        share_section("Token lifetimes", "lifetime", lead, items, p.tokens)
    }

    fn keys(&self) -> Section {
        let p = self.posture;
        let end = p.last_ms.unwrap_or(0);
        let rows: Vec<Vec<String>> = p
            .keys()
            .into_iter()
            .map(|(iss, kid, k)| {
                vec![
                    iss.to_string(),
                    kid.to_string(),
                    k.tokens.to_string(),
                    fmt_when(k.first_ms),
                    fmt_when(k.last_ms),
                    fmt_age(end - k.first_ms),
                ]
            })
            .collect();
        let mut lead = vec![
            "Age is the time from the first token seen with the key to the end of the period: a lower bound of its real age.".to_string(),
        ];
        if p.other_keys > 0 {
            lead.push(format!(
                "{} tokens signed by keys past the first {MAX_KEYS}.",
                p.other_keys
            ));
        }
        if rows.is_empty() {
            lead = vec!["No token named its issuer and key (iss and kid).".to_string()];
        }
        Section {
            title: "Signing keys",
            lead,
            chart: None,
            table: (!rows.is_empty()).then(|| Table {
                head: vec!["issuer", "kid", "tokens", "first seen", "last seen", "age"],
                rows,
            }),
            wide: true,
        }
    }

    fn leaks(&self) -> Section {
        let l = &self.posture.leaks;
        let http = if l.scheme_logged == 0 {
            "Requests with a token over plain HTTP: not logged (no request in this period carried its scheme)."
                .to_string()
        } else {
            format!(
                "Requests with a token over plain HTTP: {} (of {} whose scheme was logged).",
                l.http_requests, l.scheme_logged
            )
        };
        let mut rows = Vec::new();
        for (kind, paths) in [("token in URL", &l.url_paths), ("plain HTTP", &l.http_paths)] {
            for (path, n) in paths.ranked() {
                rows.push(vec![kind.to_string(), path.to_string(), n.to_string()]);
            }
            if paths.other() > 0 {
                rows.push(vec![
                    kind.to_string(),
                    format!("(other paths, past the first {MAX_PATHS})"),
                    paths.other().to_string(),
                ]);
            }
        }
        Section {
            title: "Where tokens leak",
            lead: vec![format!("Requests with a token in the URL: {}.", l.url_requests), http],
            chart: None,
            table: (!rows.is_empty()).then(|| Table {
                head: vec!["leak", "path", "requests"],
                rows,
            }),
            wide: false,
        }
    }

    fn revoked(&self) -> Section {
        let rows: Vec<Vec<String>> = self
            .posture
            .findings()
            .into_iter()
            .filter(|r| r.action != Action::Alert)
            .map(|r| {
                vec![
                    r.rule.to_string(),
                    r.action.as_str().to_string(),
                    r.revoked().to_string(),
                    r.shadow.to_string(),
                ]
            })
            .collect();
        let total: u64 = self.posture.findings().iter().map(|r| r.revoked()).sum();
        Section {
            title: "What was revoked",
            lead: vec![format!("{total} revocations decided.")],
            chart: None,
            table: (!rows.is_empty()).then(|| Table {
                head: vec!["rule", "action", "revocations", "shadow (not acted on)"],
                rows,
            }),
            wide: false,
        }
    }
}

fn finding_row(r: &RuleFindings) -> Vec<String> {
    let examples: Vec<String> = r
        .examples
        .iter()
        .map(|e| {
            let id = e.token_id.as_deref().unwrap_or("-");
            match &e.subject {
                Some(s) => format!("{id} ({s})"),
                None => id.to_string(),
            }
        })
        .collect();
    vec![
        r.rule.to_string(),
        r.severity.as_str().to_string(),
        r.decisions.to_string(),
        r.risk().to_string(),
        fmt_when(r.first_ms),
        fmt_when(r.last_ms),
        examples.join("; "),
    ]
}

/// Ranked names, plus their "other" count when names went past the cap.
fn with_other(ranked: &[(&str, u64)], other: u64) -> Vec<(String, u64)> {
    let mut v: Vec<_> = ranked.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    if other > 0 {
        v.push((format!("(other, past the first {MAX_NAMES})"), other));
    }
    v
}

/// A section of counts with a bar chart and a table of counts and shares of `total`.
fn share_section(
    title: &'static str,
    what: &'static str,
    lead: Vec<String>,
    items: Vec<(String, u64)>,
    total: u64,
) -> Section {
    let rows = items
        .iter()
        .map(|(k, n)| vec![k.clone(), n.to_string(), pct(*n, total)])
        .collect();
    Section {
        title,
        lead,
        chart: (total > 0).then_some(Chart::Bars(items)),
        table: Some(Table {
            head: vec![what, "tokens", "share"],
            rows,
        }),
        wide: false,
    }
}

fn names(title: &'static str, what: &'static str, t: &tokenwatch_core::posture::stats::TopN) -> Section {
    let rows = with_other(&t.ranked(), t.other())
        .into_iter()
        .map(|(k, n)| vec![k, n.to_string()])
        .collect();
    Section {
        title,
        lead: Vec::new(),
        chart: None,
        table: Some(Table {
            head: vec![what, "tokens"],
            rows,
        }),
        wide: false,
    }
}

fn pct(n: u64, total: u64) -> String {
    if total == 0 {
        return "-".to_string();
    }
    format!("{:.1} %", 100.0 * n as f64 / total as f64)
}

/// An event time as the report shows it: UTC (the title says so), to the second.
pub fn fmt_when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A duration in its two largest units, rounded down: `3 d 4 h`, `25 min`, `40 s`.
pub fn fmt_age(ms: i64) -> String {
    let s = ms.max(0) / 1_000;
    let units = [("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)];
    let Some(i) = units.iter().position(|(_, u)| s >= *u) else {
        return "0 s".to_string();
    };
    let (big, b) = units[i];
    let mut out = format!("{} {big}", s / b);
    if let Some((small, m)) = units.get(i + 1) {
        let rest = (s % b) / m;
        if rest > 0 {
            out.push_str(&format!(" {rest} {small}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_two_units() {
        assert_eq!(fmt_age(0), "0 s");
        assert_eq!(fmt_age(40_500), "40 s");
        assert_eq!(fmt_age(25 * 60_000), "25 min");
        assert_eq!(fmt_age(86_400_000 + 4 * 3_600_000 + 59_000), "1 d 4 h");
        assert_eq!(fmt_age(-5), "0 s");
    }
}
