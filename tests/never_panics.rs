//! Property tests: no input makes the decoder, a format parser or the whole pipeline panic.

mod common;

use proptest::prelude::*;
use tokenwatch::input::{Format, Parser};
use tokenwatch::token::{decode, RawToken, TokenCache};

const FORMATS: [Format; 6] = [
    Format::Auto,
    Format::Canonical,
    Format::Traefik,
    Format::Kong,
    Format::Envoy,
    Format::Nginx,
];

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
        let _ = tokenwatch::token::tokens_in_query(&s).count();
    }

    #[test]
    fn decoder_never_panics_on_token_shapes(h in "[A-Za-z0-9_=-]{0,40}", p in "[A-Za-z0-9_=-]{0,80}", sig in "[A-Za-z0-9_=-]{0,20}") {
        let t = format!("{h}.{p}.{sig}");
        let _ = decode(RawToken::new(&t), &[]);
    }

    #[test]
    fn parsers_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut cache = TokenCache::new(100, vec![]);
        for f in FORMATS {
            let _ = Parser::new(f, None).unwrap().parse(&bytes, &mut cache);
        }
    }

    #[test]
    fn parsers_and_pipeline_never_panic_on_jsonish_lines(line in jsonish()) {
        let mut cache = TokenCache::new(100, vec![]);
        for f in FORMATS {
            let _ = Parser::new(f, None).unwrap().parse(line.as_bytes(), &mut cache);
        }
        let mut p = common::pipeline(Format::Auto);
        let mut out = Vec::new();
        p.process_line(line.as_bytes(), &mut out);
        prop_assert_eq!(p.stats.lines, 1);
    }
}
