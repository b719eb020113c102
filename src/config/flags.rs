//! The command-line flags that set configuration keys: the top layer of a configuration.
//! Each flag is declared once, here, with the key it sets; `main` flattens these into its
//! subcommands, and the tests build them as plain structs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;

use tokenwatch_core::input::Format;

use super::{ConfigError, FlagValue, Layers, Loaded, LogFormat, Role};
use crate::service::ServiceConfig;
use crate::sinks::redis::RedisConfig;

/// A log format as `--format` takes it; `--help` lists the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatArg(pub Format);

impl clap::ValueEnum for FormatArg {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [FormatArg; Format::ALL.len()] = {
            let mut all = [FormatArg(Format::Auto); Format::ALL.len()];
            let mut i = 0;
            while i < all.len() {
                all[i] = FormatArg(Format::ALL[i]);
                i += 1;
            }
            all
        };
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.0.name()))
    }
}

/// The flags of `tokenwatch run`.
#[derive(Args, Debug, Default, Clone)]
pub struct RunFlags {
    /// TOML config file; every key can also be set as TOKENWATCH_KEY in the environment.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Topic to consume (repeatable).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Consumer group id.
    #[arg(long)]
    pub group: Option<String>,
    /// Log format.
    #[arg(long)]
    pub format: Option<FormatArg>,
    /// Directory of rule files.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// MaxMind City database.
    #[arg(long)]
    pub geoip: Option<PathBuf>,
    /// Redis URL (repeat for Redis Cluster seed nodes).
    #[arg(long)]
    pub redis: Vec<String>,
    /// Address for /metrics, /healthz, /readyz.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Prefix of every Redis key.
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Where decision lines go: stdout, none, or a file.
    #[arg(long)]
    pub alerts: Option<String>,
    /// Also produce decisions to this Kafka topic.
    #[arg(long)]
    pub alerts_topic: Option<String>,
    /// Logs on stderr.
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// JWKS file or URL whose public keys verify token signatures (repeatable; replaces
    /// `[verify] jwks`).
    #[arg(long = "jwks", value_name = "PATH_OR_URL")]
    pub jwks: Vec<String>,
    /// Which stages this instance runs: local (decide in this process), ingest, detect, or
    /// both (split by key through the internal topic).
    #[arg(long)]
    pub role: Option<Role>,
    /// Threads that decode lines in the ingest stage (`--role both|ingest`); default all cores.
    #[arg(long)]
    pub threads: Option<usize>,
}

impl RunFlags {
    /// The config file, then `env`, then these flags.
    pub fn load(&self, env: impl IntoIterator<Item = (String, String)>) -> Result<Loaded, ConfigError> {
        let layers = file_layer(self.config.as_deref())?.env(env)?;
        let text = |v: &Option<String>| v.clone().map(FlagValue::Text);
        let path = |v: &Option<PathBuf>| v.as_ref().map(|p| FlagValue::Text(p.to_string_lossy().into_owned()));
        let flags = [
            ("brokers", "--brokers", text(&self.brokers)),
            ("topics", "--topic", list(&self.topics)),
            ("group", "--group", text(&self.group)),
            ("input.format", "--format", format(self.format)),
            ("rules", "--rules", path(&self.rules)),
            ("geoip", "--geoip", path(&self.geoip)),
            ("redis", "--redis", list(&self.redis)),
            ("metrics_addr", "--metrics-addr", text(&self.metrics_addr)),
            ("key_prefix", "--key-prefix", text(&self.key_prefix)),
            ("alerts", "--alerts", text(&self.alerts)),
            ("alerts_topic", "--alerts-topic", text(&self.alerts_topic)),
            (
                "log_format",
                "--log-format",
                self.log_format.map(|f| FlagValue::Text(f.name().into())),
            ),
            ("verify.jwks", "--jwks", list(&self.jwks)),
            (
                "shuffle.role",
                "--role",
                self.role.map(|r| FlagValue::Text(r.name().into())),
            ),
            (
                "shuffle.decode_threads",
                "--threads",
                self.threads.map(|n| FlagValue::Text(n.to_string())),
            ),
        ];
        Loaded::from_layers(with_flags(layers, flags)?)
    }

    /// The settings of `run` and its metrics address.
    pub fn resolve(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(ServiceConfig, SocketAddr), ConfigError> {
        self.load(env)?.service()
    }
}

/// Where `unrevoke` and `rearm` reach Redis: as `run` does.
#[derive(Args, Debug, Default, Clone)]
pub struct RedisFlags {
    /// Redis URL (repeat for Redis Cluster seed nodes); or `redis` in the config.
    #[arg(long)]
    pub redis: Vec<String>,
    /// Key prefix (default tokenwatch:).
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// TOML config file (`redis`, `key_prefix`, the `[revocation]` settings).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl RedisFlags {
    /// The Redis settings from the config file, then `env`, then these flags.
    pub fn resolve(&self, env: impl IntoIterator<Item = (String, String)>) -> Result<RedisConfig, ConfigError> {
        let layers = file_layer(self.config.as_deref())?.env(env)?;
        let flags = [
            ("redis", "--redis", list(&self.redis)),
            (
                "key_prefix",
                "--key-prefix",
                self.key_prefix.clone().map(FlagValue::Text),
            ),
        ];
        Loaded::from_layers(with_flags(layers, flags)?)?.redis()
    }
}

/// The flags of `replay` that set keys of its `--config`.
#[derive(Debug, Default, Clone)]
pub struct ReplayFlags {
    pub format: Option<FormatArg>,
    pub max_line_bytes: Option<usize>,
    pub jwks: Vec<String>,
}

impl ReplayFlags {
    /// The config file (no environment: `replay` is reproducible), then these flags.
    pub fn load(&self, config: Option<&Path>) -> Result<Loaded, ConfigError> {
        let flags = [
            ("input.format", "--format", format(self.format)),
            (
                "input.max_line_bytes",
                "--max-line-bytes",
                self.max_line_bytes.map(|n| FlagValue::Text(n.to_string())),
            ),
            ("verify.jwks", "--jwks", list(&self.jwks)),
        ];
        Loaded::from_layers(with_flags(file_layer(config)?, flags)?)
    }
}

/// The keys of a JWKS flag alone (`demo`, `explain`, `diff`): `[verify] jwks`, no file.
pub fn jwks_only(jwks: &[String]) -> Result<Loaded, ConfigError> {
    Loaded::from_layers(with_flags(Layers::new(), [("verify.jwks", "--jwks", list(jwks))])?)
}

fn file_layer(path: Option<&Path>) -> Result<Layers, ConfigError> {
    match path {
        Some(p) => Layers::new().file(p),
        None => Ok(Layers::new()),
    }
}

/// The flags that were given, on top of `layers`.
fn with_flags<const N: usize>(
    layers: Layers,
    flags: [(&str, &str, Option<FlagValue>); N],
) -> Result<Layers, ConfigError> {
    flags.into_iter().try_fold(layers, |l, (key, flag, value)| match value {
        Some(v) => l.flag(key, flag, v),
        None => Ok(l),
    })
}

/// A repeatable flag: given when it has values.
fn list(values: &[String]) -> Option<FlagValue> {
    (!values.is_empty()).then(|| FlagValue::List(values.to_vec()))
}

fn format(f: Option<FormatArg>) -> Option<FlagValue> {
    f.map(|f| FlagValue::Text(f.0.name().into()))
}
