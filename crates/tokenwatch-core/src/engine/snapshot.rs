//! The engine's state as bytes, for checkpoints: every rule's windows and cooldowns, and the
//! revoked-token memory.
//!
//! The encoding is compact and hand-rolled (varints, times as deltas from the key's last
//! event), because a checkpoint holds one entry per live token and is written every few
//! seconds. Keys are the engine's 64-bit hashes, so the hasher's seeds travel with the state;
//! a checkpoint holds no token, subject or address in clear, only what decisions already
//! show (the `distinct_count` values, redacted as they are in memory).
//!
//! Restoring is all or nothing: everything is decoded into new structures first and swapped
//! in only when the whole input checked out; any damage is a [`SnapshotError`] and the engine
//! is left as it was. Each rule's state is tagged with its id and a fingerprint of the parts
//! of its definition that shape the state (kind, key, cooldown): a rule whose definition
//! changed since the checkpoint starts empty, as on a hot reload, and the others keep theirs.
//!
//! Each rule's revocation budget (its recent enforced revocations and whether it tripped)
//! travels with its state: a rule that tripped to shadow before a restart must not come back
//! enforcing, or a restart would re-arm a runaway rule that only an operator or a reload may
//! re-arm. Keys carry their eviction class, revocations their feed id (so an `unrevoke` can
//! reach a restored one), and the aggregation groups and the posture state (signing keys'
//! first-seen times) follow.
//!
//! The keys are hashes under [`crate::hash::Seeded`], whose values do not depend on how
//! tokenwatch was built: a checkpoint written by one instance is read by whichever instance
//! a rebalance gives the partition, whatever its CPU or build. State written by earlier
//! versions, whose keys were `ahash` values that did depend on it, is refused by the
//! checkpoint's format version (the service's `checkpoint` module).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::budget::BudgetState;
use super::count::CountState;
use super::distinct::{DVal, DistinctState};
use super::keymap::{Class, Heap, KeyMap, Slot, NEVER};
use super::revoked::Revoked;
use super::state::{each_kind, State};
use super::velocity::{Sample, VelocityState};
use super::Engine;
use crate::input::GeoPoint;
use crate::rules::Rule;

/// What is wrong with a snapshot; the engine is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("engine state ends early (at byte {0}): the checkpoint is truncated")]
    Truncated(usize),
    #[error("engine state is malformed at byte {at}: {what}")]
    Invalid { at: usize, what: &'static str },
}

/// How a restore went, rule by rule.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Rules whose state came back.
    pub rules_kept: usize,
    /// Rules loaded now that the checkpoint has no state for (new, or changed since).
    pub rules_empty: usize,
    /// Keys restored over all rules, and revocations remembered.
    pub keys: usize,
    pub revocations: usize,
}

/// A fingerprint of what shapes a rule's state.
fn fingerprint(rule: &Rule) -> [u8; 16] {
    let text = format!(
        "{}\u{0}{:?}\u{0}{:?}\u{0}{:?}",
        rule.id, rule.kind, rule.key, rule.cooldown
    );
    let d = Sha256::digest(text.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// Appends to a byte buffer.
pub struct Enc<'a>(pub &'a mut Vec<u8>);

impl Enc<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn varu(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    pub fn vari(&mut self, v: i64) {
        self.varu(((v << 1) ^ (v >> 63)) as u64);
    }
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.varu(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    pub(crate) fn ip(&mut self, ip: &IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                self.u8(4);
                self.0.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.0.extend_from_slice(&a.octets());
            }
        }
    }
}

/// Reads what [`Enc`] wrote; every read checks the bounds.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn done(&self) -> bool {
        self.pos == self.buf.len()
    }
    /// The bytes not read yet, left unread.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
    pub fn invalid(&self, what: &'static str) -> SnapshotError {
        SnapshotError::Invalid { at: self.pos, what }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.buf.len() - self.pos < n {
            return Err(SnapshotError::Truncated(self.buf.len()));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    pub fn varu(&mut self) -> Result<u64, SnapshotError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.invalid("a number runs past 64 bits"))
    }
    pub fn vari(&mut self) -> Result<i64, SnapshotError> {
        let u = self.varu()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
    pub fn f64(&mut self) -> Result<f64, SnapshotError> {
        Ok(f64::from_bits(self.u64()?))
    }
    /// A count of items each at least `min_bytes` long: never more than the bytes left can
    /// hold, so a corrupt count cannot make a huge allocation.
    pub fn count(&mut self, min_bytes: usize) -> Result<usize, SnapshotError> {
        let n = self.varu()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_bytes.max(1) as u64) > left {
            return Err(self.invalid("a count larger than the data"));
        }
        Ok(n as usize)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = self.count(1)?;
        self.take(n)
    }
    pub fn str(&mut self) -> Result<&'a str, SnapshotError> {
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| self.invalid("text is not UTF-8"))
    }
    pub(crate) fn ip(&mut self) -> Result<IpAddr, SnapshotError> {
        let family = self.u8()?;
        self.ip_of(family)
    }
    fn ip_of(&mut self, family: u8) -> Result<IpAddr, SnapshotError> {
        match family {
            4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(self.take(4)?);
                Ok(IpAddr::from(b))
            }
            6 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(self.take(16)?);
                Ok(IpAddr::from(b))
            }
            _ => Err(self.invalid("unknown address family")),
        }
    }
}

/// One kind's per-key data, with times relative to the key's last event.
trait Persist: Sized + Default + Heap {
    /// Tags the rule's state in a checkpoint (`match` and `revoked_use` share the empty one).
    const TAG: u8;
    fn put(&self, e: &mut Enc<'_>, base: i64);
    fn get(d: &mut Dec<'_>, base: i64) -> Result<Self, SnapshotError>;
}

impl Persist for () {
    const TAG: u8 = 0;
    fn put(&self, _: &mut Enc<'_>, _: i64) {}
    fn get(_: &mut Dec<'_>, _: i64) -> Result<Self, SnapshotError> {
        Ok(())
    }
}

impl Persist for CountState {
    const TAG: u8 = 1;
    fn put(&self, e: &mut Enc<'_>, base: i64) {
        e.varu(self.ts.len() as u64);
        for t in &self.ts {
            e.vari(base.wrapping_sub(*t));
        }
    }
    fn get(d: &mut Dec<'_>, base: i64) -> Result<Self, SnapshotError> {
        let n = d.count(1)?;
        let mut ts = Vec::with_capacity(n);
        for _ in 0..n {
            ts.push(base.wrapping_sub(d.vari()?));
        }
        if !ts.is_sorted() {
            return Err(d.invalid("count window out of order"));
        }
        Ok(CountState { ts })
    }
}

impl Persist for DistinctState {
    const TAG: u8 = 2;
    fn put(&self, e: &mut Enc<'_>, base: i64) {
        e.varu(self.vals.len() as u64);
        for (t, v) in &self.vals {
            e.vari(base.wrapping_sub(*t));
            match v {
                DVal::Net(n) => {
                    e.u8(0);
                    e.ip(&n.addr());
                    e.u8(n.prefix_len());
                }
                DVal::Ip(ip) => {
                    e.u8(1);
                    e.ip(ip);
                }
                DVal::Num(x) => {
                    e.u8(2);
                    e.f64(*x);
                }
                DVal::Bool(b) => {
                    e.u8(3);
                    e.u8(u8::from(*b));
                }
                DVal::Str { hash, shown } => {
                    e.u8(4);
                    e.u64(*hash);
                    e.bytes(shown.as_bytes());
                }
            }
        }
    }
    fn get(d: &mut Dec<'_>, base: i64) -> Result<Self, SnapshotError> {
        let n = d.count(2)?;
        let mut vals = Vec::with_capacity(n);
        for _ in 0..n {
            let t = base.wrapping_sub(d.vari()?);
            let v = match d.u8()? {
                0 => {
                    let ip = d.ip()?;
                    let len = d.u8()?;
                    DVal::Net(ipnet::IpNet::new(ip, len).map_err(|_| d.invalid("network prefix too long"))?)
                }
                1 => DVal::Ip(d.ip()?),
                2 => DVal::Num(d.f64()?),
                3 => DVal::Bool(d.u8()? != 0),
                4 => DVal::Str {
                    hash: d.u64()?,
                    shown: d.str()?.into(),
                },
                _ => return Err(d.invalid("unknown value type")),
            };
            vals.push((t, v));
        }
        Ok(DistinctState { vals })
    }
}

impl Persist for VelocityState {
    const TAG: u8 = 3;
    fn put(&self, e: &mut Enc<'_>, base: i64) {
        e.varu(self.samples.len() as u64);
        for s in &self.samples {
            e.vari(base.wrapping_sub(s.ts));
            e.f64(s.at.lat);
            e.f64(s.at.lon);
            e.f64(s.at.accuracy_km);
            match &s.ip {
                Some(ip) => e.ip(ip),
                None => e.u8(0),
            }
        }
    }
    fn get(d: &mut Dec<'_>, base: i64) -> Result<Self, SnapshotError> {
        let n = d.count(26)?;
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let ts = base.wrapping_sub(d.vari()?);
            let at = GeoPoint {
                lat: d.f64()?,
                lon: d.f64()?,
                accuracy_km: d.f64()?,
            };
            let ip = match d.u8()? {
                0 => None,
                family => Some(d.ip_of(family)?),
            };
            samples.push(Sample { ts, at, ip });
        }
        if !samples.is_sorted_by_key(|s| s.ts) {
            return Err(d.invalid("travel samples out of order"));
        }
        Ok(VelocityState { samples })
    }
}

fn put_map<T: Persist>(e: &mut Enc<'_>, m: &KeyMap<T>) {
    e.varu(m.len() as u64);
    for (key, slot) in m.slots() {
        e.u64(key);
        e.vari(slot.last_seen);
        // 0: never fired; else how long before the last event it fired, plus one.
        e.varu(if slot.fired_at == NEVER {
            0
        } else {
            slot.last_seen.wrapping_sub(slot.fired_at).wrapping_add(1) as u64
        });
        e.u8(slot.class as u8);
        slot.data.put(e, slot.last_seen);
    }
}

fn put_state<T: Persist>(e: &mut Enc<'_>, m: &KeyMap<T>) {
    e.u8(T::TAG);
    put_map(e, m);
}

fn get_map<T: Persist>(d: &mut Dec<'_>, into: &mut KeyMap<T>) -> Result<(), SnapshotError> {
    let n = d.count(10)?;
    for _ in 0..n {
        let key = d.u64()?;
        let last_seen = d.vari()?;
        let fired = d.varu()?;
        let fired_at = if fired == 0 {
            NEVER
        } else {
            last_seen.wrapping_sub((fired - 1) as i64)
        };
        let class = Class::from_u8(d.u8()?).ok_or_else(|| d.invalid("unknown key class"))?;
        let data = T::get(d, last_seen)?;
        into.restore(
            key,
            Slot {
                last_seen,
                fired_at,
                class,
                data,
            },
        );
    }
    Ok(())
}

/// Decodes a rule's keys into `into`, whose tag must be `tag`.
fn get_state<T: Persist>(d: &mut Dec<'_>, tag: u8, into: &mut KeyMap<T>) -> Result<(), SnapshotError> {
    if tag > VelocityState::TAG {
        return Err(d.invalid("unknown rule state kind"));
    }
    if tag != T::TAG {
        return Err(d.invalid("a rule's state is of another kind than the rule"));
    }
    get_map(d, into)
}

/// Decodes, to check it, the state of a rule that is no longer loaded.
fn skip_state(d: &mut Dec<'_>, tag: u8) -> Result<(), SnapshotError> {
    fn skip<T: Persist>(d: &mut Dec<'_>) -> Result<(), SnapshotError> {
        get_map::<T>(d, &mut KeyMap::new(usize::MAX, 0))
    }
    match tag {
        <() as Persist>::TAG => skip::<()>(d),
        CountState::TAG => skip::<CountState>(d),
        DistinctState::TAG => skip::<DistinctState>(d),
        VelocityState::TAG => skip::<VelocityState>(d),
        _ => Err(d.invalid("unknown rule state kind")),
    }
}

/// A budget: whether (and when) it tripped, then its window as deltas from the previous time.
fn put_budget(e: &mut Enc<'_>, b: &BudgetState) {
    match b.tripped_at() {
        None => e.u8(0),
        Some(t) => {
            e.u8(1);
            e.vari(t);
        }
    }
    e.varu(b.recent().len() as u64);
    let mut prev = 0i64;
    for t in b.recent() {
        e.vari(t.wrapping_sub(prev));
        prev = t;
    }
}

fn get_budget(d: &mut Dec<'_>) -> Result<BudgetState, SnapshotError> {
    let tripped_at = match d.u8()? {
        0 => None,
        1 => Some(d.vari()?),
        _ => return Err(d.invalid("a budget's trip flag is neither 0 nor 1")),
    };
    let n = d.count(1)?;
    let mut recent = VecDeque::with_capacity(n);
    let mut prev = 0i64;
    for _ in 0..n {
        prev = prev.wrapping_add(d.vari()?);
        recent.push_back(prev);
    }
    if !recent.iter().is_sorted() {
        return Err(d.invalid("budget window out of order"));
    }
    Ok(BudgetState::from_parts(recent, tripped_at))
}

fn put_revoked(e: &mut Enc<'_>, m: &super::revoked::Memory) {
    e.varu(m.len() as u64);
    for (key, r) in m.iter() {
        e.u64(*key);
        e.bytes(r.rule.as_bytes());
        e.vari(r.revoked_at_ms);
        e.vari(r.until_ms);
        e.vari(r.not_before_s);
        e.u64(r.feed_id);
    }
}

fn get_revoked(d: &mut Dec<'_>, rules: &[Rule]) -> Result<Vec<(u64, Revoked)>, SnapshotError> {
    let n = d.count(20)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let key = d.u64()?;
        let name = d.str()?;
        // Share the loaded rule's id where there is one; a rule since removed keeps its name.
        let rule = rules
            .iter()
            .find(|r| &*r.id == name)
            .map(|r| r.id.clone())
            .unwrap_or_else(|| Arc::from(name));
        out.push((
            key,
            Revoked {
                rule,
                revoked_at_ms: d.vari()?,
                until_ms: d.vari()?,
                not_before_s: d.vari()?,
                feed_id: d.u64()?,
            },
        ));
    }
    Ok(out)
}

/// The aggregation groups of unauthenticated critical decisions ([`super::aggregate`]).
fn put_groups(e: &mut Enc<'_>, a: &super::aggregate::Aggregator) {
    e.varu(a.groups.len() as u64);
    for (key, g) in &a.groups {
        e.u64(*key);
        e.vari(g.start_ms);
        e.varu(g.count);
    }
}

fn get_groups(d: &mut Dec<'_>) -> Result<super::keymap::IdMap<super::aggregate::Group>, SnapshotError> {
    let n = d.count(10)?;
    let mut out = super::keymap::IdMap::default();
    for _ in 0..n {
        let key = d.u64()?;
        let g = super::aggregate::Group {
            start_ms: d.vari()?,
            count: d.varu()?,
        };
        out.insert(key, g);
    }
    Ok(out)
}

impl Engine {
    /// Appends the engine's state to `out`.
    pub fn snapshot(&self, out: &mut Vec<u8>) {
        let mut e = Enc(out);
        for s in self.seeds {
            e.u64(s);
        }
        e.vari(self.newest);
        e.vari(self.next_sweep);
        e.varu(self.rules.rules.len() as u64);
        for ((rule, state), budget) in self.rules.rules.iter().zip(&self.states).zip(&self.budgets) {
            e.0.extend_from_slice(&fingerprint(rule));
            each_kind!(state, k => put_state(&mut e, &k.keys));
            put_budget(&mut e, budget);
        }
        put_revoked(&mut e, &self.revoked.tokens);
        put_revoked(&mut e, &self.revoked.subjects);
        put_groups(&mut e, &self.aggregate);
        put_posture(&mut e, &self.posture_state);
    }

    /// Replaces the engine's state with a snapshot's (of this build's layout); on error,
    /// nothing changes.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<Restored, SnapshotError> {
        let mut d = Dec::new(bytes);
        let seeds = [d.u64()?, d.u64()?, d.u64()?, d.u64()?];
        let newest = d.vari()?;
        let next_sweep = d.vari()?;
        let mut saved = self.get_rule_states(&mut d)?;
        let tokens = get_revoked(&mut d, &self.rules.rules)?;
        let subjects = get_revoked(&mut d, &self.rules.rules)?;
        let (groups, posture) = (get_groups(&mut d)?, get_posture(&mut d)?);
        if !d.done() {
            return Err(d.invalid("bytes after the end of the engine state"));
        }
        // Everything checked out: swap it in.
        let mut report = Restored::default();
        let mut states = Vec::with_capacity(self.rules.rules.len());
        let mut budgets = Vec::with_capacity(self.rules.rules.len());
        for r in &self.rules.rules {
            let fp = fingerprint(r);
            match saved.iter().position(|(f, _, _)| *f == fp) {
                Some(i) => {
                    let (_, s, b) = saved.swap_remove(i);
                    report.rules_kept += 1;
                    report.keys += s.len();
                    states.push(s);
                    budgets.push(b);
                }
                None => {
                    report.rules_empty += 1;
                    states.push(State::for_rule(r, &self.cfg));
                    budgets.push(BudgetState::default());
                }
            }
        }
        self.states = states;
        self.recount_keys_heap();
        self.budgets = budgets;
        self.seeds = seeds;
        self.hasher = crate::hash::Seeded::with_seeds(seeds);
        self.newest = newest;
        self.next_sweep = next_sweep;
        self.revoked = super::revoked::Revocations::new(self.cfg.max_revocations);
        for (k, r) in tokens {
            self.revoked.revoke_token(k, r);
        }
        for (k, r) in subjects {
            self.revoked.revoke_subject(k, r);
        }
        report.revocations = self.revoked.len();
        self.aggregate.groups = groups;
        self.posture_state = posture;
        Ok(report)
    }

    /// Each saved rule's state and budget, decoded into the shape (kind, cap, retention) of
    /// the loaded rule with the same fingerprint; the state of a rule not loaded (or changed)
    /// is decoded only to be checked, and dropped.
    fn get_rule_states(&self, d: &mut Dec<'_>) -> Result<Vec<([u8; 16], State, BudgetState)>, SnapshotError> {
        let n = d.count(17)?;
        let mut saved: Vec<([u8; 16], State, BudgetState)> = Vec::with_capacity(n);
        for _ in 0..n {
            let mut fp = [0u8; 16];
            fp.copy_from_slice(d.take(16)?);
            let tag = d.u8()?;
            let shape = self
                .rules
                .rules
                .iter()
                .find(|r| fingerprint(r) == fp)
                .map(|r| State::for_rule(r, &self.cfg));
            match shape {
                Some(mut state) => {
                    each_kind!(&mut state, k => get_state(d, tag, &mut k.keys))?;
                    saved.push((fp, state, get_budget(d)?));
                }
                None => {
                    skip_state(d, tag)?;
                    get_budget(d)?;
                }
            }
        }
        Ok(saved)
    }
}

/// The posture section: key first-seen times (absolute ms), then asymmetric issuers.
fn put_posture(e: &mut Enc<'_>, p: &super::posture::PostureState) {
    let mut keys: Vec<_> = p.first_seen.iter().collect();
    keys.sort_unstable();
    e.varu(keys.len() as u64);
    for (k, t) in keys {
        e.u64(*k);
        e.vari(*t);
    }
    let mut issuers: Vec<_> = p.asymmetric_issuers.iter().collect();
    issuers.sort_unstable();
    e.varu(issuers.len() as u64);
    for k in issuers {
        e.u64(*k);
    }
}

fn get_posture(d: &mut Dec<'_>) -> Result<super::posture::PostureState, SnapshotError> {
    let mut p = super::posture::PostureState::default();
    let n = d.count(9)?;
    if n > super::posture::MAX_KEYS {
        return Err(d.invalid("more signing keys than the engine tracks"));
    }
    for _ in 0..n {
        let k = d.u64()?;
        let t = d.vari()?;
        p.first_seen.insert(k, t);
    }
    let n = d.count(8)?;
    if n > super::posture::MAX_ISSUERS {
        return Err(d.invalid("more issuers than the engine tracks"));
    }
    for _ in 0..n {
        p.asymmetric_issuers.insert(d.u64()?);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::engine::EngineConfig;
    use crate::rules::{load_str, RuleSet};

    #[test]
    fn a_rule_state_of_another_kind_than_its_rule_is_refused() {
        let yaml = "id: c\nseverity: low\naction: alert\nkind: count\nkey: token_id\nthreshold: 2\nwindow: 1m\n";
        let rules = Arc::new(RuleSet {
            rules: load_str(Path::new("r.yaml"), yaml).unwrap(),
            files: 1,
        });
        let mut engine = Engine::new(rules, EngineConfig::default());
        let mut bytes = Vec::new();
        engine.snapshot(&mut bytes);
        // seeds, newest, next sweep, one rule: then its fingerprint and its tag
        let mut head = Vec::new();
        let mut e = Enc(&mut head);
        for _ in 0..4 {
            e.u64(0);
        }
        e.vari(i64::MIN);
        e.vari(i64::MIN);
        e.varu(1);
        let at = head.len() + 16;
        assert_eq!(bytes[at], CountState::TAG);
        bytes[at] = DistinctState::TAG;
        let err = engine.restore(&bytes).unwrap_err();
        assert!(err.to_string().contains("another kind than the rule"), "{err}");
        bytes[at] = 9;
        let err = engine.restore(&bytes).unwrap_err();
        assert!(err.to_string().contains("unknown rule state kind"), "{err}");
    }
}
