//! The revocation writer against real redis-server processes: idempotence, subject
//! supersession, TTLs, AUTH and Redis Cluster.

use crate::common;

use std::time::Duration;

use tokenwatch::sinks::redis::{Kind, RedisConfig, Revocation, RevocationWriter};
use tokenwatch_core::decision::RevocationPolicy;

fn cfg(urls: Vec<String>, cluster: bool, prefix: &str) -> RedisConfig {
    RedisConfig {
        urls,
        cluster,
        key_prefix: prefix.into(),
        policy: RevocationPolicy::default(),
        stream_maxlen: 1000,
        response_timeout: Duration::from_secs(2),
        ca_file: None,
    }
}

fn token(id: &str, exp: Option<i64>) -> Revocation {
    Revocation {
        kind: Kind::Token,
        id: id.into(),
        rule: "token-replay".into(),
        reason: "replayed".into(),
        iss: None,
        sub: None,
        jti: None,
        revoked_at: 1_000,
        expires_at: exp,
        not_before: None,
    }
}

fn subject(id: &str, not_before: i64) -> Revocation {
    Revocation {
        kind: Kind::Subject,
        id: id.into(),
        rule: "impossible-travel".into(),
        reason: "travel".into(),
        iss: None,
        sub: None,
        jti: None,
        revoked_at: not_before,
        expires_at: None,
        not_before: Some(not_before),
    }
}

fn ttl(c: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query(c).unwrap()
}

#[tokio::test]
async fn writes_are_idempotent_and_ttls_follow_expiry() {
    let r = common::RedisServer::start();
    let mut w = RevocationWriter::connect(cfg(vec![r.url()], false, "tw:"))
        .await
        .unwrap();
    let now = 1_000_000;
    assert!(w.write(&token("a", Some(now + 7_200)), now).await.unwrap());
    assert!(
        !w.write(&token("a", Some(now + 7_200)), now).await.unwrap(),
        "second write is not new"
    );
    assert!(w.write(&token("b", None), now).await.unwrap());
    assert!(w.write(&token("c", Some(now - 10)), now).await.unwrap());
    let mut c = r.conn();
    assert_eq!(ttl(&mut c, "tw:revoked:tok:a"), 7_260, "exp + 60 s");
    assert_eq!(ttl(&mut c, "tw:revoked:tok:b"), 86_400, "no exp: 24 h");
    assert_eq!(ttl(&mut c, "tw:revoked:tok:c"), 3_600, "expired: the 1 h floor");
    let entries = common::stream_entries(&mut c, "tw:revocations");
    assert_eq!(entries.len(), 3);
    let v: redis::Value = redis::cmd("XRANGE")
        .arg("tw:revocations")
        .arg("-")
        .arg("+")
        .query(&mut c)
        .unwrap();
    let text = format!("{v:?}");
    assert!(
        text.contains("expires_at") && text.contains("revoked_at") && text.contains("token-replay"),
        "{text}"
    );
}

#[tokio::test]
async fn a_later_subject_revocation_supersedes_an_earlier_one() {
    let r = common::RedisServer::start();
    let mut w = RevocationWriter::connect(cfg(vec![r.url()], false, "tw:"))
        .await
        .unwrap();
    assert!(w.write(&subject("iss|u", 2_000), 2_000).await.unwrap());
    assert!(
        !w.write(&subject("iss|u", 2_000), 2_000).await.unwrap(),
        "same not_before: nothing new"
    );
    assert!(
        !w.write(&subject("iss|u", 1_500), 2_000).await.unwrap(),
        "earlier not_before: nothing new"
    );
    assert!(
        w.write(&subject("iss|u", 3_000), 3_000).await.unwrap(),
        "later not_before: new"
    );
    let mut c = r.conn();
    let v: String = redis::cmd("GET").arg("tw:revoked:sub:iss|u").query(&mut c).unwrap();
    let j: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(j["not_before"], 3_000);
    assert_eq!(ttl(&mut c, "tw:revoked:sub:iss|u"), 86_400);
    assert_eq!(common::stream_entries(&mut c, "tw:revocations").len(), 2);
}

#[tokio::test]
async fn auth_with_a_password_in_the_url() {
    let r = common::RedisServer::start_args(false, &["--requirepass", "s3cret"]);
    let port = r.port;
    let bad = RevocationWriter::connect(cfg(vec![format!("redis://:wrong@127.0.0.1:{port}/")], false, "tw:")).await;
    let ok = RevocationWriter::connect(cfg(vec![format!("redis://:s3cret@127.0.0.1:{port}/")], false, "tw:")).await;
    drop(r);
    match bad {
        Err(e) => assert!(!e.to_string().contains("wrong"), "the password leaked into: {e}"),
        Ok(_) => panic!("a wrong password must not connect"),
    }
    assert!(ok.is_ok());
}

#[tokio::test]
async fn redis_cluster_with_a_hash_tagged_prefix() {
    // A real one-node cluster: cluster mode on, all 16384 slots assigned to it.
    let r = common::RedisServer::start_args(
        false,
        &["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
    );
    let port = r.port;
    let url = format!("redis://127.0.0.1:{port}/");
    let mut c = loop {
        if let Ok(c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query(&mut c)
        .unwrap();
    for _ in 0..100 {
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap();
        if info.contains("cluster_state:ok") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = RevocationWriter::connect(cfg(vec![url.clone()], true, "tokenwatch:")).await;
    assert!(refused.err().unwrap().to_string().contains("hash tag"));
    let mut w = RevocationWriter::connect(cfg(vec![url.clone()], true, "{tokenwatch}:"))
        .await
        .unwrap();
    assert!(w.write(&token("x", None), 1_000).await.unwrap());
    assert!(!w.write(&token("x", None), 1_000).await.unwrap());
    assert!(w.write(&subject("iss|u", 5), 1_000).await.unwrap());
    let entries = common::stream_entries(&mut c, "{tokenwatch}:revocations");
    drop(r);
    assert_eq!(
        entries,
        vec![("token".into(), "x".into()), ("subject".into(), "iss|u".into())]
    );
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (key, cert, ca) = common::private_ca(dir.path());
    let tls_port = common::free_port().to_string();
    let (k, c, a) = (key.to_str().unwrap(), cert.to_str().unwrap(), ca.to_str().unwrap());
    let r = common::RedisServer::start_args(
        false,
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            c,
            "--tls-key-file",
            k,
            "--tls-ca-cert-file",
            a,
            "--tls-auth-clients",
            "no",
        ],
    );
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    while std::net::TcpStream::connect(("127.0.0.1", tls_port.parse::<u16>().unwrap())).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Without the CA, the self-signed server is refused.
    assert!(RevocationWriter::connect(cfg(vec![url.clone()], false, "tw:"))
        .await
        .is_err());
    let mut with_ca = cfg(vec![url], false, "tw:");
    with_ca.ca_file = Some(ca.clone());
    let mut w = RevocationWriter::connect(with_ca).await.unwrap();
    assert!(w.write(&token("tls", None), 1_000).await.unwrap());
    assert_eq!(common::stream_entries(&mut r.conn(), "tw:revocations").len(), 1);
}

fn by_rule(rule: &str, id: &str, at: i64) -> Revocation {
    Revocation {
        rule: rule.into(),
        revoked_at: at,
        ..token(id, None)
    }
}

/// `unrevoke` deletes the keys it names, appends one `unrevoke` feed entry per key it removed,
/// removes nothing twice, and by rule takes only that rule's revocations (since a time).
#[tokio::test]
async fn unrevoke_removes_keys_once_and_tells_the_feed() {
    use tokenwatch::sinks::unrevoke::{unrevoke, Target};
    let r = common::RedisServer::start();
    let mut w = RevocationWriter::connect(cfg(vec![r.url()], false, "tw:"))
        .await
        .unwrap();
    let now = 1_000_000;
    for rev in [
        by_rule("bad-rule", "a", 100),
        by_rule("bad-rule", "b", 200),
        by_rule("bad-rule", "c", 300),
        by_rule("good-rule", "d", 300),
        subject("s1", 250),
    ] {
        assert!(w.write(&rev, now).await.unwrap());
    }
    let mut c = r.conn();
    let exists =
        |c: &mut redis::Connection, k: &str| -> bool { redis::cmd("EXISTS").arg(k).query::<i64>(c).unwrap() == 1 };

    // by rule, since 200: b and c, not a (older), not d (another rule)
    let gone = unrevoke(
        &mut w,
        &Target::Rule {
            rule: "bad-rule".into(),
            since_s: Some(200),
        },
        now,
    )
    .await
    .unwrap();
    let mut ids: Vec<&str> = gone.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["b", "c"]);
    assert!(gone[0].value.contains("bad-rule"), "{}", gone[0].value);
    assert!(exists(&mut c, "tw:revoked:tok:a") && exists(&mut c, "tw:revoked:tok:d"));
    assert!(!exists(&mut c, "tw:revoked:tok:b") && !exists(&mut c, "tw:revoked:tok:c"));
    // idempotent: nothing left to remove, nothing appended
    let len = |c: &mut redis::Connection| -> i64 { redis::cmd("XLEN").arg("tw:revocations").query(c).unwrap() };
    assert_eq!(len(&mut c), 7, "5 revocations + 2 unrevokes");
    let again = unrevoke(
        &mut w,
        &Target::Rule {
            rule: "bad-rule".into(),
            since_s: Some(200),
        },
        now,
    )
    .await
    .unwrap();
    assert!(again.is_empty());
    assert_eq!(len(&mut c), 7);

    // by id, token and subject
    assert_eq!(
        unrevoke(&mut w, &Target::Token("d".into()), now).await.unwrap().len(),
        1
    );
    assert_eq!(
        unrevoke(&mut w, &Target::Subject("s1".into()), now)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(unrevoke(&mut w, &Target::Token("d".into()), now)
        .await
        .unwrap()
        .is_empty());
    assert!(!exists(&mut c, "tw:revoked:tok:d") && !exists(&mut c, "tw:revoked:sub:s1"));

    // the feed says what a follower must drop: action=unrevoke with kind and id
    let v: redis::Value = redis::cmd("XRANGE")
        .arg("tw:revocations")
        .arg("-")
        .arg("+")
        .query(&mut c)
        .unwrap();
    let text = format!("{v:?}");
    assert_eq!(text.matches("\"unrevoke\"").count(), 4, "{text}");
    assert_eq!(common::stream_entries(&mut c, "tw:revocations").len(), 9);

    // a token revoked again after its undo is a new revocation, with a new feed entry
    assert!(w.write(&by_rule("bad-rule", "b", 400), now).await.unwrap());
}

/// Checkpoints are written beside the consume loop: with Redis holding every write back
/// (`CLIENT PAUSE … WRITE`), a periodic save still returns at once and the head is switched
/// later, when Redis takes the write; but the first checkpoint to cover a partition is waited
/// for, since the partition's offsets are committed right after it, and a restart would
/// otherwise find them committed with no state for the lines before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_written_beside_the_loop_but_a_new_partition_waits_for_it() {
    use std::time::Instant;
    use tokenwatch::checkpoint::{Checkpoint, CheckpointStore, Checkpointing};
    use tokenwatch::metrics::Metrics;
    use tokenwatch_core::eventtime::{EventTimeConfig, Sequencer};

    let r = common::RedisServer::start();
    let patient = RedisConfig {
        response_timeout: Duration::from_secs(120),
        ..cfg(vec![r.url()], false, "tw:")
    };
    let w = RevocationWriter::connect(patient).await.unwrap();
    let metrics = Metrics::new();
    let mut pipeline = common::pipeline(tokenwatch_core::input::Format::Canonical);
    let mut out = Vec::new();
    for l in common::generated_attacks(5, 500) {
        pipeline.process_line(l.as_bytes(), &mut out);
    }
    let keys = pipeline.engine().tracked_keys();
    assert!(keys > 0);
    let store = CheckpointStore::new("tw:", "g");
    let every = Duration::from_secs(10);
    let mut c = Checkpointing::restore(store, every, w.handle(), pipeline.engine_mut(), metrics.clone())
        .await
        .unwrap();
    let mut order: Sequencer<()> = Sequencer::new(EventTimeConfig::default());
    let now = Instant::now();
    let p0 = order.assign("logs", 0, now);
    order.read(p0, 41, now);
    let mut admin = r.conn();
    let head = |admin: &mut redis::Connection| -> Option<String> {
        redis::cmd("GET").arg("tw:checkpoint:g").query(admin).unwrap()
    };
    let pause = |admin: &mut redis::Connection| {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(600_000)
            .arg("WRITE")
            .query(admin)
            .unwrap();
    };
    let unpause = |admin: &mut redis::Connection| {
        let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query(admin).unwrap();
    };

    // The first checkpoint covers partition 0 for the first time: waited for.
    pause(&mut admin);
    let first = tokio::spawn(async move {
        c.save(&mut order, pipeline.engine()).await;
        (c, order, pipeline)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !first.is_finished(),
        "a checkpoint covering a new partition returned before Redis took it"
    );
    assert_eq!(head(&mut admin), None);
    unpause(&mut admin);
    let (mut c, mut order, pipeline) = first.await.unwrap();
    let written = head(&mut admin).expect("the first checkpoint is in Redis once save returns");

    // A periodic one (no new partition) returns while Redis still holds its write back.
    order.read(p0, 99, now);
    pause(&mut admin);
    tokio::time::timeout(Duration::from_secs(60), c.save(&mut order, pipeline.engine()))
        .await
        .expect("a periodic checkpoint does not wait for Redis");
    assert_eq!(
        head(&mut admin).as_ref(),
        Some(&written),
        "not switched while Redis holds writes"
    );
    unpause(&mut admin);
    // The next save (the last, here) waits for the one before: generations land in order.
    c.stopping();
    c.save(&mut order, pipeline.engine()).await;
    let mut redis = w.handle();
    let bytes = CheckpointStore::new("tw:", "g")
        .load(&mut redis)
        .await
        .unwrap()
        .unwrap();
    let back = Checkpoint::decode(&bytes).unwrap();
    assert_eq!(back.partitions[0].next, 100, "the last checkpoint is the one read back");
    // Written into the buffer of the one before: the state reads back whole.
    let mut fresh = common::pipeline(tokenwatch_core::input::Format::Canonical);
    fresh.engine_mut().restore(&back.engine).unwrap();
    assert_eq!(fresh.engine().tracked_keys(), keys);
    assert_eq!(metrics.checkpoint_write.get_sample_count(), 3);
    assert_eq!(metrics.checkpoint_pause.get_sample_count(), 3);
    assert_eq!(metrics.checkpoint_errors.with_label_values(&["save"]).get(), 0);
}
