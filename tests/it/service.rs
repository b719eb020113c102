//! `tokenwatch run` in-process against librdkafka's mock cluster (a real Kafka protocol
//! implementation inside librdkafka) and a real redis-server on a free port.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio::sync::watch;

use tokenwatch::config::flags::RunFlags;
use tokenwatch::metrics::{http_get, Metrics};
use tokenwatch::service::{RunSummary, Service, ServiceConfig, ServiceError};

const PREFIX: &str = "tokenwatch:";

struct Running {
    stop: watch::Sender<bool>,
    hup: watch::Sender<u64>,
    task: tokio::task::JoinHandle<Result<RunSummary, ServiceError>>,
    metrics: Arc<Metrics>,
    metrics_addr: std::net::SocketAddr,
    alerts: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// What the services of a test run against: a topic `logs` on librdkafka's mock cluster, and
/// a redis-server of their own. Declared before the services, so that it outlives them.
struct Setup {
    mock: MockCluster<'static, DefaultProducerContext>,
    brokers: String,
    redis: common::RedisServer,
}

impl Setup {
    /// `logs` with `partitions` partitions, empty, and a redis-server without persistence.
    fn new(partitions: i32) -> Setup {
        Setup::with_redis(partitions, common::RedisServer::start())
    }

    /// `logs` with `partitions` partitions, empty, and `redis`.
    fn with_redis(partitions: i32, redis: common::RedisServer) -> Setup {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("logs", partitions, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        Setup { mock, brokers, redis }
    }

    /// `logs` with one partition holding the fixture lines, which it returns too.
    fn with_fixture_lines() -> (Setup, Vec<String>) {
        let setup = Setup::new(1);
        let lines = common::fixture_lines("canonical.log");
        common::produce(&setup.brokers, "logs", &lines);
        (setup, lines)
    }

    /// A service of consumer group `group` with the default rules, alerts to a file.
    async fn start(&self, group: &str) -> Running {
        self.start_with(group, None, |_| {}).await
    }

    /// A service of `group` judging with only the rule files in `rules`.
    async fn start_with_rules(&self, group: &str, rules: &std::path::Path) -> Running {
        let dir = rules.to_path_buf();
        self.start_with(group, None, move |c| c.rules_dir = dir).await
    }

    /// A service of `group`: the default rules, the test GeoIP database, the test JWKS, alerts
    /// to a file (and to `alerts_topic`), batches of at most 10 ms; then `tweak`.
    async fn start_with(
        &self,
        group: &str,
        alerts_topic: Option<&str>,
        tweak: impl FnOnce(&mut ServiceConfig),
    ) -> Running {
        start_service(&self.brokers, &self.redis.url(), group, alerts_topic, tweak).await
    }

    /// The entries of the revocation feed: (kind, id) pairs in order.
    fn stream(&self) -> Vec<(String, String)> {
        common::stream_entries(&mut self.redis.conn(), &format!("{PREFIX}revocations"))
    }

    /// A revocation writer with the Redis settings the services use (as the CLI's `rearm`
    /// and `unrevoke` connect).
    async fn revocation_writer(&self) -> tokenwatch::sinks::redis::RevocationWriter {
        let cfg = RunFlags {
            brokers: Some(self.brokers.clone()),
            topics: vec!["logs".into()],
            redis: vec![self.redis.url()],
            ..RunFlags::default()
        }
        .resolve(std::iter::empty())
        .unwrap()
        .0
        .redis;
        tokenwatch::sinks::redis::RevocationWriter::connect(cfg).await.unwrap()
    }
}

/// [`Setup::start_with`].
async fn start_service(
    brokers: &str,
    redis_url: &str,
    group: &str,
    alerts_topic: Option<&str>,
    tweak: impl FnOnce(&mut ServiceConfig),
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let o = RunFlags {
        brokers: Some(brokers.into()),
        topics: vec!["logs".into()],
        group: Some(group.into()),
        rules: Some(common::root().join("rules")),
        geoip: Some(common::root().join("assets/GeoLite2-City-Test.mmdb")),
        redis: vec![redis_url.into()],
        alerts: Some(alerts.to_str().unwrap().into()),
        alerts_topic: alerts_topic.map(String::from),
        // the fixtures' tokens are signed with the test key of this JWKS
        // and the generated attacks of `a_second_instance_takes_over...` (seed 5) with the
        // generator's keys
        jwks: vec![
            common::root()
                .join("tests/fixtures/keys/jwks.json")
                .to_str()
                .unwrap()
                .into(),
            common::gen_jwks_file(5).to_str().unwrap().into(),
            // and the backlog tests' (seed 10), which replay verifies with them too
            common::gen_jwks_file(10).to_str().unwrap().into(),
        ],
        ..RunFlags::default()
    };
    let (mut cfg, _) = o.resolve(std::iter::empty()).unwrap();
    cfg.batch_wait = Duration::from_millis(10);
    tweak(&mut cfg);
    launch(cfg, alerts, dir).await
}

/// Builds the service as `tokenwatch run` does, its metrics served on a port of its own
/// (bound here: no race for a free port), and runs it in a task.
async fn launch(cfg: ServiceConfig, alerts: std::path::PathBuf, dir: tempfile::TempDir) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let (hup, hup_rx) = watch::channel(0);
    let service = Service::builder(cfg)
        .metrics_listener(listener)
        .reload_requests(hup_rx)
        .build()
        .await
        .unwrap();
    let metrics = service.metrics();
    let metrics_addr = service.metrics_addr().unwrap();
    let task = tokio::spawn(service.run(stop_rx));
    Running {
        stop,
        hup,
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

/// Lines the service has read: decoded and skipped events.
fn seen(m: &Metrics) -> u64 {
    m.events.with_label_values(&["decoded"]).get() + m.events.with_label_values(&["skipped"]).get()
}

async fn stop_and_wait(svc: Running) -> Result<RunSummary, ServiceError> {
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
    topic_records(brokers, "alerts", want)
}

/// The records of `topic`, read from the start, as [`alerts_topic`] reads them.
fn topic_records(brokers: &str, topic: &str, want: usize) -> Vec<String> {
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-check"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    rdkafka::consumer::Consumer::subscribe(&c, &[topic]).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && records.len() <= want {
        if let Some(Ok(msg)) = c.poll(Duration::from_millis(200)) {
            records.push(String::from_utf8_lossy(rdkafka::Message::payload(&msg).unwrap()).into_owned());
        } else if records.len() == want {
            break;
        }
    }
    records
}

/// Lines in the service's alerts file so far.
fn alert_count(svc: &Running) -> usize {
    std::fs::read_to_string(&svc.alerts)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_kafka_become_revocations_in_redis_and_metrics() {
    let (setup, _) = Setup::with_fixture_lines();
    setup.mock.create_topic("alerts", 1, 1).unwrap();
    let svc = setup.start_with("g1", Some("alerts"), |_| {}).await;
    wait_until("four revocations in the stream", 60, || setup.stream().len() >= 4).await;
    // every decision is an alert line (9 in the fixture)
    wait_until("nine alert lines", 30, || alert_count(&svc) == 9).await;

    let mut c = setup.redis.conn();
    let entries = setup.stream();
    let mut ids: Vec<(String, String)> = entries.clone();
    ids.sort();
    assert_eq!(ids, {
        // fixed-length ids: SHA-256 of (iss, 0x00, jti or sub)
        let idp = "https://idp.example.com";
        let mut want = vec![
            ("subject".to_string(), common::scoped(idp, "carol")),
            ("token".to_string(), common::scoped(idp, "tok-bob-1")),
            ("token".to_string(), common::scoped(idp, "tok-erin-old")),
            ("token".to_string(), common::scoped(idp, "tok-grace-1")),
        ];
        want.sort();
        want
    });
    // token keys: JSON, TTL = max(exp + 60 s - now, 1 h); these fixture tokens expired long ago
    let v: String = redis::cmd("GET")
        .arg(format!(
            "{PREFIX}revoked:tok:{}",
            common::scoped("https://idp.example.com", "tok-bob-1")
        ))
        .query(&mut c)
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(j["rule"], "token-replay");
    assert_eq!(j["expires_at"], 1_795_911_300i64);
    assert_eq!(j["revoked_at"], 1_795_910_650i64);
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!(
            "{PREFIX}revoked:tok:{}",
            common::scoped("https://idp.example.com", "tok-bob-1")
        ))
        .query(&mut c)
        .unwrap();
    let expect = (1_795_911_300 + 60 - tokenwatch::service::now_ms() / 1000).max(3600);
    assert!(
        (expect - 5..=expect).contains(&ttl),
        "ttl {ttl}, expected about {expect}"
    );
    // subject key: not_before, 24 h
    let key = format!(
        "{PREFIX}revoked:sub:{}",
        common::scoped("https://idp.example.com", "carol")
    );
    let v: String = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
    let j: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(j["not_before"], 1_795_910_400i64 + 1230);
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut c).unwrap();
    assert!((86_390..=86_400).contains(&ttl), "{ttl}");

    // metrics, once the loop has counted every line (the last ones wait for event time, up to
    // idle_timeout, and the counters are brought up to date between batches)
    let m = svc.metrics.clone();
    wait_until("every line counted", 30, || seen(&m) == 26).await;
    let (code, body) = http_get(svc.metrics_addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for want in [
        "tokenwatch_decisions_total{action=\"revoke_token\",rule=\"token-replay\",severity=\"high\"} 1",
        "tokenwatch_revocations_total{kind=\"token\"} 3",
        "tokenwatch_revocations_total{kind=\"subject\"} 1",
        "tokenwatch_events_total{result=\"decoded\"} 23",
        "tokenwatch_events_total{result=\"skipped\"} 3",
        "tokenwatch_decode_errors_total{reason=\"invalid_json\"} 2",
        "tokenwatch_rules_loaded 15",
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
    let alert_lines = alerts_topic(&setup.brokers, 9);
    let file = alerts_file(&svc);
    assert_eq!(alert_lines, file);

    // graceful stop
    let summary = stop_and_wait(svc).await.unwrap();
    assert_eq!(summary.stats.lines, 26);
    assert_eq!(summary.revocations_written, 4);

    // Replaying the same log (a new group reads it from the start, with fresh engine state)
    // decides the same revocations again, and adds no stream entry.
    let again = setup.start("g2").await;
    wait_until("the replay's alert lines", 60, || alert_count(&again) == 9).await;
    assert_eq!(setup.stream(), entries, "no duplicate feed entries");
    let s2 = stop_and_wait(again).await.unwrap();
    assert_eq!(s2.revocations_written, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_pauses_and_loses_nothing() {
    let mut setup = Setup::with_redis(1, common::RedisServer::start_with(true));
    let lines = common::fixture_lines("canonical.log");
    // up to bob's replay (00:04:10): erin, grace and bob are revoked
    let split = lines.iter().position(|l| l.contains("00:05:20")).unwrap();
    let (first, rest) = lines.split_at(split);
    common::produce(&setup.brokers, "logs", first);
    let svc = setup.start("g").await;
    wait_until("three revocations", 60, || setup.stream().len() == 3).await;

    setup.redis.kill();
    common::produce(&setup.brokers, "logs", rest);
    let m = svc.metrics.clone();
    wait_until("the service to notice the outage", 30, || m.redis_errors.get() > 0).await;
    assert_eq!(m.redis_up.get(), 0);
    assert_eq!(http_get(svc.metrics_addr, "/readyz").await.unwrap().0, 503);
    // Consumption pauses: while a batch waits for Redis, nothing more is read, though there
    // is more to read.
    let more = ["{\"unrelated\": 1}"; 5];
    common::produce(&setup.brokers, "logs", &more);
    let paused_at = seen(&m);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(seen(&m), paused_at, "lines were read while Redis was down");
    let all = (lines.len() + more.len()) as u64;
    assert!(paused_at < all);

    setup.redis.restart();
    wait_until("every line to be read once Redis is back", 60, || seen(&m) == all).await;
    wait_until("the fourth revocation", 60, || setup.stream().len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries = setup.stream();
    assert_eq!(entries.len(), 4, "{entries:?}");
    let mut unique = entries.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "each revocation exactly once: {entries:?}");
    let carol = common::scoped("https://idp.example.com", "carol");
    assert!(entries.iter().any(|(k, id)| k == "subject" && *id == carol));
    let summary = stop_and_wait(svc).await.unwrap();
    assert_eq!(summary.stats.lines, 26 + 5, "no line lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_rule_edit_keeps_the_running_rules() {
    let setup = Setup::new(1);
    let rules = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(common::root().join("rules")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, rules.path().join(p.file_name().unwrap())).unwrap();
    }
    let o = RunFlags {
        brokers: Some(setup.brokers.clone()),
        topics: vec!["logs".into()],
        rules: Some(rules.path().to_path_buf()),
        redis: vec![setup.redis.url()],
        alerts: Some("none".into()),
        ..RunFlags::default()
    };
    let (cfg, _) = o.resolve(std::iter::empty()).unwrap();
    let svc = launch(cfg, rules.path().join("alerts-unused"), tempfile::tempdir().unwrap()).await;
    let metrics = svc.metrics.clone();
    // once partitions are assigned, the loop has taken its first look at the rule directory
    wait_until("the service to start", 30, || metrics.assigned_partitions.get() > 0).await;
    assert_eq!(metrics.rules_loaded.get(), 15);

    std::fs::write(rules.path().join("broken.yaml"), "id: broken\nseverity: severe\n").unwrap();
    let m = metrics.clone();
    wait_until("a failed reload", 30, || {
        m.rule_reloads.with_label_values(&["error"]).get() == 1
    })
    .await;
    assert_eq!(metrics.rules_loaded.get(), 15, "still running the old rules");

    std::fs::write(
        rules.path().join("broken.yaml"),
        "id: fixed\nseverity: low\naction: alert\nkind: match\nkey: token_id\n",
    )
    .unwrap();
    wait_until("a good reload", 30, || {
        m.rule_reloads.with_label_values(&["ok"]).get() >= 1
    })
    .await;
    assert_eq!(metrics.rules_loaded.get(), 16);
    // SIGHUP-style reload request
    svc.hup.send_modify(|n| *n += 1);
    wait_until("a reload on request", 30, || {
        m.rule_reloads.with_label_values(&["ok"]).get() >= 2
    })
    .await;
    stop_and_wait(svc).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_takes_over_partitions_without_loss_or_duplicates() {
    let setup = Setup::new(2);
    let brokers = &setup.brokers;
    // Different traffic on each partition: the fixture, and generated attacks.
    let fixture = common::fixture_lines("canonical.log");
    let cfg = tokenwatch_gen::GenConfig {
        seed: 5,
        events: Some(4_000),
        rate_per_sec: 20.0,
        attack_rate: 60.0,
        ..Default::default()
    };
    let generated: Vec<String> = tokenwatch_gen::Generator::new(cfg).map(|g| g.line).collect();
    let half = generated.len() / 2;
    common::produce_to(brokers, "logs", 0, &fixture);
    common::produce_to(brokers, "logs", 1, &generated[..half]);

    let a = setup.start("rb").await;
    let ma = a.metrics.clone();
    let first = (fixture.len() + half) as u64;
    wait_until("the first instance to read what is there", 60, || seen(&ma) >= first).await;
    let before = setup.stream().len();
    assert!(before >= 4, "{before}");

    let b = setup.start("rb").await;
    let mb = b.metrics.clone();
    wait_until("the partitions to be shared", 60, || {
        ma.assigned_partitions.get() == 1 && mb.assigned_partitions.get() == 1
    })
    .await;
    common::produce_to(brokers, "logs", 1, &generated[half..]);
    let total = (fixture.len() + generated.len()) as u64;
    wait_until("every line to be read by one instance or the other", 60, || {
        seen(&ma) + seen(&mb) >= total
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let entries = setup.stream();
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
    let mut setup = Setup::new(1);
    let svc = setup.start("ready").await;
    wait_for_status(svc.metrics_addr, "/readyz", 200, 30).await;

    // Nothing is produced, so nothing is written: only the health check can notice.
    setup.redis.kill();
    let down = Instant::now();
    wait_for_status(svc.metrics_addr, "/readyz", 503, 10).await;
    assert!(down.elapsed() < Duration::from_secs(6), "{:?}", down.elapsed());
    assert_eq!(svc.metrics.redis_up.get(), 0);
    assert_eq!(svc.metrics.redis_errors.get(), 0, "no write failed");
    let (_, body) = http_get(svc.metrics_addr, "/readyz").await.unwrap();
    assert!(body.contains("redis down"), "{body}");

    setup.redis.restart();
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
    let overrides = |url: &str| RunFlags {
        brokers: Some("127.0.0.1:1".into()),
        topics: vec!["logs".into()],
        rules: Some(common::root().join("rules")),
        redis: vec![url.into()],
        alerts: Some("none".into()),
        ..RunFlags::default()
    };
    let url = format!("rediss://127.0.0.1:{}/", redis.port);

    // At resolve: the message names the key and where it was set.
    let with_file = RunFlags {
        config: Some(file.clone()),
        ..overrides(&url)
    };
    let e = with_file.resolve(std::iter::empty()).err().unwrap().to_string();
    assert!(
        e.starts_with(&format!("{}:2: revocation.redis_ca_file:", file.display())) && e.contains("no-such-ca.pem"),
        "{e}"
    );
    let e = overrides("redis://127.0.0.1:notaport/")
        .resolve(std::iter::empty())
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("--redis: redis:"), "{e}");

    // At start: `run` gives up at once instead of retrying a setting that cannot work.
    let run_err = |cfg: ServiceConfig| async move {
        let (_stop, stop_rx) = watch::channel(false);
        let run = async { Service::builder(cfg).build().await?.run(stop_rx).await };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("run retried a bad setting instead of failing")
            .err()
            .unwrap()
            .to_string()
    };
    let (mut cfg, _) = overrides(&url).resolve(std::iter::empty()).unwrap();
    cfg.redis.ca_file = Some(missing.clone());
    let e = run_err(cfg).await;
    assert!(e.contains("redis_ca_file") && e.contains("no-such-ca.pem"), "{e}");

    // A refused password is a setting to fix too, and never shown.
    let (cfg, _) = overrides(&format!("redis://:wrong@127.0.0.1:{}/", redis.port))
        .resolve(std::iter::empty())
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
    let (setup, lines) = Setup::with_fixture_lines();
    let brokers = &setup.brokers;

    // Every per-batch (asynchronous) commit fails...
    setup.mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 500],
    );
    let svc = setup.start("gc").await;
    let m = svc.metrics.clone();
    wait_until("every line to be read", 60, || seen(&m) == lines.len() as u64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        common::committed(brokers, "gc", "logs"),
        None,
        "the injected errors hit the commits"
    );

    // ...so only the final, synchronous commit of the stop can tell the group.
    setup.mock.clear_request_errors(RDKafkaApiKey::OffsetCommit);
    let summary = stop_and_wait(svc).await.unwrap();
    assert_eq!(summary.stats.lines, lines.len() as u64);
    assert_eq!(common::committed(brokers, "gc", "logs"), Some(lines.len() as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerts_topic_outage_pauses_and_loses_nothing() {
    let (setup, lines) = Setup::with_fixture_lines();
    let (mock, brokers) = (&setup.mock, &setup.brokers);
    mock.create_topic("alerts", 1, 1).unwrap();

    // The alerts partition has no leader: every record times out (after 1 s here).
    mock.partition_leader("alerts", 0, None).unwrap();
    let svc = setup
        .start_with("ga", Some("alerts"), |cfg| {
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
    assert!(common::committed(brokers, "ga", "logs").unwrap_or(0) < lines.len() as i64);

    mock.partition_leader("alerts", 0, Some(1)).unwrap();
    wait_until("every line to be read", 60, || seen(&m) == lines.len() as u64).await;
    let file = alerts_file(&svc);
    assert_eq!(file.len(), 9, "retries wrote no line twice");
    // every decision reached the topic, once
    let topic = alerts_topic(brokers, file.len());
    let (mut a, mut b) = (topic.clone(), file.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b);
    stop_and_wait(svc).await.unwrap();
    assert_eq!(common::committed(brokers, "ga", "logs"), Some(lines.len() as i64));
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
    let flags = RunFlags {
        config: Some(file.clone()),
        ..RunFlags::default()
    };
    let (cfg, _) = flags.resolve(std::iter::empty()).unwrap();
    let mut w = RevocationWriter::connect(cfg.redis.clone()).await.unwrap();
    let now = tokenwatch::service::now_ms() / 1000;
    let rev = |kind, id: &str, expires_at| Revocation {
        kind,
        id: id.into(),
        rule: "r".into(),
        reason: "test".into(),
        iss: None,
        sub: None,
        jti: None,
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
            "revoked:tok:expired",
            hours(3),
        ),
        (rev(Kind::Token, "no-exp", None), "revoked:tok:no-exp", hours(5)),
        // exp + the 60 s leeway
        (
            rev(Kind::Token, "later", Some(now + hours(10))),
            "revoked:tok:later",
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

/// A revocation Redis rejects for good (here WRONGTYPE: the feed key holds a string, so every
/// feed append fails) goes to the dead-letter output, and the stream goes on: every line is
/// read and the dead letters name each revocation. (Retried as an outage, this paused
/// consumption forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_redis_rejects_for_good_is_dead_lettered_and_the_stream_goes_on() {
    let (setup, lines) = Setup::with_fixture_lines();
    let _: () = redis::cmd("SET")
        .arg(format!("{PREFIX}revocations"))
        .arg("not a stream")
        .query(&mut setup.redis.conn())
        .unwrap();
    let svc = setup.start("g-dead").await;
    let m = svc.metrics.clone();
    let all = lines.len() as u64;
    wait_until("every line to be read", 60, || seen(&m) == all).await;
    wait_until("four dead letters", 30, || {
        m.dead_letters.with_label_values(&["redis"]).get() == 4
    })
    .await;
    let dead = std::fs::read_to_string(svc.alerts.with_extension("jsonl.dead-letters")).unwrap();
    let dead: Vec<serde_json::Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(dead.len(), 4);
    assert!(dead
        .iter()
        .all(|d| d["output"] == "redis" && d["error"].as_str().unwrap().contains("WRONGTYPE")));
    assert!(dead
        .iter()
        .any(|d| d["item"]["rule"] == "impossible-travel" && d["item"]["kind"] == "subject"));
    assert_eq!(m.redis_refused.get(), 0);
    stop_and_wait(svc).await.unwrap();
}

/// Redis that answers but refuses writes (out of memory) keeps consumption paused, since nothing
/// may be lost, but says why: /readyz names the code and `tokenwatch_redis_refused` is 1, not an
/// outage. Once the operator acts, the revocations are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_writes_is_named_in_readyz_and_waited_out() {
    let (setup, _) = Setup::with_fixture_lines();
    let set = |k: &str, v: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query(&mut setup.redis.conn())
            .unwrap();
    };
    set("maxmemory-policy", "noeviction");
    set("maxmemory", "1");
    let svc = setup.start("g-oom").await;
    let m = svc.metrics.clone();
    wait_until("redis_refused", 60, || m.redis_refused.get() == 1).await;
    let (code, body) = http_get(svc.metrics_addr, "/readyz").await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("refuses writes (OOM)"), "{body}");
    assert!(setup.stream().is_empty());
    set("maxmemory", "0");
    wait_until("four revocations", 60, || setup.stream().len() == 4).await;
    wait_until("redis_refused cleared", 10, || m.redis_refused.get() == 0).await;
    stop_and_wait(svc).await.unwrap();
}

/// An alert record the alerts topic refuses for good (too large) goes to the dead-letter output
/// and counts as delivered; the other records of the batch are delivered. (Retried, it stalled
/// the stream and the revocations behind it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_record_too_large_for_the_topic_is_dead_lettered() {
    use tokenwatch::sinks::dead_letter::DeadLetters;
    let mock = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dead_path = dir.path().join("dead");
    let dead = DeadLetters::file(&dead_path).unwrap();
    assert_eq!(deliver_a_small_and_a_too_large_record(&mock, dead).await, 1);
    let dead = std::fs::read_to_string(&dead_path).unwrap();
    assert_eq!(dead.lines().count(), 1);
    assert!(
        dead.contains("\"output\":\"alerts_topic\"") && dead.contains("xxxx"),
        "{dead}"
    );
}

/// `[dead_letter] topic`: the record the alerts topic refused is produced to the dead-letter
/// topic, and acknowledged there before the batch counts as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_record_too_large_for_the_topic_is_dead_lettered_to_a_topic() {
    use tokenwatch::sinks::dead_letter::DeadLetters;
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("dead-letters", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let dead = DeadLetters::topic(
        rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers),
        "dead-letters",
    )
    .unwrap();
    assert_eq!(dead.name(), "kafka topic dead-letters");
    assert_eq!(deliver_a_small_and_a_too_large_record(&mock, dead).await, 1);
    let records = topic_records(&brokers, "dead-letters", 1);
    assert_eq!(records.len(), 1, "{records:?}");
    let r: serde_json::Value = serde_json::from_str(&records[0]).unwrap();
    assert_eq!(r["output"], "alerts_topic");
    assert_eq!(r["item"]["reason"].as_str().unwrap().len(), 5_000);
}

/// Writes a small and a too large decision to an alerts topic on `mock` that takes at most
/// 1000 bytes, with `dead` as the dead-letter output; checks the small one reached the topic
/// and returns how many went to `dead`.
async fn deliver_a_small_and_a_too_large_record(
    mock: &MockCluster<'static, DefaultProducerContext>,
    dead: tokenwatch::sinks::dead_letter::DeadLetters,
) -> u64 {
    use tokenwatch::sinks::alerts::{AlertSink, AlertTarget};
    mock.create_topic("alerts", 1, 1).unwrap();
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("message.max.bytes", "1000")
        .create()
        .unwrap();
    let mut sink = AlertSink::new(&AlertTarget::None, Some((producer, "alerts".into())))
        .unwrap()
        .with_dead_letters(Arc::new(std::sync::Mutex::new(dead)));
    let small = tokenwatch_core::decision::Decision {
        ts: 0,
        rule: "r".into(),
        severity: tokenwatch_core::rules::Severity::Low,
        action: tokenwatch_core::rules::Action::Alert,
        token_id: Some("t".into()),
        subject: None,
        revocation_key: None,
        iss: None,
        sub: None,
        client_ip: None,
        expires_at: None,
        not_before: None,
        shadow: false,
        reason: "small".into(),
        evidence: serde_json::Value::Null,
    };
    let big = tokenwatch_core::decision::Decision {
        reason: "x".repeat(5_000),
        ..small.clone()
    };
    tokio::time::timeout(Duration::from_secs(60), sink.write(&[small, big]))
        .await
        .expect("the batch is delivered, not retried forever")
        .unwrap();
    assert_eq!(alerts_topic(&mock.bootstrap_servers(), 1).len(), 1);
    sink.take_dead_lettered()
}

/// A rule past its revocation budget trips: `tokenwatch_rule_tripped{rule}` is 1 and its later
/// revocations are not written; `tokenwatch rearm RULE` (a request in Redis that every instance
/// reads) re-arms it, and the next revocation is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tripped_rule_is_shown_and_rearmed_through_redis() {
    let setup = Setup::new(1);
    let rules = oops_rules();
    let svc = setup.start_with_rules("g-trip", rules.path()).await;
    let m = svc.metrics.clone();
    let line = oops_line;
    trip_oops(&setup, &svc).await;
    assert_eq!(setup.stream().len(), 2, "only the budget's two revocations are written");

    let mut w = setup.revocation_writer().await;
    w.request_rearm("oops", tokenwatch::service::now_ms() / 1000 + 1)
        .await
        .unwrap();
    wait_until("the rule to be re-armed", 30, || {
        m.rule_tripped.with_label_values(&["oops"]).get() == 0
    })
    .await;
    common::produce(&setup.brokers, "logs", &[line(6)]);
    wait_until("the next revocation", 30, || setup.stream().len() == 3).await;
    stop_and_wait(svc).await.unwrap();
}

/// A rule directory with one runaway rule, `oops`: every authenticated request revokes its
/// token, within a budget of 2 per hour.
fn oops_rules() -> tempfile::TempDir {
    rules_dir(&[(
        "oops.yaml",
        "id: oops\nseverity: high\naction: revoke_token\nkind: match\nkey: token_id\nbudget: 2/1h\nwhere:\n  authenticated: true\n",
    )])
}

/// Sends `svc` (running [`oops_rules`]) five requests, the first five [`oops_line`]s, and waits
/// until it has read them and `oops` has tripped past its budget of two.
async fn trip_oops(setup: &Setup, svc: &Running) {
    common::produce(&setup.brokers, "logs", &(0..5).map(oops_line).collect::<Vec<_>>());
    let m = &svc.metrics;
    wait_until("five lines read", 60, || seen(m) == 5).await;
    wait_until("the rule to trip", 30, || {
        m.rule_tripped.with_label_values(&["oops"]).get() == 1
    })
    .await;
}

/// A rule directory holding the given rule files (name, YAML).
fn rules_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let rules = tempfile::tempdir().unwrap();
    for (name, yaml) in files {
        std::fs::write(rules.path().join(name), yaml).unwrap();
    }
    rules
}

/// Request `i` of a distinct authenticated token, at second `i` of event time.
fn oops_line(i: usize) -> String {
    attested_line(i, &format!("u{i}"), &format!("j{i}"), "/x")
}

/// Waits until the service has read `total` lines and its alerts file has stopped growing.
async fn wait_for_quiet(svc: &Running, total: u64, secs: u64) {
    let m = svc.metrics.clone();
    wait_until("every line to be read", secs, || seen(&m) >= total).await;
    let mut last = usize::MAX;
    loop {
        let n = alert_count(svc);
        if n == last {
            break;
        }
        last = n;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// A backlog of generated traffic over 6 partitions, keyed at random, read from the start:
/// `run` decides exactly what `replay` of the same lines decides, none of it late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_over_six_partitions_decides_what_replay_decides() {
    let setup = Setup::new(6);
    let lines = common::generated_attacks(10, 24_000);
    let want = common::replay_lines(&lines, 10);
    assert!(want.len() > 50, "the log has attacks: {}", want.len());
    common::produce_spread(&setup.brokers, "logs", 6, &lines, 7);

    let svc = setup.start("backlog6").await;
    wait_for_quiet(&svc, lines.len() as u64, 120).await;
    assert_eq!(svc.metrics.late_events.get(), 0, "no event is late");
    // The buffer's bound: about max_skew (60 s) of event time plus what a fetch brought.
    let peak = svc.metrics.held_lines_peak.get();
    eprintln!("event-time buffer peak: {peak} lines of {}", lines.len());
    assert!(peak > 0 && (peak as usize) < lines.len() / 2, "peak {peak}");
    let got = alerts_file(&svc);
    assert_eq!(got.len(), want.len(), "as many decisions as replay");
    assert!(got == want, "the same decisions, in the same order, as replay");
    common::assert_feed_is_replays(&setup.stream(), &want);
    stop_and_wait(svc).await.unwrap();
}

/// The same generated log on one partition read as a backlog, and on six partitions keyed at
/// random read live (a third as a backlog, the rest produced in chunks while `run` reads):
/// `run` decides what `replay` decides, none of it late (issue 10, with the six-partition
/// backlog above and tests/it/e2e_tansu.rs on a real broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_on_one_partition_decides_what_replay_decides() {
    // A shorter log: 12,000 lines on one partition of librdkafka's mock cluster stopped
    // reaching the consumer at ~4,600 read, nothing paused or held (not investigated further;
    // tansu's one partition delivers a whole log: tests/it/e2e_tansu.rs).
    backlog_then_live(1, 4_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_partitions_read_live_decide_what_replay_decides() {
    backlog_then_live(6, 12_000, true).await;
}

async fn backlog_then_live(partitions: i32, n: u64, live: bool) {
    let setup = Setup::new(partitions);
    let lines = common::generated_attacks(10, n);
    let want = common::replay_lines(&lines, 10);
    assert!(want.len() > 10, "the log has attacks: {}", want.len());
    let first = if live { lines.len() / 3 } else { lines.len() };
    common::produce_spread(&setup.brokers, "logs", partitions, &lines[..first], 7);
    let svc = setup.start(&format!("live{partitions}")).await;
    let producer = {
        let (brokers, rest) = (setup.brokers.clone(), lines[first..].to_vec());
        std::thread::spawn(move || {
            for (i, chunk) in rest.chunks(500).enumerate() {
                common::produce_spread(&brokers, "logs", partitions, chunk, 20 + i as u64);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    producer.join().unwrap();
    wait_for_quiet(&svc, lines.len() as u64, 120).await;
    assert_eq!(svc.metrics.late_events.get(), 0, "no event is late");
    assert_decides_as_replay(&svc, &setup, want);
    stop_and_wait(svc).await.unwrap();
}

/// The service decided `want` (replay's decisions), in any order (partitions interleave), and
/// the feed holds replay's revocations, once each.
fn assert_decides_as_replay(svc: &Running, setup: &Setup, mut want: Vec<String>) {
    let mut got = alerts_file(svc);
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len(), "as many decisions as replay");
    assert!(got == want, "the same decisions as replay");
    common::assert_feed_is_replays(&setup.stream(), &want);
}

/// The end (high watermark) of each of `partitions` partitions of `logs`.
fn end_offsets(brokers: &str, partitions: i32) -> Vec<Option<i64>> {
    topic_ends(brokers, "logs", partitions).into_iter().map(Some).collect()
}

/// The end (high watermark) of each of `partitions` partitions of `topic`.
fn topic_ends(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1)
        .collect()
}

/// A plain consumer joins `group` (committing nothing by itself) and polls until it and `svc`
/// share the `partitions` partitions of `logs`, both holding some; returns it and the
/// partitions it took.
fn take_some_partitions(
    brokers: &str,
    group: &str,
    svc: &Running,
    partitions: usize,
) -> (rdkafka::consumer::BaseConsumer, Vec<i32>) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let other: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    other.subscribe(&["logs"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let _ = other.poll(Duration::from_millis(100));
        let a = other.assignment().unwrap();
        let theirs = svc.metrics.assigned_partitions.get() as usize;
        if a.count() > 0 && theirs > 0 && theirs + a.count() == partitions {
            let taken = a
                .elements()
                .iter()
                .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
                .collect();
            return (other, taken);
        }
        assert!(Instant::now() < deadline, "the partitions were never shared");
    }
}

/// A rebalance away and back: while the service runs, a plain consumer joins its group, takes
/// some partitions, reads what arrives on them without committing, and leaves. The partitions
/// come back and the service reads those lines again from its own committed offsets: it ends
/// with exactly replay's decisions and revocations (a line applied twice would double-count
/// in a `count` window), none late, and its commits (librdkafka's offset store, cleared on
/// assignment) cover every line of every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_moved_away_and_back_are_read_again_and_decide_what_replay_decides() {
    use rdkafka::Message;
    let setup = Setup::new(4);
    let brokers = &setup.brokers;
    let lines = common::generated_attacks(10, 12_000);
    let want = common::replay_lines(&lines, 10);
    let (first, rest) = lines.split_at(4_000);
    let (second, third) = rest.split_at(4_000);
    common::produce_spread(brokers, "logs", 4, first, 3);
    let svc = setup.start("away-and-back").await;
    wait_for_quiet(&svc, first.len() as u64, 120).await;

    let (other, away) = take_some_partitions(brokers, "away-and-back", &svc, 4);
    // The second part goes only to the partitions away, each in event-time order: the
    // service's own partitions get nothing new meanwhile, so when the others come back their
    // lines are the newest, as in the file.
    for (i, p) in away.iter().enumerate() {
        let mine: Vec<&String> = second.iter().skip(i).step_by(away.len()).collect();
        common::produce_to(brokers, "logs", *p, &mine);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut read = 0;
    while read < second.len() {
        if let Some(m) = other.poll(Duration::from_millis(100)) {
            read += usize::from(m.unwrap().payload().is_some());
        }
        assert!(Instant::now() < deadline, "the other consumer read {read} lines");
    }
    drop(other); // leaves the group, committing nothing
    let m = svc.metrics.clone();
    wait_until("the partitions to come back", 60, || m.assigned_partitions.get() == 4).await;
    common::produce_spread(brokers, "logs", 4, third, 4);
    wait_for_quiet(&svc, lines.len() as u64, 120).await;

    assert_eq!(svc.metrics.late_events.get(), 0, "no event is late");
    assert_eq!(
        seen(&svc.metrics),
        lines.len() as u64,
        "each line read once by the service"
    );
    let got = alerts_file(&svc);
    assert_eq!(got.len(), want.len(), "as many decisions as replay");
    assert!(got == want, "the same decisions, in the same order, as replay");
    common::assert_feed_is_replays(&setup.stream(), &want);
    stop_and_wait(svc).await.unwrap();
    let ends = end_offsets(brokers, 4);
    assert_eq!(
        common::committed_all(brokers, "away-and-back", "logs", 4),
        ends,
        "every line committed"
    );
}

/// Two instances of one group with `--role local` against one Redis: the group's checkpoint
/// (one engine per instance, all its partitions) is written by one of them only (split by
/// key, each internal partition has its own). The first keeps writing it; the second finds it
/// written by another live instance, leaves it alone and counts a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_a_group_do_not_overwrite_each_others_checkpoint() {
    let setup = Setup::new(2);
    let lines = common::generated_attacks(5, 2_000);
    let (first, rest) = lines.split_at(1_000);
    common::produce_spread(&setup.brokers, "logs", 2, first, 1);
    // Fenced while the head is younger than 3 intervals: 3 s.
    let every = |c: &mut ServiceConfig| c.checkpoint_interval = Some(Duration::from_secs(1));
    let a = setup.start_with("fenced", None, every).await;
    let ma = a.metrics.clone();
    wait_until("the first instance to read", 60, || seen(&ma) >= first.len() as u64).await;
    let head = || -> Option<String> {
        redis::cmd("GET")
            .arg(format!("{PREFIX}checkpoint:fenced"))
            .query(&mut setup.redis.conn())
            .unwrap()
    };
    wait_until("a checkpoint", 30, || head().is_some()).await;
    let writer = |h: Option<String>| h.unwrap().split(' ').nth(3).unwrap().to_string();
    let first_writer = writer(head());

    // Traffic on both partitions all along, so that both instances finish batches and
    // checkpoint (an instance with nothing to do writes no checkpoint, and after 3 intervals
    // its head is taken over).
    let traffic = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let producer = {
        let (brokers, rest, on) = (setup.brokers.clone(), rest.to_vec(), traffic.clone());
        std::thread::spawn(move || {
            for (i, chunk) in rest.chunks(100).cycle().enumerate() {
                if !on.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                common::produce_spread(&brokers, "logs", 2, chunk, 10 + i as u64);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let b = setup.start_with("fenced", None, every).await;
    let mb = b.metrics.clone();
    wait_until("the partitions to be shared", 60, || {
        ma.assigned_partitions.get() == 1 && mb.assigned_partitions.get() == 1
    })
    .await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(writer(head()), first_writer, "the head keeps its writer");
    }
    wait_until("the second instance to meet the first's checkpoint", 30, || {
        mb.checkpoint_conflicts.get() > 0
    })
    .await;
    assert_eq!(ma.checkpoint_conflicts.get(), 0, "the writer is never fenced");
    assert_eq!(mb.checkpoint_errors.with_label_values(&["save"]).get(), 0);
    stop_and_wait(b).await.unwrap();
    assert_eq!(
        writer(head()),
        first_writer,
        "nor by the other's checkpoint at shutdown"
    );
    traffic.store(false, std::sync::atomic::Ordering::Relaxed);
    producer.join().unwrap();
    stop_and_wait(a).await.unwrap();
}

/// Commits after a revocation: the service's offsets go through librdkafka's offset store,
/// which refuses partitions no longer assigned and clears a partition's stored offset when it
/// is assigned elsewhere. So once a partition has moved to another member that committed its
/// own progress there, nothing the service commits afterwards (per batch, or the final
/// synchronous commit) moves that partition's committed offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partition_is_never_committed_by_its_former_owner() {
    use rdkafka::consumer::{CommitMode, Consumer};
    let setup = Setup::new(2);
    let brokers = &setup.brokers;
    let lines = common::generated_attacks(5, 1_500);
    let (first, rest) = lines.split_at(1_000);
    common::produce_spread(brokers, "logs", 2, first, 1);
    let svc = setup.start("former-owner").await;
    wait_for_quiet(&svc, first.len() as u64, 120).await;

    let (other, taken) = take_some_partitions(brokers, "former-owner", &svc, 2);
    let taken = taken[0];
    // The new owner commits its own position (an offset the service never had), then more
    // traffic goes to the service's partition so it keeps committing.
    let mut mine = rdkafka::TopicPartitionList::new();
    mine.add_partition_offset("logs", taken, rdkafka::Offset::Offset(1))
        .unwrap();
    other.commit(&mine, CommitMode::Sync).unwrap();
    common::produce_to(brokers, "logs", 1 - taken, rest);
    wait_for_quiet(&svc, lines.len() as u64, 120).await;
    stop_and_wait(svc).await.unwrap();
    let committed = common::committed_all(brokers, "former-owner", "logs", 2);
    assert_eq!(committed[taken as usize], Some(1), "the new owner's commit stands");
    assert_eq!(
        committed[1 - taken as usize],
        end_offsets(brokers, 2)[1 - taken as usize],
        "the service committed its own partition"
    );
}

/// A rule tripped to shadow before a restart is still tripped after it: its revocation budget
/// is in the checkpoint, so a restart does not re-arm a runaway rule (only an operator or a
/// reload does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tripped_rule_stays_tripped_across_a_restart() {
    let setup = Setup::new(1);
    let rules = oops_rules();
    let line = oops_line;
    let start = || setup.start_with_rules("g-trip-restart", rules.path());
    let svc = start().await;
    trip_oops(&setup, &svc).await;
    stop_and_wait(svc).await.unwrap();

    let svc = start().await;
    let m = svc.metrics.clone();
    common::produce(&setup.brokers, "logs", &[line(6), line(7)]);
    wait_until("the new lines read", 60, || seen(&m) == 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(m.rule_tripped.with_label_values(&["oops"]).get(), 1, "still tripped");
    assert_eq!(
        setup.stream().len(),
        2,
        "no revocation past the budget after the restart"
    );
    stop_and_wait(svc).await.unwrap();
}

/// `tokenwatch unrevoke` tells the feed; a running instance follows it and forgets the
/// revocation, so a later use of the token is no longer "a revoked token used" (before the
/// feed follower, the engine kept alerting until the revocation's TTL ran out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrevoke_in_the_feed_makes_a_running_instance_forget_the_revocation() {
    use tokenwatch::sinks::unrevoke::{unrevoke, Target};
    let setup = Setup::new(1);
    let rules = rules_dir(&[
        (
            "revoke.yaml",
            "id: revoke-here\nseverity: high\naction: revoke_token\nkind: match\nkey: token_id\nwhere:\n  authenticated: true\n  path: /revoke\n",
        ),
        (
            "reused.yaml",
            "id: reused\nseverity: critical\naction: alert\nkind: revoked_use\nkey: token_id\ncooldown: 1s\n",
        ),
    ]);
    let svc = setup.start_with_rules("g-feed", rules.path()).await;
    let line = |s: usize, jti: &str, path: &str| attested_line(s, "u1", jti, path);
    let reused = |svc: &Running| {
        alerts_file(svc)
            .iter()
            .filter(|l| l.contains(r#""rule":"reused""#))
            .count()
    };

    // revoked, then used again: the control (one "reused" decision)
    common::produce(
        &setup.brokers,
        "logs",
        &[line(0, "j1", "/revoke"), line(10, "j1", "/x")],
    );
    wait_until("the reuse to be decided", 60, || reused(&svc) == 1).await;
    let entries = setup.stream();
    assert_eq!(entries.len(), 1, "{entries:?}");

    // undone, as the CLI does it
    let mut w = setup.revocation_writer().await;
    let gone = unrevoke(
        &mut w,
        &Target::Token(entries[0].1.clone()),
        tokenwatch::service::now_ms() / 1000,
    )
    .await
    .unwrap();
    assert_eq!(gone.len(), 1);
    let m = svc.metrics.clone();
    wait_until("the feed's unrevoke entry to be applied", 30, || {
        m.feed_unrevokes.get() == 1
    })
    .await;

    // used again, then another token revoked: once that revocation is in the feed, the use
    // before it (event time) has been decided
    common::produce(
        &setup.brokers,
        "logs",
        &[line(20, "j1", "/x"), line(30, "j2", "/revoke")],
    );
    wait_until("the second revocation", 60, || setup.stream().len() == 3).await;
    assert_eq!(
        reused(&svc),
        1,
        "the undone revocation is forgotten: {:?}",
        alerts_file(&svc)
    );
    stop_and_wait(svc).await.unwrap();
}

/// A canonical line at second `s` of 2026-11-29T00:00, authenticated by the gateway, carrying
/// an (unsigned) RS256 token of (`sub`, `jti`).
fn attested_line(s: usize, sub: &str, jti: &str, path: &str) -> String {
    let t = tokenwatch_core::token::encode_unsigned_parts(
        &serde_json::json!({"alg": "RS256"}),
        &serde_json::json!({"iss": "https://idp", "sub": sub, "jti": jti}),
        b"sig",
    );
    format!(
        r#"{{"ts":"2026-11-29T00:00:{s:02}.000Z","client_ip":"198.51.100.7","method":"GET","path":"{path}","status":200,"authenticated":true,"authorization":"Bearer {t}"}}"#
    )
}

/// Split by key (issue 12): a backlog over 6 gateway partitions, keyed at random, ingested
/// into an internal topic of 4 partitions by subject and one of 3 partitions by key (the
/// default rules and the rules of tests/fixtures/rules-by-key, keyed by `kid`, `iss`,
/// `client_ip` and `network`), and detected by an engine per partition, decides what `replay`
/// decides (in another order: partitions interleave), and the feed holds exactly replay's
/// revocations, once each. Aggregation per network is off on both sides: it spans subjects
/// (tests/it/shuffle.rs). With one decoding thread and with two (the records of lines decoded
/// on several threads go out in the order the lines were read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_split_by_key_decides_what_replay_decides() {
    backlog_split_by_key(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_split_by_key_and_decoded_on_two_threads_decides_what_replay_decides() {
    backlog_split_by_key(2).await;
}

async fn backlog_split_by_key(decode_threads: usize) {
    let setup = Setup::new(6);
    // The mock cluster has no CreateTopics: the internal topics are made here.
    setup.mock.create_topic("split.events", 4, 1).unwrap();
    setup.mock.create_topic("split.events-by-key", 3, 1).unwrap();
    let rules = common::rules_with_by_key();
    let lines = common::generated_attacks(10, 12_000);
    let mut cfg = common::gen_pipeline_config(10);
    cfg.engine.aggregate_window_ms = 0;
    let want = common::replay_lines_through(&lines, common::pipeline_with_rules(rules.path(), cfg));
    assert!(want.len() > 20, "the log has attacks: {}", want.len());
    assert!(want.iter().any(|d| d.contains("\"rule\":\"kid-volume\"")));
    common::produce_spread(&setup.brokers, "logs", 6, &lines, 7);

    let dir = rules.path().to_path_buf();
    let svc = setup
        .start_with("split", None, |c| {
            c.rules_dir = dir;
            c.shuffle.role = tokenwatch::config::Role::Both;
            c.shuffle.partitions = 4;
            c.shuffle.events_topic = "split.events".into();
            c.shuffle.decode_threads = decode_threads;
            c.shuffle.by_key_topic = "split.events-by-key".into();
            c.pipeline.engine.aggregate_window_ms = 0;
        })
        .await;
    wait_for_quiet(&svc, lines.len() as u64, 120).await;
    let m = &svc.metrics;
    assert_eq!(m.late_events.get(), 0, "no event is late");
    assert_eq!(m.shuffle_consumed.with_label_values(&["refused"]).get(), 0);
    assert!(m.shuffle_produced.with_label_values(&["event_by_key"]).get() > 0);
    // A decoded batch's records for one partition go out as one message (`record::Frame`).
    let records = m.shuffle_produced.with_label_values(&["event"]).get();
    let messages: i64 = topic_ends(&setup.brokers, "split.events", 4).iter().sum();
    assert!(
        (messages as u64) * 2 < records,
        "{records} records in {messages} messages: not framed"
    );
    assert_decides_as_replay(&svc, &setup, want);
    stop_and_wait(svc).await.unwrap();
}
