use std::path::Path;

use super::flags::{jwks_only, RedisFlags, RunFlags};
use super::*;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A config from TOML text that no file holds (its keys have no origin).
fn parse(text: &str) -> Result<Loaded, ConfigError> {
    Loaded::from_layers(Layers::new().toml(text, None)?)
}

fn load_env(vars: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    Config::load_with_env(None, env(vars))
}

/// The message `run` would print for this config text and these flags.
fn run_err(text: &str, flags: &RunFlags) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.toml");
    std::fs::write(&p, text).unwrap();
    let flags = RunFlags {
        config: Some(p.clone()),
        ..flags.clone()
    };
    let e = flags.resolve(env(&[])).err().unwrap().to_string();
    // as `err` in the old tests: without the file's name, so they read as before
    e.replace(&format!("{}:", p.display()), "file:")
}

#[test]
fn verify_keys_from_the_file_the_environment_and_flags() {
    let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json");
    let c = parse(&format!(
        "[verify]\njwks = [\"{jwks}\"]\n[verify.issuers.\"https://idp.example.com\"]\njwks = \"{jwks}\"\n"
    ))
    .unwrap();
    assert!(c.verifier().unwrap().is_some());
    assert!(parse("").unwrap().verifier().unwrap().is_none());
    // a flag replaces verify.jwks, and the error names it and what failed
    let e = jwks_only(&["/nonexistent/k.json".into()])
        .unwrap()
        .verifier()
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("--jwks: verify.jwks: JWKS /nonexistent/k.json: cannot read"),
        "{e}"
    );
    let c = load_env(&[("TOKENWATCH_VERIFY__JWKS", &format!("{jwks}, {jwks}"))]).unwrap();
    assert_eq!(c.config.verify.jwks.len(), 2);
    assert!(parse("[verify]\njwk = []\n").is_err());
}

#[test]
fn unknown_keys_are_named() {
    let e = parse("[engine]\nlatenes = \"5s\"\n").unwrap_err().to_string();
    assert!(e.starts_with("engine.latenes: unknown field `latenes`"), "{e}");
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.toml");
    std::fs::write(
        &p,
        "brokers = \"file:9092\"\ngroup = \"g\"\n[kafka]\n\"fetch.min.bytes\" = 1\n",
    )
    .unwrap();
    let vars = env(&[
        ("TOKENWATCH_BROKERS", "env:9092"),
        ("TOKENWATCH_TOPICS", "a, b"),
        ("TOKENWATCH_ENGINE__LATENESS", "5s"),
        ("TOKENWATCH_KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
        ("PATH", "/bin"),
    ]);
    let c = Config::load_with_env(Some(&p), vars).unwrap().config;
    assert_eq!(c.brokers.as_deref(), Some("env:9092"));
    assert_eq!(c.group, "g");
    assert_eq!(c.topics, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(c.engine().lateness_ms, 5_000);
    let k = c.kafka_properties();
    assert_eq!(k.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
    assert_eq!(k.get("fetch.min.bytes").map(String::as_str), Some("1"));
    let e = load_env(&[("TOKENWATCH_BROKRS", "x")]).unwrap_err().to_string();
    assert!(e.starts_with("TOKENWATCH_BROKRS: brokrs: unknown field"), "{e}");
}

#[test]
fn every_double_underscore_goes_one_table_down() {
    let c = load_env(&[
        ("TOKENWATCH_INPUT__FORMAT", "custom"),
        ("TOKENWATCH_INPUT__MAPPING__TS", "time"),
        ("TOKENWATCH_INPUT__MAPPING__TOKEN", "request.token"),
        ("TOKENWATCH_KAFKA__FETCH_MIN_BYTES", "1"),
    ])
    .unwrap();
    let m = c.config.input.mapping.as_ref().unwrap();
    assert_eq!((m.ts.as_str(), m.token.as_deref()), ("time", Some("request.token")));
    assert_eq!(c.config.input.format, tokenwatch_core::input::Format::Custom);
    assert!(c.mapping().unwrap().is_some());
    assert_eq!(
        c.config.kafka_properties().get("fetch.min.bytes").map(String::as_str),
        Some("1")
    );
    let e = load_env(&[("TOKENWATCH_INPUT__MAPPING__TOKNE", "x")])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("TOKENWATCH_INPUT__MAPPING__TOKNE: input.mapping.tokne: unknown field"),
        "{e}"
    );
    let e = load_env(&[("TOKENWATCH_ENGINE____X", "x")]).unwrap_err().to_string();
    assert!(e.starts_with("TOKENWATCH_ENGINE____X:"), "{e}");
    // a key under a value that is not a table
    let e = load_env(&[("TOKENWATCH_BROKERS__X", "x"), ("TOKENWATCH_BROKERS", "b")])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("TOKENWATCH_BROKERS__X: brokers.x: `brokers` is not a table"),
        "{e}"
    );
}

#[test]
fn environment_values_take_the_type_of_their_key() {
    let c = load_env(&[
        ("TOKENWATCH_GROUP", "42"),
        ("TOKENWATCH_KEY_PREFIX", "true"),
        ("TOKENWATCH_BATCH__MAX_MESSAGES", "100"),
        ("TOKENWATCH_REDIS_CLUSTER", "true"),
        ("TOKENWATCH_INPUT__MAPPING__TS", "17"),
        ("TOKENWATCH_TOPICS", "7"),
        ("TOKENWATCH_METRICS_ADDR", "0.0.0.0:9000"),
        ("TOKENWATCH_LOG_FORMAT", "json"),
    ])
    .unwrap()
    .config;
    assert_eq!(c.group, "42");
    assert_eq!(c.key_prefix, "true");
    assert_eq!(c.batch.max_messages.get(), 100);
    assert!(c.redis_cluster);
    assert_eq!(c.input.mapping.as_ref().unwrap().ts, "17");
    assert_eq!(c.topics, vec!["7".to_string()]);
    assert_eq!(c.metrics_addr.port(), 9000);
    assert_eq!(c.log_format, LogFormat::Json);
    let e = load_env(&[("TOKENWATCH_BATCH__MAX_MESSAGES", "many")])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("TOKENWATCH_BATCH__MAX_MESSAGES: batch.max_messages: invalid type"),
        "{e}"
    );
    let e = load_env(&[("TOKENWATCH_REDIS_CLUSTER", "yes")])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("TOKENWATCH_REDIS_CLUSTER: redis_cluster: invalid type"),
        "{e}"
    );
}

/// The service knows no test or benchmark variable: the tests keep theirs away from it.
#[test]
fn every_tokenwatch_variable_is_a_setting() {
    for var in [
        "TOKENWATCH_BLESS",
        "TOKENWATCH_BENCH_EVENTS",
        "TOKENWATCH_TEST_REDIS_SERVER",
    ] {
        let e = load_env(&[(var, "1")]).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{var}: ")) && e.contains("unknown field"), "{e}");
    }
    let e = load_env(&[("TOKENWATCH_BLESSED", "1")]).unwrap_err().to_string();
    assert!(
        e.starts_with("TOKENWATCH_BLESSED: blessed: unknown field `blessed`"),
        "{e}"
    );
}

#[test]
fn file_errors_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.toml");
    let load = |text: &str| {
        std::fs::write(&p, text).unwrap();
        Config::load_with_env(Some(&p), env(&[])).unwrap_err().to_string()
    };
    let at = |line: usize| format!("{}:{line}: ", p.display());
    let e = load("brokers = \"b\"\n\n[batch]\nmax_messages = \"many\"\n");
    assert!(
        e.starts_with(&format!("{}batch.max_messages: invalid type", at(4))),
        "{e}"
    );
    let e = load("[engine]\nlateness = \"5s\"\nlatenes = \"5s\"\n");
    assert!(
        e.starts_with(&format!("{}engine.latenes: unknown field `latenes`", at(3))),
        "{e}"
    );
    let e = load("group = \"g\"\n[input.mapping]\ntoken = \"t\"\n");
    assert!(
        e.starts_with(&format!("{}input.mapping: missing field `ts`", at(2))),
        "{e}"
    );
    let e = load("[input]\nmapping = { token = \"t\" }\n");
    assert!(
        e.starts_with(&format!("{}input.mapping: missing field `ts`", at(2))),
        "{e}"
    );
    let e = load("group = \"g\"\ngroup = \"h\"\n");
    assert!(e.starts_with(&at(2)) && e.contains("duplicate key"), "{e}");
    assert!(Config::load(&p).unwrap_err().to_string().starts_with(&at(2)));
    let e = Config::load(Path::new("/nonexistent/t.toml")).unwrap_err().to_string();
    assert!(e.starts_with("cannot read config /nonexistent/t.toml:"), "{e}");
}

#[test]
fn late_errors_name_where_the_value_was_set() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.toml");
    let base = "brokers = \"b\"\ntopics = [\"t\"]\nredis = [\"redis://r\"]\n";
    std::fs::write(
        &p,
        format!("{base}metrics_addr = \"nowhere\"\n\n[engine]\nlateness = \"5x\"\n"),
    )
    .unwrap();
    let flags = RunFlags {
        config: Some(p.clone()),
        metrics_addr: Some("127.0.0.1:0".into()),
        ..RunFlags::default()
    };
    let e = flags.resolve(env(&[])).err().unwrap().to_string();
    assert!(e.starts_with(&format!("{}:7: engine.lateness:", p.display())), "{e}");
    let e = flags
        .resolve(env(&[("TOKENWATCH_ENGINE__LATENESS", "1y")]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("TOKENWATCH_ENGINE__LATENESS: engine.lateness:"), "{e}");
    // without the flag, the file's metrics_addr is the first problem found (a file is
    // checked from top to bottom)
    let without = RunFlags {
        metrics_addr: None,
        ..flags.clone()
    };
    let e = without.resolve(env(&[])).err().unwrap().to_string();
    assert!(e.starts_with(&format!("{}:4: metrics_addr:", p.display())), "{e}");
    // a variable is checked before the file it overrides
    let e = without
        .resolve(env(&[("TOKENWATCH_ENGINE__LATENES", "5s")]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("TOKENWATCH_ENGINE__LATENES: engine.latenes: unknown field"),
        "{e}"
    );
    // a value given by flag is blamed on the flag, not the file
    let bad = RunFlags {
        metrics_addr: Some("bad".into()),
        ..flags
    };
    let e = bad
        .resolve(env(&[("TOKENWATCH_ENGINE__LATENESS", "5s")]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("--metrics-addr: metrics_addr: `bad` is not an address"),
        "{e}"
    );
    // a check across keys names the key and its line
    std::fs::write(
        &p,
        format!("{base}[revocation]\nmin_token_ttl = \"2d\"\nmax_token_ttl = \"1d\"\n"),
    )
    .unwrap();
    let e = without.resolve(env(&[])).err().unwrap().to_string();
    assert!(
        e.starts_with(&format!(
            "{}:6: revocation.max_token_ttl: 86400 s is shorter",
            p.display()
        )),
        "{e}"
    );
}

#[test]
fn values_are_checked() {
    let e = parse("[engine]\nlateness = \"5x\"\n").unwrap_err().to_string();
    assert!(e.starts_with("engine.lateness:"), "{e}");
    let c = parse("[engine]\nlateness = \"5s\"\nexpiry_leeway = \"2m\"\n")
        .unwrap()
        .config;
    let e = c.engine();
    assert_eq!((e.lateness_ms, e.revocation.leeway_s), (5_000, 120));
    let e = parse("[input]\nformat = \"apache\"\n").unwrap_err().to_string();
    assert!(e.contains("input.format: unknown format `apache`"), "{e}");
    let e = parse("log_format = \"xml\"\n").unwrap_err().to_string();
    assert!(e.starts_with("log_format: unknown variant `xml`"), "{e}");
    let e = parse("[engine]\nrevocation_budget = \"lots\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("engine.revocation_budget: budget `lots`"), "{e}");
    let c = parse("[engine]\ncheckpoint_interval = \"0\"\n").unwrap().config;
    assert_eq!(c.checkpoint_interval(), None);
    assert_eq!(
        parse("").unwrap().config.checkpoint_interval(),
        Some(Duration::from_secs(10))
    );
}

#[test]
fn the_token_size_cap_is_a_checked_input_key() {
    let cap = |text: &str| parse(text).and_then(|l| l.pipeline()).map(|p| p.max_token_bytes);
    assert_eq!(cap("").unwrap(), tokenwatch_core::token::DEFAULT_MAX_TOKEN_BYTES);
    assert_eq!(cap("[input]\nmax_token_bytes = 2048\n").unwrap(), 2048);
    for bad in ["512", "1048576", "0"] {
        let e = cap(&format!("[input]\nmax_token_bytes = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("input.max_token_bytes: {bad} is outside 1024..=65536")),
            "{e}"
        );
    }
    let e = load_env(&[("TOKENWATCH_INPUT__MAX_TOKEN_BYTES", "100")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TOKENWATCH_INPUT__MAX_TOKEN_BYTES") && e.contains("input.max_token_bytes"),
        "{e}"
    );
}

/// The defaults of the config are the detection core's: one place says each.
#[test]
fn defaults_are_the_cores() {
    let c = Config::default();
    let core = tokenwatch_core::engine::EngineConfig::default();
    let e = c.engine();
    assert_eq!(
        (e.lateness_ms, e.max_keys_per_rule, e.revocation_budget),
        (core.lateness_ms, core.max_keys_per_rule, core.revocation_budget)
    );
    assert_eq!(c.revocation_policy(), core.revocation);
    assert_eq!(c.event_time(), tokenwatch_core::eventtime::EventTimeConfig::default());
}

/// The byte budgets reach the token cache and the engine; the old count cap is refused.
#[test]
fn byte_budgets_reach_the_cache_and_the_engine() {
    let c = parse("[engine]\ntoken_cache_bytes = 1048576\nstate_bytes = 2097152\n").unwrap();
    let p = c.pipeline().unwrap();
    assert_eq!((p.token_cache_bytes, p.engine.state_bytes), (1 << 20, 2 << 20));
    let d = tokenwatch_core::pipeline::PipelineConfig::default();
    let p = parse("").unwrap().pipeline().unwrap();
    assert_eq!(
        (p.token_cache_bytes, p.engine.state_bytes),
        (d.token_cache_bytes, d.engine.state_bytes)
    );
    assert_eq!((d.token_cache_bytes, d.engine.state_bytes), (256 << 20, 512 << 20));
    let Err(e) = parse("[engine]\ntoken_cache = 1000\n") else {
        panic!("the old count cap is an unknown key")
    };
    let e = e.to_string();
    assert!(e.contains("token_cache"), "{e}");
}

#[test]
fn invalid_settings_fail_at_start_naming_the_key() {
    let o = RunFlags::default();
    let err = |text: &str| run_err(text, &o);
    assert!(err("topics = [\"t\"]\nredis = [\"redis://r\"]").starts_with("brokers:"));
    assert!(err("brokers = \"b\"\nredis = [\"redis://r\"]").starts_with("topics:"));
    assert!(err("brokers = \"b\"\ntopics = [\"t\"]").starts_with("redis:"));
    let base = "brokers = \"b\"\ntopics = [\"t\"]\nredis = [\"redis://r\"]\n";
    let e = err(&format!("{base}metrics_addr = \"nope\""));
    assert!(e.starts_with("file:4: metrics_addr:"), "{e}");
    let e = err(&format!("{base}shutdown_timeout = \"soon\""));
    assert!(e.starts_with("file:4: shutdown_timeout:"), "{e}");
    let e = err(&format!("{base}[batch]\nmax_messages = 0"));
    assert!(e.starts_with("file:5: batch.max_messages:"), "{e}");
    let e = err(&format!("{base}[revocation]\nsubject_ttl = \"1y\""));
    assert!(e.starts_with("file:5: revocation.subject_ttl:"), "{e}");
    let e = err(&format!("{base}redis_cluster = true"));
    assert!(e.starts_with("file:4: key_prefix: ") && e.contains("hash tag"), "{e}");
    let e = err("brokers = \"b\"\ntopics = [\"t\"]\nredis = [\"http://:pw@x\"]");
    assert!(e.starts_with("file:3: redis:") && !e.contains("pw"), "{e}");
    // flags win
    let o = RunFlags {
        brokers: Some("flag:9092".into()),
        topics: vec!["x".into()],
        redis: vec!["redis://r".into()],
        ..RunFlags::default()
    };
    let (cfg, addr) = o.resolve(env(&[])).unwrap();
    assert_eq!((cfg.brokers.as_str(), cfg.topics[0].as_str()), ("flag:9092", "x"));
    assert_eq!(addr, Config::default().metrics_addr);
}

#[test]
fn redis_flags_win_over_the_environment() {
    let flags = RedisFlags {
        redis: vec!["redis://flag:6379".into()],
        ..RedisFlags::default()
    };
    let r = flags
        .resolve(env(&[
            ("TOKENWATCH_REDIS", "redis://env:6379"),
            ("TOKENWATCH_KEY_PREFIX", "p:"),
        ]))
        .unwrap();
    assert_eq!((r.urls[0].as_str(), r.key_prefix.as_str()), ("redis://flag:6379", "p:"));
    let e = RedisFlags::default().resolve(env(&[])).unwrap_err().to_string();
    assert!(e.starts_with("redis: no Redis URL given"), "{e}");
}

#[test]
fn the_example_config_is_valid() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tokenwatch.example.toml");
    let flags = RunFlags {
        config: Some(p),
        ..RunFlags::default()
    };
    let (cfg, addr) = flags.resolve(env(&[])).unwrap();
    assert_eq!(cfg.topics, vec!["gateway-logs".to_string()]);
    assert_eq!(addr.port(), 9464);
    assert_eq!(cfg.redis.policy.min_token_ttl_s, 3600);
}

#[test]
fn dead_letters_go_to_a_topic_instead_of_the_file() {
    let base = "brokers = \"b\"\ntopics = [\"t\"]\nredis = [\"redis://r\"]\nalerts = \"/tmp/a.jsonl\"\n";
    let resolve = |text: &str| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        std::fs::write(&p, text).unwrap();
        RunFlags {
            config: Some(p),
            ..RunFlags::default()
        }
        .resolve(env(&[]))
    };
    let (c, _) = resolve(base).unwrap();
    assert_eq!(c.dead_letter.as_deref(), Some(Path::new("/tmp/a.jsonl.dead-letters")));
    assert_eq!(c.dead_letter_topic, None);
    let (c, _) = resolve(&format!("{base}[dead_letter]\ntopic = \"dl\"\n")).unwrap();
    assert_eq!((c.dead_letter, c.dead_letter_topic.as_deref()), (None, Some("dl")));
    let e = run_err(
        &format!("{base}[dead_letter]\ntopic = \"dl\"\nfile = \"/tmp/d\"\n"),
        &RunFlags::default(),
    );
    assert!(e.starts_with("dead_letter: set `file` or `topic`"), "{e}");
}

#[test]
fn posture_reaches_the_core_typed_and_with_defaults() {
    let d = parse("").unwrap().config.posture();
    assert_eq!(d, tokenwatch_core::posture::Posture::default());
    let text = "[verify.issuers.\"https://idp\"]\njwks = \"x.json\"\n\n[audiences]\n\"/billing\" = \"billing-api\"\n\n[posture]\nmax_key_age = \"30d\"\nsensitive_claims = [\"*salary*\"]\nprotected_paths = [\"/api\"]\n";
    let p = parse(text).unwrap().config.posture();
    assert_eq!(p.issuer_configured(Some("https://idp")), Some(true));
    assert_eq!(p.expected_audience("/billing/x"), Some("billing-api"));
    assert!(p.protected("/api/v1") && !p.protected("/public"));
    assert!(p.sensitive_name("base_salary") && !p.sensitive_name("email"));
    assert_eq!(p.max_key_age_ms, 30 * 86_400_000);
    let e = parse("[posture]\nmax_age = \"30d\"\n").err().unwrap().to_string();
    assert!(e.contains("max_age"), "{e}");
}
