//! Revocations to Redis: the blocklist that gateways check and the feed they subscribe to.
//!
//! Key schema (`{prefix}` defaults to `tokenwatch:`):
//! - `{prefix}revoked:jti:{token_id}` → JSON `{rule, reason, revoked_at, expires_at}`, TTL until
//!   the token's `exp` + leeway, never less than the minimum TTL (24 h without `exp`);
//! - `{prefix}revoked:sub:{iss}|{sub}` → JSON `{rule, reason, revoked_at, not_before}`, TTL
//!   the subject TTL: every token of the subject issued before `not_before` is revoked;
//! - stream `{prefix}revocations`: one entry per *new* revocation (`kind`, `id`, `rule`,
//!   `revoked_at`, and `expires_at` or `not_before`), trimmed to an approximate length.
//!
//! The blocklist key and its feed entry are written by one Lua script, atomically: a token key
//! is set only if absent (SET NX) and the entry is added only then; a subject key is replaced
//! only by a later `not_before`. So replaying the same log, or retrying after a Redis outage,
//! never adds an entry twice. On Redis Cluster both keys must live in one slot: the prefix
//! must carry a hash tag such as `{tokenwatch}:`, which [`RedisConfig::check`] enforces.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::Script;
use serde_json::json;

use crate::decision::{Decision, RevocationPolicy};
use crate::rules::Action;

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
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'kind', ARGV[4], 'id', ARGV[5], 'rule', ARGV[6], 'revoked_at', ARGV[7], ARGV[8], ARGV[9])
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
    pub fn check(&self) -> Result<(), String> {
        self.check_syntax()?;
        self.client().map(|_| ())
    }

    fn check_syntax(&self) -> Result<(), String> {
        if self.urls.is_empty() {
            return Err("redis: no URL given (--redis redis://host:6379)".into());
        }
        for u in &self.urls {
            if !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://")) {
                return Err(format!(
                    "redis: `{}` is not a redis://, rediss:// or unix:// URL",
                    redact(u)
                ));
            }
            redis::IntoConnectionInfo::into_connection_info(u.as_str())
                .map_err(|e| format!("redis: `{}` is not a valid Redis URL: {e}", redact(u)))?;
        }
        if self.cluster || self.urls.len() > 1 {
            let tagged = self
                .key_prefix
                .find('{')
                .and_then(|i| self.key_prefix[i + 1..].find('}').map(|j| j > 0))
                .unwrap_or(false);
            if !tagged {
                return Err(format!(
                    "key_prefix `{}`: with Redis Cluster the prefix needs a hash tag, e.g. `{{tokenwatch}}:`, so that a revocation and its feed entry are written atomically in one slot",
                    self.key_prefix
                ));
            }
        }
        Ok(())
    }

    pub fn token_key(&self, token_id: &str) -> String {
        format!("{}revoked:jti:{token_id}", self.key_prefix)
    }

    pub fn subject_key(&self, subject: &str) -> String {
        format!("{}revoked:sub:{subject}", self.key_prefix)
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

/// One revocation to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Revocation {
    pub kind: Kind,
    /// token_id or subject.
    pub id: String,
    pub rule: String,
    pub reason: String,
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
        let (kind, id) = match d.action {
            Action::Alert => return None,
            Action::RevokeToken => (Kind::Token, d.token_id.as_deref()?),
            Action::RevokeSubject => (Kind::Subject, d.subject.as_deref()?),
        };
        Some(Revocation {
            kind,
            id: id.to_string(),
            rule: d.rule.to_string(),
            reason: d.reason.clone(),
            revoked_at: d.ts.div_euclid(1000),
            expires_at: d.expires_at,
            not_before: d.not_before,
        })
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
    fn client(&self) -> Result<Client, String> {
        let where_ = self.where_();
        let ca_key = |p: &std::path::Path| format!("revocation.redis_ca_file: {}", p.display());
        let certs = match &self.ca_file {
            None => None,
            Some(p) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(p).map_err(|e| format!("{}: cannot read: {e}", ca_key(p)))?),
            }),
        };
        if self.cluster || self.urls.len() > 1 {
            let mut b = redis::cluster::ClusterClientBuilder::new(self.urls.clone())
                .response_timeout(self.response_timeout)
                .connection_timeout(Duration::from_secs(5));
            if let Some(c) = certs {
                b = b.certs(c);
            }
            b.build()
                .map(Client::Cluster)
                .map_err(|e| format!("redis: cluster {where_}: {e}"))
        } else {
            let url = self
                .urls
                .first()
                .ok_or("redis: no URL given (--redis redis://host:6379)")?;
            match (certs, &self.ca_file) {
                (Some(c), Some(p)) => redis::Client::build_with_tls(url.as_str(), c)
                    .map_err(|e| format!("{}: not a usable PEM certificate for {where_}: {e}", ca_key(p))),
                _ => redis::Client::open(url.as_str()).map_err(|e| format!("redis: {where_}: {e}")),
            }
            .map(Client::Single)
        }
    }
}

/// Why a connection attempt failed: a setting to fix, or Redis not answering (yet).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A bad URL, CA file, password...: retrying cannot help.
    #[error("{0}")]
    Config(String),
    /// Refused, timed out, dropped, a cluster still forming: worth retrying.
    #[error("{0}")]
    Unavailable(String),
}

impl ConnectError {
    fn from_redis(e: redis::RedisError, where_: &str) -> Self {
        let msg = format!("redis {where_}: {e}");
        if is_transient(&e) {
            ConnectError::Unavailable(msg)
        } else {
            ConnectError::Config(msg)
        }
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
                | ErrorKind::Server(ServerErrorKind::BusyLoading)
                | ErrorKind::Server(ServerErrorKind::MasterDown)
        )
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn ping(&mut self) -> Result<(), String> {
        let r: Result<String, _> = match self {
            Conn::Single(c) => redis::cmd("PING").query_async(c).await,
            Conn::Cluster(c) => redis::cmd("PING").query_async(c).await,
        };
        r.map(|_| ()).map_err(|e| format!("redis ping failed: {e}"))
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
    conn: Conn,
    script: Script,
    cfg: RedisConfig,
}

/// A second handle on the writer's connection, for a health check that runs beside the
/// writes (`PING` every few seconds), so an outage shows even when nothing is written.
#[derive(Clone)]
pub struct HealthProbe {
    conn: Conn,
}

impl HealthProbe {
    pub async fn ping(&mut self) -> Result<(), String> {
        self.conn.ping().await
    }
}

impl RevocationWriter {
    pub async fn connect(cfg: RedisConfig) -> Result<Self, String> {
        Self::try_connect(cfg).await.map_err(|e| e.to_string())
    }

    /// Connects, telling a setting to fix ([`ConnectError::Config`]) from a Redis that does
    /// not answer yet ([`ConnectError::Unavailable`]).
    pub async fn try_connect(cfg: RedisConfig) -> Result<Self, ConnectError> {
        cfg.check_syntax().map_err(ConnectError::Config)?;
        let where_ = cfg.where_();
        let conn = match cfg.client().map_err(ConnectError::Config)? {
            Client::Cluster(client) => Conn::Cluster(
                client
                    .get_async_connection()
                    .await
                    .map_err(|e| ConnectError::from_redis(e, &where_))?,
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
                        .map_err(|e| ConnectError::from_redis(e, &where_))?,
                )
            }
        };
        Ok(RevocationWriter {
            conn,
            script: Script::new(SCRIPT),
            cfg,
        })
    }

    /// A handle for the periodic health check, sharing this writer's connection.
    pub fn health_probe(&self) -> HealthProbe {
        HealthProbe {
            conn: self.conn.clone(),
        }
    }

    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    pub async fn ping(&mut self) -> Result<(), String> {
        self.conn.ping().await
    }

    /// Runs one command on the writer's connection: checkpoints live beside the revocations
    /// ([`crate::checkpoint`]).
    pub async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, String> {
        self.conn
            .query(cmd)
            .await
            .map_err(|e| format!("redis {}: {e}", self.cfg.where_()))
    }

    /// Writes one revocation; `Ok(true)` when it was new (a feed entry was added).
    pub async fn write(&mut self, r: &Revocation, now_s: i64) -> Result<bool, String> {
        let (key, ttl, value, field, field_val) = match r.kind {
            Kind::Token => (
                self.cfg.token_key(&r.id),
                self.cfg.policy.token_ttl_s(r.expires_at, now_s),
                json!({"rule": r.rule, "reason": r.reason, "revoked_at": r.revoked_at, "expires_at": r.expires_at}),
                "expires_at",
                r.expires_at.map(|e| e.to_string()).unwrap_or_default(),
            ),
            Kind::Subject => (
                self.cfg.subject_key(&r.id),
                self.cfg.policy.subject_ttl_s,
                json!({"rule": r.rule, "reason": r.reason, "revoked_at": r.revoked_at, "not_before": r.not_before}),
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
        let con = match &mut self.conn {
            Conn::Single(c) => inv.invoke_async::<i64>(c).await,
            Conn::Cluster(c) => inv.invoke_async::<i64>(c).await,
        };
        con.map(|n| n == 1).map_err(|e| format!("redis write failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(prefix: &str, urls: &[&str], cluster: bool) -> RedisConfig {
        RedisConfig {
            urls: urls.iter().map(|s| s.to_string()).collect(),
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
        let e = cfg("x:", &["http://:pw@h"], false).check().unwrap_err();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn cluster_needs_a_hash_tag() {
        assert!(cfg("tokenwatch:", &["redis://a"], true)
            .check()
            .unwrap_err()
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
            severity: crate::rules::Severity::High,
            action: Action::RevokeToken,
            token_id: Some("t".into()),
            subject: Some("i|s".into()),
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
            (Kind::Token, "t", 5, Some(99))
        );
        let s = Decision {
            action: Action::RevokeSubject,
            not_before: Some(6),
            ..d.clone()
        };
        let r = Revocation::from_decision(&s).unwrap();
        assert_eq!((r.kind, r.id.as_str(), r.not_before), (Kind::Subject, "i|s", Some(6)));
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
        assert!(Revocation::from_decision(&Decision { token_id: None, ..d }).is_none());
    }

    #[test]
    fn key_schema() {
        let c = cfg("tokenwatch:", &["redis://a"], false);
        assert_eq!(c.token_key("abc"), "tokenwatch:revoked:jti:abc");
        assert_eq!(c.subject_key("https://idp|u1"), "tokenwatch:revoked:sub:https://idp|u1");
        assert_eq!(c.stream_key(), "tokenwatch:revocations");
    }
}
