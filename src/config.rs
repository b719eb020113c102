//! The configuration file (TOML): what the command line does not say.
//!
//! Every table and key is checked when the file is loaded (unknown keys are errors), and
//! messages name the key and line, so a typo fails at start instead of being ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::EngineConfig;
use crate::input::lines::DEFAULT_MAX_LINE;
use crate::input::mapping::{Mapping, MappingConfig};
use crate::input::Format;
use crate::rules::parse_duration_ms;

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
    /// librdkafka properties, passed through unchanged (TLS, SASL, fetch sizes...).
    #[serde(default)]
    pub kafka: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationSection {
    /// A token stays blocked at least this long (default 1h).
    pub min_token_ttl: Option<String>,
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
    /// auto, canonical, traefik, kong, envoy, nginx or custom.
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
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// The config file (if any) with `TOKENWATCH_…` environment variables applied on top.
    ///
    /// `TOKENWATCH_KEY` sets a top-level key (`TOKENWATCH_BROKERS`, `TOKENWATCH_REDIS`...),
    /// `TOKENWATCH_TABLE__KEY` a key of a table (`TOKENWATCH_ENGINE__LATENESS`); in the
    /// `[kafka]` table underscores become dots (`TOKENWATCH_KAFKA__SECURITY_PROTOCOL`).
    /// `TOKENWATCH_TEST_*` belongs to the test scripts and is ignored.
    pub fn load_with_env(path: Option<&Path>, env: impl Iterator<Item = (String, String)>) -> Result<Config, String> {
        let mut table: toml::Table = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("cannot read config {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| format!("config {}: {e}", p.display()))?
            }
            None => toml::Table::new(),
        };
        for (name, val) in env {
            let Some(rest) = name.strip_prefix("TOKENWATCH_") else {
                continue;
            };
            if rest.starts_with("TEST_") || rest.is_empty() {
                continue;
            }
            let value = env_value(rest, &val);
            match rest.split_once("__") {
                Some((t, k)) => {
                    let t = t.to_ascii_lowercase();
                    let k = if t == "kafka" {
                        k.to_ascii_lowercase().replace('_', ".")
                    } else {
                        k.to_ascii_lowercase()
                    };
                    let entry = table
                        .entry(t.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    match entry.as_table_mut() {
                        Some(tt) => {
                            tt.insert(k, value);
                        }
                        None => return Err(format!("{name}: `{t}` is not a table")),
                    }
                }
                None => {
                    table.insert(rest.to_ascii_lowercase(), value);
                }
            }
        }
        let where_ = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "environment".into());
        Config::deserialize(toml::Value::Table(table))
            .map_err(|e| format!("config ({where_} and TOKENWATCH_* variables): {e}"))
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

    pub fn revocation_policy(&self) -> Result<crate::decision::RevocationPolicy, String> {
        let mut p = crate::decision::RevocationPolicy::default();
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
        self.input.mapping.as_ref().map(Mapping::compile).transpose()
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
        Ok(e)
    }

    pub fn token_cache(&self) -> usize {
        self.engine.token_cache.unwrap_or(1_000_000)
    }
}

/// An environment value as TOML when it parses as a number or boolean; a comma-separated list
/// for the list keys; otherwise a string.
fn env_value(name: &str, val: &str) -> toml::Value {
    if matches!(name, "TOPICS" | "REDIS") {
        return toml::Value::Array(
            val.split(',')
                .map(|s| toml::Value::String(s.trim().to_string()))
                .filter(|v| v.as_str() != Some(""))
                .collect(),
        );
    }
    if let Ok(i) = val.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match val {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(val.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
