//! Helpers shared by the integration tests (each test file includes this with `mod common;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokenwatch_core::decision::Decision;
use tokenwatch_core::geo::GeoDb;
use tokenwatch_core::input::Format;
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

pub fn geo() -> GeoDb {
    GeoDb::open(&root().join("assets/GeoLite2-City-Test.mmdb")).unwrap()
}

pub fn pipeline(format: Format) -> Pipeline {
    pipeline_with(PipelineConfig {
        format,
        ..PipelineConfig::default()
    })
}

/// The default rules and the GeoIP test database, with `cfg` (a user mapping, say).
pub fn pipeline_with(cfg: PipelineConfig) -> Pipeline {
    pipeline_with_rules(&root().join("rules"), cfg)
}

/// The rules of `dir` and the GeoIP test database, with `cfg`.
pub fn pipeline_with_rules(dir: &Path, cfg: PipelineConfig) -> Pipeline {
    let rules = Arc::new(tokenwatch_core::rules::load_dir(dir).unwrap());
    Pipeline::new(rules, Some(geo()), cfg).unwrap()
}

/// The default rules and those of tests/fixtures/rules-by-key (keyed by `kid`, `iss`,
/// `client_ip` and `network`: they need `{prefix}events-by-key`), in one directory.
pub fn rules_with_by_key() -> tempfile::TempDir {
    let rules = tempfile::tempdir().unwrap();
    for dir in [root().join("rules"), fixture("rules-by-key")] {
        for f in std::fs::read_dir(dir).unwrap() {
            let path = f.unwrap().path();
            if !tokenwatch_core::rules::load::is_rule_test(&path) {
                std::fs::copy(&path, rules.path().join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    rules
}

/// Runs a file through a pipeline, returning the decisions.
pub fn run_file(p: &mut Pipeline, path: &Path) -> Vec<Decision> {
    let text = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        p.process_line(line, &mut out);
    }
    out
}

/// Compact JWTs found in a text (header.payload.signature; the signature may be empty).
pub fn jwts_in(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tool(env: &str, name: &str) -> String {
    match std::env::var(env) {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let found = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {name}"))
                .output()
                .unwrap();
            let p = String::from_utf8_lossy(&found.stdout).trim().to_string();
            assert!(
                !p.is_empty(),
                "{name} not found: run scripts/test-deps.sh (or set {env})"
            );
            p
        }
    }
}

/// A real redis-server on a free loopback port, with no persistence unless asked; killed on
/// drop. Never the machine's own Redis.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    aof: bool,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// With `aof`, writes are fsynced to an append-only file, so a restart keeps them.
    pub fn start_with(aof: bool) -> RedisServer {
        Self::start_args(aof, &[])
    }

    /// With extra redis-server arguments (`--requirepass`, `--cluster-enabled`...). The
    /// readiness check then only waits for the port.
    pub fn start_args(aof: bool, extra: &[&str]) -> RedisServer {
        let extra = extra.iter().map(std::string::ToString::to_string).collect();
        let mut s = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            aof,
            extra,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = tool("TOKENWATCH_TEST_REDIS_SERVER", "redis-server");
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.extra);
        self.child = Some(cmd.spawn().unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        if !self.extra.is_empty() {
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server did not start on port {}",
                    self.port
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            return;
        }
        loop {
            if let Ok(mut c) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }

    /// Kills the server (SIGKILL): an outage.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`): `STOP` stalls it without closing a socket.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let ok = std::process::Command::new("kill")
            .args(["-s", sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -s {sig} redis-server");
    }

    /// Starts it again on the same port (and, with AOF, the same data).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The entries of the revocation stream: (kind, id) pairs in order.
pub fn stream_entries(c: &mut redis::Connection, key: &str) -> Vec<(String, String)> {
    let v: redis::Value = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(c).unwrap();
    let mut out = Vec::new();
    if let redis::Value::Array(entries) = v {
        for e in entries {
            let redis::Value::Array(parts) = e else { continue };
            let Some(redis::Value::Array(fields)) = parts.get(1) else {
                continue;
            };
            let s = |v: &redis::Value| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                _ => String::new(),
            };
            let mut kind = String::new();
            let mut id = String::new();
            for kv in fields.chunks(2) {
                match s(&kv[0]).as_str() {
                    "kind" => kind = s(&kv[1]),
                    "id" => id = s(&kv[1]),
                    _ => {}
                }
            }
            out.push((kind, id));
        }
    }
    out
}

/// A private CA and a server certificate for 127.0.0.1/localhost that it signs, made with the
/// `openssl` command in `dir`. Returns (server key, server certificate, CA certificate).
pub fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=tokenwatch-test-ca -keyout ca.key -out ca.pem",
        "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out srv.csr",
        "x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out cert.pem",
    ] {
        let ok = std::process::Command::new("openssl")
            .args(args.split(' '))
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl: run scripts/test-deps.sh");
        assert!(ok.success(), "openssl {args}");
    }
    (dir.join("key.pem"), dir.join("cert.pem"), dir.join("ca.pem"))
}

/// The group's committed offset of partition 0 of `topic`, as the broker has it (None when the
/// group has committed nothing there).
pub fn committed(brokers: &str, group: &str, topic: &str) -> Option<i64> {
    committed_all(brokers, group, topic, 1)[0]
}

/// The group's committed offsets of partitions `0..partitions` of `topic`.
pub fn committed_all(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, std::time::Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).unwrap().offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        })
        .collect()
}

/// A day of generated traffic (24 h of event time, 500 users, 10 attacks per 10,000 lines and
/// a few malformed lines): the bar on which the default rules must agree with the labels.
pub fn generated_day(format: tokenwatch_gen::GenFormat) -> tokenwatch_gen::GenConfig {
    tokenwatch_gen::GenConfig {
        seed: 2026,
        duration_secs: Some(86_400),
        rate_per_sec: 2.0,
        users: 500,
        attack_rate: 10.0,
        malformed_rate: 0.001,
        format,
        ..tokenwatch_gen::GenConfig::default()
    }
}

/// One message per line, all on partition 0 of `topic`. librdkafka's mock cluster keeps at
/// most 5 MiB or 100,000 messages of a partition (`rdkafka_mock.c`, `max_size`/`max_cnt`) and
/// drops the oldest past that: a larger backlog is read from the middle, as if retention had
/// deleted its start.
pub fn produce<S: AsRef<str>>(brokers: &str, topic: &str, lines: &[S]) {
    produce_to(brokers, topic, 0, lines);
}

/// One message per line, all on `partition` of `topic`.
pub fn produce_to<S: AsRef<str>>(brokers: &str, topic: &str, partition: i32, lines: &[S]) {
    produce_by(brokers, topic, lines, 10, |_| partition);
}

/// One message per line to `topic`, in the lines' order, on the partition `partition_of`
/// draws for each; waits up to `flush_secs` for the broker to acknowledge them all.
fn produce_by<S: AsRef<str>>(
    brokers: &str,
    topic: &str,
    lines: &[S],
    flush_secs: u64,
    mut partition_of: impl FnMut(&str) -> i32,
) {
    use rdkafka::producer::{BaseProducer, Producer};
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for l in lines {
        let partition = partition_of(l.as_ref());
        send_retrying(&p, topic, partition, l.as_ref());
    }
    p.flush(std::time::Duration::from_secs(flush_secs)).unwrap();
}

/// Sends one message, waiting (polling the producer) while its queue is full.
pub fn send_retrying(p: &rdkafka::producer::BaseProducer, topic: &str, partition: i32, payload: &str) {
    use rdkafka::producer::BaseRecord;
    while p
        .send(BaseRecord::<(), str>::to(topic).payload(payload).partition(partition))
        .is_err()
    {
        p.poll(std::time::Duration::from_millis(10));
    }
}

/// The revocation feed's property in every run-versus-replay test: no entry twice, and
/// exactly the revocations that replay's decisions (`want`, decision lines) ask for.
pub fn assert_feed_is_replays(feed: &[(String, String)], want: &[String]) {
    let mut unique = feed.to_vec();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), feed.len(), "no feed entry twice");
    let mut want_revoked = revocations_of(want);
    want_revoked.sort();
    want_revoked.dedup();
    // Empty on both sides would prove nothing: the tokens must verify on both sides.
    assert!(!want_revoked.is_empty(), "replay revokes something");
    assert_eq!(unique, want_revoked, "the feed holds exactly replay's revocations");
}

/// The lines of a fixture file under tests/fixtures.
pub fn fixture_lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(name))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// A counter or gauge's value in a /metrics body (`name` with its labels, as printed).
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The Redis id of the revocation a label expects: a token's (iss, jti) or a subject's
/// (iss, sub) scoped key, as `TokenInfo::{token,subject}_revocation_key` computes it.
pub fn label_revocation_key(l: &tokenwatch_gen::Label) -> Option<String> {
    let (iss, sub) = l.subject.as_deref()?.split_once('|')?;
    let id = if tokenwatch_gen::rule::keyed_by_subject(&l.rule) {
        sub
    } else {
        l.token_id.as_deref()?
    };
    Some(tokenwatch_core::token::scoped_key(iss, id).into())
}

/// The Redis id of a token revocation for a readable (iss, jti) or of a subject's (iss, sub).
pub fn scoped(iss: &str, id: &str) -> String {
    tokenwatch_core::token::scoped_key(iss, id).into()
}

/// One message per line over `partitions` partitions of `topic`, in the lines' order, each
/// line's partition drawn at random (seeded), as log shippers that key messages at random do.
pub fn produce_spread<S: AsRef<str>>(brokers: &str, topic: &str, partitions: i32, lines: &[S], seed: u64) {
    let mut x = seed | 1;
    produce_by(brokers, topic, lines, 30, |_| {
        // xorshift64*: enough to scatter lines, and the same split for the same seed.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % partitions as u64) as i32
    });
}

/// What `tokenwatch replay --jwks` (the generator's keys of `gen_seed`, [`gen_jwks_file`])
/// decides for `lines` with the default rules and the test GeoIP database: the decisions'
/// JSON lines, in order. `run` must be given the same keys, or its revoking rules see no
/// authenticated event.
pub fn replay_lines<S: AsRef<str>>(lines: &[S], gen_seed: u64) -> Vec<String> {
    replay_lines_with(lines, gen_pipeline_config(gen_seed))
}

/// The default pipeline settings, verifying with the generator's keys of `gen_seed`.
pub fn gen_pipeline_config(gen_seed: u64) -> PipelineConfig {
    PipelineConfig {
        verify: Some(tokenwatch::demo::generator_verifier(gen_seed).unwrap()),
        ..PipelineConfig::default()
    }
}

/// What `replay` decides for `lines` with the default rules, the test GeoIP database and
/// `cfg`: the decisions' JSON lines, in order.
pub fn replay_lines_with<S: AsRef<str>>(lines: &[S], cfg: PipelineConfig) -> Vec<String> {
    replay_lines_through(lines, pipeline_with(cfg))
}

/// What `replay` decides for `lines` through `p`: the decisions' JSON lines, in order.
pub fn replay_lines_through<S: AsRef<str>>(lines: &[S], mut p: Pipeline) -> Vec<String> {
    let mut text = String::new();
    for l in lines {
        text.push_str(l.as_ref());
        text.push('\n');
    }
    let mut out = Vec::new();
    let input: tokenwatch_core::replay::Input = ("lines".into(), Box::new(std::io::Cursor::new(text.into_bytes())));
    let summary =
        tokenwatch_core::replay::replay(&mut p, vec![input], 1 << 20, &mut out, &mut std::io::sink(), false).unwrap();
    assert_eq!(summary.late_events, 0, "the file itself has late events");
    String::from_utf8(out).unwrap().lines().map(String::from).collect()
}

/// The (kind, id) revocations that decisions ask for, as the revocation stream lists them.
pub fn revocations_of(decision_lines: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for l in decision_lines {
        let d: serde_json::Value = serde_json::from_str(l).unwrap();
        if d["shadow"] == serde_json::Value::Bool(true) {
            continue;
        }
        // the feed names a revocation by its fixed-length id, the decision's revocation_key
        let (kind, id) = match d["action"].as_str().unwrap() {
            "revoke_token" => ("token", &d["revocation_key"]),
            "revoke_subject" => ("subject", &d["revocation_key"]),
            _ => continue,
        };
        out.push((kind.to_string(), id.as_str().unwrap().to_string()));
    }
    out
}

/// A file holding the generator's public JWKS for `seed` (`tokenwatch gen --jwks-out`), for a
/// `tokenwatch run` that must verify generated tokens; written once per test process.
pub fn gen_jwks_file(seed: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokenwatch-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("gen-{seed}.jwks.json"));
    if !path.exists() {
        std::fs::write(&path, tokenwatch_gen::jwks(seed)).unwrap();
    }
    path
}

/// Generated traffic with every kind of attack at 20 lines/s of event time: a few thousand
/// lines fit a partition of the mock cluster (at most 5 MiB each).
pub fn generated_attacks(seed: u64, lines: u64) -> Vec<String> {
    let cfg = tokenwatch_gen::GenConfig {
        seed,
        events: Some(lines),
        rate_per_sec: 20.0,
        attack_rate: 60.0,
        ..Default::default()
    };
    tokenwatch_gen::Generator::new(cfg).map(|g| g.line).collect()
}

/// The `tokenwatch` binary, without the test process's own `TOKENWATCH_*` variables
/// (`TOKENWATCH_TEST_REDIS_SERVER`, `TOKENWATCH_BLESS`...): the binary takes every such
/// variable for a setting and refuses the ones it does not know, so a test gives it only the
/// ones it means (`.env(...)`).
pub fn tokenwatch_command() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tokenwatch"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOKENWATCH_") {
            c.env_remove(name);
        }
    }
    c
}
