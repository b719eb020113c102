//! Revocations to Redis: the blocklist that gateways check and the feed they subscribe to.
//!
//! Key schema (`{prefix}` defaults to `tokenwatch:`). Ids are fixed-length hex computed from
//! the claims ([`tokenwatch_core::token::TokenInfo::token_revocation_key`]), never claim text, so no
//! claim can shape a key name (newlines, `*`, NUL, 300 KB), a `jti` is scoped by its issuer,
//! and no two (iss, sub) pairs share a subject key:
//! - `{prefix}revoked:tok:{id}` → JSON `{rule, reason, revoked_at, expires_at, iss, sub, jti}`,
//!   TTL until the token's `exp` + leeway, clamped to [min, max] token TTL;
//! - `{prefix}revoked:sub:{id}` → JSON `{rule, reason, revoked_at, not_before, iss, sub}`, TTL
//!   the subject TTL: every token of the subject issued before `not_before` is revoked;
//! - stream `{prefix}revocations`: one entry per *new* revocation (`action` = `revoke`, `kind`,
//!   `id`, `rule`, `revoked_at`, and `expires_at` or `not_before`), and one per undone
//!   revocation (`action` = `unrevoke`, `kind`, `id`, `unrevoked_at`; see [`super::unrevoke`]),
//!   trimmed to an approximate length.
//!
//! The claims in the JSON value are for people reading it, cut to [`MAX_CLAIM_CHARS`] (and the
//! reason to [`MAX_REASON_CHARS`]), so a value has a fixed maximum size.
//!
//! The blocklist key and its feed entry are written by one Lua script, atomically: a token key
//! is set only if absent (SET NX) and the entry is added only then; a subject key is replaced
//! only by a later `not_before`. So replaying the same log, or retrying after a Redis outage,
//! never adds an entry twice. On Redis Cluster both keys must live in one slot: the prefix
//! must carry a hash tag such as `{tokenwatch}:`, which [`RedisConfig::check`] enforces.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::Script;
use serde_json::json;

use super::dead_letter::DeadLetters;
use tokenwatch_core::decision::{Decision, RevocationPolicy};
use tokenwatch_core::rules::Action;

const SCRIPT: &str = r#"
if ARGV[4] == 'subject' then
  local cur = redis.call('GET', KEYS[1])
  if cur then
    local ok, obj = pcall(cjson.decode, cur)
    if ok and type(obj) == 'table' and tonumber(obj['not_before']) and tonumber(obj['not_before']) >= tonumber(ARGV[9]) then
      return 0
    end
  end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    return 0
  end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'action', 'revoke', 'kind', ARGV[4], 'id', ARGV[5], 'rule', ARGV[6], 'revoked_at', ARGV[7], ARGV[8], ARGV[9])
return 1
"#;

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URLs; several (or `cluster`) for Redis Cluster seed nodes.
    pub urls: Vec<String>,
    pub cluster: bool,
    pub key_prefix: String,
    pub policy: RevocationPolicy,
    /// Approximate maximum length of the revocation stream.
    pub stream_maxlen: u64,
    pub response_timeout: Duration,
    /// PEM file of the CA that signed the Redis server's certificate (`rediss://`), when it
    /// is not in the system's trust store.
    pub ca_file: Option<std::path::PathBuf>,
}

impl RedisConfig {
    /// Checks everything that can be checked without connecting: URL syntax, the hash tag a
    /// cluster needs, the CA file. A failure here is a setting to fix, never worth a retry,
    /// so the service refuses to start with a message that names the key.
    pub fn check(&self) -> Result<(), SettingError> {
        self.check_syntax()?;
        self.client().map(|_| ())
    }

    fn check_syntax(&self) -> Result<(), SettingError> {
        if self.urls.is_empty() {
            return Err(SettingError::NoUrl);
        }
        for u in &self.urls {
            if !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://")) {
                return Err(SettingError::NotRedisUrl { url: redact(u) });
            }
            redis::IntoConnectionInfo::into_connection_info(u.as_str())
                .map_err(|source| SettingError::BadUrl { url: redact(u), source })?;
        }
        if self.cluster || self.urls.len() > 1 {
            let tagged = self
                .key_prefix
                .find('{')
                .and_then(|i| self.key_prefix[i + 1..].find('}').map(|j| j > 0))
                .unwrap_or(false);
            if !tagged {
                return Err(SettingError::NoHashTag {
                    prefix: self.key_prefix.clone(),
                });
            }
        }
        Ok(())
    }

    /// `id` is a token revocation key (`Decision::revocation_key`), never claim text.
    pub fn token_key(&self, id: &str) -> String {
        format!("{}revoked:tok:{id}", self.key_prefix)
    }

    /// `id` is a subject revocation key (`Decision::revocation_key`), never claim text.
    pub fn subject_key(&self, id: &str) -> String {
        format!("{}revoked:sub:{id}", self.key_prefix)
    }

    /// Hash of re-arm requests: rule id → epoch seconds of the request (`tokenwatch rearm`).
    pub fn rearm_key(&self) -> String {
        format!("{}rearm", self.key_prefix)
    }

    pub fn stream_key(&self) -> String {
        format!("{}revocations", self.key_prefix)
    }
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!(
                "{}://{}{}",
                &url[..s],
                if user.is_empty() {
                    "***".to_string()
                } else {
                    format!("{user}:***")
                },
                &url[at..]
            )
        }
        _ => url.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Token,
    Subject,
}

/// Claims copied into a blocklist value for people are cut to this many characters.
pub const MAX_CLAIM_CHARS: usize = 256;
/// The reason copied into a blocklist value is cut to this many characters.
pub const MAX_REASON_CHARS: usize = 1024;

/// One revocation to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Revocation {
    pub kind: Kind,
    /// The revocation key (fixed-length hex, or a token's `sha256:`/`claims:` id).
    pub id: String,
    pub rule: String,
    pub reason: String,
    /// For people reading the value: the token's claims, cut to [`MAX_CLAIM_CHARS`].
    pub iss: Option<String>,
    pub sub: Option<String>,
    /// Token revocations only: the token id (its `jti`, or the hashed id).
    pub jti: Option<String>,
    /// Event time of the decision, epoch seconds.
    pub revoked_at: i64,
    pub expires_at: Option<i64>,
    pub not_before: Option<i64>,
}

impl Revocation {
    /// The revocation an enforced decision asks for, if any.
    pub fn from_decision(d: &Decision) -> Option<Revocation> {
        if d.shadow {
            return None;
        }
        let kind = match d.action {
            Action::Alert => return None,
            Action::RevokeToken => Kind::Token,
            Action::RevokeSubject => Kind::Subject,
        };
        let cut = |s: &Option<Box<str>>| s.as_deref().map(|s| cut_chars(s, MAX_CLAIM_CHARS));
        Some(Revocation {
            kind,
            id: d.revocation_key.as_deref()?.to_string(),
            rule: d.rule.to_string(),
            reason: cut_chars(&d.reason, MAX_REASON_CHARS),
            iss: cut(&d.iss),
            sub: cut(&d.sub),
            jti: if kind == Kind::Token { cut(&d.token_id) } else { None },
            revoked_at: d.ts.div_euclid(1000),
            expires_at: d.expires_at,
            not_before: d.not_before,
        })
    }
}

/// The first `max` characters of `s`.
fn cut_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// A Redis client built from the settings, not yet connected.
#[allow(clippy::large_enum_variant)] // one, briefly, per connection attempt
enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

impl RedisConfig {
    fn where_(&self) -> String {
        self.urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(", ")
    }

    /// Builds the client (parses the URLs, reads the CA file); no I/O with Redis.
    fn client(&self) -> Result<Client, SettingError> {
        let where_ = self.where_();
        let certs = match &self.ca_file {
            None => None,
            Some(p) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(p).map_err(|source| SettingError::CaFile {
                    path: p.clone(),
                    source,
                })?),
            }),
        };
        if self.cluster || self.urls.len() > 1 {
            let mut b = redis::cluster::ClusterClientBuilder::new(self.urls.clone())
                .response_timeout(self.response_timeout)
                .connection_timeout(Duration::from_secs(5));
            if let Some(c) = certs {
                b = b.certs(c);
            }
            b.build().map(Client::Cluster).map_err(|source| SettingError::Client {
                where_: format!("cluster {where_}"),
                source,
            })
        } else {
            let url = self.urls.first().ok_or(SettingError::NoUrl)?;
            match (certs, &self.ca_file) {
                (Some(c), Some(p)) => {
                    redis::Client::build_with_tls(url.as_str(), c).map_err(|source| SettingError::CaCertificate {
                        path: p.clone(),
                        where_,
                        source,
                    })
                }
                _ => redis::Client::open(url.as_str()).map_err(|source| SettingError::Client { where_, source }),
            }
            .map(Client::Single)
        }
    }
}

/// A Redis setting that cannot work: found before connecting, and fatal at start (retrying
/// cannot fix it). Every message names the setting; URLs are shown without their password.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error("redis: no URL given (--redis redis://host:6379)")]
    NoUrl,
    #[error("redis: `{url}` is not a redis://, rediss:// or unix:// URL")]
    NotRedisUrl { url: String },
    #[error("redis: `{url}` is not a valid Redis URL: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("key_prefix `{prefix}`: with Redis Cluster the prefix needs a hash tag, e.g. `{{tokenwatch}}:`, so that a revocation and its feed entry are written atomically in one slot")]
    NoHashTag { prefix: String },
    #[error("revocation.redis_ca_file: {}: cannot read: {source}", path.display())]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("revocation.redis_ca_file: {}: not a usable PEM certificate for {where_}: {source}", path.display())]
    CaCertificate {
        path: std::path::PathBuf,
        where_: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("redis: {where_}: {source}")]
    Client {
        where_: String,
        #[source]
        source: redis::RedisError,
    },
}

/// Why a Redis operation other than a revocation write (connecting, a PING, a command of
/// `unrevoke`, `rearm` or the checkpoints) failed, and so whether to retry: a setting to fix
/// and a command Redis rejects are permanent, Redis not answering (yet) is transient. The
/// classification is [`is_transient`] on the `redis` crate's error, kept here with its source.
#[derive(Debug, thiserror::Error)]
pub enum RedisOpError {
    /// A bad URL, CA file...: retrying cannot help.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// A refused password, an unknown command, a wrong type: retrying cannot help.
    #[error("redis {where_}: {op}{source}")]
    Rejected {
        where_: String,
        /// The command, with a trailing `: ` (empty when connecting).
        op: String,
        #[source]
        source: redis::RedisError,
    },
    /// Refused, timed out, dropped, a cluster still forming: worth retrying.
    #[error("redis {where_}: {op}{source}")]
    Unavailable {
        where_: String,
        op: String,
        #[source]
        source: redis::RedisError,
    },
}

/// What connecting returns: a [`RedisOpError`] whose [`RedisOpError::is_transient`] tells a
/// setting to fix (fail at start) from a Redis that does not answer yet (retry).
pub type ConnectError = RedisOpError;

impl RedisOpError {
    fn from_redis(source: redis::RedisError, where_: &str, op: &str) -> Self {
        let (where_, op) = (
            where_.to_string(),
            if op.is_empty() {
                String::new()
            } else {
                format!("{op}: ")
            },
        );
        if is_transient(&source) {
            RedisOpError::Unavailable { where_, op, source }
        } else {
            RedisOpError::Rejected { where_, op, source }
        }
    }

    /// Whether Redis may answer later: the caller retries; otherwise it fails or reports.
    pub fn is_transient(&self) -> bool {
        matches!(self, RedisOpError::Unavailable { .. })
    }
}

/// Connection and I/O errors, and a cluster that is not (yet) serving: Redis may come back.
fn is_transient(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown)
        )
}

/// Why a revocation was not written, and so what the service does about it.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Connection refused, timed out or dropped, a cluster re-forming: retry with backoff,
    /// consumption paused, until Redis is back.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answers but refuses every write until an operator acts: out of memory (OOM), a
    /// rotated password (NOAUTH, WRONGPASS), a replica (READONLY), an ACL (NOPERM), a failing
    /// disk (MISCONF). Retrying is right (nothing may be lost) but the reason must be shown.
    #[error("redis refuses writes ({code}): {msg}")]
    Refused { code: String, msg: String },
    /// This write can never succeed as it is (WRONGTYPE: a key of ours holds another type; a
    /// script error on a value): the item goes to the dead-letter output and the batch goes on.
    /// `dead_lettered` says whether it is there; if not (no output, or it failed), the caller
    /// must keep the item.
    #[error("redis rejected this revocation ({code}): {msg}")]
    Poison {
        code: String,
        msg: String,
        dead_lettered: bool,
    },
}

impl WriteError {
    /// The error kind as a metric label value: `unavailable`, `refused` or `poison`.
    pub fn kind(&self) -> &'static str {
        match self {
            WriteError::Unavailable(_) => "unavailable",
            WriteError::Refused { .. } => "refused",
            WriteError::Poison { .. } => "poison",
        }
    }

    fn classify(e: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        if is_transient(&e) {
            return WriteError::Unavailable(e.to_string());
        }
        let code = e.code().unwrap_or("").to_string();
        let msg = e.to_string();
        let refused = matches!(
            code.as_str(),
            "OOM" | "NOAUTH" | "WRONGPASS" | "READONLY" | "NOPERM" | "MISCONF"
        ) || matches!(
            e.kind(),
            ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::NoPerm)
        );
        if refused {
            return WriteError::Refused { code, msg };
        }
        let poison = code == "WRONGTYPE"
            || matches!(
                e.kind(),
                ErrorKind::Server(ServerErrorKind::ResponseError)
                    | ErrorKind::Extension
                    | ErrorKind::UnexpectedReturnType
            );
        if poison {
            WriteError::Poison {
                code,
                msg,
                dead_lettered: false,
            }
        } else {
            // Anything else: not known to be the item's fault, so keep it and keep retrying,
            // visibly.
            WriteError::Refused {
                code: if code.is_empty() {
                    e.category().to_string()
                } else {
                    code
                },
                msg,
            }
        }
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn invoke<T: redis::FromRedisValue>(&mut self, inv: &redis::ScriptInvocation<'_>) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => inv.invoke_async(c).await,
            Conn::Cluster(c) => inv.invoke_async(c).await,
        }
    }

    async fn ping(&mut self) -> redis::RedisResult<()> {
        let r: redis::RedisResult<String> = match self {
            Conn::Single(c) => redis::cmd("PING").query_async(c).await,
            Conn::Cluster(c) => redis::cmd("PING").query_async(c).await,
        };
        r.map(|_| ())
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// Writes revocations; every call either writes all of them or returns the error (the
/// caller retries: the script makes retries harmless).
pub struct RevocationWriter {
    link: RedisHandle,
    script: Script,
    cfg: RedisConfig,
    dead: Option<Arc<Mutex<DeadLetters>>>,
}

/// A handle on the writer's connection (a clone shares it): the health check's `PING` every
/// few seconds, so an outage shows even when nothing is written, and the checkpoint writes
/// that run beside the consume loop ([`crate::checkpoint::Writer`]).
#[derive(Clone)]
pub struct RedisHandle {
    conn: Conn,
    where_: String,
}

impl RedisHandle {
    pub async fn ping(&mut self) -> Result<(), RedisOpError> {
        self.conn
            .ping()
            .await
            .map_err(|e| RedisOpError::from_redis(e, &self.where_, "PING"))
    }

    /// Runs one command: checkpoints live beside the revocations ([`crate::checkpoint`]). The
    /// error names the command and its first argument (a key).
    pub async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, RedisOpError> {
        self.conn.query(cmd).await.map_err(|e| {
            let mut args = cmd.args_iter().filter_map(|a| match a {
                redis::Arg::Simple(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            });
            let op = [args.next(), args.next()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            RedisOpError::from_redis(e, &self.where_, &op)
        })
    }
}

impl RevocationWriter {
    /// Connects, telling a setting to fix (a permanent [`RedisOpError`]) from a Redis that
    /// does not answer yet ([`RedisOpError::is_transient`]).
    pub async fn connect(cfg: RedisConfig) -> Result<Self, RedisOpError> {
        cfg.check_syntax()?;
        let where_ = cfg.where_();
        let conn = match cfg.client()? {
            Client::Cluster(client) => Conn::Cluster(
                client
                    .get_async_connection()
                    .await
                    .map_err(|e| RedisOpError::from_redis(e, &where_, ""))?,
            ),
            Client::Single(client) => {
                let mcfg = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(cfg.response_timeout))
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                Conn::Single(
                    client
                        .get_connection_manager_with_config(mcfg)
                        .await
                        .map_err(|e| RedisOpError::from_redis(e, &where_, ""))?,
                )
            }
        };
        Ok(RevocationWriter {
            link: RedisHandle { conn, where_ },
            script: Script::new(SCRIPT),
            cfg,
            dead: None,
        })
    }

    /// Where revocations that Redis rejects for good go (without it, they are retried).
    pub fn with_dead_letters(mut self, dead: Arc<Mutex<DeadLetters>>) -> Self {
        self.dead = Some(dead);
        self
    }

    /// A handle sharing this writer's connection, for work beside the writes.
    pub fn handle(&self) -> RedisHandle {
        self.link.clone()
    }

    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    pub async fn ping(&mut self) -> Result<(), RedisOpError> {
        self.link.ping().await
    }

    /// Asks every running tokenwatch to re-arm `rule` (epoch seconds `now_s`).
    pub async fn request_rearm(&mut self, rule: &str, now_s: i64) -> Result<(), RedisOpError> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.cfg.rearm_key()).arg(rule).arg(now_s);
        self.query::<i64>(&cmd).await.map(|_| ())
    }

    /// The re-arm requests: rule id → epoch seconds.
    pub async fn rearm_requests(&mut self) -> Result<std::collections::HashMap<String, i64>, RedisOpError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.cfg.rearm_key());
        self.query(&cmd).await
    }

    /// Runs a script on this writer's connection (single node or cluster).
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &mut self,
        inv: &redis::ScriptInvocation<'_>,
        what: &str,
    ) -> Result<T, RedisOpError> {
        self.link
            .conn
            .invoke(inv)
            .await
            .map_err(|e| RedisOpError::from_redis(e, &self.link.where_, what))
    }

    /// Runs one command on the writer's connection ([`RedisHandle::query`]).
    pub async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, RedisOpError> {
        self.link.query(cmd).await
    }

    /// Writes one revocation; `Ok(true)` when it was new (a feed entry was added).
    pub async fn write(&mut self, r: &Revocation, now_s: i64) -> Result<bool, WriteError> {
        let (key, ttl, value, field, field_val) = match r.kind {
            Kind::Token => (
                self.cfg.token_key(&r.id),
                self.cfg.policy.token_ttl_s(r.expires_at, now_s),
                json!({"rule": r.rule, "reason": r.reason, "revoked_at": r.revoked_at, "expires_at": r.expires_at,
                       "iss": r.iss, "sub": r.sub, "jti": r.jti}),
                "expires_at",
                r.expires_at.map(|e| e.to_string()).unwrap_or_default(),
            ),
            Kind::Subject => (
                self.cfg.subject_key(&r.id),
                self.cfg.policy.subject_ttl_s,
                json!({"rule": r.rule, "reason": r.reason, "revoked_at": r.revoked_at, "not_before": r.not_before,
                       "iss": r.iss, "sub": r.sub}),
                "not_before",
                r.not_before.unwrap_or(r.revoked_at).to_string(),
            ),
        };
        let kind = match r.kind {
            Kind::Token => "token",
            Kind::Subject => "subject",
        };
        let mut inv = self.script.key(key);
        inv.key(self.cfg.stream_key())
            .arg(value.to_string())
            .arg(ttl.max(1))
            .arg(self.cfg.stream_maxlen)
            .arg(kind)
            .arg(&r.id)
            .arg(&r.rule)
            .arg(r.revoked_at)
            .arg(field)
            .arg(field_val);
        match self.link.conn.invoke::<i64>(&inv).await {
            Ok(n) => Ok(n == 1),
            Err(e) => Err(self.dead_letter(WriteError::classify(e), r)),
        }
    }

    /// Records a poison revocation in the dead-letter output, saying so in the error.
    fn dead_letter(&self, e: WriteError, r: &Revocation) -> WriteError {
        let WriteError::Poison { code, msg, .. } = e else {
            return e;
        };
        let item = json!({
            "kind": match r.kind { Kind::Token => "token", Kind::Subject => "subject" },
            "id": r.id, "rule": r.rule, "reason": r.reason, "revoked_at": r.revoked_at,
            "expires_at": r.expires_at, "not_before": r.not_before, "iss": r.iss, "sub": r.sub, "jti": r.jti,
        });
        let dead_lettered = self
            .dead
            .as_ref()
            .and_then(|d| d.lock().ok())
            .is_some_and(|mut d| d.record("redis", &msg, &item).is_ok());
        WriteError::Poison {
            code,
            msg,
            dead_lettered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(prefix: &str, urls: &[&str], cluster: bool) -> RedisConfig {
        RedisConfig {
            urls: urls.iter().map(std::string::ToString::to_string).collect(),
            cluster,
            key_prefix: prefix.into(),
            policy: RevocationPolicy::default(),
            stream_maxlen: 1000,
            response_timeout: Duration::from_secs(1),
            ca_file: None,
        }
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("redis://:s3cret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("rediss://user:s3cret@host"), "rediss://user:***@host");
        assert_eq!(redact("redis://host"), "redis://host");
        let e = cfg("x:", &["http://:pw@h"], false).check().unwrap_err().to_string();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn cluster_needs_a_hash_tag() {
        assert!(cfg("tokenwatch:", &["redis://a"], true)
            .check()
            .unwrap_err()
            .to_string()
            .contains("hash tag"));
        assert!(cfg("tokenwatch:", &["redis://a", "redis://b"], false).check().is_err());
        assert!(cfg("{tokenwatch}:", &["redis://a"], true).check().is_ok());
        assert!(cfg("{}:", &["redis://a"], true).check().is_err());
        assert!(cfg("tokenwatch:", &["redis://a"], false).check().is_ok());
    }

    #[test]
    fn only_enforced_revoking_decisions_become_revocations() {
        let d = Decision {
            ts: 5_500,
            rule: "r".into(),
            severity: tokenwatch_core::rules::Severity::High,
            action: Action::RevokeToken,
            token_id: Some("t".into()),
            subject: Some("i|s".into()),
            revocation_key: Some("k".into()),
            iss: None,
            sub: None,
            client_ip: None,
            expires_at: Some(99),
            not_before: None,
            shadow: false,
            reason: "why".into(),
            evidence: serde_json::Value::Null,
        };
        let r = Revocation::from_decision(&d).unwrap();
        assert_eq!(
            (r.kind, r.id.as_str(), r.revoked_at, r.expires_at),
            (Kind::Token, "k", 5, Some(99)),
            "the id is the revocation key, never the claim text"
        );
        assert_eq!(r.jti.as_deref(), Some("t"));
        let s = Decision {
            action: Action::RevokeSubject,
            not_before: Some(6),
            ..d.clone()
        };
        let r = Revocation::from_decision(&s).unwrap();
        assert_eq!((r.kind, r.id.as_str(), r.not_before), (Kind::Subject, "k", Some(6)));
        assert_eq!(r.jti, None);
        assert!(
            Revocation::from_decision(&Decision {
                shadow: true,
                ..d.clone()
            })
            .is_none(),
            "shadow never writes"
        );
        assert!(Revocation::from_decision(&Decision {
            action: Action::Alert,
            ..d.clone()
        })
        .is_none());
        assert!(Revocation::from_decision(&Decision {
            revocation_key: None,
            ..d
        })
        .is_none());
    }

    #[test]
    fn key_schema() {
        let c = cfg("tokenwatch:", &["redis://a"], false);
        assert_eq!(c.token_key("abc"), "tokenwatch:revoked:tok:abc");
        assert_eq!(c.subject_key("0123"), "tokenwatch:revoked:sub:0123");
        assert_eq!(c.stream_key(), "tokenwatch:revocations");
    }
}
