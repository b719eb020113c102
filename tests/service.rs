//! `tokenwatch run` in-process against librdkafka's mock cluster (a real Kafka protocol
//! implementation inside librdkafka) and a real redis-server on a free port.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio::sync::watch;

use tokenwatch::metrics::{http_get, Metrics};
use tokenwatch::service::{resolve, run, Overrides, RunSummary};

const PREFIX: &str = "tokenwatch:";

fn produce(brokers: &str, topic: &str, lines: &[&str]) {
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for l in lines {
        loop {
            match p.send(BaseRecord::<(), str>::to(topic).payload(*l).partition(0)) {
                Ok(()) => break,
                Err((_, _)) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

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
        ..Overrides::default()
    };
    let (mut cfg, _) = resolve(&config, &o).unwrap();
    cfg.batch_wait = Duration::from_millis(10);
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

fn fixture_lines() -> Vec<String> {
    std::fs::read_to_string(common::fixture("canonical.log"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn stream(redis: &common::RedisServer) -> Vec<(String, String)> {
    common::stream_entries(&mut redis.conn(), &format!("{PREFIX}revocations"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_kafka_become_revocations_in_redis_and_metrics() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("logs", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let redis = common::RedisServer::start();
    let lines = fixture_lines();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    produce(&brokers, "logs", &refs);

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
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "alerts-check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    rdkafka::consumer::Consumer::subscribe(&c, &["alerts"]).unwrap();
    let mut alert_lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while alert_lines.len() < 9 && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            alert_lines.push(String::from_utf8_lossy(rdkafka::Message::payload(&m).unwrap()).into_owned());
        }
    }
    let file: Vec<String> = std::fs::read_to_string(&svc.alerts)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
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
    let lines = fixture_lines();
    // up to bob's replay (00:04:10): erin, grace and bob are revoked
    let split = lines.iter().position(|l| l.contains("00:05:20")).unwrap();
    let (first, rest): (Vec<&str>, Vec<&str>) = (
        lines[..split].iter().map(String::as_str).collect(),
        lines[split..].iter().map(String::as_str).collect(),
    );
    produce(&brokers, "logs", &first);
    let svc = start(&brokers, &redis.url(), "g").await;
    wait_until("three revocations", 60, || stream(&redis).len() == 3).await;

    redis.kill();
    produce(&brokers, "logs", &rest);
    let m = svc.metrics.clone();
    wait_until("the service to notice the outage", 30, || m.redis_errors.get() > 0).await;
    assert_eq!(m.redis_up.get(), 0);
    assert_eq!(http_get(svc.metrics_addr, "/readyz").await.unwrap().0, 503);
    tokio::time::sleep(Duration::from_secs(1)).await;

    redis.restart();
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
    assert_eq!(summary.stats.lines, 26, "no line lost");
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
    let fixture = fixture_lines();
    let cfg = tokenwatch::gen::GenConfig {
        seed: 5,
        events: Some(4_000),
        rate_per_sec: 20.0,
        attack_rate: 60.0,
        ..Default::default()
    };
    let generated: Vec<String> = tokenwatch::gen::Generator::new(cfg).map(|g| g.line).collect();
    let send = |lines: &[String], partition: i32| {
        let p: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        for l in lines {
            while p
                .send(
                    BaseRecord::<(), str>::to("logs")
                        .payload(l.as_str())
                        .partition(partition),
                )
                .is_err()
            {
                p.poll(Duration::from_millis(10));
            }
        }
        p.flush(Duration::from_secs(10)).unwrap();
    };
    let half = generated.len() / 2;
    send(&fixture, 0);
    send(&generated[..half], 1);

    let a = start(&brokers, &redis.url(), "rb").await;
    let ma = a.metrics.clone();
    let first = (fixture.len() + half) as u64;
    let seen =
        |m: &Metrics| m.events.with_label_values(&["decoded"]).get() + m.events.with_label_values(&["skipped"]).get();
    wait_until("the first instance to read what is there", 60, || seen(&ma) >= first).await;
    let before = stream(&redis).len();
    assert!(before >= 4, "{before}");

    let b = start(&brokers, &redis.url(), "rb").await;
    let mb = b.metrics.clone();
    wait_until("the partitions to be shared", 60, || {
        ma.assigned_partitions.get() == 1 && mb.assigned_partitions.get() == 1
    })
    .await;
    send(&generated[half..], 1);
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
