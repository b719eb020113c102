//! Split by key, detection decides what one engine decides (issue 12). Every line's uses of
//! tokens become internal records (`tokenwatch_core::record`), routed by subject with Kafka's
//! murmur2 to N detect partitions, each with an engine of its own that applies its records in
//! event-time order; together, their decisions are `replay`'s. This is the shuffle that
//! `run` performs through the `{prefix}events` topic, without Kafka: where the two disagree,
//! the fault is in the service, not in the split.
//!
//! What spans subjects is not split this way and is off here: the aggregation of
//! unauthenticated critical decisions per network (`[engine] aggregate_window`) counts over
//! all subjects, so N partitions would each emit a group's first decision. (Revocation budgets
//! and signing keys' first-seen times span subjects too; the generated traffic trips no budget.)

use std::sync::Arc;

use crate::common::{gen_pipeline_config, generated_attacks, pipeline_with, replay_lines_with};
use tokenwatch_core::pipeline::{Pipeline, PipelineConfig};
use tokenwatch_core::record::{self, EventRecord, Origin, Record};

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

/// The records of `lines`, as the ingest stage writes them, per detect partition.
fn ingest(lines: &[String], partitions: i32) -> (Vec<Vec<Vec<u8>>>, u64) {
    let mut p = verifying_pipeline();
    let mut out = vec![Vec::new(); partitions as usize];
    let mut without_token = 0;
    for (offset, line) in lines.iter().enumerate() {
        let Some(held) = p.hold_line(line.as_bytes()) else {
            continue;
        };
        p.held_uses(&held, |use_index, ev, tie| {
            let Some(key) = record::subject_key(ev) else {
                without_token += 1;
                return;
            };
            let mut buf = Vec::new();
            let origin = Origin {
                topic: 7,
                partition: 0,
                offset: offset as i64,
                line: 0,
                use_index,
            };
            record::encode_event(ev, origin, tie, &mut buf);
            out[record::partition_for(key.as_bytes(), partitions) as usize].push(buf);
        });
    }
    (out, without_token)
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
        let (records, without_token) = ingest(&lines, partitions);
        assert!(records.iter().all(|r| !r.is_empty()) || partitions == 1);
        let mut got: Vec<String> = records.iter().flat_map(|r| detect(verifying_pipeline(), r)).collect();
        got.sort();
        let extra: Vec<_> = got.iter().filter(|d| !want.contains(d)).collect();
        let missing: Vec<_> = want.iter().filter(|d| !got.contains(d)).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{partitions} partitions ({without_token} uses without a token): extra {extra:#?}, missing {missing:#?}"
        );
        assert_eq!(got, want, "{partitions} partitions");
    }
}

#[test]
fn records_need_no_key_material_and_no_geoip() {
    // The detect side needs no JWKS and no GeoIP database: the ingest side resolved
    // everything the engine needs.
    let lines = generated_attacks(SEED, 2_000);
    let (records, _) = ingest(&lines, 1);
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
        tokenwatch::service::shuffle::ensure_topic(&client, &cfg).await.unwrap(),
        5
    );
}
