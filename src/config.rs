//! The configuration file (TOML): what the command line does not say.
//!
//! Every table and key is checked when the file is loaded (unknown keys are errors), and
//! messages name the file, line and key (`tokenwatch.toml:12: batch.max_messages: ...`), so a
//! typo fails at start instead of being ignored. The config remembers where each key was set
//! (a file line or an environment variable), so that a value found wrong later, when the
//! service settings are resolved, is reported at its source too ([`Config::locate`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use tokenwatch_core::engine::EngineConfig;
use tokenwatch_core::eventtime::EventTimeConfig;
use tokenwatch_core::input::lines::DEFAULT_MAX_LINE;
use tokenwatch_core::input::mapping::{Mapping, MappingConfig};
use tokenwatch_core::input::Format;
use tokenwatch_core::rules::parse_duration_ms;
use tokenwatch_core::verify::{Verifier, VerifyConfig};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka bootstrap servers, `host:port,host:port`.
    pub brokers: Option<String>,
    pub topics: Option<Vec<String>>,
    /// Consumer group id (default `tokenwatch`).
    pub group: Option<String>,
    /// Rule directory (default `rules`).
    pub rules: Option<PathBuf>,
    /// MaxMind City database.
    pub geoip: Option<PathBuf>,
    /// Redis URL(s): one for a single server, several (or `redis_cluster = true`) for a cluster.
    pub redis: Option<Vec<String>>,
    pub redis_cluster: Option<bool>,
    /// Address of /metrics, /healthz, /readyz (default 127.0.0.1:9464).
    pub metrics_addr: Option<String>,
    /// Prefix of every Redis key (default `tokenwatch:`).
    pub key_prefix: Option<String>,
    /// `human` or `json` logs on stderr.
    pub log_format: Option<String>,
    /// Decision lines: `stdout` (default), `none`, or a file path.
    pub alerts: Option<String>,
    /// Also produce every decision to this Kafka topic.
    pub alerts_topic: Option<String>,
    /// How long SIGTERM may take to finish in-flight work (default 30s).
    pub shutdown_timeout: Option<String>,
    #[serde(default)]
    pub input: InputConfig,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub revocation: RevocationSection,
    #[serde(default)]
    pub batch: BatchSection,
    #[serde(default)]
    pub dead_letter: DeadLetterSection,
    #[serde(default)]
    pub verify: VerifySection,
    /// librdkafka properties, passed through unchanged (TLS, SASL, fetch sizes...).
    #[serde(default)]
    pub kafka: BTreeMap<String, toml::Value>,
    /// Dotted key → where it was set (`file:line` or the environment variable).
    #[serde(skip)]
    origins: BTreeMap<String, String>,
}

/// Where items an output refused for good go (a revocation Redis rejects with WRONGTYPE, an
/// alert record too large for the alerts topic).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSection {
    /// JSON lines appended to this file (default: beside the alerts file, `FILE.dead-letters`;
    /// stderr when alerts go to stdout or nowhere).
    pub file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationSection {
    /// A token stays blocked at least this long (default 1h).
    pub min_token_ttl: Option<String>,
    /// A token stays blocked at most this long, whatever its `exp` (default 7d).
    pub max_token_ttl: Option<String>,
    /// For tokens without `exp` (default 24h).
    pub no_exp_ttl: Option<String>,
    /// A subject revocation lasts this long: your longest token lifetime (default 24h).
    pub subject_ttl: Option<String>,
    /// Approximate maximum length of the revocation stream (default 100000).
    pub stream_maxlen: Option<u64>,
    /// Redis response timeout (default 2s).
    pub redis_timeout: Option<String>,
    /// CA certificate (PEM) for `rediss://` servers outside the system trust store.
    pub redis_ca_file: Option<PathBuf>,
}

/// `[verify]`: the public keys that verify token signatures.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySection {
    /// JWKS files or `https://` URLs; their keys verify tokens of any issuer not listed below.
    pub jwks: Option<Vec<String>>,
    /// `[verify.issuers."https://idp.example.com"] jwks = "..."`: a token with this `iss` is
    /// verified with this JWKS only.
    #[serde(default)]
    pub issuers: BTreeMap<String, IssuerSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    pub jwks: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSection {
    /// Messages per batch before side effects and commit (default 5000).
    pub max_messages: Option<usize>,
    /// Longest wait for a batch to fill (default 20ms).
    pub max_wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// auto, canonical, traefik, kong, apisix, envoy, nginx, aws or custom.
    pub format: Option<String>,
    /// Longer lines are skipped (counted as line_too_long). Default 1 MiB.
    pub max_line_bytes: Option<usize>,
    /// Field → JSON path, for `format = "custom"`.
    pub mapping: Option<MappingConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// How late (event time) an event may arrive and still count in windows. Default 60s.
    pub lateness: Option<String>,
    /// Cap on tracked keys per rule. Default 1,000,000.
    pub max_keys_per_rule: Option<usize>,
    /// Leeway after `exp` before a token counts as expired. Default 60s.
    pub expiry_leeway: Option<String>,
    /// Distinct tokens kept decoded. Default 1,000,000.
    pub token_cache: Option<usize>,
    /// Revocations a revoking rule may make per window before it trips to shadow, for rules
    /// without their own `budget`. Default 1000/10m.
    pub revocation_budget: Option<String>,
    /// `run`: a partition with nothing new for this long (wall clock) stops holding back
    /// event time. Default 5s.
    pub idle_timeout: Option<String>,
    /// `run`: a partition this far ahead (event time) of the slowest is paused. Default 60s.
    pub max_skew: Option<String>,
    /// `run`: how often at most the engine's state is checkpointed to Redis (and at
    /// shutdown); "0" turns checkpoints off. Default 10s.
    pub checkpoint_interval: Option<String>,
}

impl Config {
    /// The config file alone (`replay --config`).
    pub fn load(path: &Path) -> Result<Config, String> {
        Self::load_with_env(Some(path), std::iter::empty())
    }

    /// The config file (if any) with `TOKENWATCH_…` environment variables applied on top.
    ///
    /// `TOKENWATCH_KEY` sets a top-level key (`TOKENWATCH_BROKERS`, `TOKENWATCH_REDIS`...), and
    /// every `__` goes one table down: `TOKENWATCH_ENGINE__LATENESS`,
    /// `TOKENWATCH_INPUT__MAPPING__TOKEN`. In the `[kafka]` table the rest of the name is the
    /// librdkafka property with dots as underscores (`TOKENWATCH_KAFKA__SECURITY_PROTOCOL`).
    /// A value is a number or boolean where the key takes one, else a string
    /// (`TOKENWATCH_GROUP=42` is the group `"42"`); `TOPICS` and `REDIS` are comma-separated.
    /// `TOKENWATCH_TEST_*`, `TOKENWATCH_BENCH*` and `TOKENWATCH_BLESS` belong to the tests and
    /// benchmarks and are ignored; any other unknown variable is an error that names it.
    pub fn load_with_env(path: Option<&Path>, env: impl Iterator<Item = (String, String)>) -> Result<Config, String> {
        let mut origins = BTreeMap::new();
        let mut table = match path {
            Some(p) => {
                let (table, lines) = parse_file(p)?;
                for (key, line) in lines {
                    origins.insert(key, format!("{}:{line}", p.display()));
                }
                table
            }
            None => toml::Table::new(),
        };
        let mut vars: Vec<(String, String)> = env.filter(|(name, _)| name.starts_with("TOKENWATCH_")).collect();
        vars.sort();
        for (name, raw) in vars {
            let rest = &name["TOKENWATCH_".len()..];
            if is_ignored(rest) {
                continue;
            }
            let path = env_path(rest).map_err(|e| format!("{name}: {e}"))?;
            let value = env_value(&path, &raw).map_err(|e| format!("{name}: {e}"))?;
            insert(&mut table, &path, value).map_err(|e| format!("{name}: {e}"))?;
            origins.insert(path.join("."), name.clone());
        }
        let where_ = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "environment".into());
        let mut c = Config::deserialize(toml::Value::Table(table)).map_err(|e| {
            format!(
                "config ({where_} and TOKENWATCH_* variables): {}",
                e.to_string().trim().replace('\n', " ")
            )
        })?;
        c.origins = origins;
        Ok(c)
    }

    /// Where a key was set: `file:line` or the environment variable; `None` when it has its
    /// default (or the config was not loaded from a file and the environment).
    pub fn origin(&self, key: &str) -> Option<&str> {
        self.origins.get(key).map(String::as_str)
    }

    /// A message that starts with a config key (`engine.lateness: ...`), prefixed with where
    /// that key (or the table holding it) was set: `tokenwatch.toml:7: engine.lateness: ...`
    /// or `TOKENWATCH_ENGINE__LATENESS: engine.lateness: ...`. `skip` names keys whose value
    /// came from somewhere else (a command-line flag).
    pub fn locate(&self, msg: String, skip: impl Fn(&str) -> bool) -> String {
        let end = msg
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'))
            .unwrap_or(msg.len());
        let mut key = &msg[..end];
        if key.is_empty() || skip(key) {
            return msg;
        }
        loop {
            if let Some(o) = self.origin(key) {
                return format!("{o}: {msg}");
            }
            match key.rfind('.') {
                Some(i) => key = &key[..i],
                None => return msg,
            }
        }
    }

    /// `[kafka]` as librdkafka strings.
    pub fn kafka_properties(&self) -> BTreeMap<String, String> {
        self.kafka
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }

    pub fn revocation_policy(&self) -> Result<tokenwatch_core::decision::RevocationPolicy, String> {
        let mut p = tokenwatch_core::decision::RevocationPolicy::default();
        let secs = |key: &str, v: &Option<String>| -> Result<Option<i64>, String> {
            v.as_deref()
                .map(|d| {
                    parse_duration_ms(d)
                        .map(|ms| ms / 1000)
                        .map_err(|e| format!("revocation.{key}: {e}"))
                })
                .transpose()
        };
        if let Some(s) = secs("min_token_ttl", &self.revocation.min_token_ttl)? {
            p.min_token_ttl_s = s;
        }
        if let Some(s) = secs("max_token_ttl", &self.revocation.max_token_ttl)? {
            p.max_token_ttl_s = s;
        }
        if p.max_token_ttl_s < p.min_token_ttl_s {
            return Err(format!(
                "revocation.max_token_ttl: {} s is shorter than revocation.min_token_ttl ({} s)",
                p.max_token_ttl_s, p.min_token_ttl_s
            ));
        }
        if let Some(s) = secs("no_exp_ttl", &self.revocation.no_exp_ttl)? {
            p.no_exp_ttl_s = s;
        }
        if let Some(s) = secs("subject_ttl", &self.revocation.subject_ttl)? {
            p.subject_ttl_s = s;
        }
        if let Some(l) = &self.engine.expiry_leeway {
            p.leeway_s = parse_duration_ms(l).map_err(|m| format!("engine.expiry_leeway: {m}"))? / 1000;
        }
        Ok(p)
    }

    pub fn format(&self) -> Result<Option<Format>, String> {
        self.input
            .format
            .as_deref()
            .map(|f| f.parse().map_err(|e| format!("input.format: {e}")))
            .transpose()
    }

    pub fn max_line_bytes(&self) -> usize {
        self.input.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE)
    }

    pub fn mapping(&self) -> Result<Option<Mapping>, String> {
        self.input
            .mapping
            .as_ref()
            .map(Mapping::compile)
            .transpose()
            .map_err(|e| e.to_string())
    }

    pub fn engine(&self) -> Result<EngineConfig, String> {
        let mut e = EngineConfig::default();
        if let Some(l) = &self.engine.lateness {
            e.lateness_ms = parse_duration_ms(l).map_err(|m| format!("engine.lateness: {m}"))?;
        }
        if let Some(l) = &self.engine.expiry_leeway {
            e.revocation.leeway_s = parse_duration_ms(l).map_err(|m| format!("engine.expiry_leeway: {m}"))? / 1000;
        }
        if let Some(n) = self.engine.max_keys_per_rule {
            e.max_keys_per_rule = n;
        }
        if let Some(b) = &self.engine.revocation_budget {
            e.revocation_budget = b.parse().map_err(|m| format!("engine.revocation_budget: {m}"))?;
        }
        Ok(e)
    }

    /// The event-time settings of `run` ([`tokenwatch_core::eventtime`]).
    pub fn event_time(&self) -> Result<EventTimeConfig, String> {
        let mut e = EventTimeConfig::default();
        if let Some(t) = &self.engine.idle_timeout {
            let ms = parse_duration_ms(t).map_err(|m| format!("engine.idle_timeout: {m}"))?;
            e.idle_timeout = std::time::Duration::from_millis(ms as u64);
        }
        if let Some(s) = &self.engine.max_skew {
            e.max_skew_ms = parse_duration_ms(s).map_err(|m| format!("engine.max_skew: {m}"))?;
        }
        Ok(e)
    }

    /// How often `run` checkpoints its state; `None` when checkpoints are off.
    pub fn checkpoint_interval(&self) -> Result<Option<std::time::Duration>, String> {
        let ms = match &self.engine.checkpoint_interval {
            Some(t) => parse_duration_ms(t).map_err(|m| format!("engine.checkpoint_interval: {m}"))?,
            None => 10_000,
        };
        Ok((ms > 0).then(|| std::time::Duration::from_millis(ms as u64)))
    }

    pub fn token_cache(&self) -> usize {
        self.engine.token_cache.unwrap_or(1_000_000)
    }

    /// Reads the JWKS of `[verify]`, with `--jwks` values (`flags`) in place of
    /// `verify.jwks` when given. `None` when no JWKS is configured; one that cannot be read is
    /// an error naming it.
    pub fn verifier(&self, flags: &[String]) -> Result<Option<std::sync::Arc<Verifier>>, String> {
        let cfg = VerifyConfig {
            jwks: if flags.is_empty() {
                self.verify.jwks.clone().unwrap_or_default()
            } else {
                flags.to_vec()
            },
            issuers: self
                .verify
                .issuers
                .iter()
                .map(|(iss, s)| (iss.clone(), s.jwks.clone()))
                .collect(),
        };
        if cfg.is_empty() {
            return Ok(None);
        }
        Verifier::load(&cfg)
            .map(|v| Some(std::sync::Arc::new(v)))
            .map_err(|e| format!("verify.jwks: {e}"))
    }
}

/// Reads a config file and checks it against the schema; an error names the file, the line
/// and the key. Returns the table and the line of every key.
fn parse_file(p: &Path) -> Result<(toml::Table, BTreeMap<String, usize>), String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read config {}: {e}", p.display()))?;
    // Key positions, when the file is valid TOML (a syntax error has only a line).
    let keys = toml::from_str::<KeySpans>(&text).map(|k| k.0).unwrap_or_default();
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    if let Err(e) = toml::from_str::<Config>(&text) {
        let Some(span) = e.span() else {
            return Err(format!("{}: {}", p.display(), e.message()));
        };
        return Err(match key_at(&text, &keys, span.clone()) {
            Some(key) => format!("{}:{}: {key}: {}", p.display(), line_of(span.start), e.message()),
            None => format!("{}:{}: {}", p.display(), line_of(span.start), e.message()),
        });
    }
    let table = toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    let lines = keys.into_iter().map(|(k, span)| (k, line_of(span.start))).collect();
    Ok((table, lines))
}

/// The key an error span is about: the last key before it (an unknown key's span is the key,
/// a bad value's the value after its key); for a table header (`[input.mapping]` missing a
/// field), the table's name.
fn key_at(text: &str, keys: &[(String, std::ops::Range<usize>)], err: std::ops::Range<usize>) -> Option<String> {
    let header_end = if text[err.start..].starts_with('[') {
        err.start + text[err.start..].find('\n').unwrap_or(text.len() - err.start)
    } else {
        err.start
    };
    keys.iter()
        .filter(|(_, s)| s.start <= err.start || (s.start < header_end))
        .max_by_key(|(_, s)| s.start)
        .map(|(k, _)| k.clone())
}

/// Every key of a TOML document as a dotted path, with the span of its (last) name.
struct KeySpans(Vec<(String, std::ops::Range<usize>)>);

impl<'de> Deserialize<'de> for KeySpans {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = KeySpans;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<KeySpans, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<toml::Spanned<String>>()? {
                    let inner: KeySpans = m.next_value()?;
                    out.push((k.get_ref().clone(), k.span()));
                    out.extend(inner.0.into_iter().map(|(ik, s)| (format!("{}.{ik}", k.get_ref()), s)));
                }
                Ok(KeySpans(out))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<KeySpans, A::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(KeySpans(Vec::new()))
            }
            fn visit_str<E>(self, _: &str) -> Result<KeySpans, E> {
                Ok(KeySpans(Vec::new()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<KeySpans, E> {
                Ok(KeySpans(Vec::new()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<KeySpans, E> {
                Ok(KeySpans(Vec::new()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<KeySpans, E> {
                Ok(KeySpans(Vec::new()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<KeySpans, E> {
                Ok(KeySpans(Vec::new()))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Variables of the test scripts and benchmarks, not settings.
fn is_ignored(rest: &str) -> bool {
    rest.is_empty() || rest.starts_with("TEST_") || rest.starts_with("BENCH") || rest == "BLESS"
}

/// `ENGINE__LATENESS` → `engine.lateness`; `KAFKA__FETCH_MIN_BYTES` → `kafka."fetch.min.bytes"`.
fn env_path(rest: &str) -> Result<Vec<String>, String> {
    let lower = rest.to_ascii_lowercase();
    let path: Vec<String> = match lower.strip_prefix("kafka__") {
        Some(prop) => vec!["kafka".into(), prop.replace('_', ".")],
        None => lower.split("__").map(String::from).collect(),
    };
    if path.iter().any(std::string::String::is_empty) {
        return Err("an empty key between `__` separators".into());
    }
    Ok(path)
}

fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("no key")?;
    let mut t = table;
    for (i, k) in parents.iter().enumerate() {
        t = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is not a table", parents[..=i].join(".")))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

/// An environment value typed by its key: a list for `topics` and `redis`; a number or
/// boolean where the key takes one (tried against the schema); otherwise the string itself.
fn env_value(path: &[String], raw: &str) -> Result<toml::Value, String> {
    if path == ["topics"] || path == ["redis"] || path == ["verify", "jwks"] {
        return Ok(toml::Value::Array(
            raw.split(',')
                .map(|s| toml::Value::String(s.trim().to_string()))
                .filter(|v| v.as_str() != Some(""))
                .collect(),
        ));
    }
    let mut candidates = Vec::new();
    if let Ok(i) = raw.parse::<i64>() {
        candidates.push(toml::Value::Integer(i));
    }
    match raw {
        "true" => candidates.push(toml::Value::Boolean(true)),
        "false" => candidates.push(toml::Value::Boolean(false)),
        _ => {}
    }
    candidates.push(toml::Value::String(raw.to_string()));
    let mut last_error = String::new();
    for v in candidates {
        match fits(path, &v) {
            Ok(()) => return Ok(v),
            Err(e) => last_error = e,
        }
    }
    Err(format!("{}: {last_error}", path.join(".")))
}

/// Whether the schema accepts `value` at `path`: a config holding only that value
/// deserializes (a required neighbour that is missing, like `input.mapping.ts`, is not this
/// value's fault).
fn fits(path: &[String], value: &toml::Value) -> Result<(), String> {
    let mut t = toml::Table::new();
    insert(&mut t, path, value.clone())?;
    match Config::deserialize(toml::Value::Table(t)) {
        Ok(_) => Ok(()),
        Err(e) if e.message().starts_with("missing field") => Ok(()),
        Err(e) => Err(e.message().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_keys_from_the_file_the_environment_and_flags() {
        let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json");
        let c: Config = toml::from_str(&format!(
            "[verify]\njwks = [\"{jwks}\"]\n[verify.issuers.\"https://idp.example.com\"]\njwks = \"{jwks}\"\n"
        ))
        .unwrap();
        assert!(c.verifier(&[]).unwrap().is_some());
        assert!(Config::default().verifier(&[]).unwrap().is_none());
        // a flag replaces verify.jwks, and names what failed
        let e = c.verifier(&["/nonexistent/k.json".into()]).unwrap_err();
        assert!(
            e.starts_with("verify.jwks: JWKS /nonexistent/k.json: cannot read"),
            "{e}"
        );
        let env = [("TOKENWATCH_VERIFY__JWKS".to_string(), format!("{jwks}, {jwks}"))];
        let c = Config::load_with_env(None, env.into_iter()).unwrap();
        assert_eq!(c.verify.jwks.as_ref().map(Vec::len), Some(2));
        assert!(toml::from_str::<Config>("[verify]\njwk = []\n").is_err());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = toml::from_str::<Config>("[engine]\nlatenes = \"5s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("latenes") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        std::fs::write(
            &p,
            "brokers = \"file:9092\"\ngroup = \"g\"\n[kafka]\n\"fetch.min.bytes\" = 1\n",
        )
        .unwrap();
        let env = [
            ("TOKENWATCH_BROKERS", "env:9092"),
            ("TOKENWATCH_TOPICS", "a, b"),
            ("TOKENWATCH_ENGINE__LATENESS", "5s"),
            ("TOKENWATCH_KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
            ("TOKENWATCH_TEST_TANSU", "/bin/tansu"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::load_with_env(Some(&p), env.into_iter()).unwrap();
        assert_eq!(c.brokers.as_deref(), Some("env:9092"));
        assert_eq!(c.group.as_deref(), Some("g"));
        assert_eq!(c.topics, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(c.engine().unwrap().lateness_ms, 5_000);
        let k = c.kafka_properties();
        assert_eq!(k.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        assert_eq!(k.get("fetch.min.bytes").map(String::as_str), Some("1"));
        let e =
            Config::load_with_env(None, [("TOKENWATCH_BROKRS".to_string(), "x".to_string())].into_iter()).unwrap_err();
        assert!(e.contains("brokrs"), "{e}");
    }

    fn env(vars: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn every_double_underscore_goes_one_table_down() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("TOKENWATCH_INPUT__FORMAT", "custom"),
                ("TOKENWATCH_INPUT__MAPPING__TS", "time"),
                ("TOKENWATCH_INPUT__MAPPING__TOKEN", "request.token"),
                ("TOKENWATCH_KAFKA__FETCH_MIN_BYTES", "1"),
            ]),
        )
        .unwrap();
        let m = c.input.mapping.as_ref().unwrap();
        assert_eq!((m.ts.as_str(), m.token.as_deref()), ("time", Some("request.token")));
        assert!(c.mapping().unwrap().is_some());
        assert_eq!(
            c.kafka_properties().get("fetch.min.bytes").map(String::as_str),
            Some("1")
        );
        let e = Config::load_with_env(None, env(&[("TOKENWATCH_INPUT__MAPPING__TOKNE", "x")])).unwrap_err();
        assert!(
            e.starts_with("TOKENWATCH_INPUT__MAPPING__TOKNE: input.mapping.tokne: unknown field"),
            "{e}"
        );
        let e = Config::load_with_env(None, env(&[("TOKENWATCH_ENGINE____X", "x")])).unwrap_err();
        assert!(e.starts_with("TOKENWATCH_ENGINE____X:"), "{e}");
    }

    #[test]
    fn environment_values_take_the_type_of_their_key() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("TOKENWATCH_GROUP", "42"),
                ("TOKENWATCH_KEY_PREFIX", "true"),
                ("TOKENWATCH_BATCH__MAX_MESSAGES", "100"),
                ("TOKENWATCH_REDIS_CLUSTER", "true"),
                ("TOKENWATCH_INPUT__MAPPING__TS", "17"),
                ("TOKENWATCH_TOPICS", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(c.group.as_deref(), Some("42"));
        assert_eq!(c.key_prefix.as_deref(), Some("true"));
        assert_eq!(c.batch.max_messages, Some(100));
        assert_eq!(c.redis_cluster, Some(true));
        assert_eq!(c.input.mapping.as_ref().unwrap().ts, "17");
        assert_eq!(c.topics, Some(vec!["7".to_string()]));
        let e = Config::load_with_env(None, env(&[("TOKENWATCH_BATCH__MAX_MESSAGES", "many")])).unwrap_err();
        assert!(
            e.starts_with("TOKENWATCH_BATCH__MAX_MESSAGES: batch.max_messages: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn test_and_bench_variables_are_not_settings() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("TOKENWATCH_BLESS", "1"),
                ("TOKENWATCH_BENCH", "1"),
                ("TOKENWATCH_BENCH_EVENTS", "10"),
                ("TOKENWATCH_TEST_REDIS_SERVER", "/usr/bin/redis-server"),
                ("TOKENWATCH_BROKERS", "b:9092"),
            ]),
        )
        .unwrap();
        assert_eq!(c.brokers.as_deref(), Some("b:9092"));
        let e = Config::load_with_env(None, env(&[("TOKENWATCH_BLESSED", "1")])).unwrap_err();
        assert!(
            e.starts_with("TOKENWATCH_BLESSED: blessed: unknown field `blessed`"),
            "{e}"
        );
    }

    #[test]
    fn file_errors_name_the_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Config::load_with_env(Some(&p), std::iter::empty()).unwrap_err()
        };
        let at = |line: usize| format!("{}:{line}: ", p.display());
        let e = load("brokers = \"b\"\n\n[batch]\nmax_messages = \"many\"\n");
        assert!(
            e.starts_with(&format!("{}batch.max_messages: invalid type", at(4))),
            "{e}"
        );
        let e = load("[engine]\nlateness = \"5s\"\nlatenes = \"5s\"\n");
        assert!(
            e.starts_with(&format!("{}engine.latenes: unknown field `latenes`", at(3))),
            "{e}"
        );
        let e = load("group = \"g\"\n[input.mapping]\ntoken = \"t\"\n");
        assert!(
            e.starts_with(&format!("{}input.mapping: missing field `ts`", at(2))),
            "{e}"
        );
        let e = load("[input]\nmapping = { token = \"t\" }\n");
        assert!(
            e.starts_with(&format!("{}input.mapping: missing field `ts`", at(2))),
            "{e}"
        );
        let e = load("group = \"g\"\ngroup = \"h\"\n");
        assert!(e.starts_with(&at(2)) && e.contains("duplicate key"), "{e}");
        assert!(Config::load(&p).unwrap_err().starts_with(&at(2)));
    }

    #[test]
    fn late_errors_name_where_the_value_was_set() {
        use crate::service::{resolve, Overrides};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        std::fs::write(
            &p,
            "brokers = \"b\"\ntopics = [\"t\"]\nredis = [\"redis://r\"]\nmetrics_addr = \"nowhere\"\n\n[engine]\nlateness = \"5x\"\n",
        )
        .unwrap();
        let o = Overrides {
            metrics_addr: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let c = Config::load_with_env(Some(&p), std::iter::empty()).unwrap();
        let e = resolve(&c, &o).err().unwrap();
        assert!(e.starts_with(&format!("{}:7: engine.lateness:", p.display())), "{e}");
        let c = Config::load_with_env(Some(&p), env(&[("TOKENWATCH_ENGINE__LATENESS", "1y")])).unwrap();
        let e = resolve(&c, &o).err().unwrap();
        assert!(e.starts_with("TOKENWATCH_ENGINE__LATENESS: engine.lateness:"), "{e}");
        // without the flag, the file's metrics_addr is the first problem found
        let c = Config::load_with_env(Some(&p), std::iter::empty()).unwrap();
        let e = resolve(&c, &Overrides::default()).err().unwrap();
        assert!(e.starts_with(&format!("{}:4: metrics_addr:", p.display())), "{e}");
        // a value given by flag is not blamed on the file
        let c = Config::load_with_env(Some(&p), env(&[("TOKENWATCH_ENGINE__LATENESS", "5s")])).unwrap();
        let o = Overrides {
            metrics_addr: Some("bad".into()),
            ..Overrides::default()
        };
        assert!(resolve(&c, &o).err().unwrap().starts_with("metrics_addr:"));
    }

    #[test]
    fn values_are_checked() {
        let c: Config = toml::from_str("[engine]\nlateness = \"5x\"\n").unwrap();
        assert!(c.engine().unwrap_err().starts_with("engine.lateness:"));
        let c: Config = toml::from_str("[engine]\nlateness = \"5s\"\nexpiry_leeway = \"2m\"\n").unwrap();
        let e = c.engine().unwrap();
        assert_eq!((e.lateness_ms, e.revocation.leeway_s), (5_000, 120));
        let c: Config = toml::from_str("[input]\nformat = \"apache\"\n").unwrap();
        assert!(c.format().unwrap_err().contains("unknown format `apache`"));
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_example_config_is_valid() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tokenwatch.example.toml");
        let c = super::Config::load_with_env(Some(&p), std::iter::empty()).unwrap();
        let (cfg, addr) = crate::service::resolve(&c, &crate::service::Overrides::default()).unwrap();
        assert_eq!(cfg.topics, vec!["gateway-logs".to_string()]);
        assert_eq!(addr.port(), 9464);
        assert_eq!(cfg.redis.policy.min_token_ttl_s, 3600);
    }
}
