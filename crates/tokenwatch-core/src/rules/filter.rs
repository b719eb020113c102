//! The `where` filter: conditions on event fields, all of which must hold.
//!
//! Constants are typed for their field when the rule is loaded (an IP constant is an
//! `IpAddr`, a CIDR list is parsed networks, a regex is compiled), so evaluating a filter
//! compares values and never parses anything. A condition on a field the event does not have
//! is false, except `exists: false`.

use std::net::IpAddr;

use regex::Regex;

use super::field::{Ctx, Field, Val};

#[derive(Debug, Clone, PartialEq)]
pub enum Const {
    Str(Box<str>),
    Num(f64),
    Bool(bool),
    Ip(IpAddr),
    Net(ipnet::IpNet),
}

#[derive(Debug, Clone)]
pub enum Op {
    Eq(Const),
    Ne(Const),
    In(Vec<Const>),
    NotIn(Vec<Const>),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    Regex(Regex),
    /// The address (or network) lies within one of these networks.
    Cidr(Vec<ipnet::IpNet>),
    NotCidr(Vec<ipnet::IpNet>),
    Exists(bool),
}

#[derive(Debug, Clone)]
pub struct Cond {
    pub field: Field,
    pub op: Op,
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub conds: Vec<Cond>,
}

impl Filter {
    pub fn matches(&self, cx: &Ctx<'_>) -> bool {
        self.conds.iter().all(|c| c.holds(cx))
    }

    /// Whether only authenticated events pass (`authenticated: true`): what a revoking rule
    /// must require, so that no forged token can get anyone revoked.
    pub fn requires_authenticated(&self) -> bool {
        self.conds.iter().any(|c| {
            c.field == Field::Authenticated
                && match &c.op {
                    Op::Eq(k) => *k == Const::Bool(true),
                    Op::In(ks) => ks.iter().all(|k| *k == Const::Bool(true)),
                    _ => false,
                }
        })
    }

    /// The custom claims the filter reads, so the decoder keeps them.
    pub fn claims(&self) -> impl Iterator<Item = &str> {
        self.conds.iter().filter_map(|c| match &c.field {
            Field::Claim(n) => Some(&**n),
            _ => None,
        })
    }
}

impl Cond {
    pub fn holds(&self, cx: &Ctx<'_>) -> bool {
        self.holds_for(self.field.get(cx))
    }

    /// Whether the condition holds for this value of its field: what [`Self::holds`] decides,
    /// also asked by the engine's rule index of the values it names at load time.
    pub fn holds_for(&self, v: Val<'_>) -> bool {
        match (&self.op, v) {
            (Op::Exists(want), v) => (v != Val::Missing) == *want,
            (_, Val::Missing) => false,
            (Op::Ne(c), Val::StrList(l)) => !l.iter().any(|s| eq(&Val::Str(s), c)),
            (Op::NotIn(cs), Val::StrList(l)) => !l.iter().any(|s| cs.iter().any(|c| eq(&Val::Str(s), c))),
            (op, Val::StrList(l)) => l.iter().any(|s| scalar(op, Val::Str(s))),
            (op, v) => scalar(op, v),
        }
    }
}

impl Op {
    /// Whether the operator may hold for a string that no `eq`, `ne`, `in` or `not_in`
    /// condition on its field names, and whose longest prefix among the field's `prefix`
    /// conditions is `prefix` (`None`: none of them): exact for every operator but `suffix`,
    /// `contains` and `regex`, which may hold. The engine's rule index asks this once per rule
    /// at load time ([`crate::engine`]); it must agree with [`scalar`] on such strings.
    pub fn may_hold_unnamed(&self, prefix: Option<&str>) -> bool {
        match self {
            Op::Eq(_) | Op::In(_) => false,
            Op::Ne(_) | Op::NotIn(_) => true,
            Op::Prefix(p) => prefix.is_some_and(|l| l.starts_with(&**p)),
            Op::Suffix(_) | Op::Contains(_) | Op::Regex(_) => true,
            Op::Gt(_) | Op::Gte(_) | Op::Lt(_) | Op::Lte(_) | Op::Cidr(_) => false,
            Op::NotCidr(_) => true,
            Op::Exists(want) => *want,
        }
    }
}

fn scalar(op: &Op, v: Val<'_>) -> bool {
    match op {
        Op::Eq(c) => eq(&v, c),
        Op::Ne(c) => !eq(&v, c),
        Op::In(cs) => cs.iter().any(|c| eq(&v, c)),
        Op::NotIn(cs) => !cs.iter().any(|c| eq(&v, c)),
        Op::Gt(x) => num(&v).is_some_and(|n| n > *x),
        Op::Gte(x) => num(&v).is_some_and(|n| n >= *x),
        Op::Lt(x) => num(&v).is_some_and(|n| n < *x),
        Op::Lte(x) => num(&v).is_some_and(|n| n <= *x),
        Op::Prefix(p) => text(&v, |s| s.starts_with(&**p)),
        Op::Suffix(p) => text(&v, |s| s.ends_with(&**p)),
        Op::Contains(p) => text(&v, |s| s.contains(&**p)),
        Op::Regex(r) => text(&v, |s| r.is_match(s)),
        Op::Cidr(nets) => in_nets(&v, nets),
        Op::NotCidr(nets) => !in_nets(&v, nets),
        Op::Exists(_) => true,
    }
}

fn in_nets(v: &Val<'_>, nets: &[ipnet::IpNet]) -> bool {
    match v {
        Val::Ip(ip) => nets.iter().any(|n| n.contains(ip)),
        Val::Net(net) => nets.iter().any(|n| n.contains(net)),
        _ => false,
    }
}

fn eq(v: &Val<'_>, c: &Const) -> bool {
    match (v, c) {
        (Val::Str(s), Const::Str(c)) => *s == &**c,
        (Val::Num(n), Const::Num(c)) => n == c,
        (Val::Bool(b), Const::Bool(c)) => b == c,
        (Val::Ip(ip), Const::Ip(c)) => ip == c,
        (Val::Net(n), Const::Net(c)) => n == c,
        _ => false,
    }
}

fn num(v: &Val<'_>) -> Option<f64> {
    match v {
        Val::Num(n) => Some(*n),
        _ => None,
    }
}

fn text(v: &Val<'_>, f: impl Fn(&str) -> bool) -> bool {
    match v {
        Val::Str(s) => f(s),
        _ => false,
    }
}
