//! Bounded per-key state: the one place where attacker-controlled keys meet memory.
//!
//! Keys are 64-bit hashes, seeded at random per process, of the key's value (a token id, a
//! subject, an address...), so the map stores no strings and an attacker cannot aim
//! collisions. Each slot remembers when its key was last seen (event time); a slot whose
//! retention has passed is dropped by [`KeyMap::sweep`].
//!
//! Two bounds, a count (`max_keys_per_rule`) and the heap the slots hold (`state_bytes`,
//! [`Heap`]). When a new key would pass either, a tenth is evicted at once (counted per
//! [`Class`]), which keeps insertion O(1) amortised. What goes first is what an attacker can
//! produce for free: slots fed only by unauthenticated events, stalest first; then slots with
//! authenticated evidence; slots with partial progress towards a revoking rule's threshold
//! (a token seen from 2 of 3 networks) last, and never to make room for an unauthenticated
//! key: such a key is refused instead (counted). So junk tokens, however many, cannot erase a
//! thief's half-detected token; only genuine tokens can compete with it.

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

/// What evidence a key has, in the order eviction spares it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// Fed only by events with `authenticated == false`: anyone can make these.
    #[default]
    Unauthenticated = 0,
    /// At least one authenticated event, no progress towards a revoking threshold.
    Authenticated = 1,
    /// Authenticated evidence with partial progress towards a revoking rule's threshold.
    Progress = 2,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Unauthenticated, Class::Authenticated, Class::Progress];

    /// The `class` label of `tokenwatch_evicted_keys_total`.
    pub fn name(self) -> &'static str {
        match self {
            Class::Unauthenticated => "unauthenticated",
            Class::Authenticated => "authenticated",
            Class::Progress => "progress",
        }
    }

    pub fn from_u8(n: u8) -> Option<Class> {
        Class::ALL.get(usize::from(n)).copied()
    }

    /// The class after an event: authenticated evidence is never forgotten; progress holds
    /// while the kind's state shows it (`progress`: only authenticated events feed revoking
    /// rules).
    pub fn after(self, authenticated: bool, progress: bool) -> Class {
        let authed = authenticated || self >= Class::Authenticated;
        match (authed, progress) {
            (true, true) => Class::Progress,
            (true, false) => Class::Authenticated,
            (false, _) => Class::Unauthenticated,
        }
    }
}

/// The heap a slot's data holds beyond the slot itself, for the byte budget.
pub trait Heap {
    fn heap_bytes(&self) -> usize;
}

impl Heap for () {
    fn heap_bytes(&self) -> usize {
        0
    }
}

pub struct Slot<T> {
    /// Newest event time seen for this key, ms.
    pub last_seen: i64,
    /// Event time of the last decision for this key, or [`NEVER`].
    pub fired_at: i64,
    pub class: Class,
    pub data: T,
}

pub struct KeyMap<T> {
    map: IdMap<Slot<T>>,
    cap: usize,
    /// The heap of the slots' data ([`Heap`]).
    data_bytes: usize,
    /// The table's capacity when it was last (re)built: `capacity()` shrinks as removals
    /// leave tombstones, while the allocation stays.
    table_cap: usize,
    /// Slots per class, so that a refusal is decided without a scan.
    per_class: [usize; 3],
    /// How long after `last_seen` a slot is still needed.
    retention_ms: i64,
    /// Slots evicted, per class.
    pub evicted: [u64; 3],
    /// New unauthenticated keys refused because every slot had progress.
    pub refused: u64,
}

impl<T: Default + Heap> KeyMap<T> {
    pub fn new(cap: usize, retention_ms: i64) -> Self {
        KeyMap {
            map: IdMap::default(),
            cap: cap.max(10),
            data_bytes: 0,
            table_cap: 0,
            per_class: [0; 3],
            retention_ms,
            evicted: [0; 3],
            refused: 0,
        }
    }

    const ENTRY: usize = std::mem::size_of::<(u64, Slot<T>)>();

    /// The heap of the table and of every slot's data.
    pub fn heap_bytes(&self) -> usize {
        crate::heap::table_bytes(self.table_cap, Self::ENTRY) + self.data_bytes
    }

    fn has_room(&self) -> bool {
        self.map.len() < self.cap
    }

    /// Whether the next new key makes the table double rather than use a free bucket or
    /// rehash in place (hashbrown does that when half of it is tombstones).
    fn would_grow(&self) -> bool {
        let len = self.map.len();
        self.map.capacity() <= len && len + 1 > self.table_cap / 2
    }

    /// Runs `f` on the slot for `key` (created empty if absent; `ts` refreshes its last-seen
    /// time), then accounts what the slot's data now holds. `None` when the key is new, the
    /// map is full and nothing may make room for it ([`Class`]): the key is refused.
    pub fn update<R>(
        &mut self,
        key: u64,
        ts: i64,
        authenticated: bool,
        f: impl FnOnce(&mut Slot<T>) -> R,
    ) -> Option<R> {
        let new = !self.map.contains_key(&key);
        let incoming = Class::Unauthenticated.after(authenticated, false);
        if new && !self.has_room() && !self.make_room(incoming, Some(key), self.cap - self.cap / 10 - 1, usize::MAX) {
            self.refused += 1;
            return None;
        }
        if new {
            let slot = Slot {
                last_seen: ts,
                fired_at: NEVER,
                class: Class::Unauthenticated,
                data: T::default(),
            };
            self.map.insert(key, slot);
            self.table_cap = self.table_cap.max(self.map.capacity());
            self.per_class[Class::Unauthenticated as usize] += 1;
        }
        let slot = self.map.get_mut(&key)?;
        let (bytes, class) = (slot.data.heap_bytes(), slot.class);
        slot.last_seen = slot.last_seen.max(ts);
        let r = f(slot);
        let (now_bytes, now_class) = (slot.data.heap_bytes(), slot.class);
        self.data_bytes = self.data_bytes + now_bytes - bytes;
        self.per_class[class as usize] -= usize::from(class != now_class);
        self.per_class[now_class as usize] += usize::from(class != now_class);
        Some(r)
    }

    /// Drops slots not seen within their retention before `now`.
    pub fn sweep(&mut self, now: i64) {
        let keep_after = now.saturating_sub(self.retention_ms);
        let (bytes, per_class) = (&mut self.data_bytes, &mut self.per_class);
        self.map.retain(|_, s| {
            let keep = s.last_seen >= keep_after;
            if !keep {
                *bytes -= s.data.heap_bytes();
                per_class[s.class as usize] -= 1;
            }
            keep
        });
    }

    /// Evicts slots until the heap is at most `bytes_target` (the engine's state budget,
    /// [`super::Engine`]), least valuable first as for the key cap, for an event of class
    /// `incoming`; `keep` stays. False when it could not get there.
    pub fn shed(&mut self, incoming: Class, keep: Option<u64>, bytes_target: usize) -> bool {
        self.make_room(incoming, keep, usize::MAX, bytes_target);
        self.heap_bytes() <= bytes_target
    }

    /// Evicts slots, least valuable first: by class, then stalest, until at most
    /// `keys_target` slots and `bytes_target` bytes are left. A slot with progress goes only
    /// for an authenticated key; `keep`, the key being fed, stays. False when there is still
    /// no room for one more key.
    fn make_room(&mut self, incoming: Class, keep: Option<u64>, keys_target: usize, bytes_target: usize) -> bool {
        let may_go = |c: Class| c < Class::Progress || incoming > Class::Unauthenticated;
        let movable: usize = Class::ALL
            .iter()
            .filter(|c| may_go(**c))
            .map(|c| self.per_class[*c as usize])
            .sum();
        if movable == 0 {
            return false;
        }
        let mut order: Vec<(Class, i64, u64)> = self
            .map
            .iter()
            .filter(|(k, s)| may_go(s.class) && Some(**k) != keep)
            .map(|(k, s)| (s.class, s.last_seen, *k))
            .collect();
        order.sort_unstable();
        for (_, _, key) in order {
            if self.map.len() <= keys_target && self.heap_bytes() <= bytes_target {
                break;
            }
            if let Some(s) = self.map.remove(&key) {
                self.data_bytes -= s.data.heap_bytes();
                self.per_class[s.class as usize] -= 1;
                self.evicted[s.class as usize] += 1;
            }
        }
        // A table grown for more keys than the budget now holds is given back (when a new
        // one would be smaller), and one whose free buckets are all tombstones is rebuilt
        // rather than doubled.
        let table = |cap| crate::heap::table_bytes(cap, Self::ENTRY);
        let smaller = table(self.map.len() + 1) < table(self.table_cap);
        if (self.heap_bytes() > bytes_target && smaller) || self.would_grow() {
            // (`shrink_to_fit` keeps a table of the same size, tombstones and all.)
            let mut fresh = IdMap::with_capacity_and_hasher(self.map.len() + 1, Default::default());
            fresh.extend(self.map.drain());
            self.map = fresh;
            self.table_cap = self.map.capacity();
        }
        self.has_room()
    }

    /// Puts back a slot from a checkpoint (within the bounds: beyond them, the slot is
    /// evicted).
    pub fn restore(&mut self, key: u64, slot: Slot<T>) {
        if !self.has_room() {
            self.evicted[slot.class as usize] += 1;
            return;
        }
        self.data_bytes += slot.data.heap_bytes();
        self.per_class[slot.class as usize] += 1;
        if let Some(old) = self.map.insert(key, slot) {
            self.data_bytes -= old.data.heap_bytes();
            self.per_class[old.class as usize] -= 1;
        }
        self.table_cap = self.table_cap.max(self.map.capacity());
    }
}

impl<T> KeyMap<T> {
    pub fn get(&self, key: u64) -> Option<&Slot<T>> {
        self.map.get(&key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every slot, for a checkpoint.
    pub fn slots(&self) -> impl Iterator<Item = (u64, &Slot<T>)> {
        self.map.iter().map(|(k, s)| (*k, s))
    }

    /// Slots evicted over all classes.
    pub fn evictions(&self) -> u64 {
        self.evicted.iter().sum()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    impl Heap for u8 {
        fn heap_bytes(&self) -> usize {
            usize::from(*self)
        }
    }

    /// Feeds `key` once; `progress` is what the kind's step would show.
    fn feed(m: &mut KeyMap<u8>, key: u64, ts: i64, authenticated: bool, progress: bool) -> bool {
        m.update(key, ts, authenticated, |s| {
            s.class = s.class.after(authenticated, progress);
        })
        .is_some()
    }

    #[test]
    fn sweep_drops_only_expired_slots() {
        let mut m: KeyMap<u8> = KeyMap::new(100, 1_000);
        feed(&mut m, 1, 0, false, false);
        feed(&mut m, 2, 500, false, false);
        feed(&mut m, 1, 100, false, false);
        m.sweep(1_200);
        assert_eq!(m.len(), 1, "key 1 last seen at 100 expired at 1100");
        assert!(m.get(2).is_some());
        assert_eq!(m.per_class, [1, 0, 0]);
    }

    #[test]
    fn the_cap_evicts_the_stalest_and_counts_it() {
        let mut m: KeyMap<u8> = KeyMap::new(100, i64::MAX / 2);
        for k in 0..100u64 {
            feed(&mut m, k, k as i64, false, false);
        }
        assert_eq!(m.evictions(), 0);
        feed(&mut m, 1000, 1000, false, false);
        assert!(m.len() <= 100);
        assert_eq!(m.evicted, [11, 0, 0]);
        // the oldest went, the newest stayed
        assert!(m.get(0).is_none());
        assert!(m.get(99).is_some());
        assert!(m.get(1000).is_some());
    }

    #[test]
    fn unauthenticated_keys_go_first_and_never_push_out_progress() {
        let mut m: KeyMap<u8> = KeyMap::new(10, i64::MAX / 2);
        // the oldest: a key with progress, then one with authenticated evidence
        assert!(feed(&mut m, 1, 0, true, true));
        assert!(feed(&mut m, 2, 1, true, false));
        for k in 10..200u64 {
            feed(&mut m, k, k as i64, false, false);
        }
        assert!(m.get(1).is_some() && m.get(2).is_some(), "junk evicted genuine keys");
        assert_eq!(m.evicted[1..], [0, 0]);
        // With only progress left, an unauthenticated key is refused, an authenticated one
        // makes room.
        let mut full: KeyMap<u8> = KeyMap::new(10, i64::MAX / 2);
        for k in 0..10u64 {
            assert!(feed(&mut full, k, k as i64, true, true));
        }
        assert!(!feed(&mut full, 100, 100, false, false));
        assert_eq!((full.refused, full.len()), (1, 10));
        assert!(feed(&mut full, 101, 101, true, false));
        assert_eq!(full.evicted, [0, 0, 2]);
        assert!(full.get(0).is_none() && full.get(9).is_some());
        // an authenticated key evicts unauthenticated ones before authenticated ones
        let mut mixed: KeyMap<u8> = KeyMap::new(10, i64::MAX / 2);
        for k in 0..10u64 {
            feed(&mut mixed, k, k as i64, k % 2 == 0, false);
        }
        feed(&mut mixed, 100, 100, true, false);
        assert_eq!(mixed.evicted, [2, 0, 0]);
        assert!(mixed.get(0).is_some() && mixed.get(1).is_none() && mixed.get(3).is_none());
    }

    #[test]
    fn shedding_bytes_evicts_and_accounts_the_data() {
        let entry = KeyMap::<u8>::ENTRY;
        let budget = crate::heap::table_bytes(56, entry) + 50 * 200;
        let mut m: KeyMap<u8> = KeyMap::new(1_000, i64::MAX / 2);
        for k in 0..1_000u64 {
            m.update(k, k as i64, false, |s| s.data = 200);
            if m.heap_bytes() > budget {
                assert!(m.shed(Class::Unauthenticated, Some(k), budget - budget / 10));
                assert!(m.get(k).is_some());
            }
            assert!(m.heap_bytes() <= budget, "{} > {budget}", m.heap_bytes());
        }
        assert!(m.len() < 60 && m.evictions() > 900, "{} {}", m.len(), m.evictions());
        assert_eq!(m.refused, 0);
        let data: usize = m.slots().map(|(_, s)| usize::from(s.data)).sum();
        assert_eq!(m.data_bytes, data);
    }

    #[test]
    fn a_class_is_kept_by_authenticated_evidence_and_progress_comes_and_goes() {
        let c = Class::Unauthenticated;
        assert_eq!(c.after(false, true), Class::Unauthenticated);
        assert_eq!(c.after(true, false), Class::Authenticated);
        assert_eq!(c.after(true, true).after(false, false), Class::Authenticated);
        assert_eq!(Class::Authenticated.after(false, true), Class::Progress);
        for c in Class::ALL {
            assert_eq!(Class::from_u8(c as u8), Some(c));
        }
        assert_eq!(Class::from_u8(3), None);
    }
}
