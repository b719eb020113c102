//! Split by key, detection decides what one engine decides (issue 12). Every line's uses of
//! tokens become internal records (`tokenwatch_core::record`), routed by the ingest stage's
//! `Router` with Kafka's murmur2: by subject to N partitions of `{prefix}events`, and, for
//! rules keyed by another field (`kid`, `iss`, `client_ip`, `network`), by that field's value
//! to M partitions of `{prefix}events-by-key`. Each partition has an engine of its own that
//! applies its records in event-time order, for the rules its records name; together, their
//! decisions are `replay`'s, whatever the layout (gateway partitions N, M). This is the
//! shuffle that `run` performs through the internal topics, without Kafka: where the two
//! disagree, the fault is in the service, not in the split.
//!
//! What spans keys is not split this way and is off here: the aggregation of unauthenticated
//! critical decisions per network (`[engine] aggregate_window`) counts over all subjects, so N
//! partitions would each emit a group's first decision. (Revocation budgets and signing keys'
//! first-seen times span keys too; the generated traffic trips no budget, and the tests
//! configure no issuer, so no key has an age.)

use std::sync::Arc;

use crate::common::{
    fixture, gen_pipeline_config, generated_attacks, pipeline_with, pipeline_with_rules, replay_lines_through,
    replay_lines_with,
};
use tokenwatch_core::pipeline::{DecodedBatch, Pipeline, PipelineConfig};
use tokenwatch_core::record::{self, EventRecord, Internal, Origin, Record, Router};

const SEED: u64 = 12;

/// The generator's keys, and no aggregation per network (see the module's doc).
fn config() -> PipelineConfig {
    let mut cfg = gen_pipeline_config(SEED);
    cfg.engine.aggregate_window_ms = 0;
    cfg
}

fn verifying_pipeline() -> Pipeline {
    pipeline_with(config())
}

/// How the work is split: gateway partitions the lines are spread over (as shippers key
/// them: at random), and the partitions of the two internal topics.
#[derive(Debug, Clone, Copy)]
struct Layout {
    gateway: i32,
    subject: i32,
    by_key: i32,
}

/// The records of each internal partition.
struct Topics {
    subject: Vec<Vec<Vec<u8>>>,
    by_key: Vec<Vec<Vec<u8>>>,
}

/// The records of `lines`, decoded by `p`, as the ingest stage writes them.
fn ingest(mut p: Pipeline, lines: &[String], at: Layout) -> Topics {
    let rules = p.engine().rules().clone();
    let mut router = Router::new(&rules, config().posture, at.subject, Some(at.by_key));
    let mut out = Topics {
        subject: vec![Vec::new(); at.subject as usize],
        by_key: vec![Vec::new(); at.by_key as usize],
    };
    let mut offsets = vec![0i64; at.gateway as usize];
    let mut batch = DecodedBatch::new();
    let mut from = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let partition = ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 33) as i32 % at.gateway;
        from.push((partition, offsets[partition as usize]));
        offsets[partition as usize] += 1;
        batch.lines_mut().push(line.as_bytes());
    }
    // The ingest stage's path: a decoded batch, then each line's uses in line order.
    p.decode_batch(&mut batch);
    let mut buf = Vec::new();
    p.batch_uses(&batch, |i, use_index, ev, tie| {
        let (partition, offset) = from[i];
        let origin = Origin {
            topic: 7,
            partition,
            offset,
            line: 1,
            use_index,
        };
        router.route(ev, origin, tie, &mut buf, |to, k, routed| {
            let topic = match to {
                Internal::Subject => &mut out.subject,
                Internal::ByKey => &mut out.by_key,
            };
            let mut bytes = Vec::new();
            routed.write_alone(&mut bytes);
            topic[k as usize].push(bytes);
        });
    });
    out
}

/// One detect partition: its records in event-time order through an engine of its own.
fn detect(mut p: Pipeline, records: &[Vec<u8>]) -> Vec<String> {
    let mut events: Vec<EventRecord> = records
        .iter()
        .map(|b| match record::decode(b).unwrap() {
            Record::Event(e) => e,
            Record::Watermark(_) => unreachable!(),
        })
        .collect();
    events.sort_by_key(|e| (e.ts_ms, e.tie, e.origin));
    let mut out = Vec::new();
    for e in &events {
        p.apply_record(e, &mut out);
    }
    out.iter().map(|d| d.to_json_line().trim_end().to_string()).collect()
}

/// Every partition's decisions, sorted; `engine` builds each partition's engine.
fn detect_all(topics: &Topics, engine: impl Fn() -> Pipeline) -> Vec<String> {
    let mut got: Vec<String> = topics
        .subject
        .iter()
        .chain(&topics.by_key)
        .flat_map(|r| detect(engine(), r))
        .collect();
    got.sort();
    got
}

/// Asserts that `got` (sorted) holds exactly the decisions of `want` (sorted).
fn assert_same(got: &[String], want: &[String], what: &str) {
    let extra: Vec<_> = got.iter().filter(|d| !want.contains(d)).collect();
    let missing: Vec<_> = want.iter().filter(|d| !got.contains(d)).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}: extra {extra:#?}, missing {missing:#?}"
    );
    assert_eq!(got, want, "{what}");
}

#[test]
fn the_decisions_of_partitions_together_are_replays() {
    let lines = generated_attacks(SEED, 6_000);
    let mut want = replay_lines_with(&lines, config());
    assert!(
        want.iter().any(|d| d.contains("\"revoke_token\"")),
        "the traffic revokes nothing"
    );
    want.sort();
    for partitions in [1, 3, 6] {
        let at = Layout {
            gateway: 2,
            subject: partitions,
            by_key: partitions,
        };
        let topics = ingest(verifying_pipeline(), &lines, at);
        assert!(topics.subject.iter().all(|r| !r.is_empty()) || partitions == 1);
        let got = detect_all(&topics, verifying_pipeline);
        assert_same(&got, &want, &format!("{at:?}"));
    }
}

fn by_key_rules() -> std::path::PathBuf {
    fixture("rules-by-key")
}

fn by_key_pipeline() -> Pipeline {
    pipeline_with_rules(&by_key_rules(), config())
}

/// The decisions of the by-key rules fixture, sorted, and how many each rule made.
fn by_key_replay(lines: &[String]) -> Vec<String> {
    let mut want = replay_lines_through(lines, by_key_pipeline());
    want.sort();
    for rule in [
        "ip-many-subjects",
        "network-rejections",
        "kid-volume",
        "iss-unverified",
        "subject-networks",
    ] {
        let n = want
            .iter()
            .filter(|d| d.contains(&format!("\"rule\":\"{rule}\"")))
            .count();
        assert!(
            n >= 2,
            "{rule} fires {n} times on the generated traffic: the test would show nothing"
        );
    }
    want
}

#[test]
fn rules_keyed_by_other_fields_decide_what_replay_decides() {
    let lines = generated_attacks(SEED, 6_000);
    let want = by_key_replay(&lines);
    for at in [
        Layout {
            gateway: 1,
            subject: 1,
            by_key: 1,
        },
        Layout {
            gateway: 6,
            subject: 4,
            by_key: 3,
        },
        Layout {
            gateway: 3,
            subject: 2,
            by_key: 7,
        },
    ] {
        let topics = ingest(by_key_pipeline(), &lines, at);
        assert!(
            topics.by_key.iter().all(|r| !r.is_empty()),
            "{at:?}: a by-key partition got nothing"
        );
        let got = detect_all(&topics, by_key_pipeline);
        assert_same(&got, &want, &format!("{at:?}"));
    }
}

/// The control: the same records routed by subject instead (what `{prefix}events` alone
/// would give the rules keyed by other fields) decide differently, so the test above can
/// fail.
#[test]
fn routed_by_subject_the_same_rules_decide_otherwise() {
    let lines = generated_attacks(SEED, 6_000);
    let want = by_key_replay(&lines);
    let at = Layout {
        gateway: 6,
        subject: 4,
        by_key: 3,
    };
    let mut topics = ingest(by_key_pipeline(), &lines, at);
    let mut by_subject = vec![Vec::new(); at.by_key as usize];
    for bytes in topics.by_key.drain(..).flatten() {
        let Ok(Record::Event(r)) = record::decode(&bytes) else {
            unreachable!()
        };
        // Without a subject, a use does not reach the subject topic at all.
        if let Some(subject) = r.token.as_ref().map(|t| t.subject.clone()) {
            by_subject[record::partition_for(subject.as_bytes(), at.by_key) as usize].push(bytes);
        }
    }
    topics.by_key = by_subject;
    let got = detect_all(&topics, by_key_pipeline);
    let missing = want.iter().filter(|d| !got.contains(d)).count();
    let extra = got.iter().filter(|d| !want.contains(d)).count();
    assert!(
        missing + extra > 0,
        "routing by subject changed nothing: the fixture does not test routing by key"
    );
    // What differs is the rules keyed by other fields; the subject rule is the same.
    let of = |v: &[String], rule: &str| -> Vec<String> {
        v.iter()
            .filter(|d| d.contains(&format!("\"rule\":\"{rule}\"")))
            .cloned()
            .collect()
    };
    assert_eq!(of(&got, "subject-networks"), of(&want, "subject-networks"));
}

#[test]
fn records_need_no_key_material_and_no_geoip() {
    // The detect side needs no JWKS and no GeoIP database: the ingest side resolved
    // everything the engine needs.
    let lines = generated_attacks(SEED, 2_000);
    let one = Layout {
        gateway: 1,
        subject: 1,
        by_key: 1,
    };
    let records = ingest(verifying_pipeline(), &lines, one).subject;
    let rules = Arc::new(tokenwatch_core::rules::load_dir(&crate::common::root().join("rules")).unwrap());
    let bare = Pipeline::new(
        rules,
        None,
        PipelineConfig {
            engine: config().engine,
            ..PipelineConfig::default()
        },
    )
    .unwrap();
    let got = detect(bare, &records[0]);
    assert!(got.iter().any(|d| d.contains("\"revoke_token\"")));
    assert_eq!(got, detect(verifying_pipeline(), &records[0]));
}

/// An existing internal topic is taken as it is: its partition count is what routing uses,
/// whatever `[shuffle] partitions` says. (librdkafka's mock cluster has no CreateTopics, so
/// creation itself needs a real broker.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_internal_topic_keeps_its_partitions() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("g.events", 5, 1).unwrap();
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", mock.bootstrap_servers());
    let cfg = tokenwatch::service::ShuffleConfig {
        events_topic: "g.events".into(),
        partitions: 9,
        ..Default::default()
    };
    assert_eq!(
        tokenwatch::service::shuffle::ensure_topic(&client, &cfg, "g.events")
            .await
            .unwrap(),
        5
    );
}
