//! An in-memory revocation store with the Redis store's semantics, for `tokenwatch demo`
//! (nothing to install) and for tests of the service loop that are not about Redis.
//!
//! Same rules as the Lua script: a token is added once, a subject again only with a later
//! `not_before`, and the feed gets one entry per new revocation.

use std::collections::HashMap;

use super::redis::{Kind, Revocation};

#[derive(Debug, Default)]
pub struct MemoryStore {
    tokens: HashMap<String, Revocation>,
    subjects: HashMap<String, Revocation>,
    /// The feed: every new revocation, in order.
    pub feed: Vec<Revocation>,
}

impl MemoryStore {
    /// `true` when the revocation is new (and was appended to the feed).
    pub fn write(&mut self, r: &Revocation) -> bool {
        let new = match r.kind {
            Kind::Token => {
                if self.tokens.contains_key(&r.id) {
                    false
                } else {
                    self.tokens.insert(r.id.clone(), r.clone());
                    true
                }
            }
            Kind::Subject => match self.subjects.get(&r.id) {
                Some(old) if old.not_before >= r.not_before => false,
                _ => {
                    self.subjects.insert(r.id.clone(), r.clone());
                    true
                }
            },
        };
        if new {
            self.feed.push(r.clone());
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(kind: Kind, id: &str, nb: Option<i64>) -> Revocation {
        Revocation {
            kind,
            id: id.into(),
            rule: "r".into(),
            reason: "x".into(),
            iss: None,
            sub: None,
            jti: None,
            revoked_at: 1,
            expires_at: None,
            not_before: nb,
        }
    }

    #[test]
    fn same_semantics_as_the_redis_script() {
        let mut m = MemoryStore::default();
        assert!(m.write(&rev(Kind::Token, "a", None)));
        assert!(!m.write(&rev(Kind::Token, "a", None)));
        assert!(m.write(&rev(Kind::Subject, "s", Some(10))));
        assert!(!m.write(&rev(Kind::Subject, "s", Some(10))));
        assert!(!m.write(&rev(Kind::Subject, "s", Some(5))));
        assert!(m.write(&rev(Kind::Subject, "s", Some(11))));
        assert_eq!(m.feed.len(), 3);
    }
}
