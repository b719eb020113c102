//! Bounded per-key state: the one place where attacker-controlled keys meet memory.
//!
//! Keys are 64-bit hashes, seeded at random per process, of the key's value (a token id, a
//! subject, an address...), so the map stores no strings and an attacker cannot aim
//! collisions. Each slot remembers when its key was last seen (event time); a slot whose
//! retention has passed is dropped by [`KeyMap::sweep`], and when the map reaches its cap the
//! stalest tenth is evicted at once (counted), which keeps insertion O(1) amortised.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The keys are already hashes: hashing them again would only cost time.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Never fired.
pub const NEVER: i64 = i64::MIN;

pub struct Slot<T> {
    /// Newest event time seen for this key, ms.
    pub last_seen: i64,
    /// Event time of the last decision for this key, or [`NEVER`].
    pub fired_at: i64,
    pub data: T,
}

pub struct KeyMap<T> {
    map: IdMap<Slot<T>>,
    cap: usize,
    /// How long after `last_seen` a slot is still needed.
    retention_ms: i64,
    pub evictions: u64,
}

impl<T: Default> KeyMap<T> {
    pub fn new(cap: usize, retention_ms: i64) -> Self {
        KeyMap {
            map: IdMap::default(),
            cap: cap.max(10),
            retention_ms,
            evictions: 0,
        }
    }

    /// The slot for `key`, created empty if absent; `ts` refreshes its last-seen time.
    pub fn touch(&mut self, key: u64, ts: i64) -> &mut Slot<T> {
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            self.evict_stalest();
        }
        let slot = self.map.entry(key).or_insert_with(|| Slot {
            last_seen: ts,
            fired_at: NEVER,
            data: T::default(),
        });
        slot.last_seen = slot.last_seen.max(ts);
        slot
    }

    pub fn get(&self, key: u64) -> Option<&Slot<T>> {
        self.map.get(&key)
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut Slot<T>> {
        self.map.get_mut(&key)
    }

    /// Drops slots not seen within their retention before `now`.
    pub fn sweep(&mut self, now: i64) {
        let keep_after = now.saturating_sub(self.retention_ms);
        self.map.retain(|_, s| s.last_seen >= keep_after);
    }

    fn evict_stalest(&mut self) {
        let target = self.cap - self.cap / 10 - 1;
        let mut seen: Vec<i64> = self.map.values().map(|s| s.last_seen).collect();
        let n_drop = seen.len().saturating_sub(target);
        if n_drop == 0 {
            return;
        }
        let (_, cut, _) = seen.select_nth_unstable(n_drop - 1);
        let cut = *cut;
        let mut dropped = 0usize;
        self.map.retain(|_, s| {
            if s.last_seen <= cut && dropped < n_drop {
                dropped += 1;
                false
            } else {
                true
            }
        });
        self.evictions += dropped as u64;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Every slot, for a checkpoint.
    pub fn slots(&self) -> impl Iterator<Item = (u64, &Slot<T>)> {
        self.map.iter().map(|(k, s)| (*k, s))
    }

    /// Puts back a slot from a checkpoint (within the cap: beyond it, the slot is evicted).
    pub fn restore(&mut self, key: u64, slot: Slot<T>) {
        if self.map.len() >= self.cap {
            self.evictions += 1;
            return;
        }
        self.map.insert(key, slot);
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_drops_only_expired_slots() {
        let mut m: KeyMap<u8> = KeyMap::new(100, 1_000);
        m.touch(1, 0);
        m.touch(2, 500);
        m.touch(1, 100);
        m.sweep(1_200);
        assert_eq!(m.len(), 1, "key 1 last seen at 100 expired at 1100");
        assert!(m.get_mut(2).is_some());
    }

    #[test]
    fn the_cap_evicts_the_stalest_and_counts_it() {
        let mut m: KeyMap<u8> = KeyMap::new(100, i64::MAX / 2);
        for k in 0..100u64 {
            m.touch(k, k as i64);
        }
        assert_eq!(m.evictions, 0);
        m.touch(1000, 1000);
        assert!(m.len() <= 100);
        assert_eq!(m.evictions, 11);
        // the oldest went, the newest stayed
        assert!(m.get_mut(0).is_none());
        assert!(m.get_mut(99).is_some());
        assert!(m.get_mut(1000).is_some());
    }
}
