//! The engine with real rule files: each default rule at its boundaries, late events, each
//! key type, cooldowns, shadow mode and allowlists.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::input::GeoPoint;
use crate::rules::load_str;
use crate::token::TokenInfo;

pub(super) const T0: i64 = 1_795_910_400_000; // 2026-11-29T00:00:00Z

fn default_rule(id: &str) -> Arc<RuleSet> {
    let rules = crate::defaults::rules().unwrap();
    let r = rules.rules.iter().find(|r| &*r.id == id).unwrap().clone();
    Arc::new(RuleSet {
        rules: vec![r],
        files: 1,
    })
}

pub(super) fn rules(yaml: &str) -> Arc<RuleSet> {
    Arc::new(RuleSet {
        rules: load_str(Path::new("t.yaml"), yaml).unwrap(),
        files: 1,
    })
}

fn token(jti: &str, sub: &str, iat_s: i64, exp_s: i64) -> Arc<TokenInfo> {
    Arc::new(TokenInfo {
        exp: Some(exp_s),
        iat: Some(iat_s),
        ..TokenInfo::test_token(jti, sub)
    })
}

pub(super) fn live(jti: &str, sub: &str) -> Arc<TokenInfo> {
    token(jti, sub, T0 / 1000, T0 / 1000 + 3600)
}

pub(super) fn ev(ts: i64, ip: &str, status: u16, tok: &Arc<TokenInfo>) -> Event<'static> {
    Event {
        ts_ms: ts,
        client_ip: Some(ip.parse().unwrap()),
        method: Cow::Borrowed("GET"),
        path: Cow::Borrowed("/api"),
        status: Some(status),
        user_agent: Cow::Borrowed("ua"),
        token: Some(tok.clone()),
        token_in_url: false,
        // the engine's tests are about genuine use (input/ decides what is genuine)
        authenticated: true,
        geo: None,
        scheme: None,
        second_token: false,
    }
}

pub(super) fn run(e: &mut Engine, events: &[Event<'_>]) -> Vec<Decision> {
    let mut out = Vec::new();
    for ev in events {
        e.process(ev, &mut out);
    }
    out
}

pub(super) fn engine(r: Arc<RuleSet>) -> Engine {
    Engine::new(r, EngineConfig::default())
}

const MIN: i64 = 60_000;

#[test]
fn token_replay_fires_at_the_third_network_within_ten_minutes() {
    let t = live("t1", "u");
    let mut e = engine(default_rule("token-replay"));
    let d = run(
        &mut e,
        &[
            ev(T0, "198.51.100.1", 200, &t),
            ev(T0 + MIN, "198.51.100.200", 200, &t), // same /24
            ev(T0 + 2 * MIN, "203.0.113.5", 200, &t),
            ev(T0 + 10 * MIN, "192.0.2.1", 200, &t), // exactly 10 minutes after the first
        ],
    );
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].ts, T0 + 10 * MIN);
    assert_eq!(d[0].action, Action::RevokeToken);
    assert_eq!(d[0].evidence["distinct"], 3);
}

#[test]
fn token_replay_boundaries() {
    let t = live("t1", "u");
    // just over ten minutes: the first network has left the window
    let mut e = engine(default_rule("token-replay"));
    let d = run(
        &mut e,
        &[
            ev(T0, "198.51.100.1", 200, &t),
            ev(T0 + 2 * MIN, "203.0.113.5", 200, &t),
            ev(T0 + 10 * MIN + 1, "192.0.2.1", 200, &t),
        ],
    );
    assert!(d.is_empty());
    // rejected requests do not count
    let mut e = engine(default_rule("token-replay"));
    let d = run(
        &mut e,
        &[
            ev(T0, "198.51.100.1", 200, &t),
            ev(T0 + 1, "203.0.113.5", 401, &t),
            ev(T0 + 2, "192.0.2.1", 403, &t),
        ],
    );
    assert!(d.is_empty());
    // IPv6: one /64 is one network
    let mut e = engine(default_rule("token-replay"));
    let d = run(
        &mut e,
        &[
            ev(T0, "2001:db8:0:1::1", 200, &t),
            ev(T0 + 1, "2001:db8:0:1::ffff", 200, &t),
            ev(T0 + 2, "2001:db8:0:2::1", 200, &t),
        ],
    );
    assert!(d.is_empty());
    let d = run(&mut e, &[ev(T0 + 3, "2001:db8:0:3::1", 200, &t)]);
    assert_eq!(d.len(), 1);
    // once per token, forever
    let d = run(
        &mut e,
        &[
            ev(T0 + 4, "2001:db8:0:4::1", 200, &t),
            ev(T0 + 20 * MIN, "2001:db8:0:5::1", 200, &t),
        ],
    );
    assert!(d.is_empty());
}

#[test]
fn a_late_event_within_the_lateness_still_counts() {
    let t = live("t1", "u");
    let mut e = engine(default_rule("token-replay"));
    let d = run(
        &mut e,
        &[
            ev(T0, "198.51.100.1", 200, &t),
            ev(T0 + 5 * MIN, "203.0.113.5", 200, &t),
            ev(T0 + 5 * MIN - 50_000, "192.0.2.1", 200, &t),
        ],
    );
    assert_eq!(d.len(), 1, "50 s late is within the 60 s allowance");
    assert_eq!(e.stats().late_events, 0);
}

#[test]
fn an_event_later_than_the_lateness_is_counted_and_kept_out_of_windows() {
    let t = live("t1", "u");
    let mut e = engine(default_rule("token-replay"));
    let d = run(
        &mut e,
        &[
            ev(T0, "198.51.100.1", 200, &t),
            ev(T0 + 5 * MIN, "203.0.113.5", 200, &t),
            ev(T0 + 3 * MIN, "192.0.2.1", 200, &t),
        ],
    );
    assert!(d.is_empty(), "two minutes late: not in the window");
    assert_eq!(e.stats().late_events, 1);
    // but stateless rules still see a late event
    let mut e = engine(default_rule("expired-token-accepted"));
    let old = token("old", "u", T0 / 1000 - 7200, T0 / 1000 - 3600);
    let d = run(
        &mut e,
        &[
            ev(T0 + 10 * MIN, "198.51.100.1", 200, &t),
            ev(T0, "198.51.100.1", 200, &old),
        ],
    );
    assert_eq!(d.len(), 1);
}

#[test]
fn expiry_has_sixty_seconds_of_leeway() {
    let exp_s = T0 / 1000;
    let t = token("e", "u", exp_s - 900, exp_s);
    let mut e = engine(default_rule("expired-token-accepted"));
    assert!(
        run(&mut e, &[ev(T0 + 60_000, "198.51.100.1", 200, &t)]).is_empty(),
        "exp + 60 s is not yet expired"
    );
    assert_eq!(run(&mut e, &[ev(T0 + 60_001, "198.51.100.1", 200, &t)]).len(), 1);
    // rejected: not this rule's business
    let t2 = token("e2", "u", exp_s - 900, exp_s);
    assert!(run(&mut e, &[ev(T0 + 120_000, "198.51.100.1", 401, &t2)]).is_empty());
}

#[test]
fn expired_token_attempts_count_per_subject_with_a_cooldown() {
    let exp_s = T0 / 1000 - 3600;
    // different expired tokens of one subject add up: the key is the subject
    let toks: Vec<_> = (0..10)
        .map(|i| token(&format!("x{i}"), "u", exp_s - 900, exp_s))
        .collect();
    let mut e = engine(default_rule("expired-token-attempts"));
    let mut evs: Vec<_> = (0..4)
        .map(|i| ev(T0 + i * 60_000, "198.51.100.1", 401, &toks[i as usize]))
        .collect();
    assert!(run(&mut e, &evs).is_empty());
    let d = run(&mut e, &[ev(T0 + 4 * 60_000, "198.51.100.1", 403, &toks[4])]);
    assert_eq!(d.len(), 1, "5 in exactly 4 minutes");
    assert_eq!(d[0].subject.as_deref(), Some("https://idp|u"));
    // still 5 within 5 minutes, but cooling down for 5 minutes
    for i in 5..9 {
        assert!(run(&mut e, &[ev(T0 + i * 60_000, "198.51.100.1", 401, &toks[i as usize])]).is_empty());
    }
    let d = run(&mut e, &[ev(T0 + 9 * 60_000, "198.51.100.1", 401, &toks[9])]);
    assert_eq!(d.len(), 1, "cooldown over and 5 within 5 minutes again");
    // accepted or unexpired attempts do not count
    let mut e = engine(default_rule("expired-token-attempts"));
    let fresh = live("f", "v");
    evs = (0..6).map(|i| ev(T0 + i * 1000, "198.51.100.1", 401, &fresh)).collect();
    assert!(run(&mut e, &evs).is_empty());
}

#[test]
fn impossible_travel_revokes_the_subject_from_the_later_request() {
    let t = live("t1", "u");
    let london = GeoPoint {
        lat: 51.5142,
        lon: -0.0931,
        accuracy_km: 10.0,
    };
    let changchun = GeoPoint {
        lat: 43.88,
        lon: 125.3228,
        accuracy_km: 100.0,
    };
    let mut a = ev(T0, "81.2.69.142", 200, &t);
    a.geo = Some(london);
    let mut b = ev(T0 + 20 * MIN + 500, "175.16.199.5", 200, &t);
    b.geo = Some(changchun);
    let mut e = engine(default_rule("impossible-travel"));
    let d = run(&mut e, &[a.clone(), b.clone()]);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].action, Action::RevokeSubject);
    assert_eq!(
        d[0].not_before,
        Some((T0 + 20 * MIN + 1000) / 1000),
        "rounded up to the second"
    );
    // cooldown 1 h per subject
    let mut c = a.clone();
    c.ts_ms = T0 + 40 * MIN;
    assert!(run(&mut e, &[c]).is_empty());
    // events without a location are not part of it
    let mut e = engine(default_rule("impossible-travel"));
    let mut nogeo = b.clone();
    nogeo.geo = None;
    assert!(run(&mut e, &[a, nogeo]).is_empty());
}

#[test]
fn revoked_token_used_after_a_token_revocation_and_a_subject_revocation() {
    let rs = crate::defaults::rules().unwrap();
    let mut e = engine(rs);
    let t = live("t1", "u");
    let mut d = run(
        &mut e,
        &[
            ev(T0, "198.51.100.1", 200, &t),
            ev(T0 + 1000, "203.0.113.5", 200, &t),
            ev(T0 + 2000, "192.0.2.1", 200, &t),
        ],
    );
    assert_eq!(d.len(), 1, "the revoking request is not itself a revoked use");
    d = run(&mut e, &[ev(T0 + 3000, "198.51.100.1", 200, &t)]);
    assert_eq!(d.len(), 1);
    assert_eq!(&*d[0].rule, "revoked-token-used");
    assert_eq!(d[0].evidence["revoked_by"], "token-replay");
    // 10 minute cooldown
    assert!(run(&mut e, &[ev(T0 + 4000, "198.51.100.1", 200, &t)]).is_empty());
    assert_eq!(
        run(&mut e, &[ev(T0 + 3000 + 10 * MIN, "198.51.100.1", 200, &t)]).len(),
        1
    );
    // a rejected use is the gateway doing its job
    assert!(run(&mut e, &[ev(T0 + 3000 + 30 * MIN, "198.51.100.1", 401, &t)]).is_empty());
}

#[test]
fn subject_revocation_covers_tokens_issued_before_not_before_only() {
    let rs = crate::defaults::rules().unwrap();
    let mut e = engine(rs);
    let london = GeoPoint {
        lat: 51.5142,
        lon: -0.0931,
        accuracy_km: 10.0,
    };
    let changchun = GeoPoint {
        lat: 43.88,
        lon: 125.3228,
        accuracy_km: 100.0,
    };
    let old = live("old", "u");
    let mut a = ev(T0, "81.2.69.142", 200, &old);
    a.geo = Some(london);
    let mut b = ev(T0 + 20 * MIN, "175.16.199.5", 200, &old);
    b.geo = Some(changchun);
    let d = run(&mut e, &[a, b]);
    assert_eq!(d.len(), 1);
    let nb = d[0].not_before.unwrap();
    let fresh = token("new", "u", nb, nb + 900);
    let other = live("other-subject", "v");
    let d = run(
        &mut e,
        &[
            ev(T0 + 21 * MIN, "81.2.69.142", 200, &old),
            ev(T0 + 21 * MIN, "81.2.69.142", 200, &fresh),
            ev(T0 + 21 * MIN, "81.2.69.142", 200, &other),
        ],
    );
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].token_id.as_deref(), Some("old"));
    assert_eq!(d[0].evidence["revoked"], "subject");
}

#[test]
fn shadow_rules_decide_but_never_revoke() {
    let yaml = "\
rules:
  - {id: replay, severity: high, action: revoke_token, mode: shadow, kind: distinct_count, key: token_id, distinct: network, threshold: 2, window: 10m, where: {authenticated: true}}
  - {id: used, severity: critical, action: alert, kind: revoked_use, key: token_id}
";
    let mut e = engine(rules(yaml));
    let t = live("t1", "u");
    let d = run(
        &mut e,
        &[
            ev(T0, "198.51.100.1", 200, &t),
            ev(T0 + 1, "203.0.113.5", 200, &t),
            ev(T0 + 2, "198.51.100.1", 200, &t),
        ],
    );
    assert_eq!(d.len(), 1);
    assert!(d[0].shadow);
    assert!(d[0].to_json_line().contains("\"shadow\":true"));
}

#[test]
fn keys_can_be_any_field() {
    // per client IP, per network, per claim-free string field (user agent), per subject
    for (key, ips, fire) in [
        ("client_ip", ["198.51.100.1", "198.51.100.1", "198.51.100.1"], true),
        ("client_ip", ["198.51.100.1", "198.51.100.2", "198.51.100.3"], false),
        ("network", ["198.51.100.1", "198.51.100.2", "198.51.100.3"], true),
        ("user_agent", ["198.51.100.1", "203.0.113.1", "192.0.2.1"], true),
    ] {
        let yaml = format!("id: c\nseverity: low\naction: alert\nkind: count\nkey: {key}\nthreshold: 3\nwindow: 1m\n");
        let mut e = engine(rules(&yaml));
        let evs: Vec<_> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| ev(T0 + i as i64, ip, 200, &live(&format!("t{i}"), &format!("u{i}"))))
            .collect();
        assert_eq!(run(&mut e, &evs).len() == 1, fire, "{key} {ips:?}");
    }
    // distinct subjects per client network: credential stuffing shape
    let yaml = "id: many-users\nseverity: medium\naction: alert\nkind: distinct_count\nkey: network\ndistinct: subject\nthreshold: 3\nwindow: 1m\n";
    let mut e = engine(rules(yaml));
    let evs: Vec<_> = (0..3)
        .map(|i| ev(T0 + i, "198.51.100.9", 200, &live(&format!("t{i}"), &format!("u{i}"))))
        .collect();
    assert_eq!(run(&mut e, &evs).len(), 1);
    // events without the key's field are not keyed
    let mut noip = ev(T0 + 10, "198.51.100.9", 200, &live("z", "z"));
    noip.client_ip = None;
    let yaml = "id: c\nseverity: low\naction: alert\nkind: match\nkey: client_ip\ncooldown: 0\n";
    let mut e = engine(rules(yaml));
    assert!(run(&mut e, &[noip]).is_empty());
}

#[test]
fn allowlists_silence_a_rule() {
    let yaml = "\
id: r
severity: low
action: alert
kind: match
key: token_id
cooldown: 0
allow:
  cidrs: [198.51.100.0/24]
  subjects: ['https://idp|svc']
  issuers: [https://other]
";
    let mut e = engine(rules(yaml));
    let d = run(
        &mut e,
        &[
            ev(T0, "198.51.100.7", 200, &live("a", "u")),
            ev(T0, "203.0.113.1", 200, &live("b", "svc")),
            ev(T0, "203.0.113.1", 200, &live("c", "u")),
        ],
    );
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].token_id.as_deref(), Some("c"));
}

#[test]
fn cooldown_zero_fires_every_time_and_durations_are_event_time() {
    let yaml = "id: r\nseverity: low\naction: alert\nkind: match\nkey: subject\ncooldown: 2m\n";
    let mut e = engine(rules(yaml));
    let t = live("a", "u");
    let d = run(
        &mut e,
        &[
            ev(T0, "198.51.100.7", 200, &t),
            ev(T0 + MIN, "198.51.100.7", 200, &t),
            ev(T0 + 2 * MIN, "198.51.100.7", 200, &t),
        ],
    );
    assert_eq!(d.iter().map(|d| d.ts).collect::<Vec<_>>(), vec![T0, T0 + 2 * MIN]);
}

#[test]
fn the_key_cap_evicts_and_counts() {
    let yaml = "id: r\nseverity: low\naction: alert\nkind: count\nkey: token_id\nthreshold: 2\nwindow: 1h\n";
    let cfg = EngineConfig {
        max_keys_per_rule: 100,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(rules(yaml), cfg);
    for i in 0..1000 {
        run(&mut e, &[ev(T0 + i, "198.51.100.7", 200, &live(&format!("t{i}"), "u"))]);
    }
    assert!(e.tracked_keys() <= 100);
    assert!(e.stats().evictions >= 900);
}

#[test]
fn expired_state_is_swept() {
    let yaml =
        "id: r\nseverity: low\naction: alert\nkind: count\nkey: token_id\nthreshold: 2\nwindow: 1m\ncooldown: 1m\n";
    let mut e = engine(rules(yaml));
    for i in 0..50 {
        run(&mut e, &[ev(T0 + i, "198.51.100.7", 200, &live(&format!("t{i}"), "u"))]);
    }
    assert_eq!(e.tracked_keys(), 50);
    run(&mut e, &[ev(T0 + 10 * MIN, "198.51.100.7", 200, &live("late", "u"))]);
    assert_eq!(e.tracked_keys(), 1);
}

#[test]
fn reload_keeps_the_windows_of_unchanged_rules() {
    let yaml = "id: r\nseverity: low\naction: alert\nkind: count\nkey: token_id\nthreshold: 3\nwindow: 1h\n";
    let mut e = engine(rules(yaml));
    let t = live("a", "u");
    run(
        &mut e,
        &[ev(T0, "198.51.100.7", 200, &t), ev(T0 + 1, "198.51.100.7", 200, &t)],
    );
    e.replace_rules(rules(&yaml.replace("severity: low", "severity: high")));
    let d = run(&mut e, &[ev(T0 + 2, "198.51.100.7", 200, &t)]);
    assert_eq!(d.len(), 1, "window survived the reload");
    assert_eq!(d[0].severity, crate::rules::Severity::High);
    e.replace_rules(rules(&yaml.replace("threshold: 3", "threshold: 2")));
    assert!(
        run(&mut e, &[ev(T0 + 3, "198.51.100.7", 200, &t)]).is_empty(),
        "changed rule starts empty"
    );
}

#[test]
fn unsigned_token_in_url_and_lifetime_rules() {
    let mut unsigned = (*live("u1", "u")).clone();
    unsigned.unsigned = true;
    let unsigned = Arc::new(unsigned);
    let mut e = engine(default_rule("unsigned-token"));
    assert_eq!(
        run(&mut e, &[ev(T0, "198.51.100.7", 401, &unsigned)]).len(),
        1,
        "rejected or not"
    );
    assert!(
        run(&mut e, &[ev(T0 + 1, "198.51.100.7", 200, &unsigned)]).is_empty(),
        "once per token"
    );

    let mut e = engine(default_rule("token-in-url"));
    let t = live("q", "u");
    let mut in_url = ev(T0, "198.51.100.7", 200, &t);
    in_url.token_in_url = true;
    let mut rejected = in_url.clone();
    rejected.status = Some(401);
    assert!(run(&mut e, &[rejected]).is_empty());
    assert_eq!(run(&mut e, &[in_url]).len(), 1);

    let mut e = engine(default_rule("excessive-lifetime"));
    let day = token("d", "u", T0 / 1000, T0 / 1000 + 86_400);
    let longer = token("l", "u", T0 / 1000, T0 / 1000 + 86_401);
    let d = run(
        &mut e,
        &[ev(T0, "198.51.100.7", 200, &day), ev(T0, "198.51.100.7", 200, &longer)],
    );
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].token_id.as_deref(), Some("l"));
}

const HOUR: i64 = 60 * MIN;

#[test]
fn forever_fires_once_while_the_token_stays_in_use() {
    for id in [
        "unsigned-token",
        "excessive-lifetime",
        "token-in-url",
        "expired-token-accepted",
    ] {
        // unsigned, valid for a week, sent in the URL, and long expired: every rule matches
        let mut t = (*token("daily", "u", T0 / 1000 - 7 * 86_400, T0 / 1000 - 3_600)).clone();
        t.unsigned = true;
        let t = Arc::new(t);
        let use_at = |ts: i64| {
            let mut e = ev(ts, "198.51.100.7", 200, &t);
            e.token_in_url = true;
            e
        };
        let mut e = engine(default_rule(id));
        // used every 4 hours for more than two days, including at +25 h and +50 h
        let mut times: Vec<i64> = (0..=12).map(|i| T0 + i * 4 * HOUR).collect();
        times.extend([T0 + 25 * HOUR, T0 + 50 * HOUR]);
        times.sort();
        let d = run(&mut e, &times.iter().map(|&ts| use_at(ts)).collect::<Vec<_>>());
        assert_eq!(d.len(), 1, "{id}: {d:?}");
        assert_eq!(d[0].ts, T0, "{id}");
        // idle for more than the retention: the bounded state forgot it
        let d = run(&mut e, &[use_at(T0 + 50 * HOUR + 25 * HOUR)]);
        assert_eq!(d.len(), 1, "{id}: fires again after a day of silence");
    }
}

#[test]
fn extreme_dates_neither_panic_nor_wrap() {
    let rs = crate::defaults::rules().unwrap();
    let mut e = engine(rs);
    let mut n = 0;
    for (iat, exp) in [
        (-1, i64::MAX),
        (i64::MIN, i64::MAX),
        (i64::MAX, i64::MIN),
        (0, i64::MIN),
        (i64::MIN, -1),
    ] {
        n += 1;
        let t = token(&format!("x{n}"), "u", iat, exp);
        // three networks: token-replay revokes it, which computes a revocation TTL from exp
        let d = run(
            &mut e,
            &[
                ev(T0 + n, "198.51.100.1", 200, &t),
                ev(T0 + n, "203.0.113.1", 200, &t),
                ev(T0 + n, "192.0.2.1", 200, &t),
                ev(T0 + n + 1, "192.0.2.1", 200, &t),
            ],
        );
        assert!(d.iter().any(|d| &*d.rule == "token-replay"), "{iat} {exp}: {d:?}");
        if exp > iat {
            assert!(d.iter().any(|d| &*d.rule == "excessive-lifetime"), "{iat} {exp}");
        }
        if exp < 0 {
            let x = d.iter().find(|d| &*d.rule == "expired-token-accepted").unwrap();
            assert!(x.evidence["expired_for_s"].as_i64().unwrap() > 0, "{iat} {exp}");
        }
    }
}

fn at(ts: i64, place: GeoPoint) -> Event<'static> {
    let mut e = ev(ts, "198.51.100.7", 200, &live("t1", "u"));
    e.geo = Some(place);
    e
}

#[test]
fn impossible_travel_distance_boundary_is_inclusive_at_500_km() {
    let a = GeoPoint {
        lat: 51.5142,
        lon: -0.0931,
        accuracy_km: 0.0,
    };
    // Berlin: ~930 km from London; its accuracy radius brings the distance to 500 km exactly
    let berlin = GeoPoint {
        lat: 52.52,
        lon: 13.405,
        accuracy_km: 0.0,
    };
    let raw = crate::geo::distance_km(&a, &berlin);
    assert!((500.0..1000.0).contains(&raw), "{raw}");
    let exactly = GeoPoint {
        accuracy_km: raw - 500.0,
        ..berlin
    };
    assert_eq!(crate::geo::distance_km(&a, &exactly) - exactly.accuracy_km, 500.0);
    let under = GeoPoint {
        accuracy_km: raw - 500.0 + 1e-6,
        ..berlin
    };
    // 500 km in 20 minutes is 1,500 km/h: only the distance decides
    let mut e = engine(default_rule("impossible-travel"));
    let d = run(&mut e, &[at(T0, a), at(T0 + 20 * MIN, exactly)]);
    assert_eq!(d.len(), 1, "exactly 500 km fires");
    assert_eq!(d[0].evidence["distance_km"], 500.0);
    let mut e = engine(default_rule("impossible-travel"));
    assert!(
        run(&mut e, &[at(T0, a), at(T0 + 20 * MIN, under)]).is_empty(),
        "just under 500 km does not"
    );
}

#[test]
fn impossible_travel_cools_down_for_an_hour_then_fires_again() {
    let london = GeoPoint {
        lat: 51.5142,
        lon: -0.0931,
        accuracy_km: 10.0,
    };
    let changchun = GeoPoint {
        lat: 43.88,
        lon: 125.3228,
        accuracy_km: 100.0,
    };
    let mut e = engine(default_rule("impossible-travel"));
    let d = run(&mut e, &[at(T0, london), at(T0 + 20 * MIN, changchun)]);
    assert_eq!(d.len(), 1);
    // more impossible jumps inside the hour: silent
    let d = run(&mut e, &[at(T0 + 40 * MIN, london), at(T0 + 80 * MIN - 1, changchun)]);
    assert!(d.is_empty(), "{d:?}");
    // exactly one hour after the decision: fires again
    let d = run(&mut e, &[at(T0 + 80 * MIN, london)]);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].ts, T0 + 80 * MIN);
}

/// A rule edit gone wrong (`kind: match`, `revoke_subject`, no real condition) revokes at most
/// its budget: past it, the rule trips and its decisions are shadow, marked with the budget,
/// until the rules are reloaded or it is re-armed. Without a `budget`, the engine's default
/// (1000/10m) applies.
#[test]
fn a_runaway_revoking_rule_trips_to_shadow_past_its_budget() {
    let yaml =
        "id: oops\nseverity: high\naction: revoke_subject\nkind: match\nkey: subject\ncooldown: 0s\nbudget: 3/10m\nwhere: {authenticated: true}\n";
    let mut e = engine(rules(yaml));
    let events: Vec<_> = (0..10)
        .map(|i| {
            ev(
                T0 + i * 1000,
                "198.51.100.1",
                200,
                &live(&format!("t{i}"), &format!("u{i}")),
            )
        })
        .collect();
    let d = run(&mut e, &events);
    assert_eq!(d.len(), 10, "the rule keeps deciding");
    assert!(d[..3].iter().all(|d| !d.shadow));
    assert!(d[3..]
        .iter()
        .all(|d| d.shadow && d.evidence["budget_tripped"] == "3/10m"));
    assert_eq!(
        e.tripped().next().map(|(r, at)| (&**r, at)),
        Some(("oops", Some(T0 + 3_000)))
    );
    // tripped until re-armed: then three more are enforced
    assert!(e.rearm("oops") && !e.rearm("no-such-rule"));
    let more: Vec<_> = (10..14)
        .map(|i| {
            ev(
                T0 + i * 1000,
                "198.51.100.1",
                200,
                &live(&format!("t{i}"), &format!("u{i}")),
            )
        })
        .collect();
    let d = run(&mut e, &more);
    assert_eq!(d.iter().filter(|d| !d.shadow).count(), 3);
    // a reload re-arms too
    e.replace_rules(rules(yaml));
    assert!(e.tripped().all(|(_, at)| at.is_none()));

    // the default budget: 1000 per 10 minutes
    let yaml = "id: oops\nseverity: high\naction: revoke_subject\nkind: match\nkey: subject\ncooldown: 0s\nwhere: {authenticated: true}\n";
    let mut e = engine(rules(yaml));
    let events: Vec<_> = (0..1005)
        .map(|i| {
            ev(
                T0 + i * 100,
                "198.51.100.1",
                200,
                &live(&format!("t{i}"), &format!("u{i}")),
            )
        })
        .collect();
    let d = run(&mut e, &events);
    assert_eq!(d.iter().filter(|d| !d.shadow).count(), 1000);
    assert_eq!(d.iter().filter(|d| d.shadow).count(), 5);
}

/// The default rules with the token-replay window at `window`: a changed definition.
fn rules_with_replay_window(window: &str) -> Arc<RuleSet> {
    let mut set = (*crate::defaults::rules().unwrap()).clone();
    let replay = set.rules.iter().position(|r| &*r.id == "token-replay").unwrap();
    let yaml = format!(
        "rules:\n  - {{id: token-replay, severity: high, action: revoke_token, kind: distinct_count, key: token_id, distinct: network, threshold: 3, window: {window}, where: {{authenticated: true}}}}\n"
    );
    set.rules[replay] = load_str(Path::new("t.yaml"), &yaml).unwrap().remove(0);
    Arc::new(set)
}

#[test]
fn a_restored_snapshot_continues_as_if_never_stopped() {
    let t = live("t1", "u");
    let first = [ev(T0, "198.51.100.1", 200, &t), ev(T0 + MIN, "203.0.113.5", 200, &t)];
    let then = [
        ev(T0 + 2 * MIN, "192.0.2.1", 200, &t),
        ev(T0 + 3 * MIN, "192.0.2.1", 200, &t),
    ];
    let mut whole = engine(crate::defaults::rules().unwrap());
    let mut want = run(&mut whole, &first);
    want.extend(run(&mut whole, &then));
    assert!(want.iter().any(|d| &*d.rule == "token-replay"));
    assert!(want.iter().any(|d| &*d.rule == "revoked-token-used"));

    let mut before = engine(crate::defaults::rules().unwrap());
    let mut got = run(&mut before, &first);
    let mut bytes = Vec::new();
    before.snapshot(&mut bytes);
    let mut after = engine(crate::defaults::rules().unwrap());
    let report = after.restore(&bytes).unwrap();
    let n = crate::defaults::rules().unwrap().rules.len();
    assert_eq!((report.rules_kept, report.rules_empty), (n, 0));
    got.extend(run(&mut after, &then));
    assert_eq!(got, want);

    // Changed since: token-replay starts empty (no third network in its window), the
    // others keep their state.
    let mut changed = engine(rules_with_replay_window("11m"));
    let report = changed.restore(&bytes).unwrap();
    assert_eq!((report.rules_kept, report.rules_empty), (n - 1, 1));
    assert!(run(&mut changed, &then).is_empty());
}

#[test]
fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    let t = live("t1", "u");
    let mut e = engine(crate::defaults::rules().unwrap());
    run(
        &mut e,
        &[ev(T0, "198.51.100.1", 200, &t), ev(T0 + MIN, "203.0.113.5", 200, &t)],
    );
    let mut bytes = Vec::new();
    e.snapshot(&mut bytes);
    let mut target = engine(crate::defaults::rules().unwrap());
    run(&mut target, &[ev(T0, "198.51.100.9", 200, &live("t2", "v"))]);
    let keys = target.tracked_keys();
    for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(target.restore(&bytes[..cut]).is_err(), "cut at {cut}");
        assert_eq!(target.tracked_keys(), keys, "nothing half-loaded");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(target.restore(&long).is_err());
    // A count that claims more entries than the bytes could hold is refused, not allocated.
    let mut huge = bytes[..48].to_vec();
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(target.restore(&huge).is_err());
    assert_eq!(target.tracked_keys(), keys);
}

/// Revocation budgets are part of the state: a rule tripped before a restart is still tripped
/// after it (only a reload or an operator re-arms it), and one part-way through its window
/// trips at the same revocation as if it had never stopped.
#[test]
fn a_restored_snapshot_keeps_revocation_budgets() {
    let yaml = "id: oops\nseverity: high\naction: revoke_subject\nkind: match\nkey: subject\ncooldown: 0s\nbudget: 3/10m\nwhere: {authenticated: true}\n";
    let events = |from: i64, to: i64| -> Vec<_> {
        (from..to)
            .map(|i| {
                ev(
                    T0 + i * 1000,
                    "198.51.100.1",
                    200,
                    &live(&format!("t{i}"), &format!("u{i}")),
                )
            })
            .collect()
    };
    let restarted = |before: &Engine| {
        let mut bytes = Vec::new();
        before.snapshot(&mut bytes);
        let mut after = engine(rules(yaml));
        after.restore(&bytes).unwrap();
        after
    };
    // tripped: stays tripped
    let mut e = engine(rules(yaml));
    run(&mut e, &events(0, 5));
    let mut after = restarted(&e);
    assert_eq!(after.tripped().next().unwrap().1, Some(T0 + 3_000));
    let d = run(&mut after, &events(5, 7));
    assert!(d.iter().all(|d| d.shadow), "{d:?}");
    // part-way: two spent before, the third is enforced and the fourth trips
    let mut e = engine(rules(yaml));
    run(&mut e, &events(0, 2));
    let mut after = restarted(&e);
    let d = run(&mut after, &events(2, 4));
    assert_eq!(d.iter().map(|d| d.shadow).collect::<Vec<_>>(), [false, true]);
}

/// The blinding finding: with `max_keys_per_rule = 100`, 120 junk tokens sent between
/// a thief's hops evicted the stalest keys, the thief's half-detected token among them, and
/// token-replay never fired. Junk that reaches token-replay must be authenticated (its
/// `where` says so): the attacker's own genuine tokens, each from one network. The thief's
/// token at 2 of 3 networks has progress and outlives them.
#[test]
fn junk_tokens_between_a_thiefs_hops_cannot_erase_the_replay_detection() {
    let cfg = EngineConfig {
        max_keys_per_rule: 100,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(default_rule("token-replay"), cfg);
    let thief = live("stolen", "victim");
    let mut events = vec![
        ev(T0, "198.51.100.7", 200, &thief),
        ev(T0 + MIN, "203.0.113.9", 200, &thief),
    ];
    for i in 0..120 {
        events.push(ev(
            T0 + MIN + 1 + i,
            "192.0.2.50",
            200,
            &live(&format!("junk{i}"), "attacker"),
        ));
    }
    events.push(ev(T0 + 3 * MIN, "100.64.0.1", 200, &thief));
    let d = run(&mut e, &events);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].token_id.as_deref(), Some("stolen"));
    let (_, evicted, refused) = e.evictions_by_rule().next().unwrap();
    assert_eq!(
        (evicted[keymap::Class::Progress as usize], refused),
        (0, 0),
        "{evicted:?}"
    );
    assert!(evicted[keymap::Class::Authenticated as usize] > 0);
}

/// Unauthenticated junk (forged tokens, which anyone can make) goes before any key with
/// authenticated evidence, in a rule that sees both. (Revoking rules see only authenticated
/// events, so refusing an unauthenticated key to spare progress is shown in `keymap`.)
#[test]
fn unauthenticated_junk_is_evicted_before_genuine_keys() {
    let alert = "id: a\nseverity: low\naction: alert\nkind: distinct_count\nkey: token_id\n\
                 distinct: network\nthreshold: 3\nwindow: 10m\n";
    let cfg = EngineConfig {
        max_keys_per_rule: 100,
        ..EngineConfig::default()
    };
    // an alert rule that sees every event: the genuine token outlives 120 forged ones
    let mut e = Engine::new(rules(alert), cfg);
    let genuine = live("genuine", "u");
    let mut events = vec![
        ev(T0, "198.51.100.7", 200, &genuine),
        ev(T0 + MIN, "203.0.113.9", 200, &genuine),
    ];
    for i in 0..120 {
        let mut forged = ev(T0 + MIN + 1 + i, "192.0.2.50", 401, &live(&format!("forged{i}"), "x"));
        forged.authenticated = false;
        events.push(forged);
    }
    events.push(ev(T0 + 3 * MIN, "100.64.0.1", 200, &genuine));
    let d = run(&mut e, &events);
    assert_eq!(
        d.iter().filter(|d| d.token_id.as_deref() == Some("genuine")).count(),
        1,
        "{d:?}"
    );
    let (_, evicted, _) = e.evictions_by_rule().next().unwrap();
    assert_eq!(evicted[1..], [0, 0], "only unauthenticated keys go: {evicted:?}");
}

/// Rule state is bounded in bytes (`state_bytes`), not only in keys: long text values of a
/// `distinct_count` rule, across many keys, stay within the budget (and are kept clipped).
#[test]
fn the_state_budget_bounds_rule_state_in_bytes() {
    let yaml = "id: ua\nseverity: low\naction: alert\nkind: distinct_count\nkey: token_id\n\
                distinct: user_agent\nthreshold: 20\nwindow: 1h\n";
    let budget = 1 << 20;
    let cfg = EngineConfig {
        state_bytes: budget,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(rules(yaml), cfg);
    let mut most = 0;
    for i in 0..400 {
        let t = live(&format!("t{i}"), "u");
        for j in 0..10 {
            let mut x = ev(T0 + i * 10 + j, "198.51.100.7", 200, &t);
            x.user_agent = Cow::Owned(format!("{j}{}", "a".repeat(10_000)));
            run(&mut e, &[x]);
            assert!(e.state_heap_bytes() <= budget, "{} > {budget}", e.state_heap_bytes());
            most = most.max(e.tracked_keys());
        }
    }
    let (_, evicted, _) = e.evictions_by_rule().next().unwrap();
    assert!(evicted[keymap::Class::Authenticated as usize] > 0, "{evicted:?}");
    // each key holds 10 values of ~512 bytes: a few hundred keys fit, not all 400 at 100 KB
    assert!(most > 50, "{most}");
}
