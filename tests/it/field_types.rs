//! A field of an unexpected JSON type makes only that field absent: for every preset,
//! replacing any field of a decodable line, at any depth, by a value of another JSON type
//! never turns the line into a skipped one, through the preset and through `auto`.
//!
//! The JSON types: null, boolean, number, string, array, object. Times and statuses take
//! numbers and numeric strings alike, so for them a number and a string are one type. The
//! preset's own timestamp is the one field no line can do without, and is left alone.
//!
//! The lines are every decodable line of the presets' fixtures (`tests/fixtures/*.log`) and
//! of the gateways' published formats (`tests/fixtures/gateways/*.log`).

use crate::common;

use proptest::prelude::*;
use serde_json::{json, Value};
use tokenwatch_core::input::{Format, Parser};
use tokenwatch_core::token::TokenCache;

/// Each preset, its timestamp keys, and the fixtures written in it.
const PRESETS: &[(Format, &[&str], &[&str])] = &[
    (Format::Canonical, &["ts"], &["canonical.log", "claims-only.log"]),
    (
        Format::Traefik,
        &["StartUTC", "StartLocal"],
        &["traefik.log", "gateways/traefik.log"],
    ),
    (
        Format::Kong,
        &["started_at"],
        &["kong.log", "claims-only.log", "gateways/kong.log"],
    ),
    (Format::Apisix, &["start_time"], &["gateways/apisix.log"]),
    (
        Format::Envoy,
        &["start_time"],
        &[
            "envoy.log",
            "claims-only.log",
            "gateways/istio.log",
            "gateways/envoy-gateway.log",
        ],
    ),
    (
        Format::Nginx,
        &["msec", "time_iso8601", "time_local", "time"],
        &[
            "nginx.log",
            "gateways/ingress-nginx.log",
            "gateways/nginx-json-logs.log",
        ],
    ),
    (Format::Aws, &["requestTime", "requestTimeEpoch"], &["gateways/aws.log"]),
];

/// Fields that take a number or a numeric string.
const NUMERIC: &[&str] = &["status", "DownstreamStatus", "response_code"];

/// The lines of `files` that `format` decodes, as JSON values.
fn decodable(format: Format, files: &[&str]) -> Vec<Value> {
    let parser = Parser::new(format, None).unwrap();
    let mut cache = TokenCache::new(vec![]);
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(common::fixture(f)).unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if parser.parse(line.as_bytes(), &mut cache).is_ok() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
    }
    assert!(!out.is_empty(), "{format:?}");
    out
}

/// Every path to a value in `v` (object keys and array indexes), the root excluded.
fn paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let children: Vec<(String, &Value)> = match v {
        Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(a) => a.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
        _ => return,
    };
    for (k, child) in children {
        at.push(k);
        out.push(at.clone());
        paths(child, at, out);
        at.pop();
    }
}

fn get_mut<'v>(v: &'v mut Value, path: &[String]) -> &'v mut Value {
    path.iter().fold(v, |v, k| match v {
        Value::Object(o) => o.get_mut(k).unwrap(),
        Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
        _ => unreachable!(),
    })
}

/// The JSON type of a value, with numbers and numeric strings as one for numeric fields.
fn kind(v: &Value, numeric: bool) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) if numeric => "scalar",
        Value::String(_) if numeric => "scalar",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Replaces the value at `path` and checks the line still decodes; `false` when the
/// replacement is of the field's own type (nothing to check).
fn still_decodes(format: Format, time_keys: &[&str], line: &Value, path: &[String], new: &Value) -> bool {
    if path.len() == 1 && time_keys.contains(&path[0].as_str()) {
        return false;
    }
    let numeric = NUMERIC.contains(&path.last().unwrap().as_str());
    let mut changed = line.clone();
    let slot = get_mut(&mut changed, path);
    if kind(slot, numeric) == kind(new, numeric) {
        return false;
    }
    *slot = new.clone();
    let text = changed.to_string();
    let mut cache = TokenCache::new(vec![]);
    for f in [format, Format::Auto] {
        let r = Parser::new(f, None).unwrap().parse(text.as_bytes(), &mut cache);
        if let Err(skip) = r {
            panic!(
                "{format:?} line via {f:?}: `{}` := {new} makes it {}: {text}",
                path.join("."),
                skip.reason()
            );
        }
    }
    true
}

#[test]
fn every_field_of_every_preset_tolerates_every_other_type() {
    let values = [
        json!(null),
        json!(true),
        json!(7),
        json!(-2.5),
        json!("x"),
        json!([]),
        json!(["a", 1]),
        json!({}),
        json!({"k": "v", "n": [1]}),
    ];
    for (format, time_keys, files) in PRESETS {
        let mut checked = 0;
        for line in decodable(*format, files) {
            let mut all = Vec::new();
            paths(&line, &mut Vec::new(), &mut all);
            for path in &all {
                for v in &values {
                    checked += usize::from(still_decodes(*format, time_keys, &line, path, v));
                }
            }
        }
        assert!(checked > 100, "{format:?}: {checked}");
    }
}

/// Any value of the other types, not only the representatives above.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-zA-Z :/._-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn any_value_of_another_type_leaves_the_line_decodable(
        preset in 0..PRESETS.len(),
        line_pick in any::<prop::sample::Index>(),
        path_pick in any::<prop::sample::Index>(),
        new in any_json(),
    ) {
        let (format, time_keys, files) = PRESETS[preset];
        let lines = decodable(format, files);
        let line = line_pick.get(&lines);
        let mut all = Vec::new();
        paths(line, &mut Vec::new(), &mut all);
        let path = path_pick.get(&all);
        // A string of digits in a numeric field is a number: the type is the same.
        let numeric = NUMERIC.contains(&path.last().unwrap().as_str());
        prop_assume!(!(numeric && new.as_str().is_some_and(|s| s.trim().parse::<f64>().is_ok())));
        still_decodes(format, time_keys, line, path, &new);
    }
}
