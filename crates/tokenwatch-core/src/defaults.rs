//! The embedded defaults: the shipped rules and MaxMind's test City database.
//!
//! `tokenwatch demo` must run from any directory of a fresh machine, so the files in `rules/`
//! and `assets/` are compiled into the binary; a test checks they are the same rules that
//! `--rules rules/` loads.

use std::path::Path;
use std::sync::Arc;

use crate::geo::GeoDb;
use crate::rules::{load_str, LoadErrors, RuleSet};

/// The default rule files, by name.
pub(crate) const RULE_FILES: &[(&str, &str)] = &[
    (
        "audience-mismatch.yaml",
        include_str!("../../../rules/audience-mismatch.yaml"),
    ),
    (
        "excessive-lifetime.yaml",
        include_str!("../../../rules/excessive-lifetime.yaml"),
    ),
    (
        "expired-token-accepted.yaml",
        include_str!("../../../rules/expired-token-accepted.yaml"),
    ),
    (
        "expired-token-attempts.yaml",
        include_str!("../../../rules/expired-token-attempts.yaml"),
    ),
    (
        "impossible-travel.yaml",
        include_str!("../../../rules/impossible-travel.yaml"),
    ),
    (
        "invalid-signature-accepted.yaml",
        include_str!("../../../rules/invalid-signature-accepted.yaml"),
    ),
    (
        "revoked-token-used.yaml",
        include_str!("../../../rules/revoked-token-used.yaml"),
    ),
    (
        "sensitive-claims.yaml",
        include_str!("../../../rules/sensitive-claims.yaml"),
    ),
    (
        "stale-signing-key.yaml",
        include_str!("../../../rules/stale-signing-key.yaml"),
    ),
    ("token-in-url.yaml", include_str!("../../../rules/token-in-url.yaml")),
    (
        "token-over-http.yaml",
        include_str!("../../../rules/token-over-http.yaml"),
    ),
    ("token-replay.yaml", include_str!("../../../rules/token-replay.yaml")),
    (
        "unknown-issuer-accepted.yaml",
        include_str!("../../../rules/unknown-issuer-accepted.yaml"),
    ),
    (
        "unsigned-token.yaml",
        include_str!("../../../rules/unsigned-token.yaml"),
    ),
    (
        "weak-algorithm.yaml",
        include_str!("../../../rules/weak-algorithm.yaml"),
    ),
];

/// MaxMind's GeoLite2 City test database (MIT/Apache-2.0, see assets/): it locates a few
/// documented test networks, which the traffic generator uses.
pub(crate) const TEST_CITY_DB: &[u8] = include_bytes!("../../../assets/GeoLite2-City-Test.mmdb");

/// The default rules, compiled.
pub fn rules() -> Result<Arc<RuleSet>, LoadErrors> {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in RULE_FILES {
        match load_str(&Path::new("rules").join(name), text) {
            Ok(mut r) => rules.append(&mut r),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(Arc::new(RuleSet {
            rules,
            files: RULE_FILES.len(),
        }))
    } else {
        Err(LoadErrors(errors))
    }
}

pub fn test_geo_db() -> GeoDb {
    GeoDb::from_bytes(TEST_CITY_DB.to_vec()).expect("the embedded test database is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_rules_are_the_rules_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
        let on_disk = crate::rules::load_dir(&dir).unwrap();
        let embedded = rules().unwrap();
        let ids = |r: &RuleSet| r.rules.iter().map(|r| r.id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(&on_disk), ids(&embedded));
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !crate::rules::load::is_rule_test(Path::new(n)))
            .collect();
        names.sort();
        assert_eq!(names, RULE_FILES.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>());
        for (name, text) in RULE_FILES {
            assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), *text);
        }
    }
}
