//! Helpers for the end-to-end part of `scripts/bench.sh`, against a real broker (tansu) and a
//! real redis-server:
//!
//! - `e2e produce BROKERS TOPIC FILE [PARTITIONS]`: creates the topic (one partition by
//!   default) and produces every line of FILE as one message, to a partition drawn at random
//!   per message as log shippers with random keys do; prints messages/s.
//! - `e2e consume BROKERS TOPIC N`: reads N messages of TOPIC from the start with a bare
//!   librdkafka consumer (tokenwatch's fetch settings, nothing done with the messages); prints
//!   messages/s: the broker's ceiling for `run` on this machine.
//! - `e2e drain METRICS_PORT N`: polls `tokenwatch run`'s `/metrics` until
//!   `tokenwatch_events_total{result="decoded"}` plus the lines held for their event-time turn
//!   (`tokenwatch_event_time_held_lines`) reach N and, when the work is split by key
//!   (`--role both`), until the detect stage has read every event record the ingest stage
//!   produced; prints events/s measured from the first event seen (group formation is not
//!   counted).
//! - `e2e latency BROKERS TOPIC REDIS_URL RATE SECONDS [PARTITIONS]`: produces generated traffic stamped
//!   with the wall clock at RATE lines/s and, every 20 ms, a probe line that the default rule
//!   `expired-token-accepted` revokes; polls Redis for each probe's revocation key and prints
//!   the delays from production to visibility in Redis: `p50_ms p99_ms max_ms probes missing`.
//! - `e2e latency BROKERS TOPIC kafka RATE SECONDS [PARTITIONS]`: the same traffic and probes,
//!   but each probe is seen when a bare librdkafka consumer (tokenwatch's fetch settings,
//!   assigned every partition at its end) reads it back: the broker's own latency floor on
//!   this machine, without tokenwatch, to tell its share of the delay above from tokenwatch's.
//! - `e2e latency BROKERS TOPIC relay RATE SECONDS [PARTITIONS]`: the broker's delay for two
//!   trips, as `--role both` makes them, with nothing else done: a relay thread reads TOPIC as
//!   the bare consumer does and, for all it holds after each poll, writes one message per
//!   partition to `TOPIC-relay` with the internal topics' producer settings
//!   (`shuffle::producer_config`), each background
//!   line cut to [`RELAY_BYTES`] (the size of an internal record) and each probe whole; the
//!   probes are seen when a bare consumer reads them back from `TOPIC-relay`. Nothing is
//!   decoded and nothing waits for a batch, so tokenwatch's delay above this is its own share
//!   (not a bound on every design: fewer, larger messages may load a busy broker less;
//!   `E2E_RELAY_LINGER=MS` sets the relay producer's `linger.ms`).
//!
//! cargo passes `--bench` to harness-less benches: arguments starting with `--` are ignored.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;

fn producer(brokers: &str) -> BaseProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "2")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "2097152")
        .create()
        .expect("producer")
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let _ = rt.block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ));
}

/// Where each message goes: a partition drawn at random (splitmix64, seeded), so that
/// partitions interleave as they do behind log shippers that key messages at random.
struct Spread {
    partitions: i32,
    state: u64,
}

impl Spread {
    fn new(partitions: i32) -> Self {
        Spread {
            partitions: partitions.max(1),
            state: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next(&mut self) -> i32 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % self.partitions as u64) as i32
    }
}

/// Sends one message, waiting while librdkafka's queue is full; any other refusal (a message
/// too large, say) ends the helper rather than retrying for ever.
fn send(p: &BaseProducer, topic: &str, partition: i32, line: &[u8]) {
    use rdkafka::error::KafkaError::MessageProduction;
    use rdkafka::types::RDKafkaErrorCode::QueueFull;
    loop {
        match p.send(BaseRecord::<(), [u8]>::to(topic).payload(line).partition(partition)) {
            Ok(()) => return,
            Err((MessageProduction(QueueFull), _)) => {
                p.poll(Duration::from_millis(1));
            }
            Err((e, _)) => panic!("e2e: {topic} refused a message of {} bytes: {e}", line.len()),
        }
    }
}

fn produce(brokers: &str, topic: &str, file: &str, partitions: i32) {
    create_topic(brokers, topic, partitions);
    let p = producer(brokers);
    let mut spread = Spread::new(partitions);
    let data = std::fs::read(file).expect("read input");
    let start = Instant::now();
    let mut n = 0u64;
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        send(&p, topic, spread.next(), line);
        n += 1;
        if n % 10_000 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(300)).expect("flush");
    let secs = start.elapsed().as_secs_f64();
    eprintln!("e2e produce: {n} messages in {secs:.1} s");
    println!("{:.0}", n as f64 / secs);
}

/// The values of four metrics: lines decoded (counted as they are applied), lines waiting for
/// their event-time turn, and event records produced to and read from the internal topic
/// (both 0 unless the work is split by key).
fn metrics(addr: SocketAddr, rt: &tokio::runtime::Runtime) -> Option<[f64; 4]> {
    let (_, body) = rt.block_on(tokenwatch::metrics::http_get(addr, "/metrics")).ok()?;
    let value = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Some([
        value("tokenwatch_events_total{result=\"decoded\"}"),
        value("tokenwatch_event_time_held_lines "),
        value("tokenwatch_shuffle_produced_total{kind=\"event\"}"),
        value("tokenwatch_shuffle_consumed_total{result=\"event\"}"),
    ])
}

fn drain(port: u16, n: f64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, f64)> = None;
    loop {
        let [v, held, produced, consumed] = metrics(addr, &rt).unwrap_or_default();
        let now = Instant::now();
        if v > 0.0 && first.is_none() {
            first = Some((now, v));
        }
        // Every line read and decoded: applied, or waiting for its event-time turn only (the
        // newest lines of a backlog wait `idle_timeout` for the partitions to go idle, which
        // live traffic would not; that wait is not throughput).
        if v + held >= n && consumed >= produced {
            let (t0, v0) = first.unwrap_or((now, 0.0));
            let secs = (now - t0).as_secs_f64().max(1e-3);
            eprintln!("e2e drain: {v} events, {:.0} after the first in {secs:.2} s", v - v0);
            println!("{:.0}", (v - v0) / secs);
            return;
        }
        assert!(now < deadline, "tokenwatch did not catch up: {v} of {n}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn consume(brokers: &str, topic: &str, n: u64) {
    use rdkafka::consumer::Consumer;
    let c = bare_consumer(brokers, "e2e-consume");
    c.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut got, mut start) = (0u64, None);
    while got < n {
        assert!(Instant::now() < deadline, "read {got} of {n}");
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            start.get_or_insert_with(Instant::now);
            got += 1;
        }
    }
    let secs = start.map_or(1e-3, |s| s.elapsed().as_secs_f64().max(1e-3));
    eprintln!("e2e consume: {got} messages in {secs:.2} s after the first");
    println!("{:.0}", got as f64 / secs);
}

fn now_ts() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn latency(brokers: &str, topic: &str, redis_url: &str, rate: f64, seconds: f64, partitions: i32) {
    create_topic(brokers, topic, partitions);
    let p = producer(brokers);
    let mut spread = Spread::new(partitions);
    let background: Vec<String> = tokenwatch_gen::Generator::new(tokenwatch_gen::GenConfig {
        seed: 5,
        events: Some(200_000),
        attack_rate: 0.0,
        ..Default::default()
    })
    .map(|g| g.line)
    .filter(|l| l.starts_with("{\"ts\":\"") && l.as_bytes().get(31) == Some(&b'"'))
    .collect();
    let mut probes_seen = ProbeFinder::new(redis_url, brokers, topic, partitions);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut probes = 0u64;
    let mut next_probe = start;
    let mut pending: VecDeque<(String, Instant)> = VecDeque::new();
    let mut delays: Vec<f64> = Vec::new();
    let mut line = String::with_capacity(2048);
    let mut last_poll = start;
    let end = start + Duration::from_secs_f64(seconds);
    loop {
        let now = Instant::now();
        if now >= end && pending.is_empty() {
            break;
        }
        if now >= end + Duration::from_secs(10) {
            break;
        }
        if now < end {
            let due = (now - start).as_secs_f64() * rate;
            let ts = now_ts();
            while (sent as f64) < due {
                let b = &background[(sent as usize) % background.len()];
                line.clear();
                line.push_str("{\"ts\":\"");
                line.push_str(&ts);
                line.push_str(&b[31..]);
                send(&p, topic, spread.next(), line.as_bytes());
                sent += 1;
            }
            if now >= next_probe {
                let jti = format!("bench-probe-{probes}-{}", std::process::id());
                let s = chrono::Utc::now().timestamp();
                let tok = tokenwatch_core::token::encode_unsigned_parts(
                    &json!({"alg":"RS256","typ":"JWT"}),
                    &json!({"iss":"https://idp.example.com","sub":format!("probe-{probes}"),"jti":jti,"iat":s-7200,"exp":s-3600}),
                    b"probe-signature-bytes",
                );
                let path = match probes_seen {
                    ProbeFinder::Redis(_) => "/probe".to_string(),
                    ProbeFinder::Broker { .. } => format!("/probe/{jti}"),
                };
                // Attested by the gateway (`authenticated`): evidence a revocation may act on.
                let l = json!({"ts": now_ts(), "client_ip": "81.2.69.142", "method": "GET", "path": path,
                    "status": 200, "user_agent": "bench", "authenticated": true, "authorization": format!("Bearer {tok}")})
                .to_string();
                send(&p, topic, spread.next(), l.as_bytes());
                p.poll(Duration::ZERO);
                pending.push_back((probes_seen.key(&jti), Instant::now()));
                probes += 1;
                next_probe += Duration::from_millis(20);
            }
        }
        p.poll(Duration::ZERO);
        if !pending.is_empty() && now - last_poll >= Duration::from_millis(1) {
            last_poll = now;
            let found = probes_seen.found(&pending);
            let seen = Instant::now();
            let mut i = 0;
            pending.retain(|(_, t)| {
                let hit = found.get(i).copied().unwrap_or(false);
                i += 1;
                if hit {
                    delays.push((seen - *t).as_secs_f64() * 1000.0);
                }
                !hit
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let secs = seconds.min(start.elapsed().as_secs_f64());
    delays.sort_by(f64::total_cmp);
    let q = |f: f64| {
        delays
            .get(((delays.len() as f64 * f).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    eprintln!(
        "e2e latency: {sent} lines ({:.0}/s) + {probes} probes, {} revocations seen, {} missing",
        sent as f64 / secs,
        delays.len(),
        pending.len()
    );
    println!(
        "{:.1} {:.1} {:.1} {} {}",
        q(0.5),
        q(0.99),
        q(1.0),
        probes,
        pending.len()
    );
}

/// A consumer with tokenwatch's own settings (`source::kafka::base_config`: fetch wait and
/// backoff, from the earliest offset), in a group of its own; it does nothing with what it reads.
fn bare_consumer(brokers: &str, group: &str) -> rdkafka::consumer::BaseConsumer {
    let group = format!("{group}-{}", std::process::id());
    tokenwatch::source::kafka::base_config(brokers, &group, &Default::default())
        .create()
        .expect("consumer")
}

/// A bare consumer of every partition of `topic`, from each partition's end as of now
/// (`Offset::End` would be resolved at the first fetch, after the first probes).
fn consumer_at_end(brokers: &str, group: &str, topic: &str, partitions: i32) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let c = bare_consumer(brokers, group);
    let mut tpl = rdkafka::TopicPartitionList::new();
    for k in 0..partitions {
        let (_, high) = c
            .fetch_watermarks(topic, k, Duration::from_secs(10))
            .expect("watermarks");
        tpl.add_partition_offset(topic, k, rdkafka::Offset::Offset(high))
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
    c
}

/// What the relay keeps of a background line: about what an internal record of it weighs
/// (173.2 bytes per line before LZ4, BENCHMARKS.md "Each token once per message").
const RELAY_BYTES: usize = 173;

/// The relay of `e2e latency ... relay`: gateway topic → `TOPIC-relay`, one message per
/// partition for what each poll brought, nothing else done. Stops when dropped.
struct Relay {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying `topic` from its end; returns the relay and the topic it writes.
    fn start(brokers: &str, topic: &str, partitions: i32) -> (Relay, String) {
        let to = format!("{topic}-relay");
        create_topic(brokers, &to, partitions);
        let from = consumer_at_end(brokers, "e2e-relay", topic, partitions);
        let mut client = rdkafka::ClientConfig::new();
        client.set("bootstrap.servers", brokers);
        // The relay's `linger.ms` may be set (BENCHMARKS.md "Two trips through the broker").
        if let Ok(linger) = std::env::var("E2E_RELAY_LINGER") {
            client.set("linger.ms", linger);
        }
        let out: BaseProducer = tokenwatch::service::shuffle::producer_config(client)
            .create()
            .expect("relay producer");
        // Ready before the first probe: the producer's id and the new topic's metadata come
        // with a first delivery, which would otherwise delay the first probes.
        for k in 0..partitions {
            send(&out, &to, k, b"relay ready\n");
        }
        out.flush(Duration::from_secs(30)).expect("the relay's first messages");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let target = to.clone();
        let thread = std::thread::spawn(move || {
            let mut frames: Vec<Vec<u8>> = vec![Vec::new(); partitions.max(1) as usize];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let mut wait = Duration::from_millis(1);
                while let Some(Ok(m)) = from.poll(wait) {
                    wait = Duration::ZERO;
                    let payload = rdkafka::message::Message::payload(&m).unwrap_or_default();
                    let keep = if payload.windows(7).any(|w| w == b"/probe/") {
                        payload
                    } else {
                        &payload[..payload.len().min(RELAY_BYTES)]
                    };
                    let k = rdkafka::message::Message::partition(&m) as usize % frames.len();
                    let frame = &mut frames[k];
                    frame.extend_from_slice(keep);
                    frame.push(b'\n');
                    // Under the broker's `message.max.bytes`, as the ingest stage's frames.
                    if frame.len() >= tokenwatch_core::record::FRAME_MAX_BYTES {
                        send(&out, &target, k as i32, frame);
                        frame.clear();
                    }
                }
                for (k, frame) in frames.iter_mut().enumerate().filter(|(_, f)| !f.is_empty()) {
                    send(&out, &target, k as i32, frame);
                    frame.clear();
                }
                out.poll(Duration::ZERO);
            }
        });
        (
            Relay {
                stop,
                thread: Some(thread),
            },
            to,
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where `latency` looks for its probes: their revocations in Redis (tokenwatch's delay), or
/// the probe lines themselves read back from the topic (the broker's floor) or from the
/// relay's topic (two trips).
enum ProbeFinder {
    Redis(redis::Connection),
    /// The relay is held for its `Drop`, which stops it.
    Broker {
        consumer: rdkafka::consumer::BaseConsumer,
        _relay: Option<Relay>,
    },
}

impl ProbeFinder {
    fn new(redis_url: &str, brokers: &str, topic: &str, partitions: i32) -> ProbeFinder {
        match redis_url {
            "kafka" => ProbeFinder::Broker {
                consumer: consumer_at_end(brokers, "e2e-latency", topic, partitions),
                _relay: None,
            },
            "relay" => {
                let (relay, to) = Relay::start(brokers, topic, partitions);
                ProbeFinder::Broker {
                    consumer: consumer_at_end(brokers, "e2e-latency", &to, partitions),
                    _relay: Some(relay),
                }
            }
            _ => {
                let client = redis::Client::open(redis_url).expect("redis url");
                ProbeFinder::Redis(client.get_connection().expect("redis connection"))
            }
        }
    }

    /// What `found` looks for: the revocation key, or the probe's path.
    fn key(&self, jti: &str) -> String {
        match self {
            ProbeFinder::Redis(_) => {
                let key = tokenwatch_core::token::scoped_key("https://idp.example.com", jti);
                format!("tokenwatch:revoked:tok:{key}")
            }
            ProbeFinder::Broker { .. } => format!("\"path\":\"/probe/{jti}\""),
        }
    }

    /// Which of the pending probes have been seen.
    fn found(&mut self, pending: &VecDeque<(String, Instant)>) -> Vec<bool> {
        match self {
            ProbeFinder::Redis(con) => {
                let mut pipe = redis::pipe();
                for (k, _) in pending {
                    pipe.exists(k);
                }
                pipe.query(con).unwrap_or_default()
            }
            ProbeFinder::Broker { consumer: c, .. } => {
                let mut found = vec![false; pending.len()];
                while let Some(Ok(m)) = c.poll(Duration::ZERO) {
                    let payload = rdkafka::message::Message::payload(&m).unwrap_or_default();
                    if !payload.windows(7).any(|w| w == b"/probe/") {
                        continue;
                    }
                    let text = String::from_utf8_lossy(payload);
                    for (i, (k, _)) in pending.iter().enumerate() {
                        found[i] |= text.contains(k.as_str());
                    }
                }
                found
            }
        }
    }
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let s = |i: usize| a.get(i).cloned().unwrap_or_default();
    match s(0).as_str() {
        "produce" => produce(&s(1), &s(2), &s(3), s(4).parse().unwrap_or(1)),
        "consume" => consume(&s(1), &s(2), s(3).parse().expect("count")),
        "drain" => drain(s(1).parse().expect("port"), s(2).parse().expect("count")),
        "latency" => latency(
            &s(1),
            &s(2),
            &s(3),
            s(4).parse().unwrap_or(50_000.0),
            s(5).parse().unwrap_or(10.0),
            s(6).parse().unwrap_or(1),
        ),
        "" => eprintln!("usage: e2e produce|drain|latency ... (see the module doc)"),
        other => panic!("unknown command {other}"),
    }
}
