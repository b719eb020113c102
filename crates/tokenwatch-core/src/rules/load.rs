//! Loading rule files: YAML with line numbers in, compiled rules or `file:line` errors out.
//!
//! The YAML is read with `marked-yaml`, which keeps the position of every node, and walked by
//! hand rather than through serde, so that every message (unknown key, wrong type, bad
//! regex, bad CIDR, duplicate id) points at the line to fix. All problems in all files are
//! collected before the load fails, so one `tokenwatch validate` run lists them all.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoaderOptions, Node};

use super::field::{Field, FieldType};
use super::filter::{Cond, Const, Filter, Op};
use super::kinds::{KindSpec, KINDS};
use super::ops::{OpArg, OPS};
use super::{parse_duration_ms, Action, Allow, Budget, Cooldown, Kind, Origin, Rule, RuleSet, Severity};

/// One problem in a rule file: `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}: {}", file.display(), line, message)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

/// Every problem found while loading a rule directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<RuleError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// Loads every `*.yaml` / `*.yml` file in `dir` (not recursive), in file-name order, except
/// the rule tests beside them (`*.test.yaml`, see [`is_rule_test`]).
pub fn load_dir(dir: &Path) -> Result<RuleSet, LoadErrors> {
    let fail = |line: usize, message: String| {
        LoadErrors(vec![RuleError {
            file: dir.to_path_buf(),
            line,
            message,
        }])
    };
    let entries = std::fs::read_dir(dir).map_err(|e| {
        fail(
            0,
            format!("cannot read the rule directory: {e} (give an existing directory with --rules)"),
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .filter(|p| !is_rule_test(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(fail(0, "no *.yaml or *.yml rule files in the rule directory".into()));
    }
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(text) => match load_str(f, &text) {
                Ok(mut r) => rules.append(&mut r),
                Err(mut e) => errors.append(&mut e),
            },
            Err(e) => errors.push(RuleError {
                file: f.clone(),
                line: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let mut seen: HashMap<String, Origin> = HashMap::new();
    for r in &rules {
        if let Some(first) = seen.get(&*r.id) {
            errors.push(RuleError {
                file: r.origin.file.clone(),
                line: r.origin.line,
                message: format!("rule id `{}` is already used at {first}", r.id),
            });
        } else {
            seen.insert(r.id.to_string(), r.origin.clone());
        }
    }
    if errors.is_empty() {
        Ok(RuleSet {
            rules,
            files: files.len(),
        })
    } else {
        Err(LoadErrors(errors))
    }
}

/// A rule test file (`NAME.test.yaml` / `NAME.test.yml`), which lives beside the rules and is
/// read by `tokenwatch test`, never as rules.
pub fn is_rule_test(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
}

/// Loads the rules of one file. A file is either one rule (a mapping with `id`) or a
/// mapping with a `rules:` list.
pub fn load_str(file: &Path, text: &str) -> Result<Vec<Rule>, Vec<RuleError>> {
    let mut cx = Cx {
        file,
        errors: Vec::new(),
    };
    let opts = LoaderOptions::default().error_on_duplicate_keys(true);
    let root = match marked_yaml::parse_yaml_with_options(0, text, opts) {
        Ok(n) => n,
        Err(e) => {
            let (line, msg) = yaml_error(&e);
            cx.err(line, msg);
            return Err(cx.errors);
        }
    };
    let Some(map) = root.as_mapping() else {
        cx.err(
            line_of(&root),
            "a rule file must be a mapping (one rule, or `rules:` with a list)".into(),
        );
        return Err(cx.errors);
    };
    let mut rules = Vec::new();
    if let Some(list) = map.get("rules") {
        if map.len() > 1 {
            for (k, _) in map.iter().filter(|(k, _)| k.as_str() != "rules") {
                cx.err(
                    line_of_scalar(k),
                    format!("unknown top-level key `{}` beside `rules`", k.as_str()),
                );
            }
        }
        match list.as_sequence() {
            Some(seq) => {
                for item in seq.iter() {
                    match item.as_mapping() {
                        Some(m) => rules.extend(cx.rule(m)),
                        None => cx.err(line_of(item), "each entry of `rules` must be a mapping".into()),
                    }
                }
            }
            None => cx.err(line_of(list), "`rules` must be a list of rules".into()),
        }
    } else {
        rules.extend(cx.rule(map));
    }
    if cx.errors.is_empty() {
        Ok(rules)
    } else {
        Err(cx.errors)
    }
}

fn yaml_error(e: &marked_yaml::LoadError) -> (usize, String) {
    use marked_yaml::LoadError as L;
    match e {
        L::TopLevelMustBeMapping(m) => (m.line(), "a rule file must be a mapping".into()),
        L::TopLevelMustBeSequence(m) => (m.line(), "unexpected top-level sequence".into()),
        L::UnexpectedAnchor(m) => (m.line(), "YAML anchors are not supported in rule files".into()),
        L::MappingKeyMustBeScalar(m) => (m.line(), "mapping keys must be plain strings".into()),
        L::UnexpectedTag(m) => (m.line(), "YAML tags are not supported in rule files".into()),
        L::ScanError(m, se) => (m.line(), format!("invalid YAML: {se}")),
        L::DuplicateKey(d) => (
            line_of_scalar(&d.key),
            format!(
                "duplicate key `{}` (first at line {})",
                d.key.as_str(),
                line_of_scalar(&d.prev_key)
            ),
        ),
    }
}

pub(super) fn line_of(n: &Node) -> usize {
    n.span().start().map(marked_yaml::Marker::line).unwrap_or(0)
}

pub(super) fn line_of_scalar(n: &MarkedScalarNode) -> usize {
    n.span().start().map(marked_yaml::Marker::line).unwrap_or(0)
}

const COMMON_KEYS: &[&str] = &[
    "id",
    "description",
    "severity",
    "action",
    "mode",
    "kind",
    "key",
    "where",
    "allow",
    "cooldown",
    "budget",
];

/// `a, b, c or d`, for the messages that list what is allowed.
fn one_of<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    let n = names.len();
    let mut out = String::new();
    for (i, name) in names.enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == n { " or " } else { ", " });
        }
        out.push_str(name);
    }
    out
}

/// The loading of one file: where it is, and the problems found so far.
pub(super) struct Cx<'f> {
    file: &'f Path,
    errors: Vec<RuleError>,
}

impl Cx<'_> {
    pub(super) fn err(&mut self, line: usize, message: String) {
        self.errors.push(RuleError {
            file: self.file.to_path_buf(),
            line,
            message,
        });
    }

    pub(super) fn scalar<'n>(
        &mut self,
        map: &'n MarkedMappingNode,
        key: &str,
        required: bool,
    ) -> Option<&'n MarkedScalarNode> {
        match map.get(key) {
            Some(Node::Scalar(s)) => Some(s),
            Some(other) => {
                self.err(line_of(other), format!("`{key}` must be a single value"));
                None
            }
            None => {
                if required {
                    self.err(line_of_map(map), format!("missing required key `{key}`"));
                }
                None
            }
        }
    }

    /// One rule; `None` (with every problem reported) unless it compiles.
    fn rule(&mut self, m: &MarkedMappingNode) -> Option<Rule> {
        let before = self.errors.len();
        let line = line_of_map(m);
        let id = self.id(m, line);
        let description = self
            .scalar(m, "description", false)
            .map(|s| s.as_str().trim().to_string());
        let severity = self.choice(m, "severity", true, &Severity::ALL.map(|s| (s.as_str(), s)));
        let action = self.choice(m, "action", true, &Action::ALL.map(|a| (a.as_str(), a)));
        let shadow = self
            .choice(m, "mode", false, &[("enforce", false), ("shadow", true)])
            .unwrap_or(false);
        let key = self.scalar(m, "key", true).and_then(|s| self.field(s));
        let kind = self.kind(m);
        let filter = self.where_of(m);
        self.revoking_needs_authenticated(m, action, &filter);
        let allow = self.allow_of(m);
        let cooldown = self.cooldown(m);
        let budget = self.budget(m, action);
        if self.errors.len() > before {
            return None;
        }
        let id = id?;
        Some(Rule {
            description: description.unwrap_or_else(|| id.clone()).into(),
            id: id.into(),
            severity: severity?,
            action: action?,
            shadow,
            kind: kind?,
            key: key?,
            filter,
            allow,
            cooldown,
            budget,
            origin: Origin {
                file: self.file.to_path_buf(),
                line,
            },
        })
    }

    fn id(&mut self, m: &MarkedMappingNode, line: usize) -> Option<String> {
        let node = self.scalar(m, "id", true)?;
        let id = node.as_str().trim().to_string();
        let ok = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            let l = self.scalar(m, "id", false).map_or(line, line_of_scalar);
            self.err(l, format!("rule id `{id}` must be letters, digits, `-`, `_` or `.`"));
        }
        Some(id)
    }

    /// A value that must be one of `options` (`unknown severity `x` (expected low, ...)`).
    fn choice<T: Copy>(
        &mut self,
        m: &MarkedMappingNode,
        key: &str,
        required: bool,
        options: &[(&str, T)],
    ) -> Option<T> {
        let s = self.scalar(m, key, required)?;
        let found = options.iter().find(|(name, _)| *name == s.as_str()).map(|(_, v)| *v);
        if found.is_none() {
            let expected = one_of(options.iter().map(|(name, _)| *name));
            self.err(
                line_of_scalar(s),
                format!("unknown {key} `{}` (expected {expected})", s.as_str()),
            );
        }
        found
    }

    /// `kind` and its parameters, read by its entry in [`KINDS`]; a key that is neither
    /// common nor a parameter of the rule's kind is reported at its line.
    fn kind(&mut self, m: &MarkedMappingNode) -> Option<Kind> {
        let node = self.scalar(m, "kind", true);
        let spec = node.and_then(|n| {
            let spec = KINDS.iter().find(|k| k.name == n.as_str());
            if spec.is_none() {
                let expected = one_of(KINDS.iter().map(|k| k.name));
                self.err(
                    line_of_scalar(n),
                    format!("unknown kind `{}` (expected {expected})", n.as_str()),
                );
            }
            spec
        });
        self.unknown_keys(m, node.map(MarkedScalarNode::as_str), spec);
        (spec?.build)(self, m)
    }

    /// Unknown keys, and parameters that belong to another kind.
    fn unknown_keys(&mut self, m: &MarkedMappingNode, kind: Option<&str>, spec: Option<&KindSpec>) {
        let own = spec.map_or(&[][..], |s| s.params);
        for (k, _) in m.iter() {
            let key = k.as_str();
            if COMMON_KEYS.contains(&key) || own.contains(&key) {
                continue;
            }
            let elsewhere = KINDS.iter().find(|other| other.params.contains(&key));
            let msg = match (elsewhere, kind) {
                (Some(other), Some(kind)) => {
                    format!("`{key}` is a parameter of kind {}, not of kind {kind}", other.name)
                }
                _ => format!(
                    "unknown key `{key}` (expected {}{}{})",
                    COMMON_KEYS.join(", "),
                    if own.is_empty() { "" } else { ", " },
                    own.join(", ")
                ),
            };
            self.err(line_of_scalar(k), msg);
        }
    }

    fn where_of(&mut self, m: &MarkedMappingNode) -> Filter {
        match m.get("where") {
            None => Filter::default(),
            Some(Node::Mapping(w)) => self.filter(w),
            Some(other) => {
                self.err(line_of(other), "`where` must be a mapping of field: condition".into());
                Filter::default()
            }
        }
    }

    fn revoking_needs_authenticated(&mut self, m: &MarkedMappingNode, action: Option<Action>, filter: &Filter) {
        let (Some(action @ (Action::RevokeToken | Action::RevokeSubject)), Some(node)) = (action, m.get("action"))
        else {
            return;
        };
        if !filter.requires_authenticated() {
            self.err(
                line_of(node),
                format!(
                    "action {} needs `authenticated: true` in `where`: only a token tokenwatch verified \
                     (--jwks) or the gateway attested may be revoked, or a forged token could get its \
                     victim revoked (README: What can trigger a revocation)",
                    action.as_str()
                ),
            );
        }
    }

    fn allow_of(&mut self, m: &MarkedMappingNode) -> Allow {
        match m.get("allow") {
            None => Allow::default(),
            Some(Node::Mapping(a)) => self.allow(a),
            Some(other) => {
                self.err(
                    line_of(other),
                    "`allow` must be a mapping with cidrs, subjects and/or issuers".into(),
                );
                Allow::default()
            }
        }
    }

    fn cooldown(&mut self, m: &MarkedMappingNode) -> Cooldown {
        match self.scalar(m, "cooldown", false) {
            None => Cooldown::Forever,
            Some(s) if matches!(s.as_str(), "forever" | "once") => Cooldown::Forever,
            Some(s) => match parse_duration_ms(s.as_str()) {
                Ok(ms) => Cooldown::Ms(ms),
                Err(e) => {
                    self.err(line_of_scalar(s), format!("cooldown: {e}, or `forever`"));
                    Cooldown::Forever
                }
            },
        }
    }

    fn budget(&mut self, m: &MarkedMappingNode, action: Option<Action>) -> Option<Budget> {
        let s = self.scalar(m, "budget", false)?;
        if action == Some(Action::Alert) {
            self.err(
                line_of_scalar(s),
                "`budget` limits revocations: it applies to revoke_token and revoke_subject rules only".into(),
            );
            return None;
        }
        s.as_str()
            .parse::<Budget>()
            .map_err(|e| self.err(line_of_scalar(s), e.to_string()))
            .ok()
    }

    pub(super) fn field(&mut self, s: &MarkedScalarNode) -> Option<Field> {
        Field::parse(s.as_str().trim())
            .map_err(|e| self.err(line_of_scalar(s), e.to_string()))
            .ok()
    }

    pub(super) fn threshold(&mut self, m: &MarkedMappingNode) -> Option<u32> {
        let s = self.scalar(m, "threshold", true)?;
        match s.as_str().trim().parse::<u32>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.err(
                    line_of_scalar(s),
                    format!("`threshold` must be a whole number of at least 1, not `{}`", s.as_str()),
                );
                None
            }
        }
    }

    pub(super) fn duration(&mut self, m: &MarkedMappingNode, key: &str, required: bool, zero_ok: bool) -> Option<i64> {
        let s = self.scalar(m, key, required)?;
        match parse_duration_ms(s.as_str()) {
            Ok(0) if !zero_ok => {
                self.err(line_of_scalar(s), format!("`{key}` must be longer than 0"));
                None
            }
            Ok(ms) => Some(ms),
            Err(e) => {
                self.err(line_of_scalar(s), format!("`{key}`: {e}"));
                None
            }
        }
    }

    pub(super) fn number(&mut self, m: &MarkedMappingNode, key: &str, min: f64) -> Option<f64> {
        let s = self.scalar(m, key, true)?;
        match s.as_str().trim().parse::<f64>() {
            Ok(n) if n.is_finite() && n >= min => Some(n),
            _ => {
                self.err(
                    line_of_scalar(s),
                    format!("`{key}` must be a number of at least {min}, not `{}`", s.as_str()),
                );
                None
            }
        }
    }

    fn filter(&mut self, w: &MarkedMappingNode) -> Filter {
        let mut conds = Vec::new();
        for (k, v) in w.iter() {
            let Some(field) = self.field(k) else { continue };
            match v {
                Node::Scalar(s) => {
                    if let Some(c) = self.constant(&field, s) {
                        conds.push(Cond { field, op: Op::Eq(c) });
                    }
                }
                Node::Sequence(seq) => {
                    if let Some(cs) = self.constants(&field, v, seq.iter()) {
                        conds.push(Cond { field, op: Op::In(cs) });
                    }
                }
                Node::Mapping(ops) => {
                    if ops.is_empty() {
                        self.err(line_of(v), format!("no condition given for `{}`", field.name()));
                    }
                    for (op, arg) in ops.iter() {
                        if let Some(op) = self.op(&field, op, arg) {
                            conds.push(Cond {
                                field: field.clone(),
                                op,
                            });
                        }
                    }
                }
            }
        }
        Filter { conds }
    }

    pub(super) fn constants<'n>(
        &mut self,
        field: &Field,
        at: &Node,
        items: impl Iterator<Item = &'n Node>,
    ) -> Option<Vec<Const>> {
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match item {
                Node::Scalar(s) => match self.constant(field, s) {
                    Some(c) => out.push(c),
                    None => ok = false,
                },
                other => {
                    self.err(line_of(other), "list entries must be single values".into());
                    ok = false;
                }
            }
        }
        if out.is_empty() && ok {
            self.err(line_of(at), format!("empty list for `{}`", field.name()));
            return None;
        }
        ok.then_some(out)
    }

    /// A constant typed for the field it is compared with.
    pub(super) fn constant(&mut self, field: &Field, s: &MarkedScalarNode) -> Option<Const> {
        let text = s.as_str().trim();
        let line = line_of_scalar(s);
        let name = field.name();
        let c = match field.ty() {
            FieldType::Str | FieldType::StrList => Some(Const::Str(text.into())),
            FieldType::Num => finite_num(text).map(Const::Num),
            FieldType::Seconds => finite_num(text)
                .or_else(|| parse_duration_ms(text).ok().map(|ms| ms as f64 / 1000.0))
                .map(Const::Num),
            FieldType::Bool => s.as_bool().map(Const::Bool),
            // as events carry them: IPv4-mapped IPv6 is IPv4
            FieldType::Ip => text
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| Const::Ip(ip.to_canonical())),
            FieldType::Net => text.parse::<ipnet::IpNet>().ok().map(|n| Const::Net(n.trunc())),
            FieldType::Any => Some(if let Some(b) = s.as_bool() {
                Const::Bool(b)
            } else if let Some(n) = finite_num(text).filter(|_| s.may_coerce()) {
                Const::Num(n)
            } else {
                Const::Str(text.into())
            }),
        };
        if c.is_none() {
            let want = match field.ty() {
                FieldType::Num => "a number",
                FieldType::Seconds => "a number of seconds or a duration like 24h",
                FieldType::Bool => "true or false",
                FieldType::Ip => "an IP address",
                FieldType::Net => "a network like 192.0.2.0/24",
                _ => "a value",
            };
            self.err(line, format!("`{name}` takes {want}, not `{text}`"));
        }
        c
    }

    /// One operator of a condition, read by its entry in [`OPS`].
    fn op(&mut self, field: &Field, op: &MarkedScalarNode, arg: &Node) -> Option<Op> {
        let line = line_of_scalar(op);
        let Some(spec) = OPS.iter().find(|s| s.name == op.as_str()) else {
            let expected = one_of(OPS.iter().map(|s| s.name));
            self.err(
                line,
                format!("unknown operator `{}` (expected {expected})", op.as_str()),
            );
            return None;
        };
        let fname = field.name();
        if !(spec.applies)(field.ty()) {
            self.err(line, format!("operator `{}` does not apply to `{fname}`", spec.name));
            return None;
        }
        let arg = OpArg {
            name: spec.name,
            field,
            fname,
            node: arg,
        };
        (spec.build)(self, &arg)
    }

    pub(super) fn cidrs(&mut self, items: Vec<&Node>) -> Option<Vec<ipnet::IpNet>> {
        let mut out = Vec::new();
        let mut ok = true;
        for n in items {
            let Node::Scalar(s) = n else {
                self.err(line_of(n), "CIDR entries must be single values".into());
                ok = false;
                continue;
            };
            let t = s.as_str().trim();
            let net = t
                .parse::<ipnet::IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match net {
                Ok(n) => out.push(n),
                Err(_) => {
                    self.err(line_of_scalar(s), format!("`{t}` is not a CIDR network or IP address"));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn allow(&mut self, a: &MarkedMappingNode) -> Allow {
        let mut allow = Allow::default();
        for (k, v) in a.iter() {
            let items: Vec<&Node> = match v {
                Node::Sequence(seq) => seq.iter().collect(),
                Node::Scalar(_) => vec![v],
                Node::Mapping(_) => {
                    self.err(line_of(v), format!("`allow.{}` must be a list", k.as_str()));
                    continue;
                }
            };
            match k.as_str() {
                "cidrs" => allow.cidrs = self.cidrs(items).unwrap_or_default(),
                "subjects" | "issuers" => {
                    let mut vals = Vec::new();
                    for i in items {
                        match i {
                            Node::Scalar(s) => vals.push(s.as_str().trim().into()),
                            other => self.err(line_of(other), "entries must be single values".into()),
                        }
                    }
                    if k.as_str() == "subjects" {
                        allow.subjects = vals;
                    } else {
                        allow.issuers = vals;
                    }
                }
                other => self.err(
                    line_of_scalar(k),
                    format!("unknown key `allow.{other}` (expected cidrs, subjects or issuers)"),
                ),
            }
        }
        allow
    }
}

pub(super) fn line_of_map(m: &MarkedMappingNode) -> usize {
    m.span().start().map(marked_yaml::Marker::line).unwrap_or(0)
}

/// A number written in a rule, when it is one and finite.
pub(super) fn finite_num(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        load_str(Path::new("r.yaml"), text)
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    const OK: &str = "\
id: replay
description: replayed
severity: high
action: revoke_token
kind: distinct_count
key: token_id
distinct: network
threshold: 3
window: 10m
where:
  accepted: true
  authenticated: true
  status: {gte: 200, lt: 400}
  path: {prefix: /api, regex: '^/api/v[0-9]+/'}
  client_ip: {not_cidr: [10.0.0.0/8, 192.168.1.1]}
  method: [GET, POST]
  lifetime: {gt: 24h}
  claim.tenant: acme
allow:
  cidrs: [203.0.113.0/24]
  subjects: ['https://idp|svc']
  issuers: [https://internal]
cooldown: forever
";

    #[test]
    fn a_full_rule_compiles() {
        let r = load_str(Path::new("r.yaml"), OK).unwrap();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(&*r.id, "replay");
        assert_eq!(
            r.kind,
            Kind::DistinctCount {
                field: Field::Network,
                threshold: 3,
                window_ms: 600_000
            }
        );
        assert_eq!(r.filter.conds.len(), 10);
        assert_eq!(r.allow.cidrs.len(), 1);
        assert_eq!(r.cooldown, Cooldown::Forever);
        assert_eq!(r.origin.line, 1);
        assert!(!r.shadow);
    }

    #[test]
    fn budgets_belong_to_revoking_rules_and_name_their_line() {
        let base = "id: r\nseverity: low\nkind: match\nkey: subject\n";
        let r = load_str(
            Path::new("r.yaml"),
            &format!("{base}where: {{authenticated: true}}\naction: revoke_subject\nbudget: 5/1h\n"),
        )
        .unwrap();
        assert_eq!(
            r[0].budget,
            Some(crate::rules::Budget {
                max: 5,
                window_ms: 3_600_000
            })
        );
        let e = errs(&format!("{base}action: alert\nbudget: 5/1h\n"));
        assert!(
            e[0].starts_with("r.yaml:6:") && e[0].contains("revoke_token and revoke_subject"),
            "{e:?}"
        );
        let e = errs(&format!(
            "{base}where: {{authenticated: true}}\naction: revoke_token\nbudget: lots\n"
        ));
        assert!(e[0].starts_with("r.yaml:7:") && e[0].contains("COUNT/WINDOW"), "{e:?}");
    }

    #[test]
    fn a_rules_list_in_one_file() {
        let text = "rules:\n  - id: a\n    severity: low\n    action: alert\n    kind: match\n    key: token_id\n    mode: shadow\n    cooldown: 5m\n  - id: b\n    severity: low\n    action: alert\n    kind: revoked_use\n    key: subject\n";
        let r = load_str(Path::new("r.yaml"), text).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r[0].shadow);
        assert_eq!(r[0].cooldown, Cooldown::Ms(300_000));
        assert_eq!(r[1].origin.line, 9);
    }

    #[test]
    fn every_problem_has_file_and_line() {
        let text = "\
id: bad rule
severity: severe
action: revoke
kind: count
key: tokenid
threshold: 0
window: 10
max_speed_kmh: 5
colour: red
where:
  status: {gt: abc}
  path: {regex: '('}
  client_ip: {cidr: [300.0.0.0/8]}
  accepted: maybe
  expired: {prefix: x}
  exp: {lt: 1h}
  claim.level: {gte: 2d}
";
        let e = errs(text);
        let want = [
            "r.yaml:1: rule id `bad rule` must be",
            "r.yaml:2: unknown severity `severe`",
            "r.yaml:3: unknown action `revoke`",
            "r.yaml:5: unknown field `tokenid`",
            "r.yaml:8: `max_speed_kmh` is a parameter of kind geo_velocity, not of kind count",
            "r.yaml:9: unknown key `colour`",
            "r.yaml:6: `threshold` must be a whole number",
            "r.yaml:7: `window`: duration `10` needs a unit",
            "r.yaml:11: `status` takes a number, not `abc`",
            "r.yaml:12: invalid regex for `path`",
            "r.yaml:13: `300.0.0.0/8` is not a CIDR",
            "r.yaml:14: `accepted` takes true or false, not `maybe`",
            "r.yaml:15: operator `prefix` does not apply to `expired`",
            "r.yaml:16: `exp` takes a number, not `1h`",
            "r.yaml:17: `gte` on `claim.level` takes a number, not `2d`",
        ];
        for w in want {
            assert!(e.iter().any(|m| m.starts_with(w)), "missing `{w}` in {e:#?}");
        }
    }

    #[test]
    fn unknown_names_list_what_the_tables_allow() {
        let rule = |rest: &str| format!("id: r\nseverity: low\naction: alert\nkey: token_id\n{rest}");
        assert_eq!(
            errs(&rule("kind: counter\n")),
            ["r.yaml:5: unknown kind `counter` (expected match, count, distinct_count, geo_velocity or revoked_use)"]
        );
        assert_eq!(
            errs(&rule("kind: match\nwhere:\n  path: {like: x}\n")),
            [
                "r.yaml:7: unknown operator `like` (expected eq, ne, in, not_in, gt, gte, lt, lte, prefix, suffix, \
              contains, regex, cidr, not_cidr or exists)"
            ]
        );
        assert_eq!(
            errs(&rule("kind: match\nmode: loud\n")),
            ["r.yaml:6: unknown mode `loud` (expected enforce or shadow)"]
        );
        assert_eq!(
            errs(&rule(
                "kind: geo_velocity\nmax_gap: 1h\nmin_distance_km: 1\nmax_speed_kmh: 9\nwindow: 1m\n"
            )),
            ["r.yaml:9: `window` is a parameter of kind count, not of kind geo_velocity"]
        );
    }

    #[test]
    fn comparisons_are_typed_for_their_own_field() {
        let rule =
            |cond: &str| format!("id: r\nseverity: low\naction: alert\nkind: match\nkey: token_id\nwhere:\n  {cond}\n");
        for bad in [
            "status: {gt: 5m}",
            "iat: {gte: 24h}",
            "nbf: {lte: 1d}",
            "exp: {lt: 90s}",
        ] {
            let e = errs(&rule(bad));
            let field = bad.split(':').next().unwrap();
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert!(
                e[0].starts_with(&format!("r.yaml:7: `{field}` takes a number, not `")),
                "{bad}: {e:?}"
            );
        }
        let ok = |cond: &str| match &load_str(Path::new("r.yaml"), &rule(cond)).unwrap()[0].filter.conds[0].op {
            Op::Gt(n) | Op::Gte(n) | Op::Lt(n) | Op::Lte(n) => *n,
            other => panic!("{other:?}"),
        };
        assert_eq!(ok("status: {gte: 500}"), 500.0);
        assert_eq!(ok("exp: {lt: 1795910400}"), 1_795_910_400.0);
        assert_eq!(ok("lifetime: {gt: 24h}"), 86_400.0);
        assert_eq!(ok("lifetime: {gt: 3600}"), 3_600.0);
        assert_eq!(ok("claim.level: {gt: 2.5}"), 2.5);
    }

    #[test]
    fn a_revoking_rule_must_require_authenticated_events() {
        let rule = |action: &str, cond: &str| {
            format!(
                "id: r\nseverity: high\naction: {action}\nkind: match\nkey: token_id\nwhere:\n  accepted: true\n{cond}"
            )
        };
        for action in ["revoke_token", "revoke_subject"] {
            for cond in [
                "",
                "  authenticated: false\n",
                "  authenticated: [true, false]\n",
                "  verified: true\n",
            ] {
                let e = errs(&rule(action, cond));
                assert_eq!(e.len(), 1, "{action} {cond}: {e:?}");
                assert!(
                    e[0].starts_with(&format!(
                        "r.yaml:3: action {action} needs `authenticated: true` in `where`"
                    )),
                    "{e:?}"
                );
            }
            for cond in ["  authenticated: true\n", "  authenticated: [true]\n"] {
                assert!(
                    load_str(Path::new("r.yaml"), &rule(action, cond)).is_ok(),
                    "{action} {cond}"
                );
            }
        }
        // alerts may keep using `accepted` alone
        assert!(load_str(Path::new("r.yaml"), &rule("alert", "")).is_ok());
    }

    #[test]
    fn yaml_syntax_and_duplicates() {
        let e = errs("id: a\nid: b\n");
        assert!(
            e[0].starts_with("r.yaml:2: duplicate key `id` (first at line 1)"),
            "{e:?}"
        );
        let e = errs("id: [a\n");
        assert!(e[0].starts_with("r.yaml:") && e[0].contains("invalid YAML"), "{e:?}");
        let e = errs("- a\n- b\n");
        assert!(e[0].contains("must be a mapping"), "{e:?}");
        let e = errs("id: x\nseverity: low\naction: alert\nkind: match\n");
        assert!(e[0].starts_with("r.yaml:1: missing required key `key`"), "{e:?}");
    }

    #[test]
    fn duplicate_ids_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let rule = "id: same\nseverity: low\naction: alert\nkind: match\nkey: token_id\n";
        std::fs::write(dir.path().join("a.yaml"), rule).unwrap();
        std::fs::write(dir.path().join("b.yml"), rule).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let e = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("b.yml:1: rule id `same` is already used at") && e.contains("a.yaml:1"),
            "{e}"
        );
        let e = load_dir(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("cannot read the rule directory"), "{e}");
    }

    #[test]
    fn rule_tests_beside_the_rules_are_not_rules() {
        let dir = tempfile::tempdir().unwrap();
        let rule = "id: one\nseverity: low\naction: alert\nkind: match\nkey: token_id\n";
        std::fs::write(dir.path().join("one.yaml"), rule).unwrap();
        std::fs::write(dir.path().join("one.test.yaml"), "rule: one\ncases: []\n").unwrap();
        let set = load_dir(dir.path()).unwrap();
        assert_eq!((set.rules.len(), set.files), (1, 1));
    }
}
