//! Property tests: no input makes the decoder, a format parser or the whole pipeline panic.

use crate::common;

use proptest::prelude::*;
use tokenwatch_core::input::mapping::{Mapping, MappingConfig};
use tokenwatch_core::input::{Format, Parser};
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};
use tokenwatch_core::token::{decode, encode_unsigned_parts, RawToken, TokenCache};

const FORMATS: [Format; 8] = [
    Format::Auto,
    Format::Canonical,
    Format::Traefik,
    Format::Kong,
    Format::Apisix,
    Format::Envoy,
    Format::Nginx,
    Format::Aws,
];

/// A user mapping over the same keys as the presets, nested paths, a JSON Pointer and geo
/// included, so `jsonish` lines reach every branch of the custom reader.
fn custom_mapping() -> Mapping {
    let cfg: MappingConfig = toml::from_str(
        r#"
        ts = "ts"
        client_ip = "client_ip"
        method = "request.method"
        path = "path"
        status = "response.status"
        user_agent = "/request/headers/user-agent"
        authorization = "request.headers.authorization"
        token = "token"
        jwt_header = "jwt_header"
        jwt_claims = "jwt_claims"
        geo_lat = "geo.lat"
        geo_lon = "geo.lon"
        geo_accuracy_km = "geo.accuracy_km"
        "#,
    )
    .unwrap();
    Mapping::compile(&cfg).unwrap()
}

fn custom_parser() -> Parser {
    Parser::new(Format::Custom, Some(custom_mapping())).unwrap()
}

fn custom_pipeline() -> Pipeline {
    common::pipeline_with(PipelineConfig {
        format: Format::Custom,
        mapping: Some(custom_mapping()),
        ..PipelineConfig::default()
    })
}

/// Any NumericDate: every integer, the range limits, floats and strings.
fn any_date() -> impl Strategy<Value = serde_json::Value> {
    let limit = tokenwatch_core::token::MAX_NUMERIC_DATE;
    prop_oneof![
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        prop::sample::select(vec![i64::MIN, i64::MAX, -1, 0, limit, limit + 1, -limit, -limit - 1])
            .prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        any::<i64>().prop_map(|n| serde_json::Value::from(n.to_string())),
        Just(serde_json::Value::Null),
    ]
}

/// JSON-ish lines built from the fields the formats read, with values of any type.
fn jsonish() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "ts",
        "client_ip",
        "status",
        "authorization",
        "token",
        "path",
        "geo",
        "jwt_claims",
        "jwt_header",
        "StartUTC",
        "ClientHost",
        "DownstreamStatus",
        "request_Authorization",
        "started_at",
        "request",
        "response",
        "start_time",
        "response_code",
        "jwt_payload",
        "msec",
        "time_iso8601",
        "remote_addr",
        "http_authorization",
        "StartLocal",
        "ClientAddr",
        "downstream_remote_address",
        "x-envoy-origin-path",
        "time_local",
        "time",
        "request_query",
        "x_forwarded_for",
        "requestTime",
        "requestTimeEpoch",
        "routeKey",
        "claims",
        "authorizer",
    ]);
    let vals = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        "[a-zA-Z0-9 ._:/-]{0,40}".prop_map(|s| format!("\"{s}\"")),
        "eyJ[a-zA-Z0-9_-]{0,30}\\.[a-zA-Z0-9_-]{0,30}\\.[a-zA-Z0-9_-]{0,10}".prop_map(|s| format!("\"Bearer {s}\"")),
        Just("{\"lat\": 91, \"lon\": 0}".to_string()),
        Just("{\"method\": [1], \"headers\": {\"authorization\": 5}}".to_string()),
        Just("[1, {\"a\": 2}]".to_string()),
        Just("\"GET /a?access_token=x HTTP/1.1\"".to_string()),
        Just("\"29/Nov/2026:00:00:00 +0000\"".to_string()),
        Just("\"https://h:1/p?q\"".to_string()),
        Just("{\"claims\": {\"sub\": 1}, \"method\": \"GET\", \"uri\": {}}".to_string()),
    ];
    prop::collection::vec((keys, vals), 0..8).prop_map(|kv| {
        let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        format!("{{{}}}", body.join(", "))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoder_never_panics(s in "\\PC{0,200}") {
        let _ = decode(RawToken::new(&s), &["tenant".into()]);
        let _ = RawToken::from_authorization(&s);
        let _ = tokenwatch_core::token::tokens_in_query(&s).count();
    }

    #[test]
    fn decoder_never_panics_on_token_shapes(h in "[A-Za-z0-9_=-]{0,40}", p in "[A-Za-z0-9_=-]{0,80}", sig in "[A-Za-z0-9_=-]{0,20}") {
        let t = format!("{h}.{p}.{sig}");
        let _ = decode(RawToken::new(&t), &[]);
    }

    #[test]
    fn parsers_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut cache = TokenCache::new(vec![]);
        for f in FORMATS {
            let _ = Parser::new(f, None).unwrap().parse(&bytes, &mut cache);
        }
        let _ = custom_parser().parse(&bytes, &mut cache);
    }

    #[test]
    fn custom_mappings_never_panic_on_jsonish_lines(line in jsonish()) {
        let mut cache = TokenCache::new(vec![]);
        let _ = custom_parser().parse(line.as_bytes(), &mut cache);
        let mut p = custom_pipeline();
        let mut out = Vec::new();
        p.process_line(line.as_bytes(), &mut out);
        prop_assert_eq!(p.stats.lines, 1);
    }

    #[test]
    fn parsers_and_pipeline_never_panic_on_jsonish_lines(line in jsonish()) {
        let mut cache = TokenCache::new(vec![]);
        for f in FORMATS {
            let _ = Parser::new(f, None).unwrap().parse(line.as_bytes(), &mut cache);
        }
        let mut p = common::pipeline(Format::Auto);
        let mut out = Vec::new();
        p.process_line(line.as_bytes(), &mut out);
        prop_assert_eq!(p.stats.lines, 1);
    }

    #[test]
    fn any_numeric_dates_go_through_the_pipeline(exp in any_date(), iat in any_date(), nbf in any_date(), as_claims in any::<bool>()) {
        let claims = serde_json::json!({"sub": "u", "exp": exp, "iat": iat, "nbf": nbf});
        let t = encode_unsigned_parts(&serde_json::json!({"alg": "RS256"}), &claims, b"sig");
        let token = if as_claims {
            serde_json::json!({"jwt_claims": claims})
        } else {
            serde_json::json!({"authorization": format!("Bearer {t}")})
        };
        let mut p = common::pipeline(Format::Auto);
        let mut out = Vec::new();
        for (i, ip) in ["198.51.100.1", "203.0.113.1", "192.0.2.1"].iter().enumerate() {
            // attested by the gateway: genuine use, which token-replay acts on
            let mut l = serde_json::json!({"ts": 1_795_910_400 + i, "client_ip": ip, "status": 200, "authenticated": true});
            l.as_object_mut().unwrap().extend(token.as_object().unwrap().clone());
            p.process_line(l.to_string().as_bytes(), &mut out);
        }
        prop_assert_eq!(p.stats.events, 3);
        prop_assert!(out.iter().any(|d| &*d.rule == "token-replay"));
        // a lifetime over 24 h between dates in range is never missed by wrapping around
        let limit = i128::from(tokenwatch_core::token::MAX_NUMERIC_DATE);
        let in_range = |v: &serde_json::Value| v.as_i64().map(i128::from).filter(|n| n.abs() <= limit);
        if let (Some(e), Some(i)) = (in_range(&exp), in_range(&iat)) {
            let fired = out.iter().any(|d| &*d.rule == "excessive-lifetime");
            prop_assert_eq!(fired, e - i > 86_400, "exp {} iat {}", e, i);
        }
        for d in &out {
            let _ = d.to_json_line();
        }
    }
}
