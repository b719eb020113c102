//! The engine: runs the compiled rules over each event, in event time, with bounded state.
//! An event reaches only the rules whose filter may hold for it ([`index`]), so its cost
//! grows with the rules in its scope, not with all rules.
//!
//! Time is the event's own: the engine never reads a clock, so a replayed file gives the same
//! decisions as the live stream did. Events may arrive out of order by up to
//! `lateness_ms` (default 60 s) behind the newest event seen: they are placed in event-time
//! order in the windows. Events later than that are counted (`late_events`) and seen only by
//! stateless kinds (`match`, `revoked_use`), so a stale partition cannot corrupt windows.
//!
//! Revocations decided for an event take effect after all rules have seen that event: the
//! event that gets a token revoked is not itself a "use of a revoked token".
//!
//! Each rule kind has its own file (`matching`, `count`, `distinct`, `velocity`, `revoked`)
//! that owns its per-key step, its reason and evidence, and what `explain` shows of its state;
//! what every kind shares (lateness, the key, the cooldown) is applied once, in [`state`].
//! This file holds what spans rules: keys, filters and allowlists, budgets, revocations, and
//! the hook that aggregates unauthenticated critical decisions per network ([`aggregate`]).

pub mod aggregate;
pub mod budget;
pub mod count;
pub mod distinct;
mod index;
pub mod keymap;
pub mod matching;
pub mod posture;
pub mod revoked;
pub mod snapshot;
mod state;
pub mod trace;
pub mod velocity;

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use serde_json::json;

use crate::decision::{Decision, RevocationPolicy};
use crate::input::Event;
use crate::rules::{fmt_duration, Action, Ctx, Field, Rule, RuleSet, Val};
use crate::token::TokenInfo;

use aggregate::Aggregator;
use budget::BudgetState;
use index::RuleIndex;
use revoked::{Revocations, Revoked};
use state::{Env, State};
use trace::{Outcome, Step, Trace};

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// How far behind the newest event an event may arrive and still enter windows.
    pub lateness_ms: i64,
    /// Cap on tracked keys per rule; beyond it keys are evicted, least valuable first
    /// ([`keymap`]).
    pub max_keys_per_rule: usize,
    /// Heap all rules' per-key state may hold, in bytes; each rule gets an equal share, and
    /// past it keys are evicted as past `max_keys_per_rule`.
    pub state_bytes: usize,
    /// Cap on remembered revocations (tokens and subjects each).
    pub max_revocations: usize,
    pub revocation: RevocationPolicy,
    /// The revocation budget of a revoking rule that sets none.
    pub revocation_budget: crate::rules::Budget,
    /// The window of aggregation of unauthenticated critical decisions per network
    /// ([`aggregate`]); 0 turns it off.
    pub aggregate_window_ms: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lateness_ms: 60_000,
            max_keys_per_rule: 1_000_000,
            state_bytes: 512 << 20,
            max_revocations: 1_000_000,
            revocation: RevocationPolicy::default(),
            revocation_budget: crate::rules::Budget {
                max: 1_000,
                window_ms: 600_000,
            },
            aggregate_window_ms: aggregate::WINDOW_MS,
        }
    }
}

/// Counters that show when a bound bites.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    pub events: u64,
    pub late_events: u64,
    pub evictions: u64,
    /// Live revocations dropped because the revoked-token memory was full ([`revoked`]).
    pub revoked_memory_full: u64,
    /// Unauthenticated critical decisions folded into a per-network count ([`aggregate`]).
    pub aggregated: u64,
}

/// A `forever` cooldown lasts as long as the key is tracked. Every event that reaches a rule
/// for its key refreshes the key, so this is how long a key must be idle (event time) before
/// it is forgotten and could fire again: a token in daily use fires once.
const FOREVER_RETENTION_MS: i64 = 86_400_000;
/// How often (event time) expired state is swept.
const SWEEP_EVERY_MS: i64 = 60_000;

/// What a rule concluded, before it becomes a [`Decision`]: its kind's reason and evidence.
struct Fired {
    reason: String,
    evidence: serde_json::Value,
    /// revoke_subject: when the revocation starts (ms).
    not_before_ms: Option<i64>,
}

/// Which rules an event is for. One engine that sees all traffic (`replay`, `run --role
/// local`) runs them all; when the work is split by key ([`crate::record`]), an engine of a
/// subject partition runs the rules keyed by token id or subject (every event of their key
/// reaches it), and an engine of a by-key partition runs, for each record, the rules keyed by
/// the fields that routed that record there.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    Subject,
    Keys(&'a [Field]),
}

impl Scope<'_> {
    /// Whether a rule keyed by `key` runs in this scope.
    pub fn admits(&self, key: &Field) -> bool {
        match self {
            Scope::All => true,
            Scope::Subject => key.follows_subject(),
            Scope::Keys(keys) => keys.contains(key),
        }
    }
}

pub struct Engine {
    cfg: EngineConfig,
    rules: Arc<RuleSet>,
    /// Which rules an event can match ([`index`]), rebuilt with the rules.
    index: RuleIndex,
    /// The candidates of the event being processed (kept to reuse the buffer).
    candidates: index::Bits,
    states: Vec<State>,
    /// The heap all rules' keys hold (the sum of [`State::heap_bytes`]), kept up to date from
    /// the rules an event ran, so that checking `state_bytes` does not visit every rule.
    keys_heap: usize,
    /// Per rule, as `states`: its revocation budget.
    budgets: Vec<BudgetState>,
    revoked: Revocations,
    /// Unauthenticated critical decisions grouped per (rule, network).
    aggregate: Aggregator,
    hasher: crate::hash::Seeded,
    /// The hasher's seeds, random per engine and kept in checkpoints: the keys of the state
    /// are hashes under them.
    seeds: [u64; 4],
    newest: i64,
    next_sweep: i64,
    events: u64,
    late_events: u64,
    /// `explain`: one rule observed for one token or subject; `None` in service.
    trace: Option<Box<Trace>>,
    /// What the deployment promises, and what the posture fields learned from traffic.
    posture: Arc<crate::posture::Posture>,
    posture_state: posture::PostureState,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>, cfg: EngineConfig) -> Self {
        let states = rules.rules.iter().map(|r| State::for_rule(r, &cfg)).collect();
        let budgets = rules.rules.iter().map(|_| BudgetState::default()).collect();
        let seeds = crate::hash::random_seeds();
        Engine {
            cfg,
            index: RuleIndex::new(&rules.rules),
            candidates: Vec::new(),
            rules,
            states,
            keys_heap: 0,
            budgets,
            revoked: Revocations::new(cfg.max_revocations),
            aggregate: Aggregator::new(cfg.aggregate_window_ms),
            hasher: crate::hash::Seeded::with_seeds(seeds),
            seeds,
            newest: i64::MIN,
            next_sweep: i64::MIN,
            events: 0,
            late_events: 0,
            trace: None,
            posture: Arc::default(),
            posture_state: posture::PostureState::default(),
        }
    }

    /// Sets what the posture fields compare traffic with ([`crate::posture`]).
    pub fn set_posture(&mut self, posture: Arc<crate::posture::Posture>) {
        self.posture = posture;
    }

    pub fn posture(&self) -> &Arc<crate::posture::Posture> {
        &self.posture
    }

    /// What the posture fields learned: key first-seen times, asymmetric issuers.
    pub fn posture_state(&self) -> &posture::PostureState {
        &self.posture_state
    }

    /// The event time a configured issuer's key was first seen signing (the key-age metric).
    pub fn key_first_seen(&self, iss: &str, kid: &str) -> Option<i64> {
        self.posture_state.first_seen_of(iss, kid, &self.hasher)
    }

    /// Starts (or, with `None`, stops) recording what one rule does with the events of one
    /// token or subject ([`trace`]).
    pub fn set_trace(&mut self, trace: Option<Trace>) {
        self.trace = trace.map(Box::new);
    }

    /// The steps recorded since the last call.
    pub fn take_steps(&mut self) -> Vec<Step> {
        self.trace
            .as_mut()
            .map(|t| std::mem::take(&mut t.steps))
            .unwrap_or_default()
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Swaps in a new rule set (hot reload). A rule whose id and definition are unchanged
    /// keeps its windows; new or changed rules start empty. Revocations are kept. Every rule's
    /// revocation budget starts afresh: a reload re-arms tripped rules.
    pub fn replace_rules(&mut self, rules: Arc<RuleSet>) {
        let mut old: Vec<Option<State>> = std::mem::take(&mut self.states).into_iter().map(Some).collect();
        let mut states = Vec::with_capacity(rules.rules.len());
        for r in &rules.rules {
            let same = self
                .rules
                .rules
                .iter()
                .position(|o| o.id == r.id && o.kind == r.kind && o.key == r.key && o.cooldown == r.cooldown);
            match same.and_then(|i| old[i].take()) {
                Some(s) => states.push(s),
                None => states.push(State::for_rule(r, &self.cfg)),
            }
        }
        self.states = states;
        self.recount_keys_heap();
        self.budgets = rules.rules.iter().map(|_| BudgetState::default()).collect();
        self.index = RuleIndex::new(&rules.rules);
        self.rules = rules;
    }

    /// The rules that tripped their revocation budget, with the event time they tripped at.
    pub fn tripped(&self) -> impl Iterator<Item = (&Arc<str>, Option<i64>)> {
        self.rules
            .rules
            .iter()
            .zip(&self.budgets)
            .map(|(r, b)| (&r.id, b.tripped_at()))
    }

    /// Re-arms a tripped rule: it enforces again, with an empty budget window. False when no
    /// rule has that id.
    pub fn rearm(&mut self, rule: &str) -> bool {
        match self.rules.rules.iter().position(|r| &*r.id == rule) {
            Some(i) => {
                self.budgets[i].rearm();
                true
            }
            None => false,
        }
    }

    pub fn stats(&self) -> EngineStats {
        let evictions = self.states.iter().map(State::evictions).sum::<u64>() + self.revoked.full;
        EngineStats {
            events: self.events,
            late_events: self.late_events,
            evictions,
            revoked_memory_full: self.revoked.full,
            aggregated: self.aggregate.suppressed,
        }
    }

    /// Per rule: its keys evicted, per [`keymap::Class`], and new unauthenticated keys it
    /// refused because every key it holds has progress (`tokenwatch_evicted_keys_total`).
    pub fn evictions_by_rule(&self) -> impl Iterator<Item = (&Arc<str>, [u64; 3], u64)> {
        self.rules.rules.iter().zip(&self.states).map(|(r, s)| {
            let (evicted, refused) = s.evicted();
            (&r.id, evicted, refused)
        })
    }

    /// The heap all rules' keys hold, which `state_bytes` bounds.
    pub fn state_heap_bytes(&self) -> usize {
        self.keys_heap
    }

    /// Counts [`Self::keys_heap`] afresh, after a change to every rule's state.
    fn recount_keys_heap(&mut self) {
        self.keys_heap = self.states.iter().map(State::heap_bytes).sum();
    }

    /// Keys currently tracked, over all rules (plus remembered revocations).
    pub fn tracked_keys(&self) -> usize {
        self.states.iter().map(State::len).sum::<usize>() + self.revoked.len()
    }

    fn hash(&self, v: &Val<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        match v {
            Val::Str(s) => {
                0u8.hash(&mut h);
                s.hash(&mut h);
            }
            Val::StrList(l) => {
                1u8.hash(&mut h);
                l.hash(&mut h);
            }
            Val::Num(n) => {
                2u8.hash(&mut h);
                n.to_bits().hash(&mut h);
            }
            Val::Bool(b) => {
                3u8.hash(&mut h);
                b.hash(&mut h);
            }
            Val::Ip(ip) => {
                4u8.hash(&mut h);
                ip.hash(&mut h);
            }
            Val::Net(n) => {
                5u8.hash(&mut h);
                n.hash(&mut h);
            }
            Val::Missing => 6u8.hash(&mut h),
        }
        h.finish()
    }

    /// Runs every rule that may match `ev` over it, appending decisions to `out`.
    pub fn process(&mut self, ev: &Event<'_>, out: &mut Vec<Decision>) {
        self.process_in(ev, Scope::All, out);
    }

    /// [`Engine::process`] for the rules of `scope` only: an engine of one internal
    /// partition when the work is split by key ([`crate::record`]).
    pub fn process_in(&mut self, ev: &Event<'_>, scope: Scope<'_>, out: &mut Vec<Decision>) {
        let ts = ev.ts_ms;
        self.events += 1;
        let late = self.newest != i64::MIN && ts < self.newest - self.cfg.lateness_ms;
        if late {
            self.late_events += 1;
        }
        self.newest = self.newest.max(ts);
        if self.newest >= self.next_sweep {
            self.sweep();
        }
        let expired = ev
            .token
            .as_ref()
            .and_then(|t| t.exp)
            .is_some_and(|exp| exp.saturating_add(self.cfg.revocation.leeway_s).saturating_mul(1000) < ts);
        let posture = self.posture.clone();
        let facts = self.posture_state.observe(ev, &posture, &self.hasher);
        let cx = Ctx {
            ev,
            expired,
            network: ev.client_ip.map(crate::geo::network),
            posture: &posture,
            issuer_asymmetric: facts.issuer_asymmetric,
            key_age_ms: facts.key_age_ms,
        };
        let start = out.len();
        let rules = self.rules.clone();
        // Most rules key on the token id or the subject: hash each once per event.
        let mut memo = KeyMemo::default();
        // The rule being explained for this event, if any: the only cost of tracing when off.
        let traced = match &self.trace {
            None => None,
            Some(t) if t.wants(&cx) => rules.rules.iter().position(|r| r.id == t.rule),
            Some(_) => None,
        };
        // Only the rules the index leaves in can match; the traced rule runs anyway, so
        // `explain` still says which condition failed.
        let mut candidates = std::mem::take(&mut self.candidates);
        self.index.candidates(&cx, &mut candidates);
        if let Some(t) = traced {
            candidates[t / 64] |= 1 << (t % 64);
        }
        for i in index::ones(&candidates) {
            if !scope.admits(&rules.rules[i].key) {
                continue;
            }
            out.extend(self.step(i, &rules.rules[i], &cx, late, traced == Some(i), &mut memo));
        }
        self.candidates = candidates;
        for d in &out[start..] {
            self.apply(d, ev);
        }
        self.keep_state_budget(ev.authenticated);
    }

    /// One rule's turn with the event: its filter and allowlist, its key, its kind's step,
    /// then the decision, its budget and the aggregation of unauthenticated critical ones.
    fn step(
        &mut self,
        i: usize,
        rule: &Rule,
        cx: &Ctx<'_>,
        late: bool,
        traced: bool,
        memo: &mut KeyMemo,
    ) -> Option<Decision> {
        if !rule.filter.matches(cx) || allowlisted(rule, cx) {
            if traced {
                let why = trace::where_failed(rule, cx).or_else(|| trace::allow_entry(rule, cx));
                self.record(cx, why);
            }
            return None;
        }
        let key = match rule.key {
            Field::TokenId => memo.token_id(&self.hasher, cx),
            Field::Subject => memo.subject(&self.hasher, cx),
            _ => {
                let key_val = rule.key.get(cx);
                (key_val != Val::Missing).then(|| self.hash(&key_val))
            }
        };
        let Some(key) = key else {
            if traced {
                self.record(cx, Some(Outcome::NoKey { key: rule.key.name() }));
            }
            return None;
        };
        let before = traced.then(|| self.states[i].observe(key));
        let fired = self.run(i, rule, cx, key, late, memo);
        if let Some(before) = before {
            self.record_evaluated(i, cx, key, late, before, fired.as_ref());
        }
        let mut d = decision(rule, cx, fired?);
        self.spend_budget(i, rule, &mut d);
        self.aggregate.admit(&self.hasher, cx, &mut d).then_some(d)
    }

    /// Keeps all rules' keys within `state_bytes`: past it, rules shed keys, the largest
    /// first, down to 90 % of the budget, least valuable keys first ([`keymap`]). A few
    /// additions per event while under it.
    fn keep_state_budget(&mut self, authenticated: bool) {
        let limit = self.cfg.state_bytes;
        debug_assert_eq!(self.keys_heap, self.states.iter().map(State::heap_bytes).sum::<usize>());
        let mut total = self.keys_heap;
        if total <= limit {
            return;
        }
        let incoming = keymap::Class::Unauthenticated.after(authenticated, false);
        let goal = limit - limit / 10;
        let mut largest: Vec<(usize, usize)> = self.states.iter().map(State::heap_bytes).enumerate().collect();
        largest.sort_unstable_by_key(|&(_, b)| std::cmp::Reverse(b));
        for (i, had) in largest {
            self.states[i].shed(incoming, had.saturating_sub(total - goal));
            total = total - had + self.states[i].heap_bytes();
            if total <= goal {
                break;
            }
        }
        self.keys_heap = total;
    }

    fn record(&mut self, cx: &Ctx<'_>, outcome: Option<Outcome>) {
        if let (Some(t), Some(o)) = (self.trace.as_mut(), outcome) {
            t.steps.push(Step::new(cx, o));
        }
    }

    /// Records the traced rule's state after the event reached it.
    fn record_evaluated(
        &mut self,
        i: usize,
        cx: &Ctx<'_>,
        key: u64,
        late: bool,
        before: (bool, u64),
        fired: Option<&Fired>,
    ) {
        let rules = self.rules.clone();
        let behind = late.then(|| self.newest - cx.ev.ts_ms);
        let timing = (behind, self.cfg.lateness_ms);
        let step = trace::evaluated(&self.states[i], &rules.rules[i], cx, key, timing, before, fired);
        self.record(cx, Some(step));
    }

    /// The rule's step for one key ([`state`]); `None` when it does not fire (or is cooling
    /// down).
    fn run(&mut self, i: usize, rule: &Rule, cx: &Ctx<'_>, key: u64, late: bool, memo: &mut KeyMemo) -> Option<Fired> {
        let mut env = Env {
            revoked: &self.revoked,
            hasher: &self.hasher,
            memo,
        };
        let had = self.states[i].heap_bytes();
        let fired = self.states[i].run(rule, cx, key, late, &mut env);
        self.keys_heap = self.keys_heap - had + self.states[i].heap_bytes();
        fired
    }

    /// Counts an enforced revocation against its rule's budget; past it, the decision becomes
    /// shadow and says why.
    fn spend_budget(&mut self, i: usize, rule: &Rule, d: &mut Decision) {
        if d.shadow || d.action == Action::Alert {
            return;
        }
        let b = rule.budget.unwrap_or(self.cfg.revocation_budget);
        if !self.budgets[i].admit(b, d.ts) {
            d.shadow = true;
            if let Some(e) = d.evidence.as_object_mut() {
                e.insert(
                    "budget_tripped".into(),
                    json!(format!("{}/{}", b.max, fmt_duration(b.window_ms))),
                );
            }
        }
    }

    /// Remembers enforced revocations for `revoked_use` rules.
    fn apply(&mut self, d: &Decision, ev: &Event<'_>) {
        if d.shadow {
            return;
        }
        let Some(tok) = ev.token.as_ref() else { return };
        let now_s = d.ts.div_euclid(1000);
        match d.action {
            Action::Alert => {}
            Action::RevokeToken => {
                let ttl = self.cfg.revocation.token_ttl_s(tok.exp, now_s);
                let key = token_key(&self.hasher, tok);
                self.revoked.revoke_token(
                    key,
                    Revoked {
                        rule: d.rule.clone(),
                        revoked_at_ms: d.ts,
                        until_ms: d.ts.saturating_add(ttl.saturating_mul(1000)),
                        not_before_s: 0,
                        feed_id: self.feed_id(&tok.token_revocation_key()),
                    },
                );
            }
            Action::RevokeSubject => {
                let key = subject_key(&self.hasher, tok);
                let ttl = self.cfg.revocation.subject_ttl_s;
                self.revoked.revoke_subject(
                    key,
                    Revoked {
                        rule: d.rule.clone(),
                        revoked_at_ms: d.ts,
                        until_ms: d.ts.saturating_add(ttl.saturating_mul(1000)),
                        not_before_s: d.not_before.unwrap_or(now_s),
                        feed_id: self.feed_id(&tok.subject_revocation_key()),
                    },
                );
            }
        }
    }

    /// Forgets a token revocation that `tokenwatch unrevoke` undid: `id` is the key id of the
    /// feed's `unrevoke` entry (a decision's `revocation_key`). True when it was remembered.
    pub fn forget_token(&mut self, id: &str) -> bool {
        let f = self.feed_id(id);
        self.revoked.forget_token(f)
    }

    /// Forgets a subject revocation that `tokenwatch unrevoke` undid (see [`Self::forget_token`]).
    pub fn forget_subject(&mut self, id: &str) -> bool {
        let f = self.feed_id(id);
        self.revoked.forget_subject(f)
    }

    /// The revocation memory's hash of a feed key id.
    fn feed_id(&self, id: &str) -> u64 {
        scoped(&self.hasher, 9, None, id)
    }

    fn sweep(&mut self) {
        let now = self.newest;
        for s in &mut self.states {
            s.sweep(now);
        }
        self.recount_keys_heap();
        self.revoked.sweep(now);
        self.aggregate.sweep(now);
        self.next_sweep = now.saturating_add(SWEEP_EVERY_MS);
    }
}

/// The hashes of the event's token id and subject, computed at most once per event.
#[derive(Default)]
struct KeyMemo {
    token_id: Option<Option<u64>>,
    subject: Option<Option<u64>>,
}

impl KeyMemo {
    fn token_id(&mut self, hasher: &crate::hash::Seeded, cx: &Ctx<'_>) -> Option<u64> {
        *self
            .token_id
            .get_or_insert_with(|| cx.ev.token.as_ref().map(|t| token_key(hasher, t)))
    }

    fn subject(&mut self, hasher: &crate::hash::Seeded, cx: &Ctx<'_>) -> Option<u64> {
        *self
            .subject
            .get_or_insert_with(|| cx.ev.token.as_ref().map(|t| subject_key(hasher, t)))
    }
}

/// The state key of a token: its id scoped by its issuer, so that two issuers' tokens with
/// the same `jti` never share windows, cooldowns or a revocation.
fn token_key(hasher: &crate::hash::Seeded, t: &TokenInfo) -> u64 {
    scoped(hasher, 7, t.iss.as_deref(), &t.token_id)
}

/// The state key of a subject: (`iss`, `sub`) as a pair, not the `iss|sub` text, in which
/// `https://idp|auth0` + `abc` and `https://idp` + `auth0|abc` would be one subject.
fn subject_key(hasher: &crate::hash::Seeded, t: &TokenInfo) -> u64 {
    scoped(hasher, 8, t.iss.as_deref(), t.sub.as_deref().unwrap_or(&t.token_id))
}

fn scoped(hasher: &crate::hash::Seeded, tag: u8, iss: Option<&str>, id: &str) -> u64 {
    let mut h = hasher.build_hasher();
    tag.hash(&mut h);
    iss.hash(&mut h);
    id.hash(&mut h);
    h.finish()
}

/// A rule's description as the start of a decision's reason.
fn said(rule: &Rule) -> &str {
    rule.description.trim_end_matches('.')
}

fn allowlisted(rule: &Rule, cx: &Ctx<'_>) -> bool {
    let a = &rule.allow;
    if a.is_empty() {
        return false;
    }
    if let Some(ip) = cx.ev.client_ip {
        if a.cidrs.iter().any(|n| n.contains(&ip)) {
            return true;
        }
    }
    if let Some(t) = &cx.ev.token {
        if a.subjects.iter().any(|s| **s == *t.subject) {
            return true;
        }
        if let Some(iss) = &t.iss {
            if a.issuers.iter().any(|s| **s == **iss) {
                return true;
            }
        }
    }
    false
}

fn decision(rule: &Rule, cx: &Ctx<'_>, mut f: Fired) -> Decision {
    let tok = cx.ev.token.as_deref();
    // The evidence that the token is genuine, on every decision about one.
    if let (Some(t), Some(e)) = (tok, f.evidence.as_object_mut()) {
        e.insert("verified".into(), json!(t.verified));
        e.insert("authenticated".into(), json!(cx.ev.authenticated));
    }
    let not_before = (rule.action == Action::RevokeSubject)
        .then(|| f.not_before_ms.unwrap_or(cx.ev.ts_ms))
        // ceil: a token issued during the second of the request is revoked as well
        .map(|ms| (ms + 999).div_euclid(1000));
    Decision {
        ts: cx.ev.ts_ms,
        rule: rule.id.clone(),
        severity: rule.severity,
        action: rule.action,
        token_id: tok.map(|t| t.token_id.clone()),
        subject: tok.map(|t| (*t.subject).into()),
        revocation_key: tok.and_then(|t| match rule.action {
            Action::Alert => None,
            Action::RevokeToken => Some(t.token_revocation_key()),
            Action::RevokeSubject => Some(t.subject_revocation_key()),
        }),
        iss: tok.and_then(|t| t.iss.as_deref().map(Into::into)),
        sub: tok.and_then(|t| t.sub.as_deref().map(Into::into)),
        client_ip: cx.ev.client_ip,
        expires_at: tok.and_then(|t| t.exp),
        not_before,
        shadow: rule.shadow,
        reason: f.reason,
        evidence: f.evidence,
    }
}

#[cfg(test)]
mod tests;
