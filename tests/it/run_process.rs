//! `tokenwatch run` as a process: SIGHUP reloads the rules, SIGINT stops it cleanly, and
//! SIGTERM with Redis down gives up within the shutdown timeout without committing the batch
//! whose revocation was not written. Config mistakes fail at start naming file, line and key.

use crate::common;
use crate::run_bin;

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;

use common::metric;
use run_bin::seen;

#[test]
fn sighup_reloads_the_rules_and_sigint_exits_0() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("logs", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let redis = common::RedisServer::start();
    let mut tw = run_bin::start(&brokers, &redis.url(), "hup", &[], &[]);
    tw.wait_ready(30);
    let ok = "tokenwatch_rule_reloads_total{result=\"ok\"}";
    let body = tw.wait_metrics("metrics", 10, |_| true);
    assert_eq!(metric(&body, ok), Some(0.0));

    tw.signal("HUP");
    tw.wait_metrics("a reload on SIGHUP", 20, |b| metric(b, ok) == Some(1.0));
    tw.signal("HUP");
    let body = tw.wait_metrics("a second reload", 20, |b| metric(b, ok) == Some(2.0));
    assert_eq!(metric(&body, "tokenwatch_rules_loaded"), Some(15.0));

    tw.signal("INT");
    let status = tw.wait_exit(30);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", tw.stderr());
    assert!(tw.stderr().contains("SIGINT"), "{}", tw.stderr());
}

#[test]
fn sigterm_with_redis_down_gives_up_within_the_shutdown_timeout_and_commits_nothing_unwritten() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("logs", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let mut redis = common::RedisServer::start_with(true);
    let lines = common::fixture_lines("canonical.log");
    // up to bob's replay: three revocations; the rest holds a fourth (carol's subject)
    let split = lines.iter().position(|l| l.contains("00:05:20")).unwrap();
    common::produce(&brokers, "logs", &lines[..split]);
    // the fixtures' tokens are signed with the test key of this JWKS
    let jwks = common::root().join("tests/fixtures/keys/jwks.json");
    let jwks_env = ("TOKENWATCH_VERIFY__JWKS", jwks.to_str().unwrap());
    let mut tw = run_bin::start(
        &brokers,
        &redis.url(),
        "term",
        &[],
        &[("TOKENWATCH_SHUTDOWN_TIMEOUT", "2s"), jwks_env],
    );
    tw.wait_metrics("the first part's revocations", 60, |b| {
        seen(b) == split as u64 && metric(b, "tokenwatch_revocations_total{kind=\"token\"}") == Some(3.0)
    });
    let stream = "tokenwatch:revocations";
    assert_eq!(common::stream_entries(&mut redis.conn(), stream).len(), 3);

    redis.kill();
    // the rest as one message: the batch that waits for Redis is exactly that message
    common::produce(&brokers, "logs", &[lines[split..].join("\n")]);
    tw.wait_metrics("a revocation waiting for Redis", 60, |b| {
        metric(b, "tokenwatch_redis_errors_total").unwrap_or(0.0) > 0.0
    });
    let asked = Instant::now();
    tw.signal("TERM");
    let status = tw.wait_exit(20);
    let took = asked.elapsed();
    let stderr = tw.stderr();
    // Documented: in-flight work that cannot finish in time is a failure at run time, exit
    // status 1 (2 is for what must be fixed before starting: usage and configuration).
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} with a 2 s shutdown timeout"
    );
    assert!(stderr.contains("shutdown timeout passed"), "{stderr}");
    // The unwritten revocation's batch is not committed: the next run reads it again.
    assert_eq!(common::committed(&brokers, "term", "logs"), Some(split as i64));

    // ...and does: with Redis back, a new run writes the fourth revocation.
    redis.restart();
    let mut again = run_bin::start(&brokers, &redis.url(), "term", &[], &[jwks_env]);
    // (It reads from its last checkpoint: the first part again, quietly, then the rest.)
    again.wait_metrics("the rest of the log", 60, |b| {
        metric(b, "tokenwatch_revocations_total{kind=\"subject\"}") == Some(1.0)
    });
    // The message's last lines wait for event time until the partition idles (5 s).
    again.wait_metrics("no line held", 30, |b| {
        metric(b, "tokenwatch_event_time_held_lines") == Some(0.0)
    });
    again.signal("TERM");
    assert_eq!(again.wait_exit(30).code(), Some(0), "{}", again.stderr());
    assert_eq!(common::committed(&brokers, "term", "logs"), Some(split as i64 + 1));
    assert_eq!(common::stream_entries(&mut redis.conn(), stream).len(), 4);
}

#[test]
fn config_mistakes_fail_at_start_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokenwatch.toml");
    std::fs::write(
        &file,
        "brokers = \"127.0.0.1:1\"\ntopics = [\"logs\"]\n\n[batch]\nmax_messages = \"many\"\n",
    )
    .unwrap();
    let run = |env: &[(&str, &str)]| {
        let out = common::tokenwatch_command()
            .arg("run")
            .arg("--config")
            .arg(&file)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(&format!("{}:5: batch.max_messages: invalid type", file.display())),
        "{stderr}"
    );

    std::fs::write(
        &file,
        "brokers = \"127.0.0.1:1\"\ntopics = [\"logs\"]\nredis = [\"redis://127.0.0.1:1\"]\nshutdown_timeout = \"soon\"\n",
    )
    .unwrap();
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(&format!("{}:4: shutdown_timeout:", file.display())),
        "{stderr}"
    );
    let (code, stderr) = run(&[("TOKENWATCH_SHUTDOWN_TIMEOUT", "later")]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("TOKENWATCH_SHUTDOWN_TIMEOUT: shutdown_timeout:"),
        "{stderr}"
    );
    let (code, stderr) = run(&[("TOKENWATCH_SHUTDOWN_TIMOUT", "1s")]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("TOKENWATCH_SHUTDOWN_TIMOUT: shutdown_timout: unknown field"),
        "{stderr}"
    );
}
