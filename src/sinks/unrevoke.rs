//! Undoing revocations: `tokenwatch unrevoke`.
//!
//! A wrong revocation (a rule edit gone wrong, a false positive) locks real users out until its
//! TTL runs out. Undoing one deletes its blocklist key and appends an `unrevoke` entry to the
//! feed, so gateways that follow the stream (rather than checking the keys) drop it as well, and
//! so does every running tokenwatch (`service/feed.rs`: its engine forgets the revocation).
//! Both happen in one Lua script, and the entry is appended only when the key was there: running
//! the same undo twice removes nothing and adds nothing the second time.
//!
//! Revocations are found by id (`--token` / `--subject`: the `revocation_key` of a decision, the
//! `id` of a feed entry) or by rule (`--rule`, optionally `--since`): the rule's revocations are
//! read from the feed, which holds the last `stream_maxlen` of them, and a key is removed only
//! while it still records that rule (a later revocation of the same key by another rule stays).

use redis::Script;

use super::redis::{Kind, RedisOpError, RevocationWriter};

const SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return false end
if ARGV[5] ~= '' then
  local ok, obj = pcall(cjson.decode, cur)
  if not ok or type(obj) ~= 'table' or obj['rule'] ~= ARGV[5] then return false end
end
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'action', 'unrevoke', 'kind', ARGV[2], 'id', ARGV[3], 'unrevoked_at', ARGV[4])
return cur
"#;

/// What to undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One token, by its revocation key.
    Token(String),
    /// One subject, by its revocation key.
    Subject(String),
    /// Every revocation of a rule still in the feed, those revoked at or after `since_s`
    /// (epoch seconds, event time) when given.
    Rule { rule: String, since_s: Option<i64> },
}

/// One removed revocation: what it was, for the operator to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub kind: Kind,
    pub id: String,
    /// The blocklist value that was deleted (JSON: rule, reason, revoked_at, ...).
    pub value: String,
}

/// One entry of the feed (`revoke` or `unrevoke`), as tokenwatch writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// The stream entry's id (`ms-seq`): where a reader goes on from.
    pub stream_id: String,
    /// `false` for a revocation (entries written before `action` existed are revocations),
    /// `true` for an `unrevoke` entry.
    pub unrevoke: bool,
    pub kind: Kind,
    /// The revocation's key id (a decision's `revocation_key`).
    pub id: String,
    /// Revocations only: the rule and when (epoch seconds).
    pub rule: String,
    pub revoked_at: i64,
}

/// Undoes the revocations `target` names; returns those that were there and are now gone.
pub async fn unrevoke(w: &mut RevocationWriter, target: &Target, now_s: i64) -> Result<Vec<Removed>, RedisOpError> {
    let wanted: Vec<(Kind, String, &str)> = match target {
        Target::Token(id) => vec![(Kind::Token, id.clone(), "")],
        Target::Subject(id) => vec![(Kind::Subject, id.clone(), "")],
        Target::Rule { rule, since_s } => {
            let mut found: Vec<(Kind, String, &str)> = feed(w)
                .await?
                .into_iter()
                .filter(|e| e.rule == *rule && since_s.is_none_or(|s| e.revoked_at >= s))
                .map(|e| (e.kind, e.id, rule.as_str()))
                .collect();
            found.sort_by(|a, b| a.1.cmp(&b.1));
            found.dedup();
            found
        }
    };
    let script = Script::new(SCRIPT);
    let mut removed = Vec::new();
    for (kind, id, rule) in wanted {
        let cfg = w.config();
        let key = match kind {
            Kind::Token => cfg.token_key(&id),
            Kind::Subject => cfg.subject_key(&id),
        };
        let mut inv = script.key(key);
        inv.key(cfg.stream_key())
            .arg(cfg.stream_maxlen)
            .arg(kind_name(kind))
            .arg(&id)
            .arg(now_s)
            .arg(rule);
        let value: Option<String> = w.invoke(&inv, "unrevoke script").await?;
        if let Some(value) = value {
            removed.push(Removed { kind, id, value });
        }
    }
    Ok(removed)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Token => "token",
        Kind::Subject => "subject",
    }
}

/// The revocation entries of the feed (unrevoke entries left out), oldest first.
async fn feed(w: &mut RevocationWriter) -> Result<Vec<FeedEntry>, RedisOpError> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(w.config().stream_key()).arg("-").arg("+");
    let v: redis::Value = w.query(&cmd).await?;
    Ok(parse_entries(&v).into_iter().filter(|e| !e.unrevoke).collect())
}

/// The feed entries of an `XRANGE` reply (an array of `[id, [field, value, ...]]`), oldest
/// first; entries of another shape (not written by tokenwatch) are left out.
pub fn parse_entries(v: &redis::Value) -> Vec<FeedEntry> {
    let redis::Value::Array(entries) = v else {
        return Vec::new();
    };
    entries.iter().filter_map(parse_entry).collect()
}

fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    }
}

fn parse_entry(e: &redis::Value) -> Option<FeedEntry> {
    let redis::Value::Array(parts) = e else { return None };
    let (Some(stream_id), Some(redis::Value::Array(fields))) = (parts.first(), parts.get(1)) else {
        return None;
    };
    let (mut kind, mut id, mut rule, mut revoked_at, mut action) = (None, String::new(), String::new(), 0, None);
    for kv in fields.chunks(2) {
        let [k, v] = kv else { continue };
        match text(k).as_str() {
            "kind" => {
                kind = match text(v).as_str() {
                    "token" => Some(Kind::Token),
                    "subject" => Some(Kind::Subject),
                    _ => None,
                }
            }
            "id" => id = text(v),
            "rule" => rule = text(v),
            "revoked_at" => revoked_at = text(v).parse().unwrap_or(0),
            "action" => action = Some(text(v)),
            _ => {}
        }
    }
    let unrevoke = match action.as_deref() {
        None | Some("revoke") => false,
        Some("unrevoke") => true,
        Some(_) => return None,
    };
    Some(FeedEntry {
        stream_id: text(stream_id),
        unrevoke,
        kind: kind?,
        id,
        rule,
        revoked_at,
    })
}
