//! The generator's labels against the engine's decisions, offline over a generated day and
//! live through the demo (in-process Kafka, the real service loop); and `gen --kafka`.

use crate::common;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::Message;

use tokenwatch::demo::{live, run_generated, DemoOptions};
use tokenwatch_gen::{GenConfig, GenFormat};

#[test]
fn the_default_rules_agree_with_the_labels_over_a_generated_day() {
    for format in [GenFormat::Canonical, GenFormat::Traefik] {
        let cfg = common::generated_day(format);
        let (decisions, labels, lines, _) = run_generated(cfg, |_| {}).unwrap();
        let s = tokenwatch::demo::score(&labels, &decisions);
        assert!(lines > 150_000, "{lines}");
        assert_eq!(
            s.per_rule.len(),
            tokenwatch_gen::rule::LABELLED,
            "every default rule has labels: {:?}",
            s.per_rule
        );
        assert!(labels.len() > 100, "{}", labels.len());
        assert_eq!(s.recall(), 1.0, "{format:?} missed: {:?}", s.missed);
        assert_every_posture_rule_detected(&s);
        assert_every_decision_is_labelled(&s, &labels);
    }
}

/// Each posture rule has labels, and each label was detected: by a decision of its rule on
/// its token.
fn assert_every_posture_rule_detected(s: &tokenwatch::demo::Score) {
    for rule in tokenwatch_gen::rule::POSTURE {
        let (detected, missed, _) = s.per_rule.get(rule).copied().unwrap_or_default();
        assert!(
            detected > 0 && missed == 0,
            "{rule}: {detected} detected, {missed} missed"
        );
    }
}

/// README's configuration for replaying generated traffic is the generated deployment's
/// posture ([`tokenwatch_gen::GenConfig::posture`]), the one the demo and the tests use.
#[test]
fn the_readme_configuration_of_the_generated_deployment_is_the_one_the_demo_uses() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let after = readme
        .split("That deployment, as a configuration for `replay --config`")
        .nth(1)
        .expect("README shows the generated deployment's configuration");
    let toml = after
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gen-jwks.json"), tokenwatch_gen::jwks(42)).unwrap();
    let path = dir.path().join("gen.toml");
    std::fs::write(&path, toml).unwrap();
    let loaded = tokenwatch::config::Config::load(&path).unwrap();
    assert_eq!(loaded.config.posture(), GenConfig::default().posture());
}

/// Every decision is a labelled attack's, and every forged decoy is scored "not fired": the
/// demo verifies with the generator's keys, so no decoy fires (issue 9) and precision is 1.
fn assert_every_decision_is_labelled(s: &tokenwatch::demo::Score, labels: &[tokenwatch_gen::Label]) {
    assert!(s.false_positives.is_empty(), "false: {:?}", s.false_positives);
    let decoys = labels.iter().filter(|l| !l.must_fire()).count() as u64;
    assert!(decoys >= 20, "{decoys} decoy labels");
    assert_eq!(
        s.decoys.values().map(|(quiet, fired)| quiet + fired).sum::<u64>(),
        decoys
    );
    assert!(s.decoys_fired.is_empty(), "decoys fired: {:?}", s.decoys_fired);
    assert_eq!(s.precision(), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_demo_shows_every_rule_and_scores_itself() {
    let opts = DemoOptions {
        traffic: GenConfig {
            seed: 7,
            users: 300,
            rate_per_sec: 20.0,
            attack_rate: 10.0,
            posture_rate: 10.0,
            ..GenConfig::default()
        },
        speedup: 250.0,
        duration: Duration::from_secs(12),
        redis: None,
        metrics_addr: "127.0.0.1:0".into(),
        full_screen: false,
        verify: None,
    };
    let mut out: Vec<u8> = Vec::new();
    let score = live(opts, &mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(score.per_rule.len(), tokenwatch_gen::rule::LABELLED, "{text}");
    for rule in tokenwatch_gen::rule::POSTURE {
        assert!(text.contains(rule), "{rule}: {text}");
    }
    for (rule, (detected, _, _)) in &score.per_rule {
        assert!(*detected > 0, "{rule}: {text}");
    }
    assert_eq!(score.recall(), 1.0, "{text}");
    assert!(score.false_positives.is_empty(), "{text}");
    assert!(score.decoys_fired.is_empty(), "{text}");
    assert!(text.contains("recall 1.000, precision 1.000"), "{text}");
    assert!(
        text.contains("forged decoys (bad signatures, alg none), which must not fire"),
        "{text}"
    );
    assert!(text.contains("revoked ("), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_can_revoke_into_redis() {
    let redis = common::RedisServer::start();
    let opts = DemoOptions {
        traffic: GenConfig {
            seed: 8,
            users: 100,
            rate_per_sec: 20.0,
            attack_rate: 20.0,
            ..GenConfig::default()
        },
        speedup: 100.0,
        duration: Duration::from_secs(5),
        redis: Some(redis.url()),
        metrics_addr: "127.0.0.1:0".into(),
        full_screen: false,
        verify: None,
    };
    let mut out: Vec<u8> = Vec::new();
    live(opts, &mut out).await.unwrap();
    let entries = common::stream_entries(&mut redis.conn(), "tokenwatch:revocations");
    assert!(!entries.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(String::from_utf8_lossy(&out).contains("in Redis"));
}

#[test]
fn gen_produces_to_kafka() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.jsonl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
        .args([
            "gen",
            "--kafka",
            &brokers,
            "--topic",
            "t",
            "--events",
            "3000",
            "--fast",
            "--attack-rate",
            "50",
        ])
        .arg("--labels")
        .arg(&labels)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&["t"]).unwrap();
    let mut n = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while n < 3000 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let line = std::str::from_utf8(m.payload().unwrap()).unwrap();
            assert!(line.starts_with('{'));
            n += 1;
        }
    }
    assert_eq!(n, 3000);
    assert!(std::fs::read_to_string(&labels).unwrap().lines().count() > 0);
}

#[test]
fn gen_refuses_settings_that_cannot_work_and_names_the_flag() {
    for (args, flag) in [
        (&["--rate", "0"][..], "--rate"),
        (&["--attack-rate=-1"][..], "--attack-rate"),
        (&["--users", "0"][..], "--users"),
        (&["--malformed-rate", "2"][..], "--malformed-rate"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
            .args(["gen", "--events", "10"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} wrote lines anyway");
    }
}
