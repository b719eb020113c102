//! Signature verification with the public keys of a JWKS: every supported algorithm verifies
//! with its own key and with nothing else (the key decides the algorithm, never the token), an
//! expired token with a good signature is verified *and* expired, keys rotate without a restart
//! (a file re-read when it changes, a URL fetched again for an unknown `kid`, at most once per
//! interval), and a failing URL keeps the last good keys and is counted.

use crate::common;
use crate::support::keys;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use keys::{claims, forged, sign, T0};
use serde_json::{json, Value};
use tokenwatch_core::pipeline::PipelineConfig;
use tokenwatch_core::token::{RawToken, TokenCache};
use tokenwatch_core::verify::{Verifier, VerifyConfig};

fn verifier(jwks: &[&str]) -> Arc<Verifier> {
    let cfg = VerifyConfig {
        jwks: jwks.iter().map(std::string::ToString::to_string).collect(),
        issuers: Vec::new(),
    };
    Arc::new(Verifier::load(&cfg).unwrap().with_refetch_every(Duration::ZERO))
}

fn verified(cache: &mut TokenCache, token: &str) -> bool {
    cache.get(RawToken::new(token)).unwrap().verified
}

fn cache(v: &Arc<Verifier>) -> TokenCache {
    TokenCache::new(vec![]).with_verifier(Some(v.clone()))
}

#[test]
fn every_algorithm_verifies_with_its_own_key() {
    let v = verifier(&[keys::jwks().to_str().unwrap()]);
    let mut c = cache(&v);
    use Algorithm::*;
    for (alg, kid) in [
        (RS256, "k1"),
        (RS384, "k1"),
        (RS512, "k1"),
        (PS256, "k1"),
        (PS384, "k1"),
        (PS512, "k1"),
        (ES256, "ec1"),
        (ES384, "ec384"),
        (EdDSA, "ed1"),
    ] {
        let t = sign(alg, Some(kid), &claims("u", &format!("{alg:?}"), T0));
        assert!(verified(&mut c, &t), "{alg:?}");
        // without a kid, the keys whose own algorithms allow it are tried
        let t = sign(alg, None, &claims("u", &format!("{alg:?}-nokid"), T0));
        assert!(verified(&mut c, &t), "{alg:?} without kid");
    }
}

#[test]
fn the_key_decides_the_algorithm_never_the_token() {
    let v = verifier(&[keys::jwks().to_str().unwrap()]);
    let mut c = cache(&v);
    let cl = claims("victim", "j", T0);
    // HS256 with the RSA key's kid, keyed with the public key itself (algorithm confusion)
    let jwks = std::fs::read(keys::jwks()).unwrap();
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("k1".into()),
            ..jsonwebtoken::Header::new(Algorithm::HS256)
        },
        &cl,
        &jsonwebtoken::EncodingKey::from_secret(&jwks),
    )
    .unwrap();
    assert!(!verified(&mut c, &hs), "HS256 naming an RSA key");
    assert!(
        !verified(&mut c, &sign(Algorithm::HS256, None, &cl)),
        "HS256 cannot be verified"
    );
    // an EC signature presented under the RSA key's kid, and an RSA one under the EC key's
    let ec = sign(Algorithm::ES256, Some("ec1"), &cl);
    let (_, sig) = ec.rsplit_once('.').unwrap();
    let h = tokenwatch_core::token::encode_unsigned_parts(&json!({"alg":"ES256","kid":"k1"}), &cl, b"");
    assert!(!verified(&mut c, &format!("{h}{sig}")));
    let rs = sign(Algorithm::RS256, Some("ec1"), &cl);
    assert!(!verified(&mut c, &rs), "RS256 under an EC kid");
    // alg none, a forged signature, a good signature over other claims
    let none = tokenwatch_core::token::encode_unsigned_parts(&json!({"alg":"none","kid":"k1"}), &cl, b"");
    assert!(!verified(&mut c, &none));
    assert!(!verified(&mut c, &forged(&json!({"alg":"RS256","kid":"k1"}), &cl)));
    let good = sign(Algorithm::RS256, Some("k1"), &claims("mallory", "m", T0));
    let (head, _) = forged(&json!({"alg":"RS256","kid":"k1"}), &cl)
        .rsplit_once('.')
        .map(|(h, s)| (h.to_string(), s.to_string()))
        .unwrap();
    let (_, good_sig) = good.rsplit_once('.').unwrap();
    assert!(
        !verified(&mut c, &format!("{head}.{good_sig}")),
        "a signature moved to other claims"
    );
    assert!(verified(&mut c, &good));
}

#[test]
fn an_expired_token_with_a_good_signature_is_verified_and_expired() {
    let v = verifier(&[keys::jwks().to_str().unwrap()]);
    let mut p = common::pipeline_with(PipelineConfig {
        verify: Some(v),
        ..PipelineConfig::default()
    });
    let t = keys::rs256(&claims("erin", "old", T0 - 7200));
    let line = json!({"ts": T0, "client_ip": "216.160.83.57", "path": "/x", "status": 200,
                      "authorization": format!("Bearer {t}")})
    .to_string();
    let mut out = Vec::new();
    p.process_line(line.as_bytes(), &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(&*out[0].rule, "expired-token-accepted");
    assert_eq!(out[0].evidence["verified"], json!(true));
    assert_eq!(out[0].evidence["authenticated"], json!(true));
    assert_eq!(out[0].evidence["expired_for_s"], json!(6300));
    assert_eq!(p.stats.authenticated, 1);
}

#[test]
fn a_jwks_that_cannot_be_read_at_start_is_an_error_naming_it() {
    let e = Verifier::load(&VerifyConfig {
        jwks: vec!["/nonexistent/jwks.json".into()],
        issuers: Vec::new(),
    })
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("JWKS /nonexistent/jwks.json: cannot read:"), "{e}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
        .args(["replay", "--jwks", "/nonexistent/jwks.json", "-"])
        .current_dir(common::root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("verify.jwks: JWKS /nonexistent/jwks.json: cannot read"),
        "{err}"
    );
}

#[test]
fn without_a_jwks_replay_warns_once_naming_what_to_configure() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
        .args(["replay", "--quiet", common::fixture("canonical.log").to_str().unwrap()])
        .current_dir(common::root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("warning: no JWKS configured (--jwks").count(), 1, "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
        .args(["replay", "--quiet", "--jwks", keys::jwks().to_str().unwrap()])
        .arg(common::fixture("canonical.log"))
        .current_dir(common::root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("warning"), "{err}");
}

/// Keys only for the issuer they are configured for.
#[test]
fn per_issuer_keys_verify_only_their_issuer() {
    let jwks = keys::jwks();
    let v = Arc::new(
        Verifier::load(&VerifyConfig {
            jwks: Vec::new(),
            issuers: vec![("https://idp.example.com".into(), jwks.to_str().unwrap().into())],
        })
        .unwrap(),
    );
    let mut c = cache(&v);
    assert!(verified(&mut c, &keys::rs256(&claims("u", "a", T0))));
    let other = json!({"iss": "https://other.example.com", "sub": "u", "jti": "b"});
    assert!(!verified(&mut c, &keys::rs256(&other)));
}

/// A JWKS file that changes is read again for an unknown kid.
#[test]
fn a_rotated_jwks_file_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let all: Value = serde_json::from_slice(&std::fs::read(keys::jwks()).unwrap()).unwrap();
    let only = |kids: &[&str]| {
        let keys: Vec<&Value> = all["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
            .collect();
        json!({"keys": keys}).to_string()
    };
    std::fs::write(&path, only(&["k1"])).unwrap();
    let v = verifier(&[path.to_str().unwrap()]);
    let mut c = cache(&v);
    let ec = sign(Algorithm::ES256, Some("ec1"), &claims("u", "e", T0));
    assert!(!verified(&mut c, &ec), "ec1 is not published yet");
    std::fs::write(&path, only(&["k1", "ec1"])).unwrap();
    assert!(
        verified(&mut c, &ec),
        "the cached verdict is retried once the file changed"
    );
    assert_eq!(v.errors(), 0);
}

/// A tiny JWKS endpoint on a free loopback port: serves `body` (or 500 when `None`), counts
/// requests.
struct JwksServer {
    url: String,
    body: Arc<Mutex<Option<String>>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(body: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let body = Arc::new(Mutex::new(Some(body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                h.fetch_add(1, Ordering::SeqCst);
                let resp = match &*b.lock().unwrap() {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                };
                let _ = s.write_all(resp.as_bytes());
            }
        });
        JwksServer { url, body, hits }
    }

    fn serve(&self, body: Option<String>) {
        *self.body.lock().unwrap() = body;
    }
}

/// A verifier of one JWKS URL with the default refetch interval (one minute).
fn url_verifier(url: &str) -> Arc<Verifier> {
    let cfg = VerifyConfig {
        jwks: vec![url.to_string()],
        issuers: Vec::new(),
    };
    Arc::new(Verifier::load(&cfg).unwrap())
}

fn jwks_of(kids: &[&str]) -> String {
    let all: Value = serde_json::from_slice(&std::fs::read(keys::jwks()).unwrap()).unwrap();
    let keys: Vec<&Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .collect();
    json!({"keys": keys}).to_string()
}

#[test]
fn a_jwks_url_rotates_fetching_a_new_kid_once() {
    let server = JwksServer::start(jwks_of(&["k1"]));
    let v = url_verifier(&server.url);
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "read at start");
    let mut c = cache(&v);
    assert!(verified(&mut c, &keys::rs256(&claims("u", "a", T0))));
    // the issuer rotates: a token signed by a key published since
    server.serve(Some(jwks_of(&["k1", "ec1"])));
    let ec = sign(Algorithm::ES256, Some("ec1"), &claims("u", "b", T0));
    assert!(verified(&mut c, &ec), "the new kid is fetched");
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    // more tokens of the new key, and unknown kids within the minute: no more fetches
    let ec2 = sign(Algorithm::ES256, Some("ec1"), &claims("u", "c", T0));
    assert!(verified(&mut c, &ec2));
    for i in 0..5 {
        let t = forged(
            &json!({"alg": "RS256", "kid": format!("unknown-{i}")}),
            &claims("u", "d", T0),
        );
        assert!(!verified(&mut c, &t));
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 2, "at most one refetch per minute");
    assert_eq!(v.errors(), 0);
}

#[test]
fn a_failing_jwks_url_keeps_the_last_good_keys_and_counts() {
    let server = JwksServer::start(jwks_of(&["k1"]));
    let v = verifier(&[&server.url]);
    let mut c = cache(&v);
    server.serve(None);
    let unknown = sign(Algorithm::ES256, Some("ec1"), &claims("u", "a", T0));
    assert!(!verified(&mut c, &unknown));
    assert_eq!(server.hits.load(Ordering::SeqCst), 2, "fetched again, and failed");
    assert_eq!(v.errors(), 1);
    assert!(
        verified(&mut c, &keys::rs256(&claims("u", "b", T0))),
        "k1 still verifies"
    );
    // what the service exports as tokenwatch_jwks_errors_total
    let p = common::pipeline_with(PipelineConfig {
        verify: Some(v.clone()),
        ..PipelineConfig::default()
    });
    assert_eq!(p.jwks_errors(), 1);
}

fn signature_invalid(cache: &mut TokenCache, token: &str) -> bool {
    cache.get(RawToken::new(token)).unwrap().signature_invalid
}

/// A `kid` that no JWKS holds is an invalid signature (`invalid-signature-accepted` may fire)
/// only once the JWKS was looked at again after the token appeared and still lacks it: a
/// file's stamp looked at now, a URL fetched now. Within the URL's refetch interval nothing is
/// known yet; and a key published later turns the cached verdict into "verified".
#[test]
fn a_kid_no_jwks_publishes_is_invalid_only_after_a_fresh_look() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_of(&["k1"])).unwrap();
    let v = verifier(&[path.to_str().unwrap()]);
    let mut c = cache(&v);
    let ec = sign(Algorithm::ES256, Some("ec1"), &claims("u", "a", T0));
    assert!(!verified(&mut c, &ec));
    assert!(
        signature_invalid(&mut c, &ec),
        "the file, looked at now, does not publish ec1"
    );
    std::fs::write(&path, jwks_of(&["k1", "ec1"])).unwrap();
    assert!(verified(&mut c, &ec), "published later: verified on its next use");
    assert!(!signature_invalid(&mut c, &ec));

    // A URL with the default one-minute refetch interval: the first unknown kid is fetched for
    // (and is then known to be unpublished); another one within the minute is not known yet.
    let server = JwksServer::start(jwks_of(&["k1"]));
    let v = url_verifier(&server.url);
    let mut c = cache(&v);
    let made_up = forged(&json!({"alg": "RS256", "kid": "made-up"}), &claims("u", "b", T0));
    assert!(signature_invalid(&mut c, &made_up));
    assert_eq!(server.hits.load(Ordering::SeqCst), 2, "fetched again for it");
    let other = forged(&json!({"alg": "RS256", "kid": "made-up-2"}), &claims("u", "c", T0));
    assert!(!signature_invalid(&mut c, &other), "no look yet: unknown, not invalid");
    assert!(!verified(&mut c, &other));
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    // A known kid with a bad signature is invalid at once, as before.
    let bad = forged(&json!({"alg": "RS256", "kid": "k1"}), &claims("u", "d", T0));
    assert!(signature_invalid(&mut c, &bad));
}
