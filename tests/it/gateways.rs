//! Real gateways' default access logs decode fully, out of the box.
//!
//! For each gateway, records as the gateway publishes them (or rendered from its documented
//! default format: each fixture's header comment cites its source and says which) give,
//! through `auto` and through the gateway's preset alike, an event with the token decoded and
//! the client address, method, path, status and time present, and exactly the committed
//! rendering in `tests/fixtures/gateways/NAME.expected`. TOKENWATCH_BLESS=1 rewrites those
//! files after a deliberate change; review the diff.

use crate::common;

use tokenwatch_core::input::{Format, Parsed, Parser};
use tokenwatch_core::token::TokenCache;

const GATEWAYS: &[(&str, Format)] = &[
    ("istio", Format::Envoy),
    ("envoy-gateway", Format::Envoy),
    ("traefik", Format::Traefik),
    ("ingress-nginx", Format::Nginx),
    ("nginx-json-logs", Format::Nginx),
    ("kong", Format::Kong),
    ("apisix", Format::Apisix),
    ("aws", Format::Aws),
];

/// The fixture's records: every line but the `#` header comment.
fn records(name: &str) -> Vec<String> {
    let path = common::fixture(&format!("gateways/{name}.log"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# "), "{name}: the fixture opens with its source");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn render(p: &Parsed<'_>) -> String {
    let e = &p.event;
    format!(
        "{} ts_ms={} client={} method={} path={} status={} token={} in_url={} user_agent={:?} redacted={}\n",
        p.format.name(),
        e.ts_ms,
        e.client_ip.map(|c| c.to_string()).unwrap_or_default(),
        e.method,
        e.path,
        e.status.map(|s| s.to_string()).unwrap_or_default(),
        e.token.as_ref().map(|t| t.token_id.to_string()).unwrap_or_default(),
        e.token_in_url,
        e.user_agent,
        p.authorization_redacted,
    )
}

#[test]
fn every_gateways_default_format_decodes_fully_through_auto_and_its_preset() {
    let mut cache = TokenCache::new(vec![]);
    for (name, preset) in GATEWAYS {
        let lines = records(name);
        assert!(!lines.is_empty(), "{name}");
        let mut got = String::new();
        for line in &lines {
            let mut shown = Vec::new();
            for format in [*preset, Format::Auto] {
                let p = Parser::new(format, None)
                    .unwrap()
                    .parse(line.as_bytes(), &mut cache)
                    .unwrap_or_else(|s| panic!("{name} via {format:?}: skipped as {}", s.reason()));
                let e = &p.event;
                let what = format!("{name} via {format:?}: {e:?}");
                assert_eq!(p.format, *preset, "{what}");
                assert!(e.token.is_some(), "token: {what}");
                assert!(e.client_ip.is_some(), "client: {what}");
                assert!(!e.method.is_empty(), "method: {what}");
                assert!(!e.path.is_empty(), "path: {what}");
                assert!(e.status.is_some(), "status: {what}");
                assert!(e.ts_ms > 1_795_910_000_000, "time: {what}");
                assert!(p.token_errors.is_empty(), "{what}");
                shown.push(render(&p));
            }
            assert_eq!(shown[0], shown[1], "{name}: auto and the preset disagree");
            got.push_str(&shown[0]);
        }
        let golden = common::fixture(&format!("gateways/{name}.expected"));
        if std::env::var_os("TOKENWATCH_BLESS").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        assert_eq!(got, want, "{name}: events differ from {}", golden.display());
    }
}

/// Through the whole pipeline: nothing skipped, nothing missing, and Kong's redacted header
/// counted, so that an operator sees why its lines carry no token of their own.
#[test]
fn the_summary_counts_what_each_format_lacked() {
    let mut p = common::pipeline(Format::Auto);
    let mut out = Vec::new();
    let mut n = 0;
    for (name, _) in GATEWAYS {
        for line in records(name) {
            p.process_line(line.as_bytes(), &mut out);
            n += 1;
        }
    }
    let s = &p.stats;
    assert_eq!((s.lines, s.events, s.skipped_total()), (n, n, 0), "{:?}", s.skipped);
    assert_eq!(s.without_token, 0);
    assert_eq!(s.authorization_redacted, 1, "kong's REDACTED header");
    let formats: Vec<_> = s.by_format.iter().map(|(f, _)| f.name()).collect();
    assert_eq!(formats, ["traefik", "kong", "apisix", "envoy", "nginx", "aws"]);
    for (f, c) in s.by_format.iter() {
        assert_eq!(c.missing().map(|(_, n)| n), [0, 0, 0], "{f:?}: {c:?}");
    }
    assert!(tokenwatch_core::replay::hints(s).is_empty());

    // Istio's line as README's envoy preset once read it: no client, and the summary says so
    let istio = &records("istio")[0];
    let v: serde_json::Value = serde_json::from_str(istio).unwrap();
    let mut o = v.as_object().unwrap().clone();
    o.remove("downstream_remote_address");
    let mut p = common::pipeline(Format::Auto);
    p.process_line(serde_json::Value::Object(o).to_string().as_bytes(), &mut out);
    let envoy = p.stats.by_format.get(Format::Envoy);
    assert_eq!((envoy.events, envoy.no_client_ip), (1, 1));
    let hints = tokenwatch_core::replay::hints(&p.stats);
    assert_eq!(hints.len(), 1, "{hints:?}");
    assert!(
        hints[0].starts_with("hint: client_ip missing on 100 % of envoy lines: log it as downstream_remote_address"),
        "{}",
        hints[0]
    );
}
