//! A rule's per-key state, shaped by its kind, and the one step every kind shares.
//!
//! Each kind lives in its own file ([`super::matching`], [`super::count`],
//! [`super::distinct`], [`super::velocity`], [`super::revoked`]) and implements [`KindStep`]:
//! what it reads from an event, how it updates one key's state, and the reason and evidence
//! of its decision. What is common to every kind — touching the key, the cooldown, lateness —
//! is done once, here, by [`Keyed::run`].
//!
//! [`State::for_rule`] is the one place a rule's [`Kind`] becomes engine state: each variant
//! carries the kind's compiled parameters beside its keys, so the step never looks at the
//! rule's `kind` again and a rule cannot meet the state of another kind. The enum is matched
//! once per rule and event (no dynamic dispatch, no allocation).

use serde_json::Value;

use super::count::Count;
use super::distinct::Distinct;
use super::keymap::{Class, Heap, KeyMap, Slot, NEVER};
use super::matching::Matching;
use super::revoked::{Revocations, RevokedUse};
use super::velocity::{Limits, Velocity};
use super::{EngineConfig, Fired, KeyMemo, FOREVER_RETENTION_MS};
use crate::rules::{Action, Cooldown, Ctx, Kind, Rule};

/// What a kind may consult besides the event and its own state: the engine's memory of
/// revocations, and the event's token and subject keys (hashed at most once per event).
pub(super) struct Env<'a> {
    pub revoked: &'a Revocations,
    pub hasher: &'a crate::hash::Seeded,
    pub memo: &'a mut KeyMemo,
}

/// What `explain` shows of one key's state after an event.
pub(super) struct View {
    /// The window (or samples) for the key.
    pub window: Vec<Value>,
    /// Progress towards the threshold, when the kind has one.
    pub progress: Option<String>,
    /// Why the rule did not fire, when the key is not cooling down.
    pub why_not: String,
}

/// One rule kind's step for one key.
pub(super) trait KindStep {
    /// The state of one key.
    type Data: Default + Heap;
    /// What the kind reads from the event before it touches the key.
    type Input<'e>;
    /// What a step that would fire found, borrowed from the key's state.
    type Hit<'s>;
    /// Whether events later than the allowed lateness reach the step: only kinds without
    /// windows, which a stale event cannot corrupt.
    const SEES_LATE: bool;

    /// The event's input to the step; `None` leaves the key alone (neither created nor
    /// refreshed).
    fn input<'e>(&self, cx: &'e Ctx<'e>, env: &mut Env<'_>) -> Option<Self::Input<'e>>;
    /// Updates the key's state with the event; what fires, if anything (before the
    /// cooldown, which is not the kind's business).
    fn step<'s>(&self, data: &'s mut Self::Data, ts: i64, input: Self::Input<'_>) -> Option<Self::Hit<'s>>;
    /// The reason and evidence of a decision (allocates: only once it fires).
    fn fired(&self, rule: &Rule, cx: &Ctx<'_>, hit: Self::Hit<'_>) -> Fired;
    /// For `explain`: the key's state after the event.
    fn view(&self, data: Option<&Self::Data>, cx: &Ctx<'_>) -> View;
    /// Whether the key's state is partway to the threshold (two or more of N): such keys of
    /// revoking rules are the last to be evicted ([`super::keymap::Class::Progress`]).
    fn progress(&self, _data: &Self::Data) -> bool {
        false
    }
}

/// A kind's compiled parameters and its keys.
pub(super) struct Keyed<K: KindStep> {
    pub kind: K,
    pub keys: KeyMap<K::Data>,
}

impl<K: KindStep> Keyed<K> {
    fn new(kind: K, cap: usize, retention_ms: i64) -> Self {
        Keyed {
            kind,
            keys: KeyMap::new(cap, retention_ms),
        }
    }

    /// The step every kind shares: lateness, the key, the kind's own step, the cooldown, and
    /// the key's [`super::keymap::Class`] for eviction.
    fn run(&mut self, rule: &Rule, cx: &Ctx<'_>, key: u64, late: bool, env: &mut Env<'_>) -> Option<Fired> {
        if late && !K::SEES_LATE {
            return None;
        }
        let input = self.kind.input(cx, env)?;
        let ts = cx.ev.ts_ms;
        let (kind, auth) = (&self.kind, cx.ev.authenticated);
        let revoking = rule.action != Action::Alert;
        // Every event that reaches the step refreshes the key, so a `forever` cooldown
        // lasts as long as the key stays in use, not 24 h after it first fired.
        self.keys.update(key, ts, auth, |slot| {
            let fired = match kind.step(&mut slot.data, ts, input) {
                Some(hit) if cooled_down(rule.cooldown, slot.fired_at, ts) => {
                    slot.fired_at = ts;
                    Some(kind.fired(rule, cx, hit))
                }
                _ => None,
            };
            slot.class = slot.class.after(auth, revoking && kind.progress(&slot.data));
            fired
        })?
    }

    fn view(&self, key: u64, cx: &Ctx<'_>) -> (View, Option<i64>) {
        let slot = self.keys.get(key);
        let view = self.kind.view(slot.map(|s: &Slot<K::Data>| &s.data), cx);
        (view, slot.map(|s| s.fired_at))
    }
}

/// The cooldown, for every kind: whether a key that last fired at `fired_at` may fire at `ts`.
fn cooled_down(cooldown: Cooldown, fired_at: i64, ts: i64) -> bool {
    match cooldown {
        _ if fired_at == NEVER => true,
        Cooldown::Forever => false,
        Cooldown::Ms(c) => ts >= fired_at.saturating_add(c),
    }
}

/// One rule's state: its kind's parameters and its keys.
pub(super) enum State {
    Match(Keyed<Matching>),
    Count(Keyed<Count>),
    Distinct(Keyed<Distinct>),
    Velocity(Keyed<Velocity>),
    RevokedUse(Keyed<RevokedUse>),
}

/// Runs `$body` with `$k` bound to the [`Keyed`] of whatever kind `$state` is.
macro_rules! each_kind {
    ($state:expr, $k:ident => $body:expr) => {
        match $state {
            State::Match($k) => $body,
            State::Count($k) => $body,
            State::Distinct($k) => $body,
            State::Velocity($k) => $body,
            State::RevokedUse($k) => $body,
        }
    };
}
pub(super) use each_kind;

impl State {
    /// The empty state of `rule`, built from its kind.
    pub fn for_rule(rule: &Rule, cfg: &EngineConfig) -> State {
        let cooldown = match rule.cooldown {
            Cooldown::Forever => FOREVER_RETENTION_MS,
            Cooldown::Ms(ms) => ms,
        };
        let retention = rule.kind.window_ms().max(cooldown) + cfg.lateness_ms;
        let cap = cfg.max_keys_per_rule;
        match &rule.kind {
            Kind::Match => State::Match(Keyed::new(Matching, cap, retention)),
            Kind::Count { threshold, window_ms } => State::Count(Keyed::new(
                Count {
                    threshold: *threshold,
                    window_ms: *window_ms,
                },
                cap,
                retention,
            )),
            Kind::DistinctCount {
                field,
                threshold,
                window_ms,
            } => State::Distinct(Keyed::new(
                Distinct {
                    field: field.clone(),
                    threshold: *threshold,
                    window_ms: *window_ms,
                },
                cap,
                retention,
            )),
            Kind::GeoVelocity {
                max_gap_ms,
                min_distance_km,
                max_speed_kmh,
                min_time_ms,
            } => State::Velocity(Keyed::new(
                Velocity(Limits {
                    max_gap_ms: *max_gap_ms,
                    min_distance_km: *min_distance_km,
                    max_speed_kmh: *max_speed_kmh,
                    min_time_ms: *min_time_ms,
                    lateness_ms: cfg.lateness_ms,
                }),
                cap,
                retention,
            )),
            Kind::RevokedUse => State::RevokedUse(Keyed::new(RevokedUse, cap, retention)),
        }
    }

    /// The rule's step for one key; `None` when it does not fire (or is cooling down).
    pub fn run(&mut self, rule: &Rule, cx: &Ctx<'_>, key: u64, late: bool, env: &mut Env<'_>) -> Option<Fired> {
        each_kind!(self, k => k.run(rule, cx, key, late, env))
    }

    pub fn sweep(&mut self, now: i64) {
        each_kind!(self, k => k.keys.sweep(now));
    }

    /// Whether events later than the allowed lateness reach the rule's state.
    pub fn sees_late(&self) -> bool {
        fn sees<K: KindStep>(_: &Keyed<K>) -> bool {
            K::SEES_LATE
        }
        each_kind!(self, k => sees(k))
    }

    /// For `explain`: whether the key has state, and the evictions so far.
    pub fn observe(&self, key: u64) -> (bool, u64) {
        each_kind!(self, k => (k.keys.get(key).is_some(), k.keys.evictions()))
    }

    /// For `explain`: the key's state after the event, and when it last fired.
    pub fn view(&self, key: u64, cx: &Ctx<'_>) -> (View, Option<i64>) {
        each_kind!(self, k => k.view(key, cx))
    }

    pub fn len(&self) -> usize {
        each_kind!(self, k => k.keys.len())
    }

    pub fn evictions(&self) -> u64 {
        each_kind!(self, k => k.keys.evictions())
    }

    /// The heap the rule's keys hold.
    pub fn heap_bytes(&self) -> usize {
        each_kind!(self, k => k.keys.heap_bytes())
    }

    /// Evicts keys until they hold at most `bytes_target` ([`KeyMap::shed`]).
    pub fn shed(&mut self, incoming: Class, bytes_target: usize) -> bool {
        each_kind!(self, k => k.keys.shed(incoming, None, bytes_target))
    }

    /// Keys evicted, per [`super::keymap::Class`], and new keys refused.
    pub fn evicted(&self) -> ([u64; 3], u64) {
        each_kind!(self, k => (k.keys.evicted, k.keys.refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cooldown_lets_a_key_fire_first_then_after_its_duration_or_never() {
        assert!(cooled_down(Cooldown::Forever, NEVER, 0));
        assert!(!cooled_down(Cooldown::Forever, 0, i64::MAX));
        assert!(!cooled_down(Cooldown::Ms(1_000), 0, 999));
        assert!(cooled_down(Cooldown::Ms(1_000), 0, 1_000));
        assert!(cooled_down(Cooldown::Ms(0), 5, 5));
    }
}
