//! From a loaded [`Config`] to the settings each command runs with: the checks that need more
//! than one key or a file on disk, with errors that name the key and where it was set.

use std::net::SocketAddr;
use std::sync::Arc;

use tokenwatch_core::input::mapping::Mapping;
use tokenwatch_core::pipeline::PipelineConfig;
use tokenwatch_core::token::{DEFAULT_MAX_TOKEN_BYTES, TOKEN_BYTES_RANGE};
use tokenwatch_core::verify::{Verifier, VerifyConfig};

use super::{AlertOutput, Config, ConfigError, Layers, Origins};
use crate::service::{ServiceConfig, ShuffleConfig};
use crate::sinks::alerts::AlertTarget;
use crate::sinks::dead_letter::DeadLetters;
use crate::sinks::redis::RedisConfig;

/// A configuration and where each of its keys was set.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub origins: Origins,
}

impl Loaded {
    /// Deserializes the merged layers and checks what spans keys.
    pub fn from_layers(layers: Layers) -> Result<Loaded, ConfigError> {
        let (config, origins) = layers.load::<Config>()?;
        let r = &config.revocation;
        if r.max_token_ttl < r.min_token_ttl {
            return Err(origins.invalid(
                "revocation.max_token_ttl",
                format!(
                    "{} s is shorter than revocation.min_token_ttl ({} s)",
                    r.max_token_ttl.as_secs(),
                    r.min_token_ttl.as_secs()
                ),
            ));
        }
        let max_token = config.input.max_token_bytes;
        if !TOKEN_BYTES_RANGE.contains(&max_token) {
            return Err(origins.invalid(
                "input.max_token_bytes",
                format!(
                    "{max_token} is outside {}..={} bytes (default {DEFAULT_MAX_TOKEN_BYTES})",
                    TOKEN_BYTES_RANGE.start(),
                    TOKEN_BYTES_RANGE.end()
                ),
            ));
        }
        Ok(Loaded { config, origins })
    }

    /// The compiled `[input.mapping]`, if any.
    pub fn mapping(&self) -> Result<Option<Mapping>, ConfigError> {
        let Some(m) = &self.config.input.mapping else {
            return Ok(None);
        };
        Mapping::compile(m)
            .map(Some)
            .map_err(|e| self.origins.refused("input.mapping", e))
    }

    /// The keys of `[verify]`, read now; `None` when no JWKS is configured.
    pub fn verifier(&self) -> Result<Option<Arc<Verifier>>, ConfigError> {
        let v = &self.config.verify;
        let cfg = VerifyConfig {
            jwks: v.jwks.clone(),
            issuers: v.issuers.iter().map(|(iss, s)| (iss.clone(), s.jwks.clone())).collect(),
        };
        if cfg.is_empty() {
            return Ok(None);
        }
        Verifier::load(&cfg)
            .map(|v| Some(Arc::new(v)))
            .map_err(|e| self.origins.invalid("verify.jwks", e.to_string()))
    }

    /// The pipeline of `replay`.
    pub fn pipeline(&self) -> Result<PipelineConfig, ConfigError> {
        let c = &self.config;
        Ok(PipelineConfig {
            format: c.input.format,
            mapping: self.mapping()?,
            token_cache_bytes: c.engine.token_cache_bytes,
            max_token_bytes: c.input.max_token_bytes,
            engine: c.engine(),
            verify: self.verifier()?,
            posture: Arc::new(c.posture()),
        })
    }

    /// The Redis settings (`run`, `unrevoke`, `rearm`), checked as far as can be without
    /// connecting ([`RedisConfig::check`]).
    pub fn redis(&self) -> Result<RedisConfig, ConfigError> {
        let c = &self.config;
        if c.redis.is_empty() {
            return Err(ConfigError::Missing {
                key: "redis",
                what: "Redis URL",
                hint: "--redis redis://host:6379, TOKENWATCH_REDIS or `redis` in the config",
            });
        }
        let redis = RedisConfig {
            urls: c.redis.clone(),
            cluster: c.redis_cluster,
            key_prefix: c.key_prefix.clone(),
            policy: c.revocation_policy(),
            stream_maxlen: c.revocation.stream_maxlen,
            response_timeout: c.revocation.redis_timeout,
            ca_file: None,
        };
        if (redis.cluster || redis.urls.len() > 1) && !has_hash_tag(&redis.key_prefix) {
            // The prefix is at fault, but when it is the default, what asked for a cluster is
            // where the operator looks.
            let origin = ["key_prefix", "redis_cluster", "redis"]
                .into_iter()
                .find_map(|k| self.origins.of(k))
                .cloned();
            return Err(ConfigError::Invalid {
                origin,
                key: "key_prefix".into(),
                problem: format!(
                    "`{}`: with Redis Cluster the prefix needs a hash tag, e.g. `{{tokenwatch}}:`, so that a revocation and its feed entry are written atomically in one slot",
                    redis.key_prefix
                ),
            });
        }
        // Checked without, then with, the CA file: a failure names the key it is about.
        redis.check().map_err(|e| self.origins.refused("redis", e))?;
        let redis = RedisConfig {
            ca_file: c.revocation.redis_ca_file.clone(),
            ..redis
        };
        redis
            .check()
            .map_err(|e| self.origins.refused("revocation.redis_ca_file", e))?;
        Ok(redis)
    }

    /// Everything `run` needs, and the address of its metrics.
    pub fn service(&self) -> Result<(ServiceConfig, SocketAddr), ConfigError> {
        let c = &self.config;
        let brokers = c.brokers.clone().ok_or(ConfigError::Missing {
            key: "brokers",
            what: "Kafka brokers",
            hint: "--brokers host:9092, TOKENWATCH_BROKERS or `brokers` in the config",
        })?;
        if c.topics.is_empty() {
            return Err(ConfigError::Missing {
                key: "topics",
                what: "topic",
                hint: "--topic NAME, TOKENWATCH_TOPICS or `topics` in the config",
            });
        }
        let redis = self.redis()?;
        let alerts = match &c.alerts {
            AlertOutput::Stdout => AlertTarget::Stdout,
            AlertOutput::None => AlertTarget::None,
            AlertOutput::File(p) => AlertTarget::File(p.clone()),
        };
        if let (Some(_), Some(_)) = (&c.dead_letter.file, &c.dead_letter.topic) {
            return Err(ConfigError::Invalid {
                origin: None,
                key: "dead_letter".into(),
                problem: "set `file` or `topic`, not both".into(),
            });
        }
        let dead_letter = match &c.dead_letter.topic {
            Some(_) => None,
            None => c.dead_letter.file.clone().or_else(|| match &c.alerts {
                AlertOutput::File(p) => DeadLetters::default_path(Some(p)),
                _ => None,
            }),
        };
        let shuffle = self.shuffle()?;
        let pipeline = PipelineConfig {
            engine: tokenwatch_core::engine::EngineConfig {
                revocation: c.revocation_policy(),
                ..c.engine()
            },
            ..self.pipeline()?
        };
        let cfg = ServiceConfig {
            brokers,
            topics: c.topics.clone(),
            group: c.group.clone(),
            kafka: c.kafka_properties(),
            rules_dir: c.rules.clone(),
            geoip: c.geoip.clone(),
            pipeline,
            max_line: c.input.max_line_bytes,
            redis,
            batch_max: c.batch.max_messages.get(),
            batch_wait: c.batch.max_wait,
            shutdown_timeout: c.shutdown_timeout,
            alerts,
            dead_letter,
            alerts_topic: c.alerts_topic.clone(),
            event_time: c.event_time(),
            checkpoint_interval: c.checkpoint_interval(),
            dead_letter_topic: c.dead_letter.topic.clone(),
            shuffle,
        };
        Ok((cfg, c.metrics_addr))
    }

    /// `[shuffle]`, with the internal topic's name resolved.
    fn shuffle(&self) -> Result<ShuffleConfig, ConfigError> {
        let s = &self.config.shuffle;
        if s.partitions < 1 {
            return Err(ConfigError::Invalid {
                origin: self.origins.of("shuffle.partitions").cloned(),
                key: "shuffle.partitions".into(),
                problem: format!("{}: the internal topic needs at least one partition", s.partitions),
            });
        }
        let prefix = s
            .topic_prefix
            .clone()
            .unwrap_or_else(|| format!("{}.", self.config.group));
        Ok(ShuffleConfig {
            role: s.role,
            events_topic: format!("{prefix}events"),
            by_key_topic: format!("{prefix}events-by-key"),
            partitions: s.partitions,
            replication: s.replication,
            retention: s.retention,
            decode_threads: match s.decode_threads {
                0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
                n => n,
            },
        })
    }
}

/// Whether a key prefix holds a non-empty `{hash tag}`, which keeps a revocation and its
/// feed entry in one Redis Cluster slot.
fn has_hash_tag(prefix: &str) -> bool {
    prefix
        .find('{')
        .and_then(|i| prefix[i + 1..].find('}').map(|j| j > 0))
        .unwrap_or(false)
}
