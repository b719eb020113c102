//! `gen --geoip FILE`: traffic placed in the networks of a City database other than the one
//! the built-in tables copy (MaxMind's GeoIP2-City-Test, in tests/fixtures/geoip/ with its
//! licences), and the default rules with the engine on that same database.

use crate::common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use tokenwatch::demo::score;
use tokenwatch_core::geo::GeoDb;
use tokenwatch_core::pipeline::Pipeline;
use tokenwatch_gen::{GenConfig, GenFormat, Generator, Networks};

fn geoip2_city_test() -> PathBuf {
    common::fixture("geoip/GeoIP2-City-Test.mmdb")
}

fn gen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
        .arg("gen")
        .args(args)
        .output()
        .unwrap()
}

fn client_ips(stdout: &[u8]) -> Vec<IpAddr> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["client_ip"].as_str().unwrap().parse().unwrap()
        })
        .collect()
}

/// Every client address is located by the database, except those in the ranges meant to
/// be unknown (CGNAT, attackers), which are not; and the users are spread over places the
/// built-in tables do not have.
#[test]
fn every_client_address_but_cgnat_and_attackers_is_located_by_the_given_database() {
    let db_path = geoip2_city_test();
    let args = [
        "--events",
        "30000",
        "--rate",
        "20",
        "--users",
        "500",
        "--attack-rate",
        "40",
    ];
    let out = gen(&[&args[..], &["--geoip", db_path.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GeoIP2-City-Test.mmdb"));
    let ips = client_ips(&out.stdout);
    assert_eq!(ips.len(), 30_000);

    let db = GeoDb::open(&db_path).unwrap();
    let unknown: Vec<ipnet::IpNet> = Networks::from_geoip(&db_path)
        .unwrap()
        .unlocated_ranges()
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    assert!(unknown.iter().any(|n| n.to_string() == "100.64.0.0/10"));
    let key = |p: tokenwatch_core::input::GeoPoint| (p.lat.to_bits(), p.lon.to_bits());
    let mut places = BTreeSet::new();
    let mut unlocated = 0;
    for ip in &ips {
        let meant_unknown = unknown.iter().any(|n| n.contains(ip));
        match db.locate(*ip) {
            Some(p) => {
                assert!(!meant_unknown, "{ip} is located, but in a range meant to be unknown");
                places.insert(key(p));
            }
            None => {
                assert!(meant_unknown, "{ip} is not located by {}", db_path.display());
                unlocated += 1;
            }
        }
    }
    assert!(unlocated > 0);

    // The same run without --geoip: the built-in places, fewer of them, and not all the same.
    let out = gen(&args);
    assert!(out.status.success());
    let builtin_db = common::geo();
    let builtin: BTreeSet<_> = client_ips(&out.stdout)
        .into_iter()
        .filter_map(|ip| builtin_db.locate(ip))
        .map(key)
        .collect();
    assert!(
        places.len() > builtin.len(),
        "{} places, built-in {}",
        places.len(),
        builtin.len()
    );
    assert!(places.difference(&builtin).count() >= 10);
}

/// The bar of the default-table test (tests/it/demo.rs): a generated day through the default
/// rules, recall and precision exactly 1.
#[test]
fn the_default_rules_agree_with_the_labels_over_a_day_placed_by_the_given_database() {
    let networks = Arc::new(Networks::from_geoip(&geoip2_city_test()).unwrap());
    for format in [GenFormat::Canonical, GenFormat::Traefik] {
        let cfg = GenConfig {
            networks: networks.clone(),
            ..common::generated_day(format)
        };
        // The engine as `replay --rules rules --geoip FILE` builds it.
        let rules = Arc::new(tokenwatch_core::rules::load_dir(&common::root().join("rules")).unwrap());
        let geo = GeoDb::open(&geoip2_city_test()).unwrap();
        // ... and configured for the generated deployment: its keys per issuer and its posture.
        let pcfg = tokenwatch::demo::generator_deployment(&cfg).unwrap();
        let mut pipeline = Pipeline::new(rules, Some(geo), pcfg).unwrap();
        let (mut decisions, mut labels, mut lines) = (Vec::new(), Vec::new(), 0u64);
        for g in Generator::new(cfg) {
            lines += 1;
            labels.extend(g.labels);
            pipeline.process_line(g.line.as_bytes(), &mut decisions);
        }
        let s = score(&labels, &decisions);
        assert!(lines > 150_000, "{lines}");
        assert_eq!(
            s.per_rule.len(),
            tokenwatch_gen::rule::LABELLED,
            "every default rule has labels: {:?}",
            s.per_rule
        );
        assert!(labels.len() > 100, "{}", labels.len());
        assert_eq!(s.recall(), 1.0, "{format:?} missed: {:?}", s.missed);
        // Every decision is an attack's or a forged decoy's (tests/it/demo.rs says more).
        assert!(
            s.false_positives.is_empty(),
            "{format:?} false: {:?}",
            s.false_positives
        );
        let decoys = labels.iter().filter(|l| !l.must_fire()).count() as u64;
        assert_eq!(
            s.decoys.values().map(|(quiet, fired)| quiet + fired).sum::<u64>(),
            decoys
        );
        assert!(
            s.decoys_fired.is_empty(),
            "{format:?} decoys fired: {:?}",
            s.decoys_fired
        );
    }
}

#[test]
fn the_same_seed_and_database_give_the_same_bytes() {
    let db = geoip2_city_test();
    let args = ["--events", "5000", "--seed", "3", "--geoip", db.to_str().unwrap()];
    let (a, b) = (gen(&args), gen(&args));
    assert!(a.status.success());
    assert!(a.stdout == b.stdout);
}

#[test]
fn a_database_that_cannot_be_read_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_db = dir.path().join("cities.mmdb");
    std::fs::write(&not_a_db, b"not a database").unwrap();
    let missing = dir.path().join("missing.mmdb");
    for path in [&missing, &not_a_db] {
        for cmd in ["gen", "demo"] {
            let out = Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
                .args([cmd, "--geoip", path.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(!out.status.success(), "{cmd} {} was accepted", path.display());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(path.to_str().unwrap()), "{cmd}: {err}");
            assert!(err.contains("cannot open GeoIP database"), "{cmd}: {err}");
            assert!(out.stdout.is_empty(), "{cmd} wrote output anyway");
        }
    }
}
