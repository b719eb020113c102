//! `gen --jwks-out FILE --labels FILE`: the signatures are real and the decoys are forged.
//! Checked with the `jsonwebtoken` crate against the JWKS the command wrote: on every line
//! an attack label sits on, the token verifies (but for the unsigned attack); on every line a
//! decoy label of a revoking rule sits on, the token that would revoke does not; the victim's
//! own request, where a fooled engine would report a revoked token's use, verifies (in
//! forged-replay that label sits on the third forgery, which does not).

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokenwatch_core::token::{decode, looks_like_jwt, RawToken};
use tokenwatch_gen::Label;

/// The signature alone, with the algorithm the key names (never the token's header).
fn verifies(jwks: &JwkSet, token: &str) -> bool {
    let Some(jwk) = jsonwebtoken::decode_header(token)
        .ok()
        .and_then(|h| h.kid)
        .and_then(|kid| jwks.find(&kid))
    else {
        return false;
    };
    let alg: Algorithm = jwk.common.key_algorithm.unwrap().to_string().parse().unwrap();
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v).is_ok()
}

/// (token text, its id, its subject) of every token a canonical line carries, in the
/// `Authorization` header or as a query parameter.
fn tokens(line: &serde_json::Value) -> Vec<(String, String, String)> {
    let header = line["authorization"].as_str().and_then(|a| a.strip_prefix("Bearer "));
    let query = line["path"].as_str().unwrap().split_once('?').map_or("", |(_, q)| q);
    let in_query = query.split('&').filter_map(|p| p.split_once('=')).map(|(_, v)| v);
    header
        .into_iter()
        .chain(in_query.filter(|v| looks_like_jwt(v)))
        .filter_map(|text| {
            let info = decode(RawToken::new(text), &[]).ok()?;
            Some((text.to_owned(), info.token_id.to_string(), info.subject.to_string()))
        })
        .collect()
}

fn gen(dir: &std::path::Path, seed: &str) -> (Vec<serde_json::Value>, Vec<Label>, String) {
    let (jwks, labels) = (dir.join("jwks.json"), dir.join("labels.jsonl"));
    let out = Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
        .args(["gen", "--events", "20000", "--rate", "10", "--users", "300"])
        .args(["--attack-rate", "60", "--seed", seed, "--jwks-out"])
        .arg(&jwks)
        .arg("--labels")
        .arg(&labels)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let labels = std::fs::read_to_string(&labels)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, labels, std::fs::read_to_string(&jwks).unwrap())
}

#[test]
fn genuine_tokens_verify_against_the_written_jwks_and_decoys_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, labels, jwks_text) = gen(dir.path(), "5");
    assert_eq!(jwks_text.trim(), tokenwatch_gen::jwks(5));
    let jwks: JwkSet = serde_json::from_str(&jwks_text).unwrap();
    assert_eq!(jwks.keys.len(), 2);
    let raw: serde_json::Value = serde_json::from_str(&jwks_text).unwrap();
    for k in raw["keys"].as_array().unwrap() {
        assert!(k.get("d").is_none(), "a private member in the JWKS: {k}");
        assert_eq!(k["use"], "sig");
    }

    let mut at: HashMap<i64, Vec<&serde_json::Value>> = HashMap::new();
    for l in &lines {
        let ts = chrono::DateTime::parse_from_rfc3339(l["ts"].as_str().unwrap()).unwrap();
        at.entry(ts.timestamp_millis()).or_default().push(l);
    }
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    for label in &labels {
        let key = label.key().unwrap();
        // The tokens on the labelled line that the label names (by id, or by subject).
        let named: Vec<String> = at[&label.ts]
            .iter()
            .flat_map(|l| tokens(l))
            .filter(|(_, id, subject)| key == id || key == subject)
            .map(|(text, _, _)| text)
            .collect();
        assert!(!named.is_empty(), "no token on the line of {label:?}");
        let decoy = label.decoy.clone().unwrap_or_default();
        let want = match (label.must_fire(), label.rule.as_str()) {
            // Attacks and posture findings whose token nobody's key signed: no signature, an
            // HS*/unregistered alg, an unconfigured issuer, a forged signature served anyway.
            (true, "unsigned-token" | "weak-algorithm" | "unknown-issuer-accepted" | "invalid-signature-accepted") => {
                false
            }
            (true, _) => true,
            // The victim's own request after the forgery; in forged-replay, the third forgery.
            (false, "revoked-token-used") => decoy != "forged-replay",
            (false, _) => false,
        };
        let verified = named.iter().any(|t| verifies(&jwks, t));
        assert_eq!(verified, want, "{label:?}");
        *checked.entry(format!("{decoy} {}", label.rule)).or_default() += 1;
    }
    for decoy in ["forged-replay", "forged-travel", "forged-url", "forged-expired"] {
        let n: usize = checked
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{decoy} ")))
            .map(|(_, n)| n)
            .sum();
        assert!(n >= 2, "{decoy}: {checked:?}");
    }
    for rule in tokenwatch_gen::rule::ALL {
        assert!(
            checked.contains_key(&format!(" {rule}")),
            "no {rule} attack: {checked:?}"
        );
    }
}

#[test]
fn the_same_seed_writes_the_same_keys_and_lines_and_another_seed_other_keys() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (lines_a, labels_a, jwks_a) = gen(a.path(), "9");
    let (lines_b, labels_b, jwks_b) = gen(b.path(), "9");
    assert!(lines_a == lines_b && labels_a == labels_b);
    assert_eq!(jwks_a, jwks_b);
    let (_, _, jwks_c) = gen(c.path(), "10");
    assert_ne!(jwks_a, jwks_c);
}

#[test]
fn no_decoys_leaves_them_out() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.jsonl");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
            .args([
                "gen",
                "--events",
                "5000",
                "--rate",
                "20",
                "--attack-rate",
                "100",
                "--labels",
            ])
            .arg(&labels)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(&labels).unwrap()
    };
    assert!(run(&[]).contains(r#""expect":"none""#));
    let without = run(&["--no-decoys"]);
    assert!(!without.is_empty() && !without.contains("expect"), "{without}");
}
