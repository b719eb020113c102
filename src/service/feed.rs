//! Following the revocation feed for `unrevoke` entries, so that a running instance forgets
//! what an operator undid.
//!
//! `tokenwatch unrevoke` deletes the blocklist key and appends an `action=unrevoke` entry to
//! the feed; without this task the engine would still remember the revocation and raise
//! `revoked-token-used` for every later (now legitimate) use of the token. The task reads the
//! stream from its end at start (entries after the last one then present: what was undone
//! before the service started is not in its memory either, unless a checkpoint brought it
//! back, see README) with its own connection, and hands the undone key ids to the consume loop
//! through a bounded channel; the loop applies them between batches
//! ([`super::consume`]), so the engine is only ever touched by the loop.
//!
//! Polling (`XRANGE (last +`, every [`POLL`] when nothing was new) rather than a blocking
//! `XREAD` keeps the shared connection manager free of
//! blocking calls and works the same on a cluster. Errors are logged and retried: a Redis
//! outage only delays the forgetting, and the consume loop reports the outage itself.
//!
//! `replay` has no feed to follow: it reads a file, and its revocations are those of that
//! file only.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::sinks::redis::{Kind, RedisConfig, RedisOpError, RevocationWriter};
use crate::sinks::unrevoke::parse_entries;

/// How often the feed is read when nothing new was there.
const POLL: Duration = Duration::from_millis(200);
/// Entries read per `XREAD`.
const COUNT: usize = 256;
/// Undone revocations waiting for the loop: the task waits when it is full.
pub(super) const CHANNEL: usize = 1024;

/// A revocation undone by `tokenwatch unrevoke`: its kind and key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Undone {
    pub(super) kind: Kind,
    pub(super) id: String,
}

/// Follows the feed of `cfg` until the receiver is dropped.
pub(super) async fn follow(cfg: RedisConfig, tx: mpsc::Sender<Undone>) {
    let mut conn = loop {
        match RevocationWriter::connect(cfg.clone()).await {
            Ok(w) => break w,
            Err(e) => {
                tracing::warn!(error = %e, "feed follower: cannot connect to Redis, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut after = loop {
        match last_id(&mut conn).await {
            Ok(id) => break id,
            Err(e) => {
                tracing::warn!(error = %e, "feed follower: cannot read the feed's end, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    loop {
        let (last, undone) = match read_after(&mut conn, &after).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "feed follower: cannot read the feed, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(last) = last else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        after = last;
        for u in undone {
            if tx.send(u).await.is_err() {
                return;
            }
        }
    }
}

/// The id of the feed's newest entry (`0-0` when it is empty or absent).
async fn last_id(w: &mut RevocationWriter) -> Result<String, RedisOpError> {
    let mut cmd = redis::cmd("XREVRANGE");
    cmd.arg(w.config().stream_key()).arg("+").arg("-").arg("COUNT").arg(1);
    let v: redis::Value = w.query(&cmd).await?;
    Ok(parse_ids(&v).pop().unwrap_or_else(|| "0-0".into()))
}

/// Reads the entries after stream id `after` (at most [`COUNT`]): the id of the last one read,
/// if any, and the revocations undone among them, oldest first.
async fn read_after(w: &mut RevocationWriter, after: &str) -> Result<(Option<String>, Vec<Undone>), RedisOpError> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(w.config().stream_key())
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(COUNT);
    let v: redis::Value = w.query(&cmd).await?;
    let undone = parse_entries(&v)
        .into_iter()
        .filter(|e| e.unrevoke)
        .map(|e| Undone { kind: e.kind, id: e.id })
        .collect();
    Ok((parse_ids(&v).pop(), undone))
}

/// The stream ids of an `XRANGE` / `XREVRANGE` reply.
fn parse_ids(v: &redis::Value) -> Vec<String> {
    let redis::Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| match e {
            redis::Value::Array(parts) => match parts.first() {
                Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
