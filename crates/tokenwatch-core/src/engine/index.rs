//! The rule index: which rules an event can match, found with a few lookups per event instead
//! of one filter per rule.
//!
//! Deployments scope rules: per tenant issuer, per route prefix, per method. An event can
//! match only the rules of its own scope, yet running every rule's `where` made the cost of
//! an event grow with all rules (replay fell from 570k to 95k events/s between 8 and 200
//! rules). With the index it grows with the rules an event can match.
//!
//! Each field that `where` conditions test, if reading it is cheap (strings, booleans,
//! numbers, claims; not the posture fields that search the route tables), is a *dimension*.
//! Its values fall into buckets: each string a condition names (`iss: {in: [a, b]}` names `a`
//! and `b`), `false` and `true`; for other strings, the longest prefix a `prefix` condition
//! names, or none; for numbers, the points and open intervals that the conditions' constants
//! cut the line into; and "missing". Within one bucket every condition on the field has one
//! answer, which the filter's own code gives at load time ([`Cond::holds_for`] on a value of
//! the bucket, or [`Op::may_hold_unnamed`], which says "may" for `suffix`, `contains` and
//! `regex` on strings no condition names). A bucket holds the bitset of the rules whose
//! conditions on that field may hold there; an event's candidates are the AND of its buckets'
//! sets, and only they run their filter, in rule order. A rule is left out only when its
//! filter is certain to fail, so decisions are the same with and without the index (tested
//! on generated traffic).

use std::collections::HashMap;

use crate::rules::field::FieldType;
use crate::rules::filter::{Cond, Const, Op};
use crate::rules::{Ctx, Field, Rule, Val};

/// The candidates of an event: one bit per rule, in rule order.
pub(super) type Bits = Vec<u64>;

pub(super) struct RuleIndex {
    /// `u64` words per bitset.
    words: usize,
    /// Every rule's bit.
    all: Bits,
    /// The dimensions that narrow something, the most selective first.
    dims: Vec<Dim>,
}

struct Dim {
    field: Field,
    buckets: Buckets,
    /// Bucket `b`'s rules at `masks[b * words..][..words]`.
    masks: Vec<u64>,
}

enum Buckets {
    /// Buckets: 0 missing, 1 a string nothing names, 2 `false`, 3 `true`, then the named
    /// strings, then the prefixes.
    Values {
        named: Table,
        prefixes: Table,
        /// The lengths of `prefixes`, longest first.
        prefix_lens: Vec<usize>,
    },
    /// Buckets: 0 missing, then below `cuts[0]`, `cuts[0]`, between `cuts[0]` and `cuts[1]`,
    /// ..., `cuts[n-1]`, above it.
    Numbers { cuts: Vec<f64> },
}

/// Strings to their bucket.
type Table = HashMap<Box<str>, usize, ahash::RandomState>;

/// What is known of the values in one bucket, to ask each condition about it.
#[derive(Clone, Copy)]
enum Probe<'a> {
    /// Every value of the bucket answers every condition as this one does.
    Val(Val<'a>),
    /// A string no condition names, whose longest named prefix is this.
    Unnamed(Option<&'a str>),
    /// Nothing: every condition may hold.
    Unknown,
}

const MISSING: usize = 0;
const UNNAMED: usize = 1;
const FALSE: usize = 2;
const FIXED_VALUE_BUCKETS: usize = 4;

impl RuleIndex {
    pub(super) fn new(rules: &[Rule]) -> RuleIndex {
        let words = rules.len().div_ceil(64);
        let mut all = vec![0u64; words];
        for i in 0..rules.len() {
            all[i / 64] |= 1 << (i % 64);
        }
        let mut fields: Vec<&Field> = Vec::new();
        for c in rules.iter().flat_map(|r| &r.filter.conds) {
            if indexable(&c.field) && !fields.contains(&&c.field) {
                fields.push(&c.field);
            }
        }
        let mut dims: Vec<(usize, Dim)> = fields
            .into_iter()
            .map(|f| Dim::new(f, rules, words))
            .map(|d| (d.excluded(&all), d))
            .filter(|(excluded, _)| *excluded > 0)
            .collect();
        dims.sort_by_key(|(excluded, _)| std::cmp::Reverse(*excluded));
        RuleIndex {
            words,
            all,
            dims: dims.into_iter().map(|(_, d)| d).collect(),
        }
    }

    /// Sets `out` to the rules whose filter may hold for the event: every rule that matches
    /// is in it.
    pub(super) fn candidates(&self, cx: &Ctx<'_>, out: &mut Bits) {
        out.clear();
        out.extend_from_slice(&self.all);
        for d in &self.dims {
            let Some(b) = d.buckets.of(d.field.get(cx)) else {
                continue;
            };
            let mut left = 0;
            for (o, m) in out.iter_mut().zip(&d.masks[b * self.words..][..self.words]) {
                *o &= m;
                left |= *o;
            }
            if left == 0 {
                return;
            }
        }
    }
}

/// The positions of the set bits, in increasing order.
pub(super) fn ones(bits: &[u64]) -> impl Iterator<Item = usize> + '_ {
    bits.iter().enumerate().flat_map(|(w, &word)| {
        let mut left = word;
        std::iter::from_fn(move || {
            (left != 0).then(|| {
                let i = left.trailing_zeros() as usize;
                left &= left - 1;
                w * 64 + i
            })
        })
    })
}

/// Fields read cheaply and compared as one value. The posture fields that search the route
/// tables (`audience_*`, `gateway_vouched`) and the issuer list cost as much as the filter
/// they would spare; lists and addresses have no bucket per value.
fn indexable(f: &Field) -> bool {
    !matches!(
        f,
        Field::AudienceExpected | Field::AudienceMatches | Field::GatewayVouched | Field::IssuerConfigured
    ) && !matches!(f.ty(), FieldType::StrList | FieldType::Ip | FieldType::Net)
}

impl Dim {
    fn new(field: &Field, rules: &[Rule], words: usize) -> Dim {
        let conds = || rules.iter().flat_map(|r| &r.filter.conds).filter(|c| c.field == *field);
        let buckets = match field.ty() {
            FieldType::Num | FieldType::Seconds => Buckets::numbers(conds()),
            _ => Buckets::values(conds()),
        };
        let probes = buckets.probes();
        let mut masks = vec![0u64; probes.len() * words];
        for (b, probe) in probes.iter().enumerate() {
            for (i, r) in rules.iter().enumerate() {
                let mut own = r.filter.conds.iter().filter(|c| c.field == *field);
                if own.all(|c| probe.may_hold(c)) {
                    masks[b * words + i / 64] |= 1 << (i % 64);
                }
            }
        }
        Dim {
            field: field.clone(),
            buckets,
            masks,
        }
    }

    /// How many rules the dimension leaves out, summed over its buckets: zero when it narrows
    /// nothing.
    fn excluded(&self, all: &[u64]) -> usize {
        self.masks
            .chunks(all.len().max(1))
            .map(|m| {
                m.iter()
                    .zip(all)
                    .map(|(m, a)| (a & !m).count_ones() as usize)
                    .sum::<usize>()
            })
            .sum()
    }
}

impl Probe<'_> {
    fn may_hold(&self, c: &Cond) -> bool {
        match self {
            Probe::Val(v) => c.holds_for(*v),
            Probe::Unnamed(prefix) => c.op.may_hold_unnamed(*prefix),
            Probe::Unknown => true,
        }
    }
}

impl Buckets {
    fn values<'a>(conds: impl Iterator<Item = &'a Cond>) -> Buckets {
        let (mut named, mut prefixes) = (Table::default(), Table::default());
        let mut names: Vec<&str> = Vec::new();
        let mut pfx: Vec<&str> = Vec::new();
        for c in conds {
            match &c.op {
                Op::Eq(k) | Op::Ne(k) => names.extend(text(k)),
                Op::In(ks) | Op::NotIn(ks) => names.extend(ks.iter().filter_map(text)),
                Op::Prefix(p) => pfx.push(p),
                _ => {}
            }
        }
        for n in names {
            let next = FIXED_VALUE_BUCKETS + named.len();
            named.entry(n.into()).or_insert(next);
        }
        for p in pfx {
            let next = FIXED_VALUE_BUCKETS + named.len() + prefixes.len();
            prefixes.entry(p.into()).or_insert(next);
        }
        let mut prefix_lens: Vec<usize> = prefixes.keys().map(|p| p.len()).collect();
        prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
        prefix_lens.dedup();
        Buckets::Values {
            named,
            prefixes,
            prefix_lens,
        }
    }

    fn numbers<'a>(conds: impl Iterator<Item = &'a Cond>) -> Buckets {
        let mut cuts: Vec<f64> = Vec::new();
        for c in conds {
            match &c.op {
                Op::Gt(x) | Op::Gte(x) | Op::Lt(x) | Op::Lte(x) => cuts.push(*x),
                Op::Eq(k) | Op::Ne(k) => cuts.extend(number(k)),
                Op::In(ks) | Op::NotIn(ks) => cuts.extend(ks.iter().filter_map(number)),
                _ => {}
            }
        }
        cuts.retain(|c| !c.is_nan());
        cuts.sort_by(f64::total_cmp);
        cuts.dedup();
        Buckets::Numbers { cuts }
    }

    /// One probe per bucket, in bucket order.
    fn probes(&self) -> Vec<Probe<'_>> {
        match self {
            Buckets::Values { named, prefixes, .. } => {
                let mut p = vec![Probe::Unknown; FIXED_VALUE_BUCKETS + named.len() + prefixes.len()];
                p[MISSING] = Probe::Val(Val::Missing);
                p[UNNAMED] = Probe::Unnamed(None);
                p[FALSE] = Probe::Val(Val::Bool(false));
                p[FALSE + 1] = Probe::Val(Val::Bool(true));
                for (s, &b) in named {
                    p[b] = Probe::Val(Val::Str(s));
                }
                for (s, &b) in prefixes {
                    p[b] = Probe::Unnamed(Some(s));
                }
                p
            }
            Buckets::Numbers { cuts } => {
                let mut p = vec![Probe::Val(Val::Missing)];
                for (k, &c) in cuts.iter().enumerate() {
                    // any number strictly between the previous cut and this one
                    let below = -next_up(-c);
                    let open = k == 0 || below > cuts[k - 1];
                    p.push(if open {
                        Probe::Val(Val::Num(below))
                    } else {
                        Probe::Unknown
                    });
                    p.push(Probe::Val(Val::Num(c)));
                }
                p.push(Probe::Val(Val::Num(cuts.last().map_or(0.0, |c| next_up(*c)))));
                p
            }
        }
    }

    /// The bucket of a value; `None` when the dimension cannot tell (a number in a field of
    /// strings, NaN), and then it narrows nothing.
    fn of(&self, v: Val<'_>) -> Option<usize> {
        match (self, v) {
            (_, Val::Missing) => Some(MISSING),
            (Buckets::Values { .. }, Val::Bool(b)) => Some(FALSE + usize::from(b)),
            (
                Buckets::Values {
                    named,
                    prefixes,
                    prefix_lens,
                },
                Val::Str(s),
            ) => named.get(s).copied().or_else(|| {
                let longest = prefix_lens.iter().find_map(|&l| prefixes.get(s.get(..l)?));
                Some(longest.copied().unwrap_or(UNNAMED))
            }),
            (Buckets::Numbers { cuts }, Val::Num(n)) if !n.is_nan() => {
                let k = cuts.partition_point(|c| *c < n);
                Some(1 + 2 * k + usize::from(cuts.get(k) == Some(&n)))
            }
            _ => None,
        }
    }
}

/// The least number above `x` (`f64::next_up`, newer than the workspace's Rust).
fn next_up(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let bits = x.to_bits();
    f64::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

fn text(k: &Const) -> Option<&str> {
    match k {
        Const::Str(s) => Some(s),
        _ => None,
    }
}

fn number(k: &Const) -> Option<f64> {
    match k {
        Const::Num(n) => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! The index leaves out only rules whose filter fails: on generated traffic with many
    //! scoped rules (every operator on strings, numbers, booleans and claims), every matching
    //! rule is a candidate, and an engine with the index decides exactly what one without it
    //! decides.

    use std::borrow::Cow;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::engine::tests::{rules, T0};
    use crate::engine::{Engine, EngineConfig};
    use crate::input::Event;
    use crate::posture::Posture;
    use crate::token::{ClaimValue, TokenInfo};

    /// Conditions as deployments scope rules, and every operator at least once.
    const SCOPES: &[&str] = &[
        "iss: https://t{k}.example",
        "iss: {in: [https://t{k}.example, https://t1]}",
        "iss: {ne: https://t{k}.example}",
        "iss: {not_in: [https://t{k}.example, https://other]}",
        "iss: {prefix: https://t1}",
        "iss: {exists: false}",
        "path: {prefix: /api/t{k}/}",
        "path: {prefix: /api/}",
        "path: /api/t3/orders",
        "path: {regex: '^/api/t[0-4]/'}",
        "path: {suffix: /orders}",
        "path: {contains: t1}",
        "method: [POST, PUT]",
        "method: {ne: GET}",
        "status: {gte: 500}",
        "status: {lt: 400}",
        "status: {in: [401, 403]}",
        "status: {gt: 200, lte: 404}",
        "status: {ne: 200}",
        "status: {exists: false}",
        "lifetime: {gt: 24h}",
        "lifetime: {lte: 3600}",
        "claim.tenant: t{k}",
        "claim.tenant: 7",
        "claim.tenant: true",
        "claim.tenant: {exists: false}",
        "claim.tenant: {prefix: t}",
        "accepted: true",
        "authenticated: false",
        "token_in_url: {ne: false}",
        "has_token: false",
        "alg: {in: [RS256, ES256]}",
        "user_agent: {exists: true}",
    ];

    /// `n` rules, each with one to three scoped conditions, of three kinds.
    fn scoped_rules(n: usize) -> String {
        let mut y = String::from("rules:\n");
        for i in 0..n {
            let k = (i % 12).to_string();
            let conds: Vec<String> = [i, i * 7 + 3, i * 13 + 5][..1 + i % 3]
                .iter()
                .map(|j| SCOPES[j % SCOPES.len()].replace("{k}", &k))
                .collect();
            let mut seen = Vec::new();
            let conds: Vec<String> = conds
                .into_iter()
                .filter(|c| {
                    let f = c.split(':').next().unwrap_or("").to_string();
                    let fresh = !seen.contains(&f);
                    seen.push(f);
                    fresh
                })
                .collect();
            let kind = match i % 3 {
                0 => "kind: match, cooldown: 0",
                1 => "kind: count, threshold: 2, window: 1m, cooldown: 0",
                _ => "kind: distinct_count, distinct: client_ip, threshold: 2, window: 1m, cooldown: 0",
            };
            y += &format!(
                "  - {{id: r{i}, severity: low, action: alert, key: token_id, {kind}, where: {{{}}}}}\n",
                conds.join(", ")
            );
        }
        y
    }

    #[derive(Debug, Clone)]
    struct Gen {
        iss: usize,
        path: usize,
        method: usize,
        status: usize,
        lifetime: usize,
        tenant: usize,
        flags: u8,
        ip: u8,
    }

    const ISS: &[Option<&str>] = &[
        Some("https://t0.example"),
        Some("https://t1.example"),
        Some("https://t3.example"),
        Some("https://t11.example"),
        Some("https://t1"),
        Some("https://t1x"),
        Some("https://other"),
        Some("https://nobody"),
        None,
    ];
    const PATHS: &[&str] = &[
        "/api/t0/orders",
        "/api/t1/items",
        "/api/t3/orders",
        "/api/t3/orders/1",
        "/api/t11/x",
        "/api/",
        "/api",
        "/health",
        "",
    ];
    const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE"];
    const STATUS: &[Option<u16>] = &[
        None,
        Some(200),
        Some(201),
        Some(401),
        Some(403),
        Some(404),
        Some(500),
        Some(503),
    ];
    const LIFETIME: &[Option<i64>] = &[None, Some(600), Some(3600), Some(3601), Some(86_400), Some(86_401)];

    fn gen() -> impl Strategy<Value = Gen> {
        (
            0..ISS.len(),
            0..PATHS.len(),
            0..METHODS.len(),
            0..STATUS.len(),
            0..LIFETIME.len(),
            0..7usize,
            any::<u8>(),
            0..4u8,
        )
            .prop_map(|(iss, path, method, status, lifetime, tenant, flags, ip)| Gen {
                iss,
                path,
                method,
                status,
                lifetime,
                tenant,
                flags,
                ip,
            })
    }

    fn event(g: &Gen, i: usize) -> Event<'static> {
        let tenant = match g.tenant {
            0 => None,
            1 => Some(ClaimValue::Str("t3".into())),
            2 => Some(ClaimValue::Str("t4".into())),
            3 => Some(ClaimValue::Str("x".into())),
            4 => Some(ClaimValue::Num(7.0)),
            5 => Some(ClaimValue::Num(8.0)),
            _ => Some(ClaimValue::Bool(true)),
        };
        let iat = T0 / 1000;
        let token = TokenInfo {
            iss: ISS[g.iss].map(Into::into),
            alg: [Some("RS256".into()), Some("HS256".into()), None][usize::from(g.flags >> 5) % 3].clone(),
            iat: Some(iat),
            exp: LIFETIME[g.lifetime].map(|l| iat + l),
            claims: tenant.map(|t| Box::from([("tenant".into(), t)])).unwrap_or_default(),
            ..TokenInfo::test_token(&format!("j{}", g.flags % 8), "u")
        };
        Event {
            ts_ms: T0 + i as i64 * 1000,
            client_ip: Some(format!("192.0.2.{}", g.ip).parse().unwrap()),
            method: Cow::Borrowed(METHODS[g.method]),
            path: Cow::Borrowed(PATHS[g.path]),
            status: STATUS[g.status],
            user_agent: Cow::Borrowed("ua"),
            token: (g.flags & 1 == 0).then(|| Arc::new(token)),
            token_in_url: g.flags & 2 != 0,
            authenticated: g.flags & 4 != 0,
            geo: None,
            scheme: None,
            second_token: g.flags & 16 != 0,
        }
    }

    fn cx<'e>(ev: &'e Event<'e>, posture: &'e Posture) -> Ctx<'e> {
        Ctx {
            ev,
            expired: false,
            network: None,
            posture,
            issuer_asymmetric: false,
            key_age_ms: None,
        }
    }

    proptest! {
        #[test]
        fn indexed_and_unindexed_engines_decide_alike(gens in proptest::collection::vec(gen(), 1..80)) {
            let set = rules(&scoped_rules(150));
            let index = RuleIndex::new(&set.rules);
            let mut indexed = Engine::new(set.clone(), EngineConfig::default());
            let mut plain = Engine::new(set.clone(), EngineConfig::default());
            plain.index = RuleIndex { dims: Vec::new(), ..RuleIndex::new(&set.rules) };
            let posture = Posture::default();
            let (mut a, mut b, mut bits) = (Vec::new(), Vec::new(), Vec::new());
            for (i, g) in gens.iter().enumerate() {
                let ev = event(g, i);
                let cx = cx(&ev, &posture);
                index.candidates(&cx, &mut bits);
                for (r, rule) in set.rules.iter().enumerate() {
                    if rule.filter.matches(&cx) {
                        prop_assert!(bits[r / 64] & (1 << (r % 64)) != 0, "rule {} matches {:?}", rule.id, g);
                    }
                }
                indexed.process(&ev, &mut a);
                plain.process(&ev, &mut b);
            }
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn the_index_leaves_out_other_scopes() {
        let set = rules(&scoped_rules(150));
        let index = RuleIndex::new(&set.rules);
        let posture = Posture::default();
        let g = Gen {
            iss: 2,
            path: 2,
            method: 0,
            status: 1,
            lifetime: 2,
            tenant: 1,
            flags: 4,
            ip: 1,
        };
        let ev = event(&g, 0);
        let cx = cx(&ev, &posture);
        let mut bits = Vec::new();
        index.candidates(&cx, &mut bits);
        let matching = set.rules.iter().filter(|r| r.filter.matches(&cx)).count();
        let candidates = ones(&bits).count();
        assert!(matching > 0, "the event matches some rules");
        // Only `suffix`, `contains` and `regex` conditions on strings no rule names may leave
        // in a rule that does not match; here every string is named or ruled out by prefix.
        assert!(
            candidates < set.rules.len() / 3,
            "{candidates} candidates of {}",
            set.rules.len()
        );
        assert!(candidates >= matching);
        let exact: Vec<usize> = (0..set.rules.len())
            .filter(|&r| set.rules[r].filter.matches(&cx))
            .collect();
        assert!(exact.iter().all(|&r| ones(&bits).any(|c| c == r)));
    }

    #[test]
    fn next_up_is_the_next_number() {
        for x in [-1e300, -2.5, -f64::MIN_POSITIVE, -0.0, 0.0, 1.0, 86_400.0, f64::MAX] {
            let up = next_up(x);
            assert!(up > x, "{x}");
            assert!(
                up == f64::INFINITY || (x + up) / 2.0 == x || (x + up) / 2.0 == up,
                "{x}"
            );
        }
    }

    #[test]
    fn numbers_fall_in_points_and_open_intervals() {
        let set = rules(
            "rules:\n  - {id: a, severity: low, action: alert, kind: match, key: token_id, where: {status: {gt: 200, lte: 404}}}\n  - {id: b, severity: low, action: alert, kind: match, key: token_id, where: {status: [401, 500]}}\n",
        );
        let Buckets::Numbers { cuts } = Buckets::numbers(set.rules.iter().flat_map(|r| &r.filter.conds)) else {
            panic!("status is a number");
        };
        assert_eq!(cuts, [200.0, 401.0, 404.0, 500.0]);
        let index = RuleIndex::new(&set.rules);
        let posture = Posture::default();
        let mut bits = Vec::new();
        for (status, want) in [
            (None, 0),
            (Some(200), 0),
            (Some(201), 1),
            (Some(401), 3),
            (Some(404), 1),
            (Some(405), 0),
            (Some(500), 2),
        ] {
            let mut g = Gen {
                iss: 0,
                path: 0,
                method: 0,
                status: 0,
                lifetime: 0,
                tenant: 0,
                flags: 0,
                ip: 0,
            };
            g.status = STATUS.iter().position(|s| *s == status).unwrap_or(0);
            let mut ev = event(&g, 0);
            ev.status = status;
            index.candidates(&cx(&ev, &posture), &mut bits);
            assert_eq!(bits, [want], "status {status:?}");
        }
    }
}
