//! `tokenwatch run` in-process against librdkafka's mock cluster (a real Kafka protocol
//! implementation inside librdkafka) and a real redis-server on a free port.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio::sync::watch;

use tokenwatch::metrics::{http_get, Metrics};
use tokenwatch::service::{resolve, run, Overrides, RunSummary, ServiceConfig};

const PREFIX: &str = "tokenwatch:";

struct Running {
    stop: watch::Sender<bool>,
    _hup: watch::Sender<u64>,
    task: tokio::task::JoinHandle<Result<RunSummary, String>>,
    metrics: Arc<Metrics>,
    metrics_addr: std::net::SocketAddr,
    alerts: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(brokers: &str, redis_url: &str, group: &str) -> Running {
    start_with(brokers, redis_url, group, None).await
}

async fn start_with(brokers: &str, redis_url: &str, group: &str, alerts_topic: Option<&str>) -> Running {
    start_tweaked(brokers, redis_url, group, alerts_topic, |_| {}).await
}

async fn start_tweaked(
    brokers: &str,
    redis_url: &str,
    group: &str,
    alerts_topic: Option<&str>,
    tweak: impl FnOnce(&mut ServiceConfig),
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let config = tokenwatch::config::Config::default();
    let o = Overrides {
        brokers: Some(brokers.into()),
        topics: vec!["logs".into()],
        group: Some(group.into()),
        rules: Some(common::root().join("rules")),
        geoip: Some(common::root().join("assets/GeoLite2-City-Test.mmdb")),
        redis: vec![redis_url.into()],
        alerts: Some(alerts.to_str().unwrap().into()),
        alerts_topic: alerts_topic.map(String::from),
        // the fixtures' tokens are signed with the test key of this JWKS
        jwks: vec![common::root()
            .join("tests/fixtures/keys/jwks.json")
            .to_str()
            .unwrap()
            .into()],
        ..Overrides::default()
    };
    let (mut cfg, _) = resolve(&config, &o).unwrap();
    cfg.batch_wait = Duration::from_millis(10);
    tweak(&mut cfg);
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    tokio::spawn(tokenwatch::metrics::serve(listener, metrics.clone()));
    let (stop, stop_rx) = watch::channel(false);
    let (hup, hup_rx) = watch::channel(0);
    let task = tokio::spawn(run(cfg, metrics.clone(), stop_rx, hup_rx));
    Running {
        stop,
        _hup: hup,
        task,
        metrics,
        metrics_addr,
        alerts,
        _dir: dir,
    }
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stream(redis: &common::RedisServer) -> Vec<(String, String)> {
    common::stream_entries(&mut redis.conn(), &format!("{PREFIX}revocations"))
}

/// Lines the service has read: decoded and skipped events.
fn seen(m: &Metrics) -> u64 {
    m.events.with_label_values(&["decoded"]).get() + m.events.with_label_values(&["skipped"]).get()
}

async fn stop_and_wait(svc: Running) -> Result<RunSummary, String> {
    svc.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), svc.task)
        .await
        .expect("the service stops within 30 s")
        .unwrap()
}

/// The lines of the service's alerts file.
fn alerts_file(svc: &Running) -> Vec<String> {
    std::fs::read_to_string(&svc.alerts)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// The records of the `alerts` topic, read from the start: until `want` are read and the
/// topic has gone quiet, or 20 s pass. It reads on past `want`, so that a duplicate shows.
fn alerts_topic(brokers: &str, want: usize) -> Vec<String> {
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "alerts-check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    rdkafka::consumer::Consumer::subscribe(&c, &["alerts"]).unwrap();
    let mut topic = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && topic.len() <= want {
        if let Some(Ok(msg)) = c.poll(Duration::from_millis(200)) {
            topic.push(String::from_utf8_lossy(rdkafka::Message::payload(&msg).unwrap()).into_owned());
        } else if topic.len() == want {
            break;
        }
    }
    topic
}

/// Topic `logs` (one partition) on the mock cluster, holding the fixture lines; returns the
/// bootstrap servers and the lines.
fn logs_topic_with_fixture_lines(mock: &MockCluster<'static, DefaultProducerContext>) -> (String, Vec<String>) {
    mock.create_topic("logs", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let lines = common::fixture_lines("canonical.log");
    common::produce(&brokers, "logs", &lines);
    (brokers, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_kafka_become_revocations_in_redis_and_metrics() {
    let mock = MockCluster::new(1).unwrap();
    let (brokers, _) = logs_topic_with_fixture_lines(&mock);
    let redis = common::RedisServer::start();

    mock.create_topic("alerts", 1, 1).unwrap();
    let svc = start_with(&brokers, &redis.url(), "g1", Some("alerts")).await;
    wait_until("four revocations in the stream", 60, || stream(&redis).len() >= 4).await;
    // every decision is an alert line (9 in the fixture)
    wait_until("nine alert lines", 30, || {
        std::fs::read_to_string(&svc.alerts)
            .map(|s| s.lines().count() == 9)
            .unwrap_or(false)
    })
    .await;

    let mut c = redis.conn();
    let entries = stream(&redis);
    let mut ids: Vec<(String, String)> = entries.clone();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            ("subject".to_string(), "https://idp.example.com|carol".to_string()),
            ("token".to_string(), "tok-bob-1".to_string()),
            ("token".to_string(), "tok-erin-old".to_string()),
            ("token".to_string(), "tok-grace-1".to_string()),
        ]
    );
    // token keys: JSON, TTL = max(exp + 60 s - now, 1 h); these fixture tokens expired long ago
    let v: String = redis::cmd("GET")
        .arg(format!("{PREFIX}revoked:jti:tok-bob-1"))
        .query(&mut c)
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(j["rule"], "token-replay");
    assert_eq!(j["expires_at"], 1_795_911_300i64);
    assert_eq!(j["revoked_at"], 1_795_910_650i64);
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{PREFIX}revoked:jti:tok-bob-1"))
        .query(&mut c)
        .unwrap();
    let expect = (1_795_911_300 + 60 - tokenwatch::service::now_ms() / 1000).max(3600);
    assert!(
        (expect - 5..=expect).contains(&ttl),
        "ttl {ttl}, expected about {expect}"
    );
    // subject key: not_before, 24 h
    let key = format!("{PREFIX}revoked:sub:https://idp.example.com|carol");
    let v: String = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
    let j: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(j["not_before"], 1_795_910_400i64 + 1230);
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut c).unwrap();
    assert!((86_390..=86_400).contains(&ttl), "{ttl}");

    // metrics
    let (code, body) = http_get(svc.metrics_addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for want in [
        "tokenwatch_decisions_total{action=\"revoke_token\",rule=\"token-replay\",severity=\"high\"} 1",
        "tokenwatch_revocations_total{kind=\"token\"} 3",
        "tokenwatch_revocations_total{kind=\"subject\"} 1",
        "tokenwatch_events_total{result=\"decoded\"} 23",
        "tokenwatch_events_total{result=\"skipped\"} 3",
        "tokenwatch_decode_errors_total{reason=\"invalid_json\"} 2",
        "tokenwatch_rules_loaded 8",
        "tokenwatch_redis_up 1",
        "tokenwatch_decision_delay_seconds_count 9",
    ] {
        assert!(body.contains(want), "missing `{want}` in\n{body}");
    }
    // no token, subject or address as a label value
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("tok-") && !line.contains("idp.example.com") && !line.contains("198.51.100"),
            "{line}"
        );
    }
    assert_eq!(http_get(svc.metrics_addr, "/readyz").await.unwrap().0, 200);
    // consumer lag per partition, from librdkafka's statistics (every 5 s)
    let addr = svc.metrics_addr;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http_get(addr, "/metrics").await.unwrap();
        if body.contains("tokenwatch_consumer_lag{partition=\"0\",topic=\"logs\"} 0") {
            break;
        }
        assert!(Instant::now() < deadline, "no consumer lag gauge:\n{body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // every decision also went to the alerts topic, as the same JSON line
    let alert_lines = alerts_topic(&brokers, 9);
    let file = alerts_file(&svc);
    assert_eq!(alert_lines, file);

    // graceful stop
    svc.stop.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(20), svc.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.stats.lines, 26);
    assert_eq!(summary.revocations_written, 4);

    // Replaying the same log (a new group reads it from the start, with fresh engine state)
    // decides the same revocations again, and adds no stream entry.
    let again = start(&brokers, &redis.url(), "g2").await;
    wait_until("the replay's alert lines", 60, || {
        std::fs::read_to_string(&again.alerts)
            .map(|s| s.lines().count() == 9)
            .unwrap_or(false)
    })
    .await;
    assert_eq!(stream(&redis), entries, "no duplicate feed entries");
    again.stop.send(true).unwrap();
    let s2 = tokio::time::timeout(Duration::from_secs(20), again.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(s2.revocations_written, 0);
    drop(svc.metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_pauses_and_loses_nothing() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("logs", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let mut redis = common::RedisServer::start_with(true);
    let lines = common::fixture_lines("canonical.log");
    // up to bob's replay (00:04:10): erin, grace and bob are revoked
    let split = lines.iter().position(|l| l.contains("00:05:20")).unwrap();
    let (first, rest) = lines.split_at(split);
    common::produce(&brokers, "logs", first);
    let svc = start(&brokers, &redis.url(), "g").await;
    wait_until("three revocations", 60, || stream(&redis).len() == 3).await;

    redis.kill();
    common::produce(&brokers, "logs", rest);
    let m = svc.metrics.clone();
    wait_until("the service to notice the outage", 30, || m.redis_errors.get() > 0).await;
    assert_eq!(m.redis_up.get(), 0);
    assert_eq!(http_get(svc.metrics_addr, "/readyz").await.unwrap().0, 503);
    // Consumption pauses: while a batch waits for Redis, nothing more is read, though there
    // is more to read.
    let more = ["{\"unrelated\": 1}"; 5];
    common::produce(&brokers, "logs", &more);
    let paused_at = seen(&m);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(seen(&m), paused_at, "lines were read while Redis was down");
    let all = (lines.len() + more.len()) as u64;
    assert!(paused_at < all);

    redis.restart();
    wait_until("every line to be read once Redis is back", 60, || seen(&m) == all).await;
    wait_until("the fourth revocation", 60, || stream(&redis).len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries = stream(&redis);
    assert_eq!(entries.len(), 4, "{entries:?}");
    let mut unique = entries.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "each revocation exactly once: {entries:?}");
    assert!(entries.iter().any(|(k, id)| k == "subject" && id.ends_with("|carol")));
    svc.stop.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(20), svc.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.stats.lines, 26 + 5, "no line lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_rule_edit_keeps_the_running_rules() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("logs", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let redis = common::RedisServer::start();
    let rules = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(common::root().join("rules")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, rules.path().join(p.file_name().unwrap())).unwrap();
    }
    let config = tokenwatch::config::Config::default();
    let o = Overrides {
        brokers: Some(brokers.clone()),
        topics: vec!["logs".into()],
        rules: Some(rules.path().to_path_buf()),
        redis: vec![redis.url()],
        alerts: Some("none".into()),
        ..Overrides::default()
    };
    let (cfg, _) = resolve(&config, &o).unwrap();
    let metrics = Metrics::new();
    let (stop, stop_rx) = watch::channel(false);
    let (hup, hup_rx) = watch::channel(0);
    let task = tokio::spawn(run(cfg, metrics.clone(), stop_rx, hup_rx));
    // once partitions are assigned, the loop has taken its first look at the rule directory
    wait_until("the service to start", 30, || metrics.assigned_partitions.get() > 0).await;
    assert_eq!(metrics.rules_loaded.get(), 8);

    std::fs::write(rules.path().join("broken.yaml"), "id: broken\nseverity: severe\n").unwrap();
    let m = metrics.clone();
    wait_until("a failed reload", 30, || {
        m.rule_reloads.with_label_values(&["error"]).get() == 1
    })
    .await;
    assert_eq!(metrics.rules_loaded.get(), 8, "still running the old rules");

    std::fs::write(
        rules.path().join("broken.yaml"),
        "id: fixed\nseverity: low\naction: alert\nkind: match\nkey: token_id\n",
    )
    .unwrap();
    wait_until("a good reload", 30, || {
        m.rule_reloads.with_label_values(&["ok"]).get() >= 1
    })
    .await;
    assert_eq!(metrics.rules_loaded.get(), 9);
    // SIGHUP-style reload request
    hup.send_modify(|n| *n += 1);
    wait_until("a reload on request", 30, || {
        m.rule_reloads.with_label_values(&["ok"]).get() >= 2
    })
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_takes_over_partitions_without_loss_or_duplicates() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("logs", 2, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let redis = common::RedisServer::start();
    // Different traffic on each partition: the fixture, and generated attacks.
    let fixture = common::fixture_lines("canonical.log");
    let cfg = tokenwatch::gen::GenConfig {
        seed: 5,
        events: Some(4_000),
        rate_per_sec: 20.0,
        attack_rate: 60.0,
        ..Default::default()
    };
    let generated: Vec<String> = tokenwatch::gen::Generator::new(cfg).map(|g| g.line).collect();
    let half = generated.len() / 2;
    common::produce_to(&brokers, "logs", 0, &fixture);
    common::produce_to(&brokers, "logs", 1, &generated[..half]);

    let a = start(&brokers, &redis.url(), "rb").await;
    let ma = a.metrics.clone();
    let first = (fixture.len() + half) as u64;
    wait_until("the first instance to read what is there", 60, || seen(&ma) >= first).await;
    let before = stream(&redis).len();
    assert!(before >= 4, "{before}");

    let b = start(&brokers, &redis.url(), "rb").await;
    let mb = b.metrics.clone();
    wait_until("the partitions to be shared", 60, || {
        ma.assigned_partitions.get() == 1 && mb.assigned_partitions.get() == 1
    })
    .await;
    common::produce_to(&brokers, "logs", 1, &generated[half..]);
    let total = (fixture.len() + generated.len()) as u64;
    wait_until("every line to be read by one instance or the other", 60, || {
        seen(&ma) + seen(&mb) >= total
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let entries = stream(&redis);
    let mut unique = entries.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), entries.len(), "no duplicate feed entries: {entries:?}");
    assert!(entries.len() > before, "the second half's attacks were revoked too");
    for s in [a.stop, b.stop] {
        s.send(true).unwrap();
    }
    for t in [a.task, b.task] {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

async fn wait_for_status(addr: std::net::SocketAddr, path: &str, want: u16, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (code, body) = http_get(addr, path).await.unwrap();
        if code == want {
            return;
        }
        assert!(Instant::now() < deadline, "{path} is still {code} ({body}), not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_even_without_traffic() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("logs", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let mut redis = common::RedisServer::start();
    let svc = start(&brokers, &redis.url(), "ready").await;
    wait_for_status(svc.metrics_addr, "/readyz", 200, 30).await;

    // Nothing is produced, so nothing is written: only the health check can notice.
    redis.kill();
    let down = Instant::now();
    wait_for_status(svc.metrics_addr, "/readyz", 503, 10).await;
    assert!(down.elapsed() < Duration::from_secs(6), "{:?}", down.elapsed());
    assert_eq!(svc.metrics.redis_up.get(), 0);
    assert_eq!(svc.metrics.redis_errors.get(), 0, "no write failed");
    let (_, body) = http_get(svc.metrics_addr, "/readyz").await.unwrap();
    assert!(body.contains("redis down"), "{body}");

    redis.restart();
    wait_for_status(svc.metrics_addr, "/readyz", 200, 15).await;
    assert_eq!(svc.metrics.redis_up.get(), 1);
    stop_and_wait(svc).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_redis_settings_fail_at_start_instead_of_retrying() {
    let redis = common::RedisServer::start_args(false, &["--requirepass", "s3cret"]);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem");
    let file = dir.path().join("tokenwatch.toml");
    std::fs::write(
        &file,
        format!("[revocation]\nredis_ca_file = \"{}\"\n", missing.display()),
    )
    .unwrap();
    let overrides = |url: &str| Overrides {
        brokers: Some("127.0.0.1:1".into()),
        topics: vec!["logs".into()],
        rules: Some(common::root().join("rules")),
        redis: vec![url.into()],
        alerts: Some("none".into()),
        ..Overrides::default()
    };
    let url = format!("rediss://127.0.0.1:{}/", redis.port);

    // At resolve: the message names the key and where it was set.
    let c = tokenwatch::config::Config::load_with_env(Some(&file), std::iter::empty()).unwrap();
    let e = resolve(&c, &overrides(&url)).err().unwrap();
    assert!(
        e.starts_with(&format!("{}:2: revocation.redis_ca_file:", file.display())) && e.contains("no-such-ca.pem"),
        "{e}"
    );
    let e = resolve(&Default::default(), &overrides("redis://127.0.0.1:notaport/"))
        .err()
        .unwrap();
    assert!(e.starts_with("redis:"), "{e}");

    // At start: `run` gives up at once instead of retrying a setting that cannot work.
    let run_err = |cfg: ServiceConfig| async move {
        let (_stop, stop_rx) = watch::channel(false);
        let (_hup, hup_rx) = watch::channel(0);
        tokio::time::timeout(Duration::from_secs(10), run(cfg, Metrics::new(), stop_rx, hup_rx))
            .await
            .expect("run retried a bad setting instead of failing")
            .err()
            .unwrap()
    };
    let (mut cfg, _) = resolve(&Default::default(), &overrides(&url)).unwrap();
    cfg.redis.ca_file = Some(missing.clone());
    let e = run_err(cfg).await;
    assert!(e.contains("redis_ca_file") && e.contains("no-such-ca.pem"), "{e}");

    // A refused password is a setting to fix too, and never shown.
    let (cfg, _) = resolve(
        &Default::default(),
        &overrides(&format!("redis://:wrong@127.0.0.1:{}/", redis.port)),
    )
    .unwrap();
    let e = run_err(cfg).await;
    assert!(
        e.contains(&format!("127.0.0.1:{}", redis.port)) && !e.contains("wrong"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_commits_every_finished_batch() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    let (brokers, lines) = logs_topic_with_fixture_lines(&mock);
    let redis = common::RedisServer::start();

    // Every per-batch (asynchronous) commit fails...
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 500],
    );
    let svc = start(&brokers, &redis.url(), "gc").await;
    let m = svc.metrics.clone();
    wait_until("every line to be read", 60, || seen(&m) == lines.len() as u64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        common::committed(&brokers, "gc", "logs"),
        None,
        "the injected errors hit the commits"
    );

    // ...so only the final, synchronous commit of the stop can tell the group.
    mock.clear_request_errors(RDKafkaApiKey::OffsetCommit);
    let summary = stop_and_wait(svc).await.unwrap();
    assert_eq!(summary.stats.lines, lines.len() as u64);
    assert_eq!(common::committed(&brokers, "gc", "logs"), Some(lines.len() as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerts_topic_outage_pauses_and_loses_nothing() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("alerts", 1, 1).unwrap();
    let (brokers, lines) = logs_topic_with_fixture_lines(&mock);
    let redis = common::RedisServer::start();

    // The alerts partition has no leader: every record times out (after 1 s here).
    mock.partition_leader("alerts", 0, None).unwrap();
    let svc = start_tweaked(&brokers, &redis.url(), "ga", Some("alerts"), |cfg| {
        cfg.kafka.insert("message.timeout.ms".into(), "1000".into());
    })
    .await;
    let m = svc.metrics.clone();
    wait_until("failed alert deliveries", 30, || m.alert_errors.get() >= 2).await;
    assert!(!svc.task.is_finished(), "the service keeps running");
    // nothing past the undelivered batch is read or committed
    let paused_at = seen(&m);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(seen(&m), paused_at);
    assert!(common::committed(&brokers, "ga", "logs").unwrap_or(0) < lines.len() as i64);

    mock.partition_leader("alerts", 0, Some(1)).unwrap();
    wait_until("every line to be read", 60, || seen(&m) == lines.len() as u64).await;
    let file = alerts_file(&svc);
    assert_eq!(file.len(), 9, "retries wrote no line twice");
    // every decision reached the topic, once
    let topic = alerts_topic(&brokers, file.len());
    let (mut a, mut b) = (topic.clone(), file.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b);
    stop_and_wait(svc).await.unwrap();
    assert_eq!(common::committed(&brokers, "ga", "logs"), Some(lines.len() as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_settings_reach_redis() {
    use tokenwatch::sinks::redis::{Kind, Revocation, RevocationWriter};
    let redis = common::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokenwatch.toml");
    std::fs::write(
        &file,
        format!(
            "brokers = \"b:9092\"\ntopics = [\"logs\"]\nredis = [\"{}\"]\n\n[revocation]\nsubject_ttl = \"2h\"\nmin_token_ttl = \"3h\"\nno_exp_ttl = \"5h\"\nstream_maxlen = 10\n",
            redis.url()
        ),
    )
    .unwrap();
    let c = tokenwatch::config::Config::load_with_env(Some(&file), std::iter::empty()).unwrap();
    let (cfg, _) = resolve(&c, &Overrides::default()).unwrap();
    let mut w = RevocationWriter::connect(cfg.redis.clone()).await.unwrap();
    let now = tokenwatch::service::now_ms() / 1000;
    let rev = |kind, id: &str, expires_at| Revocation {
        kind,
        id: id.into(),
        rule: "r".into(),
        reason: "test".into(),
        revoked_at: now,
        expires_at,
        not_before: (kind == Kind::Subject).then_some(now),
    };
    let mut conn = redis.conn();
    let mut ttl_of = |key: String| -> i64 { redis::cmd("TTL").arg(key).query(&mut conn).unwrap() };
    let hours = |h: i64| h * 3600;
    for (r, key, want) in [
        // long expired: kept min_token_ttl
        (
            rev(Kind::Token, "expired", Some(now - 100)),
            "revoked:jti:expired",
            hours(3),
        ),
        (rev(Kind::Token, "no-exp", None), "revoked:jti:no-exp", hours(5)),
        // exp + the 60 s leeway
        (
            rev(Kind::Token, "later", Some(now + hours(10))),
            "revoked:jti:later",
            hours(10) + 60,
        ),
        (rev(Kind::Subject, "idp|u", None), "revoked:sub:idp|u", hours(2)),
    ] {
        assert!(w.write(&r, now).await.unwrap());
        let ttl = ttl_of(format!("{PREFIX}{key}"));
        assert!((want - 5..=want).contains(&ttl), "{key}: ttl {ttl}, want {want}");
    }

    // The feed is trimmed to about stream_maxlen (whole stream nodes of 100 entries go).
    for i in 0..1_000 {
        assert!(w.write(&rev(Kind::Token, &format!("t{i}"), None), now).await.unwrap());
    }
    let len: u64 = redis::cmd("XLEN")
        .arg(format!("{PREFIX}revocations"))
        .query(&mut redis.conn())
        .unwrap();
    assert!(len <= 10 + 100, "XLEN {len}");
}
