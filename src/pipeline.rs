//! One stream of log lines through every stage: parse → decode → locate → engine.
//!
//! [`Pipeline`] is what `replay` drives from files and what the streaming service drives from
//! Kafka, so both make the same decisions for the same lines. It counts everything it skips,
//! by reason; one bad line never stops it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::decision::Decision;
use crate::engine::{Engine, EngineConfig};
use crate::geo::GeoDb;
use crate::input::{Event, Format, Mapping, Parser, Skip};
use crate::rules::RuleSet;
use crate::token::TokenCache;

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub format: Format,
    pub mapping: Option<Mapping>,
    /// Distinct tokens kept decoded.
    pub token_cache: usize,
    pub engine: EngineConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            format: Format::Auto,
            mapping: None,
            token_cache: 1_000_000,
            engine: EngineConfig::default(),
        }
    }
}

/// Counters for the summary and the metrics.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub lines: u64,
    pub events: u64,
    pub skipped: BTreeMap<&'static str, u64>,
    pub token_errors: BTreeMap<&'static str, u64>,
    /// Events that carried no token at all (they still reach rules that need none).
    pub without_token: u64,
    pub decisions: BTreeMap<(String, &'static str), u64>,
}

impl Stats {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    pub fn decisions_total(&self) -> u64 {
        self.decisions.values().sum()
    }
}

pub struct Pipeline {
    parser: Parser,
    tokens: TokenCache,
    geo: Option<GeoDb>,
    engine: Engine,
    pub stats: Stats,
}

impl Pipeline {
    pub fn new(rules: Arc<RuleSet>, geo: Option<GeoDb>, cfg: PipelineConfig) -> Result<Self, String> {
        let tokens = TokenCache::new(cfg.token_cache, rules.wanted_claims());
        Ok(Pipeline {
            parser: Parser::new(cfg.format, cfg.mapping)?,
            tokens,
            geo,
            engine: Engine::new(rules, cfg.engine),
            stats: Stats::default(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Swaps the rules (hot reload): see [`Engine::replace_rules`].
    pub fn replace_rules(&mut self, rules: Arc<RuleSet>) {
        self.tokens.set_wanted_claims(rules.wanted_claims());
        self.engine.replace_rules(rules);
    }

    /// Processes one line (without newline), appending its decisions to `out`.
    pub fn process_line(&mut self, line: &[u8], out: &mut Vec<Decision>) {
        self.stats.lines += 1;
        let parsed = match self.parser.parse(line, &mut self.tokens) {
            Ok(p) => p,
            Err(skip) => {
                self.skip(skip);
                return;
            }
        };
        self.stats.events += 1;
        for e in &parsed.token_errors {
            *self.stats.token_errors.entry(e.reason()).or_default() += 1;
        }
        let mut ev = parsed.event;
        if ev.token.is_none() {
            self.stats.without_token += 1;
        }
        if ev.geo.is_none() {
            if let (Some(db), Some(ip)) = (&mut self.geo, ev.client_ip) {
                ev.geo = db.locate_cached(ip);
            }
        }
        let start = out.len();
        self.engine.process(&ev, out);
        if let Some(second) = parsed.url_token {
            // The request carried a second, different token in its URL: it was used too.
            let ev2 = Event {
                token: Some(second),
                token_in_url: true,
                ..ev
            };
            self.engine.process(&ev2, out);
        }
        for d in &out[start..] {
            *self
                .stats
                .decisions
                .entry((d.rule.to_string(), d.action.as_str()))
                .or_default() += 1;
        }
    }

    /// Counts a line that the reader skipped for its length.
    pub fn line_too_long(&mut self) {
        self.stats.lines += 1;
        self.skip(Skip::LineTooLong);
    }

    fn skip(&mut self, skip: Skip) {
        *self.stats.skipped.entry(skip.reason()).or_default() += 1;
    }
}
