//! Several `tokenwatch run` processes of one consumer group on the tansu broker, splitting the
//! work by key (`--role both`, or `--role ingest` beside `--role detect`): whatever the number
//! of instances, whichever joins late or is SIGKILLed mid-stream, together they decide what
//! `replay` of the same lines decides, and write each revocation to the feed once.
//!
//! The split test adds the rules of tests/fixtures/rules-by-key (keyed by `kid`, `iss`,
//! `client_ip`, `network`), so that `{prefix}events-by-key` carries records: the default rules
//! need it only when issuers are configured.
//!
//! The log is generated attacks over 6 partitions keyed at random, half of it a backlog and
//! half produced live while instances come and go. An instance killed with SIGKILL may have
//! written alerts for records whose offsets it had not committed yet; whoever takes its
//! partitions over decides those again (at least once), so only lines of a killed instance's
//! alerts may appear twice. The cross-subject aggregation is off on both sides: it is counted
//! per internal partition (README, "Splitting the work by key").

use crate::common;
use crate::e2e_tansu::{client, create_topic, tansu, wait, Proc};
use crate::run_bin::{self, Tokenwatch};

use std::collections::HashMap;
use std::time::Duration;

const GROUP: &str = "scale";
const GATEWAY_PARTITIONS: i32 = 6;
const SEED: u64 = 21;

/// The broker, Redis, the log and the instances of the group.
struct Group {
    _tansu: Proc,
    brokers: String,
    redis: common::RedisServer,
    lines: Vec<String>,
    /// What replay decides for `lines`.
    want: Vec<String>,
    /// The instances started, `None` once killed.
    members: Vec<Option<Tokenwatch>>,
    /// Alerts of the instances killed so far.
    killed: Vec<String>,
    /// Lines produced so far (the backlog, then live chunks).
    produced: usize,
    /// `--rules` of every instance, when not the default rules.
    rules: Option<tempfile::TempDir>,
}

impl Group {
    fn new(lines: usize) -> Group {
        Self::with_rules(lines, None)
    }

    /// A group whose instances (and the replay they are checked against) run `rules`.
    fn with_rules(lines: usize, rules: Option<tempfile::TempDir>) -> Group {
        let (tansu, brokers) = tansu();
        create_topic(&client(&brokers, &[]), "logs", GATEWAY_PARTITIONS);
        let lines = common::generated_attacks(SEED, lines as u64);
        let mut cfg = common::gen_pipeline_config(SEED);
        cfg.engine.aggregate_window_ms = 0;
        let want = match &rules {
            None => common::replay_lines_with(&lines, cfg),
            Some(dir) => common::replay_lines_through(&lines, common::pipeline_with_rules(dir.path(), cfg)),
        };
        assert!(want.len() > 20, "the log has attacks: {}", want.len());
        Group {
            _tansu: tansu,
            brokers,
            redis: common::RedisServer::start(),
            lines,
            want,
            members: Vec::new(),
            killed: Vec::new(),
            produced: 0,
            rules,
        }
    }

    /// Starts an instance with `--role role`; returns its index in `members`.
    fn start(&mut self, role: &str) -> usize {
        let jwks = common::gen_jwks_file(SEED);
        let mut args = vec!["--role", role, "--jwks", jwks.to_str().unwrap()];
        if let Some(dir) = &self.rules {
            args.extend(["--rules", dir.path().to_str().unwrap()]);
        }
        let env = [
            // Two decoding threads, as on the 2-core machines this runs on by default.
            ("TOKENWATCH_SHUFFLE__DECODE_THREADS", "2"),
            ("TOKENWATCH_SHUFFLE__PARTITIONS", "4"),
            ("TOKENWATCH_ENGINE__AGGREGATE_WINDOW", "0s"),
            ("TOKENWATCH_ENGINE__IDLE_TIMEOUT", "1s"),
            ("TOKENWATCH_ENGINE__CHECKPOINT_INTERVAL", "1s"),
            // A killed member leaves the group after this, not librdkafka's default 45 s.
            ("TOKENWATCH_KAFKA__SESSION_TIMEOUT_MS", "6000"),
        ];
        self.members.push(Some(run_bin::start(
            &self.brokers,
            &self.redis.url(),
            GROUP,
            &args,
            &env,
        )));
        self.members.len() - 1
    }

    /// SIGKILLs member `i`, keeping the alerts it wrote.
    fn kill(&mut self, i: usize) {
        let mut m = self.members[i].take().expect("a running member");
        m.signal("KILL");
        m.wait_exit(20);
        self.killed.extend(m.alert_lines());
    }

    /// Produces the next `n` lines, keyed at random.
    fn produce(&mut self, n: usize) {
        let end = (self.produced + n).min(self.lines.len());
        let seed = 7 + self.produced as u64;
        common::produce_spread(
            &self.brokers,
            "logs",
            GATEWAY_PARTITIONS,
            &self.lines[self.produced..end],
            seed,
        );
        self.produced = end;
    }

    /// Produces the rest in chunks of `chunk` lines, a quarter of a second apart.
    fn produce_live(&mut self, chunks: usize, chunk: usize) {
        for _ in 0..chunks {
            self.produce(chunk);
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn member(&self, i: usize) -> &Tokenwatch {
        self.members[i].as_ref().expect("a running member")
    }

    /// Whether member `i` has handled something: "read" gateway lines, or "decided" internal
    /// records.
    fn busy(&self, i: usize, what: &str) -> bool {
        let metric = match what {
            "read" => "tokenwatch_events_total{result=\"decoded\"}",
            _ => "tokenwatch_shuffle_consumed_total{result=\"event\"}",
        };
        self.member(i)
            .get("/metrics")
            .and_then(|(_, b)| common::metric(&b, metric))
            .is_some_and(|n| n > 0.0)
    }

    /// Waits until member `i` is [`Group::busy`] with the backlog.
    fn wait_busy(&self, i: usize, what: &str) {
        wait(what, 180, || self.busy(i, what));
    }

    /// Produces live chunks of 100 lines until member `i` is [`Group::busy`] with them: a
    /// member that joins gets partitions only once the group has rebalanced, and then reads
    /// only what comes after its predecessor's last commit.
    fn produce_until_busy(&mut self, i: usize, what: &str) {
        while !self.busy(i, what) {
            assert!(
                self.produced < self.lines.len(),
                "member {i} never {what} anything; stderr:\n{}",
                self.member(i).stderr()
            );
            self.produce_live(1, 100);
        }
    }

    /// SIGKILLs member `victim` while lines keep coming, then starts a `role` instance in its
    /// place and produces until it is [`Group::busy`] with `what`, and some more.
    fn replace(&mut self, victim: usize, role: &str, what: &str) {
        self.kill(victim);
        self.produce_live(4, 200);
        let new = self.start(role);
        self.produce_until_busy(new, what);
        self.produce_live(4, 200);
    }

    /// Produces what is left, waits until the group has read every line and the alerts stop
    /// growing, and checks them against replay's decisions and the feed against its
    /// revocations.
    fn finish(mut self) {
        let rest = self.lines.len() - self.produced;
        self.produce(rest);
        let total = self.lines.len() as i64;
        wait("the group to commit every gateway line", 240, || {
            let c = common::committed_all(&self.brokers, GROUP, "logs", GATEWAY_PARTITIONS);
            c.iter().map(|o| o.unwrap_or(0)).sum::<i64>() == total
        });
        let live = |g: &Group| -> Vec<String> {
            let mut all = g.killed.clone();
            for m in g.members.iter().flatten() {
                all.extend(m.alert_lines());
            }
            all
        };
        let mut last = 0;
        let mut stable = 0;
        for _ in 0..120 {
            std::thread::sleep(Duration::from_millis(500));
            let n = live(&self).len();
            stable = if n == last && n >= self.want.len() {
                stable + 1
            } else {
                0
            };
            last = n;
            if stable >= 6 {
                break;
            }
        }
        let got = live(&self);
        let (missing, extra) = difference(&self.want, &got);
        let late: Vec<Option<f64>> = self
            .members
            .iter()
            .flatten()
            .map(|m| common::metric(&m.get("/metrics")?.1, "tokenwatch_late_events_total"))
            .collect();
        assert!(
            missing.is_empty(),
            "{} of replay's {} decisions are missing (got {}; late events per member {late:?}), e.g. {:?}",
            missing.len(),
            self.want.len(),
            got.len(),
            missing.first().map(|l| &l[..l.len().min(300)]),
        );
        // Decided twice only when a killed member had written it without committing.
        for l in &extra {
            assert!(
                self.killed.contains(l),
                "a decision replay does not make, or made twice by live members: {}",
                &l[..l.len().min(300)]
            );
        }
        for m in self.members.iter_mut().flatten() {
            let body = m.wait_metrics("metrics", 10, |_| true);
            assert_eq!(
                common::metric(&body, "tokenwatch_late_events_total").unwrap_or(0.0),
                0.0,
                "no event is late"
            );
            assert_eq!(
                common::metric(&body, "tokenwatch_shuffle_consumed_total{result=\"refused\"}").unwrap_or(0.0),
                0.0
            );
        }
        common::assert_feed_is_replays(
            &common::stream_entries(&mut self.redis.conn(), "tokenwatch:revocations"),
            &self.want,
        );
    }
}

/// What `want` has that `got` has not, and what `got` has beyond `want` (as multisets).
fn difference(want: &[String], got: &[String]) -> (Vec<String>, Vec<String>) {
    let mut count: HashMap<&str, i64> = HashMap::new();
    for l in want {
        *count.entry(l).or_default() += 1;
    }
    for l in got {
        *count.entry(l).or_default() -= 1;
    }
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    for (l, c) in count {
        for _ in 0..c.max(0) {
            missing.push(l.to_string());
        }
        for _ in 0..(-c).max(0) {
            extra.push(l.to_string());
        }
    }
    (missing, extra)
}

#[test]
fn one_instance_splitting_by_key_decides_what_replay_decides() {
    let mut g = Group::new(10_000);
    g.produce(4_000);
    let a = g.start("both");
    g.wait_busy(a, "read");
    g.produce_live(10, 200);
    // A backlog over 6 gateway partitions holds records until the slowest one's event time
    // passes them: the detect stage reports its buffer's peak as the local loop does.
    let peak = g
        .member(a)
        .get("/metrics")
        .and_then(|(_, b)| common::metric(&b, "tokenwatch_event_time_held_lines_peak"));
    assert!(peak.is_some_and(|p| p > 0.0), "the event-time buffer's peak: {peak:?}");
    g.finish();
}

#[test]
fn a_second_instance_joining_mid_stream_decides_what_replay_decides() {
    let mut g = Group::new(10_000);
    g.produce(4_000);
    let a = g.start("both");
    g.wait_busy(a, "read");
    g.produce_live(4, 200);
    let b = g.start("both");
    g.produce_until_busy(b, "read");
    g.produce_live(4, 200);
    g.finish();
}

#[test]
fn three_instances_one_killed_one_late_decide_what_replay_decides() {
    let mut g = Group::new(10_000);
    g.produce(3_000);
    let a = g.start("both");
    let b = g.start("both");
    g.wait_busy(a, "read");
    g.produce_until_busy(b, "decided");
    g.produce_live(4, 200);
    g.replace(b, "both", "read");
    g.finish();
}

#[test]
fn one_ingest_and_two_detect_instances_one_killed_decide_what_replay_decides() {
    // With rules keyed by `kid`, `iss`, `client_ip` and `network`: both internal topics.
    let mut g = Group::with_rules(10_000, Some(common::rules_with_by_key()));
    let by_key = ["ip-many-subjects", "iss-unverified", "kid-volume", "network-rejections"];
    let decided: Vec<&str> = by_key
        .into_iter()
        .filter(|r| g.want.iter().any(|d| d.contains(&format!("\"rule\":\"{r}\""))))
        .collect();
    assert!(decided.len() >= 2, "rules of the by-key topic decide: {decided:?}");
    g.produce(3_000);
    let i = g.start("ingest");
    let d1 = g.start("detect");
    let d2 = g.start("detect");
    g.wait_busy(i, "read");
    g.produce_until_busy(d1, "decided");
    g.produce_until_busy(d2, "decided");
    g.produce_live(4, 200);
    // Restarted, it takes partitions back with their checkpoints.
    g.replace(d1, "detect", "decided");
    g.finish();
}

/// The ingest stage SIGKILLed mid-stream (records handed to librdkafka, acknowledged or not,
/// gateway offsets committed only for batches acknowledged whole) and started again: it
/// produces again what was not committed, the detect tasks drop the records they already
/// applied (by origin), and nothing is lost or decided twice.
#[test]
fn an_ingest_instance_killed_and_restarted_loses_and_doubles_nothing() {
    let mut g = Group::new(10_000);
    g.produce(3_000);
    let i = g.start("ingest");
    let d = g.start("detect");
    g.wait_busy(i, "read");
    g.produce_until_busy(d, "decided");
    g.produce_live(4, 200);
    g.replace(i, "ingest", "read");
    g.finish();
}
