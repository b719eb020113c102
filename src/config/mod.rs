//! The configuration of `run`, `replay`, `unrevoke` and `rearm`: typed, with its defaults in
//! one [`Default`] per table, checked when it is loaded.
//!
//! A configuration is assembled from three [`Layers`] — the TOML file, the `TOKENWATCH_…`
//! environment, the command-line flags ([`flags`]) — merged in that order and deserialized
//! once. Unknown keys are errors, durations (`5s`, `10m`, `24h`), addresses, formats and
//! budgets are parsed into their types there, and every error names the key and where it was
//! set: `tokenwatch.toml:12: batch.max_messages: …`, `TOKENWATCH_SHUTDOWN_TIMEOUT:
//! shutdown_timeout: …` or `--metrics-addr: metrics_addr: …`. What can only be checked across
//! keys, or by reading a file (`[verify]` keys, `redis_ca_file`), is checked by [`Loaded`] when
//! it builds the settings of a command, with the same kind of message.

mod de;
mod error;
pub mod flags;
mod layers;
mod resolve;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use tokenwatch_core::decision::RevocationPolicy;
use tokenwatch_core::engine::EngineConfig;
use tokenwatch_core::eventtime::EventTimeConfig;
use tokenwatch_core::input::lines::DEFAULT_MAX_LINE;
use tokenwatch_core::input::mapping::MappingConfig;
use tokenwatch_core::input::Format;
use tokenwatch_core::pipeline::PipelineConfig;
use tokenwatch_core::rules::Budget;
use tokenwatch_core::token::DEFAULT_MAX_TOKEN_BYTES;

pub use error::ConfigError;
pub use layers::{FlagValue, Layers, Origin, Origins};
pub use resolve::Loaded;

/// The whole configuration file; every key is optional and defaults to what [`Default`] says.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka bootstrap servers, `host:port,host:port`; `run` needs them.
    pub brokers: Option<String>,
    /// Topics `run` consumes; it needs at least one.
    pub topics: Vec<String>,
    /// Consumer group id.
    pub group: String,
    /// Rule directory.
    pub rules: PathBuf,
    /// MaxMind City database.
    pub geoip: Option<PathBuf>,
    /// Redis URL(s): one for a single server, several (or `redis_cluster = true`) for a cluster.
    pub redis: Vec<String>,
    pub redis_cluster: bool,
    /// Address of /metrics, /healthz, /readyz.
    #[serde(deserialize_with = "de::socket_addr")]
    pub metrics_addr: SocketAddr,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Logs on stderr.
    pub log_format: LogFormat,
    /// Where decision lines go.
    #[serde(deserialize_with = "de::from_str")]
    pub alerts: AlertOutput,
    /// Also produce every decision to this Kafka topic.
    pub alerts_topic: Option<String>,
    /// How long SIGTERM may take to finish in-flight work.
    #[serde(deserialize_with = "de::duration")]
    pub shutdown_timeout: Duration,
    pub input: InputSection,
    pub engine: EngineSection,
    pub revocation: RevocationSection,
    pub batch: BatchSection,
    pub dead_letter: DeadLetterSection,
    pub verify: VerifySection,
    /// Path prefix → the audience a token must carry there: `"/billing" = "billing-api"`
    /// (the `audience-mismatch` rule; such routes also count as protected).
    pub audiences: BTreeMap<String, String>,
    pub posture: PostureSection,
    pub shuffle: ShuffleSection,
    /// librdkafka properties, passed through unchanged (TLS, SASL, fetch sizes...).
    pub kafka: BTreeMap<String, toml::Value>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            brokers: None,
            topics: Vec::new(),
            group: "tokenwatch".into(),
            rules: PathBuf::from("rules"),
            geoip: None,
            redis: Vec::new(),
            redis_cluster: false,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            key_prefix: "tokenwatch:".into(),
            log_format: LogFormat::Human,
            alerts: AlertOutput::Stdout,
            alerts_topic: None,
            shutdown_timeout: Duration::from_secs(30),
            input: InputSection::default(),
            engine: EngineSection::default(),
            revocation: RevocationSection::default(),
            batch: BatchSection::default(),
            dead_letter: DeadLetterSection::default(),
            verify: VerifySection::default(),
            audiences: BTreeMap::new(),
            posture: PostureSection::default(),
            shuffle: ShuffleSection::default(),
            kafka: BTreeMap::new(),
        }
    }
}

/// How logs on stderr look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}

impl LogFormat {
    /// The name the config file and `--log-format` take.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// Where decision lines go: `stdout` (or `-`), `none` (or empty), or a file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertOutput {
    Stdout,
    None,
    File(PathBuf),
}

impl std::str::FromStr for AlertOutput {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" | "-" => AlertOutput::Stdout,
            "none" | "" => AlertOutput::None,
            path => AlertOutput::File(PathBuf::from(path)),
        })
    }
}

/// `[input]`: how lines are read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputSection {
    /// auto, canonical, traefik, kong, apisix, envoy, nginx, aws or custom.
    #[serde(deserialize_with = "de::from_str")]
    pub format: Format,
    /// Longer lines are skipped (counted as line_too_long).
    pub max_line_bytes: usize,
    /// Longer compact tokens are not decoded (counted as token_too_large; the request is still
    /// an event). Within [`tokenwatch_core::token::TOKEN_BYTES_RANGE`].
    pub max_token_bytes: usize,
    /// Field → JSON path, for `format = "custom"`.
    pub mapping: Option<MappingConfig>,
}

impl Default for InputSection {
    fn default() -> Self {
        InputSection {
            format: Format::Auto,
            max_line_bytes: DEFAULT_MAX_LINE,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            mapping: None,
        }
    }
}

/// `[engine]`: windows, caps and event time. Defaults are the detection core's own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// How late (event time) an event may arrive and still count in windows.
    #[serde(deserialize_with = "de::duration")]
    pub lateness: Duration,
    /// Cap on tracked keys per rule.
    pub max_keys_per_rule: usize,
    /// Leeway after `exp` before a token counts as expired.
    #[serde(deserialize_with = "de::duration")]
    pub expiry_leeway: Duration,
    /// Heap the decoded-token cache may hold, in bytes (shared among decoding threads); past
    /// it the cache starts over.
    pub token_cache_bytes: usize,
    /// Heap every rule's per-key state may hold together, in bytes (each rule gets an equal
    /// share); past it keys are evicted, least valuable first.
    pub state_bytes: usize,
    /// Revocations a revoking rule may make per window before it trips to shadow, for rules
    /// without their own `budget` (`1000/10m`).
    #[serde(deserialize_with = "de::from_str")]
    pub revocation_budget: Budget,
    /// `run`: a partition with nothing new for this long (wall clock) stops holding back
    /// event time.
    #[serde(deserialize_with = "de::duration")]
    pub idle_timeout: Duration,
    /// `run`: a partition this far ahead (event time) of the slowest is paused.
    #[serde(deserialize_with = "de::duration")]
    pub max_skew: Duration,
    /// `run`: lines the event-time buffer holds at most. At the cap every partition ahead of
    /// the slowest is paused; over it the oldest lines are applied early (counted in
    /// `tokenwatch_event_time_forced_total`), so memory stays bounded whatever the rate.
    pub max_buffered_lines: usize,
    /// `run`: how often at most the engine's state is checkpointed to Redis (and at
    /// shutdown); `0` turns checkpoints off.
    #[serde(deserialize_with = "de::duration")]
    pub checkpoint_interval: Duration,
    /// Live revocations the engine remembers (tokens and subjects each) for `revoked_use`
    /// rules; past it the one closest to expiry is dropped and counted.
    pub max_revocations: usize,
    /// Unauthenticated critical decisions are aggregated per (rule, source network) over this
    /// window of event time (emitted at counts 1, 10, 100...); `0` turns aggregation off.
    #[serde(deserialize_with = "de::duration")]
    pub aggregate_window: Duration,
}

impl Default for EngineSection {
    fn default() -> Self {
        let engine = EngineConfig::default();
        let time = EventTimeConfig::default();
        EngineSection {
            lateness: de::millis(engine.lateness_ms),
            max_keys_per_rule: engine.max_keys_per_rule,
            expiry_leeway: de::secs(engine.revocation.leeway_s),
            token_cache_bytes: PipelineConfig::default().token_cache_bytes,
            state_bytes: engine.state_bytes,
            revocation_budget: engine.revocation_budget,
            idle_timeout: time.idle_timeout,
            max_skew: de::millis(time.max_skew_ms),
            max_buffered_lines: time.max_held,
            checkpoint_interval: Duration::from_secs(10),
            max_revocations: engine.max_revocations,
            aggregate_window: de::millis(engine.aggregate_window_ms),
        }
    }
}

/// `[revocation]`: how long revocations last and how they reach Redis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationSection {
    /// A token stays blocked at least this long.
    #[serde(deserialize_with = "de::duration")]
    pub min_token_ttl: Duration,
    /// A token stays blocked at most this long, whatever its `exp`.
    #[serde(deserialize_with = "de::duration")]
    pub max_token_ttl: Duration,
    /// For tokens without `exp`.
    #[serde(deserialize_with = "de::duration")]
    pub no_exp_ttl: Duration,
    /// A subject revocation lasts this long: your longest token lifetime.
    #[serde(deserialize_with = "de::duration")]
    pub subject_ttl: Duration,
    /// Approximate maximum length of the revocation stream.
    pub stream_maxlen: u64,
    /// Redis response timeout.
    #[serde(deserialize_with = "de::duration")]
    pub redis_timeout: Duration,
    /// CA certificate (PEM) for `rediss://` servers outside the system trust store.
    pub redis_ca_file: Option<PathBuf>,
}

impl Default for RevocationSection {
    fn default() -> Self {
        let p = RevocationPolicy::default();
        RevocationSection {
            min_token_ttl: de::secs(p.min_token_ttl_s),
            max_token_ttl: de::secs(p.max_token_ttl_s),
            no_exp_ttl: de::secs(p.no_exp_ttl_s),
            subject_ttl: de::secs(p.subject_ttl_s),
            stream_maxlen: 100_000,
            redis_timeout: Duration::from_secs(2),
            redis_ca_file: None,
        }
    }
}

/// `[batch]`: how much `run` reads before side effects and commit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSection {
    /// Messages per batch.
    pub max_messages: NonZeroUsize,
    /// Longest wait for a batch to fill.
    #[serde(deserialize_with = "de::duration")]
    pub max_wait: Duration,
}

impl Default for BatchSection {
    fn default() -> Self {
        BatchSection {
            max_messages: const { NonZeroUsize::new(5_000).unwrap() },
            max_wait: Duration::from_millis(20),
        }
    }
}

/// `[dead_letter]`: where items an output refused for good go (a revocation Redis rejects
/// with WRONGTYPE, an alert record too large for the alerts topic).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterSection {
    /// JSON lines appended to this file (default: beside the alerts file, `FILE.dead-letters`;
    /// stderr when alerts go to stdout or nowhere).
    pub file: Option<PathBuf>,
    /// Instead of a file: records produced to this Kafka topic, with the brokers and `[kafka]`
    /// settings of the alerts producer (for hosts without a durable disk).
    pub topic: Option<String>,
}

/// `[shuffle]`: how `run` splits the work by key over Kafka, so that any number of instances
/// decide what one does ([`crate::service::shuffle`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShuffleSection {
    /// `local`: read the gateway topics and decide in one process (one instance per group);
    /// `both`: ingest and detect through the internal topic; `ingest` or `detect` alone.
    #[serde(deserialize_with = "de::from_str")]
    pub role: Role,
    /// The internal topics' names start with this (default: the group id and a dot).
    pub topic_prefix: Option<String>,
    /// Partitions of the internal topic, when tokenwatch creates it: the most detect
    /// instances that can share the work. Never change it on a topic in use: a subject's
    /// records would move to another partition, away from its state.
    pub partitions: i32,
    /// Replication factor of a topic tokenwatch creates; -1: the broker's default.
    pub replication: i32,
    /// How long the internal topic keeps records (`retention.ms`), when tokenwatch creates it.
    #[serde(deserialize_with = "de::duration")]
    pub retention: Duration,
    /// Threads that decode gateway lines in the ingest stage; 0: one per core. Decoding
    /// (parsing, token decoding, verification, GeoIP) is the stage's work; sending records
    /// and the watermarks stays on one thread, in the order the lines were read.
    pub decode_threads: usize,
}

impl Default for ShuffleSection {
    fn default() -> Self {
        ShuffleSection {
            role: Role::Local,
            topic_prefix: None,
            partitions: 12,
            replication: -1,
            retention: Duration::from_secs(24 * 3600),
            decode_threads: 0,
        }
    }
}

/// Which stages of the work an instance runs ([`ShuffleSection::role`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Local,
    Ingest,
    Detect,
    Both,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Local => "local",
            Role::Ingest => "ingest",
            Role::Detect => "detect",
            Role::Both => "both",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Role::Local, Role::Ingest, Role::Detect, Role::Both]
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("`{s}` is not a role: local, ingest, detect or both"))
    }
}

/// `[verify]`: the public keys that verify token signatures.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifySection {
    /// JWKS files or `https://` URLs; their keys verify tokens of any issuer not listed below.
    pub jwks: Vec<String>,
    /// `[verify.issuers."https://idp.example.com"] jwks = "..."`: a token with this `iss` is
    /// verified with this JWKS only.
    pub issuers: BTreeMap<String, IssuerSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    pub jwks: String,
}

/// `[posture]`: what the posture rules compare traffic with ([`tokenwatch_core::posture`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostureSection {
    /// A configured issuer's signing key still in use this long after tokenwatch first saw it
    /// is stale (`stale-signing-key`).
    #[serde(deserialize_with = "de::duration")]
    pub max_key_age: Duration,
    /// Claim-name patterns that indicate sensitive data (`sensitive-claims`); `*` at either
    /// end is a wildcard, case and `_`/`-` are ignored. Replaces the default list.
    pub sensitive_claims: Vec<String>,
    /// Path prefixes where the gateway must validate tokens (`invalid-signature-accepted`).
    pub protected_paths: Vec<String>,
}

impl Default for PostureSection {
    fn default() -> Self {
        PostureSection {
            max_key_age: de::millis(tokenwatch_core::posture::DEFAULT_MAX_KEY_AGE_MS),
            sensitive_claims: tokenwatch_core::posture::default_sensitive_claims(),
            protected_paths: Vec::new(),
        }
    }
}

impl Config {
    /// What the posture fields compare with: `[verify] issuers`, `[audiences]`, `[posture]`.
    pub fn posture(&self) -> tokenwatch_core::posture::Posture {
        let p = &self.posture;
        tokenwatch_core::posture::Posture::new(
            self.verify.issuers.keys().cloned().collect(),
            self.audiences.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            p.protected_paths.clone(),
            p.sensitive_claims.clone(),
            de::as_millis(p.max_key_age),
        )
    }

    /// The config file alone (`replay --config`).
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        Loaded::from_layers(Layers::new().file(path)?)
    }

    /// The config file (if any) with the `TOKENWATCH_…` variables among `env` on top.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let layers = match path {
            Some(p) => Layers::new().file(p)?,
            None => Layers::new(),
        };
        Loaded::from_layers(layers.env(env)?)
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

    /// How long revocations last: `[revocation]` and `engine.expiry_leeway`.
    pub fn revocation_policy(&self) -> RevocationPolicy {
        let r = &self.revocation;
        RevocationPolicy {
            leeway_s: de::as_secs(self.engine.expiry_leeway),
            min_token_ttl_s: de::as_secs(r.min_token_ttl),
            max_token_ttl_s: de::as_secs(r.max_token_ttl),
            no_exp_ttl_s: de::as_secs(r.no_exp_ttl),
            subject_ttl_s: de::as_secs(r.subject_ttl),
        }
    }

    /// The engine's settings. (Its revocation policy takes only `engine.expiry_leeway`, as
    /// `replay` always has; `run` adds `[revocation]`.)
    pub fn engine(&self) -> EngineConfig {
        let e = &self.engine;
        let d = EngineConfig::default();
        EngineConfig {
            lateness_ms: de::as_millis(e.lateness),
            max_keys_per_rule: e.max_keys_per_rule,
            state_bytes: e.state_bytes,
            revocation: RevocationPolicy {
                leeway_s: de::as_secs(e.expiry_leeway),
                ..d.revocation
            },
            revocation_budget: e.revocation_budget,
            max_revocations: e.max_revocations,
            aggregate_window_ms: de::as_millis(e.aggregate_window),
        }
    }

    /// The event-time settings of `run` ([`tokenwatch_core::eventtime`]).
    pub fn event_time(&self) -> EventTimeConfig {
        EventTimeConfig {
            idle_timeout: self.engine.idle_timeout,
            max_skew_ms: de::as_millis(self.engine.max_skew),
            max_held: self.engine.max_buffered_lines,
        }
    }

    /// How often `run` checkpoints its state; `None` when checkpoints are off.
    pub fn checkpoint_interval(&self) -> Option<Duration> {
        Some(self.engine.checkpoint_interval).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests;
