//! State survives restarts: `tokenwatch run` SIGKILLed mid-stream and started again, twice,
//! decides what `replay` of the same lines decides (windows, cooldowns and revoked-token
//! memory come back from the checkpoint in Redis), and writes no revocation twice. Decisions
//! of lines whose offsets were not committed before a kill may be delivered again
//! (at-least-once), so the alert lines are compared as a set.

use crate::common;
use crate::run_bin;

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;

use common::metric;
use run_bin::{seen, Tokenwatch};

/// Waits until nothing is held for event time and nothing new has been read for 3 s.
fn settle(tw: &mut Tokenwatch) {
    // A new member of the group gets partitions only once the killed one's session expires.
    tw.wait_metrics("partitions and lines", 60, |b| {
        metric(b, "tokenwatch_kafka_assigned_partitions").unwrap_or(0.0) > 0.0 && seen(b) > 0
    });
    let mut last = (u64::MAX, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body = tw.wait_metrics("metrics", 30, |_| true);
        let n = seen(&body);
        let held = metric(&body, "tokenwatch_event_time_held_lines").unwrap_or(0.0);
        if n != last.0 || held > 0.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            return;
        }
        assert!(Instant::now() < deadline, "never settled; stderr:\n{}", tw.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Three runs over a log produced in three parts: the first two are SIGKILLed halfway through
/// their part, the last stops on SIGTERM once everything is read.
fn three_runs_with_two_kills(checkpoint_interval: &str) -> (Vec<String>, Vec<String>, Vec<(String, String)>) {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("logs", 6, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let redis = common::RedisServer::start();
    let lines = common::generated_attacks(11, 21_000);
    let want = common::replay_lines(&lines, 11);
    // replay verifies with the generator's keys: so does run
    let keys = common::gen_jwks_file(11);
    let jwks = ["--jwks", keys.to_str().unwrap()];
    let env = [
        ("TOKENWATCH_ENGINE__CHECKPOINT_INTERVAL", checkpoint_interval),
        ("TOKENWATCH_ENGINE__IDLE_TIMEOUT", "1s"),
    ];
    let mut got = Vec::new();
    for (i, part) in lines.chunks(7_000).enumerate() {
        common::produce_spread(&brokers, "logs", 6, part, 3 + i as u64);
        let mut tw = run_bin::start(&brokers, &redis.url(), "restarts", &jwks, &env);
        if i < 2 {
            let half = part.len() as u64 / 2;
            tw.wait_metrics("half the part to be read", 60, |b| seen(b) >= half);
            tw.signal("KILL");
            tw.wait_exit(10);
        } else {
            settle(&mut tw);
            tw.signal("TERM");
            assert_eq!(tw.wait_exit(30).code(), Some(0), "{}", tw.stderr());
        }
        got.extend(tw.alert_lines());
    }
    let stream = common::stream_entries(&mut redis.conn(), "tokenwatch:revocations");
    (want, got, stream)
}

#[test]
fn sigkilled_twice_mid_stream_decides_what_replay_decides() {
    let (want, got, stream) = three_runs_with_two_kills("1s");
    // (49 decisions since unauthenticated critical ones are aggregated per network)
    assert!(want.len() > 40, "the log has attacks: {}", want.len());
    let mut distinct = got.clone();
    distinct.sort();
    distinct.dedup();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    let missing: Vec<_> = want_sorted
        .iter()
        .filter(|l| distinct.binary_search(l).is_err())
        .collect();
    let extra: Vec<_> = distinct
        .iter()
        .filter(|l| want_sorted.binary_search(l).is_err())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} decisions missing, {} not replay's; first missing: {:?}; first extra: {:?}",
        missing.len(),
        extra.len(),
        missing.first(),
        extra.first()
    );
    common::assert_feed_is_replays(&stream, &want);
}

/// Redis stalled (SIGSTOP) for longer than a batch wait and a response timeout, then killed
/// and restarted (AOF on), under live traffic: the same decisions as replay, each delivered
/// once, and no stream entry twice.
#[test]
fn redis_stalled_then_restarted_decides_what_replay_decides() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("logs", 6, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let mut redis = common::RedisServer::start_with(true);
    let lines = common::generated_attacks(13, 14_000);
    let want = common::replay_lines(&lines, 13);
    let keys = common::gen_jwks_file(13);
    let jwks = ["--jwks", keys.to_str().unwrap()];
    let (first, second) = lines.split_at(lines.len() / 2);
    common::produce_spread(&brokers, "logs", 6, first, 1);
    let env = [
        ("TOKENWATCH_ENGINE__CHECKPOINT_INTERVAL", "1s"),
        ("TOKENWATCH_ENGINE__IDLE_TIMEOUT", "1s"),
    ];
    let mut tw = run_bin::start(&brokers, &redis.url(), "redis-faults", &jwks, &env);
    tw.wait_metrics("a third of the first half", 60, |b| seen(b) >= first.len() as u64 / 3);
    redis.signal("STOP");
    std::thread::sleep(Duration::from_secs(4));
    redis.signal("CONT");
    tw.wait_metrics("the first half", 60, |b| seen(b) >= first.len() as u64);
    redis.restart();
    common::produce_spread(&brokers, "logs", 6, second, 2);
    settle(&mut tw);
    tw.signal("TERM");
    assert_eq!(tw.wait_exit(30).code(), Some(0), "{}", tw.stderr());
    let got = tw.alert_lines();
    assert_eq!(got.len(), want.len(), "as many decisions as replay");
    assert!(got == want, "the same decisions as replay, in the same order");
    let stream = common::stream_entries(&mut redis.conn(), "tokenwatch:revocations");
    common::assert_feed_is_replays(&stream, &want);
}
