//! The operators of `where` conditions, in one table: each operator's name, the field types
//! it applies to, and how to read its argument. The loader knows operators only through
//! [`OPS`]: adding one is one entry here, an [`Op`] variant and its test in `filter.rs`.

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::Node;

use super::field::{Field, FieldType};
use super::filter::{Const, Op};
use super::load::{finite_num, line_of, line_of_scalar, Cx};

/// One operator as rule files write it (`status: {gte: 500}`).
pub(super) struct OpSpec {
    pub name: &'static str,
    /// Whether it applies to a field of this type.
    pub applies: fn(FieldType) -> bool,
    /// Reads its argument, reporting each problem at its line.
    pub build: fn(&mut Cx<'_>, &OpArg<'_>) -> Option<Op>,
    /// Whether a compiled operator is this one.
    pub is: fn(&Op) -> bool,
}

fn any(_: FieldType) -> bool {
    true
}

fn numeric(t: FieldType) -> bool {
    matches!(t, FieldType::Num | FieldType::Seconds | FieldType::Any)
}

fn textual(t: FieldType) -> bool {
    matches!(t, FieldType::Str | FieldType::StrList | FieldType::Any)
}

fn address(t: FieldType) -> bool {
    matches!(t, FieldType::Ip | FieldType::Net)
}

/// Every operator, in the order messages list them.
pub(super) const OPS: &[OpSpec] = &[
    OpSpec {
        name: "eq",
        applies: any,
        build: |cx, a| Some(Op::Eq(a.constant(cx)?)),
        is: |o| matches!(o, Op::Eq(_)),
    },
    OpSpec {
        name: "ne",
        applies: any,
        build: |cx, a| Some(Op::Ne(a.constant(cx)?)),
        is: |o| matches!(o, Op::Ne(_)),
    },
    OpSpec {
        name: "in",
        applies: any,
        build: |cx, a| Some(Op::In(a.constants(cx)?)),
        is: |o| matches!(o, Op::In(_)),
    },
    OpSpec {
        name: "not_in",
        applies: any,
        build: |cx, a| Some(Op::NotIn(a.constants(cx)?)),
        is: |o| matches!(o, Op::NotIn(_)),
    },
    OpSpec {
        name: "gt",
        applies: numeric,
        build: |cx, a| Some(Op::Gt(a.number(cx)?)),
        is: |o| matches!(o, Op::Gt(_)),
    },
    OpSpec {
        name: "gte",
        applies: numeric,
        build: |cx, a| Some(Op::Gte(a.number(cx)?)),
        is: |o| matches!(o, Op::Gte(_)),
    },
    OpSpec {
        name: "lt",
        applies: numeric,
        build: |cx, a| Some(Op::Lt(a.number(cx)?)),
        is: |o| matches!(o, Op::Lt(_)),
    },
    OpSpec {
        name: "lte",
        applies: numeric,
        build: |cx, a| Some(Op::Lte(a.number(cx)?)),
        is: |o| matches!(o, Op::Lte(_)),
    },
    OpSpec {
        name: "prefix",
        applies: textual,
        build: |cx, a| Some(Op::Prefix(a.text(cx)?)),
        is: |o| matches!(o, Op::Prefix(_)),
    },
    OpSpec {
        name: "suffix",
        applies: textual,
        build: |cx, a| Some(Op::Suffix(a.text(cx)?)),
        is: |o| matches!(o, Op::Suffix(_)),
    },
    OpSpec {
        name: "contains",
        applies: textual,
        build: |cx, a| Some(Op::Contains(a.text(cx)?)),
        is: |o| matches!(o, Op::Contains(_)),
    },
    OpSpec {
        name: "regex",
        applies: textual,
        build: |cx, a| Some(Op::Regex(a.regex(cx)?)),
        is: |o| matches!(o, Op::Regex(_)),
    },
    OpSpec {
        name: "cidr",
        applies: address,
        build: |cx, a| Some(Op::Cidr(a.cidrs(cx)?)),
        is: |o| matches!(o, Op::Cidr(_)),
    },
    OpSpec {
        name: "not_cidr",
        applies: address,
        build: |cx, a| Some(Op::NotCidr(a.cidrs(cx)?)),
        is: |o| matches!(o, Op::NotCidr(_)),
    },
    OpSpec {
        name: "exists",
        applies: any,
        build: |cx, a| Some(Op::Exists(a.boolean(cx)?)),
        is: |o| matches!(o, Op::Exists(_)),
    },
];

impl Op {
    /// The operator's name in rule files ([`OPS`]).
    pub fn name(&self) -> &'static str {
        OPS.iter()
            .find(|s| (s.is)(self))
            .expect("every Op variant has an entry in OPS (tested)")
            .name
    }
}

/// An operator's argument, with what its messages name.
pub(super) struct OpArg<'n> {
    /// The operator.
    pub name: &'static str,
    pub field: &'n Field,
    /// The field's name, for messages.
    pub fname: String,
    pub node: &'n Node,
}

impl<'n> OpArg<'n> {
    fn scalar(&self, cx: &mut Cx<'_>) -> Option<&'n MarkedScalarNode> {
        match self.node {
            Node::Scalar(s) => Some(s),
            other => {
                cx.err(line_of(other), format!("`{}` takes a single value", self.name));
                None
            }
        }
    }

    fn list(&self, cx: &mut Cx<'_>) -> Option<Vec<&'n Node>> {
        match self.node {
            Node::Sequence(seq) => Some(seq.iter().collect()),
            Node::Scalar(_) => Some(vec![self.node]),
            other => {
                cx.err(line_of(other), format!("`{}` takes a list", self.name));
                None
            }
        }
    }

    fn constant(&self, cx: &mut Cx<'_>) -> Option<Const> {
        let s = self.scalar(cx)?;
        cx.constant(self.field, s)
    }

    fn constants(&self, cx: &mut Cx<'_>) -> Option<Vec<Const>> {
        let items = self.list(cx)?;
        cx.constants(self.field, self.node, items.into_iter())
    }

    /// A number to compare with, typed for the field itself: a duration only where the
    /// field is one.
    fn number(&self, cx: &mut Cx<'_>) -> Option<f64> {
        let s = self.scalar(cx)?;
        if matches!(self.field.ty(), FieldType::Num | FieldType::Seconds) {
            return match cx.constant(self.field, s)? {
                Const::Num(n) => Some(n),
                _ => None,
            };
        }
        let text = s.as_str().trim();
        let n = finite_num(text);
        if n.is_none() {
            cx.err(
                line_of_scalar(s),
                format!("`{}` on `{}` takes a number, not `{text}`", self.name, self.fname),
            );
        }
        n
    }

    fn text(&self, cx: &mut Cx<'_>) -> Option<Box<str>> {
        Some(self.scalar(cx)?.as_str().into())
    }

    fn regex(&self, cx: &mut Cx<'_>) -> Option<regex::Regex> {
        let s = self.scalar(cx)?;
        match regex::RegexBuilder::new(s.as_str()).size_limit(1 << 20).build() {
            Ok(r) => Some(r),
            Err(e) => {
                let first = e.to_string().lines().last().unwrap_or("").trim().to_string();
                cx.err(
                    line_of_scalar(s),
                    format!("invalid regex for `{}`: {first}", self.fname),
                );
                None
            }
        }
    }

    fn cidrs(&self, cx: &mut Cx<'_>) -> Option<Vec<ipnet::IpNet>> {
        let items = self.list(cx)?;
        cx.cidrs(items)
    }

    fn boolean(&self, cx: &mut Cx<'_>) -> Option<bool> {
        let s = self.scalar(cx)?;
        let b = s.as_bool();
        if b.is_none() {
            cx.err(line_of_scalar(s), format!("`{}` takes true or false", self.name));
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_operator_loads_and_is_named_by_its_entry() {
        for spec in OPS {
            let (field, arg) = match spec.name {
                "cidr" | "not_cidr" => ("client_ip", "[10.0.0.0/8]"),
                "gt" | "gte" | "lt" | "lte" => ("status", "400"),
                "exists" => ("kid", "true"),
                "in" | "not_in" => ("path", "[/a, /b]"),
                _ => ("path", "/a"),
            };
            let yaml = format!(
                "id: r\nseverity: low\naction: alert\nkind: match\nkey: token_id\nwhere:\n  {field}: {{{}: {arg}}}\n",
                spec.name
            );
            let rules = super::super::load_str(Path::new("r.yaml"), &yaml).unwrap();
            let op = &rules[0].filter.conds[0].op;
            assert_eq!(op.name(), spec.name);
            assert!(crate::engine::trace::describe(op).starts_with(&format!("{} ", spec.name)));
        }
    }
}
