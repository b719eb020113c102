//! Gateways' log shippers compress their batches. tokenwatch's consumer (built from
//! `source::kafka::base_config`, as `run` builds it) must read every codec a producer may
//! choose; zstd needs librdkafka built with it (the crate's `zstd` feature), so this fails on a
//! build without it.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;

#[test]
fn every_compression_codec_is_readable() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("logs", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    for codec in codecs {
        let p: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("compression.codec", codec)
            .create()
            .unwrap_or_else(|e| panic!("producer with {codec}: {e}"));
        let line = format!("{{\"codec\":\"{codec}\",\"pad\":\"{}\"}}", "x".repeat(2000));
        p.send(BaseRecord::<(), str>::to("logs").payload(&line)).unwrap();
        p.flush(Duration::from_secs(10)).unwrap();
    }
    let c: BaseConsumer = tokenwatch::source::kafka::base_config(&brokers, "codecs", &BTreeMap::new())
        .create()
        .unwrap();
    c.subscribe(&["logs"]).unwrap();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < codecs.len() && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                seen.insert(v["codec"].as_str().unwrap().to_string());
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    assert_eq!(seen.len(), codecs.len(), "read only {seen:?}");
}
